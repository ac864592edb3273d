"""BSD sockets for drill scripts: the symbols, the system-call dispatcher, and ustack's sockets.

Three layers, from the script down:

:class:`SyscallDispatcher`
    Turns one script :class:`~ustack.drill.ast.Syscall` into plain values (fds mapped from
    script numbers to live ones, ``SOCK_STREAM|SOCK_NONBLOCK`` evaluated, ``{onoff=1,
    linger=0}`` unpacked), calls a *socket layer*, and checks the out-parameters the script
    states (``getsockopt(..., [ECONNREFUSED], [4])``, ``poll``'s ``revents``, ``ioctl``'s
    ``[100]``).  Both targets share it, so both read a script the same way.
A socket layer
    Plain calls: ``socket bind listen accept connect recv send close shutdown setsockopt
    getsockopt fcntl ioctl poll``.  A call returns its result, raises :class:`SysError`
    (``-1 ERRNO``), or raises :class:`WouldBlock` when a *blocking* socket would sleep; the
    runner then keeps the world moving (virtual time, or real time) and calls
    ``WouldBlock.retry()`` until it completes.  :class:`UstackSockets` (here) emulates the
    calls over a :class:`ustack.host.Host`; ``run_linux.LinuxSockets`` makes the real ones.
:data:`SYMBOLS`
    The numbers behind ``AF_INET``, ``SO_LINGER``, ``POLLOUT``, ``ECONNREFUSED``... (Linux
    x86-64 values), so a script's symbols mean the same thing on both targets.

:class:`UstackSockets` follows Linux's socket semantics (net/ipv4/af_inet.c inet_* and
net/ipv4/tcp.c tcp_* functions) as far as the ustack core lets it; where the core lacks
something, the emulation does the minimum here and says so in :data:`CORE_GAPS`.
"""
from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ustack.tcp import sock as _sock
from ustack.tcp import states as S

from .ast import (
    Array, Assign, BitOr, Call, EllipsisExpr, Expr, Int, String, Struct, Symbol, Syscall,
)

__all__ = [
    "SYMBOLS", "SysError", "WouldBlock", "DrillUnsupported", "SocketLayer", "Outcome",
    "SyscallDispatcher", "UstackSockets", "CORE_GAPS", "errno_name", "eval_int",
]

# --------------------------------------------------------------------------- symbols

