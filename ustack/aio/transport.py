"""asyncio.Transport over a core Connection, and the socket object behind it.

The transport is glue: bytes go to the connection through the socket layer
(`ustack.tcp.sock.Socket`), the connection's callbacks become protocol calls.  Backpressure:
the core's send queue plays the kernel's socket buffer (SO_SNDBUF); what is written beyond it
counts as the transport's write buffer, so `pause_writing()` fires above the high-water mark
and `drain()` waits like on any asyncio transport.  Protocols may be plain (`data_received`) or
buffered (`asyncio.BufferedProtocol`: `get_buffer`/`buffer_updated`), and may be swapped with
`set_protocol` (as TLS upgrades do).
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import TYPE_CHECKING, Any

from ustack.tcp import sock as _sock
from ustack.tcp import states as S
from ustack.tcp.connection import Connection, ConnectionUser

if TYPE_CHECKING:  # pragma: no cover
    from ustack.aio.stack import Stack


class StackSocket:
    """What `transport.get_extra_info("socket")` and `server.sockets` give: a socket-like view
    of a ustack socket (not a kernel socket: `fileno()` is -1).

    `setsockopt`/`getsockopt` take the `socket` module's constants and values (ints, bools,
    packed bytes) and apply Linux's rules through ustack's socket layer; `getsockopt` with a
    `buflen` returns bytes as `socket.socket.getsockopt` does."""

    def __init__(self, sock: _sock.Socket, clock: Any = None) -> None:
        self._sock = sock
        self._clock = clock        # the stack's clock (ms): time comes in with each call

    @property
    def family(self) -> socket.AddressFamily:
        return socket.AF_INET

    @property
    def type(self) -> socket.SocketKind:
        return socket.SOCK_STREAM

    @property
    def proto(self) -> int:
        return socket.IPPROTO_TCP

    def fileno(self) -> int:
        return -1

    def setsockopt(self, level: int, option: int, value: Any, optlen: int | None = None) -> None:
        if value is None and optlen is not None:
            raise OSError(22, "Invalid argument: ustack sockets take no NULL option values")
        self._sock.setsockopt(level, option, value, optlen,
                              now=self._clock() if self._clock is not None else None)

    def getsockopt(self, level: int, option: int, buflen: int = 0) -> Any:
        value = self._sock.getsockopt(level, option)
        if isinstance(value, tuple):                  # SO_LINGER
            packed = struct.pack("ii", *value)
            return packed[:buflen] if buflen else value[0]
        if isinstance(value, bytes):                  # TCP_CONGESTION
            return value.ljust(buflen, b"\0")[:buflen] if buflen else value
        return struct.pack("i", value)[:buflen] if buflen else value

    def getsockname(self) -> tuple[str, int]:
        return self._sock.getsockname()

    def getpeername(self) -> tuple[str, int]:
        return self._sock.getpeername()

    def gettimeout(self) -> float:
        return 0.0

    def settimeout(self, value: float | None) -> None:
        if value != 0:
            raise ValueError("settimeout(): only 0 (non-blocking) is supported on a ustack "
                             "socket owned by asyncio")

    def setblocking(self, flag: bool) -> None:
        if flag:
            raise ValueError("setblocking(True) is not supported on a ustack socket owned by "
                             "asyncio")

    def __repr__(self) -> str:
        try:
            local = "%s:%d" % self.getsockname()
        except OSError:
            local = "?"
        return f"<ustack StackSocket tcp {local}>"


# The name earlier releases used for the same object.
SocketOptions = StackSocket


class TcpTransport(asyncio.transports._FlowControlMixin, ConnectionUser):
    """An asyncio transport whose other end is a ustack TCP connection."""

    _start_tls_compatible = True     # asyncio's loop.start_tls may wrap it
    # asyncio's loop.sendfile: read the file and write() it (aiohttp's FileResponse uses it;
    # the fallback wants asyncio's flow-control base class and its _protocol_paused flag)
    _sendfile_compatible = asyncio.constants._SendfileMode.FALLBACK

    def __init__(self, stack: "Stack", sock: _sock.Socket, protocol: asyncio.BaseProtocol,
                 waiter: asyncio.Future | None = None) -> None:
        super().__init__(loop=stack._loop)
        conn = sock.conn
        self._stack = stack
        self._sock = sock
        self._conn = conn
        self._protocol = protocol
        self._waiter = waiter
        self._closing = False
        self._lost = False
        self._paused_reading = False
        self._protocol_paused = False
        self._eof_delivered = False
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._extra = {
            "peername": sock.getpeername(),
            "sockname": sock.getsockname(),
            "socket": StackSocket(sock, stack._now),
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
            protocol = self._protocol
            try:
                if isinstance(protocol, asyncio.BufferedProtocol):
                    # get_buffer/buffer_updated until the queue is empty (or reading pauses)
                    while conn.rcv_queued and not self._paused_reading and not self._lost:
                        buf = memoryview(protocol.get_buffer(conn.rcv_queued)).cast("B")
                        if not len(buf):
                            raise RuntimeError("get_buffer() returned an empty buffer")
                        data = conn.recv(len(buf))
                        buf[:len(data)] = data
                        protocol.buffer_updated(len(data))
                        if protocol is not self._protocol:
                            break           # switched (start_tls): the rest goes next time
                else:
                    protocol.data_received(conn.recv())  # type: ignore[attr-defined]
            except BaseException as exc:  # a protocol's bug must not break the stack
                self._fatal(exc, "data_received")
                return
            if conn.rcv_queued:
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
        if self._protocol_paused and self.get_write_buffer_size() <= self._low:
            self._protocol_paused = False
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
        if not self._protocol_paused and self.get_write_buffer_size() > self._high:
            self._protocol_paused = True
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
        self._sock.write(data, now=self._stack._now())
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
        try:
            self._sock.shutdown(_sock.SHUT_WR, now=self._stack._now())
        except OSError:
            pass                     # not connected any more: nothing to shut down
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
        try:
            self._sock.close(now=stack._now())
        except _sock.WouldBlock as wait:   # SO_LINGER {1, N}: released when the FIN is ACKed
            stack._kick()
            stack._loop.create_task(self._linger_wait(wait.timeout_s or 0))
            return
        stack._kick()
        stack._loop.call_soon(self._connection_lost, None)

    async def _linger_wait(self, seconds: float) -> None:
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
        self._force_close(None)

    def _force_close(self, exc: BaseException | None) -> None:
        """Reset and report `exc` to the protocol (abort(); asyncio's SSL protocol calls this
        on a fatal TLS error, as on asyncio's own transports)."""
        if self._lost:
            return
        self._closing = True
        self._sock.abort(now=self._stack._now())
        self._stack._kick()
        self._stack._loop.call_soon(self._connection_lost, exc)

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
