"""Tests of ustack.drill.seqmap: packetdrill's script <-> live numbering, as a pure class.

Live packets are plain dataclasses with the attribute names of ustack._segment.Segment.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from ustack.drill import parse_script
from ustack.drill.ast import TH_ACK, TH_FIN, TH_PSH, TH_RST, TH_SYN, TcpPacket
from ustack.drill.seqmap import (
    InboundTcp, SeqMapError, SeqMapper, SockState, flags_str, icmp_type_code,
    parse_option_kinds,
)

LOCAL = 0xC0A80001    # 192.168.0.1, the stack under test
REMOTE = 0xC0000201   # 192.0.2.1, the tool
M32 = 0xFFFFFFFF


@dataclass
class Seg:
    src: int
    dst: int
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    window: int
    payload: bytes = b""
    mss: int = -1
    wscale: int = -1
    sack_ok: bool = False
    has_ts: bool = False
    ts_val: int = 0
    ts_ecr: int = 0
    sack_blocks: tuple = ()
    urg_ptr: int = 0
    tos: int = 0
    ttl: int = 64
    options: bytes | None = None


def opts(*items) -> bytes:
    """Raw option bytes: "nop", "eol", ("mss", n), ("wscale", n), "sackOK",
    ("ts", val, ecr), ("sack", [(a, b), ...]), ("fo", cookie)."""
    out = b""
    for it in items:
        if it == "nop":
            out += b"\x01"
        elif it == "eol":
            out += b"\x00"
        elif it == "sackOK":
            out += b"\x04\x02"
        elif it[0] == "mss":
            out += b"\x02\x04" + it[1].to_bytes(2, "big")
        elif it[0] == "wscale":
            out += b"\x03\x03" + bytes([it[1]])
        elif it[0] == "ts":
            out += b"\x08\x0a" + it[1].to_bytes(4, "big") + it[2].to_bytes(4, "big")
        elif it[0] == "sack":
            body = b"".join(a.to_bytes(4, "big") + b.to_bytes(4, "big") for a, b in it[1])
            out += bytes([5, 2 + len(body)]) + body
        elif it[0] == "fo":
            out += bytes([34, 2 + len(it[1])]) + it[1]
    return out


def pkt(line: str) -> TcpPacket:
    p = parse_script("0 " + line + "\n").events[0].action
    assert isinstance(p, TcpPacket)
    return p


def out_seg(m: SeqMapper, **kw) -> Seg:
    """An outbound segment on the socket under test's live 4-tuple."""
    s = m.under_test
    (src, sport), (dst, dport) = s.live_local, s.live_remote
    base = dict(src=src, dst=dst, sport=sport, dport=dport, seq=0, ack=0, flags=TH_ACK,
                window=1000, options=b"")
    base.update(kw)
    return Seg(**base)


ISN = 0xFFFFFF00   # the stack's ISN: close to 2**32 so numbers wrap


def listening() -> SeqMapper:
    m = SeqMapper(LOCAL, REMOTE)
    m.on_socket(3)
    m.on_listen(3)
    return m


def establish_passive(m: SeqMapper, *, remote_isn: int = 0) -> None:
    syn = m.inbound(pkt(f"< S {remote_isn}:{remote_isn}(0) win 32792 "
                        "<mss 1000,sackOK,nop,nop,nop,wscale 7>"))
    assert syn.seq == remote_isn and syn.flags == TH_SYN
    synack = out_seg(m, seq=ISN, ack=remote_isn + 1, flags=TH_SYN | TH_ACK, mss=1460,
                     wscale=8, sack_ok=True,
                     options=opts(("mss", 1460), "nop", "nop", "sackOK", "nop", ("wscale", 8)))
    assert m.match_outbound(pkt(f"> S. 0:0(0) ack {remote_isn + 1} "
                                "<mss 1460,nop,nop,sackOK,nop,wscale 8>"), synack) is None
    ack = m.inbound(pkt("< . 1:1(0) ack 1 win 257"))
    assert ack.seq == remote_isn + 1
    assert ack.ack == (ISN + 1) & M32
    m.on_accept(3, 4)