# Linux x86-64 values (include/uapi/...); packetdrill's symbols_linux.c has the same table.
SYMBOLS: dict[str, int] = {
    "NULL": 0, "INADDR_ANY": 0,
    # address families, socket types and protocols
    "AF_UNSPEC": 0, "AF_INET": 2, "AF_INET6": 10, "PF_INET": 2, "PF_INET6": 10,
    "SOCK_STREAM": 1, "SOCK_DGRAM": 2, "SOCK_RAW": 3,
    "SOCK_NONBLOCK": 0o4000, "SOCK_CLOEXEC": 0o2000000,
    "IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17,
    "IPPROTO_IPV6": 41, "IPPROTO_ICMPV6": 58,
    # levels
    "SOL_SOCKET": 1, "SOL_TCP": 6, "SOL_IP": 0, "SOL_IPV6": 41, "SOL_UDP": 17,
    # SOL_SOCKET options
    "SO_DEBUG": 1, "SO_REUSEADDR": 2, "SO_TYPE": 3, "SO_ERROR": 4, "SO_DONTROUTE": 5,
    "SO_BROADCAST": 6, "SO_SNDBUF": 7, "SO_RCVBUF": 8, "SO_KEEPALIVE": 9, "SO_OOBINLINE": 10,
    "SO_NO_CHECK": 11, "SO_PRIORITY": 12, "SO_LINGER": 13, "SO_BSDCOMPAT": 14,
    "SO_REUSEPORT": 15, "SO_RCVLOWAT": 18, "SO_SNDLOWAT": 19, "SO_RCVTIMEO": 20,
    "SO_SNDTIMEO": 21, "SO_TIMESTAMP": 29, "SO_ACCEPTCONN": 30, "SO_SNDBUFFORCE": 32,
    "SO_RCVBUFFORCE": 33, "SO_PROTOCOL": 38, "SO_DOMAIN": 39, "SO_MARK": 36,
    "SO_TIMESTAMPING": 37, "SO_MAX_PACING_RATE": 47, "SO_INCOMING_CPU": 49,
    "SO_ZEROCOPY": 60, "SO_TXTIME": 61,
    # SOL_TCP options
    "TCP_NODELAY": 1, "TCP_MAXSEG": 2, "TCP_CORK": 3, "TCP_KEEPIDLE": 4, "TCP_KEEPINTVL": 5,
    "TCP_KEEPCNT": 6, "TCP_SYNCNT": 7, "TCP_LINGER2": 8, "TCP_DEFER_ACCEPT": 9,
    "TCP_WINDOW_CLAMP": 10, "TCP_INFO": 11, "TCP_QUICKACK": 12, "TCP_CONGESTION": 13,
    "TCP_MD5SIG": 14, "TCP_THIN_LINEAR_TIMEOUTS": 16, "TCP_THIN_DUPACK": 17,
    "TCP_USER_TIMEOUT": 18, "TCP_REPAIR": 19, "TCP_REPAIR_QUEUE": 20, "TCP_QUEUE_SEQ": 21,
    "TCP_REPAIR_OPTIONS": 22, "TCP_FASTOPEN": 23, "TCP_TIMESTAMP": 24,
    "TCP_NOTSENT_LOWAT": 25, "TCP_CC_INFO": 26, "TCP_SAVE_SYN": 27, "TCP_SAVED_SYN": 28,
    "TCP_REPAIR_WINDOW": 29, "TCP_FASTOPEN_CONNECT": 30, "TCP_ULP": 31,
    "TCP_FASTOPEN_KEY": 33, "TCP_FASTOPEN_NO_COOKIE": 34, "TCP_ZEROCOPY_RECEIVE": 35,
    "TCP_INQ": 36, "TCP_TX_DELAY": 37,
    # fcntl
    "F_DUPFD": 0, "F_GETFD": 1, "F_SETFD": 2, "F_GETFL": 3, "F_SETFL": 4, "FD_CLOEXEC": 1,
    "O_RDONLY": 0, "O_WRONLY": 1, "O_RDWR": 2, "O_NONBLOCK": 0o4000, "O_NDELAY": 0o4000,
    "O_CLOEXEC": 0o2000000, "O_CREAT": 0o100, "O_TRUNC": 0o1000, "O_APPEND": 0o2000,
    # ioctl
    "SIOCINQ": 0x541B, "FIONREAD": 0x541B, "SIOCOUTQ": 0x5411, "TIOCOUTQ": 0x5411,
    "SIOCOUTQNSD": 0x894B, "FIONBIO": 0x5421,
    # shutdown
    "SHUT_RD": 0, "SHUT_WR": 1, "SHUT_RDWR": 2,
    # poll
    "POLLIN": 0x001, "POLLPRI": 0x002, "POLLOUT": 0x004, "POLLERR": 0x008, "POLLHUP": 0x010,
    "POLLNVAL": 0x020, "POLLRDNORM": 0x040, "POLLRDBAND": 0x080, "POLLWRNORM": 0x100,
    "POLLWRBAND": 0x200, "POLLMSG": 0x400, "POLLREMOVE": 0x1000, "POLLRDHUP": 0x2000,
    # send/recv flags
    "MSG_OOB": 0x1, "MSG_PEEK": 0x2, "MSG_DONTROUTE": 0x4, "MSG_TRUNC": 0x20,
    "MSG_DONTWAIT": 0x40, "MSG_EOR": 0x80, "MSG_WAITALL": 0x100, "MSG_NOSIGNAL": 0x4000,
    "MSG_MORE": 0x8000, "MSG_ERRQUEUE": 0x2000, "MSG_FASTOPEN": 0x20000000,
    "MSG_ZEROCOPY": 0x4000000,
}
# errno names (ECONNREFUSED, EINPROGRESS, ...) as symbols too: getsockopt(SO_ERROR) results
for _name in dir(_errno):
    if _name.startswith("E") and _name.isupper() and isinstance(getattr(_errno, _name), int):
        SYMBOLS.setdefault(_name, getattr(_errno, _name))

