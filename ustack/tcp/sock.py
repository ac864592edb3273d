"""Linux's socket layer for TCP, written once, with no I/O and no clock of its own.

A :class:`Socket` is what a file descriptor of a TCP socket is in Linux: struct socket (the
SS_CONNECTING/SS_CONNECTED state, O_NONBLOCK) plus the option fields of struct sock and
struct tcp_sock.  Its methods are the system calls (net/ipv4/af_inet.c ``inet_*`` and
net/ipv4/tcp.c ``tcp_*``) with Linux's results and errors:

* a call returns its result, or raises :class:`OSError` with Linux's errno;
* a call that would *sleep* on a blocking socket raises :class:`WouldBlock`, whose ``retry()``
  is the same call resumed: the caller lets the world move (packets, timers) and retries.

Both adapters use it: the asyncio layer (``ustack.aio``: the object behind
``transport.get_extra_info("socket")`` and ``server.sockets``) and the packet-script runner
(``ustack.drill``), so the kernel conformance corpus checks exactly what applications call.

Option values follow ``setsockopt(2)``: integers (bools are accepted as 0/1, as the socket
module does), 4-byte packed integers, SO_LINGER as ``(onoff, seconds)`` or 8 packed bytes,
TCP_CONGESTION as bytes or str.  Values are clamped or refused the way Linux does
(SO_RCVBUF/SO_SNDBUF doubled and clamped by net.core.[rw]mem_max, TCP_LINGER2 capped at
120 s, TCP_KEEPIDLE/INTVL 1..32767, TCP_KEEPCNT 1..127, TCP_MAXSEG 88..32767).
"""
from __future__ import annotations

import errno as E
import functools
import struct
from typing import Any, Callable, TypeVar

from . import states as S

# Linux's numbers (the same as Python's socket module on Linux).
AF_INET, SOCK_STREAM, IPPROTO_TCP = 2, 1, 6
SOL_SOCKET, SOL_TCP = 1, 6
SO_REUSEADDR, SO_TYPE, SO_ERROR, SO_SNDBUF, SO_RCVBUF, SO_KEEPALIVE = 2, 3, 4, 7, 8, 9
SO_LINGER, SO_REUSEPORT, SO_ACCEPTCONN, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 13, 15, 30, 32, 33
SO_PROTOCOL, SO_DOMAIN = 38, 39
TCP_NODELAY, TCP_MAXSEG, TCP_CORK, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT = 1, 2, 3, 4, 5, 6
TCP_LINGER2, TCP_CONGESTION, TCP_USER_TIMEOUT, TCP_NOTSENT_LOWAT = 8, 13, 18, 25
SHUT_RD, SHUT_WR, SHUT_RDWR = 0, 1, 2
SIOCINQ, SIOCOUTQ, SIOCOUTQNSD = 0x541B, 0x5411, 0x894B
POLLIN, POLLOUT, POLLERR, POLLHUP = 0x1, 0x4, 0x8, 0x10
POLLRDNORM, POLLWRNORM, POLLRDHUP = 0x40, 0x100, 0x2000
MSG_PEEK, MSG_DONTWAIT, MSG_EOR, MSG_MORE = 0x2, 0x40, 0x80, 0x8000

SOCK_MIN_RCVBUF = 2304      # Linux: 2048 + sizeof(struct sk_buff), rounded
SOCK_MIN_SNDBUF = 4608
TCP_FIN_TIMEOUT_MAX = 120   # s
MAX_TCP_KEEPIDLE = MAX_TCP_KEEPINTVL = 32767
MAX_TCP_KEEPCNT = 127

# Where ustack's behaviour is still short of Linux's, the socket layer notes it (the packet
# script runner prints the note when a script runs into it).
GAPS: dict[str, str] = {
    "child_reset_before_accept": "a child reset before accept() is removed from the accept "
                                 "queue by the core (Linux keeps it and accept() returns it)",
    "buffers": "SO_SNDBUF: ustack counts payload bytes, Linux counts memory; the send queue "
               "holds the requested byte count (half of the doubled value getsockopt reports)",
}


