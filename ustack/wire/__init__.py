"""IPv4 and TCP on the wire: parse and build segments, render them for people.

The work is done by the Cython module ``ustack._segment`` (ext/_segment.pyx); the readable
statement of the formats it implements is ``ustack.wire.reference``.  Addresses are IPv4
addresses as host-order ints (198.18.0.2 is 0xC6120002); sequence numbers are ints modulo 2**32.
"""
from __future__ import annotations

import ipaddress

from ustack._segment import (
    ACK,
    CWR,
    ECE,
    FIN,
    PSH,
    RST,
    SYN,
    URG,
    Ipv4,
    Segment,
    build_ipv4,
    build_tcp,
    internet_checksum,
    parse,
    parse_ipv4,
    parse_tcp,
)

__all__ = [
    "ACK", "CWR", "ECE", "FIN", "PSH", "RST", "SYN", "URG",
    "Ipv4", "Segment", "build_ipv4", "build_tcp", "internet_checksum", "parse", "parse_ipv4",
    "parse_tcp", "ip_to_int", "int_to_ip", "describe", "describe_options", "flags_str",
    "GsoPacket", "gso_packet", "gso_segment",
]


class GsoPacket(bytes):
    """An IPv4 TCP super-segment for a device with TSO: the device cuts it into segments of
    `gso_size` payload bytes (FIN and PSH only on the last, as Linux's tcp_gso_segment does).
    Its TCP checksum field holds the pseudo-header sum only (CHECKSUM_PARTIAL): the device
    completes each segment's checksum.  Everything else treats it as the bytes it is."""

    gso_size: int


def gso_packet(packet: bytes, gso_size: int) -> GsoPacket:
    """A packet from build_tcp() made into a super-segment: its checksum set to the folded
    pseudo-header sum (source, destination, protocol, TCP length), as CHECKSUM_PARTIAL wants."""
    ihl = (packet[0] & 0x0F) * 4
    tcp_len = len(packet) - ihl
    s = 6 + tcp_len
    for i in (12, 14, 16, 18):
        s += packet[i] << 8 | packet[i + 1]
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    raw = bytearray(packet)
    raw[ihl + 16] = s >> 8
    raw[ihl + 17] = s & 0xFF
    out = GsoPacket(raw)
    out.gso_size = gso_size
    return out


def ip_to_int(s: str) -> int:
    """'198.18.0.2' -> 0xC6120002 (dotted quad only; ValueError otherwise)."""
    return int(ipaddress.IPv4Address(s))


def int_to_ip(n: int) -> str:
    """0xC6120002 -> '198.18.0.2'."""
    return str(ipaddress.IPv4Address(n))


# tcpdump's letters, in bit order (print-tcp.c tcp_flag_values); packetdrill writes the same.
_FLAG_LETTERS = ((FIN, "F"), (SYN, "S"), (RST, "R"), (PSH, "P"), (ACK, "."), (URG, "U"),
                 (ECE, "E"), (CWR, "W"))


def flags_str(flags: int) -> str:
    """SYN|ACK -> 'S.', FIN|PSH|ACK -> 'FP.', 0 -> 'none'."""
    return "".join(letter for bit, letter in _FLAG_LETTERS if flags & bit) or "none"


_KNOWN_LENGTH = {2: ("mss", 4), 3: ("wscale", 3), 4: ("sackOK", 2), 8: ("TS", 10)}


def describe_options(area: bytes) -> str:
    """An option area the way packetdrill writes it, in wire order:
    'mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7'.  Malformed options show as
    tcpdump shows them ('[bad opt]' ends the walk)."""
    out: list[str] = []
    i = 0
    while i < len(area):
        kind = area[i]
        if kind == 0:
            out.append("eol")
            break
        if kind == 1:
            out.append("nop")
            i += 1
            continue
        if i + 1 >= len(area) or area[i + 1] < 2 or area[i + 1] > len(area) - i:
            out.append("[bad opt]")
            break
        size = area[i + 1]
        value = area[i + 2:i + size]
        name, want = _KNOWN_LENGTH.get(kind, (None, None))
        if kind == 5 and size >= 10 and (size - 2) % 8 == 0:
            blocks = [f"{int.from_bytes(value[j:j + 4], 'big')}:"
                      f"{int.from_bytes(value[j + 4:j + 8], 'big')}"
                      for j in range(0, size - 2, 8)]
            out.append("sack " + " ".join(blocks))
        elif name is None:
            out.append(f"unknown-{kind} 0x{value.hex()}" if kind != 5 else f"sack[len {size}]")
        elif size != want:
            out.append(f"{name}[len {size}]")
        elif kind == 2:
            out.append(f"mss {int.from_bytes(value, 'big')}")
        elif kind == 3:
            out.append(f"wscale {value[0]}")
        elif kind == 4:
            out.append("sackOK")
        else:
            out.append(f"TS val {int.from_bytes(value[:4], 'big')} "
                       f"ecr {int.from_bytes(value[4:], 'big')}")
        i += size
    return ",".join(out)


def describe(seg: Segment, *, addresses: bool = False) -> str:
    """A segment in packetdrill's words, with absolute sequence numbers:
    'S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>'.
    With addresses=True it starts with '198.18.0.2:80 > 198.18.0.1:40000 '."""
    n = len(seg.payload)
    parts = [f"{flags_str(seg.flags)} {seg.seq}:{(seg.seq + n) & 0xFFFFFFFF}({n})"]
    if seg.flags & ACK:
        parts.append(f"ack {seg.ack}")
    parts.append(f"win {seg.window}")
    if seg.flags & URG:
        parts.append(f"urg {seg.urg_ptr}")
    options = seg.options
    if options:
        parts.append(f"<{describe_options(options)}>")
    text = " ".join(parts)
    if addresses:
        text = (f"{int_to_ip(seg.src)}:{seg.sport} > {int_to_ip(seg.dst)}:{seg.dport} " + text)
    return text


def gso_segment(packet: GsoPacket) -> list[bytes]:
    """Cut a super-segment into the segments a TSO device puts on the wire (software GSO, as
    Linux's tcp_gso_segment): gso_size payload bytes each, seq advancing, the same options,
    FIN and PSH on the last one only, CWR on the first only, full checksums."""
    ip = parse_ipv4(bytes(packet), {})
    seg = parse_tcp(ip, {}, False) if ip is not None else None
    if seg is None:
        raise ValueError("not an IPv4 TCP super-segment")
    size = packet.gso_size
    payload = seg.payload
    out = []
    n = max(1, -(-len(payload) // size))
    for k in range(n):
        flags = seg.flags
        if k != n - 1:
            flags &= ~(FIN | PSH)
        if k:
            flags &= ~CWR
        out.append(build_tcp(seg.src, seg.dst, seg.sport, seg.dport,
                             (seg.seq + k * size) & 0xFFFFFFFF, seg.ack, flags, seg.window,
                             payload[k * size:(k + 1) * size],
                             ts_val=seg.ts_val if seg.has_ts else None, ts_ecr=seg.ts_ecr,
                             sack_blocks=seg.sack_blocks or None, ttl=ip.ttl,
                             ident=(ip.ident + k) & 0xFFFF, df=ip.df, tos=ip.tos))
    return out
