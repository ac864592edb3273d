"""ICMP errors for TCP (tcp_v4_err) as packet traces: PMTU, unreachable on connect, soft errors,
out-of-window quotes, request sockets."""
from __future__ import annotations

import errno

from tests.core.trace import ACK, ME, PEER, SYN, Trace
from ustack.wire import build_ipv4, build_tcp, internet_checksum

M32 = 0xFFFFFFFF


def icmp_error(t: Trace, icmp_type: int, code: int, quoted: bytes, info: int = 0) -> None:
    """An ICMP error from a router (PEER's address will do) quoting `quoted`."""
    body = bytearray(bytes((icmp_type, code, 0, 0)) + info.to_bytes(4, "big") + quoted[:28])
    csum = internet_checksum(bytes(body))
    body[2], body[3] = csum >> 8, csum & 0xFF
    t.host.receive(build_ipv4(PEER, ME, 1, bytes(body)))


def quote(sport: int, dport: int, seq: int) -> bytes:
    """Our segment as the router saw it (the IP header and the TCP header's start)."""
    return build_tcp(ME, PEER, sport, dport, seq & M32, 0, ACK, 100)


def test_fragmentation_needed_lowers_the_mss_and_resends_at_the_new_size():
    t = Trace(net__ipv4__tcp_congestion_control="reno")
    conn, rec, synack = t.passive_open()
    s = synack.seq + 1
    conn.nodelay = True
    conn.send(b"p" * (1448 * 3))
    assert [len(x.payload) for x in t.output()] == [1448] * 3
    icmp_error(t, 3, 4, quote(80, 40000, s), info=1000)          # next-hop MTU 1000
    out = t.output()
    assert conn.pmtu == 1000 and conn._effective_mss() == 1000 - 40 - 12
    assert out and all(len(x.payload) <= 948 for x in out)
    assert out[0].seq == s and len(out[0].payload) == 948
    assert t.mib["IcmpInDestUnreachs"] == 1 and t.mib["TcpRetransSegs"] >= 1
    # the peer acknowledges everything; all 4344 bytes went through at the smaller size
    t.inject(ACK, 1001, s + 1448 * 3, 502, ts_val=105)
    t.advance(1000)
    assert conn.rec.packets_out == 0


def test_port_unreachable_fails_a_connect():
    t = Trace()
    from tests.core.trace import Recorder
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    syn = t.expect(flags=SYN)
    icmp_error(t, 3, 3, quote(conn.lport, 80, syn.seq))
    assert conn.state_name == "CLOSED"
    assert isinstance(rec.error, ConnectionRefusedError) and rec.error.errno == errno.ECONNREFUSED


def test_host_unreachable_is_a_soft_error_reported_on_timeout():
    t = Trace(net__ipv4__tcp_retries2=2, net__ipv4__tcp_sack=0)
    conn, rec, synack = t.passive_open()
    conn.send(b"x" * 100)
    first = t.expect(length=100)
    icmp_error(t, 3, 1, quote(80, 40000, first.seq))
    assert conn.state_name == "ESTAB" and conn.soft_error == errno.EHOSTUNREACH
    for _ in range(50):
        deadline = t.host.next_deadline()
        if deadline is None or conn.state_name == "CLOSED":
            break
        t.host.advance(deadline)
        t.output()
    assert conn.state_name == "CLOSED" and rec.error.errno == errno.EHOSTUNREACH


def test_a_quote_outside_the_window_is_ignored():
    t = Trace()
    conn, rec, synack = t.passive_open()
    conn.send(b"x" * 100)
    t.output()
    icmp_error(t, 3, 4, quote(80, 40000, synack.seq + 5000), info=600)
    assert conn.pmtu == 1500 and t.mib["TcpExtOutOfWindowIcmps"] == 1


def test_an_error_quoting_a_synack_drops_the_request():
    t = Trace()
    t.host.listen(80)
    t.inject(SYN, 1000, 0, 65535, sport=40000, dport=80, mss=1460)
    synack = t.expect(flags=SYN | ACK)
    icmp_error(t, 3, 1, quote(80, 40000, synack.seq))
    assert not t.host.reqs
