"""The TCP core as packet traces: segment in, exactly these segments out (virtual time)."""
from __future__ import annotations

import pytest

from tests.core.trace import ACK, FIN, PSH, RST, SYN, Recorder, Trace
from ustack.tcp.connection import retransmits_timed_out


# ------------------------------------------------------------------------- opening
def test_syn_ack_options_like_linux():
    t = Trace()
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 65535, mss=1460, sack_ok=True, wscale=7, ts_val=100, ts_ecr=0)
    synack = t.expect(flags=SYN | ACK, ack=1001, mss=1460, sack_ok=True, wscale=10,
                      has_ts=True, ts_ecr=100)
    # Linux: 64K rounded down to whole segments of mss - TS option = 45 * 1448
    assert synack.window == 65160
    assert t.mib["TcpPassiveOpens"] == 0  # counted when the handshake completes


def test_syn_options_order_bytes():
    t = Trace()
    t.host.connect("198.18.0.1", 80)
    pkt = t.host.outbox[0]
    opts = pkt[40:60]
    assert opts[:4] == bytes([2, 4, 0x05, 0xB4])            # mss 1460
    assert opts[4:8] == bytes([4, 2, 8, 10])                 # sackOK, TS kind/len
    assert opts[16:20] == bytes([1, 3, 3, 10])               # nop, wscale 10 (rmem 32 MB)
    seg = t.expect(flags=SYN, window=64240)                  # 44 * 1460, as Linux's SYN
    assert seg.ts_ecr == 0


def test_handshake_without_options_peer():
    t = Trace()
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 8192, mss=536)
    synack = t.expect(flags=SYN | ACK, has_ts=False, wscale=-1, sack_ok=False, mss=1460)
    t.inject(ACK, 1001, synack.seq + 1, 8192)
    conn = t.host.listeners[80].accept()
    assert conn.mss == 536 and conn.snd_wscale == 0 and not conn.ts_ok
    conn.send(b"x" * 2000)
    segs = t.output()
    assert [len(s.payload) for s in segs] == [536, 536, 536, 392]


def test_passive_open_counts_and_accept_queue():
    t = Trace()
    conn, rec, _ = t.passive_open()
    assert t.mib["TcpPassiveOpens"] == 1 and t.mib["TcpCurrEstab"] == 1


def test_active_open_and_refused():
    t = Trace()
    conn, rec, syn = t.active_open()
    assert t.mib["TcpActiveOpens"] == 1
    t2 = Trace()
    rec2 = Recorder()
    c2 = t2.host.connect("198.18.0.1", 81, user=rec2)
    syn2 = t2.expect(flags=SYN)
    t2.inject(RST | ACK, 0, syn2.seq + 1, 0, sport=81, dport=c2.lport)
    assert isinstance(rec2.error, ConnectionRefusedError)
    assert c2.state_name == "CLOSED" and t2.host.conns == {}


def test_synsent_bad_ack_gets_reset():
    t = Trace()
    c = t.host.connect("198.18.0.1", 80)
    syn = t.expect(flags=SYN)
    t.inject(SYN | ACK, 7, syn.seq + 100, 65535, sport=80, dport=c.lport)
    t.expect(flags=RST, seq=syn.seq + 100)
    assert c.state_name == "SYN-SENT"


def test_syn_retries_time_out_like_linux():
    """tcp_syn_retries=6 plus tcp_syn_linear_timeouts=4 (Linux 6.18): four 1 s timeouts, then
    doubling; SYNs at 1, 2, 3, 4, 5, 7, 11, 19, 35, 67 s; failure at 131 s."""
    t = Trace()
    rec = Recorder()
    t.host.connect("198.18.0.1", 80, user=rec)
    t.expect(flags=SYN)
    start = t.now
    times = []
    while not rec.closed and t.now - start < 200_000:
        t.advance(100)
        for seg in t.output():
            assert seg.flags == SYN
            times.append(t.now - start)
    assert times == [1000, 2000, 3000, 4000, 5000, 7000, 11000, 19000, 35000, 67000]
    assert isinstance(rec.error, TimeoutError)
    assert 131_000 <= t.now - start <= 131_100
    assert t.mib["TcpAttemptFails"] == 1 and t.mib["TCPSynRetrans"] == 10


