"""Local ports: who holds each one, and who may take it next (Linux inet_hashtables.c and
inet_connection_sock.c, for a host with one IPv4 address).

Linux keeps a *bind bucket* per local port.  Its owners are every socket holding the port: a
socket bound with bind(), a listener, each connection accepted from a listener
(inet_inherit_port), each connection whose port connect() picked -- and every TIME-WAIT record
left behind by any of these (the record keeps its socket's SO_REUSEADDR and SO_REUSEPORT as
tw_reuse / tw_reuseport).  Three questions are asked of the buckets:

* bind(port) -- ``inet_csk_get_port`` / ``inet_csk_bind_conflict`` / ``inet_bind_conflict``:
  the port is shared when, against every other owner, either both sockets set SO_REUSEADDR
  and the other is not listening, or both set SO_REUSEPORT (same user here: one process);
  otherwise EADDRINUSE.  listen() asks again with the socket now listening
  (``inet_csk_listen_start``), which is why two SO_REUSEADDR sockets can bind one port but
  only one of them can listen on it.
* bind(0) -- ``inet_csk_find_open_port``: a random start in ip_local_port_range, odd offsets
  first ("the opposite choice" of connect()), the lower half first for an SO_REUSEADDR
  socket; only a port with no owner at all will do.  None left: EADDRINUSE.
* connect() without a bound port -- ``__inet_hash_connect``: a start from a keyed hash of
  (source, destination, destination port) plus a per-destination perturbation that moves on
  after each success, even offsets first.  A port whose bucket was made by bind() is skipped;
  a port held only by connect()s is shared as long as the 4-tuple is unique
  (``__inet_check_established``), where a TIME-WAIT record on the same 4-tuple may be taken
  over by ``tcp_twsk_unique``'s rules (see :mod:`ustack.tcp.timewait`).  None left:
  EADDRNOTAVAIL.
"""
from __future__ import annotations

import errno
import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ustack.host import Host

# TIME-WAIT records are counted per bucket by these two bits (no object per record)
TW_REUSEADDR = 1
TW_REUSEPORT = 2

_PERTURB_SIZE = 256


class PortBinding:
    """One socket's hold on a local port (Linux: the sock on tb->owners)."""

    __slots__ = ("table", "port", "reuseaddr", "reuseport", "listening", "released")

    def __init__(self, table: "PortTable", port: int, reuseaddr: bool, reuseport: bool) -> None:
        self.table = table
        self.port = port
        self.reuseaddr = reuseaddr
        self.reuseport = reuseport
        self.listening = False
        self.released = False

    def share(self) -> "PortBinding":
        """A second hold with the same flags (an accepted child inherits the listener's)."""
        return self.table._add(self.port, self.reuseaddr, self.reuseport, by_connect=False)

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.table._remove(self)

    @property
    def tw_flags(self) -> int:
        return (TW_REUSEADDR if self.reuseaddr else 0) | (TW_REUSEPORT if self.reuseport else 0)

    def __repr__(self) -> str:
        flags = [n for n, on in (("reuseaddr", self.reuseaddr), ("reuseport", self.reuseport),
                                 ("listening", self.listening)) if on]
        return f"<PortBinding {self.port} {' '.join(flags)}>"


class _Bucket:
    """Linux inet_bind_bucket: the owners of one port."""

    __slots__ = ("owners", "tw", "fastreuse")

    def __init__(self, by_connect: bool) -> None:
        self.owners: list[PortBinding] = []
        self.tw = [0, 0, 0, 0]       # TIME-WAIT records by their TW_* flags
        # -1: made by connect() (shared by later connect()s to other destinations);
        # >= 0: made by bind() (connect() never picks it)
        self.fastreuse = -1 if by_connect else 0

    def empty(self) -> bool:
        return not self.owners and not any(self.tw)


def _conflict(reuseaddr: bool, reuseport: bool, other_reuseaddr: bool, other_reuseport: bool,
              other_listening: bool, relax: bool, reuseport_ok: bool) -> bool:
    """Linux inet_bind_conflict for two sockets on the same port and address (one user)."""
    if reuseaddr and other_reuseaddr and not other_listening:
        return not relax or (not reuseport_ok and reuseport and other_reuseport)
    return not (reuseport_ok and reuseport and other_reuseport)


