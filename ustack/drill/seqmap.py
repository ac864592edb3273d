"""Target-independent packet semantics of packetdrill: script <-> live numbering.

This is packetdrill's run_packet.c / socket.h logic as a pure class (no I/O, no clock):

* **One socket under test.**  ``socket()`` makes the new socket the socket under test;
  ``listen()`` marks it listening; an inbound TCP packet while the socket under test is
  listening (or there is none) creates a new *child* connection that becomes the socket
  under test; ``connect()``/``sendto()``/``sendmsg()`` on a new socket make it connecting,
  and the next scripted outbound SYN is its SYN.  Packets are always mapped with the
  socket under test, so a second connection on the same 4-tuple (a SYN into TIME-WAIT)
  keeps the first connection's numbering: its SYN's seq is written absolute, everything
  else stays relative to the first connection's ISNs (Linux picks the new ISN as
  ``tw_snd_nxt + 65535 + 2``, so the script can predict it in that numbering).
* **Remote (inbound) numbers.**  The tool picks the remote ISN: it *is* the script's
  SYN seq (no offset), learned from the first inbound packet of a passive connection or
  from the inbound SYN-ACK of an active one.  Inbound SYN seqs are absolute; other seqs
  are ``script + remote_isn``.
* **Local (outbound) numbers.**  The stack under test picks its ISN; it is learned from
  its SYN (active) or SYN-ACK (passive).  An outbound SYN's seq is compared after
  subtracting ``live_isn - script_isn`` (the script's SYN seq stands for the live ISN);
  other seqs after subtracting ``live_isn`` (relative, tcpdump style).
* **Acks and SACK blocks** go the other way with the same offsets: an inbound ack is
  ``script + live_local_isn`` (SYN: ``+ live_isn - script_isn``); an outbound ack is
  ``live - remote_isn`` (SYN-ACK: absolute).
* **Timestamps.**  Outbound TS val: remembered as script->live pairs; the live value is
  mapped into script space from the first pair seen, and compared only when
  ``tcp_ts_tick_usecs`` is set (``|diff| * tick <= tolerance``).  Outbound TS ecr is not
  checked (as in packetdrill).  Inbound TS val is sent as written; the inbound TS ecr of
  an ACK-flagged packet is mapped to the live TS val the script value stands for (exact
  pair, or with ``tcp_ts_ecr_scaled`` interpolated from the first pair), else an error.
* **Outbound segments** a TSO/GSO-less stack splits may be matched as a list of
  consecutive segments whose payloads add up to the scripted one (packetdrill's
  aggregation), unless ``strict_segments``.

Packets given to :meth:`SeqMapper.match_outbound` / :meth:`SeqMapper.owns` need the
attributes of ``ustack._segment.Segment``: ``src dst sport dport seq ack flags window
payload mss wscale sack_ok has_ts ts_val ts_ecr sack_blocks`` and optionally ``urg_ptr``,
``tos``, ``ttl``, ``options`` (raw option bytes: then options are compared kind by kind,
in order, as packetdrill does), ``ae`` (AccECN AE bit).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

from .ast import (
    INBOUND, OUTBOUND, TH_ACK, TH_AE, TH_CWR, TH_ECE, TH_FIN, TH_PSH, TH_RST, TH_SYN, TH_URG,
    IcmpPacket, Int, OptEol, OptFastOpen, OptMd5, OptMss, OptNop, OptSack, OptSackOk,
    OptTimestamp, OptUnknown, OptWscale, Symbol, Syscall, TcpOption, TcpPacket,
)

__all__ = [
    "SeqMapper", "SeqMapError", "SockState", "SockMap", "InboundTcp", "InboundIcmp",
    "ScriptView", "flags_str", "parse_option_kinds", "icmp_type_code",
]

_M32 = 0xFFFFFFFF


class SeqMapError(Exception):
    """A script packet cannot be mapped (no socket, unknown TS ecr, no live tuple...)."""


class SockState(enum.Enum):
    NEW = "new"                               # after socket()
    LISTENING = "listening"                   # after listen()
    PASSIVE_PACKET_RECEIVED = "passive_packet_received"
    PASSIVE_SYNACK_SENT = "passive_synack_sent"
    PASSIVE_SYNACK_ACKED = "passive_synack_acked"
    ACTIVE_CONNECTING = "active_connecting"   # after connect()
    ACTIVE_SYN_SENT = "active_syn_sent"
    ACTIVE_SYN_ACKED = "active_syn_acked"


@dataclass
class SockMap:
    """Packetdrill's ``struct socket``: mapping state of one connection."""
    state: SockState
    fd: int | None = None                     # script fd
    script_local_isn: int = 0
    live_local_isn: int = 0
    remote_isn: int = 0                       # script and live: the tool picks it
    live_local: tuple[Any, int] | None = None    # (ip, port) of the stack under test
    live_remote: tuple[Any, int] | None = None   # (ip, port) the tool plays
    ts_val_map: dict[int, int] = field(default_factory=dict)   # script TS val -> live
    first_ts: tuple[int, int] | None = None   # (script, live) baseline
    closed: bool = False
    last_injected: InboundTcp | None = None
    last_outbound: Any = None

    # offsets (socket.h)
    def remote_script_to_live(self, is_syn: bool) -> int:
        return 0 if is_syn else self.remote_isn

    def local_script_to_live(self, is_syn: bool) -> int:
        return (self.live_local_isn - self.script_local_isn) if is_syn else self.live_local_isn