def test_retransmits_timed_out_model():
    assert retransmits_timed_out(6, 1000) == 127_000       # tcp_model_timeout
    assert retransmits_timed_out(8, 200) == 102_200        # orphan retries: 0 means 8
    assert retransmits_timed_out(15, 200) == 924_600       # tcp_retries2


# ------------------------------------------------------------------------- resets for nobody
def test_syn_to_closed_port_gets_rst_ack():
    t = Trace()
    t.inject(SYN, 1000, 0, 65535, dport=9, mss=1460)
    t.expect(flags=RST | ACK, seq=0, ack=1001, window=0)
    assert t.mib["TcpOutRsts"] == 1


def test_ack_to_unknown_connection_gets_rst_at_its_ack():
    t = Trace()
    t.inject(ACK, 1000, 777, 65535, dport=9)
    t.expect(flags=RST, seq=777, ack=0)


def test_rst_to_unknown_connection_is_ignored():
    t = Trace()
    t.inject(RST, 1000, 0, 0, dport=9)
    t.expect_nothing()


def test_data_without_ack_to_closed_port():
    t = Trace()
    t.inject(FIN | PSH, 1000, 0, 65535, payload=b"abc", dport=9)
    t.expect(flags=RST | ACK, seq=0, ack=1004)


# ------------------------------------------------------------------------- data
def test_in_order_data_quickack_then_delayed():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    # quickack mode at the start: the first segments are ACKed at once
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"a" * 100, ts_val=102, ts_ecr=0)
    t.expect(flags=ACK, ack=1101)
    assert bytes(rec.data) == b"a" * 100


def test_delayed_ack_after_pingpong():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.quickack = 0
    conn.pingpong = True
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"q" * 10, ts_val=102)
    t.expect_nothing()
    t.advance(39)
    t.expect_nothing()
    t.advance(1)
    t.expect(flags=ACK, ack=1011)
    assert t.mib["TcpExtDelayedACKs"] == 1


def test_out_of_order_data_is_sacked_and_reassembled():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    t.inject(ACK, 1101, iss + 1, 502, payload=b"B" * 100, ts_val=102)
    seg = t.expect(flags=ACK, ack=1001)
    assert seg.sack_blocks == ((1101, 1201),)
    t.inject(ACK, 1001, iss + 1, 502, payload=b"A" * 100, ts_val=103)
    t.expect(flags=ACK, ack=1201, sack_blocks=())
    assert bytes(rec.data) == b"A" * 100 + b"B" * 100


def test_old_duplicate_data_is_acked_at_once():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    t.inject(ACK, 1001, iss + 1, 502, payload=b"A" * 10, ts_val=102)
    t.expect(flags=ACK, ack=1011)
    t.inject(ACK, 1001, iss + 1, 502, payload=b"A" * 10, ts_val=103)
    t.expect(flags=ACK, ack=1011)
    assert bytes(rec.data) == b"A" * 10


def test_out_of_window_segment_gets_dup_ack():
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(ACK, 1001 + 10_000_000, synack.seq + 1, 502, payload=b"x", ts_val=102)
    t.expect(flags=ACK, ack=1001)
    assert rec.data == b""


def test_send_segments_by_mss_and_nagle():
    t = Trace()
    conn, rec, synack = t.passive_open()
    conn.send(b"x" * 3000)
    segs = t.output()
    assert [len(s.payload) for s in segs] == [1448, 1448, 104]
    assert segs[-1].flags == ACK | PSH and segs[0].flags == ACK
    conn.send(b"y" * 10)  # Nagle: a small segment waits while data is in flight
    t.expect_nothing()
    t.inject(ACK, 1001, synack.seq + 1 + 3000, 502, ts_val=102, ts_ecr=0)
    t.expect(flags=ACK | PSH, length=10)


