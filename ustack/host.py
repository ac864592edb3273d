"""The I/O-free core of one stack: IPv4 in and out, ICMP echo, and TCP demultiplexing.

`Host` never reads a clock, a socket or a device.  Whoever owns it (the asyncio adapter over a
TUN device, an in-memory wire, the drill runner under virtual time) does four things:

    host.now = now_ms                 # or host.advance(now_ms), which also fires timers
    host.receive(packet_bytes)        # one IPv4 datagram in
    packets = host.take_output()      # datagrams to put on the link
    host.next_deadline()              # when to call advance() again

Connections live in `conns` by 4-tuple key (raddr << 32 | rport << 16 | lport; the local address
is the host's one address), TIME-WAIT records in `tw` (tcp/timewait.py), listeners by port.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ustack._segment import ACK, FIN, RST, SYN, build_ipv4, build_tcp, internet_checksum, \
    parse_ipv4, parse_tcp
from ustack._timerwheel import TimerWheel
from ustack.counters import Counters
from ustack.sysctl import Sysctl
from ustack.tcp import fastpath
from ustack.tcp import states as S
from ustack.tcp.cong import CA_NAMES, TCP_INFINITE_SSTHRESH
from ustack.tcp.connection import NEVER, NULL_USER, Connection, ConnectionUser
from ustack.tcp.icmp import req_err, tcp_err
from ustack.tcp.isn import SecretHash
from ustack.tcp.ports import PortBinding, PortTable
from ustack.tcp.common import MAX_WSCALE, TCP_DEFAULT_SCALING_RATIO
from ustack.tcp.rcvwnd import initial_window, initial_wscale, win_from_space
from ustack.tcp.request import Request, check_req, conn_request, cookie_check, reqsk_timer
from ustack.tcp.request import drop as drop_request
from ustack.tcp.timewait import TW_ACK, TW_RST, TW_SYN, TimeWait, TimeWaitTable, reuse_isn
from ustack.tcp.twtable import CompactTable
from ustack.wire import int_to_ip, ip_to_int

_CLOSING_STATES = frozenset((S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK))  # Linux closing()

M32 = 0xFFFFFFFF
IPPROTO_ICMP = 1
IPPROTO_TCP = 6


class ListenerUser:
    """What the core tells a listening socket's owner."""

    def tcp_accept(self, listener: "Listener") -> None: ...


