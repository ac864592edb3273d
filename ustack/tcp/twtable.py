"""The compact TIME-WAIT table: the same records and rules as timewait.py, kept in arrays.

timewait.py is the readable statement: one `TimeWait` object per record, one timer per record
on the host's wheel, a dict by 4-tuple.  That costs about 500 bytes a record.  This table keeps
the very same fields in parallel arrays (a struct of arrays, about 100 bytes a record):

* an open-addressing hash of the 4-tuple keys (load at most 1/2) gives the record's index;
* the fields live in `array` columns indexed by it, freed indices are reused;
* expiry needs no timer per record: records with the same lifetime expire in the order they
  were (re)armed, so each lifetime has a FIFO (an intrusive doubly linked list through two
  index columns), a restart moves a record to the tail of its lifetime's FIFO, and the table
  keeps one entry on the host's wheel for the earliest head.

`TimeWaitTable.process()` and `unique()` run unchanged on it: `records.get()` hands out a
`RecordView` whose attributes read and write the columns, and the table's `kill`,
`reschedule` and `expire` work on indices.  tests/core/test_twtable.py drives both tables with
the same segments and requires the same verdicts, fields and counters.
"""
from __future__ import annotations

from array import array
from typing import TYPE_CHECKING, Any, Iterator

from ustack.tcp.timewait import TimeWait, TimeWaitTable

if TYPE_CHECKING:  # pragma: no cover
    from ustack.host import Host

_EMPTY = 0                      # key 0 is never a real 4-tuple (port 0)
_NIL = -1

_FIELDS_I = ("rcv_nxt", "snd_nxt", "rcv_wnd", "ts_recent", "ts_off", "syn_isn")
_FIELDS_Q = ("ts_recent_stamp", "entered", "last_oow_ack", "deadline")


class RecordView:
    """One record of a CompactTable, seen with TimeWait's attribute names."""

    __slots__ = ("_t", "i", "key")

    def __init__(self, table: "CompactTable", i: int) -> None:
        object.__setattr__(self, "_t", table)
        object.__setattr__(self, "i", i)
        object.__setattr__(self, "key", table.rkey[i])   # which record this view is of

    def __getattr__(self, name: str) -> Any:
        t = self._t
        i = self.i
        if name in _FIELDS_I or name in _FIELDS_Q:
            return t.cols[name][i]
        if name == "raddr":
            return t.rkey[i] >> 32
        if name == "rport":
            return (t.rkey[i] >> 16) & 0xFFFF
        if name == "lport":
            return t.rkey[i] & 0xFFFF
        if name == "laddr":
            return t.host.address
        if name == "substate":
            return t.substate[i]
        if name == "rcv_wscale":
            return t.wscale[i]
        if name == "ts_ok":
            return bool(t.flags[i] & 1)
        if name == "bind_flags":
            return t.flags[i] >> 1
        if name == "timer":
            return t
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        t = self._t
        if name in _FIELDS_I or name in _FIELDS_Q:
            t.cols[name][self.i] = value
        elif name == "substate":
            t.substate[self.i] = value
        else:
            raise AttributeError(f"a TIME-WAIT record's {name} does not change")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RecordView) and other._t is self._t and other.i == self.i \
            and other.key == self.key and bool(self._t.live[self.i])

    def __hash__(self) -> int:
        return hash((self.i, self.key))

    state_name = TimeWait.state_name
    substate_name = TimeWait.substate_name


class _Records:
    """The mapping face of a CompactTable (what `table.records` is for the dict table)."""

    __slots__ = ("t",)

    def __init__(self, table: "CompactTable") -> None:
        self.t = table

    def get(self, key: int, default: Any = None) -> Any:
        i = self.t.find(key)
        return default if i < 0 else RecordView(self.t, i)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.t.find(key) >= 0

    def __len__(self) -> int:
        return self.t.count

    def __iter__(self) -> Iterator[int]:
        t = self.t
        return iter([t.rkey[i] for i in range(len(t.rkey)) if t.live[i]])

    def values(self) -> list[RecordView]:
        t = self.t
        return [RecordView(t, i) for i in range(len(t.rkey)) if t.live[i]]

    def __getitem__(self, key: int) -> RecordView:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v


