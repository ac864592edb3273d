"""Costs of ustack._timerwheel against a heapq timer queue, 1M timers each.

    .venv/bin/python bench/bench_timerwheel.py [--timers N]

Prints ns per operation (as called from a Python loop; the bare loop's own cost is printed too)
and bytes per timer measured with tracemalloc.  Not a test: pytest does not collect bench/.
"""
from __future__ import annotations

import argparse
import gc
import heapq
import itertools
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout
from ustack._timerwheel import TimerWheel  # noqa: E402


class HeapHandle:
    __slots__ = ("entry", "payload")


class HeapTimers:
    """The usual heapq timer queue: entries [deadline, seq, handle], cancelled ones left in the
    heap with handle None until they reach the top (the heapq documentation's recipe)."""

    def __init__(self, now: int = 0) -> None:
        self.now = now
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()

    def schedule(self, deadline: int, payload: Any) -> HeapHandle:
        h = HeapHandle()
        h.payload = payload
        h.entry = entry = [deadline, next(self._seq), h]
        heapq.heappush(self._heap, entry)
        return h

    def cancel(self, h: HeapHandle) -> None:
        if h.entry is not None:
            h.entry[2] = None
            h.entry = None

    def reschedule(self, h: HeapHandle, deadline: int) -> None:
        self.cancel(h)
        h.entry = entry = [deadline, next(self._seq), h]
        heapq.heappush(self._heap, entry)

    def advance(self, now: int) -> list[Any]:
        self.now = now
        heap, fired = self._heap, []
        while heap and heap[0][0] <= now:
            h = heapq.heappop(heap)[2]
            if h is not None:
                h.entry = None
                fired.append(h.payload)
        return fired


def per_op(fn, n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        t0 = time.perf_counter_ns()
        fn()
        return (time.perf_counter_ns() - t0) / n
    finally:
        gc.enable()


def measure(make, deadlines: list[int]) -> dict[str, float]:
    n = len(deadlines)
    payload = object()
    out: dict[str, float] = {}

    # Memory: the timers alone (the queue holds them; our list of handles is not counted).
    gc.collect()
    tracemalloc.start()
    q = make()
    base = tracemalloc.get_traced_memory()[0]
    for d in deadlines:
        q.schedule(d, payload)
    out["bytes/timer"] = (tracemalloc.get_traced_memory()[0] - base) / n
    tracemalloc.stop()
    del q

    q = make()
    sched, resched, cancel = q.schedule, q.reschedule, q.cancel
    handles: list[Any] = []
    append = handles.append
    out["schedule"] = per_op(lambda: [append(sched(d, payload)) for d in deadlines], n)
    pairs = list(zip(handles, deadlines))
    # Every ACK restarts the retransmission timer: later each time.
    out["reschedule later"] = per_op(lambda: [resched(h, d + 200) for h, d in pairs], n)
    out["reschedule later x5"] = per_op(
        lambda: [resched(h, d + 200 + k) for k in range(1, 6) for h, d in pairs], 5 * n
    )
    out["reschedule earlier"] = per_op(lambda: [resched(h, d) for h, d in pairs], n)
    out["cancel"] = per_op(lambda: [cancel(h) for h in handles], n)
    out["reschedule inactive"] = per_op(lambda: [resched(h, d) for h, d in pairs], n)

    # Virtual time on a fresh queue (the heap would otherwise first wade through the millions of
    # dead entries the reschedules left): 1 s steps over 61 s, every timer firing once.
    del q, sched, resched, cancel, handles, append, pairs
    q = make()
    for d in deadlines:
        q.schedule(d, payload)
    fired = 0

    def run() -> None:
        nonlocal fired
        for now in range(1000, 62_000, 1000):
            fired += len(q.advance(now))

    out["advance, per fired (1 s steps)"] = per_op(run, n)
    assert fired == n and not q.advance(62_000)

    # One jump of an hour over a million timers.
    for d in deadlines:
        q.schedule(62_000 + d, payload)
    jump: list[Any] = []
    out["advance, per fired (1 h jump)"] = per_op(lambda: jump.extend(q.advance(3_662_000)), n)
    assert len(jump) == n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timers", type=int, default=1_000_000)
    args = parser.parse_args()
    rng = random.Random(0)
    deadlines = [rng.randrange(1, 60_001) for _ in range(args.timers)]

    loop = per_op(lambda: [None for _ in deadlines], len(deadlines))
    wheel = measure(TimerWheel, deadlines)
    heap = measure(HeapTimers, deadlines)

    print(f"{args.timers:,} timers, deadlines uniform over 60 s; ns per op from a Python loop")
    print(f"(the bare list-comprehension loop costs {loop:.0f} ns per item)\n")
    print(f"{'':34}{'TimerWheel':>12}{'heapq':>12}")
    for key in wheel:
        print(f"{key:34}{wheel[key]:12.0f}{heap[key]:12.0f}")


if __name__ == "__main__":
    main()
