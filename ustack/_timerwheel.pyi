"""Hierarchical timing wheel in integer milliseconds, driven by the caller (ext/_timerwheel.pyx)."""
from typing import Any, final

LEVELS: int
"""Number of levels (8 of 256 slots: they cover all 64 bits of a deadline)."""
SLOT_BITS: int
"""Bits of the deadline per level (8); level 0 holds now's 2**SLOT_BITS ms block."""

@final
class TimerHandle:
    """One timer; created by ``TimerWheel.schedule``, not directly."""

    @property
    def deadline(self) -> int: ...
    @property
    def payload(self) -> Any: ...
    @property
    def active(self) -> bool:
        """Scheduled and not yet fired or cancelled."""

@final
class TimerWheel:
    def __init__(self, now: int = 0) -> None: ...
    @property
    def now(self) -> int:
        """The wheel's current time (the last advance, or the constructor's argument)."""
    def schedule(self, deadline: int, payload: Any) -> TimerHandle:
        """Arm a timer; a deadline <= now fires on the next advance."""
    def reschedule(self, h: TimerHandle, deadline: int) -> None:
        """Move h to deadline, re-arming it if inactive.  ValueError if active on another wheel."""
    def cancel(self, h: TimerHandle) -> None:
        """Disarm h (idempotent).  ValueError if active on another wheel."""
    def advance(self, now: int) -> list[Any]:
        """Move time to now; return the payloads with deadline <= now in deadline order.

        ValueError if now is before the wheel's current time.
        """
    def next_deadline(self) -> int | None:
        """None if empty; else when to advance next (<= the earliest deadline, exact on level 0).

        An overdue timer (deadline < now) gives now.  Looping ``advance(next_deadline())``
        reaches the earliest deadline in at most LEVELS steps.
        """
    def __len__(self) -> int: ...
