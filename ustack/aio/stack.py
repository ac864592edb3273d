"""The asyncio face of ustack: `Stack` owns a Host (the I/O-free core) and a link.

Glue only, in the manner of aioquic's asyncio layer: packets from the link go to
`host.receive` in a batch, what the host wants to send goes to the link once per loop iteration
(`call_soon`), and one `loop.call_at` is armed for the host's next timer deadline.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from typing import Any

from ustack.aio.transport import TcpTransport
from ustack.counters import Counters
from ustack.host import ConnInfo, Host, Listener, ListenerUser
from ustack.sysctl import Sysctl
from ustack.tcp import states as S
from ustack.wire import int_to_ip, ip_to_int

_DEFAULT_LIMIT = 2 ** 16


def _check_ipv4(host: str, what: str) -> int:
    try:
        return ip_to_int(str(ipaddress.IPv4Address(host)))
    except ValueError:
        raise ValueError(f"{what} must be an IPv4 address such as '198.18.0.1' "
                         f"(ustack does no name resolution), not {host!r}") from None


def _check_port(port: Any, what: str = "port", *, zero_ok: bool = True) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{what} must be an int, not {type(port).__name__} {port!r}")
    if not (0 if zero_ok else 1) <= port <= 65535:
        raise ValueError(f"{what} must be {'0' if zero_ok else '1'}..65535, not {port}")
    return port


def _check_tun_addresses(address: str, kernel_address: str) -> None:
    """The kernel's side of the device takes `kernel_address` (with its prefix, as `ip addr`
    takes it); ustack answers for `address`, which must be another host of that network."""
    if not isinstance(kernel_address, str) or "/" not in kernel_address:
        raise ValueError(f"kernel_address must be an IPv4 address with its prefix length, such "
                         f"as '198.18.0.1/24', not {kernel_address!r}")
    try:
        iface = ipaddress.IPv4Interface(kernel_address)
    except ValueError:
        raise ValueError(f"kernel_address must be an IPv4 address with its prefix length, such "
                         f"as '198.18.0.1/24', not {kernel_address!r}") from None
    mine = ipaddress.IPv4Address(int_to_ip(_check_ipv4(address, "address")))
    net = iface.network
    if mine == iface.ip:
        raise ValueError(f"address and kernel_address are both {mine}: ustack needs an address "
                         f"of its own on the kernel's network {net}")
    if mine not in net:
        raise ValueError(f"address {mine} is outside the kernel's network {net}: the kernel "
                         f"would not route to it through the device")
    if net.prefixlen < 31 and mine in (net.network_address, net.broadcast_address):
        raise ValueError(f"address {mine} is the {'network' if mine == net.network_address else 'broadcast'} "
                         f"address of {net}")


class _ServerSocket:
    """Stands in for `server.sockets[i]`: getsockname() like a listening socket's."""

    def __init__(self, address: str, port: int) -> None:
        self._name = (address, port)

    def getsockname(self) -> tuple[str, int]:
        return self._name


class Server(ListenerUser):
    """Like asyncio.Server: returned by start_server/create_server, usable with `async with`."""

    def __init__(self, stack: "Stack", listener: Listener,
                 protocol_factory: Callable[[], asyncio.BaseProtocol]) -> None:
        self._stack = stack
        self._listener = listener
        self._factory = protocol_factory
        self._serving = True
        self._closed = stack._loop.create_future()
        listener.user = self

    def tcp_accept(self, listener: Listener) -> None:
        while True:
            conn = listener.accept()
            if conn is None:
                return
            try:
                protocol = self._factory()
            except BaseException as exc:
                self._stack._loop.call_exception_handler(
                    {"message": "ustack: protocol factory raised", "exception": exc})
                conn.abort()
                continue
            transport = TcpTransport(self._stack, conn, protocol)
            self._stack._transports.add(transport)
            try:
                protocol.connection_made(transport)
            except BaseException as exc:   # a protocol's bug resets its connection only
                transport._fatal(exc, "connection_made")
                continue
            if conn.rcv_queued or conn.rcv_fin:
                transport.tcp_data(conn)

    @property
    def sockets(self) -> tuple[_ServerSocket, ...]:
        if not self._serving:
            return ()
        return (_ServerSocket(int_to_ip(self._stack.host.address), self._listener.port),)

    @property
    def port(self) -> int:
        return self._listener.port

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        return None

    def close(self) -> None:
        if not self._serving:
            return
        self._serving = False
        self._stack._sync_time()
        self._listener.close()
        self._stack._servers.discard(self)
        self._stack._kick()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


