"""TIME-WAIT: the small record that outlives a connection (Linux net/ipv4/tcp_minisocks.c).

Everything about a connection after it reaches TIME-WAIT — or, as an orphan, FIN-WAIT-2 — is in
this file: how a connection becomes a record (`time_wait`, Linux's tcp_time_wait, and the
FIN-WAIT-2 hand-off of an orphan: tcp_fin_time, the keepalive timer's wait), the record, its
table, `process()`, which is Linux's tcp_timewait_state_process() rule by rule, the ACK a record
sends, who may take its 4-tuple over (`unique`, tcp_twsk_unique, and the new ISN,
`reuse_isn`), and tcp_tw_recycle's per-address timestamp cache.  A record is not a connection:
it holds only what those rules read (RFC 9293 §3.6.1 and Linux's struct tcp_timewait_sock).
twtable.py keeps the same records compactly.

The lengths: TIME-WAIT lasts `ustack.tcp_timewait_len` seconds (Linux's fixed TCP_TIMEWAIT_LEN,
60 s); the FIN-WAIT-2 substate lasts tcp_fin_timeout (or the socket's TCP_LINGER2).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ustack._segment import ACK, FIN, RST, SYN, build_tcp
from ustack.tcp import states as S
from ustack.tcp.paws import paws_reject
from ustack.tcp.timers import T_FIN_WAIT2

if TYPE_CHECKING:  # pragma: no cover
    from ustack.host import Host

M32 = 0xFFFFFFFF

# Verdicts of process(), as Linux's enum tcp_tw_status.
TW_SUCCESS = 0   # segment consumed (dropped or silently absorbed)
TW_ACK = 1       # answer with an ACK from the record
TW_RST = 2       # answer with a RST for the segment
TW_SYN = 3       # a new connection may take over the 4-tuple; isn is set on the record


def _after(a: int, b: int) -> bool:
    return ((b - a) & M32) > 0x7FFFFFFF


def _before(a: int, b: int) -> bool:
    return ((a - b) & M32) > 0x7FFFFFFF


class TimeWait:
    """One TIME-WAIT (or FIN-WAIT-2 substate) record: Linux's tcp_timewait_sock."""

    __slots__ = ("key", "laddr", "lport", "raddr", "rport", "substate", "rcv_nxt", "snd_nxt",
                 "rcv_wnd", "rcv_wscale", "ts_ok", "ts_recent", "ts_recent_stamp", "ts_off",
                 "entered", "timer", "last_oow_ack", "syn_isn", "bind_flags")

    def __init__(self, conn: Any, substate: int, now: int) -> None:
        self.key = conn.key
        self.laddr = conn.laddr
        self.lport = conn.lport
        self.raddr = conn.raddr
        self.rport = conn.rport
        self.substate = substate
        self.rcv_nxt = conn.rcv_nxt
        self.snd_nxt = conn.snd_max
        self.rcv_wnd = conn._rcv_window_now()
        self.rcv_wscale = conn.rcv_wscale
        self.ts_ok = conn.ts_ok
        self.ts_recent = conn.ts_recent
        self.ts_recent_stamp = conn.ts_recent_stamp if conn.ts_ok else 0
        self.ts_off = conn.ts_off
        self.entered = now
        self.timer = None
        self.last_oow_ack = -1
        self.syn_isn = 0
        # the socket's SO_REUSEADDR/SO_REUSEPORT (Linux tw_reuse, tw_reuseport): the record
        # keeps holding the local port with them (ustack.tcp.ports)
        binding = conn.binding
        self.bind_flags = (1 if conn.reuseaddr else 0) | \
            (2 if binding is not None and binding.reuseport else 0)

    @property
    def state_name(self) -> str:
        return S.NAMES[S.TIME_WAIT]

    @property
    def substate_name(self) -> str:
        return S.NAMES[self.substate]


