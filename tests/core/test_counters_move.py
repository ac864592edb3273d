"""Each Linux counter the core keeps moves on the path that moves it in Linux, and only there.

Every test drives the I/O-free core (tests/core/trace.py) through one path and asserts that a
counter went from its value before to the expected value after; most also drive a neighbouring
path and assert that it did NOT move the counter.  Each test's docstring names the Linux 6.18
function that increments the counter (net/ipv4/tcp_input.c, tcp_output.c, tcp_timer.c, tcp.c,
tcp_ipv4.c, tcp_minisocks.c, inet_timewait_sock.c).

Tests marked xfail(strict=True) are written as Linux behaves and fail on ustack today: the
reason says where ustack differs.  They turn into failures (XPASS) once the core is fixed, so
the marker must then be removed.

Counter names are nstat names (``TcpExtTW``); ``Trace.mib`` is the ``Counters`` view, so a
misspelt name raises KeyError instead of reading a silent zero.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.core.trace import ACK, FIN, PSH, RST, SYN, Recorder, Trace
from ustack.wire import build_tcp, internet_checksum, ip_to_int

PEER = ip_to_int("198.18.0.1")
ME = ip_to_int("198.18.0.2")


# ------------------------------------------------------------------------- helpers
class Counts:
    """A snapshot of some counters; `moved(name)` is how far one went since the snapshot."""

    def __init__(self, t: Trace, *names: str) -> None:
        self.t = t
        self.before = {n: t.mib[n] for n in names}

    def moved(self, name: str) -> int:
        return self.t.mib[name] - self.before[name]

    def assert_moved(self, **want: int) -> None:
        got = {n: self.moved(n) for n in want}
        assert got == want, f"counter deltas {got}, expected {want} (before: {self.before})"


class Sink(Recorder):
    """A connection user that never reads: received bytes stay in the receive queue."""

    def tcp_data(self, conn: Any) -> None:
        self.events.append("data")


def run_timers_until(t: Trace, done: Callable[[], bool], limit: int = 200) -> None:
    """Jump from timer deadline to timer deadline until `done()`."""
    for _ in range(limit):
        if done():
            return
        deadline = t.host.next_deadline()
        assert deadline is not None, "no timer pending, and the awaited event never came"
        t.host.advance(deadline)
    raise AssertionError(f"not done after {limit} timer firings")


def fire_until_closed(t: Trace, conn: Any, names: tuple[str, ...]) -> Counts:
    """Run the timers until `conn` closes; return the counters as they were just before the
    firing that closed it."""
    snap = Counts(t, *names)
    for _ in range(200):
        snap = Counts(t, *names)
        deadline = t.host.next_deadline()
        assert deadline is not None, "no timer pending but the connection is still open"
        t.host.advance(deadline)
        t.output()
        if conn.state_name == "CLOSED":
            return snap
    raise AssertionError("the connection never timed out")


def established(**sysctl: Any) -> tuple[Trace, Any, Recorder, int]:
    """A passive open on port 80: (trace, connection, recorder, our ISS).  The peer's ISN is
    1000, so rcv_nxt is 1001; its last TSval is 101."""
    t = Trace(**sysctl)
    conn, rec, synack = t.passive_open()
    return t, conn, rec, synack.seq


def active_close_to_time_wait(t: Trace, sport: int = 40000) -> tuple[Any, int]:
    """close() after a passive open, the peer ACKs our FIN together with its own: TIME-WAIT."""
    conn, rec, synack = t.passive_open(sport=sport)
    iss = synack.seq
    conn.close()
    t.expect(flags=FIN | ACK, seq=iss + 1)
    t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=102, sport=sport)
    t.expect(flags=ACK, ack=1002)
    return conn, iss


def orphan_in_fin_wait2_record(t: Trace) -> int:
    """close(), the peer ACKs the FIN only; with tcp_fin_timeout below the TIME-WAIT length the
    orphan becomes a FIN-WAIT-2 record at once.  Returns our ISS."""
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.close()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    t.expect_nothing()
    assert t.host.conns == {}
    assert [(c.state, c.substate) for c in t.host.connections() if c.remote[1]] == \
        [("FIN-WAIT-2", "FIN-WAIT-2")]
    return iss


def fix_tcp_checksum(pkt: bytearray) -> None:
    ihl = (pkt[0] & 0x0F) * 4
    pkt[ihl + 16:ihl + 18] = b"\0\0"
    seg = bytes(pkt[ihl:])
    pseudo = bytes(pkt[12:20]) + bytes([0, 6]) + len(seg).to_bytes(2, "big")
    csum = internet_checksum(pseudo + seg)
    pkt[ihl + 16:ihl + 18] = csum.to_bytes(2, "big")


def syn_packet(dport: int = 80) -> bytearray:
    return bytearray(build_tcp(PEER, ME, 40000, dport, 1000, 0, SYN, 65535, mss=1460))


# ------------------------------------------------------------------------- TIME-WAIT
def test_tw_counted_when_a_time_wait_record_is_made():
    """TcpExtTW: __inet_twsk_schedule (inet_timewait_sock.c, called from tcp_time_wait) counts
    LINUX_MIB_TIMEWAITED when it first arms a record's timer for more than 4 s; re-arming
    (inet_twsk_reschedule) and lifetimes of at most 4 s (TWKilled) do not count TW."""
    t = Trace()
    c = Counts(t, "TcpExtTW", "TcpExtTWKilled")
    conn, iss = active_close_to_time_wait(t)
    c.assert_moved(TcpExtTW=1, TcpExtTWKilled=0)
    assert len(t.host.tw) == 1
    # a retransmitted FIN re-arms the record: not a new record, no count
    c = Counts(t, "TcpExtTW", "TcpExtTWKilled")
    t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=103)
    t.expect(flags=ACK, ack=1002)
    c.assert_moved(TcpExtTW=0, TcpExtTWKilled=0)

    # a FIN-WAIT-2 record of 3 s is TWKilled, and its FIN (-> true TIME-WAIT) re-arms only
    t = Trace(net__ipv4__tcp_fin_timeout=3)
    c = Counts(t, "TcpExtTW")
    iss = orphan_in_fin_wait2_record(t)
    t.inject(FIN | ACK, 1001, iss + 2, 502, ts_val=103)
    t.expect(flags=ACK, ack=1002)
    assert [c2.substate for c2 in t.host.connections() if c2.remote[1]] == ["TIME-WAIT"]
    c.assert_moved(TcpExtTW=0)


def test_twkilled_counted_for_a_short_fin_wait2_record():
    """TcpExtTWKilled: __inet_twsk_schedule counts LINUX_MIB_TIMEWAITKILLED when a record is
    armed for at most 4 s: here tcp_time_wait(sk, TCP_FIN_WAIT2, tmo) with tcp_fin_timeout=3
    from tcp_rcv_state_process (TCP_FIN_WAIT1, the orphan's FIN ACKed)."""
    t = Trace(net__ipv4__tcp_fin_timeout=3)
    c = Counts(t, "TcpExtTWKilled", "TcpExtTW")
    orphan_in_fin_wait2_record(t)
    c.assert_moved(TcpExtTWKilled=1, TcpExtTW=0)
    # a normal 60 s TIME-WAIT does not count TWKilled
    t = Trace()
    c = Counts(t, "TcpExtTWKilled")
    active_close_to_time_wait(t)
    c.assert_moved(TcpExtTWKilled=0)


def test_time_wait_overflow_when_max_tw_buckets_reached():
    """TcpExtTCPTimeWaitOverflow: tcp_time_wait (tcp_minisocks.c) when inet_twsk_alloc fails
    because tcp_max_tw_buckets records exist; the connection just closes (no TW count)."""
    t = Trace(net__ipv4__tcp_max_tw_buckets=1)
    c = Counts(t, "TcpExtTCPTimeWaitOverflow", "TcpExtTW")
    active_close_to_time_wait(t, sport=40000)
    c.assert_moved(TcpExtTCPTimeWaitOverflow=0, TcpExtTW=1)    # the first one fits
    c = Counts(t, "TcpExtTCPTimeWaitOverflow", "TcpExtTW")
    active_close_to_time_wait(t, sport=40001)
    c.assert_moved(TcpExtTCPTimeWaitOverflow=1, TcpExtTW=0)
    assert len(t.host.tw) == 1 and t.host.conns == {}


def test_ack_skipped_time_wait_rate_limit():
    """TcpExtTCPACKSkippedTimeWait: tcp_timewait_check_oow_rate_limit -> __tcp_oow_rate_limited
    (tcp_minisocks.c / tcp_input.c): a second out-of-window segment within
    tcp_invalid_ratelimit (500 ms) gets no ACK from the TIME-WAIT record."""
    t = Trace()
    conn, iss = active_close_to_time_wait(t)
    c = Counts(t, "TcpExtTCPACKSkippedTimeWait")
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=103)
    t.expect(flags=ACK, seq=iss + 2, ack=1002)                # the first is answered
    c.assert_moved(TcpExtTCPACKSkippedTimeWait=0)
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=104)
    t.expect_nothing()
    c.assert_moved(TcpExtTCPACKSkippedTimeWait=1)
    t.advance(500)                                            # the limit has passed
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=105)
    t.expect(flags=ACK)
    c.assert_moved(TcpExtTCPACKSkippedTimeWait=1)