def test_tail_loss_probe_then_rto_and_backoff():
    """Linux with SACK: a loss probe (TLP) first, then the RTO a full RTO later, doubling."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    conn.send(b"z" * 100)
    first = t.expect(length=100)
    rto = conn.rto
    assert rto >= 200
    t.advance(rto - 1)
    t.expect_nothing()
    t.advance(1)
    t.expect(length=100, seq=first.seq)          # the probe: the last segment again
    assert t.mib["TCPLossProbes"] == 1
    t.advance(rto - 1)
    t.expect_nothing()
    t.advance(1)
    t.expect(length=100, seq=first.seq)          # the RTO, a full RTO after the probe
    t.advance(2 * rto - 1)
    t.expect_nothing()
    t.advance(1)
    t.expect(length=100, seq=first.seq)          # backed off: 2 x RTO
    assert t.mib["TcpRetransSegs"] == 3 and t.mib["TCPTimeouts"] == 2


def test_rto_without_sack_has_no_probe():
    t = Trace(net__ipv4__tcp_sack=0, net__ipv4__tcp_congestion_control="reno")
    conn, rec, synack = t.passive_open()
    conn.send(b"z" * 100)
    first = t.expect(length=100)
    rto = conn.rto
    t.advance(rto)
    t.expect(length=100, seq=first.seq)
    t.advance(2 * rto - 1)
    t.expect_nothing()
    t.advance(1)
    t.expect(length=100, seq=first.seq)
    assert t.mib["TCPLossProbes"] == 0


def test_fast_retransmit_on_three_dupacks_without_sack():
    """A peer without SACK: the third duplicate ACK marks the head lost (tcp_add_reno_sack,
    tcp_newreno_mark_lost), Recovery starts (TCPRenoRecovery) and the head goes again."""
    t = Trace(net__ipv4__tcp_sack=0, net__ipv4__tcp_congestion_control="reno")
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.nodelay = True
    conn.send(b"d" * (1448 * 5))
    segs = t.output()
    assert len(segs) == 5
    for i in range(2):
        t.inject(ACK, 1001, iss + 1, 502, ts_val=110 + i, ts_ecr=0)
    t.expect_nothing()
    t.inject(ACK, 1001, iss + 1, 502, ts_val=112, ts_ecr=0)
    t.expect(seq=iss + 1, length=1448)
    assert t.mib["TcpExtTCPFastRetrans"] == 1 and t.mib["TcpExtTCPRenoRecovery"] == 1
    assert conn.ssthresh == 5      # half the window (tcp_reno_ssthresh)


def test_plain_dupacks_do_not_recover_a_sack_connection():
    """With SACK agreed, duplicate ACKs without SACK blocks prove nothing (Linux counts
    "reno SACKs" only for non-SACK peers): no retransmission until the loss probe."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.nodelay = True
    conn.send(b"d" * (1448 * 5))
    assert len(t.output()) == 5
    for i in range(3):
        t.inject(ACK, 1001, iss + 1, 502, ts_val=110 + i)
    t.expect_nothing()


def test_sack_recovery_retransmits_the_hole():
    """SACK blocks for three segments after a hole: RACK marks the hole lost at once (no
    reordering seen, dupthresh segments SACKed: reo_wnd 0), SACK recovery starts and the
    hole is retransmitted; PRR lets one more segment out per segment delivered."""
    t = Trace(net__ipv4__tcp_congestion_control="reno")
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.nodelay = True
    mss = 1448
    conn.send(b"d" * (mss * 10))
    assert len(t.output()) == 10
    s = iss + 1
    t.advance(1)
    t.inject(ACK, 1001, s, 502, ts_val=112, sack_blocks=((s + mss, s + 4 * mss),))
    t.expect(seq=s, length=mss)
    assert t.mib["TcpExtTCPSackRecovery"] == 1 and t.mib["TcpExtTCPFastRetrans"] == 1
    assert conn.rec.lost_out == 1 and conn.rec.retrans_out == 1 and conn.rec.sacked_out == 3
    assert conn.ssthresh == 5
    # the retransmission is ACKed with the rest: recovery ends at high_seq with cwnd =
    # ssthresh (tcp_end_cwnd_reduction), then the same ACK's 7 newly delivered segments grow
    # it in congestion avoidance (tcp_cong_control runs after tcp_fastretrans_alert)
    t.advance(10)
    t.inject(ACK, 1001, s + 10 * mss, 502, ts_val=113)
    assert conn.rec.ca_state == 0 and conn.cwnd == 6 and conn.rec.packets_out == 0


