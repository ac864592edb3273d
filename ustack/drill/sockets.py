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

# What the ustack core does not offer that a socket call needs; the emulation's minimum
# workaround is described with each.  Runners print these notes when the script uses them.
CORE_GAPS: dict[str, str] = {
    "listener_options": "Host.listen() takes no socket options for the children it creates "
                        "(SO_RCVBUF/SO_SNDBUF/TCP_NODELAY/SO_LINGER/TCP_LINGER2 set on the "
                        "listening socket): the emulation copies them onto a child at accept(), "
                        "so the SYN-ACK's window ignores a listener's SO_RCVBUF",
    "keepalive": "SO_KEEPALIVE/TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT are stored but the ustack "
                 "core has no keepalive timer",
    "peek": "Connection has no peek: MSG_PEEK reads Connection.rcv_buf directly",
    "child_reset_before_accept": "a child reset before accept() is removed from the accept "
                                 "queue by the core (Linux keeps it and accept() returns it)",
    "outq_nsd": "SIOCOUTQNSD reads Connection.sndq/snd_nxt/snd_una directly",
    "buffers": "SO_SNDBUF sets Connection.sndbuf to the requested byte count (ustack counts "
               "payload bytes, Linux counts memory: half of the doubled value); getsockopt "
               "reports Linux's doubled value",
}


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


@dataclass
class _Sock:
    """One fd of the emulation: Linux's struct socket + the bits of struct sock it needs."""
    fd: int
    nonblock: bool = False
    port: int | None = None            # bound local port (explicit bind or autobind)
    binding: Any = None                # ustack.tcp.ports.PortBinding until listen()/connect()
    explicit_port: bool = False        # bind() chose the port (Linux SOCK_BINDPORT_LOCK)
    listener: Any = None               # ustack.host.Listener
    conn: Any = None                   # ustack.tcp.connection.Connection
    connecting: bool = False           # SS_CONNECTING
    connected: bool = False            # SS_CONNECTED
    err_taken: bool = False            # conn.error moved to so_error already
    so_error: int = 0                  # pending sk_err
    shut_rd: bool = False
    shut_wr: bool = False
    reuseaddr: bool = False
    reuseport: bool = False
    linger: tuple[int, int] = (0, 0)
    rcvbuf: int | None = None          # what setsockopt asked (bytes)
    sndbuf: int | None = None
    nodelay: bool = False
    linger2: int | None = None         # seconds; -1 = reset at once
    user_timeout: int = 0
    user_mss: int = 0
    cork: bool = False
    keepalive: bool = False
    other: dict[tuple[int, int], Any] = field(default_factory=dict)
    write_done: int = 0                # bytes a blocking write has queued so far