def test_ack_skipped_fin_wait2_rate_limit():
    """TcpExtTCPACKSkippedFinWait2: tcp_timewait_state_process, substate TCP_FIN_WAIT2, an
    out-of-window segment -> tcp_timewait_check_oow_rate_limit(..., TCPACKSKIPPEDFINWAIT2)."""
    t = Trace(net__ipv4__tcp_fin_timeout=3)
    iss = orphan_in_fin_wait2_record(t)
    c = Counts(t, "TcpExtTCPACKSkippedFinWait2", "TcpExtTCPACKSkippedTimeWait")
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=103)
    t.expect(flags=ACK, seq=iss + 2, ack=1001)
    c.assert_moved(TcpExtTCPACKSkippedFinWait2=0)
    t.inject(ACK, 999_999, iss + 2, 502, ts_val=104)
    t.expect_nothing()
    c.assert_moved(TcpExtTCPACKSkippedFinWait2=1, TcpExtTCPACKSkippedTimeWait=0)


def test_paws_timewait_rejects_an_old_timestamp():
    """TcpExtPAWSTimewait: tcp_timewait_state_process counts LINUX_MIB_PAWS_TW_REJECTED when
    tcp_paws_reject fails a segment at a TIME-WAIT record (it is then ACKed)."""
    t = Trace()
    conn, iss = active_close_to_time_wait(t)      # the record's ts_recent is 102
    c = Counts(t, "TcpExtPAWSTimewait")
    t.inject(ACK, 1002, iss + 2, 502, ts_val=200)  # in window, fresh timestamp: silent
    t.expect_nothing()
    c.assert_moved(TcpExtPAWSTimewait=0)
    t.inject(ACK, 1002, iss + 2, 502, ts_val=50)   # TSval older than ts_recent (now 200)
    t.expect(flags=ACK, ack=1002)
    c.assert_moved(TcpExtPAWSTimewait=1)
    assert len(t.host.tw) == 1


# ------------------------------------------------------------------------- aborts
def test_abort_on_close_with_unread_data():
    """TcpExtTCPAbortOnClose: __tcp_close (tcp.c) when data_was_unread: RST, not FIN."""
    t, conn, rec, iss = established()
    conn.user = Sink()
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"unread", ts_val=102)
    t.output()
    c = Counts(t, "TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnData")
    conn.close()
    t.expect(flags=RST | ACK, seq=iss + 1)
    c.assert_moved(TcpExtTCPAbortOnClose=1, TcpExtTCPAbortOnData=0)
    # all data read: close() sends FIN and counts nothing
    t, conn, rec, iss = established()
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"read", ts_val=102)
    t.output()
    assert bytes(rec.data) == b"read"
    c = Counts(t, "TcpExtTCPAbortOnClose")
    conn.close()
    t.expect(flags=FIN | ACK)
    c.assert_moved(TcpExtTCPAbortOnClose=0)


def _abort_linger_zero(t: Trace, conn: Any, iss: int) -> None:
    conn.linger = 0
    conn.close()
    t.expect(flags=RST | ACK)


