"""The kernel's own view of its TCP sockets and counters in the calling thread's namespace
(what interop tests compare ustack against)."""
from __future__ import annotations

# /proc/net/tcp state codes (include/net/tcp_states.h)
KERNEL_STATES = {1: "ESTAB", 2: "SYN-SENT", 3: "SYN-RECV", 4: "FIN-WAIT-1", 5: "FIN-WAIT-2",
                 6: "TIME-WAIT", 7: "CLOSED", 8: "CLOSE-WAIT", 9: "LAST-ACK", 10: "LISTEN",
                 11: "CLOSING"}


def kernel_sockets() -> list[tuple[int, int, str]]:
    """(local port, remote port, state) of the kernel's TCP sockets in this namespace."""
    out = []
    with open("/proc/thread-self/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            lport = int(parts[1].split(":")[1], 16)
            rport = int(parts[2].split(":")[1], 16)
            out.append((lport, rport, KERNEL_STATES[int(parts[3], 16)]))
    return out


def kernel_mib() -> dict[str, int]:
    """The kernel's counters in this namespace, by nstat name (TcpOutRsts, TcpExtTW, ...)."""
    out: dict[str, int] = {}
    for path in ("/proc/thread-self/net/snmp", "/proc/thread-self/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            group, *fields = names.split()
            _, *nums = values.split()
            for field, num in zip(fields, nums):
                out[group.rstrip(":") + field] = int(num)
    return out
