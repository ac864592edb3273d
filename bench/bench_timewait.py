"""TIME-WAIT records at scale: memory per record, lookup and expiry cost, for 1M records.

    .venv/bin/python bench/bench_timewait.py [--records 1000000]

Measured in one process (no network, no root): RSS before and after the table holds the
records (bytes per record, target <= 128), the time of a lookup by 4-tuple (as the input
path does for every segment that is not for a live connection), and the time to expire them
all through the host's timer wheel (cost per record).  The reference, in the same run: a
plain dict of minimal Python objects with the same fields (no timers).  Results as JSON.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ustack.host import Host  # noqa: E402
from ustack.tcp import states as S  # noqa: E402
from ustack.testing import ClosingStandIn  # noqa: E402


class _Plain:
    __slots__ = ("rcv_nxt", "snd_nxt", "rcv_wnd", "ts_recent", "ts_recent_stamp", "deadline")

    def __init__(self, i: int) -> None:
        self.rcv_nxt = i
        self.snd_nxt = i * 7
        self.rcv_wnd = 65535
        self.ts_recent = i
        self.ts_recent_stamp = 1
        self.deadline = 60_000


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--json", default="bench_timewait.json")
    args = p.parse_args()
    n = args.records
    keys = [ClosingStandIn(i).key for i in range(n)]
    probe = random.Random(1).sample(keys, min(n, 100_000))

    gc.collect()
    r0 = rss()
    plain = {k: _Plain(i) for i, k in enumerate(keys)}
    gc.collect()
    plain_bytes = (rss() - r0) / n
    t0 = time.perf_counter()
    for k in probe:
        plain.get(k)
    plain_lookup = (time.perf_counter() - t0) / len(probe) * 1e9
    del plain
    gc.collect()

    out = {"records": n, "dict_of_objects_bytes_per_record": round(plain_bytes),
           "dict_of_objects_lookup_ns": round(plain_lookup), "target_bytes_per_record": 128}
    print(f"{n} records; a dict of small objects: {plain_bytes:.0f} B each, lookup "
          f"{plain_lookup:.0f} ns")
    for compact in (1, 0):
        name = "compact" if compact else "objects"
        host = Host("198.18.0.2", sysctl={"net.ipv4.tcp_max_tw_buckets": 2 * n,
                                          "ustack.tcp_tw_compact": compact}, now=0)
        twlen = host.tw.timewait_len()
        gc.collect()
        r0 = rss()
        for i in range(n):
            host.tw.enter(ClosingStandIn(i), S.TIME_WAIT, twlen)
        gc.collect()
        tw_bytes = (rss() - r0) / n
        get = host.tw.records.get
        t0 = time.perf_counter()
        for k in probe:
            get(k)
        tw_lookup = (time.perf_counter() - t0) / len(probe) * 1e9
        t0 = time.perf_counter()
        host.advance(twlen)
        expire = (time.perf_counter() - t0) / n * 1e9
        assert len(host.tw) == 0
        out[name] = {"bytes_per_record": round(tw_bytes), "lookup_ns": round(tw_lookup),
                     "expiry_ns_per_record": round(expire)}
        print(f"TIME-WAIT table ({name}): {tw_bytes:.0f} B each (target <= 128), lookup "
              f"{tw_lookup:.0f} ns, expiry {expire:.0f} ns per record")
        del host
        gc.collect()
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
