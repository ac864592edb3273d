"""asyncio.Transport over a core Connection, and the socket-option object behind it.

The transport is glue: bytes go to `Connection.send`, the connection's callbacks become protocol
calls.  Backpressure: the core's send queue plays the kernel's socket buffer (SO_SNDBUF); what is
written beyond it counts as the transport's write buffer, so `pause_writing()` fires above the
high-water mark and `drain()` waits like on any asyncio transport.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any

from ustack.tcp import states as S
from ustack.tcp.connection import Connection, ConnectionUser
from ustack.wire import int_to_ip

if TYPE_CHECKING:  # pragma: no cover
    from ustack.aio.stack import Stack

TCP_CONGESTION = getattr(socket, "TCP_CONGESTION", 13)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
TCP_LINGER2 = getattr(socket, "TCP_LINGER2", 8)


class SocketOptions:
    """What `transport.get_extra_info("socket")` returns: setsockopt/getsockopt with the
    `socket` module's constants, applied to the ustack connection (not a kernel socket)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def _int(self, value: Any) -> int:
        if isinstance(value, (bytes, bytearray)):
            if len(value) != 4:
                raise OSError(22, "Invalid argument: integer options take 4 bytes")
            return struct.unpack("i", value)[0]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"option value must be an int or 4 bytes, not {type(value).__name__}")
        return value

    def setsockopt(self, level: int, option: int, value: Any) -> None:
        conn = self._conn
        if level == socket.SOL_SOCKET and option == socket.SO_LINGER:
            if isinstance(value, (bytes, bytearray)) and len(value) == 8:
                onoff, linger = struct.unpack("ii", value)
            elif isinstance(value, tuple) and len(value) == 2:
                onoff, linger = value
            else:
                raise OSError(22, "Invalid argument: SO_LINGER takes struct.pack('ii', onoff, "
                                  "seconds) or (onoff, seconds)")
            conn.linger = max(0, linger) if onoff else None
        elif level == socket.SOL_SOCKET and option == socket.SO_REUSEADDR:
            conn.reuseaddr = bool(self._int(value))
            if conn.binding is not None:
                conn.binding.reuseaddr = conn.reuseaddr   # sk_reuse, kept by TIME-WAIT too
        elif level == socket.SOL_SOCKET and option == socket.SO_SNDBUF:
            v = min(self._int(value) & 0xFFFFFFFF, conn.host.sysctl["net.core.wmem_max"])
            conn.sndbuf = max(4608, 2 * v)  # Linux doubles, with a floor
            conn.sndbuf_locked = True
        elif level == socket.SOL_SOCKET and option == socket.SO_RCVBUF:
            v = min(self._int(value) & 0xFFFFFFFF, conn.host.sysctl["net.core.rmem_max"])
            conn.rcvbuf = max(2304, 2 * v)
            conn.rcvbuf_locked = True
        elif level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            conn.nodelay = bool(self._int(value))
            if conn.nodelay:
                conn._output()
        elif level == socket.IPPROTO_TCP and option == TCP_LINGER2:
            v = self._int(value)
            conn.linger2 = v if v < 0 else (None if v == 0 else v)
        elif level == socket.IPPROTO_TCP and option == TCP_USER_TIMEOUT:
            v = self._int(value)
            if v < 0:
                raise OSError(22, "Invalid argument: TCP_USER_TIMEOUT must be >= 0 ms")
            conn.user_timeout = v
        elif level == socket.IPPROTO_TCP and option == TCP_CONGESTION:
            name = value.decode() if isinstance(value, (bytes, bytearray)) else str(value)
            try:
                conn.congestion_control = name.rstrip("\0")
            except ValueError as e:
                raise OSError(2, f"No such file or directory: {e}") from None
        else:
            raise OSError(92, f"Protocol not available: ustack does not implement option "
                              f"({level}, {option})")

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        conn = self._conn
        if level == socket.SOL_SOCKET and option == socket.SO_LINGER:
            onoff, linger = (0, 0) if conn.linger is None else (1, conn.linger)
            return struct.pack("ii", onoff, linger) if buflen else onoff
        if level == socket.SOL_SOCKET and option == socket.SO_REUSEADDR:
            value = int(conn.reuseaddr)
        elif level == socket.SOL_SOCKET and option == socket.SO_SNDBUF:
            value = conn.sndbuf
        elif level == socket.SOL_SOCKET and option == socket.SO_RCVBUF:
            value = conn.rcvbuf
        elif level == socket.SOL_SOCKET and option == socket.SO_ERROR:
            value = getattr(conn.error, "errno", 0) or 0
        elif level == socket.IPPROTO_TCP and option == socket.TCP_NODELAY:
            value = int(conn.nodelay)
        elif level == socket.IPPROTO_TCP and option == TCP_LINGER2:
            value = conn.linger2 if conn.linger2 is not None else \
                conn.host.sysctl["net.ipv4.tcp_fin_timeout"]
        elif level == socket.IPPROTO_TCP and option == socket.TCP_MAXSEG:
            value = conn._effective_mss()
        elif level == socket.IPPROTO_TCP and option == TCP_USER_TIMEOUT:
            value = conn.user_timeout
        elif level == socket.IPPROTO_TCP and option == TCP_CONGESTION:
            name = conn.congestion_control.encode()
            return name.ljust(buflen, b"\0")[:buflen] if buflen else name
        else:
            raise OSError(92, f"Protocol not available: ustack does not implement option "
                              f"({level}, {option})")
        return struct.pack("i", value) if buflen else value

    def getsockname(self) -> tuple[str, int]:
        return (int_to_ip(self._conn.laddr), self._conn.lport)

    def getpeername(self) -> tuple[str, int]:
        return (int_to_ip(self._conn.raddr), self._conn.rport)