# --------------------------------------------------------------------------- handshake


def test_passive_handshake_fields():
    m = listening()
    syn = m.inbound(pkt("< S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>"))
    assert (syn.src, syn.dst, syn.sport, syn.dport) == (REMOTE, LOCAL, 40000, 8080)
    assert (syn.seq, syn.ack, syn.flags, syn.window) == (0, 0, TH_SYN, 32792)
    assert (syn.mss, syn.wscale, syn.sack_ok, syn.ts_val, syn.sack_blocks) == \
        (1000, 7, True, None, None)
    assert syn.payload == b""
    kw = syn.build_kwargs()
    assert kw["flags"] == TH_SYN and kw["mss"] == 1000 and kw["src"] == REMOTE
    assert m.under_test.state == SockState.PASSIVE_PACKET_RECEIVED

    synack = out_seg(m, seq=ISN, ack=1, flags=TH_SYN | TH_ACK, mss=1460, wscale=8,
                     sack_ok=True,
                     options=opts(("mss", 1460), "nop", "nop", "sackOK", "nop", ("wscale", 8)))
    assert m.owns(synack)
    expected = pkt("> S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>")
    assert m.match_outbound(expected, synack) is None
    assert m.under_test.state == SockState.PASSIVE_SYNACK_SENT
    assert m.under_test.live_local_isn == ISN

    ack = m.inbound(pkt("< . 1:1(0) ack 1 win 257"))
    assert (ack.seq, ack.ack, ack.flags) == (1, (ISN + 1) & M32, TH_ACK)
    assert m.under_test.state == SockState.PASSIVE_SYNACK_ACKED
    m.on_accept(3, 4)
    assert m.sockets[4] is m.under_test


def test_synack_mismatches_are_precise():
    m = listening()
    m.inbound(pkt("< S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>"))
    expected = pkt("> S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>")
    good = out_seg(m, seq=ISN, ack=1, flags=TH_SYN | TH_ACK,
                   options=opts(("mss", 1460), "nop", "nop", "sackOK", "nop", ("wscale", 8)))
    msg = m.match_outbound(expected, replace(good, ack=2))
    assert msg.startswith("expected ack 1, got ack 2")
    msg = m.match_outbound(expected, replace(good, flags=TH_SYN))
    assert msg.startswith("expected flags S., got flags S")
    msg = m.match_outbound(expected, replace(good, options=opts(
        ("mss", 1400), "nop", "nop", "sackOK", "nop", ("wscale", 8))))
    assert msg.startswith("bad value for outbound TCP option mss: expected "
                          "<mss 1460,nop,nop,sackOK,nop,wscale 8>, got "
                          "<mss 1400,nop,nop,sackOK,nop,wscale 8>")
    msg = m.match_outbound(expected, replace(good, options=opts(("mss", 1460), "sackOK")))
    assert msg.startswith("bad outbound TCP options: expected")
    # <...> does not check options; omitted win is not checked either
    assert m.match_outbound(pkt("> S. 0:0(0) ack 1 <...>"),
                            replace(good, options=b"", window=1)) is None
    assert m.match_outbound(pkt("> S. 0:0(0) ack 1 win 1000 <...>"), good) is None
    assert m.match_outbound(pkt("> S. 0:0(0) ack 1 win 999 <...>"), good).startswith(
        "expected win 999, got win 1000")


def test_option_check_without_raw_bytes():
    m = listening()
    m.inbound(pkt("< S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>"))
    expected = pkt("> S. 0:0(0) ack 1 <mss 1460,nop,nop,sackOK,nop,wscale 8>")
    seg = out_seg(m, seq=ISN, ack=1, flags=TH_SYN | TH_ACK, mss=1460, wscale=8,
                  sack_ok=True, options=None)
    assert m.match_outbound(expected, seg) is None
    assert m.match_outbound(expected, replace(seg, wscale=7)).startswith(
        "expected wscale 8, got wscale 7")
    assert m.match_outbound(expected, replace(seg, mss=-1)).startswith(
        "expected mss 1460, got no mss")


