"""Stand-ins for tests and benchmarks (not needed to run ustack)."""
from __future__ import annotations


class ClosingStandIn:
    """The fields tcp_time_wait reads from a connection, for connection number `i` (a
    stand-in: building a million real connections would measure the handshake, not the
    TIME-WAIT table).  Peers 198.18.x.y, ports 1024 up, local port 80."""

    __slots__ = ("key", "laddr", "lport", "raddr", "rport", "rcv_nxt", "snd_max", "rcv_wscale",
                 "ts_ok", "ts_recent", "ts_recent_stamp", "ts_off", "reuseaddr", "binding",
                 "log")

    def __init__(self, i: int) -> None:
        self.raddr = 0xC6120000 | (i >> 15)
        self.rport = 1024 + (i & 0x7FFF)
        self.lport = 80
        self.laddr = 0xC6120002
        self.key = (self.raddr << 32) | (self.rport << 16) | self.lport
        self.rcv_nxt = i
        self.snd_max = i * 7
        self.rcv_wscale = 7
        self.ts_ok = True
        self.ts_recent = i
        self.ts_recent_stamp = 1
        self.ts_off = 0
        self.reuseaddr = False
        self.binding = None
        self.log = None

    def _rcv_window_now(self) -> int:
        return 65535
