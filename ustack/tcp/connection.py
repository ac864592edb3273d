"""One TCP connection (the TCB) and its state machine.  No I/O, no clock: time is `host.now`.

Everything that changes a connection's state goes through `Connection._set_state`, and every
rule names where it comes from: RFC 9293 sections, or the Linux function whose behaviour ustack
reproduces (tcp_rcv_state_process, tcp_ack, tcp_data_queue, tcp_fin, tcp_close ... in
net/ipv4/tcp_input.c, tcp_output.c, tcp.c).  What happens once a connection reaches TIME-WAIT
lives in timewait.py.  The connection's roles live beside it, each in its own file: the
receive window and delayed ACKs (rcvwnd.py), what leaves on the wire when (output.py), the
scoreboard and loss recovery (recovery.py) and congestion control (cong/).

Sequence numbers are plain ints modulo 2**32; `_before(a, b)` is Linux's before(): a < b in
sequence space.  The send queue `sndq` holds the bytes from snd_una on; the segments sent from
it are the scoreboard's (`rec.rtx`).  As in Linux, snd_nxt never moves back (a timeout marks
segments lost instead), so `snd_max`, the highest sequence number ever sent, equals it.
"""
from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from ustack._segment import ACK, FIN, RST, SYN, build_tcp
from ustack.wire import gso_packet
from ustack.tcp import cong
from ustack.tcp import states as S
from ustack.tcp.cong import CA_CWR, CA_LOSS, CA_OPEN, TCP_INFINITE_SSTHRESH
from ustack.tcp.paws import paws_check
from ustack.tcp.recovery import (FLAG_ACKED, FLAG_CA_ALERT, FLAG_DATA, FLAG_DATA_ACKED,
                                 FLAG_DSACKING_ACK, FLAG_DSACK_TLP, FLAG_FORWARD_PROGRESS,
                                 FLAG_NOT_DUP, FLAG_SET_XMIT_TIMER, FLAG_SND_UNA_ADVANCED,
                                 FLAG_WIN_UPDATE, REXMIT_NEW, REXMIT_NONE, Recovery)
from ustack.tcp.timers import (T_FIN_WAIT2, T_LOSS_PROBE, T_NONE, T_PROBE0, T_REO_TIMEOUT,
                               T_RETRANS, timer_name)

if TYPE_CHECKING:  # pragma: no cover
    from ustack.host import Host

from ustack.tcp.common import (GSO_MAX_SIZE, M32, MAX_WSCALE, NEVER, PAWS_ACK, PAWS_DATA,
                               TCP_ATO_MIN, TCP_DEFAULT_SCALING_RATIO, TCP_INIT_CWND,
                               TCP_RTO_MAX, TCP_RTO_MIN, TCP_TIMEOUT_INIT, TCP_TIMEOUT_MIN,
                               TS_OPT_LEN, _after, _before)
from ustack.tcp.output import SendSide
from ustack.tcp.rcvwnd import (ReceiveSide, initial_window, initial_wscale, rx_truesize,
                               skb_truesize)

__all__ = ["Connection", "ConnectionUser", "NULL_USER", "NEVER", "retransmits_timed_out",
           "skb_truesize", "GSO_MAX_SIZE", "M32", "MAX_WSCALE", "_after", "_before"]


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


class LogEvent(NamedTuple):
    """One entry of a connection's event log: when (ms, the host's clock), what, details.

    kinds: "state" (old, new), "timer" (which: rto, loss-probe, reorder, delack, persist,
    fin-wait-2, keepalive), "retransmit" (seq, length), "in"/"out" (flags, seq, ack, window,
    payload length), "timewait" (substate, lifetime ms)."""

    t: int
    kind: str
    detail: tuple


_RTO_KINDS = {T_RETRANS: "rto", T_LOSS_PROBE: "loss-probe", T_REO_TIMEOUT: "reorder"}
_MISC_KINDS = {T_PROBE0: "persist", T_FIN_WAIT2: "fin-wait-2"}


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


