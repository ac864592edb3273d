"""The compact TIME-WAIT table (twtable.py) behaves exactly as the readable one (timewait.py):
the same segments into two hosts, one with each table, give the same packets out, the same
counters and the same records, through random segments and time."""
from __future__ import annotations

import random

import pytest

from tests.core.trace import ME, PEER
from ustack.host import Host
from ustack.tcp import states as S
from ustack.tcp.twtable import CompactTable
from ustack.tcp.timewait import TimeWaitTable
from ustack.wire import ACK, FIN, RST, SYN, build_tcp

FIELDS = ("substate", "rcv_nxt", "snd_nxt", "rcv_wnd", "rcv_wscale", "ts_ok", "ts_recent",
          "ts_recent_stamp", "ts_off", "entered", "last_oow_ack", "syn_isn", "bind_flags",
          "raddr", "rport", "lport", "laddr")


class _Closing:
    __slots__ = ("key", "laddr", "lport", "raddr", "rport", "rcv_nxt", "snd_max", "rcv_wscale",
                 "ts_ok", "ts_recent", "ts_recent_stamp", "ts_off", "reuseaddr", "binding")

    def __init__(self, rng: random.Random, rport: int) -> None:
        self.raddr, self.rport, self.lport, self.laddr = PEER, rport, 80, ME
        self.key = (self.raddr << 32) | (self.rport << 16) | self.lport
        self.rcv_nxt = rng.getrandbits(32)
        self.snd_max = rng.getrandbits(32)
        self.rcv_wscale = rng.choice((0, 7))
        self.ts_ok = rng.random() < 0.7
        self.ts_recent = rng.getrandbits(32)
        self.ts_recent_stamp = 1_000_000 - rng.randrange(0, 5000)
        self.ts_off = rng.getrandbits(32)
        self.reuseaddr = rng.random() < 0.5
        self.binding = None

    def _rcv_window_now(self) -> int:
        return 65535


def snapshot(host: Host) -> dict:
    return {key: tuple(getattr(tw, f) for f in FIELDS) + (host.tw.deadline_of(tw),)
            for key, tw in ((tw.key, tw) for tw in host.tw.records.values())}


@pytest.mark.parametrize("seed", range(6))
def test_compact_table_equals_the_readable_one(seed):
    rng = random.Random(seed)
    hosts = [Host(ME, sysctl={"ustack.tcp_tw_compact": c, "net.ipv4.tcp_rfc1337": seed % 2,
                              "ustack.tcp_timewait_len": 3},
                  secret=b"x", seed=1, now=1_000_000) for c in (0, 1)]
    assert isinstance(hosts[0].tw, TimeWaitTable) and not isinstance(hosts[0].tw, CompactTable)
    assert isinstance(hosts[1].tw, CompactTable)
    ports = list(range(40000, 40040))
    states = {}
    for port in ports:                               # the same records in both
        closing_seed = rng.getrandbits(32)
        substate = rng.choice((S.TIME_WAIT, S.FIN_WAIT_2))
        lifetime = rng.choice((3000, 3000, 5000, 60000))
        for h in hosts:
            h.tw.enter(_Closing(random.Random(closing_seed), port), substate, lifetime)
        states[port] = _Closing(random.Random(closing_seed), port)
    for step in range(3000):
        action = rng.random()
        if action < 0.1:
            dt = rng.choice((1, 10, 100, 500, 1500))
            for h in hosts:
                h.advance(h.now + dt)
        else:
            port = rng.choice(ports)
            c = states[port]
            flags = rng.choice((ACK, ACK, FIN | ACK, RST, RST | ACK, SYN, SYN | ACK, ACK | 0x08))
            seq = (c.rcv_nxt + rng.choice((0, 0, 0, 1, -1, 100, -100, 70000, 1 << 31))) & 0xFFFFFFFF
            opts = {}
            if rng.random() < 0.7:
                opts = dict(ts_val=(c.ts_recent + rng.choice((0, 1, 5, -1, -100, 1 << 31)))
                            & 0xFFFFFFFF, ts_ecr=0)
            payload = b"d" * rng.choice((0, 0, 0, 10))
            pkt = build_tcp(PEER, ME, port, 80, seq, c.snd_max, flags, 500, payload, **opts)
            for h in hosts:
                h.receive(pkt)
        outs = [h.take_output() for h in hosts]
        assert outs[0] == outs[1], step
        assert snapshot(hosts[0]) == snapshot(hosts[1]), step
    assert dict(hosts[0].mib) == dict(hosts[1].mib)
    for h in hosts:                                  # and both empty out in the end
        h.advance(h.now + 200_000)
    assert len(hosts[0].tw) == len(hosts[1].tw) == 0
    assert hosts[0].ports.snapshot() == hosts[1].ports.snapshot() \
        if hasattr(hosts[0].ports, "snapshot") else True
