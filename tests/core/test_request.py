"""Request sockets and SYN cookies (tcp_conn_request, tcp_check_req, syncookies.c) as packet
traces: segment in, segments out."""
from __future__ import annotations

from tests.core.trace import ACK, ME, PEER, RST, SYN, Trace
from ustack.tcp.request import MSSTAB, cookie_check_mss


def syn(t: Trace, sport: int, isn: int = 1000, ts: bool = True, mss: int = 1460) -> None:
    opts = dict(mss=mss, sack_ok=True, wscale=7)
    if ts:
        opts.update(ts_val=100, ts_ecr=0)
    t.inject(SYN, isn, 0, 65535, sport=sport, dport=80, **opts)


def test_a_syn_makes_a_request_not_a_connection():
    t = Trace()
    t.host.listen(80)
    syn(t, 40000)
    t.expect(flags=SYN | ACK, ack=1001)
    assert not t.host.conns and len(t.host.reqs) == 1
    assert [c.state for c in t.host.connections() if c.remote[1]] == ["SYN-RECV"]


def test_full_syn_queue_without_cookies_drops():
    """SYN queue longer than the backlog (inet_csk_reqsk_queue_is_full) and tcp_syncookies=0:
    the SYN is dropped (TCPReqQFullDrop, ListenDrops)."""
    t = Trace(net__ipv4__tcp_syncookies=0)
    t.host.listen(80, backlog=1)
    for sport in (40000, 40001):
        syn(t, sport)
        t.expect(flags=SYN | ACK)
    syn(t, 40002)
    t.expect_nothing()
    assert t.mib["TcpExtTCPReqQFullDrop"] == 1 and t.mib["TcpExtListenDrops"] == 1


def test_full_syn_queue_sends_a_cookie_that_becomes_a_connection():
    t = Trace()
    listener = t.host.listen(80, backlog=1)
    for sport in (40000, 40001):
        syn(t, sport)
        t.expect(flags=SYN | ACK)
    syn(t, 40002, isn=5000)
    synack = t.expect(flags=SYN | ACK, ack=5001)
    assert len(t.host.reqs) == 2                       # nothing kept for the cookie
    assert t.mib["TcpExtSyncookiesSent"] == 1 and t.mib["TcpExtTCPReqQFullDoCookies"] == 1
    ts_off = t.host.secret.ts_offset(ME, PEER, 80, 40002)
    assert (synack.ts_val - ts_off) & 0x3F == 7 | 0x10  # wscale 7 and SACK in the low bits
    t.inject(ACK, 5001, synack.seq + 1, 502, sport=40002, dport=80, ts_val=101,
             ts_ecr=synack.ts_val)
    t.expect_nothing()
    conn = listener.accept()
    assert conn is not None and conn.state_name == "ESTAB" and conn.rport == 40002
    assert conn.mss == 1460 and conn.snd_wscale == 7 and conn.sack_ok and conn.ts_ok
    assert conn.snd_wnd == 502 << 7
    assert t.mib["TcpExtSyncookiesRecv"] == 1 and t.mib["TcpPassiveOpens"] == 1


def test_cookie_without_timestamps_offers_no_window_scaling_nor_sack():
    t = Trace(net__ipv4__tcp_syncookies=2)             # 2: cookies for every SYN
    listener = t.host.listen(80)
    syn(t, 40000, ts=False, mss=1000)
    synack = t.expect(flags=SYN | ACK)
    assert synack.wscale == -1 and not synack.sack_ok and not synack.has_ts
    assert not t.host.reqs
    t.inject(ACK, 1001, synack.seq + 1, 4000, sport=40000, dport=80)
    conn = listener.accept()
    assert conn is not None and conn.state_name == "ESTAB"
    assert conn.mss == 536                             # 1000 is carried as msstab's 536
    assert not conn.sack_ok and not conn.wscale_ok and conn.snd_wnd == 4000


