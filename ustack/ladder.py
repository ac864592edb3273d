"""Ladder diagrams: one TCP connection's life as a self-contained SVG picture.

    svg = ladder_svg(read_pcap("capture.pcap"))          # or a list of (ts, packet, direction)
    ladder_from_pcap("capture.pcap", "capture.svg")      # .html: an HTML page around it
    $ ustack ladder capture.pcap -o capture.svg --conn 198.18.0.1:40000-198.18.0.2:80

Two vertical lines are the two endpoints, the one that sent the first SYN on the left.  Every
segment is one arrow, going down from its sender to its receiver, labelled with its flags,
sequence and acknowledgment numbers relative to the sender's and receiver's initial sequence
numbers, and its payload length.  One row per segment: time runs downwards, in order but not to
scale (the left margin gives each segment's time since the first one).

The TCP state of each side (RFC 9293 §3.3.2) is written beside its line where it changes.  The
states are inferred from the segments as seen at the capture point, as if both ends saw each
segment when it was captured: a close approximation for a TUN device, where the two ends are one
write apart.  Retransmissions (a segment whose sequence range was already sent) are drawn
dashed in red, and the TIME-WAIT of the side that closed first is a band on its line from the
moment it starts to the end of the diagram (or to the next incarnation of the connection).
"""
from __future__ import annotations

import html
import ipaddress
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Conn", "Segment", "connections", "ladder_from_pcap", "ladder_html", "ladder_svg",
           "parse_conn", "parse_segments"]

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_FLAG_NAMES = ((SYN, "SYN"), (FIN, "FIN"), (RST, "RST"), (PSH, "PSH"), (ACK, "ACK"),
               (URG, "URG"), (ECE, "ECE"), (CWR, "CWR"))
M32 = 0xFFFFFFFF

Endpoint = tuple[str, int]


def _before(a: int, b: int) -> bool:
    """Sequence number a comes before b (RFC 9293 arithmetic modulo 2**32)."""
    return ((a - b) & M32) > 0x7FFFFFFF


# -------------------------------------------------------------------- packets
@dataclass(frozen=True)
class Segment:
    """The TCP fields the diagram needs, from one captured IPv4 or IPv6 packet."""

    ts: float
    src: Endpoint
    dst: Endpoint
    seq: int
    ack: int
    flags: int
    window: int
    length: int          # payload bytes, from the IP length (a capture may be cut shorter)

    @property
    def seg_len(self) -> int:
        """Sequence space used: payload, plus one for SYN and one for FIN."""
        return self.length + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)


def _parse_packet(ts: float, packet: bytes) -> Segment | None:
    """The TCP segment in an IP packet, or None if it is not one (checksums not checked)."""
    if len(packet) < 20:
        return None
    version = packet[0] >> 4
    if version == 4:
        ihl = (packet[0] & 0x0F) * 4
        if ihl < 20 or packet[9] != 6 or len(packet) < ihl + 20:
            return None
        if int.from_bytes(packet[6:8], "big") & 0x1FFF:   # a later fragment
            return None
        total = int.from_bytes(packet[2:4], "big")
        src = str(ipaddress.IPv4Address(packet[12:16]))
        dst = str(ipaddress.IPv4Address(packet[16:20]))
        start, ip_len = ihl, total
    elif version == 6:
        if len(packet) < 60:
            return None
        nxt, pos = packet[6], 40
        ip_len = 40 + int.from_bytes(packet[4:6], "big")
        while nxt in (0, 43, 60) and pos + 8 <= len(packet):  # hop-by-hop, routing, dest opts
            nxt, pos = packet[pos], pos + 8 * (packet[pos + 1] + 1)
        if nxt != 6 or len(packet) < pos + 20:
            return None
        src = str(ipaddress.IPv6Address(packet[8:24]))
        dst = str(ipaddress.IPv6Address(packet[24:40]))
        start = pos
    else:
        return None
    sport, dport, seq, ack, off, flags, window = struct.unpack_from("!HHIIBBH", packet, start)
    header = (off >> 4) * 4
    length = max(0, ip_len - start - header)
    return Segment(ts, (src, sport), (dst, dport), seq, ack, flags, window, length)