@dataclass(frozen=True)
class InboundTcp:
    """Concrete fields of an inbound TCP segment to inject.

    ``options`` is the script's option list with live values (TS ecr and SACK blocks
    mapped), in the script's order, for a builder that lays options out exactly;
    :meth:`build_kwargs` gives the keywords of ``ustack.wire.build_tcp``.
    """
    src: Any
    dst: Any
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int            # FIN..CWR bits; AE (0x100) if the script set it
    window: int
    payload: bytes = b""
    urg_ptr: int = 0
    mss: int = -1
    wscale: int = -1
    sack_ok: bool = False
    ts_val: int | None = None
    ts_ecr: int = 0
    sack_blocks: tuple[tuple[int, int], ...] | None = None
    tos: int = 0
    ttl: int | None = None
    options: tuple[TcpOption, ...] = ()
    line: int = 0

    def build_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            src=self.src, dst=self.dst, sport=self.sport, dport=self.dport, seq=self.seq,
            ack=self.ack, flags=self.flags & 0xFF, window=self.window, payload=self.payload,
            mss=self.mss, wscale=self.wscale, sack_ok=self.sack_ok, ts_val=self.ts_val,
            ts_ecr=self.ts_ecr, sack_blocks=self.sack_blocks, urg_ptr=self.urg_ptr,
            tos=self.tos)
        if self.ttl:
            kw["ttl"] = self.ttl
        return kw

    @property
    def fast_open_cookie(self) -> bytes | None:
        for o in self.options:
            if isinstance(o, OptFastOpen):
                return o.cookie
        return None


@dataclass(frozen=True)
class InboundIcmp:
    """Concrete fields of an inbound ICMP error quoting one of the stack's packets.

    The quoted (echoed) header is an outbound packet of the socket under test:
    ``echoed_src``/``echoed_sport`` are the stack's side.  ``echoed_seq`` is live (TCP).
    ``mtu`` is -1 when absent.
    """
    src: Any
    dst: Any
    icmp_type: int
    code: int
    mtu: int
    echo_id: int
    protocol: str                # "tcp", "udp" or "raw"
    echoed_src: Any
    echoed_dst: Any
    echoed_sport: int
    echoed_dport: int
    echoed_seq: int
    echoed_payload_len: int
    tos: int = 0
    line: int = 0


@dataclass(frozen=True)
class ScriptView:
    """An outbound live segment with its numbers mapped into script space."""
    flags: int
    seq: int
    ack: int
    window: int
    payload_len: int
    ts_val: int | None
    sack_blocks: tuple[tuple[int, int], ...]

    def __str__(self) -> str:
        s = f"{flags_str(self.flags)} {self.seq}:{self.seq + self.payload_len}" \
            f"({self.payload_len})"
        if self.flags & TH_ACK:
            s += f" ack {self.ack}"
        s += f" win {self.window}"
        return s


def flags_str(bits: int) -> str:
    """Flag bits in script notation: ``S.``, ``FP.``, ``R``, ``-`` for none."""
    s = "".join(c for c, b in (("F", TH_FIN), ("S", TH_SYN), ("R", TH_RST), ("P", TH_PSH),
                               ("U", TH_URG), ("E", TH_ECE), ("W", TH_CWR), ("A", TH_AE))
                if bits & b)
    if bits & TH_ACK:
        s += "."
    return s or "-"


# ICMP names from packetdrill's icmp_packet.c
_ICMPV4_TYPES = {
    "echo_reply": 0, "unreachable": 3, "source_quench": 4, "redirect": 5, "echo_request": 8,
    "time_exceeded": 11, "parameter_problem": 12, "timestamp_request": 13,
    "timestamp_reply": 14, "information_request": 15, "information_reply": 16,
    "address_mask_request": 17, "address_mask_reply": 18,
}
_ICMPV4_UNREACH = {
    "net_unreachable": 0, "host_unreachable": 1, "protocol_unreachable": 2,
    "port_unreachable": 3, "frag_needed": 4, "source_route_failed": 5, "net_unknown": 6,
    "host_unknown": 7, "source_host_isolated": 8, "net_prohibited": 9,
    "host_prohibited": 10, "net_unreachable_for_tos": 11, "host_unreachable_for_tos": 12,
    "packet_filtered": 13, "precedence_violation": 14, "precedence_cutoff": 15,
}
_ICMPV6_TYPES = {
    "unreachable": 1, "packet_too_big": 2, "time_exceeded": 3, "parameter_problem": 4,
    "echo_request": 128, "echo_reply": 129,
}
_ICMPV6_CODES = {
    "unreachable": {"net_unreachable": 0, "no_route": 0, "admin_prohibited": 1,
                    "not_neighbour": 2, "address_unreachable": 3, "port_unreachable": 4},
    "time_exceeded": {"exceeded_hop_limit": 0, "exceeded_frag_time": 1},
    "parameter_problem": {"header_field": 0, "unknown_next_header": 1,
                          "unknown_option": 2},
}