class Listener:
    """A LISTEN socket: a port, a backlog and the queue of established children."""

    __slots__ = ("host", "port", "backlog", "user", "accept_queue", "qlen", "young", "closed",
                 "binding", "group", "_rwin", "last_overflow", "child_options", "queued")

    def __init__(self, host: "Host", binding: PortBinding, backlog: int,
                 user: ListenerUser) -> None:
        self.host = host
        self.port = binding.port
        self.binding = binding
        self.backlog = backlog
        self.user = user
        self.accept_queue: deque[Connection] = deque()
        self.qlen = 0        # request sockets (half-open connections) of this listener
        self.young = 0       # ... of which have not timed out yet
        self._rwin: dict[tuple[int, int | None], tuple[int, int]] = {}
        self.last_overflow = -(1 << 40)   # when the SYN queue last overflowed (cookies sent)
        # socket options the children get when they are created (Linux clones the listener)
        self.child_options: dict[str, Any] = {}
        self.queued = False      # an accept notification waits on the host's event queue
        self.closed = False
        # the SO_REUSEPORT listeners of this port, in the order they started listening
        self.group: list[Listener] = [self]

    @property
    def reuseaddr(self) -> bool:
        return self.binding.reuseaddr

    @property
    def reuseport(self) -> bool:
        return self.binding.reuseport

    @property
    def max_ack_backlog(self) -> int:
        """sk_max_ack_backlog: min(backlog, somaxconn) as listen() was given."""
        return self.backlog - 1

    def reqsk_queue_is_full(self) -> bool:
        """inet_csk_reqsk_queue_is_full."""
        return self.qlen > self.max_ack_backlog

    def acceptq_is_full(self) -> bool:
        """sk_acceptq_is_full."""
        return len(self.accept_queue) > self.max_ack_backlog

    def initial_rwin(self, mss: int) -> tuple[int, int]:
        """The SYN-ACK's window and window scale for segments of `mss` (tcp_openreq_init_rwin:
        what a new socket with the default receive buffer offers)."""
        rcvbuf = self.child_options.get("rcvbuf")
        got = self._rwin.get((mss, rcvbuf))
        if got is None:
            sysctl = self.host.sysctl
            full = win_from_space(rcvbuf or sysctl["net.ipv4.tcp_rmem"][1],
                                  TCP_DEFAULT_SCALING_RATIO)
            clamp = 65535 << MAX_WSCALE
            if rcvbuf is not None:
                clamp = min(clamp, full)    # SO_RCVBUF locked: it clamps the window
            got = self._rwin[(mss, rcvbuf)] = (initial_window(full, clamp, mss),
                                               initial_wscale(sysctl, full, clamp))
        return got

    def dispatch(self) -> None:
        """Tell the owner that connections wait to be accepted (from Host.drain_events)."""
        self.queued = False
        if self.accept_queue and not self.closed:
            self.user.tcp_accept(self)

    def accept(self) -> Connection | None:
        """Pop one established connection (accept()), or None when the queue is empty."""
        return self.accept_queue.popleft() if self.accept_queue else None

    def close(self) -> None:
        """Stop listening (Linux inet_csk_listen_stop): children nobody accepted are reset."""
        if self.closed:
            return
        self.closed = True
        host = self.host
        group = self.group
        if self in group:
            group.remove(self)
        if host.listeners.get(self.port) is self:
            if group:
                host.listeners[self.port] = group[0]
            else:
                del host.listeners[self.port]
        while self.accept_queue:
            child = self.accept_queue.popleft()
            child.listener = None
            child.abort()
        for conn in list(host.conns.values()):
            if conn.listener is self and conn.state == S.SYN_RECV:
                conn.listener = None
                conn.drop()
        for req in list(host.reqs.values()):
            if req.listener is self:
                drop_request(req)
        self.binding.release()


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """One line of `ss -tanoe`: what `Stack.connections()` returns."""

    state: str                 # Linux ss name: "ESTAB", "TIME-WAIT", ...
    local: tuple[str, int]
    remote: tuple[str, int]
    recv_q: int
    send_q: int
    timer: tuple[str, int, int] | None   # (kind, ms left, retransmissions/probes)
    orphan: bool = False
    substate: str | None = None          # for TIME-WAIT records: "TIME-WAIT" or "FIN-WAIT-2"
    rto: int = 0
    rtt: float = 0.0
    cwnd: int = 0
    retrans: int = 0
    # ss -i (TCP_INFO): the sender's state
    congestion: str = ""                 # the congestion control module
    ssthresh: int = 0                    # 0: still infinite (ss prints none)
    rttvar: float = 0.0                  # ms
    lost: int = 0
    sacked: int = 0
    retrans_out: int = 0
    reordering: int = 0
    ca_state: str = ""                   # open, disorder, cwr, recovery, loss
    mss: int = 0

    def __str__(self) -> str:
        local = f"{self.local[0]}:{self.local[1]}"
        remote = f"{self.remote[0]}:{self.remote[1]}" if self.remote[1] else "*:*"
        line = f"{self.state:<11} {self.recv_q:<6} {self.send_q:<6} {local:<21} {remote:<21}"
        if self.timer:
            kind, left, n = self.timer
            line += f" timer:({kind},{_fmt_ms(left)},{n})"
        if self.orphan:
            line += " orphan"
        if self.substate and self.substate != self.state:
            line += f" substate:{self.substate}"
        if self.cwnd:
            line += f" {self.congestion} rto:{self.rto} rtt:{self.rtt:.3f}/{self.rttvar:.3f}"
            line += f" mss:{self.mss} cwnd:{self.cwnd}"
            if self.ssthresh:
                line += f" ssthresh:{self.ssthresh}"
            if self.retrans or self.retrans_out:
                line += f" retrans:{self.retrans_out}/{self.retrans}"
            if self.lost:
                line += f" lost:{self.lost}"
            if self.sacked:
                line += f" sacked:{self.sacked}"
            if self.reordering != 3:
                line += f" reordering:{self.reordering}"
            if self.ca_state and self.ca_state != "open":
                line += f" ca_state:{self.ca_state}"
        return line