def test_active_handshake_and_ts_mapping():
    m = SeqMapper(LOCAL, REMOTE)
    m.on_socket(3)
    m.on_connect(3)
    syn = Seg(LOCAL, REMOTE, 51000, 8080, seq=ISN, ack=0, flags=TH_SYN, window=65535,
              mss=1460, wscale=8, sack_ok=True, has_ts=True, ts_val=777_777,
              options=opts(("mss", 1460), "sackOK", ("ts", 777_777, 0), "nop", ("wscale", 8)))
    assert m.owns(syn)
    assert not m.owns(replace(syn, dport=9999))
    assert m.match_outbound(pkt("> S 0:0(0) <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 8>"),
                            syn) is None
    s = m.under_test
    assert s.state == SockState.ACTIVE_SYN_SENT
    assert s.live_local == (LOCAL, 51000) and s.live_remote == (REMOTE, 8080)
    assert s.live_local_isn == ISN

    synack = m.inbound(pkt("< S. 0:0(0) ack 1 win 5792 "
                           "<mss 1460,sackOK,TS val 700 ecr 100,nop,wscale 7>"))
    assert (synack.src, synack.sport, synack.dst, synack.dport) == (REMOTE, 8080, LOCAL, 51000)
    assert (synack.seq, synack.ack) == (0, (ISN + 1) & M32)
    assert (synack.ts_val, synack.ts_ecr) == (700, 777_777)   # ecr mapped to the live val
    assert s.state == SockState.ACTIVE_SYN_ACKED

    ack = Seg(LOCAL, REMOTE, 51000, 8080, seq=(ISN + 1) & M32, ack=1, flags=TH_ACK,
              window=502, has_ts=True, ts_val=777_790, ts_ecr=700,
              options=opts("nop", "nop", ("ts", 777_790, 700)))
    # TS val not checked without --tcp_ts_tick_usecs
    assert m.match_outbound(pkt("> . 1:1(0) ack 1 <nop,nop,TS val 200 ecr 700>"), ack) is None
    # the later TS ecr 200 maps to the live val seen with script val 200
    data = m.inbound(pkt("< P. 1:11(10) ack 1 win 257 <nop,nop,TS val 710 ecr 200>"))
    assert (data.seq, data.ack, data.ts_val, data.ts_ecr) == (1, (ISN + 1) & M32, 710, 777_790)
    assert data.payload == bytes(10)
    with pytest.raises(SeqMapError, match="unable to infer live TS ecr for script TS ecr 999"):
        m.inbound(pkt("< . 11:11(0) ack 1 win 257 <nop,nop,TS val 720 ecr 999>"))


def test_ts_ecr_scaled_and_tick_tolerance():
    m = SeqMapper(LOCAL, REMOTE, tcp_ts_ecr_scaled=True, tcp_ts_tick_usecs=1000,
                  tolerance_usecs=4000)
    m.on_socket(3)
    m.on_connect(3)
    syn = Seg(LOCAL, REMOTE, 51000, 8080, seq=5, ack=0, flags=TH_SYN, window=65535,
              has_ts=True, ts_val=1000, options=opts(("ts", 1000, 0)))
    assert m.match_outbound(pkt("> S 0:0(0) <TS val 100 ecr 0>"), syn) is None
    m.inbound(pkt("< S. 0:0(0) ack 1 win 5792 <TS val 700 ecr 100>"))
    # script 150 -> live 1000 + 50 by interpolation from the first pair
    assert m.inbound(pkt("< . 1:1(0) ack 1 win 257 <TS val 701 ecr 150>")).ts_ecr == 1050
    ack = Seg(LOCAL, REMOTE, 51000, 8080, seq=6, ack=1, flags=TH_ACK, window=502,
              has_ts=True, ts_val=1003, options=opts("nop", "nop", ("ts", 1003, 701)))
    assert m.match_outbound(pkt("> . 1:1(0) ack 1 <nop,nop,TS val 105 ecr 701>"), ack) is None
    msg = m.match_outbound(pkt("> . 1:1(0) ack 1 <nop,nop,TS val 110 ecr 701>"), ack)
    assert msg.startswith("bad outbound TCP timestamp value: expected TS val 110, got 103")