class WouldBlock(Exception):
    """A blocking socket would sleep.  ``retry()`` returns the result, raises OSError, or
    raises WouldBlock again.  ``timeout_s``: the wait ends after this many seconds with
    ``timeout_result`` (SO_LINGER's limit in close())."""

    def __init__(self, retry: Callable[[], Any], *, timeout_s: float | None = None,
                 timeout_result: Any = None) -> None:
        super().__init__("would block")
        self.retry = retry
        self.timeout_s = timeout_s
        self.timeout_result = timeout_result


def _err(code: int, detail: str = "") -> OSError:
    import os
    msg = os.strerror(code)
    return OSError(code, f"{msg}: {detail}" if detail else msg)


def int_value(value: Any, what: str = "option") -> int:
    """An integer option value: an int (a bool counts as 0/1) or 4 packed bytes."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        if len(value) < 4:
            raise _err(E.EINVAL, f"{what} takes 4 bytes, got {len(value)}")
        return struct.unpack("i", bytes(value[:4]))[0]
    if isinstance(value, int):
        return int(value)
    raise TypeError(f"{what} value must be an int or a bytes-like object, "
                    f"not {type(value).__name__}")


F = TypeVar("F", bound=Callable[..., Any])


def _entry(fn: F) -> F:
    """A public entry of the core: time comes in (`now=`, ms on the host's clock: due timers
    run first), and the notifications it caused run when it ends."""
    @functools.wraps(fn)
    def call(self: "Socket", *args: Any, now: int | None = None, **kw: Any) -> Any:
        host = self.host
        if now is not None:
            host.advance(now)
        try:
            return fn(self, *args, **kw)
        finally:
            if host.events:
                host.drain_events()
    return call  # type: ignore[return-value]


class Socket:
    """One TCP socket of a :class:`ustack.host.Host` with Linux's socket-call semantics.

    Every call that changes something takes an optional ``now=`` (the caller's clock in ms)
    and runs the notifications it caused before it returns.  ``notes`` collects :data:`GAPS` keys the socket ran into."""

    family = AF_INET
    type = SOCK_STREAM
    proto = IPPROTO_TCP

    def __init__(self, host: Any, *, nonblock: bool = False,
                 notes: set[str] | None = None) -> None:
        self.host = host
        self.nonblock = nonblock
        self.notes = notes if notes is not None else set()
        self.port: int | None = None     # bound local port (explicit bind or autobind)
        self.binding: Any = None         # a PortBinding until listen()/connect() take it
        self.explicit_port = False       # bind() chose the port (SOCK_BINDPORT_LOCK)
        self.listener: Any = None        # ustack.host.Listener
        self.conn: Any = None            # ustack.tcp.connection.Connection
        self.connecting = False          # SS_CONNECTING
        self.connected = False           # SS_CONNECTED
        self.closed = False
        self.err_taken = False           # conn.error moved to so_error already
        self.so_error = 0                # pending sk_err
        self.shut_rd = False
        self.shut_wr = False
        self._write_done = 0             # bytes a blocking send() has queued so far
        # socket options, as set (the connection gets them when it exists)
        self.reuseaddr = False
        self.reuseport = False
        self.linger: tuple[int, int] = (0, 0)
        self.rcvbuf: int | None = None   # what setsockopt asked (bytes)
        self.sndbuf: int | None = None
        self.nodelay = False
        self.linger2: int | None = None  # s; -1 = reset at once
        self.user_timeout = 0
        self.user_mss = 0
        self.cork = False
        self.keepalive = False
        self.keepidle = 0                # 0: net.ipv4.tcp_keepalive_time
        self.keepintvl = 0
        self.keepcnt = 0
        self.notsent_lowat = 0
        self.congestion: str | None = None
        # connection fields to set beyond the options above (ustack's `options=` extra)
        self.extra_options: dict[str, Any] = {}

    # ---------------------------------------------------------------- state
    @property
    def state(self) -> int:
        if self.listener is not None:
            return S.LISTEN
        if self.conn is None:
            return S.CLOSED
        return self.conn.state

    def _sync_error(self) -> None:
        """Move a connection's error to the socket's pending error once (sk_err)."""
        conn = self.conn
        if conn is not None and not self.err_taken and conn.error is not None:
            self.err_taken = True
            self.so_error = getattr(conn.error, "errno", None) or E.ECONNRESET

    def take_error(self) -> int:
        """sock_error(): the pending error, cleared."""
        self._sync_error()
        e = self.so_error
        self.so_error = 0
        return e

    def _bindings(self) -> list[Any]:
        out = [self.binding]
        if self.listener is not None:
            out.append(self.listener.binding)
        if self.conn is not None:
            out.append(self.conn.binding)
        return [b for b in out if b is not None]

    def _sk_rcvbuf(self) -> int:
        """__sock_set_rcvbuf: capped at net.core.rmem_max, doubled, at least the minimum."""
        v = min(self.rcvbuf or 0, self.host.sysctl["net.core.rmem_max"])
        return max(v * 2, SOCK_MIN_RCVBUF)

    def conn_options(self) -> dict[str, Any]:
        """The connection fields this socket's options set (at connect(), or on a listener's
        children when they are created)."""
        opts: dict[str, Any] = {"nodelay": self.nodelay, "reuseaddr": self.reuseaddr,
                                "user_timeout": self.user_timeout, "user_mss": self.user_mss,
                                "cork": self.cork}
        if self.linger2 is not None:
            opts["linger2"] = self.linger2
        if self.rcvbuf is not None:
            opts["rcvbuf"] = self._sk_rcvbuf()
            opts["rcvbuf_locked"] = True
        if self.sndbuf is not None:
            opts["sndbuf"] = self._conn_sndbuf()
            opts["sndbuf_locked"] = True
        if self.notsent_lowat:
            opts["notsent_lowat"] = self.notsent_lowat
        if self.congestion is not None:
            opts["congestion_control"] = self.congestion
        if self.keepalive:
            opts["keepalive"] = True
        for name in ("keepidle", "keepintvl", "keepcnt"):
            if getattr(self, name):
                opts[name] = getattr(self, name)
        if self.linger != (0, 0):
            opts["linger"] = self.linger[1] if self.linger[0] else None
        opts.update(self.extra_options)
        return opts

    def _conn_sndbuf(self) -> int:
        return max(min(self.sndbuf or 0, self.host.sysctl["net.core.wmem_max"]),
                   SOCK_MIN_SNDBUF // 2)

    def _check_open(self) -> None:
        if self.closed:
            raise _err(E.EBADF, "the socket is closed")

    # ---------------------------------------------------------------- calls
    @_entry
    def bind(self, port: int) -> None:
        self._check_open()
        if not 0 <= port <= 65535:
            raise OverflowError(f"port must be 0-65535, not {port}")
        if self.port is not None or self.conn is not None or self.listener is not None:
            raise _err(E.EINVAL, "the socket is already bound")
        try:
            self.binding = self.host.bind(port, reuseaddr=self.reuseaddr,
                                          reuseport=self.reuseport)
        except OSError as e:
            raise _err(e.errno or E.EADDRINUSE, str(e.strerror or "")) from None
        self.port = self.binding.port
        self.explicit_port = port != 0

    @_entry
    def listen(self, backlog: int) -> None:
        self._check_open()
        if self.listener is not None:
            self.listener.backlog = max(1, min(backlog, self.host.sysctl["net.core.somaxconn"])
                                        + 1)
            return
        if self.conn is not None:
            raise _err(E.EINVAL, "the socket is connected")
        if self.binding is None:
            try:       # inet_autobind
                self.binding = self.host.bind(0, reuseaddr=self.reuseaddr,
                                              reuseport=self.reuseport)
            except OSError:
                raise _err(E.EAGAIN, "no free local port") from None
            self.port = self.binding.port
        try:
            self.listener = self.host.listen(self.binding, backlog)
        except OSError as e:
            raise _err(e.errno or E.EADDRINUSE, str(e.strerror or "")) from None
        self.listener.child_options = self.conn_options()
        self.binding = None          # the listener holds the port now

    def _update_children(self) -> None:
        """A listener's options go to the children it creates from now on (sk_clone_lock)."""
        if self.listener is not None:
            self.listener.child_options = self.conn_options()

    @_entry
    def accept(self) -> "Socket":
        """A new Socket for the first established child (EAGAIN/WouldBlock when none)."""
        self._check_open()
        if self.listener is None:
            raise _err(E.EINVAL, "the socket is not listening")

        def attempt() -> Socket:
            if self.listener is None or self.listener.closed:
                raise _err(E.EINVAL, "the socket stopped listening")
            conn = self.listener.accept()
            if conn is None:
                if self.nonblock:
                    raise _err(E.EAGAIN)
                raise WouldBlock(attempt)
            return self.adopt(conn)
        return attempt()

    def adopt(self, conn: Any) -> "Socket":
        """The Socket of an accepted child: the listener's options, as Linux copies them."""
        child = Socket(self.host, notes=self.notes)
        for name in ("reuseaddr", "linger", "rcvbuf", "sndbuf", "nodelay", "linger2",
                     "user_timeout", "user_mss", "cork", "keepalive", "keepidle", "keepintvl",
                     "keepcnt", "notsent_lowat", "congestion"):
            setattr(child, name, getattr(self, name))
        child.port = conn.lport
        child.conn = conn
        child.connected = True
        return child

    @_entry
    def connect(self, raddr: int, port: int | None) -> None:
        """connect(); ``port`` None is connect(AF_UNSPEC) (tcp_disconnect)."""
        self._check_open()
        if port is None:
            self._disconnect()
            return
        if self.listener is not None:
            raise _err(E.EINVAL, "the socket is listening")
        conn = self.conn
        if conn is not None:
            # __inet_stream_connect: the socket's own state (SS_CONNECTING until a connect()
            # call sees the handshake finished) decides, not only the connection's
            self._sync_error()
            if self.connecting:
                if conn.state in (S.SYN_SENT, S.SYN_RECV):
                    if self.nonblock:
                        raise _err(E.EALREADY)
                    return self._connect_wait()
                self.connecting = False
                if conn.state == S.CLOSED:
                    err = self.take_error() or E.ECONNABORTED
                    self.conn = None           # sock_error: SS_UNCONNECTED, may connect again
                    raise _err(err)
                self.connected = True
                return
            if self.connected:
                raise _err(E.EISCONN)
            self.conn = None                   # SS_UNCONNECTED after a failed connect
            self.err_taken = False
        lport: Any = self.binding
        if lport is None and self.explicit_port and self.port is not None:
            lport = self.port     # a bound socket keeps its port across failed connects
        try:
            conn = self.host.connect(raddr, port, lport, options=self.conn_options())
        except OSError as e:
            raise _err(e.errno or E.EADDRNOTAVAIL, str(e.strerror or "")) from None
        self.binding = None          # the connection holds the port now
        self.conn = conn
        self.port = conn.lport
        self.connecting = True
        if self.nonblock:
            raise _err(E.EINPROGRESS)
        self._connect_wait()

    def connect_done(self) -> bool:
        """Has a connect() in progress finished (either way)?"""
        c = self.conn
        return c is None or c.state not in (S.SYN_SENT, S.SYN_RECV)

    def _connect_wait(self) -> None:
        def wait() -> None:
            c = self.conn
            if c is None:
                raise _err(E.ECONNABORTED)
            if c.state == S.SYN_SENT or c.state == S.SYN_RECV:
                raise WouldBlock(wait)
            self.connecting = False
            if c.state == S.CLOSED:
                err = self.take_error() or E.ECONNABORTED
                self.conn = None
                raise _err(err)
            self.connected = True
        wait()

    def _disconnect(self) -> None:
        """connect(AF_UNSPEC): tcp_disconnect — RST if synchronized, the socket is new again."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            self._release_port()
            self.port = None
            return
        conn = self.conn
        if conn is not None and conn.state != S.CLOSED:
            conn.abort()
        self.conn = None
        self.connecting = self.connected = False
        self.err_taken = False
        self.so_error = 0
        self.shut_rd = self.shut_wr = False
        if not self.explicit_port:
            self.port = None

    def _release_port(self) -> None:
        if self.binding is not None:
            self.binding.release()
            self.binding = None

    @_entry
    def recv(self, n: int, flags: int = 0) -> bytes:
        """tcp_recvmsg: up to n bytes; b"" at EOF."""
        self._check_open()
        if n < 0:
            raise _err(E.EINVAL, "negative buffer size")

        def attempt() -> bytes:
            conn = self.conn
            if self.listener is not None or conn is None:
                raise _err(E.ENOTCONN)
            if conn.rcv_queued:
                if n == 0:
                    return b""
                if flags & MSG_PEEK:
                    return conn.peek(n)
                return conn.recv(n)
            if n == 0:
                return b""
            # tcp_recvmsg_locked with nothing copied
            if conn.rcv_fin:                     # SOCK_DONE: the peer's FIN was read
                return b""
            self._sync_error()
            if self.so_error:
                raise _err(self.take_error())
            if self.shut_rd or conn.rcv_shutdown or conn.state == S.CLOSED:
                return b""                       # RCV_SHUTDOWN (tcp_done: SHUTDOWN_MASK)
            if self.nonblock or flags & MSG_DONTWAIT:
                raise _err(E.EAGAIN)
            raise WouldBlock(attempt)
        return attempt()

    @_entry
    def send(self, data: bytes | bytearray | memoryview, flags: int = 0) -> int:
        """tcp_sendmsg: what fits in the send buffer; a blocking socket waits for the rest."""
        self._check_open()
        self._write_done = 0
        data = memoryview(data).cast("B")
        n = len(data)

        def attempt() -> int:
            conn = self.conn
            state = self.state
            if state not in (S.ESTABLISHED, S.CLOSE_WAIT):
                # sk_stream_wait_connect
                self._sync_error()
                if self.so_error:
                    raise _err(self.take_error())
                if state not in (S.SYN_SENT, S.SYN_RECV):
                    raise _err(E.EPIPE)
                if self.nonblock or flags & MSG_DONTWAIT:
                    raise _err(E.EAGAIN)
                raise WouldBlock(attempt)
            self._sync_error()
            if self.so_error:
                raise _err(self.take_error())
            if self.shut_wr or conn.fin_queued:
                raise _err(E.EPIPE)
            done = self._write_done
            if done >= n:
                return n
            try:
                # sk_stream_memory_free: nothing more while TCP_NOTSENT_LOWAT is reached
                took = conn.send(data[done:], limit=True, more=bool(flags & MSG_MORE),
                                 eor=bool(flags & MSG_EOR)) if conn.memory_free(0) else 0
            except OSError as e:
                raise _err(e.errno or E.EPIPE) from None
            self._write_done += took
            if self._write_done >= n:
                return n
            if self.nonblock or flags & MSG_DONTWAIT:
                if self._write_done:
                    return self._write_done
                raise _err(E.EAGAIN)
            raise WouldBlock(attempt)
        return attempt()

    @_entry
    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue all of ``data`` beyond the send buffer (an asyncio transport's write: what
        does not fit waits in user space, counted as the transport's buffer)."""
        self._check_open()
        conn = self.conn
        if conn is None or self.shut_wr:
            raise _err(E.EPIPE)
        conn.send(data)

    @_entry
    def close(self) -> None:
        """close(): a listener stops (its unaccepted children are reset); a connection goes
        on as an orphan or is reset (unread data, SO_LINGER {1, 0}).  With SO_LINGER {1, N} a
        blocking socket waits (WouldBlock, timeout_s=N) until its FIN is acknowledged."""
        if self.closed:
            raise _err(E.EBADF, "the socket is already closed")
        self.closed = True
        if self.listener is not None:
            self.listener.close()     # releases the port
            self.listener = None
            return
        self._release_port()
        conn = self.conn
        if conn is None:
            return
        onoff, secs = self.linger
        conn.linger = secs if onoff else None
        conn.close()
        if onoff and secs > 0 and not self.nonblock and conn.state in (S.FIN_WAIT_1, S.CLOSING,
                                                                       S.LAST_ACK):
            # tcp_close: sk_stream_wait_close() until the FIN is acknowledged or linger ends
            def wait() -> int:
                if conn.state in (S.FIN_WAIT_1, S.CLOSING, S.LAST_ACK):
                    raise WouldBlock(wait, timeout_s=secs, timeout_result=0)
                return 0
            raise WouldBlock(wait, timeout_s=secs, timeout_result=0)

    @_entry
    def abort(self) -> None:
        """Reset and release at once (close with SO_LINGER {1, 0}, as asyncio's abort())."""
        if self.closed:
            return
        self.closed = True
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            return
        self._release_port()
        if self.conn is not None:
            self.conn.abort()

    @_entry
    def shutdown(self, how: int) -> None:
        self._check_open()
        if how not in (SHUT_RD, SHUT_WR, SHUT_RDWR):
            raise _err(E.EINVAL, f"shutdown how must be SHUT_RD, SHUT_WR or SHUT_RDWR, "
                                 f"not {how}")
        rd, wr = how in (SHUT_RD, SHUT_RDWR), how in (SHUT_WR, SHUT_RDWR)
        state = self.state
        # inet_shutdown
        if state == S.LISTEN:
            if rd:
                self.listener.close()
                self.listener = None
            return
        if state == S.SYN_SENT:
            self._disconnect()
            return
        if state == S.CLOSED:
            self.shut_rd |= rd
            self.shut_wr |= wr
            raise _err(E.ENOTCONN)
        conn = self.conn
        if rd:
            self.shut_rd = True
            conn.shutdown_read()
        if wr:
            self.shut_wr = True
            conn.shutdown_write()

    # ---------------------------------------------------------------- options
    @_entry
    def setsockopt(self, level: int, name: int, value: Any, optlen: int | None = None) -> None:
        """setsockopt(2).  ``optlen`` defaults to the value's size (as the socket module)."""
        self._check_open()
        key = (level, name)
        conn = self.conn
        if key == (SOL_SOCKET, SO_LINGER):
            if isinstance(value, (bytes, bytearray, memoryview)):
                if len(value) < 8:
                    raise _err(E.EINVAL, "SO_LINGER takes struct linger (8 bytes)")
                value = struct.unpack("ii", bytes(value[:8]))
            elif not (isinstance(value, tuple) and len(value) == 2):
                raise TypeError("SO_LINGER takes (onoff, seconds) or "
                                "struct.pack('ii', onoff, seconds)")
            if optlen is not None and optlen < 8:
                raise _err(E.EINVAL, "SO_LINGER takes struct linger (8 bytes)")
            onoff, secs = (int(v) for v in value)
            self.linger = (1 if onoff else 0, max(0, secs))
            if conn is not None:
                conn.linger = self.linger[1] if onoff else None
            return self._update_children()
        if key == (SOL_TCP, TCP_CONGESTION):
            from .cong import available
            if isinstance(value, (bytes, bytearray, memoryview)):
                text = bytes(value).decode("ascii", "replace")
            elif isinstance(value, str):
                text = value
            else:
                raise TypeError("TCP_CONGESTION takes the module's name (bytes or str)")
            text = text.strip('"').split("\0")[0]
            if text not in available():
                raise _err(E.ENOENT, f"no congestion control {text!r} "
                                     f"(available: {' '.join(available())})")
            self.congestion = text
            if conn is not None:
                conn.congestion_control = text
            return self._update_children()
        if optlen is not None and optlen < 4:
            raise _err(E.EINVAL, "integer options take 4 bytes")
        v = int_value(value, _opt_name(level, name))
        ranged = _RANGED.get(key)
        if ranged is not None:
            # do_tcp_setsockopt's integer options with a valid range
            attr, lo, hi, unit = ranged
            if not (lo <= v <= hi or (key == (SOL_TCP, TCP_MAXSEG) and v == 0)):
                raise _err(E.EINVAL, f"{_opt_name(level, name).split()[1]} must be "
                                     f"{lo}..{hi}{unit}")
            setattr(self, attr, v)
            if conn is not None:
                if attr == "keepidle":
                    conn.set_keepalive_time(v)   # re-arms from the last sign of life
                else:
                    setattr(conn, attr, v)
            return self._update_children()
        if key == (SOL_SOCKET, SO_REUSEADDR):
            self.reuseaddr = bool(v)
            if conn is not None:
                conn.reuseaddr = self.reuseaddr
            for b in self._bindings():
                b.reuseaddr = self.reuseaddr   # sk_reuse, kept by TIME-WAIT too
        elif key == (SOL_SOCKET, SO_REUSEPORT):
            self.reuseport = bool(v)
            for b in self._bindings():
                b.reuseport = self.reuseport
        elif key in ((SOL_SOCKET, SO_RCVBUF), (SOL_SOCKET, SO_RCVBUFFORCE)):
            self.rcvbuf = v & 0xFFFFFFFF      # __sock_set_rcvbuf takes it unsigned
            if conn is not None:
                conn.rcvbuf = self._sk_rcvbuf()
                conn.rcvbuf_locked = True
        elif key in ((SOL_SOCKET, SO_SNDBUF), (SOL_SOCKET, SO_SNDBUFFORCE)):
            self.sndbuf = v & 0xFFFFFFFF      # __sock_set_sndbuf takes it unsigned
            self.notes.add("buffers")
            if conn is not None:
                conn.sndbuf = self._conn_sndbuf()
                conn.sndbuf_locked = True
        elif key == (SOL_SOCKET, SO_KEEPALIVE):
            self.keepalive = bool(v)
            if conn is not None:
                conn.set_keepalive(self.keepalive)
        elif key == (SOL_TCP, TCP_NODELAY):
            self.nodelay = bool(v)
            if conn is not None:
                conn.set_nodelay(self.nodelay)
        elif key == (SOL_TCP, TCP_LINGER2):
            # do_tcp_setsockopt: <0 -> -1; above TCP_FIN_TIMEOUT_MAX (120 s) -> the max
            v = -1 if v < 0 else min(v, TCP_FIN_TIMEOUT_MAX)
            self.linger2 = v if v != 0 else None
            if conn is not None:
                conn.linger2 = self.linger2
        elif key == (SOL_TCP, TCP_CORK):
            self.cork = bool(v)
            if conn is not None:
                conn.set_cork(self.cork)
        else:
            raise _err(E.ENOPROTOOPT, f"ustack does not implement {_opt_name(level, name)}")
        self._update_children()

    def getsockopt(self, level: int, name: int) -> Any:
        """getsockopt(2): an int, SO_LINGER as (onoff, seconds), TCP_CONGESTION as bytes."""
        self._check_open()
        key = (level, name)
        sysctl = self.host.sysctl
        if key == (SOL_SOCKET, SO_ERROR):
            return self.take_error()
        if key == (SOL_SOCKET, SO_TYPE):
            return SOCK_STREAM
        if key == (SOL_SOCKET, SO_DOMAIN):
            return AF_INET
        if key == (SOL_SOCKET, SO_PROTOCOL):
            return IPPROTO_TCP
        if key == (SOL_SOCKET, SO_ACCEPTCONN):
            return 1 if self.listener is not None else 0
        if key == (SOL_SOCKET, SO_REUSEADDR):
            return int(self.reuseaddr)
        if key == (SOL_SOCKET, SO_REUSEPORT):
            return int(self.reuseport)
        if key == (SOL_SOCKET, SO_KEEPALIVE):
            return int(self.keepalive)
        if key == (SOL_SOCKET, SO_LINGER):
            return self.linger
        if key == (SOL_SOCKET, SO_RCVBUF):
            if self.rcvbuf is None:
                conn = self.conn
                return conn.rcvbuf if conn is not None else sysctl["net.ipv4.tcp_rmem"][1]
            return self._sk_rcvbuf()
        if key == (SOL_SOCKET, SO_SNDBUF):
            if self.sndbuf is None:
                return sysctl["net.ipv4.tcp_wmem"][1]
            # __sock_set_sndbuf: unsigned, capped at wmem_max, doubled, at least the minimum
            v = min(self.sndbuf & 0xFFFFFFFF, sysctl["net.core.wmem_max"])
            return max(v * 2, SOCK_MIN_SNDBUF)
        if key == (SOL_TCP, TCP_NODELAY):
            return int(self.nodelay)
        if key == (SOL_TCP, TCP_LINGER2):
            # do_tcp_getsockopt: linger2 >= 0 reports (linger2 ?: tcp_fin_timeout) in s
            if self.linger2 is not None and self.linger2 < 0:
                return -1
            return self.linger2 or sysctl["net.ipv4.tcp_fin_timeout"]
        if key == (SOL_TCP, TCP_USER_TIMEOUT):
            return self.user_timeout
        if key == (SOL_TCP, TCP_CORK):
            return int(self.cork)
        if key == (SOL_TCP, TCP_NOTSENT_LOWAT):
            return self.notsent_lowat
        if key == (SOL_TCP, TCP_MAXSEG):
            conn = self.conn
            if conn is None or conn.state in (S.CLOSED, S.LISTEN):
                return self.user_mss or 536      # mss_cache is TCP_MSS_DEFAULT until then
            return conn.effective_mss()
        if key == (SOL_TCP, TCP_CONGESTION):
            if self.conn is not None:
                return self.conn.congestion_control.encode()
            return (self.congestion or sysctl["net.ipv4.tcp_congestion_control"]).encode()
        if key == (SOL_TCP, TCP_KEEPIDLE):
            return self.keepidle or sysctl["net.ipv4.tcp_keepalive_time"]
        if key == (SOL_TCP, TCP_KEEPINTVL):
            return self.keepintvl or sysctl["net.ipv4.tcp_keepalive_intvl"]
        if key == (SOL_TCP, TCP_KEEPCNT):
            return self.keepcnt or sysctl["net.ipv4.tcp_keepalive_probes"]
        raise _err(E.ENOPROTOOPT, f"ustack does not implement {_opt_name(level, name)}")

    # ---------------------------------------------------------------- queues and poll
    def ioctl(self, request: int) -> int:
        """SIOCINQ, SIOCOUTQ, SIOCOUTQNSD (tcp_ioctl)."""
        self._check_open()
        if request not in (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD):
            raise _err(E.ENOTTY, f"ioctl request {request:#x} is not a TCP queue ioctl")
        conn = self.conn
        state = self.state
        if state == S.LISTEN:
            raise _err(E.EINVAL, "queue ioctls on a listening socket")
        if conn is None or state in (S.SYN_SENT, S.SYN_RECV):
            return 0
        if request == SIOCINQ:
            return conn.rcv_queued
        if state == S.CLOSED:
            return 0
        # write_seq counts the FIN: it is in the queue until acknowledged
        fin = 1 if conn.fin_queued and conn.snd_una != (conn.fin_seq + 1) & 0xFFFFFFFF else 0
        if request == SIOCOUTQ:
            return conn.snd_queued + fin
        return conn.notsent_bytes + fin

    def poll(self) -> int:
        """tcp_poll(): the event mask."""
        if self.closed:
            return 0x20   # POLLNVAL
        listener = self.listener
        if listener is not None:
            return POLLIN | POLLRDNORM if listener.accept_queue else 0
        conn = self.conn
        state = self.state
        self._sync_error()
        rcv_sd = self.shut_rd
        snd_sd = self.shut_wr
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
        if self.so_error:
            mask |= POLLERR
        return mask

    @staticmethod
    def _writable(conn: Any) -> bool:
        """sk_stream_is_writeable: free space at least half of what is queued."""
        queued = conn.snd_queued
        return conn.sndbuf - queued >= queued // 2 and conn.sndbuf > queued and \
            conn.memory_free(1)

    # ---------------------------------------------------------------- names
    def getsockname(self) -> tuple[str, int]:
        from ustack.wire import int_to_ip
        return (int_to_ip(self.host.address), self.port or 0)

    def getpeername(self) -> tuple[str, int]:
        from ustack.wire import int_to_ip
        conn = self.conn
        if conn is None or self.listener is not None or not (self.connected or
                                                             self.connecting):
            raise _err(E.ENOTCONN)
        return (int_to_ip(conn.raddr), conn.rport)