def _fmt_ms(ms: int) -> str:
    if ms >= 1000:
        return f"{ms / 1000:.3f}sec" if ms < 60_000 else f"{ms // 60_000}min{(ms % 60_000) // 1000}sec"
    return f"{ms}ms"


class Host:
    """One IPv4 address's TCP/IP stack, without I/O."""

    def __init__(self, address: int | str, *, sysctl: dict[str, Any] | Sysctl | None = None,
                 mtu: int = 1500, secret: bytes | None = None, now: int = 0,
                 seed: int | None = None) -> None:
        self.address = ip_to_int(address) if isinstance(address, str) else address
        self.sysctl = sysctl if isinstance(sysctl, Sysctl) else Sysctl(sysctl)
        self.counters = Counters()
        self.mib = self.counters.values
        self.mtu = mtu
        self.now = now
        # what the link said of the datagram being received (offloads): its TCP checksum is
        # partial; it is a super-segment of segments of rx_gso bytes
        self.rx_csum_partial = False
        self.rx_gso = 0
        # the link takes TCP super-segments (TSO): a burst leaves as one packet
        self.tso = False
        # header prediction (tcp/fastpath.py): the compiled translation, or the Python spec
        # (USTACK_FASTPATH=python); both leave the same state behind
        self.fastpath = fastpath.select()
        self.wheel = TimerWheel(now)
        self.secret = SecretHash(secret)
        self.rng = random.Random(seed)
        self.conns: dict[int, Connection] = {}
        # TIME-WAIT records: a compact table of arrays (twtable.py), or one object per record
        # (timewait.py, the readable statement), as ustack.tcp_tw_compact says at start
        self.tw: TimeWaitTable = CompactTable(self) if self.sysctl["ustack.tcp_tw_compact"] \
            else TimeWaitTable(self)
        self.reqs: dict[int, Request] = {}    # half-open connections (tcp/request.py)
        self.listeners: dict[int, Listener] = {}
        self.ports = PortTable(self)        # who holds each local port (bind buckets)
        self.challenge_second = -1          # host-wide challenge ACK budget (RFC 5961)
        self.challenge_count = 0
        self.outbox: list[bytes] = []
        self.orphan_count = 0
        self.ttl = self.sysctl["net.ipv4.ip_default_ttl"]
        self.ip_ident = self.rng.randrange(65536)
        self.on_output = None  # optional callable: the adapter's "something to send" hook
        # connection -> callable: a lingering close() waiting for the FIN's ACK (state_changed)
        self.close_waiters: dict[Connection, Any] = {}
        # Notifications for the layer above, run when a public call (receive, advance, a
        # socket call) ends: never in the middle of a state transition.
        self.events: deque[Callable[[], None]] = deque()
        self._draining = False
        # event logs (ustack.event_log): (lport, raddr, rport) -> the newest incarnation's
        # events, for the last MAX_LOGS connections
        self.logs: dict[tuple[int, int, int], deque] = {}

    # ------------------------------------------------------------------ clock
    MAX_LOGS = 4096

    def new_log(self, conn: Connection) -> deque:
        """A connection's event log, kept here after the connection is gone."""
        log: deque = deque(maxlen=self.sysctl["ustack.event_log"])
        logs = self.logs
        key = (conn.lport, conn.raddr, conn.rport)
        logs.pop(key, None)
        logs[key] = log
        while len(logs) > self.MAX_LOGS:
            del logs[next(iter(logs))]
        return log

    def event_log(self, lport: int, raddr: int | str, rport: int) -> list[Any]:
        """The event log of the newest connection with this 4-tuple (LogEvent entries), or
        [] when there is none (ustack.event_log is 0, or it was dropped as too old)."""
        if isinstance(raddr, str):
            raddr = ip_to_int(raddr)
        return list(self.logs.get((lport, raddr, rport), ()))

    def drain_events(self) -> None:
        """Run the queued notifications (user callbacks).  Callbacks may call back into the
        core; what they cause is run by the same loop, in order."""
        if self._draining:
            return
        self._draining = True
        events = self.events
        try:
            while events:
                events.popleft()()
        finally:
            self._draining = False

    def advance(self, now: int) -> None:
        """Move time to `now` (ms), run every timer that is due, then the notifications."""
        self._advance(now)
        if self.events:
            self.drain_events()

    def _advance(self, now: int) -> None:
        if now < self.now:
            now = self.now
        self.now = now
        for obj in self.wheel.advance(now):
            if isinstance(obj, Connection):
                if obj.state != S.CLOSED:
                    obj.on_timer()
            elif isinstance(obj, TimeWait):
                self.tw.expire(obj)
            elif isinstance(obj, CompactTable):
                obj.on_timer()
            elif isinstance(obj, Request):
                reqsk_timer(obj)

    def next_deadline(self) -> int | None:
        return self.wheel.next_deadline()

    # ------------------------------------------------------------------ output
    def output(self, packet: bytes, segs: int = 1) -> None:
        """Queue a packet for the link; `segs`: the TCP segments it stands for (a TSO
        super-segment counts as the segments the device cuts it into, as Linux counts)."""
        self.outbox.append(packet)
        self.mib["TcpOutSegs"] += segs
        self.mib["IpOutRequests"] += 1
        if self.on_output is not None and len(self.outbox) == 1:
            self.on_output()

    def take_output(self) -> list[bytes]:
        out = self.outbox
        self.outbox = []
        return out

    # ------------------------------------------------------------------ input
    def receive(self, data: bytes, now: int | None = None, *, csum_partial: bool = False,
                gso_size: int = 0) -> None:
        """One IPv4 datagram from the link at time `now` (ms; None: the host's clock as it
        is).  Malformed input is counted and dropped.  Notifications run at the end.

        From a link with offloads: `csum_partial` says the TCP checksum is the kernel's
        partial one (not verified), `gso_size` that the datagram is a super-segment of
        segments of that size, taken whole as Linux takes a GRO packet."""
        self.receive_many((data,), now,
                          ((csum_partial, gso_size),) if csum_partial or gso_size else None)

    def receive_many(self, packets: Sequence[bytes], now: int | None = None,
                     meta: Sequence[Any] | None = None) -> None:
        """A batch from the link: timers due before `now` first, then each datagram, then the
        notifications once (data is delivered once per batch).  `meta`: per datagram, None or
        (csum_partial, gso_size) from an offloading link."""
        if now is not None and now > self.now:
            self._advance(now)
        receive = self._receive
        if meta is None:
            for packet in packets:
                receive(packet)
        else:
            for packet, m in zip(packets, meta):
                if m is None:
                    receive(packet)
                else:
                    self.rx_csum_partial, self.rx_gso = m
                    try:
                        receive(packet)
                    finally:
                        self.rx_csum_partial = False
                        self.rx_gso = 0
        if self.events:
            self.drain_events()

    def _receive(self, data: bytes) -> None:
        mib = self.mib
        ip = parse_ipv4(data, mib)
        if ip is None:
            return
        if ip.dst != self.address:
            mib["IpInAddrErrors"] += 1
            return
        if ip.mf or ip.frag_offset:
            mib["IpReasmFails"] += 1  # ustack does not reassemble fragments
            return
        proto = ip.proto
        if proto == IPPROTO_TCP:
            mib["IpInDelivers"] += 1
            seg = parse_tcp(ip, mib, not self.rx_csum_partial)
            if seg is None:
                return
            self._tcp_input(seg)
        elif proto == IPPROTO_ICMP:
            mib["IpInDelivers"] += 1
            self._icmp_input(ip)
        else:
            mib["IpInUnknownProtos"] += 1

    def _icmp_input(self, ip: Any) -> None:
        """ICMP echo request -> echo reply (RFC 792); other messages are counted only."""
        mib = self.mib
        msg = ip.payload
        mib["IcmpInMsgs"] += 1
        if len(msg) < 8:
            mib["IcmpInErrors"] += 1
            return
        if internet_checksum(msg) != 0:
            mib["IcmpInCsumErrors"] += 1
            mib["IcmpInErrors"] += 1
            return
        icmp_type = msg[0]
        if icmp_type in (3, 4, 11, 12):
            mib[{3: "IcmpInDestUnreachs", 4: "IcmpInSrcQuenchs", 11: "IcmpInTimeExcds",
                 12: "IcmpInParmProbs"}[icmp_type]] += 1
            self._icmp_error(icmp_type, msg[1], msg)
            return
        if icmp_type != 8 or msg[1] != 0:
            return
        mib["IcmpInEchos"] += 1
        if self.sysctl["net.ipv4.icmp_echo_ignore_all"]:
            return
        reply = bytearray(msg)
        reply[0] = 0
        reply[2] = reply[3] = 0
        csum = internet_checksum(bytes(reply))
        reply[2] = csum >> 8
        reply[3] = csum & 0xFF
        self.ip_ident = (self.ip_ident + 1) & 0xFFFF
        self.outbox.append(build_ipv4(self.address, ip.src, IPPROTO_ICMP, bytes(reply),
                                      ttl=self.ttl, ident=self.ip_ident, df=False))
        mib["IcmpOutMsgs"] += 1
        mib["IcmpOutEchoReps"] += 1
        mib["IpOutRequests"] += 1
        if self.on_output is not None and len(self.outbox) == 1:
            self.on_output()

    def _icmp_error(self, icmp_type: int, code: int, msg: bytes) -> None:
        """An ICMP error quoting one of our TCP segments (icmp_unreach -> tcp_v4_err): the
        quoted IP header and 8 bytes of TCP header find the connection."""
        inner = msg[8:]
        if len(inner) < 20:
            self.mib["IcmpInErrors"] += 1
            return
        ihl = (inner[0] & 0x0F) * 4
        if inner[0] >> 4 != 4 or ihl < 20 or len(inner) < ihl + 8 or inner[9] != IPPROTO_TCP:
            return
        src = int.from_bytes(inner[12:16], "big")
        dst = int.from_bytes(inner[16:20], "big")
        if src != self.address:
            return
        th = inner[ihl:ihl + 8]
        sport = int.from_bytes(th[0:2], "big")
        dport = int.from_bytes(th[2:4], "big")
        seq = int.from_bytes(th[4:8], "big")
        info = int.from_bytes(msg[6:8], "big")     # the next-hop MTU for "fragmentation needed"
        key = (dst << 32) | (dport << 16) | sport
        conn = self.conns.get(key)
        if conn is not None:
            tcp_err(conn, icmp_type, code, seq, info)
            conn.rearm()
            return
        req = self.reqs.get(key)
        if req is not None:
            req_err(self, req, icmp_type, code, seq)
        # TIME-WAIT records and unknown connections ignore ICMP errors

    def _tcp_input(self, seg: Any) -> None:
        """Linux tcp_v4_rcv: find the socket a segment belongs to."""
        key = (seg.src << 32) | (seg.sport << 16) | seg.dport
        conn = self.conns.get(key)
        if conn is not None:
            conn.on_segment(seg)
            return
        req = self.reqs.get(key)
        if req is not None:
            back = check_req(self, req, seg)
            if back is not None:
                self.send_reset_for(back)   # the listener answers an ACK it cannot take
            return
        tw = self.tw.records.get(key)
        if tw is not None:
            verdict = self.tw.process(tw, seg)
            if verdict == TW_SYN:
                listener = self._listener_for(seg)
                if listener is not None and not listener.closed:
                    self.tw.kill(tw)
                    self._listen_input(listener, seg, isn=tw.syn_isn)
                    return
                verdict = TW_ACK  # no listener: answered like any out-of-window segment
            if verdict == TW_ACK:
                self.tw.send_ack(tw)
            elif verdict == TW_RST:
                self.send_reset_for(seg)
                self.tw.kill(tw)  # tcp_v4_rcv: TCP_TW_RST also ends the record
            return
        listener = self._listener_for(seg)
        if listener is not None and not listener.closed:
            self._listen_input(listener, seg)
            return
        self.send_reset_for(seg)

    def _listener_for(self, seg: Any) -> Listener | None:
        """The listener for a segment; among SO_REUSEPORT listeners one chosen by a hash of
        the 4-tuple, so a peer's segments always meet the same one (reuseport_select_sock)."""
        listener = self.listeners.get(seg.dport)
        if listener is not None and len(listener.group) > 1:
            group = listener.group
            h = (((seg.src ^ (seg.sport << 16) ^ seg.dport) * 0x9E3779B1) >> 7) & 0xFFFFFFFF
            listener = group[(h * len(group)) >> 32]
        return listener

    def _listen_input(self, listener: Listener, seg: Any, isn: int | None = None) -> None:
        """Linux tcp_v4_conn_request via tcp_rcv_state_process(LISTEN)."""
        flags = seg.flags
        mib = self.mib
        if flags & RST:
            return
        if flags & ACK:
            # the ACK of a SYN cookie makes the connection (cookie_v4_check); any other ACK
            # for a connection we do not know gets a RST
            if not flags & SYN and cookie_check(self, listener, seg):
                return
            self.send_reset_for(seg)
            return
        if not flags & SYN:
            return
        if isn is None and self.sysctl["ustack.tcp_tw_recycle"] and not self.tw.peer_proven(seg):
            mib["UstackExtPAWSPassive"] += 1
            return
        conn_request(self, listener, seg, isn)   # a request socket (tcp/request.py)

    def child_from_request(self, req: Request, seg: Any) -> None:
        """tcp_v4_syn_recv_sock: the handshake's ACK is valid, the full connection is made
        (still SYN-RECV) and the ACK, with any data on it, is its first segment."""
        listener = req.listener
        drop_request(req)
        conn = Connection(self, req.raddr, req.rport, req.lport, NULL_USER)
        conn.listener = listener
        if listener.child_options:
            conn.apply_options(listener.child_options)
        conn.reuseaddr = listener.reuseaddr
        conn.binding = listener.binding.share()   # inet_inherit_port
        self.conns[conn.key] = conn
        conn.accept_request(req)
        conn.on_segment(seg)

    def send_reset_for(self, seg: Any) -> None:
        """RST for a segment that has no connection (RFC 9293 §3.10.7.1; tcp_v4_send_reset)."""
        flags = seg.flags
        if flags & RST:
            return
        if flags & ACK:
            pkt = build_tcp(self.address, seg.src, seg.dport, seg.sport, seg.ack, 0, RST, 0,
                            ttl=self.ttl)
        else:
            seg_len = len(seg.payload) + (1 if flags & SYN else 0) + (1 if flags & FIN else 0)
            pkt = build_tcp(self.address, seg.src, seg.dport, seg.sport, 0,
                            (seg.seq + seg_len) & M32, RST | ACK, 0, ttl=self.ttl)
        self.output(pkt)
        self.mib["TcpOutRsts"] += 1

    # ------------------------------------------------------------------ sockets
    def bind(self, port: int = 0, *, reuseaddr: bool = False,
             reuseport: bool = False) -> PortBinding:
        """bind(): hold a local port (0: any free one) under Linux's conflict rules
        (ustack.tcp.ports).  OSError(EADDRINUSE) says who holds it."""
        return self.ports.bind(port, reuseaddr=reuseaddr, reuseport=reuseport)

    def listen(self, port: int | PortBinding = 0, backlog: int = 128,
               user: ListenerUser | None = None, *, reuseaddr: bool = False,
               reuseport: bool = False) -> Listener:
        """listen() on a port (bound here, 0: any free one) or on a binding from bind()."""
        if isinstance(port, PortBinding):
            binding = port
        else:
            binding = self.ports.bind(port, reuseaddr=reuseaddr, reuseport=reuseport)
        try:
            self.ports.listen(binding)
        except OSError:
            if binding is not port:
                binding.release()
            raise
        backlog = max(0, min(backlog, self.sysctl["net.core.somaxconn"]))
        listener = Listener(self, binding, backlog + 1 if backlog else 1,
                            user or ListenerUser())
        first = self.listeners.get(binding.port)
        if first is None:
            self.listeners[binding.port] = listener
        else:   # SO_REUSEPORT: the port's listeners share the SYNs
            listener.group = first.group
            first.group.append(listener)
        return listener

    def _check_established(self, raddr: int, rport: int, lport: int,
                           explicit_bind: bool) -> tuple[bool, TimeWait | None]:
        """Linux __inet_check_established: is the 4-tuple free, or held by a TIME-WAIT record
        tcp_twsk_unique lets us take over?  Returns (usable, record)."""
        key = (raddr << 32) | (rport << 16) | lport
        if key in self.conns:
            return False, None
        tw = self.tw.records.get(key)
        if tw is None:
            return True, None
        return self.tw.unique(tw, explicit_bind), tw

    def connect(self, raddr: int | str, rport: int, lport: int | PortBinding | None = None,
                user: ConnectionUser = NULL_USER, *, options: dict[str, Any] | None = None
                ) -> Connection:
        """Active open (tcp_v4_connect).  `lport` is a binding from bind() (or a port number,
        bound here with the options' reuseaddr); None picks a port as __inet_hash_connect.
        Returns the SYN-SENT connection; `user.tcp_established` follows."""
        if isinstance(raddr, str):
            raddr = ip_to_int(raddr)
        if not 0 < rport <= 65535:
            raise ValueError(f"remote port must be 1-65535, not {rport}")
        own_binding = False
        if isinstance(lport, int) and lport:
            lport = self.bind(lport, reuseaddr=bool((options or {}).get("reuseaddr")))
            own_binding = True
        if isinstance(lport, PortBinding):
            binding = lport
            ok, tw = self._check_established(raddr, rport, binding.port, True)
            if not ok:
                if own_binding:
                    binding.release()
                why = ("is already connected" if tw is None else
                       "is in TIME-WAIT " + ("without timestamps (no PAWS to guard a new "
                                             "incarnation)" if not tw.ts_ok else ""))
                raise OSError(99, f"Cannot assign requested address: {int_to_ip(raddr)}:"
                                  f"{rport} from port {binding.port} {why.rstrip()}")
        else:
            binding, tw = self.ports.connect_port(
                raddr, rport, lambda p: self._check_established(raddr, rport, p, False))
        port = binding.port
        iss = None
        ts_recent = None
        if tw is not None:
            # tcp_twsk_unique: start above anything the old incarnation sent, keep its PAWS
            # state; the record goes (TWRecycled)
            iss = reuse_isn(tw)
            ts_recent = (tw.ts_recent, tw.ts_recent_stamp)
            self.mib["TcpExtTWRecycled"] += 1
            self.tw.kill(tw)
        conn = Connection(self, raddr, rport, port, user)
        conn.binding = binding
        conn.reuseaddr = binding.reuseaddr
        if options:
            conn.apply_options(options)
        self.conns[conn.key] = conn
        if iss is None:
            iss = self.secret.isn(self.address, raddr, port, rport, self.now)
        if ts_recent is not None:
            conn.ts_recent, conn.ts_recent_stamp = ts_recent
        conn.connect(iss, ts_inherited=ts_recent is not None)
        return conn

    # ------------------------------------------------------------------ callbacks from connections
    def state_changed(self, conn: Connection, old: int, new: int) -> None:
        """Every state change passes here (Linux sk_state_change for a socket whose owner
        waits in close(): SO_LINGER {on, N} sleeps until the state leaves FIN-WAIT-1, CLOSING
        and LAST-ACK)."""
        if self.close_waiters and new not in _CLOSING_STATES:
            wake = self.close_waiters.pop(conn, None)
            if wake is not None:
                self.events.append(wake)

    def child_established(self, conn: Connection) -> None:
        listener = conn.listener
        if listener is None or listener.closed:
            return
        listener.accept_queue.append(conn)
        if not listener.queued:
            listener.queued = True
            self.events.append(listener.dispatch)

    def unlink(self, conn: Connection) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        if conn.binding is not None:
            conn.binding.release()
            conn.binding = None
        if conn.orphan:
            conn.orphan = False
            self.orphan_count -= 1
        listener = conn.listener
        if listener is not None:
            if conn in listener.accept_queue:
                listener.accept_queue.remove(conn)
            conn.listener = None

    def orphaned(self, conn: Connection) -> None:
        """close() left a connection behind (Linux: SOCK_DEAD, orphan_count)."""
        if conn.listener is not None:
            # closing a connection accept() has not returned yet is not possible; be safe
            conn.listener = None
        self.orphan_count += 1

    def too_many_orphans(self, conn: Connection, shift: int = 0, closing: bool = False) -> bool:
        """Linux tcp_too_many_orphans: (orphans << shift) > tcp_max_orphans.  Linux reads a
        copy of the count refreshed every 100 ms (tcp_orphan_cache): at close() it does not
        yet hold the socket being closed, at the orphan's later timers it does."""
        count = self.orphan_count - (1 if closing and conn.orphan else 0)
        return (count << shift) > self.sysctl["net.ipv4.tcp_max_orphans"]

    def check_oom_on_close(self, conn: Connection) -> None:
        """tcp_close's tcp_check_oom: too many orphans, reset this one (TCPAbortOnMemory)."""
        if conn.state != S.CLOSED and self.too_many_orphans(conn, closing=True):
            self.mib["TcpExtTCPAbortOnMemory"] += 1
            conn.drop(reset=True)

    def out_of_resources(self, conn: Connection, do_reset: bool) -> bool:
        """Linux tcp_out_of_resources, asked by an orphan's retransmission and probe timers:
        over the orphan limit (doubled penalty when the peer has been silent for 2 x
        TCP_RTO_MAX or no reset is due), the orphan dies, with a RST when it sent something
        in the last TIME-WAIT length or the window is closed with nothing in flight."""
        idle = self.now - conn.last_snd_data_time
        shift = 1 if idle > 2 * 120_000 or not do_reset else 0
        if not self.too_many_orphans(conn, shift):
            return False
        if idle <= 60_000 or (conn.snd_wnd == 0 and conn.snd_una == conn.snd_nxt):
            do_reset = True
        self.mib["TcpExtTCPAbortOnMemory"] += 1
        conn.drop(reset=do_reset)
        return True

    def orphan_retries(self, alive: bool = True) -> int:
        """Linux tcp_orphan_retries(): 0 means 8 while the connection is alive (its backed-off
        RTO still below TCP_RTO_MAX), 0 once it is not."""
        retries = self.sysctl["net.ipv4.tcp_orphan_retries"]
        return retries if retries or not alive else 8

    def challenge_ack_allowed(self) -> bool:
        """The host-wide RFC 5961 limit of tcp_send_challenge_ack: each second a budget drawn
        at random from [limit/2, 1.5 x limit) (so an attacker cannot count it exactly)."""
        limit = self.sysctl["net.ipv4.tcp_challenge_ack_limit"]
        if limit >= 2147483647:
            return True
        second = self.now // 1000
        if second != self.challenge_second:
            half = (limit + 1) >> 1
            self.challenge_second = second
            self.challenge_count = self.rng.randint(half, limit + half - 1) if limit else 0
        if self.challenge_count > 0:
            self.challenge_count -= 1
            return True
        return False

    @property
    def peer_ts(self) -> dict[int, tuple[int, int]]:
        """tcp_tw_recycle's per-address timestamp cache (kept by the TIME-WAIT table)."""
        return self.tw.peer_ts

    # ------------------------------------------------------------------ visibility
    def connections(self) -> list[ConnInfo]:
        out: list[ConnInfo] = []
        me = int_to_ip(self.address)
        for port, first in self.listeners.items():
            for listener in first.group:
                out.append(ConnInfo("LISTEN", (me, port), ("0.0.0.0", 0),
                                    len(listener.accept_queue), listener.backlog - 1, None))
        for conn in self.conns.values():
            out.append(ConnInfo(
                conn.state_name, (me, conn.lport), (int_to_ip(conn.raddr), conn.rport),
                conn.rcv_queued, conn.snd_queued, conn.timer_info(), conn.orphan, None,
                conn.rto, conn.srtt / 1.0, conn.cwnd, conn.total_retrans,
                conn.congestion_control,
                conn.ssthresh if conn.ssthresh < TCP_INFINITE_SSTHRESH else 0,
                conn.rttvar / 1.0, conn.rec.lost_out, conn.rec.sacked_out, conn.rec.retrans_out,
                conn.rec.reordering, CA_NAMES[conn.rec.ca_state], conn.effective_mss()))
        now = self.now
        for req in self.reqs.values():
            left = req.timer.deadline - now if req.timer is not None and req.timer.active else 0
            out.append(ConnInfo(S.NAMES[S.SYN_RECV], (me, req.lport),
                                (int_to_ip(req.raddr), req.rport), 0, 0,
                                ("on", max(0, left), req.num_retrans)))
        for tw in self.tw.records.values():
            left = self.tw.deadline_of(tw) - now
            out.append(ConnInfo(S.NAMES[S.TIME_WAIT] if tw.substate == S.TIME_WAIT else
                                S.NAMES[S.FIN_WAIT_2],
                                (me, tw.lport), (int_to_ip(tw.raddr), tw.rport), 0, 0,
                                ("timewait", max(0, left), 0), False, S.NAMES[tw.substate]))
        return out


__all__ = ["Host", "Listener", "ListenerUser", "ConnInfo", "NEVER"]
