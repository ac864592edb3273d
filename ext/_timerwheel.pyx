"""A hierarchical timing wheel in integer milliseconds that owns no clock.

The caller moves time forward with ``advance(now)`` and gets back the payloads of the timers that
came due, in deadline order.  It holds one timer per TCP connection and one per TIME-WAIT record,
so a timer costs one small object (the ``TimerHandle``, 80 bytes with its GC header) and nothing
else: the handle *is* the list node.

Shape (Varghese & Lauck, "Hashed and Hierarchical Timing Wheels", 1987, scheme 7; the cascading
wheel Linux used before 4.8, kernel/time/timer.c): ``LEVELS`` wheels of 256 slots, level k slot s
holding the timers whose deadline agrees with ``now`` on every bit above bit 8(k+1) and has digit
s in bits [8k, 8k+8).  Level 0 spans 256 ms, level 1 65 s, level 2 4.7 hours.  Times are stored
biased (sign bit flipped) so the 64-bit unsigned order is the signed order, and 8 levels cover all
64 bits: there is no overflow list and no limit on how far ahead a deadline may be.  Two facts the
whole module leans on:

* A filed timer's slot is strictly after ``now``'s digit on its level, and every slot on level j
  starts before every slot on level k > j.  So the next thing that can happen is the first
  occupied slot (lowest set bit of the occupancy bitmap) on the lowest occupied level, and
  ``advance`` jumps straight there however far away it is: no per-millisecond loop.
* A slot's start time is a lower bound for the deadlines filed in it.  When the slot comes up,
  level 0 fires the timers whose deadline equals its start; higher levels re-file (cascade) their
  timers into finer levels, each timer at most once per level.  Why 256 slots and not 64: firing
costs about one cache miss per timer per level it passes through, and a 60 s TIME-WAIT timer
passes through two levels of 8 bits but three of 6.

``reschedule`` to a later deadline (every ACK restarts the retransmission timer) only stores the
new deadline: the slot start is still a lower bound, and the timer is re-filed by its true
deadline when its old slot comes up.  Timers scheduled at or before ``now`` wait in a "due" list
that the next ``advance`` fires first, sorted.

The wheel holds one strong reference to every scheduled handle through raw pointers, and a
``TimerWheel`` type hook (``_wheel_traverse``/``_wheel_clear``, installed at import) shows those
references to the cyclic GC, so a wheel whose payloads refer back to it is still collected.
"""
cimport cython
from cpython.ref cimport PyObject, Py_INCREF, Py_DECREF
from libc.stdlib cimport malloc, free, qsort

cdef extern from *:
    """
    #define USTACK_CTZ64(x) __builtin_ctzll(x)
    #define USTACK_CLZ64(x) __builtin_clzll(x)
    """
    int USTACK_CTZ64(unsigned long long x) noexcept nogil
    int USTACK_CLZ64(unsigned long long x) noexcept nogil

# Our own view of the two type slots we extend; cpython.object declares them with Python-object
# arguments and "except -1", which is not what a GC callback may do.
cdef extern from "Python.h":
    ctypedef int (*visitproc)(PyObject*, void*) noexcept
    ctypedef int (*traverseproc)(PyObject*, visitproc, void*) noexcept
    ctypedef int (*inquiry)(PyObject*) noexcept
    ctypedef struct PyTypeObject:
        traverseproc tp_traverse
        inquiry tp_clear

cdef enum:
    _SLOT_BITS = 8                  # any value from 6 up works; tests follow SLOT_BITS
    _SLOTS = 1 << _SLOT_BITS        # slots per level
    _LEVELS = (64 + _SLOT_BITS - 1) / _SLOT_BITS    # enough levels for all 64 bits
    _WORDS = _SLOTS / 64            # occupancy bitmap words per level
    _NSLOTS = _LEVELS * _SLOTS      # wheel slots ...
    _DUE = _NSLOTS                  # ... and one list of timers already due (deadline <= now)
    _INACTIVE = -1

LEVELS = _LEVELS
SLOT_BITS = _SLOT_BITS

cdef unsigned long long _SIGN = 1ULL << 63
# _HI_MASK[k]: the bits above level k, on which a level-k timer agrees with now.
cdef unsigned long long _HI_MASK[_LEVELS]