# Integer options with a range: socket (and connection) field, lowest, highest, unit.
# TCP_MAXSEG also takes 0 (no user MSS); its range is TCP_MIN_MSS..MAX_TCP_WINDOW.
_RANGED: dict[tuple[int, int], tuple[str, int, int, str]] = {
    (SOL_TCP, TCP_USER_TIMEOUT): ("user_timeout", 0, (1 << 31) - 1, " ms"),
    (SOL_TCP, TCP_NOTSENT_LOWAT): ("notsent_lowat", 0, (1 << 31) - 1, " bytes"),
    (SOL_TCP, TCP_MAXSEG): ("user_mss", 88, 32767, " (or 0)"),
    (SOL_TCP, TCP_KEEPIDLE): ("keepidle", 1, MAX_TCP_KEEPIDLE, " s"),
    (SOL_TCP, TCP_KEEPINTVL): ("keepintvl", 1, MAX_TCP_KEEPINTVL, " s"),
    (SOL_TCP, TCP_KEEPCNT): ("keepcnt", 1, MAX_TCP_KEEPCNT, ""),
}

_NAMES = {
    SOL_SOCKET: {v: k for k, v in globals().items() if k.startswith("SO_")},
    SOL_TCP: {v: k for k, v in globals().items() if k.startswith("TCP_") and
              isinstance(v, int) and v < 64},
}


def _opt_name(level: int, name: int) -> str:
    lv = {SOL_SOCKET: "SOL_SOCKET", SOL_TCP: "SOL_TCP", 0: "SOL_IP"}.get(level, str(level))
    return f"{lv} {_NAMES.get(level, {}).get(name, name)}"