# --------------------------------------------------------------------------- data, FIN


def test_data_and_ack_numbers():
    m = listening()
    establish_passive(m)
    data = m.inbound(pkt("< P. 1:1001(1000) ack 1 win 257"))
    assert (data.seq, data.ack, data.flags) == (1, (ISN + 1) & M32, TH_PSH | TH_ACK)
    assert data.payload == bytes(1000)
    ack = out_seg(m, seq=(ISN + 1) & M32, ack=1001)
    assert m.match_outbound(pkt("> . 1:1(0) ack 1001"), ack) is None
    msg = m.match_outbound(pkt("> . 1:1(0) ack 1001"), replace(ack, ack=1))
    assert msg.startswith("expected ack 1001, got ack 1 ")
    assert "(actual: . 1:1(0) ack 1 win 1000)" in msg
    # our data: seq relative to the live ISN (wrapping past 2**32)
    out = out_seg(m, seq=(ISN + 1) & M32, ack=1001, flags=TH_PSH | TH_ACK,
                  payload=bytes(500))
    assert m.match_outbound(pkt("> P. 1:501(500) ack 1001"), out) is None
    assert m.match_outbound(pkt("> P. 2:502(500) ack 1001"), out).startswith(
        "expected seq 2, got seq 1")
    assert m.match_outbound(pkt("> P. 1:401(400) ack 1001"), out).startswith(
        "expected 400 payload bytes, got 500")
    assert m.match_outbound(pkt("> P. 1:501(500) ack 1001"),
                            replace(out, payload=b"x" * 500)) == \
        "incorrect outbound data payload (actual: P. 1:501(500) ack 1001 win 1000)"
    # options were expected to be absent
    assert m.match_outbound(pkt("> P. 1:501(500) ack 1001"),
                            replace(out, options=opts("nop", "nop", ("ts", 1, 2)))).startswith(
        "bad outbound TCP options: expected <>, got <nop,nop,TS val 1 ecr 2>")


def test_fin_exchange():
    m = listening()
    establish_passive(m, remote_isn=1000)
    fin_in = m.inbound(pkt("< F. 1:1(0) ack 1 win 257"))
    assert (fin_in.seq, fin_in.ack, fin_in.flags) == (1001, (ISN + 1) & M32, TH_FIN | TH_ACK)
    ack = out_seg(m, seq=(ISN + 1) & M32, ack=1002)
    assert m.match_outbound(pkt("> . 1:1(0) ack 2"), ack) is None
    fin_out = out_seg(m, seq=(ISN + 1) & M32, ack=1002, flags=TH_FIN | TH_ACK)
    assert m.match_outbound(pkt("> F. 1:1(0) ack 2"), fin_out) is None
    assert m.match_outbound(pkt("> . 1:1(0) ack 2"), fin_out).startswith(
        "expected flags ., got flags F.")
    last = m.inbound(pkt("< . 2:2(0) ack 2 win 257"))
    assert (last.seq, last.ack) == (1002, (ISN + 2) & M32)
    rst = m.reset_fields()
    assert isinstance(rst, InboundTcp)
    assert (rst.seq, rst.ack, rst.flags) == (1002, (ISN + 2) & M32, TH_RST | TH_ACK)