def test_zero_window_probe():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    t.inject(ACK, 1001, iss + 1, 0, ts_val=102)   # peer closes its window
    conn.send(b"w" * 10)
    t.expect_nothing()
    t.advance(conn.rto)
    probe = t.expect(flags=ACK, seq=iss, length=0)  # seq snd_una - 1 draws an ACK
    t.inject(ACK, 1001, iss + 1, 502, ts_val=103)
    t.expect(flags=ACK | PSH, length=10)
    assert probe


# ------------------------------------------------------------------------- closing
def test_active_close_to_time_wait_and_expiry():
    t = Trace(ustack__tcp_timewait_len=60)
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.close()
    t.expect(flags=FIN | ACK, seq=iss + 1, ack=1001)
    assert conn.state_name == "FIN-WAIT-1" and conn.orphan
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    t.expect_nothing()
    t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=103)
    t.expect(flags=ACK, seq=iss + 2, ack=1002)
    states = [c.state for c in t.host.connections() if c.remote[1]]
    assert states == ["TIME-WAIT"] and t.host.conns == {}
    # a retransmitted FIN is ACKed again and restarts the clock
    t.advance(30_000)
    t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=104)
    t.expect(flags=ACK, seq=iss + 2, ack=1002)
    t.advance(59_999)
    assert len(t.host.tw) == 1
    t.advance(1)
    assert len(t.host.tw) == 0 and t.mib["TW"] == 1


def test_passive_close_three_segment_close():
    """After data, Linux delays the ACK of the peer's FIN (pingpong, ato 40 ms); close()
    within that time sends FIN with the ACK: a three-segment close."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"request", ts_val=102)
    t.expect(flags=ACK, ack=1008)                 # quick ACK for the first data
    t.inject(FIN | ACK, 1008, iss + 1, 502, ts_val=103)
    t.expect_nothing()
    assert conn.state_name == "CLOSE-WAIT" and rec.events[-1] == "eof"
    t.advance(10)
    conn.close()
    t.expect(flags=FIN | ACK, seq=iss + 1, ack=1009)
    assert conn.state_name == "LAST-ACK"
    t.inject(ACK, 1009, iss + 2, 502, ts_val=104)
    assert conn.state_name == "CLOSED" and t.host.conns == {} and len(t.host.tw) == 0


def test_passive_close_slow_app_acks_fin_after_ato():
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(ACK | PSH, 1001, synack.seq + 1, 502, payload=b"x", ts_val=102)
    t.expect(flags=ACK, ack=1002)
    t.inject(FIN | ACK, 1002, synack.seq + 1, 502, ts_val=103)
    t.advance(39)
    t.expect_nothing()
    t.advance(1)
    t.expect(flags=ACK, ack=1003)


def test_fin_without_data_acked_at_next_tick():
    """No data ever received: ato is 0, so the delayed ACK of a FIN leaves at the next tick."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(FIN | ACK, 1001, synack.seq + 1, 502, ts_val=102)
    t.expect_nothing()
    t.advance(1)
    t.expect(flags=ACK, ack=1002)
    assert t.mib["DelayedACKs"] == 1


def test_retransmitted_fin_in_close_wait_gets_dsack():
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(FIN | ACK, 1001, synack.seq + 1, 502, ts_val=102)
    t.advance(1)
    t.expect(flags=ACK, ack=1002)
    t.inject(FIN | ACK, 1001, synack.seq + 1, 502, ts_val=103)
    seg = t.expect(flags=ACK, ack=1002)
    assert seg.sack_blocks == ((1001, 1002),)
    assert t.mib["DelayedACKLost"] == 1