def _scan(low: int, high: int, remaining: int, offsets: tuple[int, ...]):
    """Linux's port walk: for each offset (one parity, then the other), every second port of
    [low, low + remaining) from low + offset, wrapping; yields (step, port)."""
    for offset in offsets:
        port = low + offset
        for i in range(0, remaining, 2):
            if port >= high:
                port -= remaining
            yield i, port
            port += 2


class PortTable:
    """The host's bind buckets, by port."""

    __slots__ = ("host", "buckets", "perturb", "rng")

    def __init__(self, host: "Host") -> None:
        self.host = host
        self.buckets: dict[int, _Bucket] = {}
        self.rng: random.Random = host.rng
        self.perturb = [self.rng.getrandbits(32) for _ in range(_PERTURB_SIZE)]

    # ---------------------------------------------------------------- queries
    def holders(self, port: int) -> int:
        """Sockets and TIME-WAIT records holding `port` (0 when the port is free)."""
        b = self.buckets.get(port)
        return 0 if b is None else len(b.owners) + sum(b.tw)

    def _range(self) -> tuple[int, int]:
        low, high = self.host.sysctl["net.ipv4.ip_local_port_range"]
        return low, high + 1   # [low, high)

    def _conflicts(self, b: _Bucket, reuseaddr: bool, reuseport: bool, relax: bool,
                   reuseport_ok: bool, me: PortBinding | None = None) -> bool:
        for o in b.owners:
            if o is not me and _conflict(reuseaddr, reuseport, o.reuseaddr, o.reuseport,
                                         o.listening, relax, reuseport_ok):
                return True
        for flags, n in enumerate(b.tw):
            if n and _conflict(reuseaddr, reuseport, bool(flags & TW_REUSEADDR),
                               bool(flags & TW_REUSEPORT), False, relax, reuseport_ok):
                return True
        return False

    def _describe(self, port: int) -> str:
        b = self.buckets[port]
        what = []
        listening = sum(o.listening for o in b.owners)
        if listening:
            what.append(f"{listening} listening")
        if len(b.owners) - listening:
            what.append(f"{len(b.owners) - listening} bound or connected")
        if sum(b.tw):
            what.append(f"{sum(b.tw)} in TIME-WAIT")
        return ", ".join(what)

    # ---------------------------------------------------------------- bind() and listen()
    def bind(self, port: int, *, reuseaddr: bool = False, reuseport: bool = False) -> PortBinding:
        """bind(): hold `port` (0: any free port).  OSError(EADDRINUSE) when it cannot."""
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0-65535, not {port}")
        if port == 0:
            port = self._find_open_port(reuseaddr)
        else:
            b = self.buckets.get(port)
            if b is not None and self._conflicts(b, reuseaddr, reuseport, True, True):
                raise OSError(errno.EADDRINUSE,
                              f"Address already in use: port {port} is held ({self._describe(port)})"
                              + ("" if reuseaddr else "; SO_REUSEADDR was not set"))
        return self._add(port, reuseaddr, reuseport, by_connect=False)

    def listen(self, binding: PortBinding) -> None:
        """listen() on a bound socket: inet_csk_listen_start asks the bucket again, as a
        listener (EADDRINUSE if another socket listens, or one without SO_REUSEADDR holds the
        port)."""
        b = self.buckets[binding.port]
        if self._conflicts(b, binding.reuseaddr, binding.reuseport, True, True, me=binding):
            raise OSError(errno.EADDRINUSE, f"Address already in use: cannot listen on port "
                                            f"{binding.port} ({self._describe(binding.port)})")
        binding.listening = True
        b.fastreuse = 0

    def _find_open_port(self, reuseaddr: bool) -> int:
        """Linux inet_csk_find_open_port: a port nobody holds, odd offsets first."""
        low0, high0 = self._range()
        halves = [1, 2] if reuseaddr and high0 - low0 >= 4 else [0]
        for attempt in halves:
            low, high = low0, high0
            if attempt:
                half = low + (((high - low) >> 2) << 1)
                if attempt == 1:
                    high = half
                else:
                    low = half
            remaining = high - low
            if remaining > 1:
                remaining &= ~1
            offset = (self.rng.randrange(remaining) if remaining > 0 else 0) | 1
            for _i, port in _scan(low, high, remaining, (offset, offset - 1)):
                b = self.buckets.get(port)
                if b is None or b.empty():
                    return port
        lo, hi = self._range()
        raise OSError(errno.EADDRINUSE, f"Address already in use: no free port in "
                                        f"ip_local_port_range {lo}-{hi - 1}")

    # ---------------------------------------------------------------- connect()
    def connect_port(self, raddr: int, rport: int, check: Any) -> tuple[PortBinding, Any]:
        """Linux __inet_hash_connect for a socket without a bound port.  `check(port)` is
        __inet_check_established: returns (usable, tw_to_take_over).  Returns the new binding
        and the TIME-WAIT record to take over (or None)."""
        low, high = self._range()
        remaining = high - low
        if remaining > 1:
            remaining &= ~1
        if remaining <= 0:
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address: "
                                               "ip_local_port_range is empty")
        h = self.host.secret.port_offset(self.host.address, raddr, rport)
        index = h & (_PERTURB_SIZE - 1)
        offset = (self.perturb[index] + (h >> 32)) % remaining
        offset &= ~1
        in_tw = skipped_bound = 0
        offsets = (offset, offset + 1) if remaining > 1 else (offset,)
        for i, port in _scan(low, high, remaining, offsets):
            b = self.buckets.get(port)
            tw = None
            if b is not None and not b.empty():
                if b.fastreuse >= 0:
                    skipped_bound += 1
                    continue
                ok, tw = check(port)
                if not ok:
                    if tw is not None:
                        in_tw += 1
                    continue
            i = max(i, self.rng.randrange(8) * 2)
            self.perturb[index] = (self.perturb[index] + i + 2) & 0xFFFFFFFF
            return self._add(port, False, False, by_connect=True), tw
        lo, hi = low, high - 1
        raise OSError(errno.EADDRNOTAVAIL,
                      f"Cannot assign requested address: all {hi - lo + 1} local ports in "
                      f"ip_local_port_range {lo}-{hi} are in use for this destination "
                      f"({in_tw} of them in TIME-WAIT that tcp_tw_reuse="
                      f"{self.host.sysctl['net.ipv4.tcp_tw_reuse']} does not allow to reuse, "
                      f"{skipped_bound} held by bind())")

    # ---------------------------------------------------------------- TIME-WAIT records
    def tw_hold(self, port: int, flags: int) -> None:
        b = self.buckets.get(port)
        if b is None:
            b = self.buckets[port] = _Bucket(by_connect=True)
        b.tw[flags] += 1

    def tw_release(self, port: int, flags: int) -> None:
        b = self.buckets.get(port)
        if b is None or not b.tw[flags]:
            return
        b.tw[flags] -= 1
        if b.empty():
            del self.buckets[port]

    # ---------------------------------------------------------------- internals
    def _add(self, port: int, reuseaddr: bool, reuseport: bool, by_connect: bool) -> PortBinding:
        b = self.buckets.get(port)
        if b is None:
            b = self.buckets[port] = _Bucket(by_connect)
            if not by_connect:
                b.fastreuse = 1 if reuseaddr else 0
        elif not by_connect and not reuseaddr:
            b.fastreuse = 0
        binding = PortBinding(self, port, reuseaddr, reuseport)
        b.owners.append(binding)
        return binding

    def _remove(self, binding: PortBinding) -> None:
        b = self.buckets.get(binding.port)
        if b is None:
            return
        try:
            b.owners.remove(binding)
        except ValueError:
            return
        if b.empty():
            del self.buckets[binding.port]


__all__ = ["PortTable", "PortBinding", "TW_REUSEADDR", "TW_REUSEPORT"]