def parse_segments(packets: Iterable[Sequence[Any]]) -> list[Segment]:
    """Segments from (ts, packet) or (ts, packet, direction) entries; other packets are left
    out.  The direction, if given, is not needed: the addresses say who sent what."""
    out = []
    for entry in packets:
        seg = _parse_packet(float(entry[0]), bytes(entry[1]))
        if seg is not None:
            out.append(seg)
    return out


def segments_from_log(events: Iterable[Any], local: Endpoint,
                      remote: Endpoint) -> list[Segment]:
    """Segments from a connection's event log (`Stack.event_log`: "in"/"out" entries of
    LogEvent(ms, kind, (flags, seq, ack, window, length))) between `local` (ustack's end) and
    `remote`, so a ladder can be drawn without a capture."""
    out = []
    for ev in events:
        t, kind, detail = ev[0], ev[1], ev[2]
        if kind not in ("in", "out"):
            continue
        flags, seq, ack, window, length = detail
        src, dst = (local, remote) if kind == "out" else (remote, local)
        out.append(Segment(t / 1000.0, src, dst, seq, ack, flags, window, length))
    return out


# -------------------------------------------------------------------- connections
@dataclass(frozen=True)
class Conn:
    """A connection's two endpoints, in no particular order (a == b's peer)."""

    a: Endpoint
    b: Endpoint

    def key(self) -> frozenset[Endpoint]:
        return frozenset((self.a, self.b))

    def __str__(self) -> str:
        return f"{_fmt_endpoint(self.a)}-{_fmt_endpoint(self.b)}"


def _fmt_endpoint(ep: Endpoint) -> str:
    return f"[{ep[0]}]:{ep[1]}" if ":" in ep[0] else f"{ep[0]}:{ep[1]}"


def _parse_endpoint(text: str) -> Endpoint:
    text = text.strip()
    if text.startswith("["):
        addr, sep, port = text[1:].partition("]:")
    else:
        addr, sep, port = text.rpartition(":")
    if not sep or not addr:
        raise ValueError(f"{text!r} is not ADDRESS:PORT")
    try:
        address = str(ipaddress.ip_address(addr))
        number = int(port)
    except ValueError:
        raise ValueError(f"{text!r} is not ADDRESS:PORT") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} is out of range")
    return address, number


def parse_conn(spec: str | Conn | Sequence[Any]) -> Conn:
    """A Conn from "A:P-B:P" (IPv6 as "[addr]:P"), ((A, P), (B, P)) or (A, P, B, P)."""
    if isinstance(spec, Conn):
        return spec
    if isinstance(spec, str):
        left, sep, right = spec.partition("]-") if spec.startswith("[") else spec.partition("-")
        if spec.startswith("[") and sep:
            left += "]"
        if not sep:
            raise ValueError(f"a connection is A:PORT-B:PORT, not {spec!r}")
        return Conn(_parse_endpoint(left), _parse_endpoint(right))
    items = list(spec)
    if len(items) == 2:
        return Conn((str(items[0][0]), int(items[0][1])), (str(items[1][0]), int(items[1][1])))
    if len(items) == 4:
        return Conn((str(items[0]), int(items[1])), (str(items[2]), int(items[3])))
    raise ValueError(f"a connection is two (address, port) pairs, not {spec!r}")


def connections(segments: Iterable[Segment]) -> list[Conn]:
    """The connections (4-tuples) among the segments, in order of their first segment, each
    with the endpoint that sent the first SYN (else the first segment) as `a`."""
    seen: dict[frozenset[Endpoint], Conn] = {}
    first_syn: dict[frozenset[Endpoint], Endpoint] = {}
    for seg in segments:
        key = frozenset((seg.src, seg.dst))
        if key not in seen:
            seen[key] = Conn(seg.src, seg.dst)
        if key not in first_syn and seg.flags & (SYN | ACK) == SYN:
            first_syn[key] = seg.src
    out = []
    for key, conn in seen.items():
        opener = first_syn.get(key, conn.a)
        out.append(conn if opener == conn.a else Conn(conn.b, conn.a))
    return out


