"""The kernel's own view of its TCP sockets and counters in the calling thread's namespace
(what interop tests compare ustack against): ustack.netns's readers, under the names the
tests use."""
from __future__ import annotations

from ustack.netns import KERNEL_STATES, kernel_sockets
from ustack.netns import kernel_counters as kernel_mib

__all__ = ["KERNEL_STATES", "kernel_sockets", "kernel_mib"]
