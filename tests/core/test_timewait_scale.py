"""A million TIME-WAIT records under virtual time: each expires within one tick (1 ms) of its
deadline, and the table is empty afterwards."""
from __future__ import annotations

import bisect
import random

from ustack.host import Host
from ustack.tcp import states as S
from ustack.testing import ClosingStandIn


def test_million_time_wait_records_expire_within_one_tick():
    n = 1_000_000
    host = Host("198.18.0.2", sysctl={"net.ipv4.tcp_max_tw_buckets": 2 * n}, now=0)
    twlen = host.tw.timewait_len()
    rng = random.Random(1)
    created = {}
    now = 0
    for i in range(n):
        if i % 1000 == 0:
            now += rng.randrange(0, 60)       # records arrive over about 30 s
            host.now = now
        c = ClosingStandIn(i)
        host.tw.enter(c, S.TIME_WAIT, twlen)
        created[c.key] = now
    assert len(host.tw) == n and host.counters["TW"] == n
    deadlines = sorted(d + twlen for d in created.values())
    sample = rng.sample(list(created), 2000)

    def check(t: int) -> None:
        host.advance(t)
        # exactly the records whose deadline is <= t are gone
        assert len(host.tw) == n - bisect.bisect_right(deadlines, t), t
        for key in sample:
            assert (key in host.tw.records) == (created[key] + twlen > t), (key, t)

    t = 0
    window = deadlines[n // 2]                # somewhere in the middle of the expiries
    while t < window - 100:
        t += 1000 if t + 1000 < window - 100 else (window - 100 - t)
        check(t)
    for _ in range(200):                      # one tick at a time across the busiest part
        t += 1
        check(t)
    while len(host.tw):
        t += 1000
        check(t)
    assert t <= deadlines[-1] + 1000