def test_sack_blocks_both_ways():
    m = listening()
    establish_passive(m, remote_isn=5000)
    # outbound SACK blocks are in the peer's sequence space: minus its ISN
    dup = out_seg(m, seq=(ISN + 1) & M32, ack=5001, sack_blocks=((6001, 7001),),
                  options=opts("nop", "nop", ("sack", [(6001, 7001)])))
    assert m.match_outbound(pkt("> . 1:1(0) ack 1 <nop,nop,sack 1001:2001>"), dup) is None
    msg = m.match_outbound(pkt("> . 1:1(0) ack 1 <nop,nop,sack 1001:2002>"), dup)
    assert msg.startswith("bad value for outbound TCP option sack: expected "
                          "<nop,nop,sack 1001:2002>, got <nop,nop,sack 1001:2001>")
    # inbound SACK blocks are in our space: plus the live ISN
    i = m.inbound(pkt("< . 1:1(0) ack 1 win 257 <nop,nop,sack 101:201 301:401>"))
    assert i.sack_blocks == (((ISN + 101) & M32, (ISN + 201) & M32),
                             ((ISN + 301) & M32, (ISN + 401) & M32))
    assert i.options[2].blocks == i.sack_blocks


def test_aggregation_of_split_segments():
    m = listening()
    establish_passive(m)
    base = (ISN + 1) & M32
    segs = [out_seg(m, seq=(base + k * 1000) & M32, ack=1, payload=bytes(1000),
                    flags=TH_ACK | (TH_PSH if k == 2 else 0)) for k in range(3)]
    expected = pkt("> P. 1:3001(3000) ack 1")
    assert m.match_outbound(expected, segs) is None
    assert m.match_outbound(expected, segs[:2]).startswith(
        "expected flags P., got flags .; expected 3000 payload bytes, got 2000")
    gap = [segs[0], segs[2]]
    assert m.match_outbound(expected, gap) == \
        "aggregate candidate: expected seq 1001, got 2001"
    uneven = [segs[0], replace(segs[1], payload=bytes(500)),
              replace(segs[2], seq=(base + 1500) & M32)]
    assert m.match_outbound(expected, uneven).startswith("fragment payload: expected 1000")
    strict = SeqMapper(LOCAL, REMOTE, strict_segments=True)
    strict.on_socket(3)
    strict.on_listen(3)
    establish_passive(strict)
    assert strict.match_outbound(expected, segs) == \
        "expected one segment, got 3 (--strict_segments)"


def test_packets_of_other_connections_are_not_owned():
    m = listening()
    establish_passive(m)
    mine = out_seg(m, seq=(ISN + 1) & M32, ack=1)
    assert m.owns(mine)
    assert not m.owns(replace(mine, dport=40001))
    assert not m.owns(replace(mine, src=LOCAL + 1))
    assert m.match_outbound(pkt("> . 1:1(0) ack 1"), replace(mine, sport=9)).startswith(
        "packet is not for the socket under test")


def test_ecn_and_tos_checks():
    m = listening()
    establish_passive(m)
    seg = out_seg(m, seq=(ISN + 1) & M32, ack=1, flags=TH_PSH | TH_ACK, payload=bytes(10),
                  tos=0x02)
    assert m.match_outbound(pkt("> [ect0] P. 1:11(10) ack 1"), seg) is None
    assert m.match_outbound(pkt("> [ect01] P. 1:11(10) ack 1"), seg) is None
    assert m.match_outbound(pkt("> [ect1] P. 1:11(10) ack 1"), seg).startswith(
        "expected ip ecn ect1, got ect0")
    inj = m.inbound(pkt("< [ce] . 1:1(0) ack 11 win 257"))
    assert inj.tos == 3


# --------------------------------------------------------------------------- RST, TIME-WAIT