_SOCK_TYPE_MASK = 0xF
SOCK_NONBLOCK = SYMBOLS["SOCK_NONBLOCK"]
O_NONBLOCK = SYMBOLS["O_NONBLOCK"]
O_RDWR = SYMBOLS["O_RDWR"]
POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 0x1, 0x4, 0x8, 0x10, 0x20
POLLRDNORM, POLLWRNORM, POLLRDHUP = 0x40, 0x100, 0x2000
MSG_PEEK, MSG_DONTWAIT, MSG_EOR, MSG_MORE = 0x2, 0x40, 0x80, 0x8000

# What the ustack core does not offer that a socket call needs (ustack.tcp.sock notes them);
# runners print these notes when the script runs into them.
CORE_GAPS: dict[str, str] = dict(_sock.GAPS)


class SysError(Exception):
    """A system call failed: the script sees ``-1 ERRNO``."""

    def __init__(self, code: int, detail: str = "") -> None:
        super().__init__(code, detail or _errno.errorcode.get(code, str(code)))
        self.code = code
        self.detail = detail


class WouldBlock(Exception):
    """A blocking socket would sleep.  ``retry()`` returns the result, raises SysError, or
    raises WouldBlock again.  ``wait_fd``/``wait_events`` say what would wake it (a hint for
    real-time runners).  ``deadline_us`` (runner clock) ends the wait with ``timeout_result``
    (poll's timeout, SO_LINGER's limit)."""

    def __init__(self, retry: Callable[[], Any], *, wait_fd: int | None = None,
                 wait_events: int = 0, deadline_us: int | None = None,
                 timeout_result: Any = None) -> None:
        super().__init__("would block")
        self.retry = retry
        self.wait_fd = wait_fd
        self.wait_events = wait_events
        self.deadline_us = deadline_us
        self.timeout_result = timeout_result


class DrillUnsupported(Exception):
    """The runner cannot model this construct; the message names it."""


def errno_name(code: int) -> str:
    return _errno.errorcode.get(code, str(code))


def strerror(code: int) -> str:
    import os
    return os.strerror(code)


# --------------------------------------------------------------------------- expressions


def eval_int(expr: Expr, what: str = "value") -> int:
    """An integer from a script expression (symbols, ``A|B``, ``htons(8080)``, ``[1]``)."""
    if isinstance(expr, Int):
        return expr.value
    if isinstance(expr, Symbol):
        if expr.name in SYMBOLS:
            return SYMBOLS[expr.name]
        raise DrillUnsupported(f"unknown symbol {expr.name} as {what}")
    if isinstance(expr, BitOr):
        v = 0
        for o in expr.operands:
            v |= eval_int(o, what)
        return v
    if isinstance(expr, Call):
        if expr.name in ("htons", "htonl", "ntohs", "ntohl") and len(expr.args) == 1:
            return eval_int(expr.args[0], what)
        if expr.name == "inet_addr" and len(expr.args) == 1 and isinstance(expr.args[0], String):
            from ustack.wire import ip_to_int
            return ip_to_int(expr.args[0].raw)
        raise DrillUnsupported(f"{expr.name}() as {what}")
    if isinstance(expr, Array) and len(expr.items) == 1:
        return eval_int(expr.items[0], what)
    raise DrillUnsupported(f"{type(expr).__name__} expression as {what}")


def _is_ellipsis(expr: Expr | None) -> bool:
    return expr is None or isinstance(expr, EllipsisExpr)


# --------------------------------------------------------------------------- the layer


class SocketLayer(Protocol):
    """What a target offers the dispatcher.  fds are live fds."""

    def socket(self, domain: int, type_: int, proto: int) -> int: ...
    def bind(self, fd: int, port: int) -> int: ...
    def listen(self, fd: int, backlog: int) -> int: ...
    def accept(self, fd: int) -> int: ...
    def connect(self, fd: int, port: int | None) -> int: ...
    def recv(self, fd: int, n: int, flags: int) -> int: ...
    def send(self, fd: int, n: int, flags: int) -> int: ...
    def close(self, fd: int) -> int: ...
    def shutdown(self, fd: int, how: int) -> int: ...
    def setsockopt(self, fd: int, level: int, name: int, value: Any, optlen: int) -> int: ...
    def getsockopt(self, fd: int, level: int, name: int, shape: str, optlen: int) -> Any: ...
    def fcntl(self, fd: int, cmd: int, arg: int) -> int: ...
    def ioctl(self, fd: int, request: int) -> int: ...
    def poll(self, fds: list[tuple[int, int]]) -> list[int]: ...