def _abort_data_in_fin_wait1(t: Trace, conn: Any, iss: int) -> None:
    conn.close()
    t.expect(flags=FIN | ACK)
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"late", ts_val=102)  # FIN not ACKed
    t.expect(flags=RST)


def _abort_data_with_ack_of_fin(t: Trace, conn: Any, iss: int) -> None:
    conn.close()
    t.expect(flags=FIN | ACK)
    t.inject(ACK | PSH, 1001, iss + 2, 502, payload=b"late", ts_val=102)  # FIN ACKed + data
    t.expect(flags=RST, seq=iss + 2)


def _abort_linger2_negative(t: Trace, conn: Any, iss: int) -> None:
    conn.linger2 = -1
    conn.close()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    t.expect(flags=RST, seq=iss + 2)


@pytest.mark.parametrize("path", [
    pytest.param(_abort_linger_zero, id="close-SO_LINGER-0"),
    pytest.param(_abort_data_in_fin_wait1, id="data-after-close-in-FIN-WAIT-1"),
    pytest.param(_abort_data_with_ack_of_fin, id="data-with-ACK-of-orphan-FIN"),
    pytest.param(_abort_linger2_negative, id="orphan-FIN-ACKed-TCP_LINGER2-negative"),
])
def test_abort_on_data(path):
    """TcpExtTCPAbortOnData: __tcp_close (SO_LINGER {on, 0}: tcp_disconnect) and
    tcp_rcv_state_process (tcp_input.c): new data after close() in FIN-WAIT-1/2 (step 7,
    RCV_SHUTDOWN), and case TCP_FIN_WAIT1 for an orphan whose FIN is ACKed with new data
    ("Receive out of order FIN after close()") or with TCP_LINGER2 < 0."""
    t, conn, rec, iss = established()
    c = Counts(t, "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose", "TcpExtTCPAbortOnLinger")
    path(t, conn, iss)
    c.assert_moved(TcpExtTCPAbortOnData=1, TcpExtTCPAbortOnClose=0, TcpExtTCPAbortOnLinger=0)
    assert t.host.conns == {} and len(t.host.tw) == 0


def test_abort_on_data_not_moved_by_a_graceful_close():
    t = Trace()
    c = Counts(t, "TcpExtTCPAbortOnData")
    active_close_to_time_wait(t)
    c.assert_moved(TcpExtTCPAbortOnData=0)


def test_abort_on_memory_too_many_orphans():
    """TcpExtTCPAbortOnMemory: __tcp_close -> tcp_check_oom (tcp_too_many_orphans) resets the
    new orphan.  Linux compares tcp_orphan_cache (refreshed every 100 ms) with
    tcp_max_orphans, so with tcp_max_orphans=1 the third orphan is reset for certain; the first
    is not."""
    t = Trace(net__ipv4__tcp_max_orphans=1)
    conns = []
    for sport in (40000, 40001, 40002):
        conn, rec, synack = t.passive_open(sport=sport)
        conns.append(conn)
    moved = []
    out = []
    for conn in conns:
        t.advance(200)
        t.output()
        c = Counts(t, "TcpExtTCPAbortOnMemory")
        conn.close()
        out.append([s.flags for s in t.output()])
        moved.append(c.moved("TcpExtTCPAbortOnMemory"))
    assert moved == [0, 0, 1], moved           # the cache holds 0, 1, then 2 other orphans
    assert out[0] == [FIN | ACK] and out[1] == [FIN | ACK] and RST | ACK in out[2]
    assert conns[0].state_name == "FIN-WAIT-1" and conns[2].state_name == "CLOSED"


def test_abort_on_memory_not_for_the_first_orphan_over_a_zero_limit():
    """TcpExtTCPAbortOnMemory: __tcp_close -> tcp_check_oom -> tcp_too_many_orphans reads
    tcp_orphan_cache << shift > sysctl_tcp_max_orphans; the cache does not yet hold the
    socket being closed, so with tcp_max_orphans=0 the first orphan lives on."""
    t, conn, rec, iss = established(net__ipv4__tcp_max_orphans=0)
    c = Counts(t, "TcpExtTCPAbortOnMemory")
    conn.close()
    c.assert_moved(TcpExtTCPAbortOnMemory=0)
    t.expect(flags=FIN | ACK)


@pytest.mark.parametrize("data_first", [
    pytest.param(False, id="FIN-only"),
    pytest.param(True, id="data-sent-before-close"),
])
def test_abort_on_memory_at_an_orphans_retransmission_timeout(data_first):
    """TcpExtTCPAbortOnMemory: tcp_out_of_resources (tcp_timer.c), from tcp_write_timeout
    for a SOCK_DEAD socket: tcp_check_oom(sk, shift) with tcp_orphan_cache counting every
    orphan, this one included; shift is 0 (lsndtime within 2 * TCP_RTO_MAX, do_reset); a RST
    goes out because the orphan sent within TCP_TIMEWAIT_LEN."""
    t = Trace(net__ipv4__tcp_max_orphans=1, net__ipv4__tcp_sack=0)
    a, _, synack_a = t.passive_open(sport=40000)
    b, _, _ = t.passive_open(sport=40001)
    if data_first:
        a.send(b"x" * 10)
        t.expect(length=10)
        t.inject(ACK, 1001, synack_a.seq + 11, 502, ts_val=102, sport=40000)
    c = Counts(t, "TcpExtTCPAbortOnMemory")
    a.close()
    t.advance(50)
    b.close()                                  # both live: the cache held 0, then 1 orphan
    t.output()
    c.assert_moved(TcpExtTCPAbortOnMemory=0)
    t.advance(a.t_rto - t.now)                 # a's RTO; b's comes 50 ms later
    c.assert_moved(TcpExtTCPAbortOnMemory=1)
    assert a.state_name == "CLOSED" and b.state_name == "FIN-WAIT-1"
    assert [s.flags for s in t.output()] == [RST | ACK]


