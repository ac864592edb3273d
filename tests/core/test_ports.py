"""Local ports (ustack/tcp/ports.py) and connect()'s TIME-WAIT reuse (tcp_twsk_unique), on the
I/O-free core.  The same rules run against the kernel in tests/conformance/ and
tests/interop/test_reuse.py."""
from __future__ import annotations

import errno

import pytest

from tests.core.trace import ACK, FIN, SYN, Recorder, Trace

M32 = 0xFFFFFFFF


def client_time_wait(t: Trace, lport=None, port: int = 80, ts: bool = True):
    """ustack connects (from `lport`), closes first, the peer closes: ustack's 4-tuple is in
    TIME-WAIT.  Returns (record, peer's next seq)."""
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", port, lport, user=rec)
    syn = t.expect(flags=SYN)
    opts = dict(mss=1460, sack_ok=True, wscale=7)
    if ts:
        opts.update(ts_val=200, ts_ecr=syn.ts_val)
    t.inject(SYN | ACK, 5000, syn.seq + 1, 65535, sport=port, dport=conn.lport, **opts)
    t.expect(flags=ACK)
    conn.close()
    fin = t.expect(flags=FIN | ACK)
    tso = dict(ts_val=210, ts_ecr=fin.ts_val) if ts else {}
    t.inject(FIN | ACK, 5001, fin.seq + 1, 502, sport=port, dport=conn.lport, **tso)
    t.expect(flags=ACK)
    tw = t.host.tw.get(conn.key)
    assert tw is not None and tw.substate_name == "TIME-WAIT"
    return tw


# ---------------------------------------------------------------------------- bind conflicts
def test_bind_conflicts_follow_inet_bind_conflict():
    t = Trace()
    h = t.host
    a = h.bind(5000)
    with pytest.raises(OSError) as e:
        h.bind(5000)
    assert e.value.errno == errno.EADDRINUSE and "SO_REUSEADDR was not set" in str(e.value)
    with pytest.raises(OSError):          # one side with SO_REUSEADDR is not enough
        h.bind(5000, reuseaddr=True)
    a.release()
    a = h.bind(5000, reuseaddr=True)
    b = h.bind(5000, reuseaddr=True)      # both SO_REUSEADDR, neither listening: shared
    h.listen(a)                           # one of them may listen ...
    with pytest.raises(OSError, match="1 listening"):
        h.listen(b)                       # ... not both
    with pytest.raises(OSError):
        h.bind(5000, reuseaddr=True)      # nor bind next to a listener
    b.release()


def test_so_reuseport_listeners_share_the_syns():
    t = Trace()
    h = t.host
    l1 = h.listen(80, reuseport=True)
    l2 = h.listen(80, reuseport=True)
    with pytest.raises(OSError):
        h.listen(80)                      # without SO_REUSEPORT: refused
    for i in range(40):
        t.inject(SYN, 1000, 0, 65535, sport=20000 + i, dport=80, mss=1460)
        synack = t.expect(flags=SYN | ACK)
        t.inject(ACK, 1001, synack.seq + 1, 502, sport=20000 + i, dport=80)
    assert len(l1.accept_queue) + len(l2.accept_queue) == 40
    assert l1.accept_queue and l2.accept_queue, "the hash must spread 40 peers over both"
    assert sum(c.state == "LISTEN" for c in h.connections()) == 2
    n1 = len(l1.accept_queue)
    l1.close()                            # its unaccepted children are reset (no
    assert len(t.output()) == n1          # tcp_migrate_req): the others stay
    assert h.listeners[80] is l2 and len(l2.accept_queue) == 40 - n1
    t.inject(SYN, 1000, 0, 65535, sport=30000, dport=80, mss=1460)
    t.expect(flags=SYN | ACK)