cdef void _init_hi_mask() noexcept:
    cdef int k
    for k in range(_LEVELS):
        if (k + 1) * _SLOT_BITS >= 64:
            _HI_MASK[k] = 0
        else:
            _HI_MASK[k] = ~((1ULL << ((k + 1) * _SLOT_BITS)) - 1)


_init_hi_mask()


cdef inline unsigned long long _bias(long long t) noexcept nogil:
    return (<unsigned long long>t) ^ _SIGN


cdef inline long long _unbias(unsigned long long u) noexcept nogil:
    return <long long>(u ^ _SIGN)


cdef inline unsigned long long _slot_start(unsigned long long unow, int level, int digit) noexcept nogil:
    return (unow & _HI_MASK[level]) | ((<unsigned long long>digit) << (level * _SLOT_BITS))


@cython.final
@cython.freelist(256)
@cython.auto_pickle(False)
cdef class TimerHandle:
    """One scheduled timer; returned by ``TimerWheel.schedule``, never constructed directly.

    ``active`` is true from schedule/reschedule until the timer fires or is cancelled.  The
    payload stays readable afterwards; an inactive handle refers to nothing but its payload.
    """
    # Intrusive doubly linked slot list.  Links and owner are borrowed pointers: the wheel owns
    # one reference to each handle it has filed, none the other way round.
    cdef PyObject* _next
    cdef PyObject* _prev
    cdef PyObject* _owner           # the TimerWheel while active, else NULL
    cdef readonly long long deadline
    cdef readonly object payload
    cdef int _slot                  # index into TimerWheel._heads, _INACTIVE when not filed

    def __init__(self):
        raise TypeError("TimerHandle is created by TimerWheel.schedule()")

    @property
    def active(self):
        return self._owner != NULL

    def __repr__(self):
        state = "active" if self._owner != NULL else "inactive"
        return f"<TimerHandle deadline={self.deadline} {state} payload={self.payload!r}>"


cdef struct _DueEntry:
    long long deadline
    PyObject* handle


cdef int _due_cmp(const void* a, const void* b) noexcept nogil:
    cdef long long x = (<const _DueEntry*>a).deadline
    cdef long long y = (<const _DueEntry*>b).deadline
    return (x > y) - (x < y)