# -------------------------------------------------------------------- states
@dataclass
class _Side:
    """What one endpoint has done, as far as the segments show."""

    state: str = "CLOSED"
    isn: int | None = None       # base of its relative sequence numbers
    snd_max: int | None = None   # highest sequence number sent + 1
    fin_seq: int | None = None   # sequence number of its FIN
    timewait_at: int | None = None   # row where it entered TIME-WAIT
    # where "CLOSE-WAIT" was written for it: taken back if its own FIN shows it had not
    # received the peer's FIN yet (the FINs crossed)
    close_wait_mark: tuple[list[Any], Any] | None = None

    def new_incarnation(self, isn: int) -> None:
        self.isn, self.snd_max, self.fin_seq = isn, None, None


@dataclass
class _Row:
    seg: Segment
    from_left: bool
    label: str
    retransmission: bool
    changes: list[tuple[bool, str, bool]] = field(default_factory=list)  # (left, state, at end)



def _flags_text(flags: int) -> str:
    return ", ".join(name for bit, name in _FLAG_NAMES if flags & bit) or "none"


def _analyse(segs: list[Segment], left_ep: Endpoint) -> tuple[list[_Row], dict[bool, str],
                                                               dict[bool, _Side]]:
    """Rows of the diagram with their state changes; the initial state of each side."""
    sides = {True: _Side(), False: _Side()}   # keyed by "is the left side"
    first = segs[0]
    initial = {True: "CLOSED", False: "CLOSED"}
    if first.flags & (SYN | ACK) == SYN:
        # the receiver of the opening SYN was listening
        receiver_left = first.dst == left_ep
        sides[receiver_left].state = initial[receiver_left] = "LISTEN"
    rows: list[_Row] = []
    for index, seg in enumerate(segs):
        from_left = seg.src == left_ep
        snd, rcv = sides[from_left], sides[not from_left]
        changes: list[tuple[bool, str, bool]] = []

        def move(is_left: bool, side: _Side, state: str, at_end: bool) -> None:
            if side.state != state:
                side.state = state
                changes.append((is_left, state, at_end))
                if state == "TIME-WAIT":
                    side.timewait_at = index
                elif state == "CLOSE-WAIT":
                    side.close_wait_mark = (changes, changes[-1])

        flags = seg.flags
        # --- the sender, as it sends
        if flags & SYN and (snd.isn is None or snd.state in ("CLOSED", "TIME-WAIT", "LISTEN")
                            and seg.seq != snd.isn):
            snd.new_incarnation(seg.seq)
        elif snd.isn is None:
            snd.isn = (seg.seq - (1 if flags & SYN else 0)) & M32
        retransmission = (seg.seg_len > 0 and snd.snd_max is not None
                          and _before(seg.seq, snd.snd_max))
        end = (seg.seq + seg.seg_len) & M32
        if snd.snd_max is None or _before(snd.snd_max, end):
            snd.snd_max = end
        if flags & RST:
            move(from_left, snd, "CLOSED", False)
        elif flags & SYN:
            if flags & ACK:
                if snd.state in ("LISTEN", "CLOSED", "TIME-WAIT", "SYN-SENT"):
                    move(from_left, snd, "SYN-RECV", False)
            elif snd.state in ("CLOSED", "TIME-WAIT", "LISTEN"):
                move(from_left, snd, "SYN-SENT", False)
        if flags & FIN and snd.fin_seq is None:
            snd.fin_seq = (seg.seq + seg.length + (1 if flags & SYN else 0)) & M32
            crossed = (snd.state == "CLOSE-WAIT" and rcv.fin_seq is not None
                       and flags & ACK and _before(seg.ack, (rcv.fin_seq + 1) & M32))
            if crossed and snd.close_wait_mark is not None:
                # its FIN does not acknowledge the peer's: it was sent before the peer's FIN
                # arrived (a simultaneous close), so it never was in CLOSE-WAIT
                marked_list, mark = snd.close_wait_mark
                marked_list.remove(mark)
                snd.state = "ESTABLISHED"
                move(from_left, snd, "FIN-WAIT-1", False)
                move(from_left, snd, "CLOSING", False)
            elif snd.state in ("ESTABLISHED", "SYN-RECV"):
                move(from_left, snd, "FIN-WAIT-1", False)
            elif snd.state == "CLOSE-WAIT":
                move(from_left, snd, "LAST-ACK", False)
        # --- the receiver, as it receives
        if flags & RST:
            if rcv.state not in ("LISTEN", "CLOSED"):
                move(not from_left, rcv, "CLOSED", True)
        else:
            if flags & SYN and not flags & ACK and rcv.state == "TIME-WAIT":
                move(not from_left, rcv, "LISTEN", True)   # a new incarnation takes over
            if rcv.isn is not None and flags & ACK:
                acked_syn = rcv.state in ("SYN-SENT", "SYN-RECV") and not _before(
                    seg.ack, (rcv.isn + 1) & M32)
                acked_fin = rcv.fin_seq is not None and not _before(
                    seg.ack, (rcv.fin_seq + 1) & M32)
                if acked_syn:
                    move(not from_left, rcv, "ESTABLISHED", True)
                if acked_fin:
                    nxt = {"FIN-WAIT-1": "FIN-WAIT-2", "CLOSING": "TIME-WAIT",
                           "LAST-ACK": "CLOSED"}.get(rcv.state)
                    if nxt:
                        move(not from_left, rcv, nxt, True)
            if flags & FIN:
                # the first FIN moves it; a retransmitted one finds it in a later state
                nxt = {"ESTABLISHED": "CLOSE-WAIT", "SYN-RECV": "CLOSE-WAIT",
                       "FIN-WAIT-1": "CLOSING", "FIN-WAIT-2": "TIME-WAIT"}.get(rcv.state)
                if nxt:
                    move(not from_left, rcv, nxt, True)
        rows.append(_Row(seg, from_left, _label(seg, snd, rcv, retransmission),
                         retransmission, changes))
    return rows, initial, sides