def test_time_wait_record_keeps_the_port_with_its_sockets_reuseaddr():
    """Restarting a server: its accepted connections' TIME-WAIT records hold port 80, so a new
    listener needs SO_REUSEADDR on both the old socket and the new one (tw_reuse)."""
    for old_reuse, new_reuse, ok in ((False, True, False), (True, False, False),
                                     (True, True, True)):
        t = Trace()
        listener = t.host.listen(80, reuseaddr=old_reuse)
        conn, rec, synack = t.passive_open()
        conn.close()
        fin = t.expect(flags=FIN | ACK)
        t.inject(FIN | ACK, 1001, fin.seq + 1, 502, ts_val=300, ts_ecr=fin.ts_val)
        t.expect(flags=ACK)
        listener.close()
        assert len(t.host.tw) == 1 and t.host.ports.holders(80) == 1
        if ok:
            t.host.listen(80, reuseaddr=new_reuse)
        else:
            with pytest.raises(OSError, match="1 in TIME-WAIT"):
                t.host.listen(80, reuseaddr=new_reuse)
        t.advance(61_000)                    # the record expires and lets the port go
        assert t.host.ports.holders(80) == (1 if ok else 0)


def test_bind_zero_takes_odd_ports_and_connect_even_ones():
    t = Trace(net__ipv4__ip_local_port_range="40000 40099")
    h = t.host
    odd = {h.bind(0).port for _ in range(20)}
    assert all(p % 2 == 1 and 40000 <= p <= 40099 for p in odd)
    even = set()
    for i in range(20):
        c = h.connect("198.18.0.1", 1000 + i)
        even.add(c.lport)
    assert all(p % 2 == 0 for p in even)


def test_connect_shares_a_port_across_destinations_but_not_with_bind():
    """__inet_hash_connect: a port held only by connect()s serves other 4-tuples; a port
    bound with bind() is never picked."""
    t = Trace(net__ipv4__ip_local_port_range="40000 40001")
    h = t.host
    c1 = h.connect("198.18.0.1", 80)
    c2 = h.connect("198.18.0.1", 81)
    c3 = h.connect("198.18.0.1", 82)
    assert c1.lport == c2.lport == c3.lport == 40000
    b = h.bind(40001)
    with pytest.raises(OSError) as e:     # 40000 is taken for :80, 40001 is bind()'s
        h.connect("198.18.0.1", 80)
    assert e.value.errno == errno.EADDRNOTAVAIL and "1 held by bind()" in str(e.value)
    b.release()
    assert h.connect("198.18.0.1", 80).lport == 40001


def test_ephemeral_exhaustion_says_how_many_are_in_time_wait():
    t = Trace(net__ipv4__ip_local_port_range="40000 40003", net__ipv4__tcp_tw_reuse=0)
    for _ in range(4):
        client_time_wait(t)
    with pytest.raises(OSError) as e:
        t.host.connect("198.18.0.1", 80)
    assert e.value.errno == errno.EADDRNOTAVAIL
    assert "4 of them in TIME-WAIT" in str(e.value) and "tcp_tw_reuse=0" in str(e.value)


# ---------------------------------------------------------------------------- tcp_twsk_unique
def test_tw_reuse_1_takes_the_record_after_the_delay():
    t = Trace(net__ipv4__ip_local_port_range="40000 40000", net__ipv4__tcp_tw_reuse=1)
    tw = client_time_wait(t)
    with pytest.raises(OSError, match="1 of them in TIME-WAIT"):
        t.host.connect("198.18.0.1", 80)   # younger than tcp_tw_reuse_delay (1000 ms)
    t.advance(1001)
    before = t.mib["TWRecycled"]
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    syn = t.expect(flags=SYN)
    assert conn.lport == 40000 and t.host.tw.get(conn.key) is None
    assert t.mib["TWRecycled"] == before + 1
    # write_seq = snd_nxt + 65535 + 2; ts_recent inherited and echoed in the SYN;
    # the first window in segments of advmss - 12 (tcp_connect_init)
    assert syn.seq == (tw.snd_nxt + 65537) & M32
    assert syn.ts_ecr == tw.ts_recent == 210
    assert syn.window == 65160
    t.inject(SYN | ACK, 9000, syn.seq + 1, 65535, sport=80, dport=40000, mss=1460,
             sack_ok=True, wscale=7, ts_val=5000, ts_ecr=syn.ts_val)
    t.expect(flags=ACK, ack=9001)
    assert rec.events == ["established"]