def icmp_type_code(icmp_type: str, code: str | None, ipv6: bool = False) -> tuple[int, int]:
    """Numeric (type, code) for packetdrill's names (also ``type_N`` / ``code_N``)."""
    if icmp_type.startswith("type_") and icmp_type[5:].isdigit():
        t = int(icmp_type[5:])
    else:
        table = _ICMPV6_TYPES if ipv6 else _ICMPV4_TYPES
        if icmp_type not in table:
            raise SeqMapError(f"bad ICMP type {icmp_type}")
        t = table[icmp_type]
    if code is None:
        c = 0
    elif code.startswith("code_") and code[5:].isdigit():
        c = int(code[5:])
    else:
        codes = (_ICMPV6_CODES.get(icmp_type, {}) if ipv6 else
                 (_ICMPV4_UNREACH if icmp_type == "unreachable" else {}))
        if code not in codes:
            raise SeqMapError(f"bad ICMP code {code}")
        c = codes[code]
    if not (0 <= t <= 255 and 0 <= c <= 255):
        raise SeqMapError(f"bad ICMP type/code {icmp_type}/{code}")
    return t, c


_OPT_KIND = {OptEol: 0, OptNop: 1, OptMss: 2, OptWscale: 3, OptSackOk: 4, OptSack: 5,
             OptTimestamp: 8, OptMd5: 19}


def _opt_kind(o: TcpOption) -> int | None:
    if isinstance(o, OptFastOpen):
        return 254 if o.experimental else 34
    return _OPT_KIND.get(type(o))