def test_rst_on_closed_port_without_any_socket():
    m = SeqMapper(LOCAL, REMOTE)
    syn = m.inbound(pkt("< S 0:0(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>"))
    assert (syn.dport, syn.seq) == (8080, 0)
    rst = Seg(LOCAL, REMOTE, 8080, syn.sport, seq=0, ack=1, flags=TH_RST | TH_ACK, window=0,
              options=b"")
    assert m.owns(rst)
    assert m.match_outbound(pkt("> R. 0:0(0) ack 1 win 0"), rst) is None
    nxt = m.inbound(pkt("< . 1:1(0) ack 1 win 257"))
    assert (nxt.seq, nxt.ack, nxt.sport) == (1, 1, syn.sport)
    rst2 = replace(rst, seq=1, ack=0, flags=TH_RST)
    assert m.match_outbound(pkt("> R 1:1(0)"), rst2) is None


def test_time_wait_reuse_keeps_first_numbering():
    m = listening()
    establish_passive(m)
    first = m.under_test
    port = first.live_remote[1]
    m.on_close(4)
    fin = out_seg(m, seq=(ISN + 1) & M32, ack=1, flags=TH_FIN | TH_ACK)
    assert m.match_outbound(pkt("> F. 1:1(0) ack 1"), fin) is None
    m.inbound(pkt("< . 1:1(0) ack 2 win 257"))
    pfin = m.inbound(pkt("< F. 1:1(0) ack 2 win 257"))
    assert (pfin.seq, pfin.ack) == (1, (ISN + 2) & M32)
    last = out_seg(m, seq=(ISN + 2) & M32, ack=2)
    assert m.match_outbound(pkt("> . 2:2(0) ack 2"), last) is None

    # TIME-WAIT: a new SYN on the same 4-tuple, seq above the old rcv_nxt
    syn2 = m.inbound(pkt("< S 1000:1000(0) win 32792 <mss 1000,sackOK,nop,nop,nop,wscale 7>"))
    assert m.under_test is first                   # no new child: same socket, same ports
    assert (syn2.sport, syn2.seq) == (port, 1000)  # SYN seq is absolute
    new_isn = (ISN + 2 + 65535 + 2) & M32          # Linux: tw_snd_nxt + 65535 + 2
    synack2 = out_seg(m, seq=new_isn, ack=1001, flags=TH_SYN | TH_ACK,
                      options=opts(("mss", 1460), "nop", "nop", "sackOK", "nop", ("wscale", 8)))
    assert m.match_outbound(pkt("> S. 65539:65539(0) ack 1001 "
                                "<mss 1460,nop,nop,sackOK,nop,wscale 8>"), synack2) is None
    ack2 = m.inbound(pkt("< . 1001:1001(0) ack 65540 win 257"))
    assert (ack2.seq, ack2.ack) == (1001, (new_isn + 1) & M32)
    m.on_accept(3, 4)
    assert m.sockets[4] is first and not first.closed
    data = out_seg(m, seq=(new_isn + 1) & M32, ack=1101, flags=TH_PSH | TH_ACK,
                   payload=bytes(5))
    assert m.match_outbound(pkt("> P. 65540:65545(5) ack 1101"), data) is None


def test_new_socket_gets_fresh_numbering():
    m = listening()
    establish_passive(m)
    m.on_socket(5)
    m.on_connect(5)
    syn = Seg(LOCAL, REMOTE, 52000, 8080, seq=77, ack=0, flags=TH_SYN, window=65535,
              options=b"")
    assert m.match_outbound(pkt("> S 0:0(0)"), syn) is None
    assert m.under_test.live_local_isn == 77
    synack = m.inbound(pkt("< S. 300:300(0) ack 1 win 1000"))
    assert (synack.seq, synack.ack, synack.dport) == (300, 78, 52000)
    data = m.inbound(pkt("< P. 1:11(10) ack 1 win 1000"))
    assert data.seq == 301


