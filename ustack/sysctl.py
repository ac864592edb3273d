"""Settings with Linux's sysctl names, per stack (like a network namespace's).

``stack.sysctl["net.ipv4.tcp_fin_timeout"] = 30`` works as ``sysctl -w`` does; names may also be
written with slashes (``net/ipv4/tcp_fin_timeout``) or as a /proc/sys path.  Settings Linux lacks
live under ``ustack.`` (for instance ``ustack.tcp_timewait_len``, the TIME-WAIT length in
seconds).  An unknown name or a value of the wrong kind raises with a message that says what
was wrong: a silently ignored setting is the worst kind of test failure.
"""
from __future__ import annotations

import warnings

from collections.abc import Iterator, MutableMapping
from typing import Any

# name -> (default, kind, minimum, maximum).  kind is int, "range" (two ints), "triple"
# (three ints) or "congestion" (a congestion control module's name).
_INT_MIN = -(2**31)
_INT_MAX = 2**31 - 1

DEFAULTS: dict[str, tuple[Any, Any, int, int]] = {
    # Linux settings, with the defaults a new network namespace has on Linux 6.18 (read off the
    # test machine; see Documentation/networking/ip-sysctl.rst for their meaning)
    "net.ipv4.tcp_timestamps": (1, int, 0, 2),
    "net.ipv4.tcp_window_scaling": (1, int, 0, 1),
    "net.ipv4.tcp_sack": (1, int, 0, 1),
    "net.ipv4.tcp_ecn": (0, int, 0, 2),
    "net.ipv4.tcp_syn_retries": (6, int, 1, 127),
    "net.ipv4.tcp_syn_linear_timeouts": (4, int, 0, 255),
    "net.ipv4.tcp_synack_retries": (5, int, 0, 255),
    "net.ipv4.tcp_retries1": (3, int, 0, 255),
    "net.ipv4.tcp_retries2": (15, int, 0, 255),
    "net.ipv4.tcp_orphan_retries": (0, int, 0, 255),
    "net.ipv4.tcp_fin_timeout": (60, int, 0, _INT_MAX),
    "net.ipv4.tcp_max_orphans": (65536, int, 0, _INT_MAX),
    "net.ipv4.tcp_max_tw_buckets": (131072, int, 0, _INT_MAX),
    "net.ipv4.tcp_tw_reuse": (2, int, 0, 2),
    "net.ipv4.tcp_tw_reuse_delay": (1000, int, 1, _INT_MAX),
    "net.ipv4.tcp_rfc1337": (0, int, 0, 1),
    "net.ipv4.tcp_keepalive_time": (7200, int, 1, _INT_MAX),
    "net.ipv4.tcp_keepalive_intvl": (75, int, 1, _INT_MAX),
    "net.ipv4.tcp_keepalive_probes": (9, int, 1, 127),
    "net.ipv4.tcp_max_syn_backlog": (2048, int, 0, _INT_MAX),
    "net.ipv4.tcp_syncookies": (1, int, 0, 2),
    "net.ipv4.tcp_abort_on_overflow": (0, int, 0, 1),
    "net.ipv4.tcp_invalid_ratelimit": (500, int, 0, _INT_MAX),
    "net.ipv4.tcp_challenge_ack_limit": (2147483647, int, 0, _INT_MAX),
    "net.ipv4.tcp_min_rtt_wlen": (300, int, 0, 86400),
    "net.ipv4.tcp_base_mss": (1024, int, 1, 65535),
    "net.ipv4.tcp_mtu_probing": (0, int, 0, 2),
    "net.ipv4.tcp_no_metrics_save": (1, int, 0, 1),
    "net.ipv4.tcp_slow_start_after_idle": (1, int, 0, 1),
    "net.ipv4.tcp_early_retrans": (3, int, 0, 4),
    "net.ipv4.tcp_recovery": (1, int, 0, 7),
    "net.ipv4.tcp_dsack": (1, int, 0, 1),
    "net.ipv4.tcp_fack": (0, int, 0, 1),
    "net.ipv4.tcp_frto": (2, int, 0, 2),
    "net.ipv4.tcp_reordering": (3, int, 1, _INT_MAX),
    "net.ipv4.tcp_max_reordering": (300, int, 1, _INT_MAX),
    "net.ipv4.tcp_retrans_collapse": (1, int, 0, 1),
    "net.ipv4.tcp_notsent_lowat": (4294967295, int, 1, 4294967295),
    "net.ipv4.tcp_congestion_control": ("cubic", "congestion", 0, 0),
    "net.ipv4.tcp_moderate_rcvbuf": (0, int, 0, 1),
    "net.ipv4.tcp_autocorking": (0, int, 0, 1),
    "net.ipv4.tcp_tso_win_divisor": (3, int, 1, 255),
    "net.ipv4.tcp_fastopen": (0, int, 0, 0x7FF),
    "net.ipv4.tcp_rmem": ((4096, 131072, 33554432), "triple", 1, _INT_MAX),
    "net.ipv4.tcp_wmem": ((4096, 16384, 4194304), "triple", 1, _INT_MAX),
    "net.ipv4.ip_local_port_range": ((32768, 60999), "range", 1, 65535),
    "net.ipv4.ip_default_ttl": (64, int, 1, 255),
    "net.ipv4.icmp_echo_ignore_all": (0, int, 0, 1),
    "net.core.somaxconn": (4096, int, 0, _INT_MAX),
    "net.core.rmem_max": (4194304, int, 0, _INT_MAX),
    "net.core.wmem_max": (4194304, int, 0, _INT_MAX),
    # ustack's own settings: the knobs Linux does not have.
    "ustack.tcp_timewait_len": (60, int, 0, _INT_MAX),  # seconds; Linux: TCP_TIMEWAIT_LEN, fixed
    "ustack.tcp_tw_recycle": (0, int, 0, 1),   # Linux < 4.12's experiment: see RECYCLE_WARNING
    "ustack.tcp_tw_silent_syn": (0, int, 0, 1),
    "ustack.tcp_tw_compact": (1, int, 0, 1),   # read when the stack starts: see twtable.py
    "ustack.event_log": (0, int, 0, 1 << 20),  # events kept per connection (0: no log)
}


