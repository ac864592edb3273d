"""ustack._segment against the construct reference (ustack.wire.reference) and Linux's rules.

Parsing: whatever the reference builds, both parsers read the same fields and move the same
counters.  Building: build_tcp() is byte-for-byte the reference's tcp_options_write() layout.
Malformed input: never an exception, and exactly the counters Linux's ip_rcv_core() and
tcp_v4_rcv() move.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ustack import _segment
from ustack.counters import ALL_NAMES, Counters
from ustack.wire import (
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
    describe,
    describe_options,
    int_to_ip,
    internet_checksum,
    ip_to_int,
    parse,
    parse_ipv4,
    parse_tcp,
)
from ustack.wire import reference as ref

A = ip_to_int("198.18.0.2")
B = ip_to_int("198.18.0.1")
U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 0xFFFF)
U8 = st.integers(0, 0xFF)
SEGMENT_FIELDS = ("src", "dst", "sport", "dport", "seq", "ack", "flags", "window", "urg_ptr",
                  "mss", "wscale", "sack_ok", "has_ts", "aligned_ts", "ts_val", "ts_ecr",
                  "sack_blocks", "payload", "ttl", "tos", "data_offset")
IPV4_FIELDS = ("src", "dst", "proto", "ttl", "ident", "tos", "df", "mf", "frag_offset", "ihl",
               "total_length", "payload")


def fresh() -> dict[str, int]:
    """A counters dict as the stack has it: every Linux name present, at 0."""
    return Counters().values


def moved(counters: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counters.items() if v}


def fields(obj: object, names: tuple[str, ...] = SEGMENT_FIELDS) -> dict[str, object]:
    return {name: getattr(obj, name) for name in names}


def tcp_ok(n: int, tos: int = 0) -> dict[str, int]:
    """The counters one well-formed TCP datagram of n bytes moves."""
    return {"IpInReceives": 1, "IpExtInOctets": n, ref.ECN_COUNTERS[tos & 3]: 1, "TcpInSegs": 1}


def both_parse(data: bytes) -> tuple[Segment | None, dict[str, int]]:
    """Parse with ustack._segment and the reference; assert they agree; return ours."""
    ours, theirs = fresh(), fresh()
    seg = parse(data, ours)
    expected = ref.parse(data, theirs)
    assert moved(ours) == moved(theirs)
    assert set(ours) == set(ALL_NAMES), "a counter name that Linux does not have"
    if expected is None:
        assert seg is None
    else:
        assert seg is not None
        assert fields(seg) == expected
    return seg, moved(ours)


def set_tcp_checksum(pkt: bytes) -> bytes:
    """Recompute the TCP checksum of an IPv4+TCP packet (so a mutation is not caught by it)."""
    ihl = (pkt[0] & 15) * 4
    end = int.from_bytes(pkt[2:4], "big")
    seg = bytearray(pkt[ihl:end])
    seg[16:18] = b"\0\0"
    src, dst = int.from_bytes(pkt[12:16], "big"), int.from_bytes(pkt[16:20], "big")
    seg[16:18] = internet_checksum(
        bytes(seg), ref.pseudo_header_sum(src, dst, 6, len(seg))).to_bytes(2, "big")
    return pkt[:ihl] + bytes(seg) + pkt[end:]


def set_ip_checksum(pkt: bytes) -> bytes:
    ihl = (pkt[0] & 15) * 4
    hdr = bytearray(pkt[:ihl])
    hdr[10:12] = b"\0\0"
    hdr[10:12] = internet_checksum(bytes(hdr)).to_bytes(2, "big")
    return bytes(hdr) + pkt[ihl:]


# --- checksums ----------------------------------------------------------------------------

def test_ipv4_header_checksum_known_vector():
    # The worked example of the IPv4 header checksum (192.168.0.1 -> 192.168.0.199, UDP).
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    assert ref.internet_checksum(header) == 0xB861
    assert internet_checksum(header[:10] + b"\xb8\x61" + header[12:]) == 0


@given(st.binary(max_size=3000), st.integers(0, 0x3FFFF))
@example(b"", 0)
@example(b"\xff", 0)
@example(b"\x00\x01\xf2", 0xFFFF)
def test_internet_checksum_matches_reference(data, initial):
    assert internet_checksum(data, initial) == ref.internet_checksum(data, initial)
    assert internet_checksum(bytearray(data), initial) == ref.internet_checksum(data, initial)
    assert internet_checksum(memoryview(data)) == ref.internet_checksum(data)


# --- byte-exact option layouts of tcp_options_write() ---------------------------------------

def tcp_options_of(pkt: bytes) -> bytes:
    doff = (pkt[32] >> 4) * 4
    return pkt[40:20 + doff]


LINUX_LAYOUTS = [
    # SYN as Linux sends it by default: MSS, SACK-permitted sharing the TS word, wscale.
    (dict(flags=SYN, mss=1460, sack_ok=True, ts_val=0x01020304, ts_ecr=0, wscale=7),
     "020405b4" "0402080a" "01020304" "00000000" "01030307"),
    # SYN-ACK: same layout, the peer's tsval echoed.
    (dict(flags=SYN | ACK, mss=1400, sack_ok=True, ts_val=0xAABBCCDD, ts_ecr=0x01020304,
          wscale=14),
     "02040578" "0402080a" "aabbccdd" "01020304" "0103030e"),
    # SYN with timestamps off: SACK-permitted behind two NOPs.
    (dict(flags=SYN, mss=1460, sack_ok=True, wscale=7), "020405b4" "01010402" "01030307"),
    # SYN with SACK off: timestamps behind two NOPs.
    (dict(flags=SYN, mss=1460, ts_val=5, ts_ecr=0, wscale=0),
     "020405b4" "0101080a" "00000005" "00000000" "01030300"),
    # SYN with only MSS.
    (dict(flags=SYN, mss=536), "02040218"),
    # ACK with timestamps.
    (dict(flags=ACK, ts_val=100, ts_ecr=200), "0101080a" "00000064" "000000c8"),
    # ACK with timestamps and three SACK blocks (the most that fit beside TS).
    (dict(flags=ACK, ts_val=1, ts_ecr=2, sack_blocks=[(10, 20), (30, 40), (0xFFFFFFF0, 5)]),
     "0101080a" "00000001" "00000002" "0101051a" "0000000a" "00000014" "0000001e" "00000028"
     "fffffff0" "00000005"),
    # ACK with one SACK block, no timestamps.
    (dict(flags=ACK, sack_blocks=[(1000, 2000)]), "0101050a" "000003e8" "000007d0"),
    # ACK with four SACK blocks, no timestamps: 36 bytes.
    (dict(flags=ACK, sack_blocks=[(1, 2), (3, 4), (5, 6), (7, 8)]),
     "01010522" + "".join(f"{v:08x}" for v in range(1, 9))),
    # A bare ACK: no options at all.
    (dict(flags=ACK), ""),
]


@pytest.mark.parametrize("kw, layout", LINUX_LAYOUTS)
def test_linux_option_layout_byte_exact(kw, layout):
    kw = dict(kw)
    flags = kw.pop("flags")
    pkt = build_tcp(A, B, 40000, 80, 1, 2, flags, 65535, b"", **kw)
    assert tcp_options_of(pkt).hex() == layout
    assert pkt[32] >> 4 == 5 + len(layout) // 8  # data offset in words
    assert pkt == ref.build_tcp(A, B, 40000, 80, 1, 2, flags, 65535, b"", **kw)


def test_syn_packet_header_bytes():
    pkt = build_tcp(A, B, 40000, 80, 0x11223344, 0, SYN, 64240, mss=1460, sack_ok=True,
                    ts_val=7, ts_ecr=0, wscale=7, ident=0x1234, ttl=64)
    ip, tcp = pkt[:20], pkt[20:40]
    assert ip[:10].hex() == "4500" "003c" "1234" "4000" "40" "06"
    assert ip[12:].hex() == "c6120002" "c6120001"
    assert internet_checksum(ip) == 0
    assert tcp[:16].hex() == "9c40" "0050" "11223344" "00000000" "a0" "02" "faf0"
    assert tcp[18:20] == b"\0\0"
    assert internet_checksum(pkt[20:], ref.pseudo_header_sum(A, B, 6, 40)) == 0


# --- build: random arguments, byte-exact with the reference, parse back ------------------

@st.composite
def build_args(draw):
    ts = draw(st.booleans())
    mss = draw(st.sampled_from([-1, -1, 536, 1460]) | st.integers(0, 0xFFFF))
    wscale = draw(st.sampled_from([-1, 0, 7, 14]) | st.integers(-1, 255))
    sack_ok = draw(st.booleans())
    room = 40 - (4 if mss != -1 else 0) - (12 if ts else 4 if sack_ok else 0) - (
        4 if wscale != -1 else 0)
    max_blocks = max(0, min(4, (room - 4) // 8))
    kw = dict(
        src=draw(U32), dst=draw(U32), sport=draw(U16), dport=draw(U16), seq=draw(U32),
        ack=draw(U32), flags=draw(U8), window=draw(U16),
        payload=draw(st.binary(max_size=200) | st.just(bytes(range(256)) * 5 + b"odd")),
        mss=mss, wscale=wscale, sack_ok=sack_ok,
        ts_val=draw(U32) if ts else None, ts_ecr=draw(U32) if ts else 0,
        sack_blocks=draw(st.lists(st.tuples(U32, U32), max_size=max_blocks)) or None,
        ttl=draw(U8), ident=draw(U16), df=draw(st.booleans()), urg_ptr=draw(U16),
        tos=draw(U8),
    )
    return kw


def positional(kw):
    kw = dict(kw)
    head = [kw.pop(k) for k in ("src", "dst", "sport", "dport", "seq", "ack", "flags",
                                "window", "payload")]
    return head, kw


@given(build_args())
@settings(max_examples=300)
def test_build_tcp_matches_reference_and_parses_back(kw):
    head, opts = positional(kw)
    pkt = build_tcp(*head, **opts)
    assert pkt == ref.build_tcp(*head, **opts)
    assert internet_checksum(pkt[:20]) == 0
    assert internet_checksum(pkt[20:], ref.pseudo_header_sum(kw["src"], kw["dst"], 6,
                                                             len(pkt) - 20)) == 0
    seg, counters = both_parse(pkt)
    assert counters == tcp_ok(len(pkt), kw["tos"])
    expected = {name: kw[name] for name in ("src", "dst", "sport", "dport", "seq", "ack",
                                            "flags", "window", "urg_ptr", "payload", "ttl",
                                            "tos", "sack_ok")}
    expected.update(
        mss=kw["mss"] if kw["mss"] > 0 else -1,  # an MSS of 0 is ignored, as in Linux
        wscale=min(kw["wscale"], 14), has_ts=kw["ts_val"] is not None,
        ts_val=kw["ts_val"] or 0, ts_ecr=kw["ts_ecr"],
        sack_blocks=tuple(kw["sack_blocks"] or ()))
    assert {k: getattr(seg, k) for k in expected} == expected
    ip = parse_ipv4(pkt, fresh())
    assert (ip.ident, ip.df, ip.mf, ip.frag_offset, ip.proto) == (kw["ident"], kw["df"],
                                                                   False, 0, 6)
    # The Segment constructor describes the same segment.
    assert Segment(*head, **{k: v for k, v in opts.items() if k not in ("ident", "df")}) == seg


@given(build_args())
def test_payload_may_be_any_buffer(kw):
    head, opts = positional(kw)
    pkt = build_tcp(*head, **opts)
    head[-1] = bytearray(head[-1])
    assert build_tcp(*head, **opts) == pkt
    head[-1] = memoryview(bytes(head[-1]))
    assert build_tcp(*head, **opts) == pkt


@given(U32, U32, U8, st.binary(max_size=300), U8, U16, st.booleans(), U8)
def test_build_ipv4_matches_reference(src, dst, proto, payload, ttl, ident, df, tos):
    pkt = build_ipv4(src, dst, proto, payload, ttl=ttl, ident=ident, df=df, tos=tos)
    assert pkt == ref.build_ipv4(src, dst, proto, payload, ttl=ttl, ident=ident, df=df,
                                 tos=tos)
    ip = parse_ipv4(pkt, fresh())
    assert fields(ip, IPV4_FIELDS) == ref.parse_ipv4(pkt, {})


@pytest.mark.parametrize("kw, error", [
    (dict(sport=70000), ValueError),
    (dict(dport=-1), ValueError),
    (dict(window=65536), ValueError),
    (dict(flags=256), ValueError),
    (dict(urg_ptr=-2), ValueError),
    (dict(ttl=256), ValueError),
    (dict(tos=-1), ValueError),
    (dict(ident=65536), ValueError),
    (dict(mss=65536), ValueError),
    (dict(mss=-2), ValueError),
    (dict(wscale=256), ValueError),
    (dict(sack_blocks=[(1, 2)] * 5), ValueError),
    (dict(ts_val=1, sack_blocks=[(1, 2)] * 4), ValueError),  # 12 + 36 > 40
    (dict(mss=1460, ts_val=1, wscale=7, sack_blocks=[(1, 2)] * 3), ValueError),
    (dict(payload=b"x" * 65496), ValueError),
    (dict(seq=2**32), OverflowError),
    (dict(ack=-1), OverflowError),
    (dict(src=2**32), OverflowError),
    (dict(ts_val=2**32), OverflowError),
    (dict(sack_blocks=[(1, 2**32)]), OverflowError),
])
def test_build_tcp_rejects_out_of_range(kw, error):
    args = dict(src=A, dst=B, sport=1, dport=2, seq=3, ack=4, flags=ACK, window=5,
                payload=b"")
    args.update(kw)
    head, opts = positional(args)
    with pytest.raises(error):
        build_tcp(*head, **opts)


def test_largest_datagram_builds():
    pkt = build_tcp(A, B, 1, 2, 3, 4, ACK, 5, b"x" * 65495)
    assert len(pkt) == 65535
    assert parse(pkt, fresh()).payload == b"x" * 65495


# --- parse: random headers and option lists built with the reference -----------------------

def _built(container) -> bytes:
    return ref.TCP_OPTIONS.build([container])


well_formed_option = st.one_of(
    st.just(ref.opt_nop()),
    st.builds(ref.opt_mss, U16),
    st.builds(ref.opt_wscale, U8),
    st.just(ref.opt_sack_perm()),
    st.builds(ref.opt_sack, st.lists(st.tuples(U32, U32), min_size=1, max_size=4)),
    st.builds(ref.opt_timestamp, U32, U32),
    st.builds(ref.opt_raw, st.integers(6, 255).filter(lambda k: k != 8),
              st.binary(max_size=8)),
).map(_built)

malformed_option = st.one_of(
    # EOL ends the list: whatever follows is padding.
    st.builds(lambda junk: b"\0" + junk, st.binary(max_size=12)),
    # A known kind with the wrong length: skipped by its length.
    st.builds(lambda kind, value: bytes([kind, 2 + len(value)]) + value,
              st.sampled_from([2, 3, 4, 5, 8]), st.binary(max_size=20)),
    # "Silly" lengths 0 and 1: parsing stops.
    st.builds(lambda kind, size, junk: bytes([kind, size]) + junk,
              st.integers(2, 255), st.integers(0, 1), st.binary(max_size=6)),
    # A length running past the option area: parsing stops.
    st.builds(lambda kind: bytes([kind, 41]), st.integers(2, 255)),
    # A lone kind byte at the very end (no room for a length).
    st.builds(lambda kind: bytes([kind]), st.integers(2, 255)),
)


@st.composite
def option_area(draw):
    pieces = draw(st.lists(st.one_of(well_formed_option, well_formed_option,
                                     malformed_option), max_size=10))
    area = b"".join(pieces)[:40]
    return area + draw(st.sampled_from([b"\0", b"\1"])) * (-len(area) % 4)


@st.composite
def tcp_packets(draw):
    src, dst = draw(U32), draw(U32)
    options = draw(option_area())
    segment = ref.build_tcp_segment(
        src, dst, draw(U16), draw(U16), draw(U32), draw(U32), draw(U8), draw(U16),
        draw(st.binary(max_size=100)), options=options, urg_ptr=draw(U16),
        reserved=draw(st.integers(0, 15)))
    ip_options = draw(st.binary(max_size=40).map(lambda b: b[:len(b) // 4 * 4]))
    pkt = ref.build_ipv4(src, dst, 6, segment, ttl=draw(U8), ident=draw(U16),
                         df=draw(st.booleans()), tos=draw(U8), options=ip_options)
    return pkt + draw(st.binary(max_size=20))  # link-layer padding after total_length


@given(tcp_packets())
@settings(max_examples=500)
def test_parse_matches_reference_on_random_options(pkt):
    seg, counters = both_parse(pkt)
    assert seg is not None
    assert counters == tcp_ok(len(pkt), pkt[1])
    assert seg.options == pkt[(pkt[0] & 15) * 4 + 20:][:seg.data_offset - 20]
    describe(seg)  # renders anything


@given(tcp_packets())
def test_parse_ipv4_then_parse_tcp_equals_parse(pkt):
    counters = fresh()
    ip = parse_ipv4(pkt, counters)
    assert fields(ip, IPV4_FIELDS) == ref.parse_ipv4(pkt, {})
    assert ip.options == pkt[20:ip.ihl]
    assert parse_tcp(ip, counters) == parse(pkt, fresh())
    assert moved(counters) == tcp_ok(len(pkt), pkt[1])


# --- tcp_parse_options() rules, one by one --------------------------------------------------

def with_options(area: bytes, flags: int = SYN, payload: bytes = b"") -> Segment:
    pkt = ref.build_ipv4(A, B, 6, ref.build_tcp_segment(A, B, 1, 2, 3, 4, flags, 5, payload,
                                                        options=area))
    seg, counters = both_parse(pkt)
    assert counters == tcp_ok(len(pkt))
    return seg


def test_option_rules():
    mss, ts, ws, sp = "020405b4", "080a0000000100000002", "030307", "0402"
    # EOL ends the walk.
    assert with_options(bytes.fromhex(mss + "00" + ws)).wscale == -1
    # Unknown kinds are skipped by their length.
    seg = with_options(bytes.fromhex("fe06aabbccdd" + mss + "2202" + ws))
    assert (seg.mss, seg.wscale) == (1460, 7)
    # A known kind with the wrong length is skipped and the walk goes on.
    seg = with_options(bytes.fromhex("020505b400" + "0302" + "080b" + "00" * 9 + ws))
    assert (seg.mss, seg.has_ts, seg.wscale) == (-1, False, 7)
    # Silly lengths stop the walk; what came before is kept.
    for silly in ("00", "01"):
        seg = with_options(bytes.fromhex(mss + "08" + silly + ws + sp))
        assert (seg.mss, seg.wscale, seg.sack_ok) == (1460, -1, False)
    # An option running past the header stops the walk.
    seg = with_options(bytes.fromhex(mss + ws + "0409"))
    assert (seg.mss, seg.wscale, seg.sack_ok) == (1460, 7, False)
    seg = with_options(bytes.fromhex(mss + "0101" + ws + "08"))  # kind alone in the last byte
    assert (seg.mss, seg.wscale) == (1460, 7)
    # Window shifts above 14 read as 14; an MSS of 0 is ignored.
    assert with_options(bytes.fromhex("0303ff")).wscale == 14
    assert with_options(bytes.fromhex("0303" "0f")).wscale == 14
    assert with_options(bytes.fromhex(mss + "02040000")).mss == 1460
    assert with_options(bytes.fromhex("02040000")).mss == -1
    # A later option of the same kind overrides the earlier one.
    seg = with_options(bytes.fromhex(ts + "080a0000000300000004"))
    assert (seg.has_ts, seg.ts_val, seg.ts_ecr) == (True, 3, 4)
    # The last well-formed SACK option is the one kept; a bad SACK length is ignored.
    seg = with_options(bytes.fromhex("050a0000000100000002" "050a0000000300000004"
                                     "0509000000050000000600"), flags=ACK)
    assert seg.sack_blocks == ((3, 4),)
    seg = with_options(bytes.fromhex("050a0000000100000002" "050b" + "00" * 9), flags=ACK)
    assert seg.sack_blocks == ((1, 2),)
    # Options are read whatever the flags (the SYN-only rule is the core's).
    seg = with_options(bytes.fromhex(mss + sp + ws + "00"), flags=ACK)
    assert (seg.mss, seg.sack_ok, seg.wscale) == (1460, True, 7)
    # The payload starts after the options.
    assert with_options(bytes.fromhex(ts + "0101"), flags=ACK, payload=b"hi").payload == b"hi"


# --- malformed datagrams: never raise, exact counters ---------------------------------------

def good_packet(payload: bytes = b"data", **kw) -> bytes:
    return build_tcp(A, B, 1000, 80, 1, 2, ACK | PSH, 512, payload, ts_val=9, ts_ecr=8, **kw)


def drop(pkt: bytes) -> dict[str, int]:
    seg, counters = both_parse(pkt)
    assert seg is None
    return counters


def patch(pkt: bytes, at: int, value: bytes) -> bytes:
    return pkt[:at] + value + pkt[at + len(value):]


IP_BASE = {"IpInReceives": 1}


def test_ip_too_short():
    assert drop(b"") == {**IP_BASE, "IpInHdrErrors": 1}
    for n in (1, 19):
        assert drop(good_packet()[:n]) == {**IP_BASE, "IpExtInOctets": n, "IpInHdrErrors": 1}


def test_ip_bad_version_and_ihl():
    pkt = good_packet()
    n = len(pkt)
    for first in (0x65, 0x44, 0x40, 0x05):   # version 6, ihl 4, ihl 0, version 0
        assert drop(patch(pkt, 0, bytes([first]))) == {
            **IP_BASE, "IpExtInOctets": n, "IpInHdrErrors": 1}
    # ihl beyond the data: the ECN class is counted first.
    short = pkt[:24]
    assert drop(patch(short, 0, b"\x47")) == {**IP_BASE, "IpExtInOctets": 24,
                                              "IpExtInNoECTPkts": 1, "IpInHdrErrors": 1}


def test_ip_bad_checksum():
    pkt = good_packet()
    bad = patch(pkt, 10, bytes([pkt[10] ^ 0x01]))
    assert drop(bad) == {**IP_BASE, "IpExtInOctets": len(pkt), "IpExtInNoECTPkts": 1,
                         "IpExtInCsumErrors": 1, "IpInHdrErrors": 1}
    # Any single bit flipped in the header is caught by the checksum (or an earlier check).
    for bit in range(160):
        flipped = patch(pkt, bit // 8, bytes([pkt[bit // 8] ^ (0x80 >> (bit % 8))]))
        assert parse(flipped, fresh()) is None


def test_ip_total_length():
    pkt = good_packet()
    n = len(pkt)
    # Longer than the data: truncated, not a header error.
    longer = set_ip_checksum(patch(pkt, 2, (n + 1).to_bytes(2, "big")))
    assert drop(longer) == {**IP_BASE, "IpExtInOctets": n, "IpExtInNoECTPkts": 1,
                            "IpExtInTruncatedPkts": 1}
    assert drop(pkt[:-1]) == {**IP_BASE, "IpExtInOctets": n - 1, "IpExtInNoECTPkts": 1,
                              "IpExtInTruncatedPkts": 1}
    # Shorter than the header: a header error.
    shorter = set_ip_checksum(patch(pkt, 2, (19).to_bytes(2, "big")))
    assert drop(shorter) == {**IP_BASE, "IpExtInOctets": n, "IpExtInNoECTPkts": 1,
                             "IpInHdrErrors": 1}
    # Link padding after total_length is trimmed off.
    seg, counters = both_parse(pkt + b"\0" * 6)
    assert seg.payload == b"data"
    assert counters == tcp_ok(n + 6)
    assert parse_ipv4(pkt + b"\0" * 6, fresh()).payload == pkt[20:]


def test_ecn_counters():
    for tos, name in ((0x00, "IpExtInNoECTPkts"), (0x01, "IpExtInECT1Pkts"),
                      (0x02, "IpExtInECT0Pkts"), (0xB3, "IpExtInCEPkts")):
        pkt = good_packet(tos=tos)
        seg, counters = both_parse(pkt)
        assert seg.tos == tos
        assert counters[name] == 1


def test_tcp_too_short():
    pkt = good_packet()
    for keep in (0, 10, 19):     # TCP bytes kept after the IP header
        short = set_ip_checksum(patch(pkt[:20 + keep], 2, (20 + keep).to_bytes(2, "big")))
        assert drop(short) == {**tcp_ok(20 + keep), "TcpInSegs": 1}


def test_tcp_bad_data_offset():
    pkt = good_packet()
    n = len(pkt)
    for doff in (0, 4):
        bad = set_tcp_checksum(patch(pkt, 32, bytes([doff << 4])))
        assert drop(bad) == {**tcp_ok(n), "TcpInErrs": 1}
    # Past the end of the segment: dropped, no error counted (tcp_v4_rcv: discard_it).
    hdr_only = build_tcp(A, B, 1, 2, 3, 4, ACK, 5, b"", ts_val=1)   # 32-byte TCP header
    bad = set_tcp_checksum(patch(hdr_only, 32, bytes([9 << 4])))
    assert drop(bad) == tcp_ok(len(bad))
    ok = set_tcp_checksum(patch(hdr_only, 32, bytes([8 << 4])))       # exactly the end
    assert both_parse(ok)[0].data_offset == 32


def test_tcp_bad_checksum():
    pkt = good_packet()
    for at in (36, 37, 40, len(pkt) - 1):   # checksum bytes, an option, the payload
        bad = patch(pkt, at, bytes([pkt[at] ^ 0x10]))
        assert drop(bad) == {**tcp_ok(len(pkt)), "TcpInCsumErrors": 1, "TcpInErrs": 1}
    # The pseudo-header is covered: the same segment to another address fails.
    other = set_ip_checksum(patch(pkt, 16, (B + 1).to_bytes(4, "big")))
    assert drop(other) == {**tcp_ok(len(pkt)), "TcpInCsumErrors": 1, "TcpInErrs": 1}


def test_not_tcp_and_fragments():
    udp = build_ipv4(A, B, 17, b"\0" * 8)
    assert drop(udp) == {**IP_BASE, "IpExtInOctets": 28, "IpExtInNoECTPkts": 1}
    assert parse_ipv4(udp, fresh()).proto == 17
    assert parse_tcp(parse_ipv4(udp, fresh()), (c := fresh())) is None and not moved(c)
    pkt = good_packet()
    for frag in (b"\x20\x00", b"\x00\x01", b"\x40\x10"):   # MF; offset 8; DF + offset 128
        f = set_ip_checksum(patch(pkt, 6, frag))
        assert drop(f) == {**IP_BASE, "IpExtInOctets": len(f), "IpExtInNoECTPkts": 1}
        ip = parse_ipv4(f, fresh())
        assert (ip.mf, ip.frag_offset, ip.df) == (
            frag == b"\x20\x00", (int.from_bytes(frag, "big") & 0x1FFF) * 8, frag == b"\x40\x10")
        assert parse_tcp(ip, (c := fresh())) is None and not moved(c)


@given(st.binary(max_size=120))
@settings(max_examples=1000)
def test_fuzz_random_bytes(data):
    both_parse(data)


@given(st.binary(min_size=20, max_size=80))
@settings(max_examples=500)
def test_fuzz_random_bytes_behind_a_valid_ip_header(tail):
    # Random TCP headers reach the TCP checks (and, with a fixed-up checksum, the options).
    pkt = build_ipv4(A, B, 6, tail)
    both_parse(pkt)
    both_parse(set_tcp_checksum(pkt))


@st.composite
def mutated_packets(draw):
    pkt = bytearray(draw(tcp_packets()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "extend", "ihl", "doff", "optlen",
                                     "total_length"]))
        ihl = (pkt[0] & 15) * 4 if pkt else 0
        if kind == "flip" and pkt:
            at = draw(st.integers(0, len(pkt) - 1))
            pkt[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del pkt[draw(st.integers(0, len(pkt))):]
        elif kind == "extend":
            pkt += draw(st.binary(min_size=1, max_size=8))
        elif kind == "ihl" and pkt:
            pkt[0] = (pkt[0] & 0xF0) | draw(st.integers(0, 15))
        elif kind == "doff" and len(pkt) > ihl + 12:
            pkt[ihl + 12] = draw(st.integers(0, 15)) << 4
        elif kind == "optlen" and len(pkt) > ihl + 21:
            at = draw(st.integers(ihl + 21, min(len(pkt) - 1, ihl + 59)))
            pkt[at] = draw(st.sampled_from([0, 1, 2, 41, 255]))
        elif kind == "total_length" and len(pkt) >= 4:
            pkt[2:4] = draw(U16).to_bytes(2, "big")
    pkt = bytes(pkt)
    ihl = (pkt[0] & 15) * 4 if pkt else 0
    if 20 <= ihl <= len(pkt) and draw(st.booleans()):   # make the IP checks pass more often
        pkt = set_ip_checksum(pkt)
        if ihl + 20 <= int.from_bytes(pkt[2:4], "big") <= len(pkt) and \
                draw(st.booleans()):
            pkt = set_tcp_checksum(pkt)
    return pkt


@given(mutated_packets())
@settings(max_examples=1000, suppress_health_check=[HealthCheck.too_slow])
def test_fuzz_mutations_of_valid_packets(pkt):
    seg, _ = both_parse(pkt)
    if seg is not None:
        assert 20 <= seg.data_offset <= 60
        assert -1 <= seg.wscale <= 14
        assert len(seg.sack_blocks) <= 4


def test_parse_rejects_wrong_types_without_crashing():
    for bad in (None, bytearray(b"x" * 40), "text", 5):
        with pytest.raises(TypeError):
            parse(bad, fresh())
        with pytest.raises(TypeError):
            parse_ipv4(bad, fresh())
    with pytest.raises(TypeError):
        parse(good_packet(), None)
    with pytest.raises(TypeError):
        parse_tcp(None, fresh())
    with pytest.raises(TypeError):
        Ipv4()
    empty = Ipv4.__new__(Ipv4)          # never filled in by parse_ipv4
    assert parse_tcp(empty, fresh()) is None and empty.payload == b""


def test_counters_may_start_empty():
    counters: dict[str, int] = {}
    assert parse(good_packet(), counters) is not None
    assert counters == tcp_ok(len(good_packet()))


# --- Segment ------------------------------------------------------------------------------

def test_segment_properties():
    seg = Segment(A, B, 1, 2, 0xFFFFFFFF, 0, SYN | FIN, 10, b"abc")
    assert seg.seg_len == 5
    assert seg.end_seq == 4
    assert seg.data_offset == 20 and seg.options == b""
    assert Segment(A, B, 1, 2, 7, 0, ACK, 10).seg_len == 0
    assert seg == Segment(A, B, 1, 2, 0xFFFFFFFF, 0, SYN | FIN, 10, b"abc")
    assert seg != Segment(A, B, 1, 2, 0xFFFFFFFF, 0, SYN | FIN, 10, b"abd")
    assert len({seg, Segment(A, B, 1, 2, 0xFFFFFFFF, 0, SYN | FIN, 10, b"abc")}) == 1
    with pytest.raises(AttributeError):
        seg.seq = 5


def test_segment_is_equal_to_its_parse():
    kw = dict(mss=1460, sack_ok=True, ts_val=100, ts_ecr=0, wscale=7)
    seg = Segment(A, B, 80, 40000, 0, 1, SYN | ACK, 65535, **kw)
    parsed = parse(build_tcp(A, B, 80, 40000, 0, 1, SYN | ACK, 65535, **kw), fresh())
    assert seg == parsed
    assert seg.options == parsed.options


# --- describe -----------------------------------------------------------------------------

def test_describe_packetdrill_style():
    syn_ack = parse(build_tcp(A, B, 80, 40000, 0, 1, SYN | ACK, 65535, mss=1460,
                              sack_ok=True, ts_val=100, ts_ecr=0, wscale=7), fresh())
    assert describe(syn_ack) == \
        "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>"
    assert describe(syn_ack, addresses=True).startswith("198.18.0.2:80 > 198.18.0.1:40000 S.")
    data = Segment(A, B, 1, 2, 1000, 2000, PSH | ACK, 300, b"abc", ts_val=5, ts_ecr=6,
                   sack_blocks=[(10, 20), (30, 40)])
    assert describe(data) == \
        "P. 1000:1003(3) ack 2000 win 300 <nop,nop,TS val 5 ecr 6,nop,nop,sack 10:20 30:40>"
    assert describe(Segment(A, B, 1, 2, 5, 0, RST, 0)) == "R 5:5(0) win 0"
    assert describe(Segment(A, B, 1, 2, 5, 0, FIN | URG | ECE | CWR, 0, urg_ptr=3)) == \
        "FUEW 5:5(0) win 0 urg 3"
    assert describe(Segment(A, B, 1, 2, 5, 0, 0, 0)) == "none 5:5(0) win 0"
    assert repr(syn_ack).startswith("<Segment 198.18.0.2:80 > 198.18.0.1:40000 S. 0:0(0)")


def test_describe_malformed_options():
    assert describe_options(bytes.fromhex("020405b4" "030314" "0205000000" "fe0401ff"
                                          "0100" "0303")) == \
        "mss 1460,wscale 20,mss[len 5],unknown-254 0x01ff,nop,eol"
    assert describe_options(bytes.fromhex("0101" "0801")) == "nop,nop,[bad opt]"
    assert describe_options(bytes.fromhex("05090000000000000000")[:9]) == "sack[len 9]"
    assert describe_options(b"\x08") == "[bad opt]"


def test_addresses():
    assert ip_to_int("198.18.0.2") == 0xC6120002
    assert int_to_ip(0xC6120002) == "198.18.0.2"
    assert int_to_ip(ip_to_int("255.0.10.1")) == "255.0.10.1"
    with pytest.raises(ValueError):
        ip_to_int("1.2.3")


def test_flag_constants():
    assert (FIN, SYN, RST, PSH, ACK, URG, ECE, CWR) == (1, 2, 4, 8, 16, 32, 64, 128)
    assert (_segment.FIN, _segment.CWR) == (ref.FIN, ref.CWR)


def test_stub_matches_module():
    import ast
    import pathlib

    stub = ast.parse((pathlib.Path(_segment.__file__).parent / "_segment.pyi").read_text())
    declared = {node.name for node in stub.body if isinstance(node, (ast.FunctionDef,
                                                                     ast.ClassDef))}
    declared |= {t.id for node in stub.body if isinstance(node, ast.AnnAssign)
                 for t in [node.target]}
    public = {name for name in dir(_segment) if not name.startswith("_")}
    assert declared == public
    for cls in (Segment, Ipv4):
        node = next(n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
        members = {n.name for n in node.body if isinstance(n, ast.FunctionDef)}
        assert {m for m in members if not m.startswith("_")} == \
            {m for m in dir(cls) if not m.startswith("_")}