class TcpTransport(asyncio.Transport, ConnectionUser):
    """An asyncio transport whose other end is a ustack TCP connection."""

    def __init__(self, stack: "Stack", conn: Connection, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future | None = None) -> None:
        super().__init__()
        self._stack = stack
        self._conn = conn
        self._protocol = protocol
        self._waiter = waiter
        self._closing = False
        self._lost = False
        self._paused_reading = False
        self._paused_writing = False
        self._eof_delivered = False
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._extra = {
            "peername": (int_to_ip(conn.raddr), conn.rport),
            "sockname": (int_to_ip(conn.laddr), conn.lport),
            "socket": SocketOptions(conn),
        }
        conn.user = self
        self._update_write_mark()

    # ---------------------------------------------------------------- from the core
    def tcp_established(self, conn: Connection) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def tcp_data(self, conn: Connection) -> None:
        if self._paused_reading or self._lost:
            return
        self._deliver_data()

    def _deliver_data(self) -> None:
        conn = self._conn
        if conn.rcv_queued:
            data = conn.recv()
            try:
                self._protocol.data_received(data)  # type: ignore[attr-defined]
            except BaseException as exc:  # a protocol's bug must not break the stack
                self._fatal(exc, "data_received")
                return
        if conn.rcv_fin and not conn.rcv_queued and not self._eof_delivered and not self._lost:
            self._eof_delivered = True
            try:
                keep_open = self._protocol.eof_received()  # type: ignore[attr-defined]
            except BaseException as exc:
                self._fatal(exc, "eof_received")
                return
            if not keep_open:
                self.close()

    def tcp_writable(self, conn: Connection) -> None:
        if self._paused_writing and self.get_write_buffer_size() <= self._low:
            self._paused_writing = False
            try:
                self._protocol.resume_writing()
            except BaseException as exc:
                self._fatal(exc, "resume_writing")

    def tcp_closed(self, conn: Connection, exc: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_exception(exc or ConnectionResetError(104, "Connection reset by peer"))
            return
        self._connection_lost(exc)

    # ---------------------------------------------------------------- transport API
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def is_reading(self) -> bool:
        return not self._paused_reading and not self._closing

    def pause_reading(self) -> None:
        self._paused_reading = True

    def resume_reading(self) -> None:
        if not self._paused_reading:
            return
        self._paused_reading = False
        if not self._lost:
            self._stack._loop.call_soon(self._resume_delivery)

    def _resume_delivery(self) -> None:
        if self._paused_reading or self._lost:
            return
        self._stack._sync_time()
        self._deliver_data()
        self._stack._kick()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = 64 * 1024 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._update_write_mark()
        self._maybe_pause()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def get_write_buffer_size(self) -> int:
        conn = self._conn
        return max(0, conn.snd_queued - conn.sndbuf)

    def _update_write_mark(self) -> None:
        self._conn.write_mark = self._conn.sndbuf + self._low

    def _maybe_pause(self) -> None:
        if not self._paused_writing and self.get_write_buffer_size() > self._high:
            self._paused_writing = True
            try:
                self._protocol.pause_writing()
            except BaseException as exc:
                self._fatal(exc, "pause_writing")

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data argument must be a bytes-like object, "
                            f"not {type(data).__name__!r}")
        if self._closing or self._conn.fin_queued:
            raise RuntimeError("cannot write to a transport that is closing or after write_eof()")
        if self._lost or self._conn.state == S.CLOSED:
            return  # like asyncio: writes after the connection died are dropped
        if not data:
            return
        self._stack._sync_time()
        self._conn.send(data)
        self._stack._kick()
        self._maybe_pause()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        """shutdown(SHUT_WR): FIN after what is queued; reading goes on."""
        if self._closing or self._lost:
            return
        self._stack._sync_time()
        self._conn.shutdown_write()
        self._stack._kick()

    def close(self) -> None:
        """close(): Linux tcp_close semantics (FIN after queued data, RST if data is unread).

        The connection may live on in the stack as an orphan; the protocol sees
        connection_lost(None) once the socket is released (for SO_LINGER {on, N}: when the FIN
        is acknowledged or N seconds have passed)."""
        if self._closing:
            return
        self._closing = True
        stack = self._stack
        stack._sync_time()
        conn = self._conn
        linger = conn.linger
        conn.close()
        stack._kick()
        if linger and conn.state not in (S.CLOSED, S.FIN_WAIT_2, S.TIME_WAIT) \
                and conn.fin_queued:
            stack._loop.create_task(self._linger_wait(linger))
        else:
            stack._loop.call_soon(self._connection_lost, None)

    async def _linger_wait(self, seconds: int) -> None:
        """Linux sk_stream_wait_close: sleep until the state leaves FIN-WAIT-1, CLOSING and
        LAST-ACK (woken by Host.state_changed) or the linger time ends; the orphan goes on."""
        conn, host = self._conn, self._stack.host
        fut = self._stack._loop.create_future()
        host.close_waiters[conn] = lambda: fut.done() or fut.set_result(None)
        try:
            await asyncio.wait_for(fut, seconds)
        except asyncio.TimeoutError:
            pass
        finally:
            host.close_waiters.pop(conn, None)
        self._connection_lost(None)

    def abort(self) -> None:
        if self._lost:
            return
        self._closing = True
        self._stack._sync_time()
        self._conn.abort()
        self._stack._kick()
        self._stack._loop.call_soon(self._connection_lost, None)

    # ---------------------------------------------------------------- internals
    def _fatal(self, exc: BaseException, where: str) -> None:
        self._stack._loop.call_exception_handler({
            "message": f"ustack: protocol {where}() raised", "exception": exc,
            "transport": self, "protocol": self._protocol})
        self.abort()

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        try:
            self._protocol.connection_lost(exc)
        except BaseException as err:   # reported, never raised into the stack's input path
            self._stack._loop.call_exception_handler({
                "message": "ustack: protocol connection_lost() raised", "exception": err,
                "transport": self, "protocol": self._protocol})
        finally:
            self._stack._transports.discard(self)

    def __repr__(self) -> str:
        return f"<TcpTransport {self._conn!r}>"
