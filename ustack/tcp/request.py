"""Request sockets: a listener's half-open connections, as Linux keeps them
(net/ipv4/tcp_minisocks.c tcp_check_req, inet_connection_sock.c reqsk_timer_handler,
tcp_input.c tcp_conn_request).

A SYN on a listener makes a `Request`: a few numbers (the 4-tuple, both initial sequence
numbers, the options the SYN asked for, the SYN-ACK's window) and one timer, not a full
connection.  The full `Connection` is made only when the handshake's ACK arrives and is valid
(tcp_check_req -> syn_recv_sock); until then the request retransmits its SYN-ACK with backoff
(tcp_synack_retries) and is dropped when they run out, sooner when old requests crowd the queue
(reqsk_timer_handler's pruning).  The queue limits are Linux's: the SYN queue holds at most the
listen backlog (min(backlog, somaxconn)), the accept queue one more, and without SYN cookies the
last quarter of tcp_max_syn_backlog is kept for proven peers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ustack._segment import ACK, FIN, RST, SYN, build_tcp
from ustack.tcp.common import M32, MAX_WSCALE, TCP_RTO_MAX, TCP_TIMEOUT_INIT, TS_OPT_LEN, _after
from ustack.tcp.paws import paws_reject

if TYPE_CHECKING:  # pragma: no cover
    from ustack.host import Host, Listener

__all__ = ["Request", "conn_request", "check_req", "reqsk_timer"]


class Request:
    """One half-open connection (Linux struct tcp_request_sock)."""

    __slots__ = ("listener", "key", "raddr", "rport", "lport", "irs", "iss", "rcv_nxt",
                 "peer_mss", "snd_wscale", "wscale_ok", "sack_ok", "ts_ok", "ts_recent",
                 "ts_off", "snd_wnd", "rcv_wnd", "rcv_wscale", "num_retrans", "num_timeout",
                 "syn_time", "acked", "last_oow_ack", "timer")

    def __init__(self, listener: "Listener", seg: Any, iss: int) -> None:
        host = listener.host
        sysctl = host.sysctl
        self.listener = listener
        self.raddr = seg.src
        self.rport = seg.sport
        self.lport = seg.dport
        self.key = (seg.src << 32) | (seg.sport << 16) | seg.dport
        self.irs = seg.seq
        self.rcv_nxt = (seg.seq + 1) & M32
        self.iss = iss
        self.peer_mss = seg.mss if seg.mss > 0 else 536
        self.wscale_ok = seg.wscale >= 0 and bool(sysctl["net.ipv4.tcp_window_scaling"])
        self.snd_wscale = min(seg.wscale, MAX_WSCALE) if self.wscale_ok else 0
        self.sack_ok = bool(seg.sack_ok and sysctl["net.ipv4.tcp_sack"])
        self.ts_ok = bool(seg.has_ts and sysctl["net.ipv4.tcp_timestamps"])
        self.ts_recent = seg.ts_val if self.ts_ok else 0
        self.ts_off = host.secret.ts_offset(host.address, seg.src, seg.dport, seg.sport) \
            if self.ts_ok and sysctl["net.ipv4.tcp_timestamps"] == 1 else 0
        self.snd_wnd = seg.window
        # tcp_openreq_init_rwin: the window and scale a new socket would offer
        advmss = host.mtu - 40
        self.rcv_wnd, wscale = listener.initial_rwin(advmss - (TS_OPT_LEN if self.ts_ok else 0))
        self.rcv_wscale = wscale if self.wscale_ok else 0
        self.num_retrans = 0
        self.num_timeout = 0
        self.syn_time = host.now
        self.acked = False
        self.last_oow_ack = -1
        self.timer = None

    # ------------------------------------------------------------------ output
    def send_synack(self) -> None:
        """tcp_v4_send_synack."""
        host = self.listener.host
        ts_val = (host.now + self.ts_off) & M32 if self.ts_ok else None
        host.output(build_tcp(
            host.address, self.raddr, self.lport, self.rport, self.iss, self.rcv_nxt, SYN | ACK,
            min(self.rcv_wnd, 65535), mss=host.mtu - 40,
            wscale=self.rcv_wscale if self.wscale_ok else -1, sack_ok=self.sack_ok,
            ts_val=ts_val, ts_ecr=self.ts_recent, ttl=host.ttl))

    def send_ack(self) -> None:
        """tcp_v4_reqsk_send_ack: an out-of-window segment is answered from the request."""
        host = self.listener.host
        ts_val = (host.now + self.ts_off) & M32 if self.ts_ok else None
        host.output(build_tcp(
            host.address, self.raddr, self.lport, self.rport, (self.iss + 1) & M32,
            self.rcv_nxt, ACK, self.rcv_wnd >> self.rcv_wscale, ts_val=ts_val,
            ts_ecr=self.ts_recent, ttl=host.ttl))

    def rtx_synack(self) -> None:
        """tcp_rtx_synack: counted as a retransmission."""
        mib = self.listener.host.mib
        self.send_synack()
        mib["TcpRetransSegs"] += 1
        mib["TcpExtTCPSynRetrans"] += 1
        self.num_retrans += 1

    def timeout(self) -> int:
        """reqsk_timeout: the initial RTO doubled per timeout, at most TCP_RTO_MAX."""
        return min(TCP_TIMEOUT_INIT << self.num_timeout, TCP_RTO_MAX)

    def arm(self, deadline: int) -> None:
        wheel = self.listener.host.wheel
        if self.timer is None:
            self.timer = wheel.schedule(deadline, self)
        else:
            wheel.reschedule(self.timer, deadline)

    def oow_rate_limited(self) -> bool:
        """tcp_oow_rate_limited for a request (TCPACKSkippedSynRecv)."""
        host = self.listener.host
        limit = host.sysctl["net.ipv4.tcp_invalid_ratelimit"]
        if self.last_oow_ack >= 0 and host.now - self.last_oow_ack < limit:
            host.mib["TcpExtTCPACKSkippedSynRecv"] += 1
            return True
        self.last_oow_ack = host.now
        return False

    def __repr__(self) -> str:
        from ustack.wire import int_to_ip
        return f"<Request {int_to_ip(self.raddr)}:{self.rport} -> :{self.lport} SYN-RECV>"


def conn_request(host: "Host", listener: "Listener", seg: Any, isn: int | None) -> None:
    """tcp_conn_request: a SYN on a listener.  The queues decide first; then a request is
    made and its SYN-ACK sent."""
    mib = host.mib
    sysctl = host.sysctl
    syncookies = sysctl["net.ipv4.tcp_syncookies"]
    if (syncookies == 2 or listener.reqsk_queue_is_full()) and isn is None:
        # tcp_syn_flood_action (SYN cookies are not implemented yet: tcp_syncookies reads 0)
        mib["TcpExtTCPReqQFullDrop"] += 1
        mib["TcpExtListenDrops"] += 1
        return
    if listener.acceptq_is_full():
        mib["TcpExtListenOverflows"] += 1
        mib["TcpExtListenDrops"] += 1
        return
    if isn is None:
        max_syn_backlog = sysctl["net.ipv4.tcp_max_syn_backlog"]
        if not syncookies and max_syn_backlog - listener.qlen < (max_syn_backlog >> 2):
            # without cookies the last quarter is for peers proven alive (ustack keeps no
            # per-peer metrics, so none is): drop_and_release
            mib["TcpExtListenDrops"] += 1
            return
        isn = host.secret.isn(host.address, seg.src, seg.dport, seg.sport, host.now)
    req = Request(listener, seg, isn)
    host.reqs[req.key] = req
    listener.qlen += 1
    listener.young += 1
    req.send_synack()
    req.arm(host.now + req.timeout())


def reqsk_timer(req: Request) -> None:
    """reqsk_timer_handler: resend the SYN-ACK with backoff, give up after the retries (fewer
    when old requests fill half the queue)."""
    listener = req.listener
    host = listener.host
    if host.reqs.get(req.key) is not req:
        return
    max_retries = host.sysctl["net.ipv4.tcp_synack_retries"]
    qlen = listener.qlen
    if (qlen << 1) > max(8, listener.max_ack_backlog):
        young = listener.young << 1
        while max_retries > 2:
            if qlen < young:
                break
            max_retries -= 1
            young <<= 1
    host.mib["TcpExtTCPTimeouts"] += 1          # tcp_syn_ack_timeout
    if req.num_timeout < max_retries:           # syn_ack_recalc: not yet expired
        req.rtx_synack()
        if req.num_timeout == 0:
            listener.young -= 1
        req.num_timeout += 1
        req.arm(host.now + req.timeout())
        return
    drop(req)


def drop(req: Request) -> None:
    """inet_csk_reqsk_queue_drop."""
    listener = req.listener
    host = listener.host
    if host.reqs.get(req.key) is req:
        del host.reqs[req.key]
        listener.qlen -= 1
        if req.num_timeout == 0:
            listener.young -= 1
    if req.timer is not None and req.timer.active:
        host.wheel.cancel(req.timer)


def check_req(host: "Host", req: Request, seg: Any) -> Any:
    """tcp_check_req: a segment for a half-open connection.  Returns the segment for the
    listener to answer (an ACK of something else: RST), or None once it is dealt with; on the
    handshake's valid ACK the full connection is made and the segment handed to it."""
    mib = host.mib
    flags = seg.flags
    listener = req.listener
    paws = False
    if req.ts_ok and seg.has_ts:
        # the request's ts_recent counts as just received, less the backoff it waited
        stamp = host.now - req.timeout() // 1000 * 1000
        paws = paws_reject(req.ts_recent, stamp, seg.ts_val, host.now, bool(flags & RST))
    if flags & SYN and not flags & RST and seg.seq == req.irs and not paws:
        # a retransmitted SYN: the SYN-ACK again (inet_rtx_syn_ack), the timer pushed out
        if not req.oow_rate_limited():
            req.rtx_synack()
            if req.timer is not None and req.timer.active:
                req.arm(host.now + req.timeout())
        return None
    if flags & ACK and seg.ack != (req.iss + 1) & M32:
        return seg                               # the listener answers with a RST
    seg_len = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
    if paws or not _in_window(seg.seq, (seg.seq + seg_len) & M32, req.rcv_nxt,
                              (req.rcv_nxt + req.rcv_wnd) & M32):
        if not flags & RST and not req.oow_rate_limited():
            req.send_ack()
        if paws:
            mib["TcpExtPAWSEstab"] += 1
        return None
    if req.ts_ok and seg.has_ts and not _after(seg.seq, req.rcv_nxt):
        req.ts_recent = seg.ts_val
    if seg.seq == req.irs:
        flags &= ~SYN                            # the SYN lies before the window: truncated
    if flags & (RST | SYN):
        mib["TcpAttemptFails"] += 1
        embryonic_reset(host, req, seg, flags)
        return None
    if not flags & ACK:
        return None
    if listener.acceptq_is_full():
        # tcp_v4_syn_recv_sock -> exit_overflow; listen_overflow
        mib["TcpExtListenOverflows"] += 1
        mib["TcpExtListenDrops"] += 1
        if not host.sysctl["net.ipv4.tcp_abort_on_overflow"]:
            req.acked = True
            return None
        embryonic_reset(host, req, seg, flags)
        return None
    host.child_from_request(req, seg)
    return None


def embryonic_reset(host: "Host", req: Request, seg: Any, flags: int) -> None:
    if not flags & RST:
        host.send_reset_for(seg)
    drop(req)
    host.mib["TcpExtEmbryonicRsts"] += 1


def _in_window(seq: int, end_seq: int, s_win: int, e_win: int) -> bool:
    """tcp_in_window (tcp_minisocks.c)."""
    if seq == s_win:
        return True
    if _after(end_seq, s_win) and ((seq - e_win) & M32) > 0x7FFFFFFF:
        return True
    return seq == e_win and seq == end_seq