def _label(seg: Segment, snd: _Side, rcv: _Side, retransmission: bool) -> str:
    rel_seq = (seg.seq - snd.isn) & M32 if snd.isn is not None else seg.seq
    parts = [_flags_text(seg.flags), f"seq={rel_seq}"]
    if seg.flags & ACK:
        rel_ack = (seg.ack - rcv.isn) & M32 if rcv.isn is not None else seg.ack
        parts.append(f"ack={rel_ack}")
    parts.append(f"len={seg.length}")
    text = " ".join(parts[:1]) + "  " + " ".join(parts[1:])
    if retransmission:
        text += "  (retransmission)"
    return text


# -------------------------------------------------------------------- drawing
WIDTH = 920
LEFT_X = 260
RIGHT_X = 720
TOP = 96           # first row's y
ROW = 40           # vertical distance between two segments
SLANT = 18         # how far down an arrow travels
TAIL = 70          # space below the last row (the TIME-WAIT band continues into it)
FONT = "font-family=\"DejaVu Sans, Verdana, Arial, sans-serif\""

_STATE_COLOURS = {"ESTABLISHED": "#1b7a2f", "TIME-WAIT": "#b35900", "CLOSED": "#555555",
                  "LISTEN": "#555555"}


def _select(segs: list[Segment], conn: Any) -> tuple[list[Segment], Conn]:
    conns = connections(segs)
    if not conns:
        raise ValueError("no TCP segments to draw")
    if conn is None:
        chosen = conns[0]
    else:
        want = parse_conn(conn)
        match = [c for c in conns if c.key() == want.key()]
        if not match:
            raise ValueError(f"no segments of {want} (connections: "
                             f"{', '.join(map(str, conns))})")
        chosen = match[0]
    key = chosen.key()
    return [s for s in segs if frozenset((s.src, s.dst)) == key], chosen


