"""What every part of the TCP core shares: sequence arithmetic, Linux's timing constants
and segment sizes.  No I/O, no state."""
from __future__ import annotations

M32 = 0xFFFFFFFF
NEVER = 1 << 62

TCP_RTO_MIN = 200          # ms (Linux TCP_RTO_MIN)
TCP_RTO_MAX = 120_000      # ms (Linux TCP_RTO_MAX)
TCP_TIMEOUT_INIT = 1000    # ms (RFC 6298 initial RTO; Linux TCP_TIMEOUT_INIT)
TCP_TIMEOUT_MIN = 2        # ms (Linux: 2 jiffies)
TCP_ATO_MIN = 40           # ms (HZ/25: Linux's minimal delayed-ACK timeout)
TCP_DELACK_MAX = 200       # ms
TCP_MAX_QUICKACKS = 16
TCP_INIT_CWND = 10         # segments (RFC 6928, Linux TCP_INIT_CWND)
TS_OPT_LEN = 12            # NOP NOP TS(10)
TCP_RMEM_TO_WIN_SCALE = 8
TCP_DEFAULT_SCALING_RATIO = 1 << (TCP_RMEM_TO_WIN_SCALE - 1)  # window = half the memory
MAX_WSCALE = 14
GSO_MAX_SIZE = 65536 - 321   # sk_gso_max_size on a TUN device: 64 KB less MAX_TCP_HEADER + 1


PAWS_DATA = 1     # tcp_disordered_ack_check: SKB_DROP_REASON_TCP_RFC7323_PAWS
PAWS_ACK = 2      # ... SKB_DROP_REASON_TCP_RFC7323_PAWS_ACK


def _before(a: int, b: int) -> bool:
    """a precedes b in sequence space (Linux before())."""
    return ((a - b) & M32) > 0x7FFFFFFF


def _after(a: int, b: int) -> bool:
    return ((b - a) & M32) > 0x7FFFFFFF