def test_tw_reuse_2_is_loopback_only_and_0_never():
    for reuse in (0, 2):
        t = Trace(net__ipv4__ip_local_port_range="40000 40000",
                  net__ipv4__tcp_tw_reuse=reuse)
        client_time_wait(t)
        t.advance(5000)
        with pytest.raises(OSError) as e:
            t.host.connect("198.18.0.1", 80)
        assert e.value.errno == errno.EADDRNOTAVAIL


def test_tw_reuse_delay_is_a_setting():
    t = Trace(net__ipv4__ip_local_port_range="40000 40000", net__ipv4__tcp_tw_reuse=1,
              net__ipv4__tcp_tw_reuse_delay=50)
    client_time_wait(t)
    t.advance(50)
    with pytest.raises(OSError):
        t.host.connect("198.18.0.1", 80)   # time_after32: strictly later
    t.advance(1)
    t.host.connect("198.18.0.1", 80)


def test_no_reuse_without_timestamps():
    t = Trace(net__ipv4__ip_local_port_range="40000 40000", net__ipv4__tcp_tw_reuse=1)
    client_time_wait(t, lport=t.host.bind(40000, reuseaddr=True), ts=False)
    t.advance(5000)
    with pytest.raises(OSError):
        t.host.connect("198.18.0.1", 80)
    b = t.host.bind(40000, reuseaddr=True)
    with pytest.raises(OSError, match="without timestamps"):
        t.host.connect("198.18.0.1", 80, b)


def test_explicit_bind_reuses_at_once_even_with_tw_reuse_0():
    t = Trace(net__ipv4__tcp_tw_reuse=0)
    tw = client_time_wait(t, lport=t.host.bind(5000, reuseaddr=True))
    with pytest.raises(OSError):
        t.host.bind(5000)                  # the record holds the port (tw_reuse)
    b = t.host.bind(5000, reuseaddr=True)
    conn = t.host.connect("198.18.0.1", 80, b)
    syn = t.expect(flags=SYN)
    assert conn.lport == 5000 and syn.seq == (tw.snd_nxt + 65537) & M32
    assert t.mib["TWRecycled"] == 1 and len(t.host.tw) == 0


def test_never_from_the_fin_wait_2_substate():
    """An orphan in FIN-WAIT-2 lives as a record with substate FIN-WAIT-2: the ephemeral
    search never takes it over (tcp_twsk_unique sets reuse = 0)."""
    t = Trace(net__ipv4__ip_local_port_range="40000 40000", net__ipv4__tcp_tw_reuse=1)
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    syn = t.expect(flags=SYN)
    t.inject(SYN | ACK, 5000, syn.seq + 1, 65535, sport=80, dport=40000, mss=1460,
             sack_ok=True, wscale=7, ts_val=200, ts_ecr=syn.ts_val)
    t.expect(flags=ACK)
    conn.close()
    fin = t.expect(flags=FIN | ACK)
    t.inject(ACK, 5001, fin.seq + 1, 502, sport=80, dport=40000, ts_val=210, ts_ecr=fin.ts_val)
    tw = t.host.tw.get(conn.key)
    assert tw is not None and tw.substate_name == "FIN-WAIT-2"
    t.advance(5000)
    with pytest.raises(OSError):
        t.host.connect("198.18.0.1", 80)


def test_host_wide_challenge_ack_limit():
    """tcp_challenge_ack_limit: per second, a random budget in [limit/2, 1.5 limit) across all
    connections (the per-socket limit is tcp_invalid_ratelimit)."""
    t = Trace(net__ipv4__tcp_challenge_ack_limit=4)
    conns = [t.passive_open(sport=41000 + i) for i in range(10)]
    before = t.mib["TCPChallengeACK"]
    for i, (conn, rec, synack) in enumerate(conns):    # a SYN in ESTABLISHED on each
        t.inject(SYN, 5000, 0, 65535, sport=41000 + i, mss=1460, ts_val=300, ts_ecr=0)
    sent = t.mib["TCPChallengeACK"] - before
    assert 2 <= sent <= 5 and len(t.output()) == sent
    t.advance(1000)
    for i, (conn, rec, synack) in enumerate(conns):
        t.inject(SYN, 5000, 0, 65535, sport=41000 + i, mss=1460, ts_val=400, ts_ecr=0)
    assert 2 <= t.mib["TCPChallengeACK"] - before - sent <= 5
