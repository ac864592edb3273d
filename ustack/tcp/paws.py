"""PAWS: Protection Against Wrapped Sequences (RFC 7323 §5; Linux tcp_paws_check/tcp_paws_reject).

ts_recent_stamp is kept in milliseconds here (Linux keeps seconds); the limits are Linux's.
"""
from __future__ import annotations

M32 = 0xFFFFFFFF
TCP_PAWS_MSL = 60_000               # ms: a RST is exempt once ts_recent is this old
# ms: ts_recent this old is stale.  Linux 6.18: INT_MAX / USEC_PER_SEC = 2147 s (relaxed from
# 24 days when microsecond TS clocks came, so a 1 MHz clock cannot wrap within the limit)
TCP_PAWS_WRAP = (2**31 - 1) // 1_000_000 * 1000


def paws_check(ts_recent: int, ts_recent_stamp: int, tsval: int, now: int, win: int = 0) -> bool:
    """True when tsval passes PAWS against ts_recent (Linux tcp_paws_check)."""
    diff = (ts_recent - tsval) & M32
    if diff >= 0x80000000 or diff <= win:
        return True
    if now - ts_recent_stamp >= TCP_PAWS_WRAP:
        return True
    if ts_recent == 0:
        return True
    return False


def paws_reject(ts_recent: int, ts_recent_stamp: int, tsval: int, now: int, rst: bool) -> bool:
    """True when the segment must be rejected by PAWS (Linux tcp_paws_reject)."""
    if paws_check(ts_recent, ts_recent_stamp, tsval, now):
        return False
    if rst and now - ts_recent_stamp >= TCP_PAWS_MSL:
        return False
    return True
