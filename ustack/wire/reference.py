"""IPv4 and TCP on the wire, written declaratively with construct: the readable reference.

This module is the documentation of the formats that ``ustack._segment`` parses and builds at
speed, and the oracle its tests compare it against.  It is slow and never used on a hot path.

Layouts (RFC 791 section 3.1, RFC 9293 section 3.1)::

    IPv4  |ver|ihl|  tos  |  total length  |  ident  |0|DF|MF| frag offset |
          |  ttl  | proto |  header checksum |  src  |  dst  |  options ...  |

    TCP   | sport | dport |  seq  |  ack  |doff|rsv| flags |  window  |
          | checksum | urg ptr |  options ...  |  data ...

Receive rules follow Linux: the IPv4 checks and counters of ``ip_rcv_core()``
(net/ipv4/ip_input.c), the TCP checks and counters of ``tcp_v4_rcv()``
(net/ipv4/tcp_ipv4.c) and the option walk of ``tcp_parse_options()``
(net/ipv4/tcp_input.c).  The option layout on send is the one of ``tcp_options_write()``
(net/ipv4/tcp_output.c).

The parsed result does not apply the rules that depend on connection state or sysctls:
Linux reads MSS, window scale and SACK-permitted only on a SYN, timestamps only when they were
negotiated, SACK blocks only when SACK was; the TCP core applies those.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from construct import (
    BitsInteger,
    BitStruct,
    Bytes,
    Check,
    Computed,
    Container,
    FixedSized,
    Flag,
    GreedyBytes,
    GreedyRange,
    Int8ub,
    Int16ub,
    Int32ub,
    Nibble,
    Pass,
    Struct,
    Switch,
    this,
)

IPPROTO_TCP = 6

# TCP flag bits (byte 13 of the header).
FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80

# Option kinds and their lengths (include/net/tcp.h: TCPOPT_*, TCPOLEN_*).
TCPOPT_EOL, TCPOPT_NOP, TCPOPT_MSS, TCPOPT_WINDOW = 0, 1, 2, 3
TCPOPT_SACK_PERM, TCPOPT_SACK, TCPOPT_TIMESTAMP = 4, 5, 8
TCPOLEN_MSS, TCPOLEN_WINDOW, TCPOLEN_SACK_PERM, TCPOLEN_TIMESTAMP = 4, 3, 2, 10
TCPOLEN_SACK_BASE, TCPOLEN_SACK_PERBLOCK = 2, 8
TCP_MAX_WSCALE = 14  # RFC 7323 section 2.3; Linux clamps larger shifts to it
TCP_NUM_SACKS = 4
MAX_TCP_OPTION_SPACE = 40

# IpExt{InNoECT,InECT1,InECT0,InCE}Pkts indexed by the ECN field (the low two bits of tos).
ECN_COUNTERS = ("IpExtInNoECTPkts", "IpExtInECT1Pkts", "IpExtInECT0Pkts", "IpExtInCEPkts")


# --- IPv4 ---------------------------------------------------------------------------------

IPV4_VERSION_IHL = BitStruct("version" / Nibble, "ihl" / Nibble)  # ihl counts 32-bit words

IPV4_HEADER = Struct(
    "vihl" / IPV4_VERSION_IHL,
    "tos" / Int8ub,
    "total_length" / Int16ub,
    "ident" / Int16ub,
    "frag" / BitStruct(
        "reserved" / Flag,
        "df" / Flag,
        "mf" / Flag,
        "offset" / BitsInteger(13),  # in units of 8 bytes
    ),
    "ttl" / Int8ub,
    "proto" / Int8ub,
    "checksum" / Int16ub,
    "src" / Int32ub,
    "dst" / Int32ub,
    "options" / Bytes(this.vihl.ihl * 4 - 20),
)


# --- TCP ----------------------------------------------------------------------------------

TCP_OFFSET = BitStruct("data_offset" / Nibble, "reserved" / Nibble)  # byte 12; in words

TCP_HEADER = Struct(
    "sport" / Int16ub,
    "dport" / Int16ub,
    "seq" / Int32ub,
    "ack" / Int32ub,
    "bits" / TCP_OFFSET,
    "flags" / Int8ub,
    "window" / Int16ub,
    "checksum" / Int16ub,
    "urg_ptr" / Int16ub,
    "options" / Bytes(this.bits.data_offset * 4 - 20),
)


def _sack_option_length_ok(length: int) -> bool:
    # tcp_parse_options(): at least one block and a whole number of blocks.
    return (length >= TCPOLEN_SACK_BASE + TCPOLEN_SACK_PERBLOCK
            and (length - TCPOLEN_SACK_BASE) % TCPOLEN_SACK_PERBLOCK == 0)


_EXPECTED_LENGTH = {
    TCPOPT_MSS: TCPOLEN_MSS.__eq__,
    TCPOPT_WINDOW: TCPOLEN_WINDOW.__eq__,
    TCPOPT_SACK_PERM: TCPOLEN_SACK_PERM.__eq__,
    TCPOPT_SACK: _sack_option_length_ok,
    TCPOPT_TIMESTAMP: TCPOLEN_TIMESTAMP.__eq__,
}


def _value_format(ctx: Any) -> Any:
    """Which value layout applies: the kind, or None (raw bytes) for an unknown kind or an
    option whose length is wrong for its kind, which Linux skips by its length."""
    kind = ctx._.kind
    length_ok = _EXPECTED_LENGTH.get(kind)
    return kind if length_ok is not None and length_ok(ctx.length) else None


# One kind-length-value option.  A length under 2 fails the Check and a length running past
# the option area fails FixedSized: either failure ends the GreedyRange below, which is what
# tcp_parse_options() does ("silly options", "don't parse partial options": it returns and
# keeps what it had already read).
TCP_OPTION_TLV = Struct(
    "length" / Int8ub,
    Check(this.length >= 2),
    "format" / Computed(_value_format),
    "value" / FixedSized(this.length - 2, Switch(this.format, {
        TCPOPT_MSS: Struct("mss" / Int16ub),
        TCPOPT_WINDOW: Struct("shift" / Int8ub),
        TCPOPT_SACK_PERM: Pass,
        TCPOPT_SACK: GreedyRange(Struct("start" / Int32ub, "end" / Int32ub)),
        TCPOPT_TIMESTAMP: Struct("ts_val" / Int32ub, "ts_ecr" / Int32ub),
    }, default=GreedyBytes)),
)

TCP_OPTION = Struct(
    "kind" / Int8ub,
    "body" / Switch(this.kind, {
        TCPOPT_EOL: Struct("padding" / GreedyBytes),  # end of list: the rest is padding
        TCPOPT_NOP: Pass,
    }, default=TCP_OPTION_TLV),
)

# The option area of a TCP header (data offset * 4 - 20 bytes).
TCP_OPTIONS = GreedyRange(TCP_OPTION)


# --- option containers for building -------------------------------------------------------

def opt_eol(padding: bytes = b"") -> Container:
    return Container(kind=TCPOPT_EOL, body=Container(padding=padding))


def opt_nop() -> Container:
    return Container(kind=TCPOPT_NOP, body=None)


def opt_mss(mss: int) -> Container:
    return Container(kind=TCPOPT_MSS, body=Container(length=TCPOLEN_MSS, value=Container(mss=mss)))


def opt_wscale(shift: int) -> Container:
    return Container(kind=TCPOPT_WINDOW,
                     body=Container(length=TCPOLEN_WINDOW, value=Container(shift=shift)))


def opt_sack_perm() -> Container:
    return Container(kind=TCPOPT_SACK_PERM, body=Container(length=TCPOLEN_SACK_PERM, value=None))


def opt_sack(blocks: Sequence[tuple[int, int]]) -> Container:
    length = TCPOLEN_SACK_BASE + TCPOLEN_SACK_PERBLOCK * len(blocks)
    return Container(kind=TCPOPT_SACK, body=Container(
        length=length, value=[Container(start=s, end=e) for s, e in blocks]))


def opt_timestamp(ts_val: int, ts_ecr: int) -> Container:
    return Container(kind=TCPOPT_TIMESTAMP, body=Container(
        length=TCPOLEN_TIMESTAMP, value=Container(ts_val=ts_val, ts_ecr=ts_ecr)))


def opt_raw(kind: int, value: bytes) -> Container:
    """Any kind with an arbitrary value (built with the length 2 + len(value))."""
    return Container(kind=kind, body=Container(length=2 + len(value), value=value))


def linux_options(*, mss: int = -1, wscale: int = -1, sack_ok: bool = False,
                  ts_val: int | None = None, ts_ecr: int = 0,
                  sack_blocks: Sequence[tuple[int, int]] | None = None) -> list[Container]:
    """The options in the order and padding of tcp_options_write() (net/ipv4/tcp_output.c):
    MSS; timestamps, sharing their first word with SACK-permitted when both are sent;
    SACK-permitted alone behind two NOPs; window scale behind one NOP; SACK blocks behind
    two NOPs."""
    opts: list[Container] = []
    if mss != -1:
        opts.append(opt_mss(mss))
    if ts_val is not None:
        opts += [opt_sack_perm()] if sack_ok else [opt_nop(), opt_nop()]
        opts.append(opt_timestamp(ts_val, ts_ecr))
    elif sack_ok:
        opts += [opt_nop(), opt_nop(), opt_sack_perm()]
    if wscale != -1:
        opts += [opt_nop(), opt_wscale(wscale)]
    if sack_blocks:
        opts += [opt_nop(), opt_nop(), opt_sack(sack_blocks)]
    return opts


# --- checksums ----------------------------------------------------------------------------

def ones_complement_sum(data: bytes, initial: int = 0) -> int:
    """RFC 1071: the 16-bit ones'-complement sum of the big-endian words of data (an odd
    last byte is padded with a zero byte), folded, not complemented."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def internet_checksum(data: bytes, initial: int = 0) -> int:
    return ~ones_complement_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: int, dst: int, proto: int, length: int) -> int:
    """RFC 9293 section 3.1: src, dst, zero, protocol, TCP length."""
    return (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length


# --- building -----------------------------------------------------------------------------

def build_ipv4(src: int, dst: int, proto: int, payload: bytes, *, ttl: int = 64,
               ident: int = 0, df: bool = True, tos: int = 0, options: bytes = b"",
               mf: bool = False, frag_offset: int = 0) -> bytes:
    """An IPv4 datagram with a correct header checksum (frag_offset in bytes)."""
    fields = dict(
        vihl=dict(version=4, ihl=5 + len(options) // 4), tos=tos,
        total_length=20 + len(options) + len(payload), ident=ident,
        frag=dict(reserved=False, df=df, mf=mf, offset=frag_offset // 8),
        ttl=ttl, proto=proto, checksum=0, src=src, dst=dst, options=options,
    )
    fields["checksum"] = internet_checksum(IPV4_HEADER.build(fields))
    return IPV4_HEADER.build(fields) + payload


def build_tcp_segment(src: int, dst: int, sport: int, dport: int, seq: int, ack: int,
                      flags: int, window: int, payload: bytes = b"", *,
                      options: bytes | Iterable[Container] = b"", urg_ptr: int = 0,
                      reserved: int = 0) -> bytes:
    """A TCP header plus payload, checksummed for src/dst.  options is either the raw option
    area (any bytes; padded with zeros to a multiple of 4) or a list of option containers."""
    if not isinstance(options, (bytes, bytearray)):
        options = TCP_OPTIONS.build(list(options))
    options = bytes(options) + b"\0" * (-len(options) % 4)
    fields = dict(
        sport=sport, dport=dport, seq=seq, ack=ack,
        bits=dict(data_offset=5 + len(options) // 4, reserved=reserved), flags=flags,
        window=window, checksum=0, urg_ptr=urg_ptr, options=options,
    )
    segment = TCP_HEADER.build(fields) + payload
    fields["checksum"] = internet_checksum(
        segment, pseudo_header_sum(src, dst, IPPROTO_TCP, len(segment)))
    return TCP_HEADER.build(fields) + payload


def build_tcp(src: int, dst: int, sport: int, dport: int, seq: int, ack: int, flags: int,
              window: int, payload: bytes = b"", *, mss: int = -1, wscale: int = -1,
              sack_ok: bool = False, ts_val: int | None = None, ts_ecr: int = 0,
              sack_blocks: Sequence[tuple[int, int]] | None = None, ttl: int = 64,
              ident: int = 0, df: bool = True, urg_ptr: int = 0, tos: int = 0) -> bytes:
    """What ustack._segment.build_tcp must produce, byte for byte."""
    options = linux_options(mss=mss, wscale=wscale, sack_ok=sack_ok, ts_val=ts_val,
                            ts_ecr=ts_ecr, sack_blocks=sack_blocks)
    segment = build_tcp_segment(src, dst, sport, dport, seq, ack, flags, window, payload,
                                options=options, urg_ptr=urg_ptr)
    return build_ipv4(src, dst, IPPROTO_TCP, segment, ttl=ttl, ident=ident, df=df, tos=tos)


# --- parsing with Linux's checks and counters ----------------------------------------------

def _count(counters: dict[str, int], name: str, n: int = 1) -> None:
    counters[name] = counters.get(name, 0) + n


def parse_ipv4(data: bytes, counters: dict[str, int]) -> dict[str, Any] | None:
    """The checks of ip_rcv_core(), in its order, with its counters; None when it drops."""
    _count(counters, "IpInReceives")
    _count(counters, "IpExtInOctets", len(data))
    if len(data) < 20:
        _count(counters, "IpInHdrErrors")
        return None
    first = IPV4_VERSION_IHL.parse(data[:1])
    if first.ihl < 5 or first.version != 4:
        _count(counters, "IpInHdrErrors")
        return None
    _count(counters, ECN_COUNTERS[data[1] & 3])
    ihl = first.ihl * 4
    if ihl > len(data):
        _count(counters, "IpInHdrErrors")
        return None
    if ones_complement_sum(data[:ihl]) != 0xFFFF:
        _count(counters, "IpExtInCsumErrors")
        _count(counters, "IpInHdrErrors")
        return None
    h = IPV4_HEADER.parse(data)
    if h.total_length > len(data):
        _count(counters, "IpExtInTruncatedPkts")
        return None
    if h.total_length < ihl:
        _count(counters, "IpInHdrErrors")
        return None
    return dict(
        src=h.src, dst=h.dst, proto=h.proto, ttl=h.ttl, ident=h.ident, tos=h.tos,
        df=h.frag.df, mf=h.frag.mf, frag_offset=h.frag.offset * 8, ihl=ihl,
        total_length=h.total_length, payload=data[ihl:h.total_length],
    )


def parse_options(area: bytes) -> dict[str, Any]:
    """What tcp_parse_options() records from an option area.  A later option of a kind
    overrides an earlier one, as in Linux; an MSS of 0 is ignored; a window shift above 14
    is clamped to 14."""
    found: dict[str, Any] = dict(mss=-1, wscale=-1, sack_ok=False, has_ts=False, ts_val=0,
                                 ts_ecr=0, sack_blocks=(),
                                 aligned_ts=area[:4] == b"\x01\x01\x08\x0a" and len(area) >= 12)
    for opt in TCP_OPTIONS.parse(area):
        if opt.kind in (TCPOPT_EOL, TCPOPT_NOP) or opt.body.format is None:
            continue  # padding, or an unknown kind or wrong length: skipped by its length
        value = opt.body.value
        if opt.kind == TCPOPT_MSS and value.mss:
            found["mss"] = value.mss
        elif opt.kind == TCPOPT_WINDOW:
            found["wscale"] = min(value.shift, TCP_MAX_WSCALE)
        elif opt.kind == TCPOPT_SACK_PERM:
            found["sack_ok"] = True
        elif opt.kind == TCPOPT_SACK:
            found["sack_blocks"] = tuple((b.start, b.end) for b in value[:TCP_NUM_SACKS])
        elif opt.kind == TCPOPT_TIMESTAMP:
            found.update(has_ts=True, ts_val=value.ts_val, ts_ecr=value.ts_ecr)
    return found


def parse_tcp(ip: dict[str, Any], counters: dict[str, int]) -> dict[str, Any] | None:
    """The checks of tcp_v4_rcv(), in its order, with its counters; None when it drops."""
    _count(counters, "TcpInSegs")  # "Count it even if it's bad"
    data = ip["payload"]
    if len(data) < 20:
        return None  # discard_it: no error counter
    data_offset = TCP_OFFSET.parse(data[12:13]).data_offset * 4
    if data_offset < 20:
        _count(counters, "TcpInErrs")
        return None
    if data_offset > len(data):
        return None  # discard_it: no error counter
    if ones_complement_sum(data, pseudo_header_sum(
            ip["src"], ip["dst"], IPPROTO_TCP, len(data))) != 0xFFFF:
        _count(counters, "TcpInCsumErrors")
        _count(counters, "TcpInErrs")
        return None
    h = TCP_HEADER.parse(data)
    return dict(
        src=ip["src"], dst=ip["dst"], sport=h.sport, dport=h.dport, seq=h.seq, ack=h.ack,
        flags=h.flags, window=h.window, urg_ptr=h.urg_ptr, payload=data[data_offset:],
        ttl=ip["ttl"], tos=ip["tos"], data_offset=data_offset, **parse_options(h.options),
    )


def parse(data: bytes, counters: dict[str, int]) -> dict[str, Any] | None:
    ip = parse_ipv4(data, counters)
    if ip is None or ip["proto"] != IPPROTO_TCP or ip["mf"] or ip["frag_offset"]:
        return None
    return parse_tcp(ip, counters)