def test_a_forged_cookie_is_refused_with_a_reset():
    t = Trace(net__ipv4__tcp_syncookies=2)
    t.host.listen(80)
    syn(t, 40000)
    synack = t.expect(flags=SYN | ACK)
    t.inject(ACK, 1001, synack.seq + 1000, 502, sport=40000, dport=80, ts_val=101,
             ts_ecr=synack.ts_val)
    t.expect(flags=RST, seq=synack.seq + 1000)
    assert t.mib["TcpExtSyncookiesFailed"] == 1 and not t.host.conns


def test_cookies_expire_after_two_minutes():
    t = Trace(net__ipv4__tcp_syncookies=2)
    t.host.listen(80)
    syn(t, 40000)
    synack = t.expect(flags=SYN | ACK)

    class Seg:
        src, sport, dport = PEER, 40000, 80
        seq = 1001
        ack = (synack.seq + 1) & 0xFFFFFFFF
    assert cookie_check_mss(t.host, Seg) == MSSTAB[-1]
    t.advance(60_000)
    assert cookie_check_mss(t.host, Seg) == MSSTAB[-1]
    t.advance(120_000)
    assert cookie_check_mss(t.host, Seg) == 0
    assert ME != PEER


def test_full_accept_queue_drops_the_handshake_ack_and_retries_the_synack():
    """tcp_check_req -> syn_recv_sock fails (accept queue full): ListenOverflows, the request
    is kept (acked) and its SYN-ACK retransmitted; once accept() makes room the next ACK
    completes it."""
    t = Trace()
    listener = t.host.listen(80, backlog=1)            # max_ack_backlog 1: two children fit
    syn(t, 40000)
    a = t.expect(flags=SYN | ACK)
    t.inject(ACK, 1001, a.seq + 1, 502, sport=40000, dport=80, ts_val=101, ts_ecr=a.ts_val)
    synacks = {}
    for sport in (40001, 40002):
        syn(t, sport)
        synacks[sport] = t.expect(flags=SYN | ACK)
    for sport in (40001, 40002):
        sa = synacks[sport]
        t.inject(ACK, 1001, sa.seq + 1, 502, sport=sport, dport=80, ts_val=101,
                 ts_ecr=sa.ts_val)
    t.expect_nothing()                                 # the last ACK is dropped, no RST
    assert len(listener.accept_queue) == 2 and len(t.host.reqs) == 1
    assert t.mib["TcpExtListenOverflows"] == 1 and t.mib["TcpExtListenDrops"] == 1
    t.advance(1000)
    again = t.expect(flags=SYN | ACK, seq=synacks[40002].seq)   # retransmitted
    assert listener.accept() is not None
    t.inject(ACK, 1001, again.seq + 1, 502, sport=40002, dport=80, ts_val=102,
             ts_ecr=again.ts_val)
    assert not t.host.reqs and len(listener.accept_queue) == 2


def test_abort_on_overflow_resets_instead():
    """tcp_abort_on_overflow=1: the handshake's ACK that finds the accept queue full is
    answered with RST and the request dropped (EmbryonicRsts)."""
    t = Trace(net__ipv4__tcp_abort_on_overflow=1)
    listener = t.host.listen(80, backlog=1)
    syn(t, 40000)
    a = t.expect(flags=SYN | ACK)
    t.inject(ACK, 1001, a.seq + 1, 502, sport=40000, dport=80, ts_val=101, ts_ecr=a.ts_val)
    synacks = {}
    for sport in (40001, 40002):
        syn(t, sport)
        synacks[sport] = t.expect(flags=SYN | ACK)
    sa = synacks[40001]
    t.inject(ACK, 1001, sa.seq + 1, 502, sport=40001, dport=80, ts_val=101, ts_ecr=sa.ts_val)
    sa = synacks[40002]
    t.inject(ACK, 1001, sa.seq + 1, 502, sport=40002, dport=80, ts_val=101, ts_ecr=sa.ts_val)
    t.expect(flags=RST, seq=sa.seq + 1)
    assert not t.host.reqs and len(listener.accept_queue) == 2
    assert t.mib["TcpExtListenOverflows"] == 1 and t.mib["TcpExtEmbryonicRsts"] == 1