def test_small_first_write_is_not_held_whatever_the_isn():
    """Nagle (Minshall) must not hold the first small write: snd_sml starts at the ISN."""
    for secret in (b"a", b"b", b"c", b"d", b"e", b"f"):
        t = Trace()
        t.host.secret.__init__(secret)
        conn, rec, synack = t.passive_open()
        conn.send(b"hello")
        t.expect(length=5)


def test_simultaneous_close_through_closing():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.close()
    t.expect(flags=FIN | ACK, seq=iss + 1)
    t.inject(FIN | ACK, 1001, iss + 1, 502, ts_val=102)   # their FIN, ours not yet ACKed
    t.expect(flags=ACK, ack=1002)
    assert conn.state_name == "CLOSING"
    t.inject(ACK, 1002, iss + 2, 502, ts_val=103)
    assert [c.state for c in t.host.connections() if c.remote[1]] == ["TIME-WAIT"]


def test_close_with_unread_data_resets():
    t = Trace()
    conn, rec, synack = t.passive_open()
    conn.user = Recorder.__new__(Recorder)  # a user that never reads
    conn.user.__init__()
    conn.user.tcp_data = lambda c: None
    t.inject(ACK | PSH, 1001, synack.seq + 1, 502, payload=b"unread", ts_val=102)
    t.output()
    conn.close()
    t.expect(flags=RST | ACK, seq=synack.seq + 1)
    assert t.mib["TCPAbortOnClose"] == 1 and t.host.conns == {}


def test_linger_zero_resets():
    t = Trace()
    conn, rec, synack = t.passive_open()
    conn.linger = 0
    conn.close()
    t.expect(flags=RST | ACK)
    assert t.mib["TCPAbortOnData"] == 1


def test_fin_after_queued_data():
    t = Trace()
    conn, rec, synack = t.passive_open()
    conn.send(b"m" * 100)
    conn.close()
    segs = t.output()
    # the data went out at once; the FIN follows as soon as Nagle lets it (here: with nothing
    # else queued, in its own segment right behind)
    assert segs[0].payload == b"m" * 100
    assert segs[-1].flags & FIN and segs[-1].seq == synack.seq + 101


def test_shutdown_write_keeps_reading_and_fin_wait2_has_no_timeout():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.shutdown_write()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    assert conn.state_name == "FIN-WAIT-2"
    t.advance(3_600_000)
    assert conn.state_name == "FIN-WAIT-2" and conn.timer_info() is None
    t.inject(ACK | PSH, 1001, iss + 2, 502, payload=b"late", ts_val=103)
    assert bytes(rec.data) == b"late"
    with pytest.raises(BrokenPipeError):
        conn.send(b"no")


def test_orphan_fin_wait2_becomes_record_and_vanishes():
    t = Trace()
    t.host.sysctl["net.ipv4.tcp_fin_timeout"] = 30
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.close()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    assert t.host.conns == {}
    infos = [c for c in t.host.connections() if c.remote[1]]
    assert [(c.state, c.substate) for c in infos] == [("FIN-WAIT-2", "FIN-WAIT-2")]
    t.advance(29_999)
    assert len(t.host.tw) == 1
    t.advance(1)
    assert len(t.host.tw) == 0


def test_peer_reset_in_established():
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(RST, 1001, 0, 0)
    assert isinstance(rec.error, ConnectionResetError) and t.mib["TcpEstabResets"] == 1


def test_in_window_inexact_rst_gets_challenge_ack():
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(RST, 1005, 0, 0)
    t.expect(flags=ACK, ack=1001)
    assert conn.state_name == "ESTAB" and t.mib["TCPChallengeACK"] == 1


def test_syn_in_established_gets_challenge_ack():
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(SYN, 5000, 0, 65535, mss=1460)
    t.expect(flags=ACK, ack=1001)
    assert t.mib["TCPSYNChallenge"] == 1