def test_abort_on_memory_not_at_rto_when_orphans_are_at_the_limit():
    """TcpExtTCPAbortOnMemory: tcp_out_of_resources shifts the orphan count only when
    tcp_jiffies32 - lsndtime > 2 * TCP_RTO_MAX (or no reset is due)."""
    t = Trace(net__ipv4__tcp_max_orphans=3, net__ipv4__tcp_sack=0)
    conns = [t.passive_open(sport=sport)[0] for sport in (40000, 40001, 40002)]
    c = Counts(t, "TcpExtTCPAbortOnMemory")
    for conn in conns:
        conn.close()
        t.advance(10)
    t.output()
    first = conns[0]
    t.advance(first.t_rto - t.now)             # the first orphan's RTO: 3 orphans, limit 3
    c.assert_moved(TcpExtTCPAbortOnMemory=0)
    assert first.state_name == "FIN-WAIT-1"
    assert [s.flags for s in t.output()] == [FIN | ACK]


def test_abort_on_timeout_after_retransmissions():
    """TcpExtTCPAbortOnTimeout: tcp_write_err (tcp_timer.c), from tcp_retransmit_timer ->
    tcp_write_timeout when tcp_retries2 retransmissions have timed out; no RST is sent."""
    t, conn, rec, iss = established(net__ipv4__tcp_retries2=2, net__ipv4__tcp_sack=0)
    conn.send(b"x" * 100)
    t.expect(length=100)
    c = Counts(t, "TcpExtTCPAbortOnTimeout", "TcpOutRsts")
    t.advance(conn.rto)                                       # one retransmission: no abort
    t.expect(length=100)
    c.assert_moved(TcpExtTCPAbortOnTimeout=0)
    fire_until_closed(t, conn, ())
    c.assert_moved(TcpExtTCPAbortOnTimeout=1, TcpOutRsts=0)
    assert isinstance(rec.error, TimeoutError)


def test_abort_on_timeout_zero_window_probes():
    """TcpExtTCPAbortOnTimeout: tcp_probe_timer -> tcp_write_err once icsk_probes_out reaches
    tcp_retries2 without an answer from the peer."""
    t, conn, rec, iss = established(net__ipv4__tcp_retries2=2)
    t.inject(ACK, 1001, iss + 1, 0, ts_val=102)               # the peer closes its window
    conn.send(b"w" * 10)
    t.expect_nothing()
    c = Counts(t, "TcpExtTCPAbortOnTimeout")
    fire_until_closed(t, conn, ())
    c.assert_moved(TcpExtTCPAbortOnTimeout=1)
    assert isinstance(rec.error, TimeoutError)


def test_abort_on_timeout_syn_sent():
    """TcpExtTCPAbortOnTimeout: tcp_write_err, reached from tcp_write_timeout for SYN-SENT
    when icsk_retransmits >= tcp_syn_retries + tcp_syn_linear_timeouts."""
    t = Trace(net__ipv4__tcp_syn_retries=1, net__ipv4__tcp_syn_linear_timeouts=0)
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    t.expect(flags=SYN)
    c = Counts(t, "TcpExtTCPAbortOnTimeout", "TcpAttemptFails")
    fire_until_closed(t, conn, ())
    assert isinstance(rec.error, TimeoutError)
    c.assert_moved(TcpAttemptFails=1, TcpExtTCPAbortOnTimeout=1)


def test_abort_on_linger_close_in_fin_wait2():
    """TcpExtTCPAbortOnLinger: __tcp_close finds the socket in FIN-WAIT-2 with TCP_LINGER2 < 0:
    tcp_set_state(TCP_CLOSE) and tcp_send_active_reset."""
    t, conn, rec, iss = established()
    conn.shutdown_write()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    assert conn.state_name == "FIN-WAIT-2"
    conn.linger2 = -1
    c = Counts(t, "TcpExtTCPAbortOnLinger", "TcpExtTCPAbortOnData")
    conn.close()
    t.expect(flags=RST | ACK)
    c.assert_moved(TcpExtTCPAbortOnLinger=1, TcpExtTCPAbortOnData=0)
    # without TCP_LINGER2 the same close() leaves a FIN-WAIT-2 record and counts nothing
    t, conn, rec, iss = established()
    conn.shutdown_write()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1001, iss + 2, 502, ts_val=102)
    c = Counts(t, "TcpExtTCPAbortOnLinger")
    conn.close()
    t.expect_nothing()
    c.assert_moved(TcpExtTCPAbortOnLinger=0)


# ------------------------------------------------------------------------- PAWS, challenges
def test_paws_estab_rejects_old_data():
    """TcpExtPAWSEstab: tcp_validate_incoming (tcp_input.c) counts
    LINUX_MIB_PAWSESTABREJECTED for a segment failing tcp_paws_check that is not an old pure
    ACK (tcp_disordered_ack_check); the segment is dropped with a duplicate ACK."""
    t, conn, rec, iss = established()
    c = Counts(t, "TcpExtPAWSEstab")
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"stale", ts_val=50)   # ts_recent is 101
    t.expect(flags=ACK, ack=1001)
    c.assert_moved(TcpExtPAWSEstab=1)
    assert rec.data == b""
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"fresh", ts_val=102)
    t.output()
    c.assert_moved(TcpExtPAWSEstab=1)
    assert bytes(rec.data) == b"fresh"


def test_paws_estab_not_moved_by_an_old_pure_ack():
    """TcpExtPAWSOldAck, not PAWSEstab: tcp_validate_incoming (Linux 6.14+)."""
    t, conn, rec, iss = established()
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"a" * 10, ts_val=102)
    t.output()
    c = Counts(t, "TcpExtPAWSEstab", "TcpExtPAWSOldAck")
    t.inject(ACK, 1001, iss + 1, 502, ts_val=50)              # an old ACK, reordered
    c.assert_moved(TcpExtPAWSEstab=0, TcpExtPAWSOldAck=1)
    t.expect_nothing()