class Stack:
    """A running ustack instance: one IPv4 address on one link.

    Create it with `Stack.tun(...)` (a real TUN device in the caller's network namespace) or
    `Stack.memory_pair(...)` (two stacks joined in memory), and enter it with `async with`."""

    def __init__(self, link_factory: Callable[[], Any], address: str, *,
                 sysctl: dict[str, Any] | None = None, mtu: int = 1500,
                 secret: bytes | None = None) -> None:
        _check_ipv4(address, "address")
        self._link_factory = link_factory
        self._link: Any = None
        self.host = Host(address, sysctl=sysctl, mtu=mtu, secret=secret)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._transports: set[TcpTransport] = set()
        self._servers: set[Server] = set()
        self._running = False
        self.host.on_output = self._kick

    # ---------------------------------------------------------------- constructors
    @classmethod
    def tun(cls, ifname: str = "ust0", address: str = "198.18.0.2",
            kernel_address: str = "198.18.0.1/24", sysctl: dict[str, Any] | None = None, *,
            mtu: int = 1500, secret: bytes | None = None,
            allow_root_namespace: bool = False) -> "Stack":
        """A stack on a new TUN device in the current network namespace.  The kernel's side of
        the device gets `kernel_address`; ustack answers for `address`."""
        from ustack.link.tun import TunLink
        _check_tun_addresses(address, kernel_address)

        def factory() -> Any:
            return TunLink.open(ifname, kernel_address=kernel_address, mtu=mtu,
                                allow_root_namespace=allow_root_namespace)
        return cls(factory, address, sysctl=sysctl, mtu=mtu, secret=secret)

    @classmethod
    def memory(cls, link: Any, address: str = "198.18.0.2",
               sysctl: dict[str, Any] | None = None, *, mtu: int = 1500,
               secret: bytes | None = None) -> "Stack":
        """A stack on an in-memory link end (`ustack.link.memory.MemoryWire().a`)."""
        return cls(lambda: link, address, sysctl=sysctl, mtu=mtu, secret=secret)

    @classmethod
    def memory_pair(cls, address_a: str = "198.18.0.1", address_b: str = "198.18.0.2",
                    sysctl: dict[str, Any] | None = None) -> tuple["Stack", "Stack", Any]:
        """Two stacks joined by a MemoryWire (returned third, for taps and loss)."""
        from ustack.link.memory import MemoryWire
        wire = MemoryWire()
        return (cls.memory(wire.a, address_a, sysctl), cls.memory(wire.b, address_b, sysctl),
                wire)

    # ---------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> "Stack":
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def start(self) -> None:
        if self._running:
            raise RuntimeError("this stack is already running")
        self._loop = asyncio.get_running_loop()
        self._link = self._link_factory()
        host = self.host
        host.now = self._now()
        host.wheel = type(host.wheel)(host.now)
        self._link.start(self._loop, self._on_packets)
        self._running = True

    async def aclose(self) -> None:
        """Stop: close servers, reset live connections, remove the link."""
        if not self._running:
            return
        self._sync_time()
        for server in list(self._servers):
            server.close()
        for transport in list(self._transports):
            transport.abort()
        for conn in list(self.host.conns.values()):
            if conn.state not in (S.CLOSED, S.LISTEN):
                conn.abort()
        self._flush()
        await asyncio.sleep(0)
        self._flush()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._running = False
        self._link.close()

    # ---------------------------------------------------------------- the per-packet path
    def _now(self) -> int:
        return int(self._loop.time() * 1000)

    def _sync_time(self) -> None:
        self.host.advance(self._now())

    def _on_packets(self, packets: list[bytes]) -> None:
        host = self.host
        host.advance(self._now())
        receive = host.receive
        for packet in packets:
            receive(packet)
        self._flush()

    def _kick(self) -> None:
        if not self._flush_scheduled and self._running:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        host = self.host
        if host.outbox:
            self._link.send_many(host.take_output())
        self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self.host.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return  # the armed one fires first; it re-arms for the rest
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline / 1000, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._running:
            return
        # Packets that arrived while the loop was busy come first: in the kernel an ACK is
        # processed when it arrives, so it can stop a retransmission or loss probe timer that
        # would otherwise fire in the same loop iteration.
        poll = getattr(self._link, "poll", None)
        if poll is not None:
            poll()
        self.host.advance(max(self._now(), self._timer_at))
        self._flush()

    # ---------------------------------------------------------------- the asyncio API
    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                            host: str | None = None, port: int = 0, *, backlog: int = 100,
                            reuse_address: bool | None = None, reuse_port: bool = False,
                            start_serving: bool = True) -> Server:
        self._require_running()
        if host not in (None, "", "0.0.0.0"):
            if _check_ipv4(host, "host") != self.host.address:
                raise OSError(99, f"Cannot assign requested address: {host} is not this "
                                  f"stack's address {int_to_ip(self.host.address)}")
        _check_port(port)
        self._sync_time()
        if reuse_address is None:
            reuse_address = True    # as asyncio's create_server on Unix
        listener = self.host.listen(port, backlog, reuseaddr=reuse_address, reuseport=reuse_port)
        server = Server(self, listener, protocol_factory)
        self._servers.add(server)
        return server

    async def start_server(self, client_connected_cb: Callable[..., Any],
                           host: str | None = None, port: int = 0, *,
                           limit: int = _DEFAULT_LIMIT, **kwds: Any) -> Server:
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)
        return await self.create_server(factory, host, port, **kwds)

    async def create_connection(self, protocol_factory: Callable[[], asyncio.BaseProtocol],
                                host: str, port: int, *,
                                local_addr: tuple[str | None, int] | None = None,
                                timeout: float | None = None,
                                options: dict[str, Any] | None = None
                                ) -> tuple[TcpTransport, asyncio.BaseProtocol]:
        self._require_running()
        raddr = _check_ipv4(host, "host")
        _check_port(port, zero_ok=False)
        lport = None
        if local_addr is not None:
            laddr, lport = local_addr
            if laddr not in (None, "", "0.0.0.0") and _check_ipv4(laddr, "local_addr") \
                    != self.host.address:
                raise OSError(99, f"Cannot assign requested address: {laddr} is not this "
                                  f"stack's address")
        self._sync_time()
        waiter = self._loop.create_future()
        conn = self.host.connect(raddr, port, lport, options=options)
        protocol = protocol_factory()
        transport = TcpTransport(self, conn, protocol, waiter)
        self._kick()
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except BaseException:
            if conn.state != S.CLOSED:
                self._sync_time()
                conn.abort()
                self._kick()
            raise
        self._transports.add(transport)
        try:
            protocol.connection_made(transport)
        except BaseException:
            transport.abort()        # the caller gets the error; the connection is reset
            raise
        if conn.rcv_queued or conn.rcv_fin:
            transport.tcp_data(conn)
        return transport, protocol

    async def open_connection(self, host: str, port: int, *,
                              local_addr: tuple[str | None, int] | None = None,
                              limit: int = _DEFAULT_LIMIT, **kwds: Any
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port,
                                                    local_addr=local_addr, **kwds)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    # ---------------------------------------------------------------- visibility
    def connections(self) -> list[ConnInfo]:
        """Every socket, listener and TIME-WAIT record, like `ss -tanoe`."""
        if self._running:
            self._sync_time()
        return self.host.connections()

    @property
    def counters(self) -> Counters:
        return self.host.counters

    @property
    def sysctl(self) -> Sysctl:
        return self.host.sysctl

    @property
    def address(self) -> str:
        return int_to_ip(self.host.address)

    @property
    def link(self) -> Any:
        return self._link

    def _require_running(self) -> None:
        if not self._running:
            raise RuntimeError("the stack is not running: use `async with stack:` "
                               "(or await stack.start()) first")


async def run_until(predicate: Callable[[], bool], timeout: float = 5.0,
                    interval: float = 0.005) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass (a test and demo helper)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() >= end:
            return False
        await asyncio.sleep(interval)
    return True

