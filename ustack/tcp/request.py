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

SYN cookies (net/ipv4/syncookies.c, tcp_syncookies 1: when the SYN queue is full, 2: always)
keep nothing at all: the SYN-ACK's sequence number encodes a keyed hash of the 4-tuple, a
minute counter and which of four MSS values the SYN asked for, and with timestamps its TSval's
low six bits carry the window scale and SACK permission; the ACK that echoes them becomes the
connection.  (The hash is ustack's own keyed BLAKE2s, not the kernel's SipHash: a cookie is only
ever checked by the stack that made it.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ustack._segment import ACK, FIN, RST, SYN, build_tcp
from ustack.tcp.common import M32, MAX_WSCALE, TCP_RTO_MAX, TCP_TIMEOUT_INIT, TS_OPT_LEN, _after
from ustack.tcp.paws import paws_reject

if TYPE_CHECKING:  # pragma: no cover
    from ustack.host import Host, Listener

__all__ = ["Request", "conn_request", "check_req", "reqsk_timer", "cookie_check"]


class Request:
    """One half-open connection (Linux struct tcp_request_sock)."""

    __slots__ = ("listener", "key", "raddr", "rport", "lport", "irs", "iss", "rcv_nxt",
                 "peer_mss", "snd_wscale", "wscale_ok", "sack_ok", "ts_ok", "ts_recent",
                 "ts_off", "snd_wnd", "rcv_wnd", "rcv_wscale", "num_retrans", "num_timeout",
                 "syn_time", "acked", "last_oow_ack", "timer", "cookie")

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
        self.cookie = False          # made from a SYN cookie: no SYN-ACK time to measure from

    # ------------------------------------------------------------------ output
    def send_synack(self, ts_clock: int | None = None) -> None:
        """tcp_v4_send_synack (`ts_clock`: the cookie timestamp instead of now)."""
        host = self.listener.host
        clock = host.now if ts_clock is None else ts_clock
        ts_val = (clock + self.ts_off) & M32 if self.ts_ok else None
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

    def oow_rate_limited(self, mib_name: str = "TcpExtTCPACKSkippedSynRecv") -> bool:
        """tcp_oow_rate_limited for a request: one answer per tcp_invalid_ratelimit ms."""
        host = self.listener.host
        limit = host.sysctl["net.ipv4.tcp_invalid_ratelimit"]
        if self.last_oow_ack >= 0 and host.now - self.last_oow_ack < limit:
            host.mib[mib_name] += 1
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
    want_cookie = False
    if (syncookies == 2 or listener.reqsk_queue_is_full()) and isn is None:
        # tcp_syn_flood_action
        if syncookies:
            want_cookie = True
            mib["TcpExtTCPReqQFullDoCookies"] += 1
        else:
            mib["TcpExtTCPReqQFullDrop"] += 1
            mib["TcpExtListenDrops"] += 1
            return
    if listener.acceptq_is_full():
        mib["TcpExtListenOverflows"] += 1
        mib["TcpExtListenDrops"] += 1
        return
    if want_cookie:
        send_cookie(host, listener, seg)
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
    if flags & RST and seg.seq != req.rcv_nxt:
        # Linux 6.18: a RST inside the window but not at rcv_nxt draws a challenge ACK
        # (RFC 5961 §3) and the request lives on
        if req.oow_rate_limited("TcpExtTCPACKSkippedChallenge"):
            return None
        if host.challenge_ack_allowed():
            mib["TcpExtTCPChallengeACK"] += 1
            req.send_ack()
        return None
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


# ---------------------------------------------------------------------- SYN cookies
MSSTAB = (536, 1300, 1440, 1460)        # msstab: the MSS values a cookie can carry
COOKIEBITS = 24
COOKIEMASK = (1 << COOKIEBITS) - 1
MAX_SYNCOOKIE_AGE = 2                   # minutes
TCP_SYNCOOKIE_VALID = 120_000           # ms after the last overflow that cookies are accepted
TSBITS = 6
TSMASK = (1 << TSBITS) - 1
TS_OPT_WSCALE_MASK = 0xF
TS_OPT_SACK = 1 << 4


def cookie_time(now: int) -> int:
    """tcp_cookie_time: a counter of minutes."""
    return now // 60_000


def cookie_init_sequence(host: "Host", seg: Any) -> tuple[int, int]:
    """__cookie_v4_init_sequence: the ISN that is the cookie, and the MSS it stands for."""
    mssind = len(MSSTAB) - 1
    while mssind and seg.mss < MSSTAB[mssind]:
        mssind -= 1
    h = host.secret.cookie_hash
    count = cookie_time(host.now)
    args = (seg.src, host.address, seg.sport, seg.dport)
    isn = (h(*args, 0, 0) + seg.seq + (count << COOKIEBITS)
           + ((h(*args, count, 1) + mssind) & COOKIEMASK)) & M32
    return isn, MSSTAB[mssind]


def cookie_check_mss(host: "Host", seg: Any) -> int:
    """__cookie_v4_check: the MSS the ACK's cookie (ack - 1) encodes, 0 if it is not ours or
    older than two minutes."""
    h = host.secret.cookie_hash
    args = (seg.src, host.address, seg.sport, seg.dport)
    cookie = (seg.ack - 1) & M32
    sseq = (seg.seq - 1) & M32
    count = cookie_time(host.now)
    cookie = (cookie - h(*args, 0, 0) - sseq) & M32
    diff = (count - (cookie >> COOKIEBITS)) & (M32 >> COOKIEBITS)
    if diff >= MAX_SYNCOOKIE_AGE:
        return 0
    mssind = (cookie - h(*args, (count - diff) & M32, 1)) & COOKIEMASK
    return MSSTAB[mssind] if mssind < len(MSSTAB) else 0


def cookie_init_timestamp(req: Request, now: int) -> int:
    """cookie_init_timestamp: the TSval clock with its low bits replaced by the options the
    SYN asked for (window scale, or 0xf for none; SACK), never ahead of the clock."""
    options = req.snd_wscale if req.wscale_ok else TS_OPT_WSCALE_MASK
    if req.sack_ok:
        options |= TS_OPT_SACK
    ts = ((now >> TSBITS) << TSBITS) | options
    if ts > now:
        ts -= 1 << TSBITS
    return ts


def send_cookie(host: "Host", listener: "Listener", seg: Any) -> None:
    """tcp_conn_request with want_cookie: a SYN-ACK whose ISN is the cookie; nothing is kept.
    Without timestamps nowhere to keep window scaling and SACK: they are not offered."""
    req = Request(listener, seg, 0)
    if not req.ts_ok:
        req.wscale_ok = req.sack_ok = False        # tcp_clear_options
        req.snd_wscale = req.rcv_wscale = 0
    req.iss, _mss = cookie_init_sequence(host, seg)
    listener.last_overflow = host.now              # tcp_synq_overflow
    host.mib["TcpExtSyncookiesSent"] += 1
    req.send_synack(cookie_init_timestamp(req, host.now) if req.ts_ok else None)


def cookie_check(host: "Host", listener: "Listener", seg: Any) -> bool:
    """cookie_v4_check: an ACK at the listener that may complete a cookie handshake.  True
    when it was dealt with (a connection made, or dropped for a full accept queue); False
    when the listener should answer it with a RST."""
    mib = host.mib
    sysctl = host.sysctl
    if not sysctl["net.ipv4.tcp_syncookies"] or seg.flags & (RST | SYN):
        return False
    if host.now - listener.last_overflow > TCP_SYNCOOKIE_VALID:
        return False                               # tcp_synq_no_recent_overflow
    mss = cookie_check_mss(host, seg)
    if not mss:
        mib["TcpExtSyncookiesFailed"] += 1
        return False
    mib["TcpExtSyncookiesRecv"] += 1
    ts_ok = bool(seg.has_ts and sysctl["net.ipv4.tcp_timestamps"])
    if seg.has_ts and not sysctl["net.ipv4.tcp_timestamps"]:
        return False
    wscale_ok, snd_wscale, sack_ok = False, 0, False
    ts_off = 0
    if ts_ok:
        # cookie_timestamp_decode: the echoed TSval carries the SYN's options
        ts_off = host.secret.ts_offset(host.address, seg.src, seg.dport, seg.sport) \
            if sysctl["net.ipv4.tcp_timestamps"] == 1 else 0
        options = (seg.ts_ecr - ts_off) & TSMASK
        sack_ok = bool(options & TS_OPT_SACK)
        if sack_ok and not sysctl["net.ipv4.tcp_sack"]:
            return False
        if options & TS_OPT_WSCALE_MASK != TS_OPT_WSCALE_MASK:
            if not sysctl["net.ipv4.tcp_window_scaling"]:
                return False
            wscale_ok, snd_wscale = True, options & TS_OPT_WSCALE_MASK
    req = Request.__new__(Request)
    req.listener = listener
    req.raddr, req.rport, req.lport = seg.src, seg.sport, seg.dport
    req.key = (seg.src << 32) | (seg.sport << 16) | seg.dport
    req.irs = (seg.seq - 1) & M32
    req.rcv_nxt = seg.seq
    req.iss = (seg.ack - 1) & M32
    req.peer_mss = mss
    req.wscale_ok, req.snd_wscale, req.sack_ok = wscale_ok, snd_wscale, sack_ok
    req.ts_ok = ts_ok
    req.ts_recent = seg.ts_val if ts_ok else 0
    req.ts_off = ts_off
    req.snd_wnd = seg.window << snd_wscale
    req.rcv_wnd, wscale = listener.initial_rwin(host.mtu - 40 - (TS_OPT_LEN if ts_ok else 0))
    req.rcv_wscale = wscale if wscale_ok else 0
    req.num_retrans = req.num_timeout = 0
    req.syn_time = host.now
    req.acked = False
    req.last_oow_ack = -1
    req.timer = None
    req.cookie = True
    if listener.acceptq_is_full():
        mib["TcpExtListenOverflows"] += 1
        mib["TcpExtListenDrops"] += 1
        return True
    host.child_from_request(req, seg)
    return True