def test_challenge_ack_for_in_window_reset():
    """TcpExtTCPChallengeACK: tcp_send_challenge_ack (tcp_input.c), from tcp_validate_incoming
    for an in-window RST that is not exactly at rcv_nxt (RFC 5961 §3.2); a second one within
    tcp_invalid_ratelimit is skipped (TCPACKSkippedChallenge) by the per-socket limit."""
    t, conn, rec, iss = established()
    c = Counts(t, "TcpExtTCPChallengeACK", "TcpExtTCPACKSkippedChallenge")
    t.inject(RST, 1005, 0, 0)
    t.expect(flags=ACK, ack=1001)
    c.assert_moved(TcpExtTCPChallengeACK=1, TcpExtTCPACKSkippedChallenge=0)
    t.inject(RST, 1006, 0, 0)
    t.expect_nothing()
    c.assert_moved(TcpExtTCPChallengeACK=1, TcpExtTCPACKSkippedChallenge=1)
    assert conn.state_name == "ESTAB"
    # an exact RST resets without a challenge
    c = Counts(t, "TcpExtTCPChallengeACK")
    t.inject(RST, 1001, 0, 0)
    t.expect_nothing()
    c.assert_moved(TcpExtTCPChallengeACK=0)
    assert conn.state_name == "CLOSED"


def test_syn_challenge_in_established_and_close_wait():
    """TcpExtTCPSYNChallenge: tcp_validate_incoming, label syn_challenge; TcpInErrs moves too
    only when called from tcp_rcv_established (syn_inerr=1), not from tcp_rcv_state_process."""
    t, conn, rec, iss = established()
    c = Counts(t, "TcpExtTCPSYNChallenge", "TcpInErrs", "TcpExtTCPChallengeACK")
    t.inject(SYN, 5000, 0, 65535, mss=1460)
    t.expect(flags=ACK, ack=1001)
    c.assert_moved(TcpExtTCPSYNChallenge=1, TcpInErrs=1, TcpExtTCPChallengeACK=1)
    assert conn.state_name == "ESTAB"

    t, conn, rec, iss = established()
    t.inject(FIN | ACK, 1001, iss + 1, 502, ts_val=102)
    t.advance(1)
    t.output()
    assert conn.state_name == "CLOSE-WAIT"
    c = Counts(t, "TcpExtTCPSYNChallenge", "TcpInErrs")
    t.inject(SYN, 5000, 0, 65535, mss=1460)
    t.expect(flags=ACK, ack=1002)
    c.assert_moved(TcpExtTCPSYNChallenge=1, TcpInErrs=0)


# ------------------------------------------------------------------------- D-SACK
def test_dsack_old_sent_for_duplicate_data():
    """TcpExtTCPDSACKOldSent: tcp_dsack_set (tcp_input.c), from tcp_data_queue for a
    retransmission of data already received."""
    t, conn, rec, iss = established()
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"A" * 10, ts_val=102)
    t.expect(flags=ACK, ack=1011)
    c = Counts(t, "TcpExtTCPDSACKOldSent")
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"A" * 10, ts_val=103)
    seg = t.expect(flags=ACK, ack=1011)
    assert seg.sack_blocks == ((1001, 1011),)
    c.assert_moved(TcpExtTCPDSACKOldSent=1)


def test_dsack_old_sent_not_moved_by_out_of_order_sack():
    """TcpExtTCPDSACKOldSent: tcp_dsack_set only; a plain SACK for out-of-order data
    (tcp_data_queue_ofo) is no D-SACK."""
    t, conn, rec, iss = established()
    c = Counts(t, "TcpExtTCPDSACKOldSent", "TcpExtTCPDSACKOfoSent")
    t.inject(ACK, 1101, iss + 1, 502, payload=b"B" * 100, ts_val=102)
    seg = t.expect(flags=ACK, ack=1001)
    assert seg.sack_blocks == ((1101, 1201),)
    c.assert_moved(TcpExtTCPDSACKOldSent=0, TcpExtTCPDSACKOfoSent=0)


def test_dsack_recv_for_a_spurious_loss_probe():
    """TcpExtTCPDSACKRecv: tcp_check_dsack (tcp_input.c), from tcp_sacktag_write_queue in
    tcp_ack, when the first SACK block lies below the ACK number."""
    t, conn, rec, iss = established()
    conn.send(b"z" * 100)
    first = t.expect(length=100)
    run_timers_until(t, lambda: bool(t.host.outbox))
    t.expect(length=100, seq=first.seq)                       # the loss probe resends it
    c = Counts(t, "TcpExtTCPDSACKRecv")
    t.inject(ACK, 1001, first.seq + 100, 502, ts_val=102,
             sack_blocks=[(first.seq, first.seq + 100)])       # both copies arrived
    c.assert_moved(TcpExtTCPDSACKRecv=1)


# ------------------------------------------------------------------------- malformed input
def test_tcp_checksum_error():
    """TcpInCsumErrors and TcpInErrs: tcp_v4_rcv (tcp_ipv4.c), labels csum_error and
    bad_packet; the segment reaches no socket (no SYN-ACK, no RST)."""
    t = Trace()
    t.host.listen(80)
    pkt = syn_packet()
    pkt[20 + 16] ^= 0x5A                                      # corrupt the TCP checksum
    c = Counts(t, "TcpInCsumErrors", "TcpInErrs", "TcpInSegs", "IpExtInCsumErrors")
    t.host.receive(bytes(pkt))
    t.expect_nothing()
    c.assert_moved(TcpInCsumErrors=1, TcpInErrs=1, TcpInSegs=1, IpExtInCsumErrors=0)
    assert t.mib["InCsumErrors"] == t.mib["TcpInCsumErrors"]  # the bare name is TCP's


def test_tcp_data_offset_too_small():
    """TcpInErrs without TcpInCsumErrors: tcp_v4_rcv goes to bad_packet for doff < 5 before
    checking the checksum."""
    t = Trace()
    t.host.listen(80)
    pkt = syn_packet()
    pkt[20 + 12] = (4 << 4) | (pkt[20 + 12] & 0x0F)
    fix_tcp_checksum(pkt)
    c = Counts(t, "TcpInCsumErrors", "TcpInErrs")
    t.host.receive(bytes(pkt))
    t.expect_nothing()
    c.assert_moved(TcpInCsumErrors=0, TcpInErrs=1)