class Connection(ReceiveSide, SendSide):
    __slots__ = (
        "host", "laddr", "lport", "raddr", "rport", "key", "state", "user", "listener",
        # send sequence space (RFC 9293 §3.3.1)
        "iss", "snd_una", "snd_nxt", "snd_max", "snd_wnd", "snd_wl1", "snd_wl2", "max_window",
        "snd_wscale", "mss", "peer_mss", "snd_sml", "sndq", "sndbuf", "fin_queued", "fin_seq",
        "write_mark",
        # receive sequence space
        "irs", "rcv_nxt", "rcv_wnd", "rcv_wup", "rcv_wscale", "rcv_mss", "advmss", "rcvbuf",
        "rcv_ssthresh", "window_clamp", "rcv_buf", "rcv_bytes", "ooo", "ooo_bytes", "rcv_fin",
        "rcv_shutdown",
        # header prediction is on (Linux pred_flags != 0; ustack/tcp/fastpath.py)
        "pred",
        # receive memory as Linux counts it: skb truesize against sk_rcvbuf, and the ratio of
        # payload to truesize that turns free memory into window (tcp_win_from_space)
        "rmem_alloc", "rcv_truesize", "scaling_ratio",
        # receive memory reserved ahead in whole pages (sk_forward_alloc): header prediction
        # takes a segment only if its memory is already reserved
        "fwd_alloc",
        # options
        "ts_ok", "ts_off", "ts_recent", "ts_recent_stamp", "sack_ok", "wscale_ok",
        # congestion control and RTT (RFC 5681, RFC 6298)
        "cwnd", "cwnd_cnt", "ssthresh", "cwnd_clamp", "prior_cwnd", "cwnd_stamp", "cwnd_used",
        "is_cwnd_limited", "max_packets_out", "cwnd_usage_seq", "ca", "rec", "rcv_tsecr_ms",
        "srtt", "rttvar", "rto",
        "syn_time", "backoff", "retransmits", "retrans_stamp", "total_retrans",
        # delayed ACK (Linux icsk_ack)
        "ack_pending", "ack_now", "ack_pushed", "quickack", "pingpong", "ato", "lrcvtime",
        "last_seg_size", "dsack", "last_oow_ack", "last_snd_data_time",
        # tail loss probe (Linux tcp_schedule_loss_probe) and the RTO slot's current use
        "tlp_high_seq", "tlp_retrans", "rto_kind", "total_rto",
        # timers: one wheel entry, several deadlines
        "t_rto", "t_delack", "t_misc", "misc_kind", "timer",
        # socket options and lifecycle
        "nodelay", "cork", "tail_push", "eor_seqs", "linger", "linger2", "user_timeout",
        "user_mss", "notsent_lowat", "sndbuf_locked", "rcvbuf_locked", "pmtu", "soft_error",
        "reuseaddr", "binding", "orphan", "error", "probes",
        # keepalive (SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT; 0: the sysctl) and its timer
        "keepalive", "keepidle", "keepintvl", "keepcnt", "t_keep", "rcv_tstamp",
        "closed_notified", "created", "_notify", "_queued", "log",
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
        self.rcvbuf = sysctl["net.ipv4.tcp_rmem"][1]   # sk_rcvbuf
        self.rmem_alloc = 0
        self.fwd_alloc = 0
        self.rcv_truesize: deque[list[int]] = deque()    # [bytes left, truesize] per segment
        self.scaling_ratio = TCP_DEFAULT_SCALING_RATIO
        self.window_clamp = 65535 << MAX_WSCALE
        self.rcv_ssthresh = 0
        self.rcv_wscale = 0
        # the receive queue: the segments' payloads as they came (handed up without a copy
        # when one is read whole), and how many bytes they hold
        self.rcv_buf: deque[bytes] = deque()
        self.rcv_bytes = 0
        self.ooo: list[tuple[int, bytes]] = []
        self.ooo_bytes = 0
        self.rcv_fin = False
        self.rcv_shutdown = False
        self.pred = False
        self.ts_ok = False
        self.ts_off = 0
        self.ts_recent = 0
        self.ts_recent_stamp = 0
        self.sack_ok = False
        self.wscale_ok = False
        self.cwnd = TCP_INIT_CWND
        self.cwnd_cnt = 0
        self.ssthresh = TCP_INFINITE_SSTHRESH
        self.cwnd_clamp = 0xFFFFFFFF
        self.prior_cwnd = 0
        self.cwnd_stamp = now
        self.cwnd_used = 0
        self.is_cwnd_limited = False
        self.max_packets_out = 0
        self.cwnd_usage_seq = 0
        self.ca = cong.create(sysctl["net.ipv4.tcp_congestion_control"])
        self.rec = Recovery(self)
        self.rcv_tsecr_ms: int | None = None   # the last ACK's TSecr on our clock (or None)
        self.srtt = 0
        self.rttvar = 0
        self.rto = TCP_TIMEOUT_INIT
        self.syn_time = now
        self.backoff = 0
        self.retransmits = 0
        self.retrans_stamp = 0
        self.total_retrans = 0
        self.ack_pending = False
        self.quickack = 0
        self.pingpong = False
        self.ack_now = False
        self.ack_pushed = 0
        self.ato = 0
        self.lrcvtime = now
        self.last_seg_size = 0
        self.dsack: tuple[int, int] | None = None
        self.last_oow_ack = -1
        self.tlp_high_seq = -1
        self.tlp_retrans = False
        self.rto_kind = T_RETRANS
        self.total_rto = 0
        self.last_snd_data_time = 0
        self.t_rto = self.t_delack = self.t_misc = NEVER
        self.misc_kind = T_NONE
        self.timer = None
        self.nodelay = False
        self.linger: int | None = None
        self.linger2: int | None = None
        self.user_timeout = 0          # TCP_USER_TIMEOUT, ms (0: tcp_retries2 decides)
        self.cork = False              # TCP_CORK: partial segments wait, in flight or not
        self.tail_push = True          # the unsent tail carries PSH (tcp_mark_push; not after
        #                                a MSG_MORE write)
        self.eor_seqs: deque[int] = deque()   # MSG_EOR record ends not yet acknowledged
        self.user_mss = 0              # TCP_MAXSEG (rx_opt.user_mss; 0: none)
        self.notsent_lowat = 0         # TCP_NOTSENT_LOWAT (0: net.ipv4.tcp_notsent_lowat)
        self.sndbuf_locked = False     # SO_SNDBUF was set (SOCK_SNDBUF_LOCK): no auto-growth
        self.rcvbuf_locked = False     # SO_RCVBUF was set (SOCK_RCVBUF_LOCK)
        self.pmtu = host.mtu           # the path MTU (lowered by ICMP fragmentation needed)
        self.soft_error = 0            # sk_err_soft: an ICMP error, reported on a timeout
        self.reuseaddr = False
        self.binding = None            # the local port's PortBinding (ustack.tcp.ports)
        self.orphan = False
        self.error: BaseException | None = None
        self.probes = 0
        self.keepalive = False
        self.keepidle = self.keepintvl = self.keepcnt = 0
        self.t_keep = NEVER
        self.rcv_tstamp = now          # when the last acceptable ACK came (tp->rcv_tstamp)
        self.closed_notified = False
        self.created = now
        self._notify = 0
        self._queued = False           # on the host's event queue
        # the event log (ustack.event_log > 0): state changes, timers, retransmissions and
        # every segment in and out, as LogEvent(ms, kind, detail)
        self.log = host.new_log(self) if sysctl["ustack.event_log"] else None

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
            if new == S.CLOSED:
                mib["TcpEstabResets"] += 1  # Linux tcp_set_state: any close from these states
        self.state = new
        if self.log is not None:
            self.note("state", S.NAMES[old], S.NAMES[new])
        self.host.state_changed(self, old, new)

    def note(self, kind: str, *detail: Any) -> None:
        """Add an event to this connection's log (when it keeps one)."""
        log = self.log
        if log is not None:
            log.append(LogEvent(self.host.now, kind, detail))

    @property
    def state_name(self) -> str:
        return S.NAMES[self.state]

    # ------------------------------------------------------------------ helpers
    def _tsval(self) -> int:
        return (self.host.now + self.ts_off) & M32

    def _effective_mss(self) -> int:
        return self.mss - (TS_OPT_LEN if self.ts_ok else 0)

    def effective_mss(self) -> int:
        """The MSS a segment carries now (TCP_MAXSEG on a connected socket: mss_cache)."""
        return self._effective_mss()

    def apply_options(self, options: dict[str, Any]) -> None:
        """Socket options given at connect() or inherited from a listener (field names)."""
        for name, value in options.items():
            if name == "congestion_control":
                self.set_congestion_control(value)
            else:
                setattr(self, name, value)

    def set_nodelay(self, on: bool) -> None:
        """TCP_NODELAY; turning it on pushes what Nagle held (tcp_push_pending_frames)."""
        self.nodelay = on
        if on and self.state in (S.ESTABLISHED, S.CLOSE_WAIT):
            self._output()
            self._arm()

    # ------------------------------------------------------------------ keepalive
    def _keepalive_time(self) -> int:
        """keepalive_time_when, ms."""
        return 1000 * (self.keepidle or self.host.sysctl["net.ipv4.tcp_keepalive_time"])

    def _keepalive_elapsed(self) -> int:
        """keepalive_time_elapsed: since the last data or ACK from the peer, ms."""
        now = self.host.now
        return min(now - self.lrcvtime, now - self.rcv_tstamp)

    def set_keepalive(self, on: bool) -> None:
        """SO_KEEPALIVE (tcp_set_keepalive): the timer starts a full idle time from now."""
        self.keepalive = on
        if self.state in (S.CLOSED, S.LISTEN):
            return
        self.t_keep = self.host.now + self._keepalive_time() if on else NEVER
        self._arm()

    def set_keepalive_time(self, seconds: int) -> None:
        """TCP_KEEPIDLE (tcp_sock_set_keepidle_locked): the timer counts from the last
        sign of life."""
        self.keepidle = seconds
        if self.keepalive and self.state not in (S.CLOSED, S.LISTEN):
            self.t_keep = self.host.now + max(0, self._keepalive_time() -
                                              self._keepalive_elapsed())
            self._arm()

    def _start_keepalive(self) -> None:
        """At the end of the handshake (tcp_finish_connect, tcp_create_openreq_child)."""
        if self.keepalive:
            self.t_keep = self.host.now + self._keepalive_time()

    def _keepalive_timer(self) -> None:
        """Linux tcp_keepalive_timer for an open connection."""
        if not self.keepalive or self.state in (S.CLOSED, S.SYN_SENT) or \
                (self.orphan and self.state == S.FIN_WAIT_2):
            return
        host = self.host
        when = self._keepalive_time()
        if self.rec.packets_out or self._unsent() > 0:
            self.t_keep = host.now + when      # alive without keepalive
            return
        elapsed = self._keepalive_elapsed()
        if elapsed >= when:
            probes = self.keepcnt or host.sysctl["net.ipv4.tcp_keepalive_probes"]
            if (self.user_timeout and elapsed >= self.user_timeout and self.probes > 0) or \
                    (not self.user_timeout and self.probes >= probes):
                self._send_rst()                # tcp_send_active_reset + tcp_write_err
                self._destroy(self._timeout_error())
                return
            # tcp_write_wakeup with nothing to send: a bare ACK one below snd_una
            self._emit(ACK, (self.snd_una - 1) & M32)
            host.mib["TcpExtTCPKeepAlive"] += 1
            self.probes += 1
            self.t_keep = host.now + 1000 * (self.keepintvl or
                                             host.sysctl["net.ipv4.tcp_keepalive_intvl"])
        else:
            self.t_keep = host.now + when - elapsed

    def _emit(self, flags: int, seq: int, payload: bytes = b"", *, syn_options: bool = False,
              ack: int | None = None, gso: int = 0) -> None:
        """Build one segment and queue it on the host's outbox.  `gso`: the payload is a
        burst of segments of that size, sent as one super-segment the device cuts (TSO)."""
        host = self.host
        if flags & ACK:
            if ack is None:
                ack = self.rcv_nxt
            if not (flags & SYN):
                win = self._select_window()
                self.rcv_wnd = win
                self.rcv_wup = self.rcv_nxt
                window = win >> self.rcv_wscale
                if not window:
                    self.pred = False         # tcp_select_window: a zero window offered
            else:
                window = min(self.rcv_wnd, 65535)
            # Linux tcp_event_ack_sent -> tcp_dec_quickack_mode, clear the delayed-ACK state
            if self.quickack and self.ack_pending:
                if self.quickack <= 1:
                    self.quickack = 0
                    self.ato = TCP_ATO_MIN
                else:
                    self.quickack -= 1
            self.ack_pending = False
            self.ack_now = False
            self.ack_pushed = 0
            if self.t_delack != NEVER:
                self.t_delack = NEVER
        else:
            ack = 0
            window = min(self.rcv_wnd, 65535) if flags & SYN else 0
        ts_val = None
        ts_ecr = 0
        if self.ts_ok and not (flags & RST and not flags & ACK):
            ts_val = self._tsval()
            # a SYN echoes ts_recent too: 0, or what a reused TIME-WAIT record passed on
            # (tcp_syn_options)
            ts_ecr = self.ts_recent if flags & (ACK | SYN) else 0
        sack_blocks = None
        if self.sack_ok and (self.ooo or self.dsack) and not (flags & SYN):
            sack_blocks = self._sack_blocks()
            self.dsack = None
        if syn_options:
            pkt = build_tcp(
                self.laddr, self.raddr, self.lport, self.rport, seq, ack, flags, window, payload,
                mss=self.advmss, wscale=self.rcv_wscale if self.wscale_ok else -1,
                sack_ok=self.sack_ok, ts_val=ts_val, ts_ecr=ts_ecr, ttl=host.ttl)
        else:
            pkt = build_tcp(
                self.laddr, self.raddr, self.lport, self.rport, seq, ack, flags, window, payload,
                ts_val=ts_val, ts_ecr=ts_ecr, sack_blocks=sack_blocks, ttl=host.ttl)
        if gso:
            host.output(gso_packet(pkt, gso), -(-len(payload) // gso))
        else:
            host.output(pkt)
        if self.log is not None:
            self.note("out", flags, seq, ack, window, len(payload))
        if flags & RST:
            host.mib["TcpOutRsts"] += 1

    def _sack_blocks(self) -> list[tuple[int, int]]:
        """SACK blocks (RFC 2018), a D-SACK block first (RFC 2883), newest first after it."""
        blocks: list[list[int]] = []
        for seq, data, fin in self.ooo:
            end = (seq + len(data) + fin) & M32
            if blocks and blocks[-1][1] == seq:
                blocks[-1][1] = end
            else:
                blocks.append([seq, end])
        limit = 3 if self.ts_ok else 4
        out = [(a, b) for a, b in blocks[::-1]]
        if self.dsack is not None:
            out.insert(0, self.dsack)
        return out[:limit]

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
        if self.t_keep < d:
            d = self.t_keep
        wheel = self.host.wheel
        if d == NEVER:
            if self.timer is not None and self.timer.active:
                wheel.cancel(self.timer)
        elif self.timer is None:
            self.timer = wheel.schedule(d, self)
        elif not self.timer.active or self.timer.deadline != d:
            wheel.reschedule(self.timer, d)

    def _head_time(self) -> int:
        """When the first unacknowledged segment was last sent (Linux: its skb timestamp)."""
        if self.state in (S.SYN_SENT, S.SYN_RECV):
            return self.syn_time
        rtx = self.rec.rtx
        return rtx[0].time if rtx else self.host.now

    def rto_pending(self) -> bool:
        """icsk_pending == ICSK_TIME_RETRANS."""
        return self.t_rto != NEVER and self.rto_kind == T_RETRANS

    def reo_pending(self) -> bool:
        return self.t_rto != NEVER and self.rto_kind == T_REO_TIMEOUT

    def arm_reo_timer(self, timeout: int) -> None:
        """RACK's reordering timer (ICSK_TIME_REO_TIMEOUT), no later than the RTO would be."""
        self.t_rto = self.host.now + min(timeout, self.rto)
        self.rto_kind = T_REO_TIMEOUT

    def _reset_rto_timer(self) -> None:
        """tcp_reset_xmit_timer(ICSK_TIME_RETRANS, icsk_rto): a full RTO from now."""
        self.t_rto = self.host.now + min(self.rto << self.backoff, TCP_RTO_MAX)
        self.rto_kind = T_RETRANS

    def _rearm_rto(self) -> None:
        """Linux tcp_rearm_rto: a full RTO from now; when the pending timer was a loss probe
        or RACK's, the RTO still counts from when the head segment was sent."""
        if self.rec.rtx or (self.state in (S.SYN_SENT, S.SYN_RECV)):
            rto = min(self.rto << self.backoff, TCP_RTO_MAX)
            now = self.host.now
            if self.t_rto != NEVER and self.rto_kind in (T_LOSS_PROBE, T_REO_TIMEOUT):
                delta = self._head_time() + rto - now
                rto = max(delta, 1)
            self.rto_kind = T_RETRANS
            self.t_rto = now + rto
        else:
            self.rto_kind = T_RETRANS
            self.t_rto = NEVER

    def _schedule_loss_probe(self, advancing_rto: bool) -> bool:
        """Linux tcp_schedule_loss_probe (tcp_early_retrans 3 or 4): probe the tail after
        about two RTTs instead of waiting for the RTO; SACK connections in Open or CWR only."""
        if self.host.sysctl["net.ipv4.tcp_early_retrans"] not in (3, 4) or not self.sack_ok \
                or self.rec.ca_state not in (CA_OPEN, CA_CWR):
            return False
        packets_out = self.rec.packets_out
        if packets_out == 0:
            return False
        if self.srtt:
            timeout = 2 * self.srtt + (TCP_RTO_MIN if packets_out == 1 else 2)
        else:
            timeout = TCP_TIMEOUT_INIT
        now = self.host.now
        if advancing_rto:
            rto_delta = self.rto
        else:
            rto_delta = self._head_time() + min(self.rto << self.backoff, TCP_RTO_MAX) - now
        if rto_delta > 0:
            timeout = min(timeout, rto_delta)
        self.t_rto = now + max(timeout, 1)
        self.rto_kind = T_LOSS_PROBE
        return True

    def _send_loss_probe(self) -> None:
        """Linux tcp_send_loss_probe: new data if the window allows, else the last segment
        again (not marked as a retransmission); then a full RTO from now."""
        host = self.host
        if self.tlp_high_seq < 0 and self.state != S.CLOSED:
            before = self.snd_nxt
            mss = self._effective_mss()
            unsent = self._unsent()
            sent = False
            if unsent > 0 and not _after((self.snd_nxt + min(unsent, mss)) & M32,
                                         (self.snd_una + self.snd_wnd) & M32):
                self.tlp_retrans = False
                self._output(push_one=2)
                sent = self.snd_nxt != before
            elif self.rec.rtx:
                skb = self.rec.rtx[-1]
                self._transmit_skb(skb)
                self.tlp_retrans = True
                sent = True
            if sent:
                self.tlp_high_seq = self.snd_nxt
                host.mib["TcpExtTCPLossProbes"] += 1
                self.t_rto = NEVER      # icsk_pending = 0: the RTO counts from now
        self._rearm_rto()

    def on_timer(self) -> None:
        """Called by the host when this connection's wheel entry fires."""
        now = self.host.now
        if self.log is not None:
            for kind, when in (("delack", self.t_delack),
                               (_RTO_KINDS.get(self.rto_kind, "rto"), self.t_rto),
                               (_MISC_KINDS.get(self.misc_kind, "misc"), self.t_misc),
                               ("keepalive", self.t_keep)):
                if when <= now:
                    self.note("timer", kind)
        if self.t_delack <= now:
            self.t_delack = NEVER
            if self.ack_pending and self.state != S.CLOSED:
                # Linux tcp_delack_timer_handler: a missed delayed ACK inflates ato, or ends
                # pingpong mode
                if not self.pingpong:
                    self.ato = min(self.ato << 1, self.rto)
                else:
                    self.pingpong = False
                    self.ato = TCP_ATO_MIN
                self.host.mib["TcpExtDelayedACKs"] += 1
                self.send_ack()
        if self.t_rto <= now:
            self.t_rto = NEVER
            kind = self.rto_kind
            self.rto_kind = T_RETRANS
            if kind == T_LOSS_PROBE:
                self._send_loss_probe()
            elif kind == T_REO_TIMEOUT:
                if self.state != S.CLOSED:
                    self.rec.reo_timeout()    # tcp_rack_reo_timeout
            else:
                self._retransmit_timer()
        if self.t_misc <= now and self.state != S.CLOSED:
            kind = self.misc_kind
            self.t_misc = NEVER
            self.misc_kind = T_NONE
            if kind == T_PROBE0:
                self._probe_timer()
            elif kind == T_FIN_WAIT2:
                # tcp_keepalive_timer for an orphan in FIN-WAIT-2 whose timeout is longer than
                # TIME-WAIT: after waiting (timeout - TIME-WAIT length) it becomes a record.
                self.host.tw.fin_wait2_timer(self)
        if self.t_keep <= now and self.state != S.CLOSED:
            self.t_keep = NEVER
            self._keepalive_timer()
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
        if state not in (S.SYN_SENT, S.SYN_RECV) and not self.rec.rtx:
            return      # nothing in flight (tcp_retransmit_timer: !packets_out)
        sysctl = host.sysctl
        self.tlp_high_seq = -1
        # counted for every firing, the one that gives up too (tcp_retransmit_timer counts
        # before tcp_write_timeout; reqsk_timer_handler via tcp_syn_ack_timeout)
        mib["TcpExtTCPTimeouts"] += 1
        if state == S.SYN_SENT:
            # Linux tcp_write_timeout: a count, with tcp_syn_linear_timeouts extra tries
            limit = sysctl["net.ipv4.tcp_syn_retries"] + sysctl["net.ipv4.tcp_syn_linear_timeouts"]
            if self.retransmits >= limit:
                mib["TcpAttemptFails"] += 1                  # tcp_done from SYN-SENT
                mib["TcpExtTCPAbortOnTimeout"] += 1          # tcp_write_err
                self._destroy(self._timeout_error())
                return
            limit = 1 << 30
            base = TCP_TIMEOUT_INIT
        elif state == S.SYN_RECV:
            # a request socket: tcp_synack_retries SYN-ACKs again, then it goes away
            # (reqsk_timer_handler counts them)
            if self.retransmits >= sysctl["net.ipv4.tcp_synack_retries"]:
                self._destroy(None, notify=False)
                return
            limit = 1 << 30
            base = TCP_TIMEOUT_INIT
        else:
            limit = sysctl["net.ipv4.tcp_retries2"]
            base = TCP_RTO_MIN
            if self.orphan:
                # tcp_write_timeout for a dead socket: the orphan limit first
                alive = min(self.rto << self.backoff, TCP_RTO_MAX) < TCP_RTO_MAX
                limit = host.orphan_retries(alive)
                timed_out = bool(self.retransmits) and \
                    host.now - self.retrans_stamp >= self._give_up_after(limit, base)
                if host.out_of_resources(self, alive or not timed_out):
                    return
        if self.retransmits and host.now - self.retrans_stamp >= \
                (self._give_up_after(limit, base) if state not in (S.SYN_SENT, S.SYN_RECV)
                 else retransmits_timed_out(limit, base)):
            if state == S.SYN_RECV:
                self._destroy(None, notify=False)  # an embryonic connection just goes away
                return
            mib["TcpExtTCPAbortOnTimeout"] += 1
            self._destroy(self._timeout_error())
            return
        if state in (S.SYN_SENT, S.SYN_RECV):
            if self.retransmits == 0:
                self.retrans_stamp = host.now
        elif self.retransmits == 0:
            # which recovery failed (tcp_retransmit_timer, first firing only)
            rec = self.rec
            if rec.ca_state == cong.CA_RECOVERY:
                mib["TcpExtTCPSackRecoveryFail" if self.sack_ok else
                    "TcpExtTCPRenoRecoveryFail"] += 1
            elif rec.ca_state == CA_LOSS:
                mib["TcpExtTCPLossFailures"] += 1
            elif rec.ca_state == cong.CA_DISORDER or rec.sacked_out:
                mib["TcpExtTCPSackFailures" if self.sack_ok else "TcpExtTCPRenoFailures"] += 1
        if state not in (S.SYN_SENT, S.SYN_RECV):
            self.rec.enter_loss()                          # tcp_enter_loss
        self.retransmits += 1
        self.total_rto += 1
        if state in (S.SYN_SENT, S.SYN_RECV):
            mib["TcpRetransSegs"] += 1
            self.total_retrans += 1
            if self.log is not None:
                self.note("retransmit", self.iss, 0)
        if state == S.SYN_SENT:
            mib["TcpExtTCPSynRetrans"] += 1
            self._emit(SYN, self.iss, syn_options=True)
        elif state == S.SYN_RECV:
            mib["TcpExtTCPSynRetrans"] += 1
            self._emit(SYN | ACK, self.iss, syn_options=True)
        else:
            # the head again; the rest as ACKs come back (tcp_xmit_retransmit_queue in Loss)
            self._retransmit_skb(self.rec.rtx[0])
        if state != S.SYN_SENT or \
                self.total_rto > sysctl["net.ipv4.tcp_syn_linear_timeouts"]:
            self.backoff = min(self.backoff + 1, 15)
        self.rto_kind = T_RETRANS
        self._reset_rto_timer()
        if self.user_timeout and state not in (S.SYN_SENT, S.SYN_RECV):
            # tcp_clamp_rto_to_user_timeout: the last RTO ends when the user's time is up
            remaining = self.user_timeout - (host.now - self.retrans_stamp)
            self.t_rto = host.now + (1 if remaining <= 0 else
                                     min(self.t_rto - host.now, remaining))

    def _timeout_error(self) -> OSError:
        """tcp_write_err: the soft error an ICMP message left, or ETIMEDOUT."""
        if self.soft_error:
            from ustack.tcp.icmp import exception_for
            return exception_for(self.soft_error)
        return TimeoutError(110, "Connection timed out")

    def simple_retransmit(self) -> None:
        """tcp_simple_retransmit (the path MTU dropped): what is in flight and now too large
        is lost and resent at the new size, in the Loss state without a cwnd reduction."""
        rec = self.rec
        mss = self._effective_mss()
        prior_lost = rec.lost_out
        for skb in rec.rtx:
            if skb.length > mss:
                rec.mark_lost(skb)
        if prior_lost == rec.lost_out:
            return
        if rec.ca_state != CA_LOSS:
            rec.high_seq = self.snd_nxt
            self.ssthresh = self.current_ssthresh()
            rec.prior_ssthresh = 0
            rec.undo_marker = 0
            rec.set_ca_state(CA_LOSS)
        rec.xmit_retransmit_queue()
        self._arm()

    def rto_revert(self, seq: int) -> None:
        """tcp_ld_RTO_revert (RFC 6069): an ICMP unreachable for the oldest segment during
        backoff takes one backoff step back."""
        if seq != self.snd_una or not self.retransmits or not self.backoff or not self.rec.rtx:
            return
        self.backoff -= 1
        rto = min(self.rto << self.backoff, TCP_RTO_MAX)
        remaining = rto - (self.host.now - self.rec.rtx[0].time)
        if remaining > 0:
            self.t_rto = self.host.now + remaining
            self.rto_kind = T_RETRANS
            self._arm()
        else:
            self._retransmit_timer()
            self._arm()

    def _give_up_after(self, boundary: int, rto_base: int) -> int:
        """retransmits_timed_out's timeout: TCP_USER_TIMEOUT when set, else the time the
        backed-off retransmissions up to `boundary` take."""
        return self.user_timeout or retransmits_timed_out(boundary, rto_base)

    def _probe_timer(self) -> None:
        """Zero-window probe (Linux tcp_probe_timer / tcp_send_probe0)."""
        if self.rec.rtx or not self._unsent():
            self.probes = 0
            return
        if self.snd_wnd != 0:
            self._write_wakeup()
            return
        retries2 = self.host.sysctl["net.ipv4.tcp_retries2"]
        limit = retries2
        abort = False
        if self.orphan:
            # a peer that answers every probe with window 0 keeps probes at 0 (tcp_ack), so
            # an orphan also dies once its backoff reaches the limit with the probe interval
            # at TCP_RTO_MAX: a zero window cannot pin it
            alive = min(self.rto << self.backoff, TCP_RTO_MAX) < TCP_RTO_MAX
            limit = self.host.orphan_retries(alive)
            abort = not alive and self.backoff >= limit
            if not abort and self.host.out_of_resources(self, True):
                return
        if self.user_timeout and \
                retransmits_timed_out(self.probes, max(self.rto, TCP_RTO_MIN)) >= self.user_timeout:
            abort = True        # tcp_probe_timer: the probes have taken the user's time
        if abort or self.probes >= limit:
            # Linux tcp_probe_timer -> tcp_write_err: no RST on the wire
            self.host.mib["TcpExtTCPAbortOnTimeout"] += 1
            self._destroy(self._timeout_error())
            return
        # A bare ACK one below snd_una draws the peer's ACK with its current window.
        self._emit(ACK, (self.snd_una - 1) & M32)
        self.probes += 1
        if self.backoff < retries2:
            self.backoff += 1
        self.t_misc = self.host.now + min(self.rto << self.backoff, TCP_RTO_MAX)
        self.misc_kind = T_PROBE0

    # ------------------------------------------------------------------ open
    def _init_local(self) -> None:
        full_space = self._win_from_space(self.rcvbuf)
        if self.rcvbuf_locked and self.window_clamp > full_space:
            # tcp_connect_init / tcp_openreq_init_rwin: a buffer the user set limits the window
            self.window_clamp = full_space
        self.rcv_wscale = initial_wscale(self.host.sysctl, full_space, self.window_clamp)

    def _initial_window(self, mss: int) -> int:
        return initial_window(self._win_from_space(self.rcvbuf), self.window_clamp, mss)

    def connect(self, iss: int, ts_inherited: bool = False) -> None:
        """Active open: send SYN (RFC 9293 §3.10.1).  `ts_inherited`: ts_recent came from a
        TIME-WAIT record this connection took over (tcp_twsk_unique)."""
        host = self.host
        sysctl = host.sysctl
        self._init_local()
        self.iss = iss
        self.snd_una = self.snd_sml = iss
        self.snd_nxt = self.snd_max = (iss + 1) & M32
        self.wscale_ok = bool(sysctl["net.ipv4.tcp_window_scaling"])
        self.sack_ok = bool(sysctl["net.ipv4.tcp_sack"])
        self.ts_ok = bool(sysctl["net.ipv4.tcp_timestamps"])
        if self.ts_ok:
            self.ts_off = host.secret.ts_offset(self.laddr, self.raddr, self.lport, self.rport) \
                if sysctl["net.ipv4.tcp_timestamps"] == 1 else 0
        if self.user_mss:
            self.advmss = min(self.advmss, self.user_mss)     # tcp_connect_init
        # tcp_connect_init: the first window counts in segments of advmss less the TS option
        # when ts_recent_stamp is already set (inherited from TIME-WAIT)
        self.rcv_wnd = self._initial_window(
            self.advmss - (TS_OPT_LEN if ts_inherited and sysctl["net.ipv4.tcp_timestamps"]
                           else 0))
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
        self.snd_una = self.snd_sml = iss
        self.snd_nxt = self.snd_max = (iss + 1) & M32
        self.wscale_ok = seg.wscale >= 0 and bool(sysctl["net.ipv4.tcp_window_scaling"])
        if not self.wscale_ok:
            self.rcv_wscale = 0
        else:
            self.snd_wscale = min(seg.wscale, MAX_WSCALE)
        self.sack_ok = seg.sack_ok and bool(sysctl["net.ipv4.tcp_sack"])
        self.ts_ok = seg.has_ts and bool(sysctl["net.ipv4.tcp_timestamps"])
        if self.ts_ok:
            self.ts_off = host.secret.ts_offset(self.laddr, self.raddr, self.lport, self.rport) \
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

    def accept_request(self, req: Any) -> None:
        """The full connection of a request socket whose handshake completes (Linux
        tcp_create_openreq_child): SYN-RECV with everything the request knew, nothing sent;
        the handshake's ACK comes next."""
        host = self.host
        if self.log is not None:
            # the handshake the request socket made, so the log tells the whole life
            self.log.append(LogEvent(req.syn_time, "in", (SYN, req.irs, 0, req.snd_wnd, 0)))
            self.log.append(LogEvent(req.syn_time, "out", (SYN | ACK, req.iss,
                                                           (req.irs + 1) & M32,
                                                           min(req.rcv_wnd, 65535), 0)))
        self._init_local()
        self.irs = req.irs
        self.rcv_nxt = self.rcv_wup = req.rcv_nxt
        self.iss = req.iss
        self.snd_una = self.snd_sml = req.iss
        self.snd_nxt = self.snd_max = (req.iss + 1) & M32
        self.wscale_ok = req.wscale_ok
        self.rcv_wscale = req.rcv_wscale
        self.snd_wscale = req.snd_wscale
        self.sack_ok = req.sack_ok
        self.ts_ok = req.ts_ok
        if self.ts_ok:
            self.ts_off = req.ts_off
            self.ts_recent = req.ts_recent
            self.ts_recent_stamp = host.now
        self.rcv_wnd = req.rcv_wnd
        self._set_peer_mss(req.peer_mss)
        self.snd_wnd = req.snd_wnd
        self.snd_wl1 = req.irs
        self.snd_wl2 = req.iss
        self.max_window = self.snd_wnd
        self.rcv_ssthresh = self.rcv_wnd
        # Karn: no RTT from a retransmitted SYN-ACK, nor from a cookie's (its time is unknown)
        self.retransmits = req.num_retrans or (1 if req.cookie else 0)
        self.total_retrans = req.num_retrans
        self._set_state(S.SYN_RECV)
        self.syn_time = req.syn_time
        self._start_keepalive()          # tcp_create_openreq_child

    def _set_peer_mss(self, mss: int) -> None:
        self.peer_mss = mss if mss > 0 else 536
        self.mss = max(min(self.peer_mss, self.advmss), 64)
        # Linux tcp_initialize_rcv_mss: a guess of at most 536 until segments arrive
        self.rcv_mss = max(min(self.advmss, self.mss, max(self.rcv_wnd // 2, 1), 536), 88)

    # ------------------------------------------------------------------ input
    def on_segment(self, seg: Any) -> None:
        """Process one segment for this connection (Linux tcp_rcv_state_process)."""
        if self.log is not None:
            self.note("in", seg.flags, seg.seq, seg.ack, seg.window, len(seg.payload))
        state = self.state
        if state == S.ESTABLISHED and self.pred and self.host.fastpath(self, seg):
            pass                              # header prediction took it (tcp/fastpath.py)
        elif state == S.SYN_SENT:
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
                    # Linux tcp_rcv_synsent_state_process: retransmit the SYN almost at once
                    # (TCP_TIMEOUT_MIN, 2 jiffies) so a stale peer state is cleared quickly
                    if self.retransmits == 0:
                        self.t_rto = host.now + TCP_TIMEOUT_MIN
                        self.rto_kind = T_RETRANS
                return
            if self.ts_ok and seg.has_ts and seg.ts_ecr:
                # RFC 7323 §5.5 / Linux: a TSecr we never sent (outside [first SYN, now])
                # is an old duplicate: RST for it, stay in SYN-SENT (PAWSActive)
                ecr = (seg.ts_ecr - self.ts_off) & M32
                if ((ecr - self.syn_time) & M32) > ((host.now - self.syn_time) & M32):
                    host.mib["TcpExtPAWSActive"] += 1
                    host.send_reset_for(seg)
                    return
            if flags & RST:
                host.mib["TcpAttemptFails"] += 1
                self._destroy(ConnectionRefusedError(111, "Connection refused"))
                return
            if not flags & SYN:
                return
            self._take_peer_syn(seg)
            self.snd_wl2 = seg.ack
            self._ack_advance(seg.ack)
            if self.ts_ok and seg.ts_ecr:
                self._syn_rtt_sample((host.now + self.ts_off - seg.ts_ecr) & M32)
            elif self.retransmits == 0:
                self._syn_rtt_sample(host.now - self.syn_time)
            self.retransmits = 0
            self.backoff = 0
            self.t_rto = NEVER
            self._set_state(S.ESTABLISHED)
            self.last_snd_data_time = self.host.now   # lsndtime (tcp_finish_connect)
            self._init_buffer_space()
            self._init_transfer()
            self._notify |= 1
            self._start_keepalive()
            # tcp_finish_connect: header prediction starts at once only without window
            # scaling (with it, when the peer's window first changes or data comes in order)
            self.pred = self.snd_wscale == 0
            # (text or FIN on a SYN-ACK is not taken without Fast Open: only irs+1 is ACKed)
            self.send_ack()
            self._output()
            return
        if flags & RST:
            return
        if flags & SYN:
            # Simultaneous open (RFC 9293 §3.5 figure 8): SYN-SENT -> SYN-RECV, send SYN-ACK.
            self._take_peer_syn(seg)
            self._set_state(S.SYN_RECV)
            self._emit(SYN | ACK, self.iss, syn_options=True)

    def _take_peer_syn(self, seg: Any) -> None:
        """The peer's SYN (or SYN-ACK) decides the options we use (RFC 7323 §2.2 and §3.2:
        window scaling and timestamps only if both sides sent them; RFC 2018 for SACK)."""
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
            self.ts_recent_stamp = self.host.now
        else:
            self.ts_ok = False
        self._set_peer_mss(seg.mss)
        self.snd_wnd = seg.window  # never scaled in a SYN
        self.max_window = self.snd_wnd
        self.snd_wl1 = seg.seq

    def _acceptable(self, seg: Any, seg_len: int) -> bool:
        """Linux tcp_sequence(): some of the segment lies in the window we offered."""
        end = (seg.seq + seg_len) & M32
        return not _before(end, self.rcv_wup) and \
            not _after(seg.seq, (self.rcv_nxt + self._rcv_window_now()) & M32)

    def _rcv_synchronized(self, seg: Any, skip_checks: bool = False,
                          validated: bool = False) -> None:
        """Linux tcp_rcv_state_process / tcp_rcv_established for every state after SYN-SENT.
        `validated`: header prediction vouched for the segment (tcp_rcv_established's step5:
        the ACK and the text are processed, tcp_validate_incoming is not run)."""
        host = self.host
        mib = host.mib
        flags = seg.flags
        state = self.state

        if not skip_checks:
            if not validated:
                if not flags & (ACK | RST | SYN):
                    return  # Linux drops segments with none of ACK, RST, SYN before any check
                if not self._validate_incoming(seg):
                    return
            # Step 5: the ACK field
            if not flags & ACK:
                return
            if state == S.SYN_RECV:
                if not self._synrecv_ack(seg):
                    return
            elif not self._process_ack(seg):
                return
            state = self.state
            if state == S.CLOSED:
                return

        # Step 7: segment text (tcp_rcv_state_process step 7, then tcp_data_queue)
        payload = seg.payload
        fin = 1 if flags & FIN else 0
        if payload or fin:
            if state in (S.CLOSE_WAIT, S.CLOSING, S.LAST_ACK) and \
                    not _before(seg.seq, self.rcv_nxt):
                pass  # text after the peer's FIN is ignored
            elif state != S.ESTABLISHED and state != S.SYN_RECV and self.rcv_shutdown and \
                    _after((seg.seq + len(payload)) & M32, self.rcv_nxt):
                # FIN-WAIT-1/2 (and, falling through, CLOSE-WAIT...) with RCV_SHUTDOWN: new data
                # after close() -> reset; RFC 1122 says so.  The RST answers the segment.
                mib["TcpExtTCPAbortOnData"] += 1
                host.send_reset_for(seg)
                self._destroy(ConnectionResetError(104, "Connection reset by peer"))
                return
            else:
                self._data_queue(seg)
                if self.state == S.CLOSED:
                    return
        if self.state not in (S.CLOSED, S.TIME_WAIT):
            self._output()
            self._ack_snd_check()

    def _validate_incoming(self, seg: Any) -> bool:
        """Linux tcp_validate_incoming: PAWS, the sequence check, RST and SYN (RFC 5961)."""
        host = self.host
        mib = host.mib
        flags = seg.flags
        state = self.state
        # PAWS (RFC 7323 §5; tcp_paws_discard)
        if self.ts_ok and seg.has_ts and not flags & RST and (why := self._paws_discard(seg)):
            # (a RST is accepted even when it fails PAWS)
            if flags & SYN:
                return self._syn_challenge()
            if why == PAWS_ACK:
                mib["TcpExtPAWSOldAck"] += 1   # old ACKs are common: no duplicate ACK
                return False
            mib["TcpExtPAWSEstab"] += 1
            if not self._oow_rate_limited(seg, "TcpExtTCPACKSkippedPAWS"):
                self._send_dupack(seg)
            return False
        # Step 1: sequence number check (tcp_sequence)
        seg_len = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
        if not self._acceptable(seg, seg_len):
            if not flags & RST:
                if state == S.SYN_RECV and flags & SYN and seg.seq == self.irs:
                    # a retransmitted SYN: send the SYN-ACK again (tcp_check_req)
                    self._emit(SYN | ACK, self.iss, syn_options=True)
                    return False
                if flags & SYN:
                    return self._syn_challenge()
                mib["TcpExtBeyondWindow"] += 1
                if not self._oow_rate_limited(seg, "TcpExtTCPACKSkippedSeq"):
                    self._send_dupack(seg)
            elif self._reset_check(seg):
                self._on_reset()
            return False
        # Step 2: RST.  RFC 5961 §3.2: exact match (or rcv_nxt-1 after the peer's FIN) resets;
        # anything else in the window draws a challenge ACK.
        if flags & RST:
            if seg.seq == self.rcv_nxt or self._reset_check(seg):
                self._on_reset()
            elif state == S.SYN_RECV:
                pass
            else:
                self._challenge_ack()
            return False
        # Step 4: SYN in a synchronized state (RFC 5961 §4)
        if flags & SYN:
            if state == S.SYN_RECV and seg.seq == self.irs and not flags & ACK:
                self._emit(SYN | ACK, self.iss, syn_options=True)
                return False
            return self._syn_challenge()
        return True

    def _syn_challenge(self) -> bool:
        mib = self.host.mib
        if self.state == S.ESTABLISHED:
            mib["TcpInErrs"] += 1  # syn_inerr: tcp_rcv_established passes it
        mib["TcpExtTCPSYNChallenge"] += 1
        self._challenge_ack()
        return False

    def _reset_check(self, seg: Any) -> bool:
        """Linux tcp_reset_check: after the peer's FIN, a RST at rcv_nxt - 1 is exact too."""
        return seg.seq == ((self.rcv_nxt - 1) & M32) and \
            self.state in (S.CLOSE_WAIT, S.LAST_ACK, S.CLOSING)

    def _paws_discard(self, seg: Any) -> int:
        """Linux tcp_paws_check + tcp_disordered_ack_check: 0 when the segment passes PAWS
        (or is a reordered duplicate ACK that changes nothing), PAWS_ACK for an old pure ACK
        (seq before rcv_nxt: dropped silently, Linux 6.14+), PAWS_DATA otherwise."""
        if paws_check(self.ts_recent, self.ts_recent_stamp, seg.ts_val, self.host.now, 1):
            return 0
        if not seg.flags & ACK or seg.payload or seg.flags & (SYN | FIN):
            return PAWS_DATA                              # 1. not a pure ACK
        if seg.seq != self.rcv_nxt:                       # 2. not the expected sequence
            return PAWS_ACK if _before(seg.seq, self.rcv_nxt) else PAWS_DATA
        if seg.ack != self.snd_una:                       # 3. not a duplicate ACK
            return PAWS_DATA
        if self._may_update_window(seg.ack, seg.seq, seg.window << self.snd_wscale):
            return PAWS_DATA                              # 4. it updates the window
        # 5. within the replay window: tcp_tsval_replay, 1.2 RTO in TSval units (ms)
        if ((self.ts_recent - seg.ts_val) & M32) > self.rto * 1200 // 1000:
            return PAWS_DATA
        return 0

    def _may_update_window(self, ack: int, seq: int, window: int) -> bool:
        """Linux tcp_may_update_window: the SND.WL1/SND.WL2 rule, or a larger window."""
        return _after(ack, self.snd_una) or _after(seq, self.snd_wl1) or \
            (seq == self.snd_wl1 and (window > self.snd_wnd or not window))

    def _oow_rate_limited(self, seg: Any, mib_name: str) -> bool:
        """Linux tcp_oow_rate_limited: one out-of-window ACK per tcp_invalid_ratelimit ms per
        socket; data segments without SYN are never limited."""
        if seg is not None and seg.payload and not seg.flags & SYN:
            return False
        return self._oow_limited(mib_name)

    def _oow_limited(self, mib_name: str) -> bool:
        host = self.host
        limit = host.sysctl["net.ipv4.tcp_invalid_ratelimit"]
        if self.last_oow_ack >= 0 and host.now - self.last_oow_ack < limit:
            host.mib[mib_name] += 1
            return True
        self.last_oow_ack = host.now
        return False

    def _send_dupack(self, seg: Any) -> None:
        """Linux tcp_send_dupack: an old duplicate gets a D-SACK and quick ACKs."""
        end_seq = (seg.seq + len(seg.payload) + (1 if seg.flags & FIN else 0)) & M32
        if end_seq != seg.seq and _before(seg.seq, self.rcv_nxt):
            self.host.mib["TcpExtDelayedACKLost"] += 1
            self._enter_quickack_mode()
            if self.sack_ok and self.host.sysctl["net.ipv4.tcp_dsack"]:
                self.dsack = (seg.seq, self.rcv_nxt if _after(end_seq, self.rcv_nxt) else end_seq)
                self.host.mib["TcpExtTCPDSACKOldSent"] += 1   # tcp_dsack_set, below rcv_nxt
        self.send_ack()

    def _challenge_ack(self) -> None:
        """RFC 5961 challenge ACK (Linux tcp_send_challenge_ack): per-socket rate limit first,
        then the host-wide one (off while tcp_challenge_ack_limit is INT_MAX, the default)."""
        if self._oow_limited("TcpExtTCPACKSkippedChallenge"):
            return
        if not self.host.challenge_ack_allowed():
            return
        self.host.mib["TcpExtTCPChallengeACK"] += 1
        self.send_ack()

    def _on_reset(self) -> None:
        """RFC 9293 §3.10.7.4 step 2 / Linux tcp_reset."""
        state = self.state
        if state == S.SYN_RECV and self.listener is not None:
            # passive open not yet accepted: drop silently, the listener lives on
            self._destroy(None, notify=False)
            return
        if state == S.CLOSE_WAIT:
            exc: BaseException = BrokenPipeError(32, "Broken pipe")
        elif state == S.SYN_SENT:
            exc = ConnectionRefusedError(111, "Connection refused")
        else:
            exc = ConnectionResetError(104, "Connection reset by peer")
        self._destroy(exc)

    def _synrecv_ack(self, seg: Any) -> bool:
        """The third segment of a passive open (Linux tcp_check_req + tcp_rcv_state_process)."""
        host = self.host
        if not seg.payload and not seg.flags & FIN:
            host.mib["TcpExtTCPPureAcks"] += 1      # tcp_ack's slow path
        if seg.ack != self.snd_max:
            host.send_reset_for(seg)
            return False
        if self.ts_ok and seg.has_ts:
            self._update_ts_recent(seg)
        self.snd_wnd = seg.window << self.snd_wscale
        self.max_window = max(self.max_window, self.snd_wnd)
        self.snd_wl1 = seg.seq
        self.snd_wl2 = seg.ack
        self._ack_advance(seg.ack)
        if self.ts_ok and seg.has_ts and seg.ts_ecr:
            self._syn_rtt_sample((host.now + self.ts_off - seg.ts_ecr) & M32)
        elif self.retransmits == 0:
            self._syn_rtt_sample(host.now - self.syn_time)
        self.retransmits = 0
        self.backoff = 0
        self.t_rto = NEVER
        self.snd_sml = self.snd_una
        if self.fin_queued:
            self._set_state(S.FIN_WAIT_1)
        else:
            self._set_state(S.ESTABLISHED)
            self.last_snd_data_time = self.host.now   # lsndtime (tcp_finish_connect)
        self._init_buffer_space()
        self._init_transfer()
        self.pred = True                      # tcp_fast_path_on
        host.mib["TcpPassiveOpens"] += 1
        self._notify |= 1
        if self.listener is not None:
            host.child_established(self)
        return True

    def _init_transfer(self) -> None:
        """Linux tcp_init_transfer: the initial window (1 after a retransmitted SYN that
        could not be undone), the send buffer sized for it, then the congestion module."""
        self.cwnd = TCP_INIT_CWND if self.total_retrans <= 1 else 1
        self.cwnd_stamp = self.host.now
        # tcp_initialize_rcv_mss, now that rcv_wnd is known: a guess of at most 536
        self.rcv_mss = max(min(self.advmss, self.mss, self.rcv_wnd // 2, 536), 88)
        self._sndbuf_expand()
        self.ca.init(self)

    def _sndbuf_expand(self) -> None:
        """tcp_sndbuf_expand: room for two windows of worst-case (one skb per MSS) segments,
        at most tcp_wmem[2], unless the application set SO_SNDBUF.  (Linux counts memory;
        ustack counts the same number as payload bytes.)"""
        if self.sndbuf_locked:
            return
        per_mss = max(self.mss, self.peer_mss) + 320 + 320
        per_mss = (1 << (per_mss - 1).bit_length()) + 256
        nr_segs = max(TCP_INIT_CWND, self.cwnd, self.rec.reordering + 1)
        sndmem = 2 * nr_segs * per_mss
        if self.sndbuf < sndmem:
            self.sndbuf = min(sndmem, self.host.sysctl["net.ipv4.tcp_wmem"][2])

    @property
    def notsent_bytes(self) -> int:
        """Written but not yet sent (SIOCOUTQNSD)."""
        return max(self._unsent(), 0)

    def memory_free(self, wake: int = 0) -> bool:
        """tcp_stream_memory_free: unsent bytes (doubled for poll's wake-up test) below
        TCP_NOTSENT_LOWAT, or the tcp_notsent_lowat setting."""
        lowat = self.notsent_lowat or self.host.sysctl["net.ipv4.tcp_notsent_lowat"]
        return (self.notsent_bytes << wake) < lowat

    def set_congestion_control(self, name: str) -> None:
        """TCP_CONGESTION: switch this connection's module (a fresh instance)."""
        self.ca = cong.create(name)
        if self.state not in (S.CLOSED, S.LISTEN, S.SYN_SENT, S.SYN_RECV):
            self.ca.init(self)

    @property
    def congestion_control(self) -> str:
        """TCP_CONGESTION: the module's name; setting it switches modules."""
        return self.ca.name

    @congestion_control.setter
    def congestion_control(self, name: str) -> None:
        self.set_congestion_control(name)

    def _update_ts_recent(self, seg: Any) -> None:
        """RFC 7323 §4.3 (Linux tcp_replace_ts_recent): only from a segment covering rcv_wup."""
        if not _after(seg.seq, self.rcv_wup) and \
                ((seg.ts_val - self.ts_recent) & M32) < 0x80000000:
            self.ts_recent = seg.ts_val
            self.ts_recent_stamp = self.host.now

    def _process_ack(self, seg: Any, fast: bool = False) -> bool:
        """Linux tcp_ack(): returns False when the segment must be dropped.  `fast`: called
        from header prediction (tcp/fastpath.py), which took the timestamps already and
        whose segment neither changes the window nor carries SACK blocks (tcp_ack without
        FLAG_SLOWPATH: an ACK that advances skips the window and SACK work).

        The order is Linux's: the old-ACK and unsent-data checks, ts_recent, the window,
        SACK tagging, the cumulative ACK (RTT, RACK), the tail loss probe's outcome, the
        recovery state machine for dubious ACKs, the RTO/TLP timer, then the congestion
        module (or PRR during a reduction) and the retransmission of what is lost."""
        ack = seg.ack
        host = self.host
        state = self.state
        rec = self.rec
        prior_snd_una = self.snd_una
        sack = seg.sack_blocks if self.sack_ok else ()
        if not fast:
            self.rcv_tsecr_ms = (seg.ts_ecr - self.ts_off) & M32 \
                if self.ts_ok and seg.has_ts and seg.ts_ecr else None
        if _before(ack, prior_snd_una):
            if _before(ack, (prior_snd_una - self.max_window) & M32):
                self._challenge_ack()  # too old to be a duplicate (tcp_ack, RFC 5961 §5.2)
                return False
            # old_ack: SACK information is still used; the text is kept (ts_recent stays)
            if sack:
                sstate: dict[str, Any] = {}
                flag = rec.sacktag(sack, ack, prior_snd_una, sstate)
                flag, rexmit = rec.fastretrans_alert(prior_snd_una, 0, flag)
                self._xmit_recovery(rexmit)
            return True
        if _after(ack, self.snd_max):
            # ACK for data we never sent: dropped with a challenge ACK (RFC 5961 §5.2; the
            # kernel on the test machine answers it in ESTABLISHED too)
            self._challenge_ack()
            return False
        # tcp_ack: ts_recent is taken only from a segment whose ACK passed both checks above
        # (tcp_replace_ts_recent under FLAG_UPDATE_TS_RECENT)
        if self.ts_ok and seg.has_ts and not fast:
            self._update_ts_recent(seg)
        self.probes = 0   # tcp_ack: any acceptable ACK, even one with window 0
        self.rcv_tstamp = host.now
        flag = 0
        if _after(ack, prior_snd_una):
            flag |= FLAG_SND_UNA_ADVANCED
            self.retransmits = 0
        prior_fack = rec.highest_sack_seq()
        prior_packets = rec.packets_out
        prior_delivered = rec.delivered
        lost_before = rec.lost
        if seg.payload or seg.flags & FIN:
            flag |= FLAG_DATA
        if fast and flag & FLAG_SND_UNA_ADVANCED:
            # tcp_ack's fast branch: the window is as predicted, only SND.WL1 moves
            self.snd_wl1 = seg.seq
            flag |= FLAG_WIN_UPDATE
            host.mib["TcpExtTCPHPAcks"] += 1
        else:
            if not flag & FLAG_DATA:
                host.mib["TcpExtTCPPureAcks"] += 1
            # window update (tcp_ack_update_window: the SND.WL1/SND.WL2 rule)
            window = seg.window << self.snd_wscale
            if self._may_update_window(ack, seg.seq, window):
                flag |= FLAG_WIN_UPDATE
                self.snd_wl1 = seg.seq
                if window != self.snd_wnd:
                    if self.snd_wnd == 0 and window > 0 and self.misc_kind == T_PROBE0:
                        self.t_misc = NEVER
                        self.misc_kind = T_NONE
                        self.probes = 0
                        self.backoff = 0
                    self.snd_wnd = window
                    if window > self.max_window:
                        self.max_window = window
                    # the prediction holds the old window: off, and on again if it may
                    self.pred = False
                    self._fast_path_check()
        self.snd_wl2 = ack
        sstate: dict[str, Any] = {}
        if sack:
            flag |= rec.sacktag(sack, ack, prior_snd_una, sstate)
        rec.delivered += sstate.get("sack_delivered", 0)
        self._ack_advance(ack)
        if not prior_packets:
            # no_queue: nothing was in flight (only a window update, or our SYN/FIN alone)
            if self.tlp_high_seq >= 0:
                self._process_tlp_ack(ack, flag)
            return self._after_ack(state, seg, flag)
        cflag, pkts_acked = rec.clean_rtx_queue(ack, prior_snd_una, prior_fack, sstate)
        flag |= cflag
        rtt = self._ack_update_rtt(flag, sstate)
        if pkts_acked or rtt >= 0:
            self.ca.pkts_acked(self, pkts_acked, rtt)
        rec.rack_update_reo_wnd(sstate.get("prior_delivered", 0))
        if self.tlp_high_seq >= 0:
            self._process_tlp_ack(ack, flag)
        rexmit = REXMIT_NONE
        if not (flag & FLAG_NOT_DUP) or flag & FLAG_CA_ALERT or rec.ca_state != CA_OPEN:
            # tcp_ack_is_dubious
            num_dupack = 0
            if not flag & (FLAG_SND_UNA_ADVANCED | FLAG_NOT_DUP | FLAG_DSACKING_ACK):
                num_dupack = 1
            flag, rexmit = rec.fastretrans_alert(prior_snd_una, num_dupack, flag)
        if flag & FLAG_SET_XMIT_TIMER:
            # tcp_set_xmit_timer: a loss probe if one may be scheduled, else the RTO
            if not self._schedule_loss_probe(True):
                self._rearm_rto()
        self._cong_control(ack, rec.delivered - prior_delivered, rec.lost - lost_before,
                           flag)
        self._xmit_recovery(rexmit)
        return self._after_ack(state, seg, flag)

    def _after_ack(self, state: int, seg: Any, flag: int) -> bool:
        """What an ACK means for our FIN, and for a writer waiting for room.  New data the
        window now allows is sent by the caller after the segment's own text is queued
        (tcp_data_snd_check after tcp_data_queue), so that it acknowledges that text too."""
        host = self.host
        if self.fin_queued and self.snd_una == (self.fin_seq + 1) & M32:
            if state == S.FIN_WAIT_1:
                self._set_state(S.FIN_WAIT_2)
                if self.orphan and not host.tw.fin_wait2_after_ack(self, seg):
                    return False
            elif state == S.CLOSING:
                host.tw.time_wait(self, S.TIME_WAIT)
                return False
            elif state == S.LAST_ACK:
                self._destroy(None)
                return False
        if flag & FLAG_SND_UNA_ADVANCED and len(self.sndq) <= self.write_mark:
            self._notify |= 4
        return True

    def _process_tlp_ack(self, ack: int, flag: int) -> None:
        """tcp_process_tlp_ack: was the loss probe needed?"""
        if _before(ack, self.tlp_high_seq):
            return
        rec = self.rec
        if not self.tlp_retrans or flag & FLAG_DSACK_TLP:
            self.tlp_high_seq = -1      # new data probed, or original and probe both arrived
        elif _after(ack, self.tlp_high_seq):
            # the probe repaired a loss: reduce cwnd once (CWR)
            rec.init_cwnd_reduction()
            rec.set_ca_state(CA_CWR)
            rec.end_cwnd_reduction()
            rec.try_keep_open()
            self.host.mib["TcpExtTCPLossProbeRecovery"] += 1
        elif not flag & (FLAG_SND_UNA_ADVANCED | FLAG_NOT_DUP | FLAG_DSACKING_ACK):
            self.tlp_high_seq = -1      # a pure duplicate ACK: no loss

    def _ack_update_rtt(self, flag: int, sstate: dict[str, Any]) -> int:
        """tcp_ack_update_rtt: prefer the ACK's own timing (Karn: not when retransmitted data
        was ACKed), then a SACK's, then the timestamp echo.  Returns the RTT for the
        congestion module (ca_rtt, -1 if none)."""
        now = self.host.now
        seq_rtt = ca_rtt = -1
        first = sstate.get("first_ackt")
        if first and not flag & 0x08:        # FLAG_RETRANS_DATA_ACKED
            seq_rtt = now - first
            ca_rtt = now - sstate["last_ackt"]
        sack_rtt = -1
        if sstate.get("first_sackt"):
            sack_rtt = now - sstate["first_sackt"]
            ca_rtt = now - sstate["last_sackt"]
        if seq_rtt < 0:
            seq_rtt = sack_rtt
        if seq_rtt < 0 and self.rcv_tsecr_ms is not None and flag & FLAG_ACKED:
            seq_rtt = ca_rtt = max(now - self.rcv_tsecr_ms, 1)
        if seq_rtt < 0:
            return -1
        self.rec.update_min_rtt(max(ca_rtt, 1), now)
        self._rtt_sample(seq_rtt)
        self.backoff = 0        # RFC 6298: only a valid RTT sample ends the backoff
        return ca_rtt

    def current_ssthresh(self) -> int:
        """tcp_current_ssthresh."""
        if self.rec.in_cwnd_reduction():
            return self.ssthresh
        return max(self.ssthresh, (self.cwnd >> 1) + (self.cwnd >> 2))

    def _cong_control(self, ack: int, acked_sacked: int, newly_lost: int, flag: int) -> None:
        """tcp_cong_control: PRR during a reduction, else the module grows cwnd when the ACK
        delivered data in order (tcp_may_raise_cwnd)."""
        rec = self.rec
        if rec.in_cwnd_reduction():
            rec.cwnd_reduction(acked_sacked, newly_lost, flag)
        elif self._may_raise_cwnd(flag):
            self.ca.cong_avoid(self, ack, acked_sacked)

    def _may_raise_cwnd(self, flag: int) -> bool:
        """tcp_may_raise_cwnd: with high reordering any delivery counts, else only in order."""
        if self.rec.reordering > self.host.sysctl["net.ipv4.tcp_reordering"]:
            return bool(flag & FLAG_FORWARD_PROGRESS)
        return bool(flag & FLAG_DATA_ACKED)

    def _xmit_recovery(self, rexmit: int) -> None:
        """tcp_xmit_recovery: new data first for F-RTO, then the lost segments."""
        if rexmit == REXMIT_NONE or self.state == S.SYN_SENT:
            return
        if rexmit == REXMIT_NEW:
            self._output(nagle_off=True)
            if _after(self.snd_nxt, self.rec.high_seq):
                return
            self.rec.frto = False
        self.rec.xmit_retransmit_queue()

    def _ack_advance(self, ack: int) -> None:
        acked = (ack - self.snd_una) & M32
        data = acked
        if self.snd_una == self.iss and self.state in (S.SYN_SENT, S.SYN_RECV):
            data -= 1  # our SYN
        if self.fin_queued and not _before(ack, (self.fin_seq + 1) & M32):
            data -= 1  # our FIN
        if data > 0:
            del self.sndq[:data]
        self.snd_una = ack
        if _before(self.snd_nxt, ack):
            self.snd_nxt = ack

    def _syn_rtt_sample(self, rtt: int) -> None:
        """The handshake's RTT (tcp_synack_rtt_meas / tcp_ack_update_rtt for the SYN): it
        starts srtt and min_rtt."""
        self.rec.update_min_rtt(max(rtt, 1), self.host.now)
        self._rtt_sample(rtt)

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

    # ------------------------------------------------------------------ retransmission
    # ------------------------------------------------------------------ receive text
    def _data_queue(self, seg: Any) -> None:
        """Linux tcp_data_queue: in-order text (and FIN) to the socket, old duplicates get a
        D-SACK and an immediate ACK, text beyond a hole to the out-of-order queue."""
        seq = seg.seq
        payload = seg.payload
        fin = 1 if seg.flags & FIN else 0
        end_seq = (seq + len(payload) + fin) & M32
        rcv_nxt = self.rcv_nxt
        if seq == rcv_nxt:
            if payload and self._rcv_window_now() == 0:
                self._out_of_window()
                return
            self._queue_in_order(payload, fin, seg)
            return
        if not _after(end_seq, rcv_nxt):
            # a retransmission of what we have: D-SACK it and ACK at once
            self.host.mib["TcpExtDelayedACKLost"] += 1
            if self.sack_ok and self.host.sysctl["net.ipv4.tcp_dsack"]:
                self.dsack = (seq, end_seq)
                self.host.mib["TcpExtTCPDSACKOldSent"] += 1   # tcp_dsack_set, below rcv_nxt
            self._out_of_window()
            return
        if not _before(seq, (rcv_nxt + self._rcv_window_now()) & M32):
            self._out_of_window()  # beyond the window
            return
        if _before(seq, rcv_nxt):
            # partial overlap: D-SACK the old part, keep the new
            if self.sack_ok and self.host.sysctl["net.ipv4.tcp_dsack"]:
                self.dsack = (seq, rcv_nxt)
                self.host.mib["TcpExtTCPDSACKOldSent"] += 1   # tcp_dsack_set, below rcv_nxt
            if self._rcv_window_now() == 0:
                self._out_of_window()
                return
            self._queue_in_order(payload[(rcv_nxt - seq) & M32:], fin, seg)
            return
        self._queue_ooo(seq, payload, fin)

    def _fast_path_check(self) -> None:
        """Linux tcp_fast_path_check: header prediction on again when no out-of-order data is
        queued, a window is offered and receive memory is left (never turns it off)."""
        if not self.ooo and self.rcv_wnd and self.rmem_alloc < self.rcvbuf:
            self.pred = True

    def _out_of_window(self) -> None:
        self._enter_quickack_mode()
        self.ack_pending = True

    def _queue_in_order(self, payload: bytes, fin: int, seg: Any) -> None:
        win = self._rcv_window_now()
        if len(payload) > win:
            payload = payload[:win]  # Linux queues what fits; the rest comes again
            fin = 0
        if payload:
            truesize = rx_truesize(len(payload), self.host.rx_gso)
            self._rmem_schedule(truesize)
            self._queue_rcv(payload, truesize, seg)
        if fin:
            self._fin()
        if self.ooo:
            self._drain_ooo()
            if not self.ooo:
                self.ack_now = True  # RFC 5681 §4.2: ACK at once when a hole is filled
        self._fast_path_check()

    def _queue_rcv(self, payload: bytes, truesize: int, seg: Any) -> None:
        """Linux tcp_queue_rcv + tcp_event_data_recv: in-order text onto the receive queue."""
        n = len(payload)
        self.rcv_buf.append(payload)
        self.rcv_bytes += n
        self.rmem_alloc += truesize
        self.fwd_alloc -= truesize            # skb_set_owner_r: charged to the reserve
        self.rcv_truesize.append([n, truesize])
        self.rcv_nxt = (self.rcv_nxt + n) & M32
        self._event_data_recv(seg, n, truesize)
        self._notify |= 2

    def _rmem_schedule(self, size: int) -> None:
        """Linux sk_rmem_schedule: reserve whole pages for what the reserve lacks."""
        if size > self.fwd_alloc:
            self.fwd_alloc += -(-(size - self.fwd_alloc) // 4096) * 4096

    def _rmem_uncharge(self, size: int) -> None:
        """Linux sk_mem_uncharge: a received buffer freed; whole free pages go back at once
        (sk_mem_reclaim keeps less than a page)."""
        self.rmem_alloc -= size
        self.fwd_alloc += size
        if self.fwd_alloc >= 4096:
            self.fwd_alloc &= 4095

    def _queue_ooo(self, seq: int, payload: bytes, fin: int) -> None:
        """Linux tcp_data_queue_ofo (without coalescing tricks): keep it, SACK it, ACK now."""
        mib = self.host.mib
        if self.rmem_alloc + skb_truesize(len(payload)) > self.rcvbuf:
            mib["TcpExtTCPOFODrop"] += 1  # tcp_try_rmem_schedule failed
            return
        mib["TcpExtTCPOFOQueue"] += 1
        self.pred = False                     # tcp_data_queue_ofo: no header prediction
        truesize = skb_truesize(len(payload))
        self._rmem_schedule(truesize)
        ooo = self.ooo
        base = self.rcv_nxt
        rel = (seq - base) & M32
        i = len(ooo)
        while i > 0 and ((ooo[i - 1][0] - base) & M32) > rel:
            i -= 1
        if not (i > 0 and ooo[i - 1][0] == seq and len(ooo[i - 1][1]) >= len(payload)
                and ooo[i - 1][2] >= fin):
            ooo.insert(i, (seq, payload, fin))
            self.ooo_bytes += len(payload)
            self.rmem_alloc += truesize
            self.fwd_alloc -= truesize
        self.ack_pending = True

    def _drain_ooo(self) -> None:
        """Linux tcp_ofo_queue: move what the hole-filling text made contiguous."""
        ooo = self.ooo
        while ooo and self.state != S.CLOSED:
            seq, data, fin = ooo[0]
            off = (self.rcv_nxt - seq) & M32
            if off > 0x7FFFFFFF:
                break  # still a hole
            ooo.pop(0)
            self.ooo_bytes -= len(data)
            truesize = skb_truesize(len(data))
            end = (seq + len(data)) & M32
            if _after(end, self.rcv_nxt):
                chunk = data[off:]
                self.rcv_buf.append(chunk)
                self.rcv_bytes += len(chunk)
                self.rcv_truesize.append([len(chunk), truesize])  # the memory moves along
                self.rcv_nxt = end
                self._notify |= 2
            else:
                self._rmem_uncharge(truesize)
            if fin and self.rcv_nxt == end:
                self._fin()
                break

    def _fin(self) -> None:
        """Linux tcp_fin: the peer's FIN, in order."""
        state = self.state
        self.rcv_nxt = (self.rcv_nxt + 1) & M32
        self.rcv_fin = True
        self._notify |= 2
        self.ack_pending = True
        for _seq, data, _fin in self.ooo:  # out-of-order text after a FIN is dropped
            self._rmem_uncharge(skb_truesize(len(data)))
        self.ooo.clear()
        self.ooo_bytes = 0
        self.dsack = None  # tcp_sack_reset: the ACK of a FIN carries no SACK blocks
        if state in (S.ESTABLISHED, S.SYN_RECV):
            # CLOSE-WAIT, in pingpong mode: the ACK waits, so a quick close() sends FIN with it
            self._set_state(S.CLOSE_WAIT)
            self.pingpong = True
        elif state == S.FIN_WAIT_1:
            # simultaneous close: our FIN not yet acknowledged (RFC 9293 §3.6 case 2)
            self.send_ack()
            self._set_state(S.CLOSING)
        elif state == S.FIN_WAIT_2:
            self.send_ack()
            self.host.tw.time_wait(self, S.TIME_WAIT)

    # ------------------------------------------------------------------ user calls
    def send(self, data: bytes | bytearray | memoryview, limit: bool = False, *,
             more: bool = False, eor: bool = False) -> int:
        """Queue bytes to send.  With limit=True accept only what fits in sndbuf (socket
        semantics: a short write); otherwise accept everything (asyncio transports buffer).
        more: MSG_MORE (hold a partial segment for this call, no PSH); eor: MSG_EOR (the
        record ends here: later data never joins its last segment)."""
        state = self.state
        if state in S.SEND_CLOSED or self.fin_queued:
            raise BrokenPipeError(32, "Broken pipe: the send side is shut down")
        if state == S.CLOSED or state == S.LISTEN:
            raise OSError(107, "Transport endpoint is not connected")
        n = len(data)
        if n and self._unsent() <= 0 and state not in (S.SYN_SENT, S.SYN_RECV):
            self._slow_start_after_idle_check()       # a new skb (tcp_skb_entail)
        if limit:
            room = self.sndbuf - len(self.sndq)
            if room <= 0:
                return 0
            n = min(n, room)
            self.sndq += memoryview(data)[:n]
        else:
            self.sndq += data
        if n:
            self.tail_push = not more          # tcp_push: tcp_mark_push unless MSG_MORE
            if eor and n == len(data):
                self.eor_seqs.append((self.snd_una + len(self.sndq)) & M32)
        self._output(cork=self.cork or more)
        self._arm()
        return n

    def set_cork(self, on: bool) -> None:
        """TCP_CORK; uncorking pushes what was held (tcp_push_pending_frames)."""
        self.cork = on
        if not on and self.state in (S.ESTABLISHED, S.CLOSE_WAIT):
            self.tail_push = True
            self._output()
            self._arm()

    def recv(self, n: int = -1) -> bytes:
        """Take up to n bytes from the receive queue and reopen the window if it was small."""
        buf = self.rcv_buf
        if n < 0 or n >= self.rcv_bytes:
            data = buf[0] if len(buf) == 1 else b"".join(buf)
            buf.clear()
            self.rcv_bytes = 0
        else:
            data = self.peek(n)
            self.rcv_bytes -= n
            while n:
                head = buf[0]
                if len(head) <= n:
                    n -= len(head)
                    buf.popleft()
                else:
                    buf[0] = head[n:]
                    n = 0
        # a segment's memory is freed once all of it has been read (skb consumed)
        left = len(data)
        sizes = self.rcv_truesize
        while left and sizes:
            entry = sizes[0]
            if entry[0] <= left:
                left -= entry[0]
                self._rmem_uncharge(entry[1])
                sizes.popleft()
            else:
                entry[0] -= left
                left = 0
        if data and self.state not in (S.CLOSED, S.LISTEN, S.SYN_SENT):
            self._cleanup_rbuf(len(data))
        return data

    def peek(self, n: int) -> bytes:
        """Up to n bytes from the head of the receive queue, left in it (MSG_PEEK)."""
        out = []
        for chunk in self.rcv_buf:
            if n <= 0:
                break
            out.append(chunk[:n] if len(chunk) > n else chunk)
            n -= len(chunk)
        return out[0] if len(out) == 1 else b"".join(out)

    @property
    def rcv_queued(self) -> int:
        return self.rcv_bytes

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
        unread = self.rcv_bytes
        if unread:
            # RFC 2525 §2.17: unread data means the peer's data was lost: reset.
            mib["TcpExtTCPAbortOnClose"] += 1
            if state not in (S.SYN_RECV,):
                self._send_rst()
            self._destroy(None, notify=False)
            return
        if self.linger == 0:
            # SO_LINGER {on, 0}: abortive close (Linux tcp_disconnect), counted as AbortOnData.
            # The RST goes out where tcp_need_reset says, or in CLOSING/LAST-ACK with data
            # never sent.
            mib["TcpExtTCPAbortOnData"] += 1
            if state in (S.ESTABLISHED, S.CLOSE_WAIT, S.FIN_WAIT_1, S.FIN_WAIT_2,
                         S.SYN_RECV) or (state in (S.CLOSING, S.LAST_ACK) and self._unsent()):
                self._send_rst()
            self._destroy(None, notify=False)
            return
        if not self.fin_queued and state in (S.ESTABLISHED, S.CLOSE_WAIT, S.SYN_RECV):
            self._queue_fin()
            self._output()
        self.orphan = True
        host.orphaned(self)
        if self.state == S.FIN_WAIT_2:
            host.tw.fin_wait2_entered(self)   # may hand it to TIME-WAIT before the check
        if self.state != S.CLOSED:
            host.check_oom_on_close(self)
        if self.state != S.CLOSED:
            self._arm()

    def abort(self) -> None:
        """Send RST and forget the connection (transport.abort(), SO_LINGER {on,0} close)."""
        state = self.state
        if state == S.CLOSED:
            return
        if state not in (S.SYN_SENT, S.LISTEN):
            self._send_rst()
        self.user = NULL_USER
        self._destroy(None, notify=False)

    # ------------------------------------------------------------------ for the host
    def drop(self, reset: bool = False) -> None:
        """Forget the connection without telling its user (an unaccepted child of a closed
        listener, an orphan over the limits); `reset`: send RST first."""
        if reset:
            self._send_rst()
        self._destroy(None, notify=False)

    def rearm(self) -> None:
        """Point the timer entry at the earliest deadline again (after an outside change)."""
        if self.state != S.CLOSED:
            self._arm()

    # ------------------------------------------------------------------ teardown
    def _destroy(self, exc: BaseException | None, notify: bool = True) -> None:
        """The connection is gone (CLOSED): free timers and table entries, tell the user."""
        if self.state == S.CLOSED and self.closed_notified:
            return
        self.error = exc
        self.t_rto = self.t_delack = self.t_misc = self.t_keep = NEVER
        if self.timer is not None and self.timer.active:
            self.host.wheel.cancel(self.timer)
        self._set_state(S.CLOSED)
        self.host.unlink(self)
        if notify:
            self._notify |= 16
        else:
            self.closed_notified = True

    def _deliver(self) -> None:
        """Queue this connection's notifications on the host's event queue (once); the host
        runs the user callbacks when its public call ends, never in mid-transition."""
        if self._notify and not self._queued:
            self._queued = True
            self.host.events.append(self._dispatch)

    def _dispatch(self) -> None:
        """Run the user callbacks collected while processing (called by Host.drain_events)."""
        self._queued = False
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
            kind = timer_name(self.misc_kind)
            return (kind, max(0, self.t_misc - now), self.probes)
        if self.t_keep != NEVER:
            return ("keepalive", max(0, self.t_keep - now), self.probes)
        return None

    def __repr__(self) -> str:
        from ustack.wire import int_to_ip
        return (f"<Connection {int_to_ip(self.laddr)}:{self.lport} -> "
                f"{int_to_ip(self.raddr)}:{self.rport} {self.state_name}>")