def test_time_wait_rst_assassination_and_rfc1337():
    for rfc1337, survives in ((0, False), (1, True)):
        t = Trace(net__ipv4__tcp_rfc1337=rfc1337)
        conn, rec, synack = t.passive_open()
        iss = synack.seq
        conn.close()
        t.output()
        t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=102)
        t.output()
        assert len(t.host.tw) == 1
        t.inject(RST, 1002, 0, 0, ts_val=103)
        assert (len(t.host.tw) == 1) == survives


def test_time_wait_out_of_window_ack_rate_limited():
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.close()
    t.output()
    t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=102)
    t.output()
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=103)
    t.expect(flags=ACK, seq=iss + 2, ack=1002)
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=104)
    t.expect_nothing()  # within tcp_invalid_ratelimit (500 ms)
    assert t.mib["TCPACKSkippedTimeWait"] == 1
    t.advance(500)
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=105)
    t.expect(flags=ACK)


def test_max_tw_buckets_overflow():
    t = Trace(net__ipv4__tcp_max_tw_buckets=1)
    for sport in (40000, 40001):
        conn, rec, synack = t.passive_open(sport=sport)
        conn.close()
        t.output()
        t.inject(FIN | ACK, 1001, synack.seq + 2, 502, ts_val=102, sport=sport)
        t.output()
    assert len(t.host.tw) == 1 and t.mib["TCPTimeWaitOverflow"] == 1


def test_ephemeral_ports_exhausted_message():
    t = Trace(net__ipv4__ip_local_port_range="40000 40001")
    t.host.connect("198.18.0.1", 80)
    t.host.connect("198.18.0.1", 80)
    with pytest.raises(OSError, match="40000-40001") as exc:
        t.host.connect("198.18.0.1", 80)
    assert exc.value.errno == 99


def test_ts_recent_follows_the_peer_and_is_echoed():
    """RFC 7323 §4.3: ts_recent takes the TSval of in-order segments; our ACKs echo it (a stale
    echo makes the peer's RTT samples grow with the connection's age)."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(ACK | PSH, 1001, synack.seq + 1, 502, payload=b"a" * 10, ts_val=500, ts_ecr=0)
    t.expect(flags=ACK, ack=1011, ts_ecr=500)
    t.advance(1000)
    conn.send(b"b" * 10)
    t.expect(length=10, ts_ecr=500)
    t.inject(ACK, 1011, synack.seq + 11, 502, ts_val=900, ts_ecr=conn._tsval())
    assert conn.ts_recent == 900 and conn.srtt < 10


def test_zero_window_attack_cannot_pin_an_orphan():
    """The peer answers every zero-window probe of an orphan with window 0 (each answer resets
    the probe count, tcp_ack).  The orphan still dies without a RST once its backed-off probe
    interval reaches TCP_RTO_MAX and the backoff reaches tcp_orphan_retries (tcp_probe_timer:
    !alive && backoff >= max_probes; tcp_orphan_retries is 0 once not alive)."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(ACK, 1001, synack.seq + 1, 0, ts_val=102, ts_ecr=synack.ts_val)   # window 0
    conn.send(b"x" * 1000)
    conn.close()
    assert conn.orphan and conn.state_name == "FIN-WAIT-1"
    t.expect_nothing()
    start = t.now
    probes = 0
    while conn.state_name != "CLOSED" and t.now - start < 3_600_000:
        t.host.advance(t.host.next_deadline())
        for seg in t.output():
            assert not seg.flags & RST
            probes += 1
            t.inject(ACK, 1001, synack.seq + 1, 0, ts_val=200 + probes, ts_ecr=seg.ts_val)
            assert conn.probes == 0 or conn.state_name == "CLOSED"
    assert conn.state_name == "CLOSED" and t.mib["TCPAbortOnTimeout"] == 1
    lived = t.now - start
    assert probes > 8, probes                        # not killed by tcp_orphan_retries alone
    assert 120_000 < lived < 600_000, lived          # but within minutes