def test_ip_checksum_error_is_not_a_tcp_error():
    """IpExtInCsumErrors (ip_rcv_core) for a bad IPv4 header checksum: the datagram never
    reaches tcp_v4_rcv, so neither TcpInCsumErrors nor TcpInErrs moves."""
    t = Trace()
    t.host.listen(80)
    pkt = syn_packet()
    pkt[10] ^= 0x5A
    c = Counts(t, "TcpInCsumErrors", "TcpInErrs", "IpExtInCsumErrors", "TcpInSegs")
    t.host.receive(bytes(pkt))
    t.expect_nothing()
    c.assert_moved(TcpInCsumErrors=0, TcpInErrs=0, IpExtInCsumErrors=1, TcpInSegs=0)


def test_well_formed_segment_moves_no_error_counter():
    t = Trace()
    t.host.listen(80)
    c = Counts(t, "TcpInCsumErrors", "TcpInErrs")
    t.host.receive(bytes(syn_packet()))
    t.expect(flags=SYN | ACK)
    c.assert_moved(TcpInCsumErrors=0, TcpInErrs=0)


# ------------------------------------------------------------------------- opens and fails
def test_active_opens_counted_at_the_syn():
    """TcpActiveOpens: tcp_connect (tcp_output.c), when the SYN is sent; a passive open does
    not count it."""
    t = Trace()
    c = Counts(t, "TcpActiveOpens", "TcpPassiveOpens")
    t.host.connect("198.18.0.1", 80)
    t.expect(flags=SYN)
    c.assert_moved(TcpActiveOpens=1, TcpPassiveOpens=0)
    t = Trace()
    c = Counts(t, "TcpActiveOpens")
    t.passive_open()
    c.assert_moved(TcpActiveOpens=0)


def test_passive_opens_counted_at_the_third_ack():
    """TcpPassiveOpens: tcp_create_openreq_child (tcp_minisocks.c), when the handshake's ACK
    creates the child socket; the SYN (a request socket) and active opens do not count."""
    t = Trace()
    t.host.listen(80)
    c = Counts(t, "TcpPassiveOpens", "TcpActiveOpens")
    t.inject(SYN, 1000, 0, 65535, mss=1460, sack_ok=True, wscale=7, ts_val=100, ts_ecr=0)
    synack = t.expect(flags=SYN | ACK)
    c.assert_moved(TcpPassiveOpens=0)
    t.inject(ACK, 1001, synack.seq + 1, 502, ts_val=101, ts_ecr=synack.ts_val)
    c.assert_moved(TcpPassiveOpens=1, TcpActiveOpens=0)
    t = Trace()
    c = Counts(t, "TcpPassiveOpens")
    t.active_open()
    c.assert_moved(TcpPassiveOpens=0)


def _fail_refused(t: Trace) -> tuple[Any, Recorder]:
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    syn = t.expect(flags=SYN)
    t.inject(RST | ACK, 0, syn.seq + 1, 0, sport=80, dport=conn.lport)
    assert isinstance(rec.error, ConnectionRefusedError)
    return conn, rec


def _fail_syn_timeout(t: Trace) -> tuple[Any, Recorder]:
    t.host.sysctl["net.ipv4.tcp_syn_retries"] = 1
    t.host.sysctl["net.ipv4.tcp_syn_linear_timeouts"] = 0
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    t.expect(flags=SYN)
    fire_until_closed(t, conn, ())
    assert isinstance(rec.error, TimeoutError)
    return conn, rec


@pytest.mark.parametrize("path", [
    pytest.param(_fail_refused, id="RST-in-SYN-SENT"),
    pytest.param(_fail_syn_timeout, id="SYN-retries-exhausted"),
])
def test_attempt_fails_from_syn_sent(path):
    """TcpAttemptFails: tcp_done (tcp.c) for a socket in SYN-SENT (tcp_reset from
    tcp_rcv_synsent_state_process, tcp_write_err from tcp_write_timeout)."""
    t = Trace()
    c = Counts(t, "TcpAttemptFails", "TcpEstabResets")
    path(t)
    c.assert_moved(TcpAttemptFails=1, TcpEstabResets=0)


def test_attempt_fails_not_moved_by_close_in_syn_sent_or_established_reset():
    """close() in SYN-SENT is tcp_close_state -> tcp_set_state(TCP_CLOSE), not tcp_done; a
    reset of an established connection is EstabResets."""
    t = Trace()
    c = Counts(t, "TcpAttemptFails")
    conn = t.host.connect("198.18.0.1", 80)
    t.expect(flags=SYN)
    conn.close()
    assert conn.state_name == "CLOSED"
    t, conn, rec, iss = established()
    t.inject(RST, 1001, 0, 0)
    assert conn.state_name == "CLOSED"
    c.assert_moved(TcpAttemptFails=0)


def _embryonic_rst(t: Trace) -> None:
    t.inject(RST, 1001, 0, 0)                                  # exactly at rcv_nxt


def _embryonic_syn(t: Trace) -> None:
    t.inject(SYN, 1010, 0, 65535, mss=1460)                    # a new SYN inside the window


@pytest.mark.parametrize("path", [
    pytest.param(_embryonic_rst, id="RST"),
    pytest.param(_embryonic_syn, id="SYN"),
])
def test_attempt_fails_from_request_socket(path):
    """TcpAttemptFails: tcp_check_req (tcp_minisocks.c): "if (flg & (TCP_FLAG_RST |
    TCP_FLAG_SYN)) { TCP_INC_STATS(..., TCP_MIB_ATTEMPTFAILS); goto embryonic_reset; }"."""
    t = Trace()
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 65535, mss=1460, sack_ok=True, wscale=7)
    t.expect(flags=SYN | ACK)
    c = Counts(t, "TcpAttemptFails", "TcpExtEmbryonicRsts", "TcpExtTCPSYNChallenge")
    path(t)
    c.assert_moved(TcpAttemptFails=1, TcpExtEmbryonicRsts=1, TcpExtTCPSYNChallenge=0)
    assert t.host.conns == {}


def _reset_in_established(t: Trace, conn: Any, iss: int) -> None:
    t.inject(RST, 1001, 0, 0)


def _reset_in_close_wait(t: Trace, conn: Any, iss: int) -> None:
    t.inject(FIN | ACK, 1001, iss + 1, 502, ts_val=102)
    assert conn.state_name == "CLOSE-WAIT"
    t.inject(RST, 1002, 0, 0)


