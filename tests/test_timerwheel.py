"""ustack._timerwheel against a heapq reference, at scale, and around the edges of its contract."""
from __future__ import annotations

import gc
import heapq
import random
import tracemalloc
import weakref

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ustack._timerwheel import LEVELS, SLOT_BITS, TimerHandle, TimerWheel

LLONG_MIN = -(2**63)
LLONG_MAX = 2**63 - 1


class HeapReference:
    """The obvious timer queue: a heap with lazy deletion.  Only what the wheel must match."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.deadline: dict[int, int] = {}  # active timer id -> deadline
        self._heap: list[tuple[int, int]] = []

    def set(self, tid: int, deadline: int) -> None:
        self.deadline[tid] = deadline
        heapq.heappush(self._heap, (deadline, tid))

    def cancel(self, tid: int) -> None:
        self.deadline.pop(tid, None)

    def advance(self, now: int) -> list[int]:
        self.now = now
        fired = []
        while self._heap and self._heap[0][0] <= now:
            deadline, tid = heapq.heappop(self._heap)
            if self.deadline.get(tid) == deadline:
                del self.deadline[tid]
                fired.append(tid)
        return fired

    def earliest(self) -> int | None:
        return min(self.deadline.values(), default=None)


def on_level0(deadline: int, now: int) -> bool:
    """The wheel's finest level holds deadlines in now's 2**SLOT_BITS ms block."""
    return deadline > now and deadline >> SLOT_BITS == now >> SLOT_BITS


# Offsets from now: around slot and level boundaries, ordinary RTO-sized, far (2**40 and more)
# and in the past.
LEVEL_SPANS = [2 ** (SLOT_BITS * k) for k in range(1, 4)]
boundaries = st.sampled_from(
    [0, 1, 2**40, 2**42] + [span + e for span in LEVEL_SPANS for e in (-1, 0, 1)]
)
deltas = st.one_of(
    st.integers(-100, 300), st.integers(-(2**20), 2**20), st.integers(0, 2**44), boundaries
)
steps = st.one_of(st.integers(0, 100), st.integers(0, 5000), st.integers(0, 2**44), boundaries)


class WheelVersusHeap(RuleBasedStateMachine):
    @initialize(now=st.one_of(st.just(0), st.integers(-(2**50), 2**50)))
    def start(self, now: int) -> None:
        self.wheel = TimerWheel(now)
        self.ref = HeapReference(now)
        self.handles: list[TimerHandle] = []

    def check_fired(self, fired: list[int]) -> None:
        expected = self.ref.advance(self.wheel.now)
        assert sorted(fired) == sorted(expected)
        deadlines = [self.handles[tid].deadline for tid in fired]
        assert deadlines == sorted(deadlines)

    @rule(delta=deltas)
    def schedule(self, delta: int) -> None:
        tid = len(self.handles)
        self.handles.append(self.wheel.schedule(self.ref.now + delta, tid))
        self.ref.set(tid, self.ref.now + delta)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), delta=deltas)
    def reschedule(self, data: st.DataObject, delta: int) -> None:
        tid = data.draw(st.integers(0, len(self.handles) - 1))
        self.wheel.reschedule(self.handles[tid], self.ref.now + delta)
        self.ref.set(tid, self.ref.now + delta)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), later=st.integers(1, 20), times=st.integers(1, 5))
    def restart_later(self, data: st.DataObject, later: int, times: int) -> None:
        """The retransmission timer on every ACK: pushed later, several times in a row."""
        tid = data.draw(st.integers(0, len(self.handles) - 1))
        for _ in range(times):
            deadline = self.handles[tid].deadline + later
            self.wheel.reschedule(self.handles[tid], deadline)
            self.ref.set(tid, deadline)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        tid = data.draw(st.integers(0, len(self.handles) - 1))
        self.wheel.cancel(self.handles[tid])
        self.ref.cancel(tid)

    @rule(step=steps)
    def advance(self, step: int) -> None:
        self.check_fired(self.wheel.advance(self.ref.now + step))

    @rule()
    def advance_to_next_deadline(self) -> None:
        """Loop advance(next_deadline()) until something fires: the earliest timers, soon."""
        earliest = self.ref.earliest()
        for _ in range(LEVELS):
            t = self.wheel.next_deadline()
            if earliest is None:
                assert t is None
                return
            assert self.ref.now <= t <= max(earliest, self.ref.now)
            fired = self.wheel.advance(t)
            self.check_fired(fired)
            if fired:
                assert t == max(earliest, self.ref.now)
                return
        pytest.fail(f"earliest deadline {earliest} not reached in {LEVELS} steps")

    @invariant()
    def same_timers(self) -> None:
        assert len(self.wheel) == len(self.ref.deadline)
        assert self.wheel.now == self.ref.now
        for tid, h in enumerate(self.handles):
            assert h.active == (tid in self.ref.deadline)
            assert h.payload == tid
            if h.active:
                assert h.deadline == self.ref.deadline[tid]

    @invariant()
    def next_deadline_contract(self) -> None:
        t = self.wheel.next_deadline()
        earliest = self.ref.earliest()
        if earliest is None:
            assert t is None
        elif earliest <= self.ref.now:
            assert t == self.ref.now  # overdue: come back now
        else:
            assert self.ref.now < t <= earliest
            if on_level0(earliest, self.ref.now):
                assert t == earliest


TestWheelVersusHeap = WheelVersusHeap.TestCase
TestWheelVersusHeap.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("stepping", ["1s", "random"])
def test_million_timers_fire_in_their_interval(stepping: str) -> None:
    rng = random.Random(1)
    n = 1_000_000
    deadlines = [rng.randrange(1, 60_001) for _ in range(n)]
    wheel = TimerWheel(0)
    schedule = wheel.schedule
    for d in deadlines:
        schedule(d, d)
    assert len(wheel) == n
    everything: list[int] = []
    then = 0
    while len(wheel):
        now = then + (1000 if stepping == "1s" else rng.choice([0, 1, 7, 64, 999, 4096, 13_000]))
        fired = wheel.advance(now)
        if fired:
            # Nothing early, nothing late (due at or before now, and after the previous advance).
            assert then < fired[0] and fired[-1] <= now
        everything += fired
        then = now
    # Each advance's payloads are in order, so all of them together are sorted: every timer
    # fired exactly once and in the advance whose interval holds its deadline.
    deadlines.sort()
    assert everything == deadlines
    assert wheel.next_deadline() is None


def test_ack_clocked_restarts_match_reference() -> None:
    """10k connections whose retransmission timer is pushed later on (nearly) every tick."""
    rng = random.Random(2)
    wheel = TimerWheel(0)
    ref = HeapReference(0)
    handles = []
    for tid in range(10_000):
        handles.append(wheel.schedule(200 + tid % 300, tid))
        ref.set(tid, 200 + tid % 300)
    for now in range(1, 2000):
        for tid in rng.choices(range(10_000), k=200):
            deadline = now + rng.choice([200, 201, 250, 3000])
            wheel.reschedule(handles[tid], deadline)
            ref.set(tid, deadline)
        fired = wheel.advance(now)
        assert sorted(fired) == sorted(ref.advance(now))
        assert len(wheel) == len(ref.deadline)


@pytest.mark.parametrize("now", [0, -(2**40), 2**40 + 12345])
@pytest.mark.parametrize(
    "ahead", [1, 63, 64, 255, 256, 4097, 65537, 2**30 + 3, 2**40, 2**40 + 2**39 + 17, 2**55]
)
def test_far_deadline_reached_in_levels_steps(now: int, ahead: int) -> None:
    wheel = TimerWheel(now)
    wheel.schedule(now + ahead, "far")
    wheel.schedule(now + ahead + 1, "later")
    for step in range(1, LEVELS + 1):
        t = wheel.next_deadline()
        assert wheel.now < t <= now + ahead
        if on_level0(now + ahead, wheel.now):
            assert t == now + ahead
        fired = wheel.advance(t)
        if fired:
            assert fired == ["far"] and t == now + ahead
            break
    else:
        pytest.fail("not reached")
    assert wheel.advance(LLONG_MAX) == ["later"]


def test_extreme_times() -> None:
    wheel = TimerWheel(LLONG_MIN)
    wheel.schedule(LLONG_MAX, "end")
    wheel.schedule(LLONG_MIN, "start")
    wheel.schedule(-1, "minus one")
    wheel.schedule(0, "zero")
    assert wheel.advance(LLONG_MIN) == ["start"]
    assert wheel.advance(0) == ["minus one", "zero"]
    assert wheel.advance(LLONG_MAX - 1) == []
    assert wheel.next_deadline() == LLONG_MAX
    assert wheel.advance(LLONG_MAX) == ["end"]
    with pytest.raises(OverflowError):
        wheel.schedule(LLONG_MAX + 1, "too far")


def test_past_deadlines_fire_first_and_sorted() -> None:
    wheel = TimerWheel(1000)
    wheel.schedule(1001, "c")
    wheel.schedule(5, "a")
    wheel.schedule(1000, "b")
    assert wheel.next_deadline() == 1000
    assert wheel.advance(1000) == ["a", "b"]
    assert wheel.advance(1000) == []
    assert wheel.advance(1001) == ["c"]


def test_time_goes_forward_only() -> None:
    wheel = TimerWheel(50)
    h = wheel.schedule(60, None)
    with pytest.raises(ValueError, match="forward"):
        wheel.advance(49)
    assert wheel.now == 50 and h.active
    assert wheel.advance(50) == []


def test_cancel_is_idempotent_and_reschedule_rearms() -> None:
    wheel = TimerWheel()
    h = wheel.schedule(10, "x")
    wheel.cancel(h)
    wheel.cancel(h)
    assert not h.active and len(wheel) == 0 and h.payload == "x"
    assert wheel.advance(20) == []
    wheel.reschedule(h, 30)
    assert h.active and h.deadline == 30 and len(wheel) == 1
    assert wheel.advance(30) == ["x"]
    assert not h.active
    wheel.reschedule(h, 25)  # a fired handle is re-armed too, here in the past
    assert wheel.advance(31) == ["x"]


def test_handles_belong_to_one_wheel() -> None:
    a, b = TimerWheel(), TimerWheel()
    h = a.schedule(10, "x")
    with pytest.raises(ValueError, match="another"):
        b.cancel(h)
    with pytest.raises(ValueError, match="another"):
        b.reschedule(h, 5)
    assert h.active and len(a) == 1 and len(b) == 0
    a.cancel(h)
    b.reschedule(h, 5)  # an inactive handle may be armed anywhere
    assert a.advance(100) == [] and b.advance(100) == ["x"]


def test_handle_is_read_only_and_made_by_the_wheel() -> None:
    with pytest.raises(TypeError):
        TimerHandle()
    h = TimerWheel().schedule(1, None)
    with pytest.raises(AttributeError):
        h.deadline = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        h.active = False  # type: ignore[misc]


class Connection:
    """A payload that refers back to its stack's wheel, as the TCP core's will."""

    def __init__(self, wheel: TimerWheel) -> None:
        self.wheel = wheel
        self.timer = wheel.schedule(wheel.now + 200, self)


def test_wheel_keeps_payloads_alive_and_fired_handles_keep_nothing_else() -> None:
    wheel = TimerWheel()
    conn = Connection(wheel)
    alive = weakref.ref(conn)
    handle = conn.timer
    del conn
    gc.collect()
    assert alive() is not None  # still scheduled
    (fired,) = wheel.advance(200)
    assert fired is alive() and not handle.active
    assert gc.get_referents(handle) == [fired]  # not the wheel, not other handles
    del fired, handle
    gc.collect()
    assert alive() is None


def test_cycle_through_wheel_and_payload_is_collected() -> None:
    wheel = TimerWheel()
    conns = [Connection(wheel) for _ in range(100)]
    alive = [weakref.ref(c) for c in conns]
    del conns, wheel
    gc.collect()
    assert all(r() is None for r in alive)


def test_dropping_the_wheel_deactivates_its_handles() -> None:
    wheel = TimerWheel()
    handle = wheel.schedule(5, "x")
    del wheel
    assert not handle.active and handle.payload == "x"


def test_bytes_per_timer() -> None:
    n = 100_000
    wheel = TimerWheel()
    payload = object()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for d in range(n):
            wheel.schedule(d * 37 % 60_000, payload)
        per_timer = (tracemalloc.get_traced_memory()[0] - before) / n
    finally:
        tracemalloc.stop()
    assert per_timer < 100, per_timer