class CompactTable(TimeWaitTable):
    """TimeWaitTable's behaviour over arrays."""

    __slots__ = ("slots", "mask", "count", "rkey", "cols", "substate",
                 "wscale", "flags", "live", "lifeclass", "nxt", "prv", "free", "fifos",
                 "lifetimes", "handle", "armed_at")

    def __init__(self, host: "Host") -> None:
        super().__init__(host)
        self.records = _Records(self)      # type: ignore[assignment]
        self.mask = 1023
        self.slots = array("i", [_NIL]) * (self.mask + 1)   # hash slot -> record index
        self.count = 0
        self.rkey = array("Q")
        self.cols = {name: array("I") for name in _FIELDS_I}
        self.cols.update({name: array("q") for name in _FIELDS_Q})
        self.substate = array("B")
        self.wscale = array("B")
        self.flags = array("B")
        self.live = array("B")
        self.lifeclass = array("H")
        self.nxt = array("i")
        self.prv = array("i")
        self.free: list[int] = []
        self.fifos: list[list[int]] = []        # per lifetime class: [head, tail]
        self.lifetimes: dict[int, int] = {}     # lifetime ms -> class
        self.handle = None                      # our one entry on the host's wheel
        self.armed_at = -1

    # ------------------------------------------------------------------ the hash
    @staticmethod
    def _hash(key: int) -> int:
        return ((key * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) >> 32

    def find(self, key: int) -> int:
        mask = self.mask
        slots = self.slots
        rkey = self.rkey
        h = self._hash(key) & mask
        while True:
            i = slots[h]
            if i == _NIL:
                return _NIL
            if rkey[i] == key:
                return i
            h = (h + 1) & mask

    def _insert_slot(self, key: int, i: int) -> None:
        mask = self.mask
        slots = self.slots
        h = self._hash(key) & mask
        while slots[h] != _NIL:
            h = (h + 1) & mask
        slots[h] = i

    def _delete_slot(self, key: int) -> None:
        """Linear probing deletion with backward shift (no tombstones)."""
        mask = self.mask
        slots = self.slots
        rkey = self.rkey
        h = self._hash(key) & mask
        while rkey[slots[h]] != key:
            h = (h + 1) & mask
        j = h
        while True:
            j = (j + 1) & mask
            if slots[j] == _NIL:
                break
            home = self._hash(rkey[slots[j]]) & mask
            # move slots[j] into the hole at h unless its home lies in (h, j]
            if (j > h and (home <= h or home > j)) or (j < h and home <= h and home > j):
                slots[h] = slots[j]
                h = j
        slots[h] = _NIL

    def _grow(self) -> None:
        live = [i for i in self.slots if i != _NIL]
        self.mask = self.mask * 2 + 1
        self.slots = array("i", [_NIL]) * (self.mask + 1)
        for i in live:
            self._insert_slot(self.rkey[i], i)

    # ------------------------------------------------------------------ expiry FIFOs
    def _class(self, lifetime: int) -> int:
        c = self.lifetimes.get(lifetime)
        if c is None:
            c = self.lifetimes[lifetime] = len(self.fifos)
            self.fifos.append([_NIL, _NIL])
        return c

    def _unlink(self, i: int) -> None:
        fifo = self.fifos[self.lifeclass[i]]
        p, n = self.prv[i], self.nxt[i]
        if p == _NIL:
            fifo[0] = n
        else:
            self.nxt[p] = n
        if n == _NIL:
            fifo[1] = p
        else:
            self.prv[n] = p

    def _append(self, i: int, c: int) -> None:
        fifo = self.fifos[c]
        self.lifeclass[i] = c
        self.nxt[i] = _NIL
        self.prv[i] = fifo[1]
        if fifo[1] == _NIL:
            fifo[0] = i
        else:
            self.nxt[fifo[1]] = i
        fifo[1] = i

    def _arm(self) -> None:
        """Keep our wheel entry at the earliest deadline among the FIFOs' heads."""
        dl = self.cols["deadline"]
        earliest = -1
        for head, _tail in self.fifos:
            if head != _NIL and (earliest < 0 or dl[head] < earliest):
                earliest = dl[head]
        wheel = self.host.wheel
        if earliest < 0:
            if self.handle is not None and self.handle.active:
                wheel.cancel(self.handle)
            return
        if self.handle is None:
            self.handle = wheel.schedule(earliest, self)
        elif not self.handle.active or self.handle.deadline != earliest:
            wheel.reschedule(self.handle, earliest)

    def on_timer(self) -> None:
        """Expire every record whose deadline has passed (tw_timer_handler, in bulk)."""
        now = self.host.now
        dl = self.cols["deadline"]
        for fifo in self.fifos:
            while fifo[0] != _NIL and dl[fifo[0]] <= now:
                self._remove(fifo[0])
        self._arm()

    # ------------------------------------------------------------------ records
    def enter(self, conn: Any, substate: int, lifetime_ms: int) -> Any:
        host = self.host
        if self.count >= host.sysctl["net.ipv4.tcp_max_tw_buckets"]:
            host.mib["TcpExtTCPTimeWaitOverflow"] += 1
            return None
        spec = TimeWait(conn, substate, host.now)     # the readable record decides the fields
        if self.free:
            i = self.free.pop()
        else:
            i = len(self.rkey)
            self.rkey.append(0)
            for col in self.cols.values():
                col.append(0)
            for col in (self.substate, self.wscale, self.flags, self.live, self.lifeclass):
                col.append(0)
            self.nxt.append(_NIL)
            self.prv.append(_NIL)
        self.rkey[i] = spec.key
        for name in _FIELDS_I:
            self.cols[name][i] = getattr(spec, name) & 0xFFFFFFFF
        for name in _FIELDS_Q:
            if name != "deadline":
                self.cols[name][i] = getattr(spec, name)
        self.cols["deadline"][i] = host.now + lifetime_ms
        self.substate[i] = spec.substate
        self.wscale[i] = spec.rcv_wscale
        self.flags[i] = (1 if spec.ts_ok else 0) | (spec.bind_flags << 1)
        self.live[i] = 1
        if (self.count + 1) * 2 > self.mask + 1:
            self._grow()
        self._insert_slot(spec.key, i)
        self.count += 1
        self._append(i, self._class(lifetime_ms))
        host.ports.tw_hold(spec.lport, spec.bind_flags)
        host.mib["TcpExtTWKilled" if lifetime_ms <= 4000 else "TcpExtTW"] += 1
        self._arm()
        return RecordView(self, i)

    def reschedule(self, tw: Any, lifetime_ms: int) -> None:
        i = tw.i
        if not self.live[i]:
            return
        self._unlink(i)
        self.cols["deadline"][i] = self.host.now + lifetime_ms
        self._append(i, self._class(lifetime_ms))
        self._arm()

    def _remove(self, i: int) -> None:
        key = self.rkey[i]
        self._unlink(i)
        self._delete_slot(key)
        self.live[i] = 0
        self.count -= 1
        self.free.append(i)
        self.host.ports.tw_release(key & 0xFFFF, self.flags[i] >> 1)

    def kill(self, tw: Any) -> None:
        if self.live[tw.i] and self.rkey[tw.i] == tw.key:   # not a later record in its place
            self._remove(tw.i)
            self._arm()

    def expire(self, tw: Any) -> None:
        self.kill(tw)

    def deadline_of(self, tw: Any) -> int:
        return self.cols["deadline"][tw.i]

    @property
    def deadline(self) -> int:
        """(A RecordView's `timer` is the table: ss reads `timer.deadline` of the earliest.)"""
        return self.handle.deadline if self.handle is not None else 0