def _abort_with_unread_data(t: Trace, conn: Any, iss: int) -> None:
    conn.user = Sink()
    t.inject(ACK | PSH, 1001, iss + 1, 502, payload=b"unread", ts_val=102)
    conn.close()


def _retransmission_timeout(t: Trace, conn: Any, iss: int) -> None:
    t.host.sysctl["net.ipv4.tcp_retries2"] = 2
    conn.send(b"x" * 100)
    fire_until_closed(t, conn, ())


@pytest.mark.parametrize("path", [
    pytest.param(_reset_in_established, id="RST-in-ESTABLISHED"),
    pytest.param(_reset_in_close_wait, id="RST-in-CLOSE-WAIT"),
    pytest.param(_abort_with_unread_data, id="close-with-unread-data"),
    pytest.param(_retransmission_timeout, id="retransmission-timeout"),
])
def test_estab_resets(path):
    """TcpEstabResets: tcp_set_state (tcp.c) on TCP_CLOSE from ESTABLISHED or CLOSE-WAIT."""
    t, conn, rec, iss = established()
    c = Counts(t, "TcpEstabResets")
    path(t, conn, iss)
    assert conn.state_name == "CLOSED"
    c.assert_moved(TcpEstabResets=1)


def test_estab_resets_not_moved_by_graceful_closes():
    """FIN-WAIT-2 -> TIME-WAIT and LAST-ACK -> CLOSED pass tcp_set_state(TCP_CLOSE) from
    states other than ESTABLISHED and CLOSE-WAIT."""
    t = Trace()
    c = Counts(t, "TcpEstabResets")
    active_close_to_time_wait(t)
    t, conn, rec, iss = established()
    c2 = Counts(t, "TcpEstabResets")
    t.inject(FIN | ACK, 1001, iss + 1, 502, ts_val=102)
    conn.close()
    t.expect(flags=FIN | ACK)
    t.inject(ACK, 1002, iss + 2, 502, ts_val=103)
    assert conn.state_name == "CLOSED"
    c.assert_moved(TcpEstabResets=0)
    c2.assert_moved(TcpEstabResets=0)


# ------------------------------------------------------------------------- retransmission
def _rtx_rto(t: Trace) -> None:
    conn, rec, synack = t.passive_open()
    conn.send(b"r" * 100)
    first = t.expect(length=100)
    c = Counts(t, "TcpRetransSegs")
    t.advance(conn.rto)
    t.expect(length=100, seq=first.seq)
    c.assert_moved(TcpRetransSegs=1)


def _rtx_fin_rto(t: Trace) -> None:
    conn, rec, synack = t.passive_open()
    conn.close()
    fin = t.expect(flags=FIN | ACK)
    c = Counts(t, "TcpRetransSegs")
    t.advance(conn.rto)
    t.expect(flags=FIN | ACK, seq=fin.seq)
    c.assert_moved(TcpRetransSegs=1)


def _rtx_loss_probe(t: Trace) -> None:
    conn, rec, synack = t.passive_open()
    conn.send(b"p" * 100)
    first = t.expect(length=100)
    c = Counts(t, "TcpRetransSegs")
    run_timers_until(t, lambda: bool(t.host.outbox))
    t.expect(length=100, seq=first.seq)
    c.assert_moved(TcpRetransSegs=1)


def _rtx_fast_retransmit(t: Trace) -> None:
    conn, rec, synack = t.passive_open()
    iss = synack.seq
    conn.nodelay = True
    conn.send(b"d" * (1448 * 5))
    assert len(t.output()) == 5
    c = Counts(t, "TcpRetransSegs")
    for i in range(3):
        t.inject(ACK, 1001, iss + 1, 502, ts_val=110 + i)
    t.expect(seq=iss + 1, length=1448)
    c.assert_moved(TcpRetransSegs=1)


def _rtx_syn(t: Trace) -> None:
    t.host.connect("198.18.0.1", 80)
    syn = t.expect(flags=SYN)
    c = Counts(t, "TcpRetransSegs")
    t.advance(1000)
    t.expect(flags=SYN, seq=syn.seq)
    c.assert_moved(TcpRetransSegs=1)


def _rtx_synack(t: Trace) -> None:
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 65535, mss=1460)
    synack = t.expect(flags=SYN | ACK)
    c = Counts(t, "TcpRetransSegs")
    t.advance(1000)
    t.expect(flags=SYN | ACK, seq=synack.seq)
    c.assert_moved(TcpRetransSegs=1)


@pytest.mark.parametrize("path,sysctl", [
    pytest.param(_rtx_rto, {"net__ipv4__tcp_sack": 0}, id="RTO"),
    pytest.param(_rtx_fin_rto, {"net__ipv4__tcp_sack": 0}, id="FIN-RTO"),
    pytest.param(_rtx_loss_probe, {}, id="loss-probe"),
    pytest.param(_rtx_fast_retransmit, {"net__ipv4__tcp_sack": 0}, id="fast-retransmit"),
    pytest.param(_rtx_syn, {}, id="SYN"),
    pytest.param(_rtx_synack, {}, id="SYN-ACK"),
])
def test_retrans_segs(path, sysctl):
    """TcpRetransSegs: __tcp_retransmit_skb (tcp_output.c), for RTO (data or a lone FIN),
    loss-probe and fast retransmissions and the SYN; tcp_rtx_synack for a request socket's
    SYN-ACK."""
    path(Trace(**sysctl))


def test_retrans_segs_not_moved_by_new_data():
    t, conn, rec, iss = established()
    c = Counts(t, "TcpRetransSegs")
    conn.send(b"n" * 3000)
    assert len(t.output()) == 3
    c.assert_moved(TcpRetransSegs=0)


def _rst_closed_port(t: Trace) -> None:
    t.inject(SYN, 1000, 0, 65535, dport=9, mss=1460)
    t.expect(flags=RST | ACK, ack=1001)


def _rst_unknown_connection(t: Trace) -> None:
    t.inject(ACK, 1000, 777, 65535, dport=9)
    t.expect(flags=RST, seq=777)


def _rst_abort(t: Trace) -> None:
    conn, rec, synack = t.passive_open()
    conn.abort()
    t.expect(flags=RST | ACK, seq=synack.seq + 1)