@dataclass
class Outcome:
    """What a system call did: its result (-1 with ``errno`` on failure) and any problems
    with the out-parameters the script stated."""
    result: int
    errno: int | None = None
    problems: list[str] = field(default_factory=list)
    new_fd: int | None = None          # live fd made by socket()/accept()

    def show(self) -> str:
        if self.result == -1 and self.errno is not None:
            return f"-1 {errno_name(self.errno)} ({strerror(self.errno)})"
        return str(self.result)


# sockopt shapes: how the value travels ("int", "linger", "string")
_LINGER = (SYMBOLS["SOL_SOCKET"], SYMBOLS["SO_LINGER"])
_STRING_OPTS = {(SYMBOLS["SOL_TCP"], SYMBOLS["TCP_CONGESTION"]),
                (SYMBOLS["SOL_TCP"], SYMBOLS["TCP_ULP"])}


class SyscallDispatcher:
    """Runs script system calls on a socket layer; maps script fds to live fds."""

    def __init__(self, layer: SocketLayer, now_us: Callable[[], int], *, bind_port: int = 8080,
                 connect_port: int = 8080) -> None:
        self.layer = layer
        self.now_us = now_us
        self.bind_port = bind_port
        self.connect_port = connect_port
        self.fdmap: dict[int, int] = {}     # script fd -> live fd
        self.bad_fd = 1_000_000             # stands for a script fd that is not open

    # -- fds
    def live_fd(self, expr: Expr) -> int:
        fd = eval_int(expr, "a file descriptor")
        return self.fdmap.get(fd, self.bad_fd + fd if fd >= 0 else fd)

    def _map_new(self, call: Syscall, live: int) -> None:
        if isinstance(call.result, Int) and call.result.value >= 0:
            self.fdmap[call.result.value] = live

    # -- entry point
    def start(self, call: Syscall) -> Callable[[], Outcome]:
        """Start ``call``.  Returns a function giving its Outcome; that function raises
        WouldBlock while the call would still sleep (then call it again later)."""
        name = call.name
        handler = getattr(self, "_sys_" + name, None)
        if handler is None:
            raise DrillUnsupported(f"system call {name}() is not supported by the drill runners")
        args = list(call.args or ())
        retry: list[Callable[[], Any]] = []     # set once the call has blocked

        def attempt() -> Outcome:
            try:
                if not retry:
                    return handler(call, args)
                return self.finish(call, retry[0]())
            except SysError as e:
                return Outcome(-1, e.code)
            except WouldBlock as wb:
                retry[:] = [wb.retry]
                raise
        return attempt

    def finish(self, call: Syscall, value: Any) -> Outcome:
        """Complete a call that blocked: ``value`` is what the layer's retry returned (or the
        WouldBlock's ``timeout_result`` when its deadline passed)."""
        if isinstance(value, Outcome):
            return value
        if call.name == "accept" and isinstance(value, int) and value >= 0:
            self._map_new(call, value)
            return Outcome(value, new_fd=value)
        if call.name == "poll":
            return self._poll_outcome(call, value)
        return Outcome(int(value))

    def _args(self, call: Syscall, args: list[Expr], lo: int, hi: int | None = None) -> None:
        hi = lo if hi is None else hi
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise DrillUnsupported(f"{call.name}() takes {want} arguments, the script gives "
                                   f"{len(args)}")

    # -- the calls
    def _sys_socket(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        domain = SYMBOLS["AF_INET"] if _is_ellipsis(args[0]) else eval_int(args[0], "domain")
        type_ = eval_int(args[1], "socket type")
        proto = 0 if _is_ellipsis(args[2]) else eval_int(args[2], "protocol")
        fd = self.layer.socket(domain, type_, proto)
        self._map_new(call, fd)
        return Outcome(fd, new_fd=fd)

    def _port_of(self, expr: Expr, default: int) -> int:
        if _is_ellipsis(expr):
            return default
        if isinstance(expr, Struct):
            f = expr.fields
            port = f.get("sin_port") or f.get("sin6_port")
            if port is None:
                raise DrillUnsupported("a sockaddr without sin_port")
            return eval_int(port, "a port")
        raise DrillUnsupported(f"address argument {type(expr).__name__}")

    def _sys_bind(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.bind(self.live_fd(args[0]), self._port_of(args[1],
                                                                            self.bind_port)))

    def _sys_listen(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 2)
        return Outcome(self.layer.listen(self.live_fd(args[0]), eval_int(args[1], "backlog")))

    def _sys_accept(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 1, 3)
        fd = self.layer.accept(self.live_fd(args[0]))
        self._map_new(call, fd)
        return Outcome(fd, new_fd=fd)

    def _sys_connect(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        fd = self.live_fd(args[0])
        a = args[1]
        if isinstance(a, Symbol) and a.name == "AF_UNSPEC":
            return Outcome(self.layer.connect(fd, None))
        if isinstance(a, Struct):
            fam = a.fields.get("sa_family") or a.fields.get("sin_family")
            if fam is not None and eval_int(fam, "family") == SYMBOLS["AF_UNSPEC"]:
                return Outcome(self.layer.connect(fd, None))
        return Outcome(self.layer.connect(fd, self._port_of(a, self.connect_port)))

    def _len_of(self, expr: Expr) -> int:
        return eval_int(expr, "a length")

    def _sys_read(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.recv(self.live_fd(args[0]), self._len_of(args[2]), 0))

    def _sys_recv(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 4)
        return Outcome(self.layer.recv(self.live_fd(args[0]), self._len_of(args[2]),
                                       eval_int(args[3], "flags")))

    def _sys_recvfrom(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 4, 6)
        return Outcome(self.layer.recv(self.live_fd(args[0]), self._len_of(args[2]),
                                       eval_int(args[3], "flags")))

    def _iov_len(self, expr: Expr) -> int:
        if not isinstance(expr, Array):
            raise DrillUnsupported("an iovec that is not a [{iov_base=..., iov_len=N}] list")
        total = 0
        for item in expr.items:
            if not isinstance(item, Struct) or item.get("iov_len") is None:
                raise DrillUnsupported("an iovec entry without iov_len")
            total += eval_int(item.get("iov_len"), "iov_len")  # type: ignore[arg-type]
        return total

    def _sys_readv(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.recv(self.live_fd(args[0]), self._iov_len(args[1]), 0))

    def _sys_write(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.send(self.live_fd(args[0]), self._len_of(args[2]), 0))

    def _sys_send(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 4)
        return Outcome(self.layer.send(self.live_fd(args[0]), self._len_of(args[2]),
                                       eval_int(args[3], "flags")))

    def _sys_sendto(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 4, 6)
        return Outcome(self.layer.send(self.live_fd(args[0]), self._len_of(args[2]),
                                       eval_int(args[3], "flags")))

    def _sys_writev(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.send(self.live_fd(args[0]), self._iov_len(args[1]), 0))

    def _msghdr_len(self, expr: Expr) -> int:
        if not isinstance(expr, Struct):
            raise DrillUnsupported("a msghdr that is not a {...} struct")
        for item in expr.items:
            if isinstance(item, Assign) and item.name == "msg_iov":
                return self._iov_len(item.value)
        raise DrillUnsupported("a msghdr without msg_iov")

    def _sys_sendmsg(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.send(self.live_fd(args[0]), self._msghdr_len(args[1]),
                                       eval_int(args[2], "flags")))

    def _sys_recvmsg(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        return Outcome(self.layer.recv(self.live_fd(args[0]), self._msghdr_len(args[1]),
                                       eval_int(args[2], "flags")))

    def _sys_close(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 1)
        script_fd = eval_int(args[0], "a file descriptor")
        live = self.live_fd(args[0])
        try:
            out = Outcome(self.layer.close(live))
        except WouldBlock:
            self.fdmap.pop(script_fd, None)
            raise
        self.fdmap.pop(script_fd, None)
        return out

    def _sys_shutdown(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 2)
        return Outcome(self.layer.shutdown(self.live_fd(args[0]), eval_int(args[1], "how")))

    def _sockopt_shape(self, level: int, name: int, value: Expr | None) -> str:
        if (level, name) == _LINGER:
            return "linger"
        if (level, name) in _STRING_OPTS or isinstance(value, String):
            return "string"
        if isinstance(value, Struct):
            raise DrillUnsupported(f"socket option (level {level}, name {name}) with a struct "
                                   "value")
        return "int"

    def _sys_setsockopt(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 5)
        fd = self.live_fd(args[0])
        level = eval_int(args[1], "level")
        name = eval_int(args[2], "option name")
        vexpr = args[3]
        optlen = eval_int(args[4], "optlen")
        shape = self._sockopt_shape(level, name, vexpr)
        value: Any
        if shape == "linger":
            if not isinstance(vexpr, Struct):
                raise DrillUnsupported("SO_LINGER value that is not {onoff=..., linger=...}")
            f = vexpr.fields
            pos = [i for i in vexpr.items if not isinstance(i, Assign)]
            onoff = f.get("onoff", pos[0] if pos else None)
            linger = f.get("linger", pos[1] if len(pos) > 1 else None)
            if onoff is None or linger is None:
                raise DrillUnsupported("SO_LINGER value needs onoff and linger")
            value = (eval_int(onoff, "onoff"), eval_int(linger, "linger"))
        elif shape == "string":
            if not isinstance(vexpr, String):
                raise DrillUnsupported("a string socket option without a \"string\" value")
            value = vexpr.data
        else:
            value = eval_int(vexpr, "option value")
        return Outcome(self.layer.setsockopt(fd, level, name, value, optlen))

    def _sys_getsockopt(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 5)
        fd = self.live_fd(args[0])
        level = eval_int(args[1], "level")
        name = eval_int(args[2], "option name")
        vexpr = args[3]
        lexpr = args[4]
        shape = self._sockopt_shape(level, name, vexpr)
        optlen = 8 if shape == "linger" else 4
        if not _is_ellipsis(lexpr):
            optlen = eval_int(lexpr, "optlen")
        value = self.layer.getsockopt(fd, level, name, shape, optlen)
        out = Outcome(0)
        if _is_ellipsis(vexpr):
            return out
        if shape == "linger":
            if isinstance(vexpr, Struct):
                f = vexpr.fields
                for key, got in (("onoff", value[0]), ("linger", value[1])):
                    e = f.get(key)
                    if e is not None and not _is_ellipsis(e) and eval_int(e, key) != got:
                        out.problems.append(f"getsockopt SO_LINGER {key}: expected "
                                            f"{eval_int(e, key)}, got {got}")
            return out
        if shape == "string":
            if isinstance(vexpr, String) and not vexpr.ellipsis and vexpr.data != value:
                out.problems.append(f"getsockopt value: expected {vexpr.data!r}, got {value!r}")
            return out
        inner = vexpr.items[0] if isinstance(vexpr, Array) and len(vexpr.items) == 1 else vexpr
        if not _is_ellipsis(inner):
            exp = eval_int(inner, "option value")
            if exp != value:
                sym = inner.name if isinstance(inner, Symbol) else str(exp)
                shown = errno_name(value) if isinstance(inner, Symbol) and \
                    inner.name.startswith("E") and value in _errno.errorcode else str(value)
                out.problems.append(f"getsockopt value: expected {sym}, got {shown}")
        return out

    def _sys_fcntl(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 2, 3)
        arg = eval_int(args[2], "fcntl argument") if len(args) > 2 else 0
        return Outcome(self.layer.fcntl(self.live_fd(args[0]), eval_int(args[1], "fcntl cmd"),
                                        arg))

    def _sys_ioctl(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 2, 3)
        req = eval_int(args[1], "ioctl request")
        value = self.layer.ioctl(self.live_fd(args[0]), req)
        out = Outcome(0)
        if len(args) > 2:
            e = args[2]
            inner = e.items[0] if isinstance(e, Array) and len(e.items) == 1 else e
            if not _is_ellipsis(inner) and eval_int(inner, "ioctl value") != value:
                out.problems.append(f"ioctl value: expected {eval_int(inner, 'ioctl value')}, "
                                    f"got {value}")
        return out

    def _poll_entries(self, expr: Expr) -> list[tuple[Expr, int, Expr | None]]:
        if not isinstance(expr, Array):
            raise DrillUnsupported("poll() fds that are not a [{fd=..., events=...}] list")
        out = []
        for item in expr.items:
            if not isinstance(item, Struct):
                raise DrillUnsupported("a pollfd that is not a {fd=..., events=...} struct")
            f = item.fields
            if "fd" not in f or "events" not in f:
                raise DrillUnsupported("a pollfd without fd or events")
            out.append((f["fd"], eval_int(f["events"], "events"), f.get("revents")))
        return out

    def _sys_poll(self, call: Syscall, args: list[Expr]) -> Outcome:
        self._args(call, args, 3)
        entries = self._poll_entries(args[0])
        timeout = eval_int(args[2], "timeout")
        fds = [(self.live_fd(e[0]), e[1]) for e in entries]
        revents = self.layer.poll(fds)
        if any(revents) or timeout == 0:
            return self._poll_outcome(call, revents)
        def retry() -> list[int]:
            r = self.layer.poll(fds)
            if any(r):
                return r
            raise WouldBlock(retry, deadline_us=deadline, timeout_result=[0] * len(fds))
        deadline = None if timeout < 0 else self.now_us() + timeout * 1000
        raise WouldBlock(retry, deadline_us=deadline, timeout_result=[0] * len(fds))

    def _poll_outcome(self, call: Syscall, revents: list[int]) -> Outcome:
        entries = self._poll_entries((call.args or ())[0])
        out = Outcome(sum(1 for r in revents if r))
        for (fd_e, _ev, rev_e), got in zip(entries, revents):
            if rev_e is None or _is_ellipsis(rev_e):
                continue
            exp = eval_int(rev_e, "revents")
            if exp != got:
                out.problems.append(f"poll revents for fd {eval_int(fd_e, 'fd')}: expected "
                                    f"{poll_bits(exp)}, got {poll_bits(got)}")
        return out


def poll_bits(v: int) -> str:
    names = [n for n in ("POLLIN", "POLLPRI", "POLLOUT", "POLLERR", "POLLHUP", "POLLNVAL",
                         "POLLRDNORM", "POLLRDBAND", "POLLWRNORM", "POLLWRBAND", "POLLMSG",
                         "POLLRDHUP") if v & SYMBOLS[n]]
    return "|".join(names) if names else "0"


# --------------------------------------------------------------------------- ustack sockets


class UstackSockets:
    """Linux socket calls over a ustack :class:`~ustack.host.Host` (no I/O, no clock): an fd
    table of :class:`ustack.tcp.sock.Socket` objects, the one socket layer the asyncio adapter
    uses too.  Its errors become ``-1 ERRNO``, its sleeps :class:`WouldBlock`.

    ``now_us`` is the runner's clock (for SO_LINGER's deadline).  ``remote`` is the address a
    ``connect()`` goes to (the script's side).
    """

    def __init__(self, host: Any, remote: int, now_us: Callable[[], int]) -> None:
        self.host = host
        self.remote = remote
        self.now_us = now_us
        self.socks: dict[int, _sock.Socket] = {}
        self.notes: set[str] = set()       # CORE_GAPS keys the script ran into

    def _get(self, fd: int) -> _sock.Socket:
        s = self.socks.get(fd)
        if s is None:
            raise SysError(_errno.EBADF)
        return s

    def _new_fd(self) -> int:
        fd = 3
        while fd in self.socks:
            fd += 1
        return fd

    def _run(self, call: Callable[[], Any], post: Callable[[Any], Any] | None = None) -> Any:
        """Run a socket-layer call: OSError -> SysError, its WouldBlock -> the runner's (whose
        retry resumes the call); ``post`` turns the call's result into the syscall's."""
        deadline: int | None = None

        def attempt(fn: Callable[[], Any]) -> Any:
            nonlocal deadline
            try:
                got = fn()
            except _sock.WouldBlock as wb:
                if wb.timeout_s is not None and deadline is None:
                    deadline = self.now_us() + int(wb.timeout_s * 1_000_000)
                retry = wb.retry
                raise WouldBlock(lambda: attempt(retry), deadline_us=deadline,
                                 timeout_result=wb.timeout_result) from None
            except OSError as e:
                if e.errno == _errno.ENOPROTOOPT:
                    raise DrillUnsupported(f"{e.strerror} on the ustack target") from None
                raise SysError(e.errno or _errno.EIO) from None
            return post(got) if post is not None else got
        return attempt(call)

    # -- calls
    def socket(self, domain: int, type_: int, proto: int) -> int:
        if domain not in (SYMBOLS["AF_INET"], SYMBOLS["AF_INET6"]):
            raise SysError(_errno.EAFNOSUPPORT)
        kind = type_ & _SOCK_TYPE_MASK
        if kind != SYMBOLS["SOCK_STREAM"]:
            raise DrillUnsupported("only SOCK_STREAM (TCP) sockets are supported on the "
                                   "ustack target")
        if proto not in (0, SYMBOLS["IPPROTO_TCP"]):
            raise SysError(_errno.EPROTONOSUPPORT)
        fd = self._new_fd()
        self.socks[fd] = _sock.Socket(self.host, nonblock=bool(type_ & SOCK_NONBLOCK),
                                      notes=self.notes)
        return fd

    def bind(self, fd: int, port: int) -> int:
        s = self._get(fd)
        return self._run(lambda: s.bind(port), _zero)

    def listen(self, fd: int, backlog: int) -> int:
        s = self._get(fd)
        return self._run(lambda: s.listen(backlog), _zero)

    def accept(self, fd: int) -> int:
        s = self._get(fd)

        def placed(child: _sock.Socket) -> int:
            nfd = self._new_fd()
            self.socks[nfd] = child
            return nfd
        return self._run(s.accept, placed)

    def connect(self, fd: int, port: int | None) -> int:
        s = self._get(fd)
        return self._run(lambda: s.connect(self.remote, port), _zero)

    def recv(self, fd: int, n: int, flags: int) -> int:
        s = self._get(fd)
        return self._run(lambda: s.recv(n, flags), len)

    def send(self, fd: int, n: int, flags: int) -> int:
        s = self._get(fd)
        if n < 0:
            raise SysError(_errno.EINVAL)
        return self._run(lambda: s.send(bytes(n), flags))

    def close(self, fd: int) -> int:
        s = self._get(fd)
        del self.socks[fd]
        return self._run(s.close, _zero)

    def shutdown(self, fd: int, how: int) -> int:
        s = self._get(fd)
        return self._run(lambda: s.shutdown(how), _zero)

    # -- options
    def setsockopt(self, fd: int, level: int, name: int, value: Any, optlen: int) -> int:
        s = self._get(fd)
        return self._run(lambda: s.setsockopt(level, name, value, optlen), _zero)

    def getsockopt(self, fd: int, level: int, name: int, shape: str, optlen: int) -> Any:
        s = self._get(fd)
        if optlen < 0:
            raise SysError(_errno.EINVAL)
        return self._run(lambda: s.getsockopt(level, name))

    def fcntl(self, fd: int, cmd: int, arg: int) -> int:
        s = self._get(fd)
        if cmd == SYMBOLS["F_GETFL"]:
            return O_RDWR | (O_NONBLOCK if s.nonblock else 0)
        if cmd == SYMBOLS["F_SETFL"]:
            s.nonblock = bool(arg & O_NONBLOCK)
            return 0
        if cmd == SYMBOLS["F_GETFD"]:
            return 0
        if cmd == SYMBOLS["F_SETFD"]:
            return 0
        raise DrillUnsupported(f"fcntl command {cmd}")

    def ioctl(self, fd: int, request: int) -> int:
        s = self._get(fd)
        if request == SYMBOLS["FIONBIO"]:
            raise DrillUnsupported("ioctl FIONBIO (use fcntl O_NONBLOCK)")
        if request not in (SYMBOLS["SIOCINQ"], SYMBOLS["SIOCOUTQ"], SYMBOLS["SIOCOUTQNSD"]):
            raise DrillUnsupported(f"ioctl request {request:#x}")
        return self._run(lambda: s.ioctl(request))

    def poll(self, fds: list[tuple[int, int]]) -> list[int]:
        out = []
        for fd, events in fds:
            s = self.socks.get(fd)
            if s is None:
                out.append(POLLNVAL)
                continue
            out.append(s.poll() & (events | POLLERR | POLLHUP | POLLNVAL))
        return out


def _zero(_: Any) -> int:
    return 0


def _opt_name(level: int, name: int) -> str:
    lv = {1: "SOL_SOCKET", 6: "SOL_TCP", 0: "SOL_IP"}.get(level, str(level))
    prefix = {1: "SO_", 6: "TCP_"}.get(level)
    if prefix:
        for k, v in SYMBOLS.items():
            if k.startswith(prefix) and v == name:
                return f"{lv} {k}"
    return f"{lv} {name}"