def parse_option_kinds(raw: bytes) -> list[tuple[int, bytes]]:
    """Split a raw TCP option area into (kind, data) in order; EOL ends the list."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(raw)
    while i < n:
        kind = raw[i]
        if kind == 0:
            out.append((0, b""))
            break
        if kind == 1:
            out.append((1, b""))
            i += 1
            continue
        if i + 1 >= n or raw[i + 1] < 2 or i + raw[i + 1] > n:
            out.append((kind, raw[i + 2:]))   # malformed: keep what is there
            break
        ln = raw[i + 1]
        out.append((kind, bytes(raw[i + 2:i + ln])))
        i += ln
    return out


def _s32(x: int) -> int:
    x &= _M32
    return x - (1 << 32) if x & 0x80000000 else x


class SeqMapper:
    """Maps script packets to live ones and checks live outbound segments.

    ``local_ip``/``remote_ip`` are whatever the runner's packets use for addresses
    (``Segment.src`` is a host-order int).  ``remote_port`` chooses the tool's port for
    each new passive connection (packetdrill binds an ephemeral port); the default hands
    out 40000, 40001, ...
    """

    def __init__(self, local_ip: Any, remote_ip: Any, *, bind_port: int = 8080,
                 connect_port: int = 8080,
                 remote_port: Callable[[], int] | Iterator[int] | None = None,
                 tcp_ts_ecr_scaled: bool = False, tcp_ts_tick_usecs: int = 0,
                 tolerance_usecs: int = 4000, strict_segments: bool = False,
                 payload_fill: bytes = b"\x00", check_payload: bool = True,
                 ipv6: bool = False) -> None:
        self.local_ip = local_ip
        self.remote_ip = remote_ip
        self.bind_port = bind_port
        self.connect_port = connect_port
        if remote_port is None:
            counter = iter(range(40000, 65536))
            self._next_port: Callable[[], int] = lambda: next(counter)
        elif callable(remote_port):
            self._next_port = remote_port
        else:
            it = remote_port
            self._next_port = lambda: next(it)
        self.tcp_ts_ecr_scaled = tcp_ts_ecr_scaled
        self.tcp_ts_tick_usecs = tcp_ts_tick_usecs
        self.tolerance_usecs = tolerance_usecs
        self.strict_segments = strict_segments
        self.payload_fill = payload_fill or b"\x00"
        self.check_payload = check_payload
        self.ipv6 = ipv6
        self.sockets: dict[int, SockMap] = {}     # by script fd
        self.under_test: SockMap | None = None

    @classmethod
    def from_config(cls, config: Any, local_ip: Any, remote_ip: Any, **kw: Any) -> SeqMapper:
        """Build from a :class:`ustack.drill.ast.DrillConfig` (keywords override)."""
        base = dict(bind_port=config.bind_port, connect_port=config.connect_port,
                    tcp_ts_ecr_scaled=config.tcp_ts_ecr_scaled,
                    tcp_ts_tick_usecs=config.tcp_ts_tick_usecs,
                    tolerance_usecs=config.tolerance_usecs,
                    strict_segments=config.strict_segments,
                    ipv6=config.ip_version == "ipv6")
        base.update(kw)
        return cls(local_ip, remote_ip, **base)

    # ------------------------------------------------------------------ system calls

    def on_socket(self, fd: int) -> SockMap:
        s = SockMap(SockState.NEW, fd)
        self.sockets[fd] = s
        self.under_test = s
        return s

    def on_listen(self, fd: int) -> None:
        s = self._by_fd(fd)
        s.state = SockState.LISTENING

    def on_connect(self, fd: int, *, unspec: bool = False) -> None:
        """connect()/sendto()/sendmsg(): a NEW socket starts connecting; AF_UNSPEC
        (disconnect) makes it NEW again."""
        s = self._by_fd(fd)
        if unspec:
            s.state = SockState.NEW
            return
        if s.state != SockState.NEW:
            return
        s.state = SockState.ACTIVE_CONNECTING
        s.live_remote = (self.remote_ip, self.connect_port)
        s.live_local = None

    def on_accept(self, listen_fd: int, new_fd: int) -> None:
        """accept() returned ``new_fd``: give the pending child connection that fd."""
        passive = (SockState.PASSIVE_SYNACK_SENT, SockState.PASSIVE_SYNACK_ACKED,
                   SockState.PASSIVE_PACKET_RECEIVED)
        s = self.under_test
        if s is None or s.state not in passive:
            raise SeqMapError("unable to find socket matching accept() call")
        # A connection re-established on the same 4-tuple (TIME-WAIT reuse) is the same
        # SockMap; it simply gets the new fd.
        s.fd = new_fd
        s.closed = False
        self.sockets[new_fd] = s

    def on_close(self, fd: int) -> None:
        s = self.sockets.get(fd)
        if s is not None:
            s.closed = True

    def observe_syscall(self, call: Syscall, result: int | None = None) -> None:
        """Update socket tracking after ``call`` returned ``result`` (default: the
        script's expected result).  Uses the script's fd numbers."""
        if result is None and isinstance(call.result, Int):
            result = call.result.value
        args = call.args or ()
        fd = args[0].value if args and isinstance(args[0], Int) else None
        name = call.name
        if name == "socket":
            if result is not None and result >= 0:
                self.on_socket(result)
        elif name == "listen" and fd is not None and result == 0:
            self.on_listen(fd)
        elif name == "accept" and fd is not None and result is not None and result >= 0:
            self.on_accept(fd, result)
        elif name in ("connect", "sendto", "sendmsg") and fd is not None and fd in self.sockets:
            unspec = name == "connect" and len(args) > 1 and \
                isinstance(args[1], Symbol) and args[1].name == "AF_UNSPEC"
            self.on_connect(fd, unspec=unspec)
        elif name == "close" and fd is not None:
            self.on_close(fd)

    def _by_fd(self, fd: int) -> SockMap:
        s = self.sockets.get(fd)
        if s is None:
            raise SeqMapError(f"unable to find socket with script fd {fd}")
        return s

    # ------------------------------------------------------------------ inbound

    def _socket_for_inbound(self, pkt: Any, tcp: bool) -> SockMap:
        s = self.under_test
        if tcp and (s is None or s.state == SockState.LISTENING):
            # handle_listen_for_script_packet(): a new child connection
            child = SockMap(SockState.PASSIVE_PACKET_RECEIVED)
            child.remote_isn = pkt.seq & _M32
            child.live_remote = (self.remote_ip, self._next_port())
            child.live_local = (self.local_ip, self.bind_port)
            self.under_test = child
            return child
        if s is None:
            raise SeqMapError("no matching socket for script packet")
        return s

    def inbound(self, pkt: TcpPacket) -> InboundTcp:
        """Concrete fields for injecting the inbound script packet ``pkt``."""
        if pkt.direction != INBOUND:
            raise SeqMapError(f"line {pkt.line}: not an inbound packet")
        s = self._socket_for_inbound(pkt, True)
        bits = pkt.flag_bits
        is_syn = bool(bits & TH_SYN)
        has_ack = bool(bits & TH_ACK)
        if s.state == SockState.PASSIVE_SYNACK_SENT and has_ack:
            s.state = SockState.PASSIVE_SYNACK_ACKED
        elif s.state == SockState.ACTIVE_SYN_SENT and is_syn and has_ack:
            s.state = SockState.ACTIVE_SYN_ACKED
            s.remote_isn = pkt.seq & _M32
        if s.live_local is None or s.live_remote is None:
            raise SeqMapError(f"line {pkt.line}: the connection's live 4-tuple is not known "
                              "yet (no SYN seen from the stack under test)")
        seq = (pkt.seq + s.remote_script_to_live(is_syn)) & _M32
        ack_off = s.local_script_to_live(is_syn)
        ack = pkt.ack or 0
        if has_ack:
            ack = (ack + ack_off) & _M32
        mss = wscale = -1
        sack_ok = False
        ts_val: int | None = None
        ts_ecr = 0
        sack: tuple[tuple[int, int], ...] | None = None
        opts: list[TcpOption] = []
        for o in pkt.options or ():
            if isinstance(o, OptMss):
                mss = o.value
            elif isinstance(o, OptWscale):
                wscale = o.shift if o.shift is not None else 0
            elif isinstance(o, OptSackOk):
                sack_ok = True
            elif isinstance(o, OptSack):
                blocks = tuple(((a + ack_off) & _M32, (b + ack_off) & _M32)
                               for a, b in o.blocks)
                sack = blocks
                o = replace(o, blocks=blocks)
            elif isinstance(o, OptTimestamp):
                ts_val = o.val
                ts_ecr = o.ecr
                if has_ack:
                    ts_ecr = self._map_inbound_ecr(s, o.ecr, pkt.line)
                o = replace(o, ecr=ts_ecr)
            opts.append(o)
        ip = pkt.ip
        tos = 0
        if ip is not None:
            if ip.tos is not None:
                tos = ip.tos
            if ip.ecn_bits is not None:
                tos = (tos & ~3) | ip.ecn_bits
        src_ip, sport = s.live_remote
        dst_ip, dport = s.live_local
        if pkt.sport:
            sport = pkt.sport
        if pkt.dport:
            dport = pkt.dport
        out = InboundTcp(
            src=src_ip, dst=dst_ip, sport=sport, dport=dport, seq=seq, ack=ack, flags=bits,
            window=pkt.window or 0, payload=self._payload(pkt.payload_len),
            urg_ptr=pkt.urg or 0, mss=mss, wscale=wscale, sack_ok=sack_ok, ts_val=ts_val,
            ts_ecr=ts_ecr, sack_blocks=sack, tos=tos, ttl=ip.ttl if ip else None,
            options=tuple(opts), line=pkt.line)
        s.last_injected = out
        return out

    def _map_inbound_ecr(self, s: SockMap, ecr: int, line: int) -> int:
        if ecr in s.ts_val_map:
            return s.ts_val_map[ecr]
        if self.tcp_ts_ecr_scaled and s.first_ts is not None:
            return (ecr - s.first_ts[0] + s.first_ts[1]) & _M32
        raise SeqMapError(f"line {line}: unable to infer live TS ecr for script TS ecr {ecr}; "
                          "no matching or preceding outbound TS val")

    def _payload(self, n: int) -> bytes:
        fill = self.payload_fill
        return (fill * (n // len(fill) + 1))[:n]

    def inbound_icmp(self, pkt: IcmpPacket) -> InboundIcmp:
        """Concrete fields of an inbound ICMP error for the socket under test."""
        if pkt.direction != INBOUND:
            raise SeqMapError(f"line {pkt.line}: not an inbound packet")
        s = self._socket_for_inbound(pkt, False)
        if s.live_local is None or s.live_remote is None:
            raise SeqMapError(f"line {pkt.line}: the connection's live 4-tuple is not known")
        t, c = icmp_type_code(pkt.icmp_type, pkt.code, self.ipv6)
        if pkt.mtu is not None and not ((not self.ipv6 and t == 3 and c == 4) or
                                        (self.ipv6 and t == 2 and c == 0)):
            raise SeqMapError(f"line {pkt.line}: ICMP MTU is only valid for "
                              + ("packet_too_big" if self.ipv6 else
                                 "unreachable frag_needed"))
        echoed = pkt.echoed
        proto = echoed.protocol if echoed else "tcp"
        eseq = 0
        if proto == "tcp":
            eseq = ((echoed.seq if echoed else 0) + s.local_script_to_live(False)) & _M32
        tos = 0
        if pkt.ip is not None:
            tos = pkt.ip.tos or 0
            if pkt.ip.ecn_bits is not None:
                tos = (tos & ~3) | pkt.ip.ecn_bits
        return InboundIcmp(
            src=s.live_remote[0], dst=s.live_local[0], icmp_type=t, code=c,
            mtu=-1 if pkt.mtu is None else pkt.mtu, echo_id=pkt.echo_id or 0,
            protocol=proto, echoed_src=s.live_local[0], echoed_dst=s.live_remote[0],
            echoed_sport=s.live_local[1], echoed_dport=s.live_remote[1], echoed_seq=eseq,
            echoed_payload_len=echoed.payload_len if echoed else 0, tos=tos, line=pkt.line)

    def reset_fields(self) -> InboundTcp | None:
        """An inbound RST the kernel will accept for the socket under test (packetdrill
        injects one at the end of a test to free the connection), or None."""
        s = self.under_test
        if s is None or s.live_local is None or s.live_remote is None:
            return None
        li, lo = s.last_injected, s.last_outbound
        if li is not None and li.flags & TH_ACK:
            seq = (li.seq + (1 if li.flags & TH_SYN else 0) + (1 if li.flags & TH_FIN else 0)
                   + len(li.payload)) & _M32
            ack, win = li.ack, li.window
        elif lo is not None and lo.flags & TH_ACK:
            seq, ack, win = lo.ack, lo.seq, 0
        elif lo is not None:
            seq, ack, win = 0, (lo.seq + 1) & _M32, 0
        else:
            return None
        return InboundTcp(src=s.live_remote[0], dst=s.live_local[0], sport=s.live_remote[1],
                          dport=s.live_local[1], seq=seq, ack=ack, flags=TH_RST | TH_ACK,
                          window=win)

    # ------------------------------------------------------------------ outbound

    def owns(self, seg: Any) -> bool:
        """Is live ``seg`` an outbound packet of the socket under test (or the SYN of the
        connecting one)?  Runners drop other packets, as packetdrill's sniffer does."""
        s = self.under_test
        if s is None:
            return False
        if s.live_local is not None and s.live_remote is not None and \
                (seg.src, seg.sport) == s.live_local and (seg.dst, seg.dport) == s.live_remote:
            return True
        if s.state in (SockState.ACTIVE_CONNECTING, SockState.ACTIVE_SYN_SENT) and \
                seg.flags & TH_SYN and not seg.flags & TH_ACK and \
                (seg.dst, seg.dport) == (self.remote_ip, self.connect_port):
            return True
        return False

    def _socket_for_outbound(self, pkt: TcpPacket) -> SockMap:
        s = self.under_test
        bits = pkt.flag_bits
        if s is not None and bits & TH_SYN and not bits & TH_ACK and \
                s.state == SockState.ACTIVE_CONNECTING:
            # handle_connect_for_script_packet()
            s.state = SockState.ACTIVE_SYN_SENT
            s.script_local_isn = pkt.seq & _M32
            return s
        if s is None:
            raise SeqMapError("no matching socket for script packet")
        return s

    def match_outbound(self, pkt: TcpPacket, actual: Any | Sequence[Any], *,
                       tolerance_usecs: int | None = None) -> str | None:
        """Compare live ``actual`` (one segment, or consecutive segments to aggregate)
        with the script's outbound ``pkt``; None if it matches, else what differs.

        Learns the stack's ISN and TS baseline as a side effect, as packetdrill does,
        even when the comparison fails.
        """
        if pkt.direction != OUTBOUND:
            raise SeqMapError(f"line {pkt.line}: not an outbound packet")
        segs = list(actual) if isinstance(actual, (list, tuple)) else [actual]
        if not segs:
            return "no live packet"
        try:
            s = self._socket_for_outbound(pkt)
        except SeqMapError as e:
            return str(e)
        bits = pkt.flag_bits
        synack = bool(bits & TH_SYN and bits & TH_ACK)
        if s.state == SockState.PASSIVE_PACKET_RECEIVED and synack:
            s.script_local_isn = pkt.seq & _M32
        first = segs[0]
        # learn the active socket's live tuple/ISN from its SYN (find_connect_for_live_packet)
        if s.state == SockState.ACTIVE_SYN_SENT and first.flags & TH_SYN and \
                not first.flags & TH_ACK and s.live_local is None:
            s.live_local = (first.src, first.sport)
            s.live_local_isn = first.seq & _M32
        if s.state == SockState.PASSIVE_PACKET_RECEIVED and synack:
            s.state = SockState.PASSIVE_SYNACK_SENT
            s.live_local_isn = first.seq & _M32
        s.last_outbound = segs[-1]

        problems: list[str] = []
        if s.live_local is not None and s.live_remote is not None:
            for seg in segs:
                if (seg.src, seg.sport) != s.live_local or (seg.dst, seg.dport) != s.live_remote:
                    return (f"packet is not for the socket under test (from port {seg.sport} "
                            f"to port {seg.dport})")

        views = [self._to_script(s, seg) for seg in segs]
        if len(segs) > 1:
            if self.strict_segments:
                return f"expected one segment, got {len(segs)} (--strict_segments)"
            err = self._check_fragments(segs, views)
            if err:
                return err
        view = views[0] if len(views) == 1 else self._aggregate(views)
        last = segs[-1]
        payload = b"".join(bytes(seg.payload) for seg in segs)

        # headers (verify_tcp, strict)
        exp_bits = bits
        act_bits = (view.flags & 0xFF) | (TH_AE if getattr(last, "ae", False) else 0)
        if pkt.ace is not None:
            ace_mask = TH_AE | TH_CWR | TH_ECE
            if (exp_bits & ~ace_mask) != (act_bits & ~ace_mask) or \
                    (exp_bits & ace_mask) != (act_bits & ace_mask):
                problems.append(f"expected flags {pkt.flags}, got flags {flags_str(act_bits)}")
        elif exp_bits != act_bits:
            problems.append(f"expected flags {flags_str(exp_bits)}, got flags "
                            f"{flags_str(act_bits)}")
        if view.seq != pkt.seq & _M32:
            problems.append(f"expected seq {pkt.seq}, got seq {view.seq}")
        exp_ack = (pkt.ack or 0) & _M32
        if view.ack != exp_ack:
            problems.append(f"expected ack {exp_ack}, got ack {view.ack}")
        if pkt.window is not None and last.window != pkt.window:
            problems.append(f"expected win {pkt.window}, got win {last.window}")
        exp_urg = pkt.urg or 0
        act_urg = getattr(last, "urg_ptr", 0)
        if act_urg != exp_urg:
            problems.append(f"expected urg {exp_urg}, got urg {act_urg}")
        if len(payload) != pkt.payload_len:
            problems.append(f"expected {pkt.payload_len} payload bytes, got {len(payload)}")
        problems += self._check_ip(pkt, last)
        # TS val learning happens in map_outbound_live_packet, before any check
        exp_ts = pkt.option(OptTimestamp)
        act_ts_val = None
        if exp_ts is not None and getattr(last, "has_ts", False):
            act_ts_val = self._learn_ts(s, exp_ts.val, last.ts_val)
        if not problems and pkt.options is not None:
            problems += self._check_options(pkt, last, s, exp_ts, act_ts_val, tolerance_usecs)
        if not problems and self.check_payload and payload != self._payload(len(payload)):
            problems.append("incorrect outbound data payload")
        if problems:
            return "; ".join(problems) + f" (actual: {view})"
        return None

    def _to_script(self, s: SockMap, seg: Any) -> ScriptView:
        is_syn = bool(seg.flags & TH_SYN)
        seq = (seg.seq - s.local_script_to_live(is_syn)) & _M32
        ack_off = s.remote_script_to_live(is_syn)
        ack = seg.ack & _M32
        if seg.flags & TH_ACK:
            ack = (ack - ack_off) & _M32
        sack = tuple(((a - ack_off) & _M32, (b - ack_off) & _M32)
                     for a, b in (seg.sack_blocks or ()))
        return ScriptView(seg.flags & 0xFF, seq, ack, seg.window, len(seg.payload),
                          seg.ts_val if getattr(seg, "has_ts", False) else None, sack)

    def _check_fragments(self, segs: list[Any], views: list[ScriptView]) -> str | None:
        """verify_packet_fragments(): consecutive segments of one aggregated packet."""
        lenient = TH_FIN | TH_PSH | TH_CWR
        for k in range(1, len(segs)):
            a, b = views[k - 1], views[k]
            if (a.flags & ~lenient) != (b.flags & ~lenient):
                return (f"aggregate candidate: flags {flags_str(a.flags)} then "
                        f"{flags_str(b.flags)}")
            if b.seq != (a.seq + a.payload_len) & _M32:
                return f"aggregate candidate: expected seq {a.seq + a.payload_len}, got {b.seq}"
            if a.ack != b.ack:
                return f"aggregate candidate: ack {a.ack} then {b.ack}"
            if a.window != b.window:
                return f"aggregate candidate: win {a.window} then {b.window}"
            if k < len(segs) - 1 and b.payload_len != a.payload_len:
                return (f"fragment payload: expected {a.payload_len} bytes vs actual "
                        f"{b.payload_len} bytes")
        return None

    @staticmethod
    def _aggregate(views: list[ScriptView]) -> ScriptView:
        """aggregate_packets(): last segment's header, first's seq and CWR, all payload."""
        first, last = views[0], views[-1]
        flags = (last.flags & ~TH_CWR) | (first.flags & TH_CWR)
        return ScriptView(flags, first.seq, last.ack, last.window,
                          sum(v.payload_len for v in views), last.ts_val, last.sack_blocks)

    def _check_ip(self, pkt: TcpPacket, seg: Any) -> list[str]:
        ip = pkt.ip
        if ip is None:
            return []
        out: list[str] = []
        tos = getattr(seg, "tos", None)
        if ip.ecn is not None:
            if tos is None:
                return ["cannot check ECN: live packet has no tos"]
            ecn = tos & 3
            names = {0: "noecn", 1: "ect1", 2: "ect0", 3: "ce"}
            if ip.ecn == "ect01":
                if ecn not in (1, 2):
                    out.append(f"expected ip ecn ect0 or ect1, got {names[ecn]}")
            elif ecn != ip.ecn_bits:
                out.append(f"expected ip ecn {ip.ecn}, got {names[ecn]}")
        if ip.tos is not None:
            if tos is None:
                out.append("cannot check tos: live packet has no tos")
            elif tos != ip.tos:
                out.append(f"expected tos {ip.tos:#x}, got tos {tos:#x}")
        if ip.ttl:
            ttl = getattr(seg, "ttl", None)
            if ttl != ip.ttl:
                out.append(f"expected ttl {ip.ttl}, got ttl {ttl}")
        return out

    def _learn_ts(self, s: SockMap, script_val: int, live_val: int) -> int:
        """Remember script->live TS val; return the live value in script space."""
        live_val &= _M32
        s.ts_val_map[script_val & _M32] = live_val
        if s.first_ts is None:
            s.first_ts = (script_val & _M32, live_val)
        return (s.first_ts[0] + live_val - s.first_ts[1]) & _M32

    def _ts_problem(self, exp: OptTimestamp, mapped_val: int | None,
                    tolerance_usecs: int | None) -> str | None:
        tick = self.tcp_ts_tick_usecs
        if not tick or mapped_val is None:
            return None
        tol = self.tolerance_usecs if tolerance_usecs is None else tolerance_usecs
        if abs(_s32(mapped_val - exp.val)) * tick > tol:
            return (f"bad outbound TCP timestamp value: expected TS val {exp.val}, got "
                    f"{mapped_val} (tolerance {tol} us at {tick} us per tick)")
        return None

    def _check_options(self, pkt: TcpPacket, seg: Any, s: SockMap,
                       exp_ts: OptTimestamp | None, ts_script: int | None,
                       tolerance_usecs: int | None) -> list[str]:
        expected = list(pkt.options or ())
        unknown = [o for o in expected if isinstance(o, OptUnknown)]
        if unknown:
            return [f"cannot check TCP option {unknown[0].text!r} (not supported)"]
        is_syn = bool(seg.flags & TH_SYN)
        ack_off = s.remote_script_to_live(is_syn)
        want = "<" + ",".join(o.describe() for o in expected) + ">"
        raw = getattr(seg, "options", None)
        if isinstance(raw, (bytes, bytearray, memoryview)):
            actual = parse_option_kinds(bytes(raw))
            got = "<" + ",".join(_describe_raw(k, d, ack_off) for k, d in actual) + ">"
            if [k for k, _ in actual] != [_opt_kind(o) for o in expected]:
                return [f"bad outbound TCP options: expected {want}, got {got}"]
            for o, (kind, data) in zip(expected, actual):
                p = self._check_one_option(o, kind, data, ack_off, tolerance_usecs, ts_script)
                if p:
                    return [f"{p}: expected {want}, got {got}"]
            return []
        # no raw option bytes: compare what the parsed attributes tell
        out: list[str] = []
        mss = pkt.option(OptMss)
        if (mss.value if mss else -1) != seg.mss:
            out.append(f"expected {'mss ' + str(mss.value) if mss else 'no mss'}, got "
                       f"{'mss ' + str(seg.mss) if seg.mss >= 0 else 'no mss'}")
        ws = pkt.option(OptWscale)
        if ws is None and seg.wscale >= 0 or ws is not None and (
                seg.wscale < 0 or (ws.shift is not None and ws.shift != seg.wscale)):
            out.append(f"expected {ws.describe() if ws else 'no wscale'}, got "
                       f"{'wscale ' + str(seg.wscale) if seg.wscale >= 0 else 'no wscale'}")
        if (pkt.option(OptSackOk) is not None) != bool(seg.sack_ok):
            out.append(f"expected {'sackOK' if pkt.option(OptSackOk) else 'no sackOK'}, got "
                       f"{'sackOK' if seg.sack_ok else 'no sackOK'}")
        if (exp_ts is not None) != bool(seg.has_ts):
            out.append(f"expected {'TS' if exp_ts else 'no TS'}, got "
                       f"{'TS' if seg.has_ts else 'no TS'}")
        elif exp_ts is not None:
            p = self._ts_problem(exp_ts, ts_script, tolerance_usecs)
            if p:
                out.append(p)
        sack = pkt.option(OptSack)
        got_blocks = tuple(((a - ack_off) & _M32, (b - ack_off) & _M32)
                           for a, b in (seg.sack_blocks or ()))
        if (sack.blocks if sack else ()) != got_blocks:
            out.append(f"expected {sack.describe() if sack else 'no sack'}, got "
                       + ("sack " + " ".join(f"{a}:{b}" for a, b in got_blocks)
                          if got_blocks else "no sack"))
        if any(isinstance(o, (OptFastOpen, OptMd5)) for o in expected):
            out.append("cannot check FO/md5 options without the raw option bytes")
        return out

    def _check_one_option(self, o: TcpOption, kind: int, data: bytes, ack_off: int,
                          tolerance_usecs: int | None, ts_script: int | None) -> str | None:
        if isinstance(o, (OptNop, OptEol)):
            return None
        if isinstance(o, OptTimestamp):
            if len(data) != 8:
                return "bad length for TCP timestamp option"
            return self._ts_problem(o, ts_script, tolerance_usecs)
        if isinstance(o, OptMss):
            exp = o.value.to_bytes(2, "big")
        elif isinstance(o, OptWscale):
            if o.shift is None:
                return None if len(data) == 1 else "bad length for wscale option"
            exp = bytes([o.shift])
        elif isinstance(o, OptSackOk):
            exp = b""
        elif isinstance(o, OptSack):
            exp = b"".join(((a + ack_off) & _M32).to_bytes(4, "big") +
                           ((b + ack_off) & _M32).to_bytes(4, "big") for a, b in o.blocks)
        elif isinstance(o, OptFastOpen):
            exp = (b"\xf9\x89" if o.experimental else b"") + o.cookie
        elif isinstance(o, OptMd5):
            exp = o.digest
        else:  # pragma: no cover
            return f"cannot check TCP option {o.describe()}"
        if len(data) != len(exp):
            return f"bad length for outbound TCP option {o.describe().split()[0]}"
        if data != exp:
            return f"bad value for outbound TCP option {o.describe().split()[0]}"
        return None


def _describe_raw(kind: int, data: bytes, ack_off: int) -> str:
    if kind == 0:
        return "eol"
    if kind == 1:
        return "nop"
    if kind == 2 and len(data) == 2:
        return f"mss {int.from_bytes(data, 'big')}"
    if kind == 3 and len(data) == 1:
        return f"wscale {data[0]}"
    if kind == 4 and not data:
        return "sackOK"
    if kind == 5 and len(data) % 8 == 0 and data:
        blocks = []
        for k in range(0, len(data), 8):
            a = (int.from_bytes(data[k:k + 4], "big") - ack_off) & _M32
            b = (int.from_bytes(data[k + 4:k + 8], "big") - ack_off) & _M32
            blocks.append(f"{a}:{b}")
        return "sack " + " ".join(blocks)
    if kind == 8 and len(data) == 8:
        return (f"TS val {int.from_bytes(data[:4], 'big')} "
                f"ecr {int.from_bytes(data[4:], 'big')}")
    if kind == 34:
        return f"FO {data.hex()}" if data else "FO"
    if kind == 254 and data[:2] == b"\xf9\x89":
        return f"FOEXP {data[2:].hex()}" if len(data) > 2 else "FOEXP"
    if kind == 19:
        return f"md5 {data.hex()}"
    return f"kind {kind} len {len(data) + 2}"
