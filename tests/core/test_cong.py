"""Congestion control modules against Linux's documented arithmetic (tcp_cong.c, tcp_cubic.c).

The machine's network namespaces cannot select cubic, so cubic is checked here against the
formulas of RFC 9438 and tcp_cubic.c rather than against the kernel on the wire."""
from __future__ import annotations

import pytest

from ustack.tcp import cong
from ustack.tcp.cong.cubic import BETA, BICTCP_BETA_SCALE, Cubic, cube_root
from ustack.tcp.cong.reno import Reno
from tests.core.trace import Trace


class Tp:
    """The fields of tcp_sock a module reads."""

    def __init__(self, cwnd: int = 10, ssthresh: int = cong.TCP_INFINITE_SSTHRESH) -> None:
        self.cwnd = cwnd
        self.ssthresh = ssthresh
        self.cwnd_cnt = 0
        self.cwnd_clamp = 0xFFFFFFFF
        self.prior_cwnd = cwnd
        self.is_cwnd_limited = True
        self.max_packets_out = cwnd
        self.snd_nxt = self.snd_una = 0
        self.now = 10_000
        self.lsndtime = 0
        self.host = Trace().host

    def now_ms(self) -> int:
        return self.now

    def now_us(self) -> int:
        return self.now * 1000


def test_slow_start_grows_by_what_is_acked_up_to_ssthresh():
    """tcp_slow_start: a stretch ACK for 8 packets adds 8; what passes ssthresh is returned."""
    tp = Tp(cwnd=10, ssthresh=15)
    assert cong.slow_start(tp, 8) == 3 and tp.cwnd == 15


def test_reno_congestion_avoidance_one_per_window():
    tp = Tp(cwnd=10, ssthresh=10)
    reno = Reno()
    for _ in range(9):
        reno.cong_avoid(tp, 0, 1)
    assert tp.cwnd == 10
    reno.cong_avoid(tp, 0, 1)
    assert tp.cwnd == 11 and reno.ssthresh(tp) == 5


def test_reno_does_not_grow_when_not_cwnd_limited():
    """tcp_is_cwnd_limited: an application-limited sender keeps its cwnd (RFC 7661)."""
    tp = Tp(cwnd=20, ssthresh=10)
    tp.is_cwnd_limited = False
    tp.max_packets_out = 4
    Reno().cong_avoid(tp, 0, 5)
    assert tp.cwnd == 20


def test_cube_root_is_exact():
    for x in (0, 1, 7, 8, 26, 27, 10**9, 2**40 // 410 * 17, 123456789012345):
        r = cube_root(x)
        assert r ** 3 <= x < (r + 1) ** 3


def test_cubic_backs_off_to_beta_and_remembers_wmax_with_fast_convergence():
    tp = Tp(cwnd=100)
    c = Cubic()
    c.init(tp)
    assert c.ssthresh(tp) == 100 * BETA // BICTCP_BETA_SCALE == 70
    assert c.last_max_cwnd == 100
    tp.cwnd = 80          # a second loss below the old W_max: fast convergence lowers it
    c.ssthresh(tp)
    assert c.last_max_cwnd == 80 * (BICTCP_BETA_SCALE + BETA) // (2 * BICTCP_BETA_SCALE)


def test_cubic_window_is_concave_then_convex_around_wmax():
    """W(t) = C (t - K)^3 + W_max: fast growth back towards W_max, a plateau near it, then
    probing beyond it (RFC 9438 §4.2)."""
    tp = Tp(cwnd=100)
    c = Cubic()
    c.init(tp)
    tp.ssthresh = c.ssthresh(tp)
    tp.cwnd = tp.ssthresh
    history = []
    for _ in range(400):            # one ACK per 10 ms for 4 s, one packet acked each
        tp.now += 10
        c.cong_avoid(tp, 0, 1)
        history.append(tp.cwnd)
    k_ms = c.k * 1000 // 1024
    assert 2000 < k_ms < 5000       # K = cbrt(W_max (1 - beta) / C) ~ 3 s for W_max 100
    near = [w for w in history if 95 <= w <= 100]
    assert near, "the window must come back close to W_max"
    assert history[0] < history[len(history) // 4] <= 100
    assert history[-1] >= history[len(history) // 2]


@pytest.mark.parametrize("name", ["reno", "cubic"])
def test_module_chosen_by_sysctl_and_switched_per_socket(name):
    t = Trace(net__ipv4__tcp_congestion_control=name)
    conn, rec, synack = t.passive_open()
    assert conn.congestion_control == name
    conn.congestion_control = "reno" if name == "cubic" else "cubic"
    assert conn.congestion_control != name
    with pytest.raises(ValueError, match="no congestion control|unknown congestion control"):
        conn.congestion_control = "vegas"
    with pytest.raises(ValueError):
        t.host.sysctl["net.ipv4.tcp_congestion_control"] = "vegas"


def test_hystart_delay_ends_slow_start_when_the_rtt_grows():
    """HyStart's delay detector (tcp_cubic.c hystart_update): once cwnd >= 16, a round whose
    smallest of 8 RTT samples exceeds delay_min + clamp(delay_min/8, 4 ms, 16 ms) sets
    ssthresh = cwnd (TCPHystartDelayDetect)."""
    tp = Tp(cwnd=20)
    c = Cubic()
    c.init(tp)
    tp.now += 2000                           # well after any epoch
    for _ in range(10):
        c.pkts_acked(tp, 1, 20)              # delay_min 20 ms
    assert not c.found and tp.ssthresh == cong.TCP_INFINITE_SSTHRESH
    tp.snd_una = tp.snd_nxt = 5000           # a new round
    c._hystart_reset(tp)
    for _ in range(9):
        tp.now += 3                          # ACKs more than 2 ms apart: no ACK train
        c.pkts_acked(tp, 1, 26)              # 26 > 20 + max(20/8, 4)
    assert c.found and tp.ssthresh == 20
    assert tp.host.mib["TcpExtTCPHystartDelayDetect"] == 1


def test_hystart_waits_for_cwnd_16():
    tp = Tp(cwnd=8)
    c = Cubic()
    c.init(tp)
    tp.now += 2000
    c.pkts_acked(tp, 1, 10)
    for _ in range(20):
        tp.now += 3
        c.pkts_acked(tp, 1, 100)
    assert not c.found and tp.ssthresh == cong.TCP_INFINITE_SSTHRESH