def _rst_unread_close(t: Trace) -> None:
    conn, rec, synack = t.passive_open()
    conn.user = Sink()
    t.inject(ACK | PSH, 1001, synack.seq + 1, 502, payload=b"x", ts_val=102)
    t.output()
    conn.close()
    t.expect(flags=RST | ACK)


@pytest.mark.parametrize("path", [
    pytest.param(_rst_closed_port, id="SYN-to-closed-port"),
    pytest.param(_rst_unknown_connection, id="ACK-to-unknown-connection"),
    pytest.param(_rst_abort, id="abort"),
    pytest.param(_rst_unread_close, id="close-with-unread-data"),
])
def test_out_rsts(path):
    """TcpOutRsts: tcp_v4_send_reset (tcp_ipv4.c) for segments without a socket, and
    tcp_send_active_reset (tcp_output.c) for an abort."""
    t = Trace()
    t.output()
    c = Counts(t, "TcpOutRsts")
    path(t)
    c.assert_moved(TcpOutRsts=1)


def test_out_rsts_not_moved_when_no_reset_is_sent():
    """A RST for nobody is not answered; a graceful close sends none."""
    t = Trace()
    c = Counts(t, "TcpOutRsts")
    t.inject(RST, 1000, 0, 0, dport=9)
    t.expect_nothing()
    active_close_to_time_wait(t)
    c.assert_moved(TcpOutRsts=0)


def test_loss_probes():
    """TcpExtTCPLossProbes: tcp_send_loss_probe (tcp_output.c) when the probe is sent; without
    SACK tcp_schedule_loss_probe arms no probe and the RTO fires instead."""
    t, conn, rec, iss = established()
    conn.send(b"z" * 100)
    first = t.expect(length=100)
    c = Counts(t, "TcpExtTCPLossProbes", "TcpExtTCPTimeouts")
    run_timers_until(t, lambda: bool(t.host.outbox))
    t.expect(length=100, seq=first.seq)
    c.assert_moved(TcpExtTCPLossProbes=1, TcpExtTCPTimeouts=0)

    t, conn, rec, iss = established(net__ipv4__tcp_sack=0)
    conn.send(b"z" * 100)
    first = t.expect(length=100)
    c = Counts(t, "TcpExtTCPLossProbes", "TcpExtTCPTimeouts")
    run_timers_until(t, lambda: bool(t.host.outbox))
    t.expect(length=100, seq=first.seq)
    c.assert_moved(TcpExtTCPLossProbes=0, TcpExtTCPTimeouts=1)


def _timeout_rto(t: Trace) -> None:
    t.host.sysctl["net.ipv4.tcp_sack"] = 0
    conn, rec, synack = t.passive_open()
    conn.send(b"o" * 100)
    t.expect(length=100)
    c = Counts(t, "TcpExtTCPTimeouts")
    t.advance(conn.rto)
    t.expect(length=100)
    c.assert_moved(TcpExtTCPTimeouts=1)


def _timeout_syn(t: Trace) -> None:
    t.host.connect("198.18.0.1", 80)
    t.expect(flags=SYN)
    c = Counts(t, "TcpExtTCPTimeouts")
    t.advance(1000)
    t.expect(flags=SYN)
    c.assert_moved(TcpExtTCPTimeouts=1)


def _timeout_synack(t: Trace) -> None:
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 65535, mss=1460)
    t.expect(flags=SYN | ACK)
    c = Counts(t, "TcpExtTCPTimeouts")
    t.advance(1000)
    t.expect(flags=SYN | ACK)
    c.assert_moved(TcpExtTCPTimeouts=1)


@pytest.mark.parametrize("path", [
    pytest.param(_timeout_rto, id="RTO"),
    pytest.param(_timeout_syn, id="SYN"),
    pytest.param(_timeout_synack, id="SYN-ACK"),
])
def test_tcp_timeouts(path):
    """TcpExtTCPTimeouts: tcp_retransmit_timer (tcp_timer.c) for a full socket;
    tcp_syn_ack_timeout, from reqsk_timer_handler, for a request socket's SYN-ACK."""
    path(Trace())


def _final_rto_established(t: Trace) -> Any:
    t.host.sysctl["net.ipv4.tcp_retries2"] = 2
    t.host.sysctl["net.ipv4.tcp_sack"] = 0
    conn, rec, synack = t.passive_open()
    conn.send(b"f" * 100)
    return conn


def _final_rto_syn_sent(t: Trace) -> Any:
    t.host.sysctl["net.ipv4.tcp_syn_retries"] = 1
    t.host.sysctl["net.ipv4.tcp_syn_linear_timeouts"] = 0
    return t.host.connect("198.18.0.1", 80)


class _RequestView:
    """A request socket seen as fire_until_closed sees a connection: CLOSED once dropped."""

    def __init__(self, host: Any, req: Any) -> None:
        self.host, self.req = host, req

    @property
    def state_name(self) -> str:
        return "SYN-RECV" if self.host.reqs.get(self.req.key) is self.req else "CLOSED"


def _final_rto_syn_recv(t: Trace) -> Any:
    t.host.sysctl["net.ipv4.tcp_synack_retries"] = 1
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 65535, mss=1460)
    assert not t.host.conns                      # a request socket, not a connection
    (req,) = t.host.reqs.values()
    return _RequestView(t.host, req)


@pytest.mark.parametrize("setup", [
    pytest.param(_final_rto_established, id="ESTABLISHED"),
    pytest.param(_final_rto_syn_sent, id="SYN-SENT"),
    pytest.param(_final_rto_syn_recv, id="SYN-RECV"),
])
def test_tcp_timeouts_counts_the_firing_that_gives_up(setup):
    """TcpExtTCPTimeouts: tcp_retransmit_timer increments before "if (tcp_write_timeout(sk))
    goto out;"; reqsk_timer_handler calls tcp_syn_ack_timeout before "if (!expire ...)"."""
    t = Trace()
    conn = setup(t)
    t.output()
    snap = fire_until_closed(t, conn, ("TcpExtTCPTimeouts",))
    snap.assert_moved(TcpExtTCPTimeouts=1)