def test_syn_seq_other_than_zero_in_script():
    # the script's SYN seq stands for the live ISN; later numbers are relative to it
    m = SeqMapper(LOCAL, REMOTE)
    m.on_socket(3)
    m.on_connect(3)
    syn = Seg(LOCAL, REMOTE, 51000, 8080, seq=ISN, ack=0, flags=TH_SYN, window=1,
              payload=bytes(1000), options=b"")
    assert m.match_outbound(pkt("> S 0:1000(1000)"), syn) is None
    synack = m.inbound(pkt("< S. 1234:1234(0) ack 1001 win 5840"))
    assert (synack.seq, synack.ack) == (1234, (ISN + 1001) & M32)
    assert m.inbound(pkt("< P. 1:501(500) ack 1000 win 257")).seq == 1235


def test_inbound_before_live_tuple_is_an_error():
    m = SeqMapper(LOCAL, REMOTE)
    m.on_socket(3)
    m.on_connect(3)
    with pytest.raises(SeqMapError, match="live 4-tuple is not known"):
        m.inbound(pkt("< S. 0:0(0) ack 1 win 100"))


def test_observe_syscall_drives_socket_state():
    script = parse_script(
        "0 socket(..., SOCK_STREAM, IPPROTO_TCP) = 3\n"
        "+0 listen(3, 1) = 0\n"
        "+0 < S 0:0(0) win 100\n"
        "+0 accept(3, ..., ...) = 4\n"
        "+0 connect(4, AF_UNSPEC, ...) = 0\n"
        "+0 connect(4, ..., ...) = -1 EINPROGRESS (Operation now in progress)\n"
        "+0 close(4) = 0\n")
    m = SeqMapper(LOCAL, REMOTE)
    ev = script.events
    m.observe_syscall(ev[0].action)
    assert m.under_test is m.sockets[3] and m.sockets[3].state == SockState.NEW
    m.observe_syscall(ev[1].action)
    assert m.sockets[3].state == SockState.LISTENING
    m.inbound(ev[2].action)
    child = m.under_test
    assert child.state == SockState.PASSIVE_PACKET_RECEIVED
    m.observe_syscall(ev[3].action)
    assert m.sockets[4] is child
    m.observe_syscall(ev[4].action)
    assert child.state == SockState.NEW
    m.observe_syscall(ev[5].action)
    assert child.state == SockState.ACTIVE_CONNECTING
    m.observe_syscall(ev[6].action)
    assert child.closed


def test_icmp_echoed_seq_is_mapped():
    m = listening()
    establish_passive(m)
    icmp = parse_script("0 < icmp unreachable frag_needed mtu 1200 [1:1461(1460)]\n"
                        ).events[0].action
    i = m.inbound_icmp(icmp)
    assert (i.icmp_type, i.code, i.mtu, i.protocol) == (3, 4, 1200, "tcp")
    assert (i.src, i.dst) == (REMOTE, LOCAL)
    assert (i.echoed_src, i.echoed_sport, i.echoed_dst, i.echoed_dport) == \
        (LOCAL, 8080, REMOTE, 40000)
    assert i.echoed_seq == (ISN + 1) & M32
    assert i.echoed_payload_len == 1460
    bad = parse_script("0 < icmp unreachable host_unreachable mtu 1200 [1:1(0)]\n"
                       ).events[0].action
    with pytest.raises(SeqMapError, match="MTU is only valid"):
        m.inbound_icmp(bad)


def test_helpers():
    assert flags_str(TH_SYN | TH_ACK) == "S."
    assert flags_str(TH_FIN | TH_PSH | TH_ACK) == "FP."
    assert flags_str(0) == "-"
    assert icmp_type_code("unreachable", "port_unreachable") == (3, 3)
    assert icmp_type_code("packet_too_big", None, ipv6=True) == (2, 0)
    assert icmp_type_code("type_42", "code_7") == (42, 7)
    with pytest.raises(SeqMapError):
        icmp_type_code("nonsense", None)
    assert parse_option_kinds(opts(("mss", 1460), "nop", "sackOK", "eol")) == [
        (2, b"\x05\xb4"), (1, b""), (4, b""), (0, b"")]
