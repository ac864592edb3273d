"""The AST of a packetdrill script, as produced by :func:`ustack.drill.parser.parse_script`.

Every node is a frozen dataclass.  Every node has a keyword-only ``line`` (1-based line
number in the script); ``line`` (and the ``text`` of events) is excluded from equality,
so tests and runners can compare nodes structurally and read ``.line`` for messages.

Layout
------
``Script``
    ``options`` (``--name=value`` lines), ``config`` (typed view of the options),
    ``defines`` (``-D``/``--define`` symbols in force), ``init_command`` (the untimed
    backtick block before the first event), ``events``, ``cleanup_command`` (untimed
    backtick block after the last event), ``warnings``.
``Event``
    ``time`` (:class:`EventTime`) and ``action``: one of :class:`TcpPacket`,
    :class:`UdpPacket`, :class:`IcmpPacket`, :class:`Syscall`, :class:`ShellBlock`,
    :class:`CodeBlock`, :class:`Unsupported`.
Expressions (syscall arguments and results)
    :class:`Int`, :class:`EllipsisExpr`, :class:`Symbol`, :class:`String`,
    :class:`BitOr`, :class:`Array`, :class:`Struct`, :class:`Assign`, :class:`Call`.

Sequence numbers in packets are kept exactly as written (script space); mapping them to
live values is :mod:`ustack.drill.seqmap`'s job.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union

__all__ = [
    "INBOUND", "OUTBOUND",
    "Node", "Expr", "Int", "EllipsisExpr", "Symbol", "String", "BitOr", "Array", "Struct",
    "Assign", "Call",
    "TimeKind", "EventTime",
    "IpInfo",
    "TcpOption", "OptNop", "OptEol", "OptMss", "OptWscale", "OptSackOk", "OptSack",
    "OptTimestamp", "OptFastOpen", "OptMd5", "OptUnknown",
    "TcpPacket", "UdpPacket", "IcmpPacket", "IcmpEchoed",
    "Syscall", "ShellBlock", "ShellCmd", "SysctlSet", "RunScript", "DeviceSetup", "ShellOther",
    "CodeBlock", "Unsupported", "Action", "Event",
    "Option", "DrillConfig", "Script", "DrillWarning",
    "KNOWN_SYSCALLS", "KNOWN_OPTIONS",
    "TH_FIN", "TH_SYN", "TH_RST", "TH_PSH", "TH_ACK", "TH_URG", "TH_ECE", "TH_CWR", "TH_AE",
]

INBOUND = "<"   # a packet the tool injects into the stack under test
OUTBOUND = ">"  # a packet the stack under test must send

# TCP header flag bits (byte 13), plus AE (the former NS bit, bit 8 of the flags field).
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
TH_PSH = 0x08
TH_ACK = 0x10
TH_URG = 0x20
TH_ECE = 0x40
TH_CWR = 0x80
TH_AE = 0x100

_FLAG_BITS = {"F": TH_FIN, "S": TH_SYN, "R": TH_RST, "P": TH_PSH, ".": TH_ACK,
              "U": TH_URG, "E": TH_ECE, "W": TH_CWR, "A": TH_AE}

# System calls packetdrill's run_system_call.c implements (Linux build).  The parser
# accepts any name; a runner refuses names it does not implement, naming the line.
KNOWN_SYSCALLS = frozenset({
    "socket", "bind", "listen", "accept", "connect", "read", "readv", "recv", "recvfrom",
    "recvmsg", "write", "writev", "send", "sendto", "sendmsg", "fcntl", "ioctl", "close",
    "shutdown", "getsockopt", "setsockopt", "poll", "open", "sendfile", "splice",
    "epoll_create", "epoll_ctl", "epoll_wait", "pipe",
})

# Options packetdrill's config.c knows, and whether each takes a value.
KNOWN_OPTIONS: dict[str, bool] = {
    "ip_version": True, "bind_port": True, "code_command": True, "code_format": True,
    "code_sockopt": True, "connect_port": True, "remote_ip": True, "local_ip": True,
    "gateway_ip": True, "netmask_ip": True, "speed": True, "mss": True, "mtu": True,
    "init_scripts": True, "tolerance_usecs": True, "tolerance_percent": True,
    "wire_client": False, "wire_server": False, "wire_server_ip": True,
    "wire_server_at": True, "wire_server_port": True, "wire_client_dev": True,
    "wire_server_dev": True, "so_filename": True, "so_flags": True,
    "tcp_ts_ecr_scaled": False, "tcp_ts_tick_usecs": True, "strict_segments": False,
    "non_fatal": True, "dry_run": False, "is_anyip": False, "send_omit_free": False,
    "psp_udp_port": True, "debug": False, "define": True, "verbose": False,
}


def _line() -> int:
    return field(default=0, compare=False, repr=False, kw_only=True)  # type: ignore


@dataclass(frozen=True)
class Node:
    line: int = _line()


# --------------------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Int(Node):
    """An integer literal; ``hex`` records that it was written 0x..."""
    value: int
    hex: bool = False


@dataclass(frozen=True)
class EllipsisExpr(Node):
    """``...``: "don't care" (an address argument, a buffer, a result)."""


@dataclass(frozen=True)
class Symbol(Node):
    """A bare word: a constant such as ``SOCK_STREAM``, ``NULL``, or ``_``."""
    name: str

    @property
    def is_wildcard(self) -> bool:
        return self.name == "_"


@dataclass(frozen=True)
class String(Node):
    """A double-quoted string; ``raw`` is the text between the quotes, C escapes intact.

    ``ellipsis`` is True for the ``"abc"...`` form (a prefix of the expected data).
    """
    raw: str
    ellipsis: bool = False

    @property
    def data(self) -> bytes:
        """The bytes the C string literal denotes (``\\xa1``, ``\\n``, ``\\0``, octal)."""
        return c_unescape(self.raw)


@dataclass(frozen=True)
class BitOr(Node):
    """``A|B|C``: the operands, flattened left to right."""
    operands: tuple[Expr, ...]


@dataclass(frozen=True)
class Array(Node):
    """``[a, b]``; ``[1]`` is how packetdrill passes an int by pointer."""
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Struct(Node):
    """``{a=1, b=2}`` or ``{..., 1000}``: items are :class:`Assign` or plain expressions."""
    items: tuple[Expr, ...]

    @property
    def fields(self) -> dict[str, Expr]:
        """The named items, name -> value (positional items are left out)."""
        return {i.name: i.value for i in self.items if isinstance(i, Assign)}

    def get(self, name: str) -> Expr | None:
        return self.fields.get(name)


@dataclass(frozen=True)
class Assign(Node):
    """``name=value`` inside a struct, or ``name(index)=value`` (``msg_iov(1)=[...]``)."""
    name: str
    value: Expr
    index: Expr | None = None


@dataclass(frozen=True)
class Call(Node):
    """``htons(8080)``, ``inet_addr("192.0.2.1")``, ``inet6_addr("::1")``."""
    name: str
    args: tuple[Expr, ...]


Expr = Union[Int, EllipsisExpr, Symbol, String, BitOr, Array, Struct, Assign, Call]


def c_unescape(raw: str) -> bytes:
    """Decode C string escapes; other characters are encoded as UTF-8."""
    out = bytearray()
    i, n = 0, len(raw)
    simple = {"n": 10, "t": 9, "r": 13, "0": 0, "a": 7, "b": 8, "f": 12, "v": 11,
              "\\": 92, "'": 39, '"': 34, "?": 63}
    while i < n:
        c = raw[i]
        if c != "\\" or i + 1 >= n:
            out += c.encode()
            i += 1
            continue
        e = raw[i + 1]
        if e in "xX":
            j = i + 2
            while j < n and j < i + 4 and raw[j] in "0123456789abcdefABCDEF":
                j += 1
            if j == i + 2:
                out += b"x"
                i += 2
                continue
            out.append(int(raw[i + 2:j], 16) & 0xFF)
            i = j
        elif e in "01234567":
            j = i + 1
            while j < n and j < i + 4 and raw[j] in "01234567":
                j += 1
            out.append(int(raw[i + 1:j], 8) & 0xFF)
            i = j
        elif e in simple:
            out.append(simple[e])
            i += 2
        else:
            out += e.encode()
            i += 2
    return bytes(out)


# --------------------------------------------------------------------------- time


class TimeKind(enum.Enum):
    ABSOLUTE = "absolute"              # 0.100
    RELATIVE = "relative"              # +0.1
    ANY = "any"                        # *        (outbound packets only)
    ABSOLUTE_RANGE = "absolute_range"  # 0.1~0.2  (outbound packets only)
    RELATIVE_RANGE = "relative_range"  # +0~+0.1  (outbound packets only)


@dataclass(frozen=True)
class EventTime(Node):
    """When an event happens, in microseconds (exact decimal conversion).

    For RELATIVE kinds, ``start_us`` (and ``end_us``) are offsets from the end of the
    previous event, as packetdrill's adjust_relative_event_times() applies them.  ``end_us``
    is set only for ranges.  The end of a blocking system call is on the :class:`Syscall`.
    """
    kind: TimeKind
    start_us: int = 0
    end_us: int | None = None

    @property
    def is_relative(self) -> bool:
        return self.kind in (TimeKind.RELATIVE, TimeKind.RELATIVE_RANGE)


# --------------------------------------------------------------------------- packets


@dataclass(frozen=True)
class IpInfo(Node):
    """``[ect0]``, ``(tos 0x10)``, ``[ttl 64]``, ``[ce, flowlabel 0x12345]``.

    ``ecn`` is one of ``noecn ect0 ect1 ect01 ce`` (ect01: either ECT codepoint, outbound
    only); the IPv4 ECN codepoint values are in :attr:`ecn_bits`.
    """
    ecn: str | None = None
    tos: int | None = None
    flowlabel: int | None = None
    ttl: int | None = None

    ECN_CODEPOINTS = {"noecn": 0, "ect1": 1, "ect0": 2, "ce": 3}

    @property
    def ecn_bits(self) -> int | None:
        if self.ecn is None or self.ecn == "ect01":
            return None
        return self.ECN_CODEPOINTS[self.ecn]


@dataclass(frozen=True)
class TcpOption(Node):
    """Base of the TCP options in a packet's ``<...>`` list."""

    def describe(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass(frozen=True)
class OptNop(TcpOption):
    def describe(self) -> str:
        return "nop"


@dataclass(frozen=True)
class OptEol(TcpOption):
    def describe(self) -> str:
        return "eol"


@dataclass(frozen=True)
class OptMss(TcpOption):
    value: int

    def describe(self) -> str:
        return f"mss {self.value}"


@dataclass(frozen=True)
class OptWscale(TcpOption):
    """``wscale N``; ``shift`` None is ``wscale *`` (any shift)."""
    shift: int | None

    def describe(self) -> str:
        return f"wscale {'*' if self.shift is None else self.shift}"


@dataclass(frozen=True)
class OptSackOk(TcpOption):
    def describe(self) -> str:
        return "sackOK"


@dataclass(frozen=True)
class OptSack(TcpOption):
    """``sack 1:2 3:4``; blocks in script sequence space (relative to the sender's ISN)."""
    blocks: tuple[tuple[int, int], ...]

    def describe(self) -> str:
        return "sack " + " ".join(f"{a}:{b}" for a, b in self.blocks)


@dataclass(frozen=True)
class OptTimestamp(TcpOption):
    val: int
    ecr: int

    def describe(self) -> str:
        return f"TS val {self.val} ecr {self.ecr}"


@dataclass(frozen=True)
class OptFastOpen(TcpOption):
    """``FO`` / ``FO <hex cookie>`` (kind 34) or ``FOEXP ...`` (kind 254, magic 0xF989)."""
    cookie: bytes = b""
    experimental: bool = False

    def describe(self) -> str:
        name = "FOEXP" if self.experimental else "FO"
        return f"{name} {self.cookie.hex()}" if self.cookie else name


@dataclass(frozen=True)
class OptMd5(TcpOption):
    digest: bytes

    def describe(self) -> str:
        return f"md5 {self.digest.hex()}"


@dataclass(frozen=True)
class OptUnknown(TcpOption):
    """An option this parser does not model (e.g. AccECN ``ECN e1b 1 ceb 0 e0b 1``).

    ``text`` is the option as written; a runner should refuse the packet, naming it.
    """
    name: str
    text: str

    def describe(self) -> str:
        return self.text


@dataclass(frozen=True)
class TcpPacket(Node):
    """``< S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>`` and friends.

    ``flags`` is the flag string as written (``"S."``, ``"P."``, ``""`` for ``-``).
    ``ack`` is None when no ``ack N`` was written (an ACK-flagged packet then acks 0).
    ``window`` None: not written (outbound: not checked).  ``options`` None is ``<...>``
    (outbound: options not checked); ``()`` means "no options".
    ``sport``/``dport`` are set only when the line names ports (``1234>8080``).
    """
    direction: str
    flags: str
    seq: int
    payload_len: int
    ack: int | None = None
    window: int | None = None
    urg: int | None = None
    options: tuple[TcpOption, ...] | None = ()
    ip: IpInfo | None = None
    sport: int | None = None
    dport: int | None = None

    @property
    def end_seq(self) -> int:
        return self.seq + self.payload_len

    @property
    def inbound(self) -> bool:
        return self.direction == INBOUND

    @property
    def ace(self) -> int | None:
        """The AccECN ACE value when the flags use a digit (``0``..``7``), else None."""
        for c in self.flags:
            if c.isdigit():
                return int(c)
        return None

    @property
    def flag_bits(self) -> int:
        """FIN=1 SYN=2 RST=4 PSH=8 ACK=16 URG=32 ECE=64 CWR=128 AE=256."""
        bits = 0
        for c in self.flags:
            bits |= _FLAG_BITS.get(c, 0)
        ace = self.ace
        if ace is not None:
            bits |= (TH_ECE if ace & 1 else 0) | (TH_CWR if ace & 2 else 0) | \
                    (TH_AE if ace & 4 else 0)
        return bits

    @property
    def is_syn(self) -> bool:
        return "S" in self.flags

    def option(self, cls: type) -> TcpOption | None:
        """The first option of the given class, or None."""
        for o in self.options or ():
            if isinstance(o, cls):
                return o
        return None


@dataclass(frozen=True)
class UdpPacket(Node):
    """``< udp (1000)`` / ``> udp 5000>6000 (20)``."""
    direction: str
    payload_len: int
    ip: IpInfo | None = None
    sport: int | None = None
    dport: int | None = None


@dataclass(frozen=True)
class IcmpEchoed(Node):
    """What an ICMP error quotes: ``[1:1001(1000)]`` (TCP, script seq space of the
    stack's side), ``[udp (100)]`` or ``[raw (100)]``."""
    protocol: str            # "tcp", "udp" or "raw"
    seq: int = 0
    payload_len: int = 0


@dataclass(frozen=True)
class IcmpPacket(Node):
    """``< icmp unreachable frag_needed mtu 1200 [1:1461(1460)]``."""
    direction: str
    icmp_type: str
    code: str | None = None
    mtu: int | None = None
    echo_id: int | None = None
    echoed: IcmpEchoed | None = None
    ip: IpInfo | None = None


# --------------------------------------------------------------------------- syscalls


@dataclass(frozen=True)
class Syscall(Node):
    """``[...end] name(args) = result [ERRNO] [(note)]``.

    ``args`` None is ``name()``.  ``end_us`` is the end of a blocking call written
    ``start...end`` (same base as the event's start: relative when the event time is).
    ``errno`` is e.g. ``"EINPROGRESS"``; ``note`` is the parenthesised text
    (the strerror, or e.g. ``flags O_RDWR`` after ``fcntl(F_GETFL)``).
    """
    name: str
    args: tuple[Expr, ...] | None
    result: Expr
    errno: str | None = None
    note: str | None = None
    end_us: int | None = None

    @property
    def known(self) -> bool:
        return self.name in KNOWN_SYSCALLS

    @property
    def blocking(self) -> bool:
        return self.end_us is not None


# --------------------------------------------------------------------------- shell


@dataclass(frozen=True)
class ShellCmd(Node):
    """Base of one command of a backtick block; ``text`` is that command as written."""
    text: str


@dataclass(frozen=True)
class SysctlSet(ShellCmd):
    """``sysctl -q net.ipv4.tcp_x=1``, ``echo 1 > /proc/sys/net/ipv4/tcp_x``,
    ``set_sysctls.py /proc/sys/net/ipv4/tcp_x=1``: ``name`` in dotted form."""
    name: str = ""
    value: str = ""


@dataclass(frozen=True)
class RunScript(ShellCmd):
    """``../common/defaults.sh``, ``./defaults.sh``, ``/tmp/sysctl_restore_${PPID}.sh``."""
    path: str = ""
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeviceSetup(ShellCmd):
    """``tc qdisc ... dev tun0``, ``ip link ...``, ``ip tcp_metrics flush all``, ethtool."""


@dataclass(frozen=True)
class ShellOther(ShellCmd):
    """Anything else (``nstat``, ``grep``, pipelines...)."""


@dataclass(frozen=True)
class ShellBlock(Node):
    """A backtick block: the raw text (what packetdrill hands to system()) and the
    commands it was split into (lines, ``;``, ``&&``, ``||``)."""
    raw: str
    commands: tuple[ShellCmd, ...] = ()


@dataclass(frozen=True)
class CodeBlock(Node):
    """``%{ ... }%``: python run by packetdrill after the test with tcp_info in scope."""
    text: str


@dataclass(frozen=True)
class Unsupported(Node):
    """A construct the parser recognised but does not model (GRE/MPLS/IP-in-IP packet
    encapsulation...).  ``what`` names it; ``text`` is the source.  Runners refuse it."""
    what: str
    text: str


Action = Union[TcpPacket, UdpPacket, IcmpPacket, Syscall, ShellBlock, CodeBlock, Unsupported]


@dataclass(frozen=True)
class Event(Node):
    time: EventTime
    action: Action
    text: str = field(default="", compare=False, repr=False)

    def describe(self) -> str:
        return f"line {self.line}: {self.text.strip()}"


# --------------------------------------------------------------------------- script


@dataclass(frozen=True)
class Option(Node):
    """``--name=value`` (value None for ``--name``); ``known`` per packetdrill's list."""
    name: str
    value: str | None = None

    @property
    def known(self) -> bool:
        return self.name in KNOWN_OPTIONS


@dataclass(frozen=True)
class DrillConfig:
    """The options a runner needs, typed, with packetdrill's defaults."""
    ip_version: str | None = None          # "ipv4", "ipv4-mapped-ipv6", "ipv6"
    tolerance_usecs: int = 4000
    tolerance_percent: float = 12.5
    tcp_ts_tick_usecs: int = 0             # 0: outbound TS val not checked
    tcp_ts_ecr_scaled: bool = False
    strict_segments: bool = False
    mss: int | None = None
    mtu: int | None = None
    bind_port: int = 8080
    connect_port: int = 8080
    local_ip: str | None = None
    remote_ip: str | None = None
    gateway_ip: str | None = None
    netmask_ip: str | None = None
    speed: int | None = None
    init_scripts: str | None = None
    non_fatal: tuple[str, ...] = ()
    send_omit_free: bool = False
    is_anyip: bool = False
    code_command: str = "python3"
    code_format: str = "python"
    code_sockopt: str = ""


@dataclass(frozen=True)
class DrillWarning(Node):
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Script:
    path: str
    options: tuple[Option, ...] = ()
    config: DrillConfig = DrillConfig()
    defines: dict[str, str] = field(default_factory=dict, compare=False)
    init_command: ShellBlock | None = None
    events: tuple[Event, ...] = ()
    cleanup_command: ShellBlock | None = None
    warnings: tuple[DrillWarning, ...] = field(default=(), compare=False)

    def unsupported(self) -> list[tuple[int, str]]:
        """(line, what) for every construct a basic runner cannot model: Unsupported
        actions, unknown options in packets, UDP/ICMP packets, unknown syscalls."""
        out: list[tuple[int, str]] = []
        for ev in self.events:
            a = ev.action
            if isinstance(a, Unsupported):
                out.append((ev.line, a.what))
            elif isinstance(a, (UdpPacket, IcmpPacket)):
                out.append((ev.line, type(a).__name__))
            elif isinstance(a, Syscall) and not a.known:
                out.append((ev.line, f"system call {a.name}()"))
            elif isinstance(a, TcpPacket):
                for o in a.options or ():
                    if isinstance(o, OptUnknown):
                        out.append((ev.line, f"TCP option {o.name!r}"))
        return out
