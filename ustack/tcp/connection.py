"""One TCP connection (the TCB) and its state machine.  No I/O, no clock: time is `host.now`.

Everything that changes a connection's state goes through `Connection._set_state`, and every
rule names where it comes from: RFC 9293 sections, or the Linux function whose behaviour ustack
reproduces (tcp_rcv_state_process, tcp_ack, tcp_data_queue, tcp_fin, tcp_close ... in
net/ipv4/tcp_input.c, tcp_output.c, tcp.c).  What happens once a connection reaches TIME-WAIT
lives in timewait.py.

Sequence numbers are plain ints modulo 2**32; `_before(a, b)` is Linux's before(): a < b in
sequence space.  The send queue `sndq` holds the bytes from snd_una on; `snd_nxt` may be rolled
back to snd_una after a retransmission timeout (go-back-N) while `snd_max` keeps the highest
sequence number ever sent (the RFC's SND.NXT for acceptability checks).
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from ustack._segment import ACK, FIN, PSH, RST, SYN, build_tcp
from ustack.tcp import states as S

if TYPE_CHECKING:  # pragma: no cover
    from ustack.host import Host

M32 = 0xFFFFFFFF
NEVER = 1 << 62

TCP_RTO_MIN = 200          # ms (Linux TCP_RTO_MIN)
TCP_RTO_MAX = 120_000      # ms (Linux TCP_RTO_MAX)
TCP_TIMEOUT_INIT = 1000    # ms (RFC 6298 initial RTO; Linux TCP_TIMEOUT_INIT)
TCP_ATO_MIN = 40           # ms (HZ/25: Linux's minimal delayed-ACK timeout)
TCP_DELACK_MAX = 200       # ms
TCP_MAX_QUICKACKS = 16
TCP_INIT_CWND = 10         # segments (RFC 6928, Linux TCP_INIT_CWND)
TS_OPT_LEN = 12            # NOP NOP TS(10)
MAX_WSCALE = 14


def _before(a: int, b: int) -> bool:
    """a precedes b in sequence space (Linux before())."""
    return ((a - b) & M32) > 0x7FFFFFFF


def _after(a: int, b: int) -> bool:
    return ((b - a) & M32) > 0x7FFFFFFF


def retransmits_timed_out(boundary: int, rto_base: int) -> int:
    """How long (ms) `boundary` retransmissions with exponential backoff take from the first one.

    Linux retransmits_timed_out() in tcp_timer.c: the limit is time-based, so a connection whose
    RTO was clamped keeps retrying until the time the nominal backoff would have taken."""
    thresh = 0
    while (rto_base << (thresh + 1)) <= TCP_RTO_MAX:
        thresh += 1
    if boundary <= thresh:
        return ((2 << boundary) - 1) * rto_base
    return ((2 << thresh) - 1) * rto_base + (boundary - thresh) * TCP_RTO_MAX


class ConnectionUser:
    """What the protocol core tells the layer above (asyncio adapter, drill's socket emulation).

    Calls come synchronously at the end of processing a segment or a timer, never in the middle
    of a state change, so a user may call back into the connection (write from tcp_data)."""

    def tcp_established(self, conn: "Connection") -> None: ...
    def tcp_data(self, conn: "Connection") -> None: ...       # bytes or EOF readable
    def tcp_writable(self, conn: "Connection") -> None: ...   # send queue drained below the mark
    def tcp_closed(self, conn: "Connection", exc: BaseException | None) -> None: ...


class _NullUser(ConnectionUser):
    pass


NULL_USER = _NullUser()


class Connection:
    __slots__ = (
        "host", "laddr", "lport", "raddr", "rport", "key", "state", "user", "listener",
        # send sequence space (RFC 9293 §3.3.1)
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_window",
        "snd_wscale", "mss", "peer_mss", "snd_sml", "sndq", "sndbuf", "fin_queued", "fin_seq",
        "write_mark",
        # receive sequence space
        "irs", "rcv_nxt", "rcv_wnd", "rcv_wup", "rcv_wscale", "rcv_mss", "advmss", "rcvbuf",
        "rcv_ssthresh", "window_clamp", "rcv_buf", "ooo", "ooo_bytes", "rcv_fin", "rcv_shutdown",
        # options
        "ts_ok", "ts_off", "ts_recent", "ts_recent_stamp", "sack_ok", "wscale_ok",
        # congestion control and RTT (RFC 5681, RFC 6298)
        "cwnd", "cwnd_cnt", "ssthresh", "dupacks", "recover", "in_recovery", "srtt", "rttvar", "rto",
        "rtt_seq", "rtt_time", "sent_times", "syn_time", "backoff", "retransmits", "retrans_stamp", "total_retrans",
        # delayed ACK (Linux icsk_ack)
        "ack_pending", "quickack", "pingpong", "last_rcv_time", "last_snd_data_time",
        # timers: one wheel entry, several deadlines
        "t_rto", "t_delack", "t_misc", "misc_kind", "timer",
        # socket options and lifecycle
        "nodelay", "linger", "linger2", "reuseaddr", "orphan", "error", "probes",
        "closed_notified", "created", "_notify",
    )

    def __init__(self, host: "Host", raddr: int, rport: int, lport: int,
                 user: ConnectionUser = NULL_USER) -> None:
        self.host = host
        self.laddr = host.address
        self.lport = lport
        self.raddr = raddr
        self.rport = rport
        self.key = (raddr << 32) | (rport << 16) | lport
        self.state = S.CLOSED
        self.user = user
        self.listener = None
        sysctl = host.sysctl
        now = host.now
        self.iss = 0
        self.snd_una = self.snd_nxt = self.snd_max = 0
        self.snd_wnd = 0
        self.snd_wl1 = self.snd_wl2 = 0
        self.max_window = 0
        self.snd_sml = 0
        self.snd_wscale = 0
        self.advmss = host.mtu - 40
        self.peer_mss = 536
        self.mss = 536
        self.sndq = bytearray()
        self.sndbuf = sysctl["net.ipv4.tcp_wmem"][1]
        self.fin_queued = False
        self.fin_seq = 0
        self.write_mark = 0
        self.irs = 0
        self.rcv_nxt = self.rcv_wup = 0
        self.rcv_wnd = 0
        self.rcv_mss = 536
        self.rcvbuf = sysctl["net.ipv4.tcp_rmem"][2]
        self.window_clamp = 65535 << MAX_WSCALE
        self.rcv_ssthresh = 0
        self.rcv_wscale = 0
        self.rcv_buf = bytearray()
        self.ooo: list[tuple[int, bytes]] = []
        self.ooo_bytes = 0
        self.rcv_fin = False
        self.rcv_shutdown = False
        self.ts_ok = False
        self.ts_off = 0
        self.ts_recent = 0
        self.ts_recent_stamp = 0
        self.sack_ok = False
        self.wscale_ok = False
        self.cwnd = TCP_INIT_CWND
        self.cwnd_cnt = 0
        self.ssthresh = 0x7FFFFFFF
        self.dupacks = 0
        self.recover = 0
        self.in_recovery = False
        self.srtt = 0
        self.rttvar = 0
        self.rto = TCP_TIMEOUT_INIT
        self.rtt_seq = -1
        self.rtt_time = 0
        self.sent_times: deque[tuple[int, int]] = deque()  # (end seq, first sent) in flight
        self.syn_time = now
        self.backoff = 0
        self.retransmits = 0
        self.retrans_stamp = 0
        self.total_retrans = 0
        self.ack_pending = False
        self.quickack = 0
        self.pingpong = False
        self.last_rcv_time = now
        self.last_snd_data_time = 0
        self.t_rto = self.t_delack = self.t_misc = NEVER
        self.misc_kind = ""
        self.timer = None
        self.nodelay = False
        self.linger: int | None = None
        self.linger2: int | None = None
        self.reuseaddr = False
        self.orphan = False
        self.error: BaseException | None = None
        self.probes = 0
        self.closed_notified = False
        self.created = now
        self._notify = 0

    # ------------------------------------------------------------------ state
    def _set_state(self, new: int) -> None:
        """The one place a connection changes state (Linux tcp_set_state)."""
        old = self.state
        if old == new:
            return
        mib = self.host.mib
        if new == S.ESTABLISHED:
            mib["TcpCurrEstab"] += 1
        if old in (S.ESTABLISHED, S.CLOSE_WAIT) and new not in (S.ESTABLISHED, S.CLOSE_WAIT):
            mib["TcpCurrEstab"] -= 1
        self.state = new
        self.host.state_changed(self, old, new)

    @property
    def state_name(self) -> str:
        return S.NAMES[self.state]

    # ------------------------------------------------------------------ helpers
    def _tsval(self) -> int:
        return (self.host.now + self.ts_off) & M32

    def _effective_mss(self) -> int:
        return self.mss - (TS_OPT_LEN if self.ts_ok else 0)

    def _select_window(self) -> int:
        """The window to advertise, unscaled (Linux __tcp_select_window / tcp_select_window).

        Never shrinks the right edge already offered; grows with rcv_ssthresh; rounded up to the
        scale so that what we advertise is exactly representable."""
        free = self.rcvbuf - len(self.rcv_buf) - self.ooo_bytes
        win = min(free, self.rcv_ssthresh, self.window_clamp)
        if win < 0:
            win = 0
        cur = (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & M32
        if cur > 0x7FFFFFFF:
            cur = 0
        if win < cur:
            win = cur
        elif win < self.rcv_mss and free < self.rcvbuf // 2:
            # receiver-side silly window avoidance (RFC 9293 §3.8.6.2.2)
            win = cur
        shift = self.rcv_wscale
        if shift:
            win = ((win + (1 << shift) - 1) >> shift) << shift
        maxwin = 65535 << shift
        if win > maxwin:
            win = maxwin
        return win

    def _emit(self, flags: int, seq: int, payload: bytes = b"", *, syn_options: bool = False,
              ack: int | None = None) -> None:
        """Build one segment and queue it on the host's outbox."""
        host = self.host
        if flags & ACK:
            if ack is None:
                ack = self.rcv_nxt
            if not (flags & SYN):
                win = self._select_window()
                self.rcv_wnd = win
                self.rcv_wup = self.rcv_nxt
                window = win >> self.rcv_wscale
            else:
                window = min(self.rcv_wnd, 65535)
            self.ack_pending = False
            if self.t_delack != NEVER:
                self.t_delack = NEVER
            if self.quickack:
                self.quickack -= 1
        else:
            ack = 0
            window = min(self.rcv_wnd, 65535) if flags & SYN else 0
        ts_val = None
        ts_ecr = 0
        if self.ts_ok and not (flags & RST and not flags & ACK):
            ts_val = self._tsval()
            ts_ecr = self.ts_recent if flags & ACK else 0
        sack_blocks = None
        if self.sack_ok and self.ooo and not (flags & SYN):
            sack_blocks = self._sack_blocks()
        if syn_options:
            pkt = build_tcp(
                self.laddr, self.raddr, self.lport, self.rport, seq, ack, flags, window, payload,
                mss=self.advmss, wscale=self.rcv_wscale if self.wscale_ok else -1,
                sack_ok=self.sack_ok, ts_val=ts_val, ts_ecr=ts_ecr, ttl=host.ttl)
        else:
            pkt = build_tcp(
                self.laddr, self.raddr, self.lport, self.rport, seq, ack, flags, window, payload,
                ts_val=ts_val, ts_ecr=ts_ecr, sack_blocks=sack_blocks, ttl=host.ttl)
        host.output(pkt)
        if flags & RST:
            host.mib["TcpOutRsts"] += 1

    def _sack_blocks(self) -> list[tuple[int, int]]:
        blocks: list[list[int]] = []
        for seq, data in self.ooo:
            end = (seq + len(data)) & M32
            if blocks and blocks[-1][1] == seq:
                blocks[-1][1] = end
            else:
                blocks.append([seq, end])
        limit = 3 if self.ts_ok else 4
        return [(a, b) for a, b in blocks[-limit:][::-1]]

    def send_ack(self) -> None:
        self._emit(ACK, self.snd_nxt)

    def _send_rst(self) -> None:
        """Active reset: RST+ACK at snd_nxt (Linux tcp_send_active_reset)."""
        self._emit(RST | ACK, self.snd_max)

    # ------------------------------------------------------------------ timers
    def _arm(self) -> None:
        """Point the one wheel entry at the earliest of this connection's deadlines."""
        d = self.t_rto
        if self.t_delack < d:
            d = self.t_delack
        if self.t_misc < d:
            d = self.t_misc
        wheel = self.host.wheel
        if d == NEVER:
            if self.timer is not None and self.timer.active:
                wheel.cancel(self.timer)
        elif self.timer is None:
            self.timer = wheel.schedule(d, self)
        elif not self.timer.active or self.timer.deadline != d:
            wheel.reschedule(self.timer, d)

    def _head_time(self) -> int:
        """When the first unacknowledged segment was sent (Linux: its skb timestamp)."""
        if self.state in (S.SYN_SENT, S.SYN_RECV):
            return self.syn_time
        return self.sent_times[0][1] if self.sent_times else self.host.now

    def _rearm_rto(self) -> None:
        """Linux tcp_rearm_rto: the RTO runs from when the head segment was sent."""
        if self.snd_max != self.snd_una or (self.state in (S.SYN_SENT, S.SYN_RECV)):
            rto = min(self.rto << self.backoff, TCP_RTO_MAX)
            now = self.host.now
            deadline = self._head_time() + rto if not self.backoff else now + rto
            self.t_rto = deadline if deadline > now else now + rto
        else:
            self.t_rto = NEVER

    def on_timer(self) -> None:
        """Called by the host when this connection's wheel entry fires."""
        now = self.host.now
        if self.t_delack <= now:
            self.t_delack = NEVER
            if self.ack_pending and self.state != S.CLOSED:
                self.host.mib["TcpExtDelayedACKs"] += 1
                self.send_ack()
        if self.t_rto <= now:
            self.t_rto = NEVER
            self._retransmit_timer()
        if self.t_misc <= now and self.state != S.CLOSED:
            kind = self.misc_kind
            self.t_misc = NEVER
            self.misc_kind = ""
            if kind == "persist":
                self._probe_timer()
            elif kind == "fin_wait2":
                # tcp_keepalive_timer for an orphan in FIN-WAIT-2 whose timeout is longer than
                # TIME-WAIT: after waiting (timeout - TIME-WAIT length) it becomes a record.
                self.host.fin_wait2_timer(self)
        if self.state != S.CLOSED:
            self._arm()
        self._deliver()

    def _retransmit_timer(self) -> None:
        """RTO expiry (Linux tcp_retransmit_timer / tcp_write_timeout)."""
        host = self.host
        mib = host.mib
        state = self.state
        if state == S.CLOSED:
            return
        sysctl = host.sysctl
        if state in (S.SYN_SENT, S.SYN_RECV):
            limit = sysctl["net.ipv4.tcp_syn_retries"] if state == S.SYN_SENT \
                else sysctl["net.ipv4.tcp_synack_retries"]
            base = TCP_TIMEOUT_INIT
        else:
            limit = sysctl["net.ipv4.tcp_retries2"]
            if self.orphan:
                limit = host.orphan_retries()
            base = TCP_RTO_MIN
        if self.retransmits == 0:
            self.retrans_stamp = self._head_time()
        if self.retransmits and host.now - self.retrans_stamp >= retransmits_timed_out(limit, base):
            mib["TcpExtTCPAbortOnTimeout"] += 1
            if state == S.SYN_SENT:
                mib["TcpAttemptFails"] += 1
            self._destroy(TimeoutError(110, "Connection timed out"))
            return
        self.retransmits += 1
        self.total_retrans += 1
        mib["TcpRetransSegs"] += 1
        if state == S.SYN_SENT:
            self._emit(SYN, self.iss, syn_options=True)
        elif state == S.SYN_RECV:
            self._emit(SYN | ACK, self.iss, syn_options=True)
        else:
            mib["TcpExtTCPTimeouts"] += 1
            # RFC 5681 §3.1 eq. 4, then go-back-N from snd_una
            flight = (self.snd_max - self.snd_una) & M32
            self.ssthresh = max(flight // 2, 2 * self._effective_mss())
            self.cwnd = 1
            self.in_recovery = False
            self.dupacks = 0
            self.rtt_seq = -1
            self.snd_nxt = self.snd_una
            self.sent_times.clear()
            self._output(force_one=True)
        self.backoff = min(self.backoff + 1, 15)
        self._rearm_rto()

    def _probe_timer(self) -> None:
        """Zero-window probe (Linux tcp_probe_timer / tcp_send_probe0)."""
        if self.snd_wnd != 0 or not self._unsent():
            return
        self.probes += 1
        limit = self.host.orphan_retries() if self.orphan else \
            self.host.sysctl["net.ipv4.tcp_retries2"]
        if self.probes > limit:
            self.host.mib["TcpExtTCPAbortOnTimeout"] += 1
            self._send_rst()
            self._destroy(TimeoutError(110, "Connection timed out"))
            return
        # A bare ACK one below snd_una draws the peer's ACK with its current window.
        self._emit(ACK, (self.snd_una - 1) & M32)
        self.backoff = min(self.backoff + 1, 15)
        self.t_misc = self.host.now + min(self.rto << self.backoff, TCP_RTO_MAX)
        self.misc_kind = "persist"

    # ------------------------------------------------------------------ open
    def _init_local(self) -> None:
        host = self.host
        sysctl = host.sysctl
        self.rcv_wscale = 0
        if sysctl["net.ipv4.tcp_window_scaling"]:
            space = max(sysctl["net.ipv4.tcp_rmem"][2], 65535)
            while space > 65535 and self.rcv_wscale < MAX_WSCALE:
                space >>= 1
                self.rcv_wscale += 1

    def _initial_window(self, mss: int) -> int:
        """Linux tcp_select_initial_window: at most 64K in SYNs, a whole number of segments."""
        space = min(self.rcvbuf, self.host.sysctl["net.ipv4.tcp_rmem"][1] // 2, 65535)
        if space > mss:
            space = (space // mss) * mss
        return space

    def connect(self, iss: int) -> None:
        """Active open: send SYN (RFC 9293 §3.10.1)."""
        host = self.host
        sysctl = host.sysctl
        self._init_local()
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = self.snd_max = (iss + 1) & M32
        self.wscale_ok = bool(sysctl["net.ipv4.tcp_window_scaling"])
        self.sack_ok = bool(sysctl["net.ipv4.tcp_sack"])
        self.ts_ok = bool(sysctl["net.ipv4.tcp_timestamps"])
        if self.ts_ok:
            self.ts_off = host.secret.ts_offset(self.laddr, self.raddr) \
                if sysctl["net.ipv4.tcp_timestamps"] == 1 else 0
        self.rcv_wnd = self._initial_window(self.advmss)
        self.rcv_ssthresh = self.rcv_wnd
        self._set_state(S.SYN_SENT)
        self.syn_time = host.now
        host.mib["TcpActiveOpens"] += 1
        self._emit(SYN, iss, syn_options=True)
        self._rearm_rto()
        self._arm()

    def accept_syn(self, seg: Any, iss: int) -> None:
        """Passive open: a listener's SYN becomes a SYN-RECV connection (Linux tcp_conn_request)."""
        host = self.host
        sysctl = host.sysctl
        self._init_local()
        self.irs = seg.seq
        self.rcv_nxt = self.rcv_wup = (seg.seq + 1) & M32
        self.iss = iss
        self.snd_una = iss
        self.snd_nxt = self.snd_max = (iss + 1) & M32
        self.wscale_ok = seg.wscale >= 0 and bool(sysctl["net.ipv4.tcp_window_scaling"])
        if not self.wscale_ok:
            self.rcv_wscale = 0
        else:
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
        self.sack_ok = seg.sack_ok and bool(sysctl["net.ipv4.tcp_sack"])
        self.ts_ok = seg.has_ts and bool(sysctl["net.ipv4.tcp_timestamps"])
        if self.ts_ok:
            self.ts_off = host.secret.ts_offset(self.laddr, self.raddr) \
                if sysctl["net.ipv4.tcp_timestamps"] == 1 else 0
            self.ts_recent = seg.ts_val
            self.ts_recent_stamp = host.now
        self._set_peer_mss(seg.mss)
        self.snd_wnd = seg.window  # never scaled in a SYN
        self.snd_wl1 = seg.seq
        self.snd_wl2 = iss
        self.max_window = self.snd_wnd
        self.rcv_wnd = self._initial_window(self.advmss - (TS_OPT_LEN if self.ts_ok else 0))
        self.rcv_ssthresh = self.rcv_wnd
        self._set_state(S.SYN_RECV)
        self.syn_time = host.now
        self._emit(SYN | ACK, iss, syn_options=True)
        self._rearm_rto()
        self._arm()

    def _set_peer_mss(self, mss: int) -> None:
        self.peer_mss = mss if mss > 0 else 536
        self.mss = max(min(self.peer_mss, self.advmss), 64)
        self.rcv_mss = min(self.advmss, self.peer_mss) - (TS_OPT_LEN if self.ts_ok else 0)

    # ------------------------------------------------------------------ input
    def on_segment(self, seg: Any) -> None:
        """Process one segment for this connection (Linux tcp_rcv_state_process)."""
        state = self.state
        if state == S.SYN_SENT:
            self._rcv_synsent(seg)
        else:
            self._rcv_synchronized(seg)
        if self.state != S.CLOSED:
            self._arm()
        self._deliver()

    def _rcv_synsent(self, seg: Any) -> None:
        """RFC 9293 §3.10.7.3 / Linux tcp_rcv_synsent_state_process."""
        flags = seg.flags
        host = self.host
        if flags & ACK:
            if not _after(seg.ack, self.iss) or _after(seg.ack, self.snd_max):
                if not flags & RST:
                    host.send_reset_for(seg)
                return
            if flags & RST:
                host.mib["TcpAttemptFails"] += 1
                self._destroy(ConnectionRefusedError(111, "Connection refused"))
                return
            if not flags & SYN:
                return
            # SYN-ACK: the peer's options decide ours (RFC 7323 §2.2, §3.2; RFC 2018)
            self.irs = seg.seq
            self.rcv_nxt = self.rcv_wup = (seg.seq + 1) & M32
            if seg.wscale >= 0 and self.wscale_ok:
                self.snd_wscale = min(seg.wscale, MAX_WSCALE)
            else:
                self.wscale_ok = False
                self.rcv_wscale = 0
            self.sack_ok = self.sack_ok and seg.sack_ok
            if self.ts_ok and seg.has_ts:
                self.ts_recent = seg.ts_val
                self.ts_recent_stamp = host.now
            else:
                self.ts_ok = False
            self._set_peer_mss(seg.mss)
            self.snd_wnd = seg.window
            self.max_window = self.snd_wnd
            self.snd_wl1 = seg.seq
            self.snd_wl2 = seg.ack
            self._ack_advance(seg.ack)
            if self.ts_ok and seg.ts_ecr:
                self._rtt_sample((host.now + self.ts_off - seg.ts_ecr) & M32)
            elif self.retransmits == 0:
                self._rtt_sample(host.now - self.created)
            self.retransmits = 0
            self.backoff = 0
            self.t_rto = NEVER
            self._set_state(S.ESTABLISHED)
            self.cwnd = TCP_INIT_CWND
            self.quickack = TCP_MAX_QUICKACKS
            self._notify |= 1
            self.send_ack()
            if seg.payload or flags & FIN:
                self._rcv_synchronized(seg, skip_checks=True)
            self._output()
            return
        if flags & RST:
            return
        if flags & SYN:
            # Simultaneous open (RFC 9293 §3.5 figure 8): SYN-SENT -> SYN-RECV, send SYN-ACK.
            self.irs = seg.seq
            self.rcv_nxt = self.rcv_wup = (seg.seq + 1) & M32
            if not (seg.wscale >= 0 and self.wscale_ok):
                self.wscale_ok = False
                self.rcv_wscale = 0
            else:
                self.snd_wscale = min(seg.wscale, MAX_WSCALE)
            self.sack_ok = self.sack_ok and seg.sack_ok
            if self.ts_ok and seg.has_ts:
                self.ts_recent = seg.ts_val
                self.ts_recent_stamp = host.now
            else:
                self.ts_ok = False
            self._set_peer_mss(seg.mss)
            self.snd_wnd = seg.window
            self.snd_wl1 = seg.seq
            self._set_state(S.SYN_RECV)
            self._emit(SYN | ACK, self.iss, syn_options=True)

    def _acceptable(self, seg: Any, seg_len: int) -> bool:
        """Linux tcp_sequence(): some of the segment lies in the window we offered."""
        end = (seg.seq + seg_len) & M32
        return not _before(end, self.rcv_wup) and \
            not _after(seg.seq, (self.rcv_nxt + self._rcv_window_now()) & M32)

    def _rcv_window_now(self) -> int:
        win = (self.rcv_wup + self.rcv_wnd - self.rcv_nxt) & M32
        return 0 if win > 0x7FFFFFFF else win

    def _rcv_synchronized(self, seg: Any, skip_checks: bool = False) -> None:
        host = self.host
        mib = host.mib
        flags = seg.flags
        payload = seg.payload
        seg_len = len(payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        state = self.state
        self.last_rcv_time = host.now

        if not skip_checks:
            # Step 1: sequence number check (tcp_validate_incoming / tcp_sequence)
            if not self._acceptable(seg, seg_len):
                if not flags & RST:
                    if state == S.SYN_RECV and flags & SYN and seg.seq == self.irs:
                        # retransmitted SYN: retransmit our SYN-ACK (tcp_check_req)
                        self._emit(SYN | ACK, self.iss, syn_options=True)
                        return
                    self._send_dupack()
                return
            # Step 2: RST (RFC 5961 §3.2: exact match resets, in-window gets a challenge ACK)
            if flags & RST:
                if seg.seq == self.rcv_nxt or (state == S.SYN_RECV and
                                               seg.seq == self.rcv_nxt):
                    self._on_reset()
                else:
                    self._challenge_ack()
                return
            # Step 4: SYN in a synchronized state (RFC 5961 §4)
            if flags & SYN:
                if state == S.SYN_RECV and seg.seq == self.irs and not flags & ACK:
                    self._emit(SYN | ACK, self.iss, syn_options=True)
                    return
                mib["TcpExtTCPSYNChallenge"] += 1
                self._challenge_ack()
                return
            # Step 5: the ACK field
            if not flags & ACK:
                return
            if self.ts_ok and seg.has_ts:
                self._update_ts_recent(seg)
            if state == S.SYN_RECV:
                if _before(seg.ack, self.snd_una) or _after(seg.ack, self.snd_max) \
                        or seg.ack == self.snd_una:
                    host.send_reset_for(seg)
                    return
                self.snd_wnd = seg.window << self.snd_wscale
                self.max_window = max(self.max_window, self.snd_wnd)
                self.snd_wl1 = seg.seq
                self.snd_wl2 = seg.ack
                self._ack_advance(seg.ack)
                if self.retransmits == 0:
                    self._rtt_sample(host.now - self.created)
                self.retransmits = 0
                self.backoff = 0
                self.t_rto = NEVER
                if self.fin_queued and self.snd_max == self.fin_seq + 1 and \
                        self.snd_una == self.snd_max:
                    self._set_state(S.FIN_WAIT_2)
                elif self.fin_queued:
                    self._set_state(S.FIN_WAIT_1)
                else:
                    self._set_state(S.ESTABLISHED)
                host.mib["TcpPassiveOpens"] += 1
                self._notify |= 1
                if self.listener is not None:
                    host.child_established(self)
                state = self.state
            elif not self._process_ack(seg):
                return
            state = self.state
            if state == S.CLOSED:
                return

        # Step 7: segment text (tcp_data_queue)
        if payload:
            if state in S.RECEIVING:
                if self.rcv_shutdown and state != S.ESTABLISHED and \
                        _after((seg.seq + len(payload)) & M32, self.rcv_nxt):
                    # Linux tcp_rcv_state_process, FIN-WAIT-1/2 with RCV_SHUTDOWN: RFC 1122
                    # says reset; the RST answers the segment (tcp_v4_send_reset).
                    mib["TcpExtTCPAbortOnData"] += 1
                    host.send_reset_for(seg)
                    self._destroy(ConnectionResetError(104, "Connection reset by peer"))
                    return
                self._data(seg)
            # other states: text after the peer's FIN is ignored (RFC 9293 §3.10.7.4)
        # Step 8: FIN
        if flags & FIN:
            self._fin(seg)
        elif payload and self.state != S.CLOSED:
            self._ack_snd_check()

    def _send_dupack(self) -> None:
        """Linux tcp_send_dupack: an unacceptable segment is answered with an ACK."""
        self.send_ack()

    def _challenge_ack(self) -> None:
        """RFC 5961 challenge ACK (Linux tcp_send_challenge_ack; rate limits come with issue 5)."""
        self.host.mib["TcpExtTCPChallengeACK"] += 1
        self.send_ack()

    def _on_reset(self) -> None:
        """RFC 9293 §3.10.7.4 step 2 / Linux tcp_reset."""
        state = self.state
        mib = self.host.mib
        if state == S.SYN_RECV and self.listener is not None:
            # passive open not yet accepted: drop silently, the listener lives on
            self._destroy(None, notify=False)
            return
        if state in (S.ESTABLISHED, S.CLOSE_WAIT):
            mib["TcpEstabResets"] += 1
        if state == S.CLOSE_WAIT:
            exc: BaseException = BrokenPipeError(32, "Broken pipe")
        elif state == S.SYN_SENT:
            exc = ConnectionRefusedError(111, "Connection refused")
        else:
            exc = ConnectionResetError(104, "Connection reset by peer")
        self._destroy(exc)

    def _update_ts_recent(self, seg: Any) -> None:
        """RFC 7323 §4.3 (Linux tcp_replace_ts_recent): only from a segment covering rcv_wup."""
        if not _after(seg.seq, self.rcv_wup) and \
                ((seg.ts_val - self.ts_recent) & M32) < 0x80000000:
            self.ts_recent = seg.ts_val
            self.ts_recent_stamp = self.host.now

    def _process_ack(self, seg: Any) -> bool:
        """Linux tcp_ack(): returns False when the segment must be dropped."""
        ack = seg.ack
        host = self.host
        if _after(ack, self.snd_max):
            # RFC 5961 §5.2: ACK for data we never sent
            self._challenge_ack()
            return False
        state = self.state
        if _before(ack, self.snd_una):
            # old duplicate ACK: ignore the ACK, keep the text
            return True
        # window update (RFC 9293 §3.10.7.4, SND.WL1/SND.WL2 rule)
        window = seg.window << self.snd_wscale
        window_changed = False
        if _before(self.snd_wl1, seg.seq) or (self.snd_wl1 == seg.seq and
                                              not _before(ack, self.snd_wl2)):
            if window != self.snd_wnd:
                window_changed = True
                if self.snd_wnd == 0 and window > 0 and self.misc_kind == "persist":
                    self.t_misc = NEVER
                    self.misc_kind = ""
                    self.probes = 0
                    self.backoff = 0
            self.snd_wnd = window
            self.snd_wl1 = seg.seq
            self.snd_wl2 = ack
            if window > self.max_window:
                self.max_window = window
        if ack == self.snd_una:
            if self.snd_max != self.snd_una and not seg.payload and not window_changed \
                    and not seg.flags & FIN:
                self._dupack()
            elif window_changed:
                self._output()
            return True
        acked = (ack - self.snd_una) & M32
        # RTT measurement (RFC 7323 §4.1 with TS, else Karn's algorithm)
        if self.ts_ok and seg.has_ts and seg.ts_ecr:
            self._rtt_sample((host.now + self.ts_off - seg.ts_ecr) & M32)
        elif self.rtt_seq >= 0 and _after(ack, self.rtt_seq):
            self._rtt_sample(host.now - self.rtt_time)
            self.rtt_seq = -1
        self._ack_advance(ack)
        self.retransmits = 0
        self.backoff = 0
        self.probes = 0
        # congestion control: NewReno (RFC 6582 / RFC 5681)
        mss = self._effective_mss()
        if self.in_recovery:
            if not _before(ack, self.recover):
                self.in_recovery = False
                self.cwnd = max(self.ssthresh // mss, 2)
            else:
                # partial ACK: retransmit the next hole
                self._retransmit_head()
        elif self.cwnd * mss < self.ssthresh:
            self.cwnd += max(1, min(acked, 2 * mss) // mss)
        else:
            self._cwnd_cnt_add(acked, mss)
        self.dupacks = 0
        self._rearm_rto()
        # our FIN acknowledged?
        if self.fin_queued and self.snd_una == (self.fin_seq + 1) & M32:
            if state == S.FIN_WAIT_1:
                self._set_state(S.FIN_WAIT_2)
                if self.orphan and not host.fin_wait2_after_ack(self, seg):
                    return False
            elif state == S.CLOSING:
                host.enter_timewait(self, S.TIME_WAIT)
                return False
            elif state == S.LAST_ACK:
                self._destroy(None)
                return False
        self._output()
        if len(self.sndq) <= self.write_mark:
            self._notify |= 4
        return True

    def _cwnd_cnt_add(self, acked: int, mss: int) -> None:
        """Congestion avoidance: one segment more per window's worth of ACKed bytes (RFC 5681)."""
        self.cwnd_cnt += acked
        if self.cwnd_cnt >= self.cwnd * mss:
            self.cwnd_cnt -= self.cwnd * mss
            self.cwnd += 1

    def _ack_advance(self, ack: int) -> None:
        acked = (ack - self.snd_una) & M32
        data = acked
        if self.snd_una == self.iss and self.state in (S.SYN_SENT, S.SYN_RECV):
            data -= 1  # our SYN
        if self.fin_queued and not _before(ack, (self.fin_seq + 1) & M32):
            data -= 1  # our FIN
        if data > 0:
            del self.sndq[:data]
        times = self.sent_times
        while times and not _after(times[0][0], ack):
            times.popleft()
        self.snd_una = ack
        if _before(self.snd_nxt, ack):
            self.snd_nxt = ack

    def _rtt_sample(self, rtt: int) -> None:
        """RFC 6298 §2 with Linux's floor: RTO = SRTT + max(4*RTTVAR, TCP_RTO_MIN)."""
        if rtt < 1:
            rtt = 1
        if self.srtt == 0:
            self.srtt = rtt
            self.rttvar = rtt // 2
        else:
            delta = rtt - self.srtt
            self.rttvar += (abs(delta) - self.rttvar) // 4
            self.srtt += delta // 8
            if self.srtt < 1:
                self.srtt = 1
        self.rto = min(self.srtt + max(4 * self.rttvar, TCP_RTO_MIN), TCP_RTO_MAX)

    def _dupack(self) -> None:
        """Fast retransmit on the third duplicate ACK (RFC 5681 §3.2, NewReno RFC 6582)."""
        self.dupacks += 1
        mss = self._effective_mss()
        if self.dupacks == 3 and not self.in_recovery:
            flight = (self.snd_max - self.snd_una) & M32
            self.ssthresh = max(flight // 2, 2 * mss)
            self.cwnd = self.ssthresh // mss + 3
            self.recover = self.snd_max
            self.in_recovery = True
            self.host.mib["TcpExtTCPRenoRecovery"] += 1
            self._retransmit_head()
            self.host.mib["TcpExtTCPFastRetrans"] += 1
        elif self.dupacks > 3 and self.in_recovery:
            self.cwnd += 1
            self._output()

    def _retransmit_head(self) -> None:
        """Resend the first unacknowledged segment."""
        mss = self._effective_mss()
        n = min(len(self.sndq), mss)
        seq = self.snd_una
        flags = ACK
        if n:
            payload = bytes(self.sndq[:n])
            if n == len(self.sndq) and self.fin_queued and \
                    _after(self.snd_max, (self.fin_seq) & M32):
                flags |= FIN
            self._emit(flags | PSH, seq, payload)
        elif self.fin_queued:
            self._emit(FIN | ACK, self.fin_seq)
        else:
            return
        self.host.mib["TcpRetransSegs"] += 1
        self.total_retrans += 1
        self.rtt_seq = -1

    # ------------------------------------------------------------------ receive text
    def _data(self, seg: Any) -> None:
        """Linux tcp_data_queue: in-order text to the receive queue, the rest out of order."""
        seq = seg.seq
        payload = seg.payload
        rcv_nxt = self.rcv_nxt
        if seq != rcv_nxt:
            off = (rcv_nxt - seq) & M32
            if off < 0x80000000:
                if off >= len(payload):
                    # entirely old: a duplicate (tcp_data_queue "retransmit" path): ACK at once
                    self._enter_quickack()
                    self.ack_pending = True
                    return
                payload = payload[off:]
                seq = rcv_nxt
            else:
                self._queue_ooo(seq, payload)
                return
        win = self._rcv_window_now()
        if len(payload) > win and win >= 0:
            payload = payload[:max(win, 0)] if win else payload[:0]
            if not payload:
                self.ack_pending = True
                return
        self.rcv_buf += payload
        self.rcv_nxt = (rcv_nxt + len(payload)) & M32
        if self.ooo:
            self._drain_ooo()
        self._event_data_recv(len(payload))
        self._notify |= 2

    def _queue_ooo(self, seq: int, payload: bytes) -> None:
        limit = self.rcvbuf - len(self.rcv_buf)
        if self.ooo_bytes + len(payload) > limit:
            self.host.mib["TcpExtTCPOFODrop"] += 1
            return
        self.host.mib["TcpExtTCPOFOQueue"] += 1
        ooo = self.ooo
        base = self.rcv_nxt
        rel = (seq - base) & M32
        i = len(ooo)
        while i > 0 and ((ooo[i - 1][0] - base) & M32) > rel:
            i -= 1
        if i > 0 and ooo[i - 1][0] == seq and len(ooo[i - 1][1]) >= len(payload):
            self._enter_quickack()
            self.ack_pending = True
            return
        ooo.insert(i, (seq, payload))
        self.ooo_bytes += len(payload)
        self._enter_quickack()
        self.ack_pending = True

    def _drain_ooo(self) -> None:
        ooo = self.ooo
        while ooo:
            seq, data = ooo[0]
            off = (self.rcv_nxt - seq) & M32
            if off > 0x7FFFFFFF:
                break  # still a hole
            ooo.pop(0)
            self.ooo_bytes -= len(data)
            if off < len(data):
                chunk = data[off:]
                self.rcv_buf += chunk
                self.rcv_nxt = (self.rcv_nxt + len(chunk)) & M32
        self._enter_quickack()

    def _event_data_recv(self, n: int) -> None:
        """Linux tcp_event_data_recv + tcp_grow_window (simplified): ACK clocking and window."""
        if self.quickack == 0 and not self.pingpong and self.last_snd_data_time == 0 \
                and self.rcv_nxt == (self.irs + 1 + n) & M32:
            self._enter_quickack()
        self.ack_pending = True
        if n >= self.rcv_mss // 2 and self.rcv_ssthresh < self.rcvbuf // 2:
            self.rcv_ssthresh = min(self.rcv_ssthresh + 2 * self.rcv_mss, self.rcvbuf // 2)

    def _enter_quickack(self) -> None:
        q = self.rcv_wnd // (2 * max(self.rcv_mss, 1))
        self.quickack = max(2, min(q, TCP_MAX_QUICKACKS))
        self.pingpong = False

    def _ack_snd_check(self) -> None:
        """Linux __tcp_ack_snd_check: ACK now, or let the delayed-ACK timer do it."""
        if not self.ack_pending:
            return
        unacked = (self.rcv_nxt - self.rcv_wup) & M32
        if (unacked > self.rcv_mss and self._select_window() >= self.rcv_wnd) \
                or (self.quickack and not self.pingpong) or self.ooo:
            self.send_ack()
            return
        self._schedule_delack()

    def _schedule_delack(self) -> None:
        if self.t_delack == NEVER:
            self.t_delack = self.host.now + TCP_ATO_MIN

    def _fin(self, seg: Any) -> None:
        """Linux tcp_fin: the peer's FIN, once everything before it has arrived."""
        fin_seq = (seg.seq + len(seg.payload)) & M32
        state = self.state
        if fin_seq != self.rcv_nxt:
            # FIN beyond a hole: keep it for later (RFC 9293 says wait; we simply ACK what we have)
            if _after(fin_seq, self.rcv_nxt):
                self._enter_quickack()
                self.ack_pending = True
                self._ack_snd_check()
            return
        if state not in S.RECEIVING and state != S.SYN_RECV:
            # A retransmitted FIN in CLOSE-WAIT/CLOSING/LAST-ACK: ACK it (RFC 9293 step 8)
            self.send_ack()
            return
        self.rcv_nxt = (self.rcv_nxt + 1) & M32
        self.rcv_fin = True
        self._notify |= 2
        self.ooo.clear()
        self.ooo_bytes = 0
        if state in (S.ESTABLISHED, S.SYN_RECV):
            # Linux enters pingpong (delayed ACK) so a quick close() sends FIN with the ACK
            self._set_state(S.CLOSE_WAIT)
            self.pingpong = True
            self.quickack = 0
            self.ack_pending = True
            self._schedule_delack()
        elif state == S.FIN_WAIT_1:
            # simultaneous close: our FIN not yet acknowledged (RFC 9293 §3.6 case 2)
            self.send_ack()
            self._set_state(S.CLOSING)
        elif state == S.FIN_WAIT_2:
            self.send_ack()
            self.host.enter_timewait(self, S.TIME_WAIT)

    # ------------------------------------------------------------------ output
    def _unsent(self) -> int:
        sent = (self.snd_nxt - self.snd_una) & M32
        if self.state in (S.SYN_SENT, S.SYN_RECV):
            return len(self.sndq)
        if self.fin_queued and not _before(self.snd_nxt, (self.fin_seq + 1) & M32):
            return 0
        return len(self.sndq) - sent

    def _output(self, force_one: bool = False) -> None:
        """Send what the windows allow (Linux tcp_write_xmit, with Nagle's rule)."""
        state = self.state
        if state not in (S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
            return
        mss = self._effective_mss()
        sndq = self.sndq
        host = self.host
        sent_any = False
        while True:
            seq = self.snd_nxt
            offset = (seq - self.snd_una) & M32
            avail = len(sndq) - offset
            if avail <= 0:
                if self.fin_queued and seq == self.fin_seq:
                    self._emit(FIN | ACK, seq)  # FIN after the queued data
                    self.snd_nxt = (seq + 1) & M32
                    self.sent_times.append((self.snd_nxt, host.now))
                    sent_any = True
                    if _after(self.snd_nxt, self.snd_max):
                        self.snd_max = self.snd_nxt
                break
            in_flight = (seq - self.snd_una) & M32
            usable = min(self.snd_wnd, self.cwnd * mss) - in_flight
            if force_one and usable < mss:
                usable = mss
            n = avail if avail < mss else mss
            if n > usable:
                if self.snd_wnd == 0 and in_flight == 0:
                    self._arm_persist()
                break
            if n < mss and not self.nodelay and not self.fin_queued and not force_one \
                    and _after(self.snd_sml, self.snd_una):
                break  # Nagle with Minshall's rule (tcp_minshall_check): one small segment
                #        in flight at most
            flags = ACK
            if offset + n == len(sndq):
                flags |= PSH  # the last segment of what was written
                if self.fin_queued and ((seq + n) & M32) == self.fin_seq:
                    flags |= FIN  # FIN rides on the last data segment
            self._emit(flags, seq, bytes(sndq[offset:offset + n]))
            self.snd_nxt = (seq + n + (1 if flags & FIN else 0)) & M32
            self.sent_times.append((self.snd_nxt, host.now))
            if n < mss:
                self.snd_sml = self.snd_nxt
            self.last_snd_data_time = host.now
            if (host.now - self.last_rcv_time) < TCP_ATO_MIN:
                self.pingpong = True  # Linux tcp_event_data_sent: interactive exchange
            sent_any = True
            if self.rtt_seq < 0 and not self.retransmits and not _before(seq, self.snd_max):
                self.rtt_seq = seq
                self.rtt_time = host.now
            if _after(self.snd_nxt, self.snd_max):
                self.snd_max = self.snd_nxt
            if force_one:
                break
        if sent_any and self.t_rto == NEVER:
            self._rearm_rto()

    def _arm_persist(self) -> None:
        if self.misc_kind != "persist":
            self.misc_kind = "persist"
            self.t_misc = self.host.now + min(self.rto << self.backoff, TCP_RTO_MAX)

    # ------------------------------------------------------------------ user calls
    def send(self, data: bytes | bytearray | memoryview, limit: bool = False) -> int:
        """Queue bytes to send.  With limit=True accept only what fits in sndbuf (socket
        semantics: a short write); otherwise accept everything (asyncio transports buffer)."""
        state = self.state
        if state in S.SEND_CLOSED or self.fin_queued:
            raise BrokenPipeError(32, "Broken pipe: the send side is shut down")
        if state == S.CLOSED or state == S.LISTEN:
            raise OSError(107, "Transport endpoint is not connected")
        n = len(data)
        if limit:
            room = self.sndbuf - len(self.sndq)
            if room <= 0:
                return 0
            n = min(n, room)
            self.sndq += memoryview(data)[:n]
        else:
            self.sndq += data
        self._output()
        self._arm()
        return n

    def recv(self, n: int = -1) -> bytes:
        """Take up to n bytes from the receive queue and reopen the window if it was small."""
        buf = self.rcv_buf
        if n < 0 or n >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            data = bytes(buf[:n])
            del buf[:n]
        if data and self.state in S.RECEIVING:
            self._window_update_check()
        return data

    def _window_update_check(self) -> None:
        """Linux tcp_cleanup_rbuf: announce a window that grew a lot since we last spoke."""
        cur = self._rcv_window_now()
        new = self._select_window()
        if new >= 2 * cur and new - cur >= self.rcv_mss or (cur < self.rcv_mss <= new):
            self.send_ack()
            self._arm()

    @property
    def rcv_queued(self) -> int:
        return len(self.rcv_buf)

    @property
    def snd_queued(self) -> int:
        """Bytes written but not yet acknowledged (ioctl SIOCOUTQ)."""
        return len(self.sndq)

    def shutdown_write(self) -> None:
        """shutdown(SHUT_WR): FIN after the queued data (Linux tcp_shutdown / tcp_close_state)."""
        state = self.state
        if self.fin_queued or state in S.SEND_CLOSED:
            return
        if state in (S.SYN_SENT,):
            # FIN goes after the handshake completes
            self.fin_queued = True
            self.fin_seq = (self.snd_una + 1 + len(self.sndq)) & M32
            return
        self._queue_fin()
        self._output()
        self._arm()

    def _queue_fin(self) -> None:
        state = self.state
        self.fin_queued = True
        self.fin_seq = (self.snd_una + len(self.sndq)) & M32
        if state == S.SYN_RECV:
            self.fin_seq = (self.snd_una + 1 + len(self.sndq)) & M32
            return  # FIN-WAIT-1 once the handshake completes; Linux sends FIN then
        if state == S.ESTABLISHED:
            self._set_state(S.FIN_WAIT_1)
        elif state == S.CLOSE_WAIT:
            self._set_state(S.LAST_ACK)

    def shutdown_read(self) -> None:
        """shutdown(SHUT_RD): nothing on the wire; later reads see EOF."""
        self.rcv_shutdown = True

    def close(self) -> None:
        """close(): Linux tcp_close.  The application lets go; the connection may live on as an
        orphan until its FIN is acknowledged (or TIME-WAIT takes over)."""
        state = self.state
        host = self.host
        mib = host.mib
        self.rcv_shutdown = True
        self.user = NULL_USER
        if state == S.CLOSED:
            return
        if state == S.SYN_SENT:
            self._destroy(None, notify=False)
            return
        unread = len(self.rcv_buf) + (0 if not self.ooo else 0)
        if unread:
            # RFC 2525 §2.17: unread data means the peer's data was lost: reset.
            mib["TcpExtTCPAbortOnClose"] += 1
            if state not in (S.SYN_RECV,):
                self._send_rst()
            self._destroy(None, notify=False)
            return
        if self.linger == 0:
            # SO_LINGER {on, 0}: abortive close (Linux tcp_disconnect), counted as AbortOnData.
            mib["TcpExtTCPAbortOnData"] += 1
            if state not in (S.SYN_RECV,) and state not in (S.TIME_WAIT,):
                self._send_rst()
            self._destroy(None, notify=False)
            return
        if not self.fin_queued and state in (S.ESTABLISHED, S.CLOSE_WAIT, S.SYN_RECV):
            self._queue_fin()
            self._output()
        self.orphan = True
        host.orphaned(self)
        if self.state == S.FIN_WAIT_2:
            host.fin_wait2_entered(self)
        if self.state != S.CLOSED:
            self._arm()

    def abort(self) -> None:
        """Send RST and forget the connection (transport.abort(), SO_LINGER {on,0} close)."""
        state = self.state
        if state == S.CLOSED:
            return
        if state not in (S.SYN_SENT, S.LISTEN):
            self._send_rst()
        if state in (S.ESTABLISHED, S.CLOSE_WAIT):
            self.host.mib["TcpEstabResets"] += 1
        self.user = NULL_USER
        self._destroy(None, notify=False)

    # ------------------------------------------------------------------ teardown
    def _destroy(self, exc: BaseException | None, notify: bool = True) -> None:
        """The connection is gone (CLOSED): free timers and table entries, tell the user."""
        if self.state == S.CLOSED and self.closed_notified:
            return
        self.error = exc
        self.t_rto = self.t_delack = self.t_misc = NEVER
        if self.timer is not None and self.timer.active:
            self.host.wheel.cancel(self.timer)
        self._set_state(S.CLOSED)
        self.host.unlink(self)
        if notify:
            self._notify |= 16
        else:
            self.closed_notified = True

    def _deliver(self) -> None:
        """Run the user callbacks collected while processing (never in mid-transition)."""
        note = self._notify
        if not note:
            return
        self._notify = 0
        user = self.user
        if note & 1:
            user.tcp_established(self)
        if note & 2:
            user.tcp_data(self)
        if note & 4 and not note & 16:
            user.tcp_writable(self)
        if note & 16 and not self.closed_notified:
            self.closed_notified = True
            user.tcp_closed(self, self.error)

    # ------------------------------------------------------------------ visibility
    def timer_info(self) -> tuple[str, int, int] | None:
        """(kind, ms left, retransmissions) like ss -o's timer:(on,200ms,0)."""
        now = self.host.now
        if self.t_rto != NEVER:
            return ("on", max(0, self.t_rto - now), self.retransmits)
        if self.t_misc != NEVER:
            kind = {"persist": "persist", "fin_wait2": "timewait"}.get(self.misc_kind,
                                                                      self.misc_kind)
            return (kind, max(0, self.t_misc - now), self.probes)
        return None

    def __repr__(self) -> str:
        from ustack.wire import int_to_ip
        return (f"<Connection {int_to_ip(self.laddr)}:{self.lport} -> "
                f"{int_to_ip(self.raddr)}:{self.rport} {self.state_name}>")