class TimeWaitTable:
    """The records by 4-tuple key, with their expiry on the host's timer wheel."""

    __slots__ = ("host", "records", "peer_ts")

    def __init__(self, host: "Host") -> None:
        self.host = host
        self.records: dict[int, TimeWait] = {}
        # tcp_tw_recycle (Linux < 4.12): the newest TSval seen per peer address, and when
        self.peer_ts: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: int) -> TimeWait | None:
        return self.records.get(key)

    def timewait_len(self) -> int:
        return self.host.sysctl["ustack.tcp_timewait_len"] * 1000

    def enter(self, conn: Any, substate: int, lifetime_ms: int) -> TimeWait | None:
        """Linux tcp_time_wait(): replace a connection by a record, or close it outright when
        tcp_max_tw_buckets records already exist (TCPTimeWaitOverflow)."""
        host = self.host
        if len(self.records) >= host.sysctl["net.ipv4.tcp_max_tw_buckets"]:
            host.mib["TcpExtTCPTimeWaitOverflow"] += 1
            return None
        tw = TimeWait(conn, substate, host.now)
        self.records[tw.key] = tw
        host.ports.tw_hold(tw.lport, tw.bind_flags)
        tw.timer = host.wheel.schedule(host.now + lifetime_ms, tw)
        # Linux __inet_twsk_schedule counts on the first arming: TWKilled for a lifetime of at
        # most 4 s, TW otherwise (nstat shows the record as soon as it exists).
        host.mib["TcpExtTWKilled" if lifetime_ms <= 4000 else "TcpExtTW"] += 1
        return tw

    def reschedule(self, tw: TimeWait, lifetime_ms: int) -> None:
        self.host.wheel.reschedule(tw.timer, self.host.now + lifetime_ms)

    def kill(self, tw: TimeWait) -> None:
        """Remove a record before its time (inet_twsk_deschedule_put)."""
        if self.records.get(tw.key) is tw:
            del self.records[tw.key]
            self.host.ports.tw_release(tw.lport, tw.bind_flags)
        if tw.timer is not None:
            self.host.wheel.cancel(tw.timer)

    def deadline_of(self, tw: TimeWait) -> int:
        """When the record's timer runs out."""
        return tw.timer.deadline if tw.timer is not None else 0

    def expire(self, tw: TimeWait) -> None:
        """The timer ran out (tw_timer_handler): the record vanishes silently."""
        if self.records.get(tw.key) is tw:
            del self.records[tw.key]
            self.host.ports.tw_release(tw.lport, tw.bind_flags)

    def unique(self, tw: TimeWait, explicit_bind: bool) -> bool:
        """Linux tcp_twsk_unique: may connect() take this record's 4-tuple?

        Only a record that saw timestamps (tw_ts_recent_stamp != 0: PAWS then guards the new
        incarnation).  A socket that bound its port explicitly takes it at once; an ephemeral
        port search only with net.ipv4.tcp_tw_reuse (1: always, 2: loopback addresses only)
        once the record is older than net.ipv4.tcp_tw_reuse_delay ms, and never a record in
        substate FIN-WAIT-2."""
        if not tw.ts_ok:
            return False
        if explicit_bind:
            return True
        host = self.host
        reuse = host.sysctl["net.ipv4.tcp_tw_reuse"]
        if tw.substate == S.FIN_WAIT_2:
            reuse = 0
        if reuse == 2 and (tw.raddr >> 24) != 127 and (tw.laddr >> 24) != 127:
            reuse = 0
        if not reuse:
            return False
        threshold = tw.entered + host.sysctl["net.ipv4.tcp_tw_reuse_delay"]
        return _after(host.now & M32, threshold & M32)

    # -------------------------------------------------------------- entering (tcp_time_wait)
    def fin_time(self, conn: Any) -> int:
        """Linux tcp_fin_time(): the FIN-WAIT-2 lifetime in ms, at least 3.5 RTO."""
        fin_timeout = conn.linger2 if conn.linger2 is not None and conn.linger2 > 0 else \
            self.host.sysctl["net.ipv4.tcp_fin_timeout"]
        tmo = fin_timeout * 1000
        rto = conn.rto
        return max(tmo, (rto << 2) - (rto >> 1))

    def fin_wait2_after_ack(self, conn: Any, seg: Any) -> bool:
        """An orphan's FIN was acknowledged (tcp_rcv_state_process, case TCP_FIN_WAIT1).
        Returns False when the segment is consumed (the connection is gone)."""
        if conn.linger2 is not None and conn.linger2 < 0:
            self.host.mib["TcpExtTCPAbortOnData"] += 1
            self.host.send_reset_for(seg)
            conn._destroy(None, notify=False)
            return False
        seg_len = len(seg.payload) + (1 if seg.flags & FIN else 0)
        if seg_len and _after((seg.seq + len(seg.payload)) & M32, conn.rcv_nxt):
            # new data (or an out-of-order FIN) after close(): reset
            self.host.mib["TcpExtTCPAbortOnData"] += 1
            self.host.send_reset_for(seg)
            conn._destroy(None, notify=False)
            return False
        tmo = self.fin_time(conn)
        twlen = self.timewait_len()
        if tmo > twlen:
            conn.t_misc = self.host.now + tmo - twlen
            conn.misc_kind = T_FIN_WAIT2
        elif seg.flags & FIN:
            # "Bad case": keep the full socket so the FIN in this segment is not lost
            conn.t_misc = self.host.now + tmo
            conn.misc_kind = T_FIN_WAIT2
        else:
            self.time_wait(conn, S.FIN_WAIT_2, tmo)
            return False
        return True

    def fin_wait2_entered(self, conn: Any) -> None:
        """close() found the connection in FIN-WAIT-2 already (Linux tcp_close)."""
        if not conn.orphan or conn.state != S.FIN_WAIT_2:
            return  # after shutdown() FIN-WAIT-2 lasts for ever, as in Linux
        if conn.linger2 is not None and conn.linger2 < 0:
            self.host.mib["TcpExtTCPAbortOnLinger"] += 1
            conn._send_rst()
            conn._destroy(None, notify=False)
            return
        tmo = self.fin_time(conn)
        twlen = self.timewait_len()
        if tmo > twlen:
            conn.t_misc = self.host.now + tmo - twlen
            conn.misc_kind = T_FIN_WAIT2
            conn._arm()
        else:
            self.time_wait(conn, S.FIN_WAIT_2, tmo)

    def fin_wait2_timer(self, conn: Any) -> None:
        """tcp_keepalive_timer for an orphan in FIN-WAIT-2."""
        tmo = self.fin_time(conn) - self.timewait_len()
        if tmo > 0:
            self.time_wait(conn, S.FIN_WAIT_2, tmo)
        else:
            conn._send_rst()
            conn._destroy(None, notify=False)

    def time_wait(self, conn: Any, substate: int, lifetime: int | None = None) -> None:
        """Linux tcp_time_wait(): the connection becomes a small record (or just closes)."""
        rto = conn.rto
        rto35 = (rto << 2) - (rto >> 1)
        if self.host.sysctl["ustack.tcp_tw_recycle"] and conn.ts_ok:
            # Linux < 4.12 with tcp_tw_recycle: remember the peer's clock, and TIME-WAIT
            # lasts 3.5 RTO only (tcp_remember_stamp, tcp_time_wait's recycle_ok)
            self.remember_stamp(conn)
            lifetime = max(lifetime or 0, rto35)
        elif substate == S.TIME_WAIT:
            lifetime = self.timewait_len()
        else:
            lifetime = max(lifetime or 0, rto35)
        self.enter(conn, substate, lifetime)
        if conn.log is not None:
            conn.note("timewait", S.NAMES[substate], lifetime)
        conn._destroy(None)

    def send_ack(self, tw: TimeWait) -> None:
        """Linux tcp_v4_timewait_ack: ACK from the record's numbers."""
        ts_val = None
        if tw.ts_recent:  # tcp_v4_send_ack adds the option only when there is a TSecr
            ts_val = (self.host.now + tw.ts_off) & M32
        self.host.output(build_tcp(tw.laddr, tw.raddr, tw.lport, tw.rport, tw.snd_nxt, tw.rcv_nxt,
                              ACK, tw.rcv_wnd >> tw.rcv_wscale, ts_val=ts_val,
                              ts_ecr=tw.ts_recent, ttl=self.host.ttl))

    # -------------------------------------------------------------- tcp_tw_recycle
    def remember_stamp(self, conn: Any) -> None:
        """Linux < 4.12 tcp_remember_stamp: keep the newest TSval seen from this peer address
        (or replace one older than TCP_PAWS_MSL)."""
        old = self.peer_ts.get(conn.raddr)
        if old is None or ((old[0] - conn.ts_recent) & M32) == 0 or \
                ((old[0] - conn.ts_recent) & M32) > 0x7FFFFFFF or \
                (self.host.now - old[1] > 60_000 and old[1] <= conn.ts_recent_stamp):
            self.peer_ts[conn.raddr] = (conn.ts_recent, conn.ts_recent_stamp)

    def peer_proven(self, seg: Any) -> bool:
        """Linux < 4.12 tcp_peer_is_proven(paws_check): a SYN from an address whose TSval was
        cached in the last 60 s must carry a TSval no more than 1 below it (and must carry
        one at all).  This is what breaks clients behind one NAT."""
        cached = self.peer_ts.get(seg.src)
        if cached is None or self.host.now - cached[1] >= 60_000:
            return True
        if not seg.has_ts:
            return False
        diff = (cached[0] - seg.ts_val) & M32
        return not (0 < diff < 0x80000000 and diff > 1)

    # -------------------------------------------------------------- the rules
    def _oow_rate_limited(self, tw: TimeWait, seg: Any, mib_name: str) -> bool:
        """Linux tcp_oow_rate_limited: at most one ACK per tcp_invalid_ratelimit ms to
        out-of-window segments, except for data segments (they cannot be part of an ACK loop)."""
        host = self.host
        seg_len = len(seg.payload) + (1 if seg.flags & SYN else 0) + (1 if seg.flags & FIN else 0)
        if seg_len and not seg.flags & SYN:
            return False
        limit = host.sysctl["net.ipv4.tcp_invalid_ratelimit"]
        if tw.last_oow_ack >= 0 and host.now - tw.last_oow_ack < limit:
            host.mib[mib_name] += 1
            return True
        tw.last_oow_ack = host.now
        return False

    def _oow_ack(self, tw: TimeWait, seg: Any, mib_name: str) -> int:
        """tcp_timewait_check_oow_rate_limit."""
        if self._oow_rate_limited(tw, seg, mib_name):
            return TW_SUCCESS
        return TW_ACK

    def process(self, tw: TimeWait, seg: Any) -> int:
        """Linux tcp_timewait_state_process(): what a segment does to a record."""
        host = self.host
        now = host.now
        flags = seg.flags
        seq = seg.seq
        end_seq = (seq + len(seg.payload) + (1 if flags & SYN else 0)
                   + (1 if flags & FIN else 0)) & M32
        # Linux parses the timestamp option only when the record has a timestamp stamp
        saw_tstamp = seg.has_ts and tw.ts_recent_stamp != 0
        paws = saw_tstamp and paws_reject(tw.ts_recent, tw.ts_recent_stamp, seg.ts_val, now,
                                          bool(flags & RST))

        if tw.substate == S.FIN_WAIT_2:
            # Repeat the checks of tcp_rcv_state_process for a half-closed orphan.
            right = (tw.rcv_nxt + tw.rcv_wnd) & M32
            if paws or not _in_window(seq, end_seq, tw.rcv_nxt, right):
                return self._oow_ack(tw, seg, "TcpExtTCPACKSkippedFinWait2")
            if flags & RST:
                self.kill(tw)
                return TW_SUCCESS
            if flags & SYN and not _before(seq, tw.rcv_nxt):
                return TW_RST
            if not flags & ACK or not _after(end_seq, tw.rcv_nxt) or end_seq == seq:
                return TW_SUCCESS  # duplicate ACK
            if not flags & FIN or end_seq != ((tw.rcv_nxt + 1) & M32):
                return TW_RST       # new data after a half-duplex close: reset
            # the FIN: enter true TIME-WAIT
            tw.substate = S.TIME_WAIT
            tw.rcv_nxt = end_seq
            if saw_tstamp:
                tw.ts_recent_stamp = now
                tw.ts_recent = seg.ts_val
            self.reschedule(tw, self.timewait_len())
            return TW_ACK

        # Substate TIME-WAIT (RFC 9293 §3.10.7.4 "TIME-WAIT STATE" with Linux's reading)
        if not paws and seq == tw.rcv_nxt and (seq == end_seq or flags & RST):
            # in window: only a RST or a bare ACK can be here
            if flags & RST:
                if not host.sysctl["net.ipv4.tcp_rfc1337"]:
                    self.kill(tw)  # RFC 1337 hazard: TIME-WAIT assassination
                    return TW_SUCCESS
            else:
                self.reschedule(tw, self.timewait_len())
            if saw_tstamp:
                tw.ts_recent = seg.ts_val
                tw.ts_recent_stamp = now
            return TW_SUCCESS

        # Out of window.  A new SYN may open a new incarnation (RFC 6191 with timestamps,
        # RFC 9293 Appendix B without).
        if flags & SYN and not flags & RST and not flags & ACK and not paws and (
                _after(seq, tw.rcv_nxt) or
                (saw_tstamp and ((tw.ts_recent - seg.ts_val) & M32) > 0x7FFFFFFF)):
            tw.syn_isn = reuse_isn(tw)
            return TW_SYN
        if paws:
            host.mib["TcpExtPAWSTimewait"] += 1  # LINUX_MIB_PAWS_TW_REJECTED
        if not flags & RST:
            # Restart the clock for ACKs and PAWS failures, not for a bare SYN below rcv_nxt
            # (which may be an old duplicate or a new SYN with a random ISN).
            if paws or flags & ACK:
                self.reschedule(tw, self.timewait_len())
            if flags & SYN and not flags & ACK and host.sysctl["ustack.tcp_tw_silent_syn"]:
                # ustack extension (seed 000's wish): no ACK for a SYN the record refuses, so
                # a forged SYN cannot draw the ACK whose RST answer kills the record
                host.mib["UstackExtTWSilentSYN"] += 1
                return TW_SUCCESS
            return self._oow_ack(tw, seg, "TcpExtTCPACKSkippedTimeWait")
        return TW_SUCCESS


def reuse_isn(tw: Any) -> int:
    """The ISN of a new incarnation of a TIME-WAIT 4-tuple, passive (a SYN the record lets in)
    or active (connect() taking it over): beyond anything the old one sent, snd_nxt + 65535
    + 2, never 0 (tcp_timewait_state_process, tcp_twsk_unique)."""
    return ((tw.snd_nxt + 65535 + 2) & M32) or 1


def _in_window(seq: int, end_seq: int, s_win: int, e_win: int) -> bool:
    """Linux tcp_in_window()."""
    if seq == s_win:
        return True
    if _after(end_seq, s_win) and _before(seq, e_win):
        return True
    return seq == e_win and seq == end_seq