@cython.final
@cython.auto_pickle(False)
cdef class TimerWheel:
    """Hierarchical timing wheel with a 1 ms tick, driven by ``advance(now)``.

    schedule, cancel and reschedule are O(1); advance costs O(occupied slots passed + timers
    fired or cascaded), independent of how many milliseconds it jumps.
    """
    cdef PyObject* _heads[_NSLOTS + 1]
    # Bit i % 64 of _occupied[i // 64]: slot list i is not empty (a level is _WORDS words).
    cdef unsigned long long _occupied[_NSLOTS / 64]
    cdef unsigned int _level_mask               # bit k: some slot on level k is not empty
    cdef unsigned long long _unow               # now, biased
    cdef Py_ssize_t _count
    # Never set.  An object attribute makes Cython emit a GC-aware type (tp_traverse, tp_clear,
    # GC allocation); _install_gc_hooks() then extends those two slots to cover the handles.
    cdef object _gc_anchor

    def __init__(self, long long now=0):
        if self._count:
            raise RuntimeError("TimerWheel.__init__ called on a wheel that holds timers")
        self._unow = _bias(now)

    def __dealloc__(self):
        self._clear()

    @property
    def now(self):
        """The wheel's current time: the argument of the last advance (or of the constructor)."""
        return _unbias(self._unow)

    def __len__(self):
        return self._count

    def __repr__(self):
        return f"<TimerWheel now={_unbias(self._unow)} timers={self._count}>"

    # -- the slot lists -------------------------------------------------------------------------

    cdef inline void _file(self, TimerHandle h) noexcept:
        """Link h (not linked anywhere) into the slot its deadline calls for, relative to now."""
        cdef unsigned long long ud = _bias(h.deadline)
        cdef int level, digit, idx
        if ud <= self._unow:
            idx = _DUE
        else:
            # The highest bit where deadline and now differ picks the level.
            level = (63 - USTACK_CLZ64(ud ^ self._unow)) // _SLOT_BITS
            digit = <int>((ud >> (level * _SLOT_BITS)) & (_SLOTS - 1))
            idx = level * _SLOTS + digit
            self._occupied[idx >> 6] |= 1ULL << (idx & 63)
            self._level_mask |= 1u << level
        cdef PyObject* head = self._heads[idx]
        h._prev = NULL
        h._next = head
        if head != NULL:
            (<TimerHandle>head)._prev = <PyObject*>h
        self._heads[idx] = <PyObject*>h
        h._slot = idx

    cdef inline void _unlink(self, TimerHandle h) noexcept:
        """Take h out of its slot list (it stays active; the caller files or releases it)."""
        cdef int idx = h._slot
        cdef int level
        if h._prev != NULL:
            (<TimerHandle>h._prev)._next = h._next
        else:
            self._heads[idx] = h._next
            if h._next == NULL and idx != _DUE:
                self._occupied[idx >> 6] &= ~(1ULL << (idx & 63))
                if self._occupied[idx >> 6] == 0:
                    level = idx // _SLOTS
                    if self._first_slot(level) < 0:
                        self._level_mask &= ~(1u << level)
        if h._next != NULL:
            (<TimerHandle>h._next)._prev = h._prev
        h._next = NULL
        h._prev = NULL
        h._slot = _INACTIVE

    cdef inline int _first_slot(self, int level) noexcept:
        """The first non-empty slot list on a level (its index in _heads), or -1."""
        cdef int w
        for w in range(level * _WORDS, (level + 1) * _WORDS):
            if self._occupied[w]:
                return w * 64 + USTACK_CTZ64(self._occupied[w])
        return -1

    cdef inline void _arm(self, TimerHandle h) noexcept:
        """File an inactive handle and take the wheel's reference to it."""
        Py_INCREF(h)
        h._owner = <PyObject*>self
        self._count += 1
        self._file(h)

    cdef inline void _release(self, TimerHandle h) noexcept:
        """Forget an unlinked handle: inactive, and the wheel's reference dropped (may free it)."""
        h._owner = NULL
        self._count -= 1
        Py_DECREF(h)

    cdef void _clear(self) noexcept:
        """Release every timer, one at a time so the wheel is consistent whenever a payload's
        finaliser runs."""
        cdef int idx
        cdef PyObject* p
        for idx in range(_NSLOTS + 1):
            p = self._heads[idx]
            while p != NULL:
                self._unlink(<TimerHandle>p)
                self._release(<TimerHandle>p)
                p = self._heads[idx]

    # -- the API --------------------------------------------------------------------------------

    def schedule(self, long long deadline, payload):
        """Arm a new timer; a deadline at or before now fires on the next advance."""
        cdef TimerHandle h = TimerHandle.__new__(TimerHandle)
        h.deadline = deadline
        h.payload = payload
        self._arm(h)
        return h

    def reschedule(self, TimerHandle h not None, long long deadline):
        """Move h to a new deadline, re-arming it if it has fired or been cancelled."""
        if h._owner == NULL:
            h.deadline = deadline
            self._arm(h)
            return
        if h._owner != <PyObject*>self:
            raise ValueError("the timer is scheduled on another TimerWheel")
        if deadline >= h.deadline and h._slot != _DUE:
            # Lazy: the old slot's start is still a lower bound; the timer is re-filed by its
            # true deadline when that slot comes up (advance or next_deadline).
            h.deadline = deadline
            return
        self._unlink(h)
        h.deadline = deadline
        self._file(h)

    def cancel(self, TimerHandle h not None):
        """Disarm h; cancelling an inactive handle does nothing."""
        if h._owner == NULL:
            return
        if h._owner != <PyObject*>self:
            raise ValueError("the timer is scheduled on another TimerWheel")
        self._unlink(h)
        self._release(h)

    def advance(self, long long now):
        """Move time forward to now; return the payloads of all timers with deadline <= now, in
        nondecreasing deadline order."""
        cdef unsigned long long target = _bias(now)
        if target < self._unow:
            raise ValueError(f"time goes forward only: advance({now}) with now={self.now}")
        cdef list fired = []
        if self._heads[_DUE] != NULL:
            self._fire_due(fired)
        cdef int level, digit, idx
        cdef unsigned long long start, ud
        cdef PyObject* p
        while self._level_mask:
            level = USTACK_CTZ64(self._level_mask)
            idx = self._first_slot(level)
            digit = idx - level * _SLOTS
            start = _slot_start(self._unow, level, digit)
            if start > target:
                break
            # Time passes to the start of the earliest occupied slot: nothing is due before it.
            self._unow = start
            p = self._heads[idx]
            while p != NULL:
                ud = _bias((<TimerHandle>p).deadline)
                if ud == start:
                    fired.append((<TimerHandle>p).payload)
                    self._unlink(<TimerHandle>p)
                    self._release(<TimerHandle>p)
                else:
                    # Level > 0 cascades into a finer level; a timer rescheduled later moves to
                    # wherever its deadline belongs.  Neither lands back in this slot.
                    self._unlink(<TimerHandle>p)
                    self._file(<TimerHandle>p)
                p = self._heads[idx]
        self._unow = target
        return fired

    cdef int _fire_due(self, list fired) except -1:
        """Fire the due list (all deadlines <= now, before anything in the wheel), sorted."""
        cdef Py_ssize_t n = 0, i
        cdef PyObject* p = self._heads[_DUE]
        while p != NULL:
            n += 1
            p = (<TimerHandle>p)._next
        cdef _DueEntry* entries = <_DueEntry*>malloc(n * sizeof(_DueEntry))
        if entries == NULL:
            raise MemoryError()
        try:
            p = self._heads[_DUE]
            for i in range(n):
                entries[i].deadline = (<TimerHandle>p).deadline
                entries[i].handle = p
                p = (<TimerHandle>p)._next
            qsort(entries, n, sizeof(_DueEntry), _due_cmp)
            for i in range(n):
                fired.append((<TimerHandle>entries[i].handle).payload)
            for i in range(n):
                self._unlink(<TimerHandle>entries[i].handle)
                self._release(<TimerHandle>entries[i].handle)
        finally:
            free(entries)
        return 0

    def next_deadline(self):
        """When to advance next: None if empty, else T <= the earliest deadline.

        T is exact when the earliest timer is on level 0 (within now's 256 ms block); otherwise it
        is the start of the slot holding the earliest timer, and advancing to it cascades that
        timer at least one level down, so "advance(next_deadline())" reaches the earliest deadline
        in at most LEVELS steps.  Overdue timers (scheduled with a deadline before now) give now,
        since time cannot go back.
        """
        if self._count == 0:
            return None
        if self._heads[_DUE] != NULL:
            return _unbias(self._unow)
        cdef int level, digit, idx, shift
        cdef unsigned long long start
        cdef PyObject* p
        cdef PyObject* nxt
        while True:
            level = USTACK_CTZ64(self._level_mask)
            idx = self._first_slot(level)
            digit = idx - level * _SLOTS
            start = _slot_start(self._unow, level, digit)
            shift = level * _SLOT_BITS
            # The slot start is the answer if some timer really belongs in this slot; timers that
            # were rescheduled later only sit here, so re-file them where they belong.
            p = self._heads[idx]
            while p != NULL:
                nxt = (<TimerHandle>p)._next
                if (_bias((<TimerHandle>p).deadline) >> shift) == (start >> shift):
                    return _unbias(start)
                self._unlink(<TimerHandle>p)
                self._file(<TimerHandle>p)
                p = nxt