# Linux settings ustack knows but does not implement yet.  Each reads as the value that says
# what ustack does (where that differs from Linux's default: tcp_ecn, tcp_fastopen,
# tcp_autocorking and tcp_moderate_rcvbuf read 0, tcp_no_metrics_save 1);
# writing another value is refused with a message, so that a test or a configuration never
# believes in a behaviour ustack does not have.
UNIMPLEMENTED: dict[str, str] = {
    "net.ipv4.tcp_autocorking": "ustack does not autocork: small writes leave as Nagle and "
                                "TCP_CORK/MSG_MORE allow",
    "net.ipv4.tcp_base_mss": "path MTU probing is not implemented",
    "net.ipv4.tcp_ecn": "ECN is not negotiated: ustack answers as with tcp_ecn=0",
    "net.ipv4.tcp_fack": "Linux 6.18 ignores it too (RACK replaced FACK)",
    "net.ipv4.tcp_fastopen": "TCP Fast Open is not implemented",
    "net.ipv4.tcp_moderate_rcvbuf": "receive buffer auto-tuning is not implemented: the "
                                    "buffer stays at tcp_rmem[1] or SO_RCVBUF",
    "net.ipv4.tcp_mtu_probing": "path MTU probing is not implemented",
    "net.ipv4.tcp_no_metrics_save": "ustack keeps no per-destination metrics",
    "net.ipv4.tcp_retries1": "ustack has no route to renegotiate after tcp_retries1 "
                             "retransmissions; tcp_retries2 is what ends a connection",
    "net.ipv4.tcp_tso_win_divisor": "TSO deferral uses Linux's default divisor, 3",
}


def normalize(name: str) -> str:
    """Turn ``/proc/sys/net/ipv4/x``, ``net/ipv4/x`` or ``net.ipv4.x`` into ``net.ipv4.x``."""
    name = name.strip()
    if name.startswith("/proc/sys/"):
        name = name[len("/proc/sys/"):]
    return name.replace("/", ".")


class Sysctl(MutableMapping[str, Any]):
    """A stack's settings.  Values are validated on write."""

    def __init__(self, initial: dict[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = {k: v[0] for k, v in DEFAULTS.items()}
        if initial:
            for k, v in initial.items():
                self[k] = v

    def __getitem__(self, name: str) -> Any:
        try:
            return self._values[name]       # the dotted name: the per-segment lookups
        except KeyError:
            pass
        try:
            return self._values[normalize(name)]
        except KeyError:
            raise KeyError(f"unknown setting {name!r}: ustack has no such sysctl") from None

    def __setitem__(self, name: str, value: Any) -> None:
        key = normalize(name)
        if key not in DEFAULTS:
            raise KeyError(f"unknown setting {name!r}: ustack has no such sysctl")
        default, kind, lo, hi = DEFAULTS[key]
        v = self._check(key, value, kind, lo, hi)
        if key in UNIMPLEMENTED and v != default:
            raise ValueError(f"{key}={v} is refused: {UNIMPLEMENTED[key]} (ustack keeps "
                             f"{default} rather than ignore the setting)")
        self._values[key] = v
        if key == "ustack.tcp_tw_recycle" and v:
            warnings.warn(RECYCLE_WARNING, RuntimeWarning, stacklevel=2)

    @staticmethod
    def _check(key: str, value: Any, kind: Any, lo: int, hi: int) -> Any:
        if kind == "congestion":
            from ustack.tcp.cong import available
            name = str(value).strip()
            if name not in available():
                raise ValueError(f"{key}: no congestion control named {name!r} (ustack has "
                                 f"{', '.join(available())})")
            return name
        if kind is int:
            if isinstance(value, str):
                value = value.strip()
            try:
                v = int(value)
            except (TypeError, ValueError):
                raise ValueError(f"{key} takes an integer, not {value!r}") from None
            if not lo <= v <= hi:
                raise ValueError(f"{key} must be between {lo} and {hi}, not {v}")
            return v
        width = 2 if kind == "range" else 3
        parts = value.split() if isinstance(value, str) else list(value)
        try:
            nums = tuple(int(p) for p in parts)
        except (TypeError, ValueError):
            raise ValueError(f"{key} takes {width} integers, not {value!r}") from None
        if len(nums) != width or any(not lo <= n <= hi for n in nums):
            raise ValueError(f"{key} takes {width} integers between {lo} and {hi}, not {value!r}")
        if kind == "range" and nums[0] > nums[1]:
            raise ValueError(f"{key}: the low end {nums[0]} is above the high end {nums[1]}")
        return nums

    def __delitem__(self, name: str) -> None:
        raise TypeError("settings cannot be deleted; assign the default instead")

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        changed = {k: v for k, v in self._values.items() if v != DEFAULTS[k][0]}
        return f"Sysctl(changed={changed!r})"


RECYCLE_WARNING = (
    "ustack.tcp_tw_recycle=1 brings back the TIME-WAIT recycling Linux removed in 4.12: "
    "TIME-WAIT lasts 3.5 x RTO and a SYN whose timestamp is older than the last one seen from "
    "the same IP address is dropped (PAWSPassive).  Clients behind one NAT share an address "
    "but not a timestamp clock, so their connections fail at random.  Use it only to study "
    "that failure.")