class UstackSockets:
    """Linux socket calls over a ustack :class:`~ustack.host.Host` (no I/O, no clock).

    ``now_us`` is the runner's clock (for SO_LINGER's and poll's deadlines).  ``remote``
    is the address a ``connect()`` goes to (the script's side).
    """

    SOCK_MIN_RCVBUF = 2304     # Linux: 2048 + sizeof(struct sk_buff) rounded
    SOCK_MIN_SNDBUF = 4608

    def __init__(self, host: Any, remote: int, now_us: Callable[[], int]) -> None:
        self.host = host
        self.remote = remote
        self.now_us = now_us
        self.socks: dict[int, _Sock] = {}
        self.notes: set[str] = set()       # CORE_GAPS keys the script ran into

    # -- helpers
    def _get(self, fd: int) -> _Sock:
        s = self.socks.get(fd)
        if s is None:
            raise SysError(_errno.EBADF)
        return s

    def _new_fd(self) -> int:
        fd = 3
        while fd in self.socks:
            fd += 1
        return fd

    def _sync_error(self, s: _Sock) -> None:
        """Move a connection's error to the socket's pending error once (sk_err)."""
        conn = s.conn
        if conn is not None and not s.err_taken and conn.error is not None:
            s.err_taken = True
            s.so_error = getattr(conn.error, "errno", None) or _errno.ECONNRESET

    def _take_error(self, s: _Sock) -> int:
        self._sync_error(s)
        e = s.so_error
        s.so_error = 0
        return e

    def _state(self, s: _Sock) -> int:
        if s.listener is not None:
            return S.LISTEN
        if s.conn is None:
            return S.CLOSED
        return s.conn.state

    def _release_port(self, s: _Sock) -> None:
        if s.binding is not None:
            s.binding.release()
            s.binding = None

    def _bindings(self, s: _Sock) -> list[Any]:
        out = [s.binding]
        if s.listener is not None:
            out.append(s.listener.binding)
        if s.conn is not None:
            out.append(s.conn.binding)
        return [b for b in out if b is not None]

    def _sk_rcvbuf(self, s: _Sock) -> int:
        """__sock_set_rcvbuf: capped at net.core.rmem_max, doubled (the kernel's bookkeeping
        overhead), at least SOCK_MIN_RCVBUF."""
        v = min(s.rcvbuf or 0, self.host.sysctl["net.core.rmem_max"])
        return max(v * 2, self.SOCK_MIN_RCVBUF)

    def _conn_options(self, s: _Sock) -> dict[str, Any]:
        opts: dict[str, Any] = {"nodelay": s.nodelay, "reuseaddr": s.reuseaddr,
                                "user_timeout": s.user_timeout, "user_mss": s.user_mss,
                                "cork": s.cork}
        if s.linger2 is not None:
            opts["linger2"] = s.linger2
        if s.rcvbuf is not None:
            opts["rcvbuf"] = self._sk_rcvbuf(s)
            opts["rcvbuf_locked"] = True
        if s.sndbuf is not None:
            opts["sndbuf"] = s.sndbuf
            opts["sndbuf_locked"] = True
        lowat = s.other.get((SYMBOLS["SOL_TCP"], SYMBOLS["TCP_NOTSENT_LOWAT"]))
        if lowat is not None:
            opts["notsent_lowat"] = lowat
        cc = s.other.get((SYMBOLS["SOL_TCP"], SYMBOLS["TCP_CONGESTION"]))
        if cc is not None:
            opts["congestion_control"] = cc
        return opts

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
        self.socks[fd] = _Sock(fd, nonblock=bool(type_ & SOCK_NONBLOCK))
        return fd

    def bind(self, fd: int, port: int) -> int:
        s = self._get(fd)
        if s.port is not None or s.conn is not None or s.listener is not None:
            raise SysError(_errno.EINVAL)
        try:
            s.binding = self.host.bind(port, reuseaddr=s.reuseaddr, reuseport=s.reuseport)
        except OSError as e:
            raise SysError(e.errno or _errno.EADDRINUSE)
        s.port = s.binding.port
        s.explicit_port = port != 0
        return 0

    def listen(self, fd: int, backlog: int) -> int:
        s = self._get(fd)
        if s.listener is not None:
            s.listener.backlog = max(1, min(backlog, self.host.sysctl["net.core.somaxconn"]) + 1)
            return 0
        if s.conn is not None:
            raise SysError(_errno.EINVAL)
        if s.binding is None:
            try:       # inet_autobind
                s.binding = self.host.bind(0, reuseaddr=s.reuseaddr, reuseport=s.reuseport)
            except OSError:
                raise SysError(_errno.EAGAIN)
            s.port = s.binding.port
        try:
            s.listener = self.host.listen(s.binding, backlog)
        except OSError as e:
            raise SysError(e.errno or _errno.EADDRINUSE)
        s.binding = None          # the listener holds the port now
        return 0

    def accept(self, fd: int) -> int:
        s = self._get(fd)
        if s.listener is None:
            raise SysError(_errno.EINVAL)

        def attempt() -> int:
            if s.listener is None or s.listener.closed:
                raise SysError(_errno.EINVAL)
            conn = s.listener.accept()
            if conn is None:
                if s.nonblock:
                    raise SysError(_errno.EAGAIN)
                raise WouldBlock(attempt)
            nfd = self._new_fd()
            child = _Sock(nfd, port=conn.lport, conn=conn, connected=True,
                          reuseaddr=s.reuseaddr,
                          linger=s.linger, rcvbuf=s.rcvbuf, sndbuf=s.sndbuf, nodelay=s.nodelay,
                          linger2=s.linger2, user_timeout=s.user_timeout,
                          keepalive=s.keepalive)
            conn.nodelay = s.nodelay
            conn.user_timeout = s.user_timeout
            conn.cork = s.cork
            cc = s.other.get((SYMBOLS["SOL_TCP"], SYMBOLS["TCP_CONGESTION"]))
            if cc is not None:
                conn.congestion_control = cc      # inherited from the listener
            if s.linger2 is not None:
                conn.linger2 = s.linger2
            if s.rcvbuf is not None or s.sndbuf is not None or s.linger != (0, 0):
                self.notes.add("listener_options")
            if s.sndbuf is not None:
                conn.sndbuf = s.sndbuf
                conn.sndbuf_locked = True
            lowat = s.other.get((SYMBOLS["SOL_TCP"], SYMBOLS["TCP_NOTSENT_LOWAT"]))
            if lowat is not None:
                conn.notsent_lowat = lowat
            self.socks[nfd] = child
            return nfd
        return attempt()

    def connect(self, fd: int, port: int | None) -> int:
        s = self._get(fd)
        if port is None:
            return self._disconnect(s)
        if s.listener is not None:
            raise SysError(_errno.EINVAL)
        conn = s.conn
        if conn is not None:
            # __inet_stream_connect: the socket's own state (SS_CONNECTING until a connect()
            # call sees the handshake finished) decides, not only the connection's
            self._sync_error(s)
            if s.connecting:
                if conn.state in (S.SYN_SENT, S.SYN_RECV):
                    if s.nonblock:
                        raise SysError(_errno.EALREADY)
                    return self._connect_wait(s)
                s.connecting = False
                if conn.state == S.CLOSED:
                    err = self._take_error(s) or _errno.ECONNABORTED
                    s.conn = None           # sock_error: SS_UNCONNECTED, may connect again
                    raise SysError(err)
                s.connected = True
                return 0
            if s.connected:
                raise SysError(_errno.EISCONN)
            s.conn = None                   # SS_UNCONNECTED after a failed connect
            s.err_taken = False
        lport: Any = s.binding
        if lport is None and s.explicit_port and s.port is not None:
            lport = s.port     # a bound socket keeps its port across failed connects
        try:
            conn = self.host.connect(self.remote, port, lport, options=self._conn_options(s))
        except OSError as e:
            raise SysError(e.errno or _errno.EADDRNOTAVAIL)
        s.binding = None          # the connection holds the port now
        s.conn = conn
        s.port = conn.lport
        s.connecting = True
        if s.nonblock:
            raise SysError(_errno.EINPROGRESS)
        return self._connect_wait(s)

    def _connect_wait(self, s: _Sock) -> int:
        def wait() -> int:
            c = s.conn
            if c is None:
                raise SysError(_errno.ECONNABORTED)
            if c.state == S.SYN_SENT or c.state == S.SYN_RECV:
                raise WouldBlock(wait)
            s.connecting = False
            if c.state == S.CLOSED:
                err = self._take_error(s) or _errno.ECONNABORTED
                s.conn = None
                raise SysError(err)
            s.connected = True
            return 0
        return wait()

    def _disconnect(self, s: _Sock) -> int:
        """connect(AF_UNSPEC): tcp_disconnect — RST if synchronized, the socket is new again."""
        if s.listener is not None:
            s.listener.close()
            s.listener = None
            self._release_port(s)
            s.port = None
            return 0
        conn = s.conn
        if conn is not None and conn.state != S.CLOSED:
            conn.abort()
        s.conn = None
        s.connecting = s.connected = False
        s.err_taken = False
        s.so_error = 0
        s.shut_rd = s.shut_wr = False
        if not s.explicit_port:
            s.port = None
        return 0

    def recv(self, fd: int, n: int, flags: int) -> int:
        s = self._get(fd)
        if n < 0:
            raise SysError(_errno.EINVAL)

        def attempt() -> int:
            conn = s.conn
            if s.listener is not None or conn is None:
                raise SysError(_errno.ENOTCONN)
            buf = conn.rcv_buf
            if buf:
                if n == 0:
                    return 0
                if flags & MSG_PEEK:
                    self.notes.add("peek")
                    return len(bytes(buf[:n]))
                return len(conn.recv(n))
            if n == 0:
                return 0
            # tcp_recvmsg_locked with nothing copied
            if conn.rcv_fin:                     # SOCK_DONE: the peer's FIN was read
                return 0
            self._sync_error(s)
            if s.so_error:
                raise SysError(self._take_error(s))
            if s.shut_rd or conn.rcv_shutdown or conn.state == S.CLOSED:
                return 0                         # RCV_SHUTDOWN (tcp_done: SHUTDOWN_MASK)
            if s.nonblock or flags & MSG_DONTWAIT:
                raise SysError(_errno.EAGAIN)
            raise WouldBlock(attempt)
        return attempt()

    def send(self, fd: int, n: int, flags: int) -> int:
        s = self._get(fd)
        s.write_done = 0

        def attempt() -> int:
            conn = s.conn
            state = self._state(s)
            if state not in (S.ESTABLISHED, S.CLOSE_WAIT):
                # sk_stream_wait_connect
                self._sync_error(s)
                if s.so_error:
                    raise SysError(self._take_error(s))
                if state not in (S.SYN_SENT, S.SYN_RECV):
                    raise SysError(_errno.EPIPE)
                if s.nonblock or flags & MSG_DONTWAIT:
                    raise SysError(_errno.EAGAIN)
                raise WouldBlock(attempt)
            self._sync_error(s)
            if s.so_error:
                raise SysError(self._take_error(s))
            if s.shut_wr or conn.fin_queued:
                raise SysError(_errno.EPIPE)
            want = n - s.write_done
            if want <= 0:
                return n
            try:
                # sk_stream_memory_free: nothing more while TCP_NOTSENT_LOWAT is reached
                took = conn.send(bytes(want), limit=True, more=bool(flags & MSG_MORE),
                                 eor=bool(flags & MSG_EOR)) if conn.memory_free(0) else 0
            except BrokenPipeError:
                raise SysError(_errno.EPIPE)
            except OSError as e:
                raise SysError(e.errno or _errno.EPIPE)
            s.write_done += took
            if s.write_done >= n:
                return n
            if s.nonblock or flags & MSG_DONTWAIT:
                if s.write_done:
                    return s.write_done
                raise SysError(_errno.EAGAIN)
            raise WouldBlock(attempt)
        return attempt()

    def close(self, fd: int) -> int:
        s = self._get(fd)
        del self.socks[fd]
        if s.listener is not None:
            s.listener.close()     # releases the port
            return 0
        self._release_port(s)
        conn = s.conn
        if conn is None:
            return 0
        onoff, secs = s.linger
        conn.linger = secs if onoff else None
        conn.close()
        if onoff and secs > 0 and not s.nonblock and conn.state in (S.FIN_WAIT_1, S.CLOSING,
                                                                      S.LAST_ACK):
            # tcp_close: sk_stream_wait_close() until the FIN is acknowledged or linger ends
            deadline = self.now_us() + secs * 1_000_000

            def wait() -> int:
                if conn.state in (S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
                    raise WouldBlock(wait, deadline_us=deadline, timeout_result=0)
                return 0
            raise WouldBlock(wait, deadline_us=deadline, timeout_result=0)
        return 0

    def shutdown(self, fd: int, how: int) -> int:
        s = self._get(fd)
        if how not in (0, 1, 2):
            raise SysError(_errno.EINVAL)
        rd, wr = how in (0, 2), how in (1, 2)
        state = self._state(s)
        # inet_shutdown
        if state == S.LISTEN:
            if rd:
                s.listener.close()
                s.listener = None
            return 0
        if state == S.SYN_SENT:
            return self._disconnect(s)
        if state == S.CLOSED:
            s.shut_rd |= rd
            s.shut_wr |= wr
            raise SysError(_errno.ENOTCONN)
        conn = s.conn
        if rd:
            s.shut_rd = True
            conn.shutdown_read()
        if wr:
            s.shut_wr = True
            conn.shutdown_write()
        return 0

    # -- options
    def setsockopt(self, fd: int, level: int, name: int, value: Any, optlen: int) -> int:
        s = self._get(fd)
        sol, tcp = SYMBOLS["SOL_SOCKET"], SYMBOLS["SOL_TCP"]
        if isinstance(value, int) and optlen < 4:
            raise SysError(_errno.EINVAL)
        conn = s.conn
        key = (level, name)
        if key == (sol, SYMBOLS["SO_REUSEADDR"]):
            s.reuseaddr = bool(value)
            if conn is not None:
                conn.reuseaddr = s.reuseaddr
            for b in self._bindings(s):
                b.reuseaddr = s.reuseaddr
        elif key == (sol, SYMBOLS["SO_REUSEPORT"]):
            s.reuseport = bool(value)
            for b in self._bindings(s):
                b.reuseport = s.reuseport
        elif key == (sol, SYMBOLS["SO_LINGER"]):
            if optlen < 8:
                raise SysError(_errno.EINVAL)
            onoff, secs = value
            s.linger = (1 if onoff else 0, max(0, secs))
        elif key in ((sol, SYMBOLS["SO_RCVBUF"]), (sol, SYMBOLS["SO_RCVBUFFORCE"])):
            s.rcvbuf = value & 0xFFFFFFFF      # __sock_set_rcvbuf takes it unsigned
            if conn is not None:
                conn.rcvbuf = self._sk_rcvbuf(s)
                conn.rcvbuf_locked = True
        elif key in ((sol, SYMBOLS["SO_SNDBUF"]), (sol, SYMBOLS["SO_SNDBUFFORCE"])):
            s.sndbuf = value & 0xFFFFFFFF      # __sock_set_sndbuf takes it unsigned
            self.notes.add("buffers")
            if conn is not None:
                conn.sndbuf = max(min(s.sndbuf, self.host.sysctl["net.core.wmem_max"]),
                                  self.SOCK_MIN_SNDBUF // 2)
                conn.sndbuf_locked = True
        elif key == (sol, SYMBOLS["SO_KEEPALIVE"]):
            s.keepalive = bool(value)
            self.notes.add("keepalive")
        elif key == (tcp, SYMBOLS["TCP_NODELAY"]):
            s.nodelay = bool(value)
            if conn is not None:
                conn.nodelay = s.nodelay
                if s.nodelay and conn.state in (S.ESTABLISHED, S.CLOSE_WAIT):
                    conn._output()   # tcp_push_pending_frames on setting TCP_NODELAY
                    conn._arm()
        elif key == (tcp, SYMBOLS["TCP_LINGER2"]):
            # do_tcp_setsockopt: <0 -> -1; above TCP_FIN_TIMEOUT_MAX (120 s) -> the max
            v = -1 if value < 0 else min(value, 120)
            s.linger2 = v if v != 0 else None
            if conn is not None:
                conn.linger2 = s.linger2
        elif key == (tcp, SYMBOLS["TCP_USER_TIMEOUT"]):
            if value < 0:
                raise SysError(_errno.EINVAL)
            s.user_timeout = value
            if conn is not None:
                conn.user_timeout = value
        elif key == (tcp, SYMBOLS["TCP_NOTSENT_LOWAT"]):
            if value < 0:
                raise SysError(_errno.EINVAL)
            s.other[key] = value
            if conn is not None:
                conn.notsent_lowat = value
        elif key == (tcp, SYMBOLS["TCP_CORK"]):
            s.cork = bool(value)
            if conn is not None:
                conn.set_cork(s.cork)
        elif key == (tcp, SYMBOLS["TCP_MAXSEG"]):
            # do_tcp_setsockopt: 0 clears it; otherwise TCP_MIN_MSS (88) .. MAX_TCP_WINDOW
            if value != 0 and not 88 <= value <= 32767:
                raise SysError(_errno.EINVAL)
            s.user_mss = value
            if conn is not None:
                conn.user_mss = value
        elif key == (tcp, SYMBOLS["TCP_CONGESTION"]):
            from ustack.tcp.cong import available
            name = value.decode() if isinstance(value, bytes) else str(value)
            name = name.strip('"').rstrip("\0")
            if name not in available():
                raise SysError(_errno.ENOENT)     # tcp_set_congestion_control: no module
            s.other[key] = name
            if conn is not None:
                conn.congestion_control = name
        elif key in ((tcp, SYMBOLS["TCP_KEEPIDLE"]), (tcp, SYMBOLS["TCP_KEEPINTVL"]),
                     (tcp, SYMBOLS["TCP_KEEPCNT"])):
            if value < 1:
                raise SysError(_errno.EINVAL)
            s.other[key] = value
            self.notes.add("keepalive")
        else:
            raise DrillUnsupported(f"setsockopt {_opt_name(level, name)} on the ustack target")
        return 0

    def getsockopt(self, fd: int, level: int, name: int, shape: str, optlen: int) -> Any:
        s = self._get(fd)
        sol, tcp = SYMBOLS["SOL_SOCKET"], SYMBOLS["SOL_TCP"]
        if optlen < 0:
            raise SysError(_errno.EINVAL)
        key = (level, name)
        sysctl = self.host.sysctl
        if key == (sol, SYMBOLS["SO_ERROR"]):
            return self._take_error(s)
        if key == (sol, SYMBOLS["SO_TYPE"]):
            return SYMBOLS["SOCK_STREAM"]
        if key == (sol, SYMBOLS["SO_ACCEPTCONN"]):
            return 1 if s.listener is not None else 0
        if key == (sol, SYMBOLS["SO_REUSEADDR"]):
            return int(s.reuseaddr)
        if key == (sol, SYMBOLS["SO_REUSEPORT"]):
            return int(s.reuseport)
        if key == (sol, SYMBOLS["SO_KEEPALIVE"]):
            return int(s.keepalive)
        if key == (sol, SYMBOLS["SO_LINGER"]):
            return s.linger
        if key == (sol, SYMBOLS["SO_RCVBUF"]):
            if s.rcvbuf is None:
                return sysctl["net.ipv4.tcp_rmem"][1]
            return self._sk_rcvbuf(s)
        if key == (sol, SYMBOLS["SO_SNDBUF"]):
            if s.sndbuf is None:
                return sysctl["net.ipv4.tcp_wmem"][1]
            # __sock_set_sndbuf: unsigned, capped at wmem_max, doubled, at least the minimum
            v = min(s.sndbuf & 0xFFFFFFFF, sysctl["net.core.wmem_max"])
            return max(v * 2, self.SOCK_MIN_SNDBUF)
        if key == (tcp, SYMBOLS["TCP_NODELAY"]):
            return int(s.nodelay)
        if key == (tcp, SYMBOLS["TCP_LINGER2"]):
            # do_tcp_getsockopt: linger2 >= 0 reports (linger2 ?: tcp_fin_timeout) in s
            if s.linger2 is not None and s.linger2 < 0:
                return -1
            return s.linger2 or sysctl["net.ipv4.tcp_fin_timeout"]
        if key == (tcp, SYMBOLS["TCP_USER_TIMEOUT"]):
            return s.user_timeout
        if key == (tcp, SYMBOLS["TCP_CORK"]):
            return int(s.cork)
        if key == (tcp, SYMBOLS["TCP_NOTSENT_LOWAT"]):
            return s.other.get(key, 0)
        if key == (tcp, SYMBOLS["TCP_MAXSEG"]):
            conn = s.conn
            if conn is None or conn.state in (S.CLOSED, S.LISTEN):
                return s.user_mss or 536         # mss_cache is TCP_MSS_DEFAULT until then
            return conn._effective_mss()
        if key == (tcp, SYMBOLS["TCP_CONGESTION"]):
            if s.conn is not None:
                return s.conn.congestion_control.encode()
            return s.other.get(key, sysctl["net.ipv4.tcp_congestion_control"]).encode()
        if key in s.other:
            return s.other[key]
        if key == (tcp, SYMBOLS["TCP_KEEPIDLE"]):
            return sysctl["net.ipv4.tcp_keepalive_time"]
        if key == (tcp, SYMBOLS["TCP_KEEPINTVL"]):
            return sysctl["net.ipv4.tcp_keepalive_intvl"]
        if key == (tcp, SYMBOLS["TCP_KEEPCNT"]):
            return sysctl["net.ipv4.tcp_keepalive_probes"]
        raise DrillUnsupported(f"getsockopt {_opt_name(level, name)} on the ustack target")

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
        conn = s.conn
        state = self._state(s)
        if request == SYMBOLS["FIONBIO"]:
            raise DrillUnsupported("ioctl FIONBIO (use fcntl O_NONBLOCK)")
        if request not in (SYMBOLS["SIOCINQ"], SYMBOLS["SIOCOUTQ"], SYMBOLS["SIOCOUTQNSD"]):
            raise DrillUnsupported(f"ioctl request {request:#x}")
        if state == S.LISTEN:
            raise SysError(_errno.EINVAL)   # tcp_ioctl
        if conn is None or state in (S.SYN_SENT, S.SYN_RECV):
            return 0
        if request == SYMBOLS["SIOCINQ"]:
            return conn.rcv_queued
        # write_seq counts the FIN: it is in the queue until acknowledged
        fin = 1 if conn.fin_queued and conn.snd_una != (conn.fin_seq + 1) & 0xFFFFFFFF and \
            state != S.CLOSED else 0
        if request == SYMBOLS["SIOCOUTQ"]:
            return conn.snd_queued + fin if state != S.CLOSED else 0
        self.notes.add("outq_nsd")
        sent = (conn.snd_nxt - conn.snd_una) & 0xFFFFFFFF
        return max(0, len(conn.sndq) + fin - sent) if state != S.CLOSED else 0

    def poll(self, fds: list[tuple[int, int]]) -> list[int]:
        out = []
        for fd, events in fds:
            s = self.socks.get(fd)
            if s is None:
                out.append(POLLNVAL)
                continue
            mask = self._poll_mask(s)
            out.append(mask & (events | POLLERR | POLLHUP | POLLNVAL))
        return out

    def _poll_mask(self, s: _Sock) -> int:
        """tcp_poll()."""
        if s.listener is not None:
            return POLLIN | POLLRDNORM if s.listener.accept_queue else 0
        conn = s.conn
        state = self._state(s)
        self._sync_error(s)
        rcv_sd = s.shut_rd
        snd_sd = s.shut_wr
        if conn is not None:
            if conn.rcv_fin:
                rcv_sd = True
            if conn.fin_queued:
                snd_sd = True
            if state == S.CLOSED:
                rcv_sd = snd_sd = True       # tcp_done: SHUTDOWN_MASK
        mask = 0
        if (rcv_sd and snd_sd) or state == S.CLOSED:
            mask |= POLLHUP
        if rcv_sd:
            mask |= POLLIN | POLLRDNORM | POLLRDHUP
        if state not in (S.SYN_SENT, S.SYN_RECV):
            if conn is not None and conn.rcv_queued:
                mask |= POLLIN | POLLRDNORM
            if not snd_sd:
                if conn is None or self._writable(conn):
                    mask |= POLLOUT | POLLWRNORM
            else:
                mask |= POLLOUT | POLLWRNORM
        if s.so_error:
            mask |= POLLERR
        return mask

    @staticmethod
    def _writable(conn: Any) -> bool:
        """sk_stream_is_writeable: free space at least half of what is queued."""
        queued = conn.snd_queued
        return conn.sndbuf - queued >= queued // 2 and conn.sndbuf > queued and \
            conn.memory_free(1)


def _opt_name(level: int, name: int) -> str:
    lv = {1: "SOL_SOCKET", 6: "SOL_TCP", 0: "SOL_IP"}.get(level, str(level))
    prefix = {1: "SO_", 6: "TCP_"}.get(level)
    if prefix:
        for k, v in SYMBOLS.items():
            if k.startswith(prefix) and v == name:
                return f"{lv} {k}"
    return f"{lv} {name}"