def test_paws_forgets_ts_recent_after_2147_seconds():
    """Linux 6.18 tcp_paws_check: ts_recent older than TCP_PAWS_WRAP (INT_MAX / USEC_PER_SEC =
    2147 s) no longer rejects an old TSval; before that the segment is dropped (PAWSEstab)
    and answered with a duplicate ACK."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    t.inject(ACK, 1001, synack.seq + 1, 502, payload=b"a" * 10, ts_val=5000, ts_ecr=0)
    t.expect(flags=ACK, ack=1011)
    t.advance(2_146_000)
    t.inject(ACK, 1011, synack.seq + 1, 502, payload=b"b" * 10, ts_val=4000, ts_ecr=0)
    t.expect(flags=ACK, ack=1011)                 # rejected: dup ACK
    assert t.mib["PAWSEstab"] == 1 and rec.data == b"a" * 10
    t.advance(1_000)
    t.inject(ACK, 1011, synack.seq + 1, 502, payload=b"b" * 10, ts_val=4000, ts_ecr=0)
    t.advance(200)
    t.expect(flags=ACK, ack=1021)                 # accepted
    assert t.mib["PAWSEstab"] == 1 and rec.data == b"a" * 10 + b"b" * 10


# ------------------------------------------------------------------------- ts_recent
def test_ts_recent_not_taken_from_an_ack_of_unsent_data():
    """tcp_ack: ts_recent is replaced (FLAG_UPDATE_TS_RECENT) only after the ACK passed the
    'older than snd_una - max_window' and 'beyond snd_nxt' checks.  A segment that ACKs data
    never sent is dropped with a challenge ACK; its huge TSval must not become ts_recent, or
    every later legitimate segment fails PAWS and the connection stalls."""
    t = Trace()
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    t.inject(ACK | PSH, 1001, iss + 1000, 502, payload=b"x" * 10, ts_val=0x70000000)
    t.expect(flags=ACK, ack=1001)                 # challenge ACK; the text is not taken
    assert conn.ts_recent == 101 and rec.data == b""
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"y" * 10, ts_val=102)
    t.advance(200)
    t.output()
    assert bytes(rec.data) == b"y" * 10 and conn.ts_recent == 102
    assert t.mib["TcpExtPAWSEstab"] == 0


def test_cwnd_restarts_after_idle():
    """tcp_slow_start_after_idle_check / tcp_cwnd_restart: a sender idle for longer than the
    RTO starts again from at most the initial window, halving once per RTO idle; with
    net.ipv4.tcp_slow_start_after_idle=0 the window is kept."""
    for after_idle, expect in ((1, 10), (0, 20)):
        t = Trace(net__ipv4__tcp_congestion_control="reno",
                  net__ipv4__tcp_slow_start_after_idle=after_idle)
        conn, rec, synack = t.passive_open()
        s = synack.seq + 1
        conn.nodelay = True
        conn.send(b"a" * 1448 * 10)
        assert len(t.output()) == 10
        t.advance(5)
        t.inject(ACK, 1001, s + 1448 * 10, 502, ts_val=105)
        assert conn.cwnd == 20
        t.advance(10_000)                       # idle for many RTOs
        t.output()
        conn.send(b"b" * 1448 * 30)
        assert conn.cwnd == expect
        assert len(t.output()) == expect


def test_connections_show_the_sender_state_like_ss_i():
    """stack.connections() / ustack ss: the congestion module, rto, rtt/rttvar, mss, cwnd,
    ssthresh once set, retransmissions, lost and SACKed segments and the recovery state."""
    t = Trace(net__ipv4__tcp_congestion_control="reno")
    conn, rec, synack = t.passive_open()
    s = synack.seq + 1
    conn.nodelay = True
    conn.send(b"d" * (1448 * 10))
    t.output()
    t.advance(1)
    t.inject(ACK, 1001, s, 502, ts_val=112, sack_blocks=((s + 1448, s + 4 * 1448),))
    t.output()
    line = [str(c) for c in t.host.connections() if c.state == "ESTAB"][0]
    for part in ("reno", "rto:", "rtt:", "mss:1448", "cwnd:", "ssthresh:5", "retrans:1/1",
                 "lost:1", "sacked:3", "ca_state:recovery"):
        assert part in line, (part, line)
