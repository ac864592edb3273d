"""ustack.tcp_tw_recycle: Linux < 4.12's TIME-WAIT recycling, as an opt-in experiment.  The
NAT failure it causes is shown against kernel clients in tests/interop/test_tw_recycle_nat.py."""
from __future__ import annotations

import pytest

from ustack.sysctl import Sysctl
from tests.core.trace import ACK, FIN, SYN, Trace


def server_time_wait(t: Trace, sport: int, ts_val: int):
    """The peer connects from `sport` with TSval `ts_val`; ustack closes first."""
    conn, rec, synack = t.passive_open(sport=sport)
    conn.close()
    fin = t.expect(flags=FIN | ACK)
    t.inject(FIN | ACK, 1001, fin.seq + 1, 502, sport=sport, ts_val=ts_val, ts_ecr=fin.ts_val)
    t.expect(flags=ACK)
    return t.host.tw.get(conn.key), conn


def test_turning_it_on_warns():
    s = Sysctl()
    with pytest.warns(RuntimeWarning, match="NAT"):
        s["ustack.tcp_tw_recycle"] = 1


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_recycle_shortens_time_wait_and_rejects_older_syns_from_the_same_address():
    t = Trace(ustack__tcp_tw_recycle=1)
    tw, conn = server_time_wait(t, 40000, ts_val=5000)
    rto = conn.rto
    lifetime = tw.timer.deadline - t.now
    assert lifetime == (rto << 2) - (rto >> 1) < 60_000      # 3.5 x RTO, not 60 s
    assert t.host.peer_ts[tw.raddr][0] == 5000
    # another port of the same address, TSval older by more than 1: dropped, no SYN-ACK
    t.inject(SYN, 7000, 0, 65535, sport=40001, mss=1460, ts_val=4000, ts_ecr=0)
    t.expect_nothing()
    assert t.mib["PAWSPassive"] == 1
    t.inject(SYN, 7000, 0, 65535, sport=40001, mss=1460)     # no timestamps at all: too
    t.expect_nothing()
    assert t.mib["PAWSPassive"] == 2
    t.inject(SYN, 7000, 0, 65535, sport=40001, mss=1460, ts_val=4999, ts_ecr=0)  # 1 below: ok
    t.expect(flags=SYN | ACK)
    t.advance(lifetime)
    assert len(t.host.tw) == 0
    # 60 s later the cached clock no longer counts
    t.advance(60_000)
    t.output()                                               # (40001's SYN-ACK retries)
    t.inject(SYN, 9000, 0, 65535, sport=40002, mss=1460, ts_val=10, ts_ecr=0)
    t.expect(flags=SYN | ACK)


def test_without_recycle_the_same_syns_are_accepted():
    t = Trace()
    tw, conn = server_time_wait(t, 40000, ts_val=5000)
    assert tw.timer.deadline - t.now == 60_000 and not t.host.peer_ts
    t.inject(SYN, 7000, 0, 65535, sport=40001, mss=1460, ts_val=4000, ts_ecr=0)
    t.expect(flags=SYN | ACK)
    assert t.mib["PAWSPassive"] == 0