# -- the GC hooks ------------------------------------------------------------------------------

cdef traverseproc _cython_wheel_traverse = NULL
cdef inquiry _cython_wheel_clear = NULL


cdef int _wheel_traverse(PyObject* o, visitproc visit, void* arg) noexcept:
    """tp_traverse: Cython's (the type, _gc_anchor), then the one reference held to each handle."""
    cdef int r = _cython_wheel_traverse(o, visit, arg)
    cdef int idx
    cdef PyObject* p
    if r:
        return r
    for idx in range(_NSLOTS + 1):
        p = (<TimerWheel>o)._heads[idx]
        while p != NULL:
            r = visit(p, arg)
            if r:
                return r
            p = (<TimerHandle>p)._next
    return 0


cdef int _wheel_clear(PyObject* o) noexcept:
    """tp_clear: drop every handle, which breaks any cycle running through a payload."""
    (<TimerWheel>o)._clear()
    return _cython_wheel_clear(o)


cdef void _install_gc_hooks() noexcept:
    global _cython_wheel_traverse, _cython_wheel_clear
    cdef PyTypeObject* t = <PyTypeObject*>TimerWheel
    _cython_wheel_traverse = t.tp_traverse
    _cython_wheel_clear = t.tp_clear
    t.tp_traverse = _wheel_traverse
    t.tp_clear = _wheel_clear


_install_gc_hooks()
