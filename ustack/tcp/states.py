"""TCP states (RFC 9293 §3.3.2) with the names Linux's `ss` prints.

States are small ints so the per-segment path compares integers.  NAMES maps them to the `ss`
spelling users already read ("ESTAB", "TIME-WAIT", ...).
"""
from __future__ import annotations

CLOSED = 0
LISTEN = 1
SYN_SENT = 2
SYN_RECV = 3
ESTABLISHED = 4
FIN_WAIT_1 = 5
FIN_WAIT_2 = 6
CLOSE_WAIT = 7
CLOSING = 8
LAST_ACK = 9
TIME_WAIT = 10

NAMES = {
    CLOSED: "CLOSED",  # ss prints UNCONN for a closed socket; CLOSED is RFC 9293's name
    LISTEN: "LISTEN",
    SYN_SENT: "SYN-SENT",
    SYN_RECV: "SYN-RECV",
    ESTABLISHED: "ESTAB",
    FIN_WAIT_1: "FIN-WAIT-1",
    FIN_WAIT_2: "FIN-WAIT-2",
    CLOSE_WAIT: "CLOSE-WAIT",
    CLOSING: "CLOSING",
    LAST_ACK: "LAST-ACK",
    TIME_WAIT: "TIME-WAIT",
}

# States in which the connection is synchronized (RFC 9293 §3.5.2, third group).
SYNCHRONIZED = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2, CLOSE_WAIT, CLOSING, LAST_ACK,
                          TIME_WAIT})
# States in which we may still receive data (the peer has not sent FIN).
RECEIVING = frozenset({ESTABLISHED, FIN_WAIT_1, FIN_WAIT_2})
# States after our FIN was queued: the send side is closed.
SEND_CLOSED = frozenset({FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT, CLOSED})