def ladder_svg(packets: Iterable[Sequence[Any]] | Iterable[Segment], *, conn: Any = None,
               title: str | None = None, timewait_len: float = 60.0) -> str:
    """A ladder diagram of one TCP connection as a standalone SVG document.

    `packets` are (ts, packet) pairs as read_pcap returns them, (ts, packet, direction)
    entries, or Segments.  `conn` ("A:P-B:P", or two (address, port) pairs) selects the
    connection when there are several; by default the first one is drawn.  `timewait_len` is
    only the length printed at the end of a TIME-WAIT band (Linux: 60 s).  ValueError when
    there is no TCP segment (of `conn`).
    """
    items = list(packets)
    segs = [p for p in items if isinstance(p, Segment)] + parse_segments(
        p for p in items if not isinstance(p, Segment))
    segs.sort(key=lambda s: s.ts)
    segs, chosen = _select(segs, conn)
    rows, initial, sides = _analyse(segs, chosen.a)
    t0 = segs[0].ts
    height = TOP + ROW * len(rows) + TAIL
    out: list[str] = []
    add = out.append
    add('<?xml version="1.0" encoding="UTF-8"?>')
    add(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" {FONT} font-size="12">')
    heading = title or f"TCP connection {chosen}"
    add(f"<title>{html.escape(heading)}</title>")
    add('<defs><marker id="head-black" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#222"/></marker>'
        '<marker id="head-red" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#c62828"/>'
        '</marker></defs>')
    add(f'<rect width="{WIDTH}" height="{height}" fill="white"/>')
    # the endpoints
    bottom = height - 20
    for x, ep, is_left in ((LEFT_X, chosen.a, True), (RIGHT_X, chosen.b, False)):
        add(f'<rect x="{x - 95}" y="14" width="190" height="26" rx="4" fill="#eef3fb" '
            f'stroke="#36c" stroke-width="1"/>')
        add(f'<text x="{x}" y="32" text-anchor="middle" font-weight="bold" '
            f'class="endpoint">{html.escape(_fmt_endpoint(ep))}</text>')
        add(f'<line x1="{x}" y1="40" x2="{x}" y2="{bottom}" stroke="#36c" stroke-width="2" '
            'class="lifeline"/>')
        _state_text(add, is_left, initial[is_left], 62)
    add('<text x="10" y="62" fill="#777" font-size="11">time (s)</text>')
    # TIME-WAIT bands, under the arrows
    for is_left, side in sides.items():
        if side.timewait_at is None:
            continue
        y0 = _row_y(side.timewait_at) + SLANT
        y1 = bottom   # to the end, or to the state that follows (a new incarnation)
        for i in range(side.timewait_at + 1, len(rows)):
            if any(left == is_left for left, _state, _end in rows[i].changes):
                y1 = _row_y(i)
                break
        x = LEFT_X if is_left else RIGHT_X
        add(f'<rect x="{x - 7}" y="{y0}" width="14" height="{max(0, y1 - y0)}" '
            f'fill="#ffb74d" fill-opacity="0.55" stroke="#b35900" stroke-width="1" '
            f'class="timewait-band"><title>TIME-WAIT: 2MSL, then the record is gone '
            f'(Linux: {timewait_len:g} s)</title></rect>')
        if y1 == bottom:
            tx, anchor = (x - 14, "end") if is_left else (x + 14, "start")
            add(f'<text x="{tx}" y="{bottom - 4}" text-anchor="{anchor}" fill="#b35900" '
                f'font-size="11">TIME-WAIT (2MSL) until '
                f'+{segs[side.timewait_at].ts - t0 + timewait_len:.3f} s</text>')
    # one arrow per segment
    for i, row in enumerate(rows):
        y = _row_y(i)
        x1, x2 = (LEFT_X, RIGHT_X) if row.from_left else (RIGHT_X, LEFT_X)
        colour = "#c62828" if row.retransmission else "#222"
        dash = ' stroke-dasharray="6,4"' if row.retransmission else ""
        cls = "segment retransmission" if row.retransmission else "segment"
        add(f'<g class="{cls}" data-seq="{row.seg.seq}" data-flags="{row.seg.flags}">')
        add(f'<line class="arrow" x1="{x1}" y1="{y}" x2="{x2 + (-3 if row.from_left else 3)}" '
            f'y2="{y + SLANT}" stroke="{colour}" stroke-width="1.5"{dash} '
            f'marker-end="url(#head-{"red" if row.retransmission else "black"})"/>')
        mid = (LEFT_X + RIGHT_X) / 2
        add(f'<text x="{mid}" y="{y - 3}" text-anchor="middle" fill="{colour}">'
            f'{html.escape(row.label)}</text>')
        add("</g>")
        add(f'<text x="10" y="{y + 4}" fill="#777" font-size="11" class="time">'
            f'{row.seg.ts - t0:.6f}</text>')
        # changes at the same point (FIN-WAIT-1 -> FIN-WAIT-2 -> TIME-WAIT on one FIN-ACK)
        # are written as one label
        points: dict[tuple[bool, bool], list[str]] = {}
        for is_left, state, at_end in row.changes:
            points.setdefault((is_left, at_end), []).append(state)
        for (is_left, at_end), states in points.items():
            _state_text(add, is_left, " \u2192 ".join(states), y + (SLANT if at_end else 0) + 4,
                        states[-1])
    add("</svg>")
    return "\n".join(out) + "\n"


def _row_y(index: int) -> float:
    return TOP + ROW * index


def _state_text(add: Any, is_left: bool, text: str, y: float, state: str | None = None) -> None:
    """A state name (or several joined by arrows, `state` the last) beside a lifeline."""
    x, anchor = (LEFT_X - 12, "end") if is_left else (RIGHT_X + 12, "start")
    colour = _STATE_COLOURS.get(state or text, "#1a4fa0")
    add(f'<circle cx="{LEFT_X if is_left else RIGHT_X}" cy="{y - 4}" r="3.5" fill="{colour}"/>')
    add(f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-weight="bold" fill="{colour}" '
        f'class="state">{html.escape(text)}</text>')


def ladder_html(packets: Iterable[Sequence[Any]] | Iterable[Segment], *, conn: Any = None,
                title: str | None = None) -> str:
    """ladder_svg's picture in a minimal HTML page (the SVG inline, no outside resources)."""
    svg = ladder_svg(packets, conn=conn, title=title)
    body = svg.split("\n", 1)[1]   # without the XML declaration
    name = html.escape(title or "TCP ladder diagram")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{name}</title></head>\n<body style=\"margin:16px\">\n{body}</body></html>\n")


def ladder_from_pcap(path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                     conn: Any = None) -> Conn:
    """Draw one connection of a pcap file into `out_path`: SVG, or an HTML page if the name
    ends in .html or .htm.  Returns the connection drawn."""
    from ustack.pcap import read_pcap
    segs = parse_segments(read_pcap(path))
    chosen = _select(sorted(segs, key=lambda s: s.ts), conn)[1]
    out = os.fspath(out_path)
    title = f"TCP connection {chosen} ({os.path.basename(os.fspath(path))})"
    text = (ladder_html(segs, conn=chosen, title=title)
            if out.lower().endswith((".html", ".htm"))
            else ladder_svg(segs, conn=chosen, title=title))
    with open(out, "w", encoding="utf-8") as f:
        f.write(text)
    return chosen
