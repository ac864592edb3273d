"""The asyncio face of ustack: `Stack` owns a Host (the I/O-free core) and a link.

Glue only, in the manner of aioquic's asyncio layer: packets from the link go to
`host.receive` in a batch, what the host wants to send goes to the link once per loop iteration
(`call_soon`), and one `loop.call_at` is armed for the host's next timer deadline.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl as _ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from ustack.aio.transport import StackSocket, TcpTransport
from ustack.counters import Counters
from ustack.host import ConnInfo, Host, Listener, ListenerUser
from ustack.sysctl import Sysctl
from ustack.tcp import sock as _sock
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


ProtocolFactory = Callable[[], asyncio.BaseProtocol]


def _ssl_context(ssl: Any, server_side: bool) -> _ssl.SSLContext | None:
    """asyncio's `ssl=` argument: an SSLContext, True (a default client context) or None."""
    if ssl is None or ssl is False:
        return None
    if isinstance(ssl, _ssl.SSLContext):
        return ssl
    if ssl is True and not server_side:
        return _ssl.create_default_context()
    if ssl is True:
        raise ValueError("ssl=True needs a client: a server takes an ssl.SSLContext with its "
                         "certificate loaded")
    raise TypeError(f"ssl must be an ssl.SSLContext, True or None, not {type(ssl).__name__}")


class Server(ListenerUser):
    """Like asyncio.Server: returned by start_server/create_server, usable with `async with`."""

    def __init__(self, stack: "Stack", sock: _sock.Socket, protocol_factory: ProtocolFactory,
                 ssl: _ssl.SSLContext | None = None,
                 ssl_handshake_timeout: float | None = None,
                 ssl_shutdown_timeout: float | None = None) -> None:
        self._stack = stack
        self._sock = sock
        self._factory = protocol_factory
        self._ssl = ssl
        self._ssl_timeouts = {"ssl_handshake_timeout": ssl_handshake_timeout,
                              "ssl_shutdown_timeout": ssl_shutdown_timeout}
        self._serving = sock.listener is not None      # start_serving=False: bound only
        self._closed = stack._loop.create_future()
        self._backlog = 0
        if self._serving:
            sock.listener.user = self

    def tcp_accept(self, listener: Listener) -> None:
        loop = self._stack._loop
        while True:
            conn = listener.accept()
            if conn is None:
                return
            child = self._sock.adopt(conn)
            try:
                protocol = self._factory()
                if self._ssl is not None:
                    protocol = sslproto.SSLProtocol(
                        loop, protocol, self._ssl, None, server_side=True,
                        **{k: v for k, v in self._ssl_timeouts.items() if v is not None})
            except BaseException as exc:
                loop.call_exception_handler(
                    {"message": "ustack: protocol factory raised", "exception": exc})
                child.abort()
                continue
            transport = TcpTransport(self._stack, child, protocol)
            self._stack._transports.add(transport)
            try:
                protocol.connection_made(transport)
            except BaseException as exc:   # a protocol's bug resets its connection only
                transport._fatal(exc, "connection_made")
                continue
            if conn.rcv_queued or conn.rcv_fin:
                transport.tcp_data(conn)

    @property
    def sockets(self) -> tuple[StackSocket, ...]:
        """The listening socket, as asyncio.Server.sockets (getsockname, options)."""
        if self._closed.done():
            return ()
        return (StackSocket(self._sock, self._stack._now),)

    @property
    def port(self) -> int:
        return self._sock.port or 0

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._stack._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        """Listen now (after create_server(..., start_serving=False)): until then the port
        is bound and SYNs to it are answered with RST, as with asyncio."""
        if self._serving or self._closed.done():
            return
        self._sock.listen(self._backlog, now=self._stack._now())
        self._sock.listener.user = self
        self._serving = True

    def close(self) -> None:
        if self._closed.done():
            return
        self._serving = False
        self._sock.close(now=self._stack._now())
        self._stack._servers.discard(self)
        self._stack._kick()
        if not self._closed.done():
            self._closed.set_result(None)

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await asyncio.shield(self._closed)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()
        await self.wait_closed()


def _check_family(family: int) -> None:
    if family not in (socket.AF_UNSPEC, socket.AF_INET):
        raise OSError(97, f"Address family not supported by protocol: ustack speaks IPv4 "
                          f"(AF_INET) only, not {socket.AddressFamily(family).name}")


def _ssl_timeouts(handshake: float | None, shutdown: float | None) -> dict[str, float]:
    out = {}
    if handshake is not None:
        out["ssl_handshake_timeout"] = handshake
    if shutdown is not None:
        out["ssl_shutdown_timeout"] = shutdown
    return out


def _check_ssl_args(ctx: Any, handshake: float | None, shutdown: float | None) -> None:
    if ctx is None and (handshake is not None or shutdown is not None):
        raise ValueError("ssl_handshake_timeout and ssl_shutdown_timeout are only meaningful "
                         "with ssl")
    for name, v in (("ssl_handshake_timeout", handshake), ("ssl_shutdown_timeout", shutdown)):
        if v is not None and v <= 0:
            raise ValueError(f"{name} must be a positive number, not {v}")


class Stack:
    """A running ustack instance: one IPv4 address on one link.

    Create it with `Stack.tun(...)` (a real TUN device in the caller's network namespace) or
    `Stack.memory_pair(...)` (two stacks joined in memory), and enter it with `async with`."""

    def __init__(self, link_factory: Callable[[], Any], address: str, *,
                 sysctl: dict[str, Any] | None = None, mtu: int = 1500,
                 secret: bytes | None = None, pcap: Any = None) -> None:
        _check_ipv4(address, "address")
        self.pcap = None
        if pcap is not None:
            # every packet of the link, both ways, into a pcap file (tcpdump -r, Wireshark)
            from ustack.pcap import PcapWriter, tap_factory
            self.pcap = pcap if isinstance(pcap, PcapWriter) else PcapWriter(pcap)
            link_factory = tap_factory(link_factory, self.pcap)
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
            allow_root_namespace: bool = False, pcap: Any = None,
            offload: bool = False) -> "Stack":
        """A stack on a new TUN device in the current network namespace.  The kernel's side of
        the device gets `kernel_address`; ustack answers for `address`.  `pcap`: a file name
        (or a `ustack.pcap.PcapWriter`) that records every packet of the device.  `offload`:
        TUN checksum and TSO offloads (virtio-net headers): the kernel hands over up to 64 KB
        super-segments, which ustack takes whole as Linux takes GRO packets."""
        from ustack.link.tun import TunLink
        _check_tun_addresses(address, kernel_address)

        def factory() -> Any:
            return TunLink.open(ifname, kernel_address=kernel_address, mtu=mtu,
                                allow_root_namespace=allow_root_namespace, offload=offload)
        return cls(factory, address, sysctl=sysctl, mtu=mtu, secret=secret, pcap=pcap)

    @classmethod
    def memory(cls, link: Any, address: str = "198.18.0.2",
               sysctl: dict[str, Any] | None = None, *, mtu: int = 1500,
               secret: bytes | None = None, pcap: Any = None) -> "Stack":
        """A stack on an in-memory link end (`ustack.link.memory.MemoryWire().a`)."""
        return cls(lambda: link, address, sysctl=sysctl, mtu=mtu, secret=secret, pcap=pcap)

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
        host.tso = bool(getattr(self._link, "vnet_hdr", False))   # the device cuts bursts
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

    def _on_packets(self, packets: list[bytes], meta: list[Any] | None = None) -> None:
        # one batch: timers due first, every packet, then the notifications once
        self.host.receive_many(packets, self._now(), meta)
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
    async def create_server(self, protocol_factory: ProtocolFactory,
                            host: str | list[str] | None = None, port: int = 0, *,
                            family: int = socket.AF_UNSPEC, flags: int = 0,
                            backlog: int = 100, ssl: Any = None,
                            reuse_address: bool | None = None, reuse_port: bool = False,
                            ssl_handshake_timeout: float | None = None,
                            ssl_shutdown_timeout: float | None = None,
                            start_serving: bool = True) -> Server:
        """loop.create_server on ustack: listen on this stack's address.  `host` may be None,
        "", "0.0.0.0", this stack's address or a name resolving to it; `ssl` an SSLContext
        (TLS through asyncio's own SSL protocol)."""
        self._require_running()
        _check_family(family)
        sslcontext = _ssl_context(ssl, server_side=True)
        _check_ssl_args(sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)
        hosts = host if isinstance(host, (list, tuple)) else [host]
        for h in hosts:
            if h in (None, "", "0.0.0.0"):
                continue
            addr = await self._resolve(h, port, "host")
            if addr != self.host.address:
                raise OSError(99, f"Cannot assign requested address: {h} is not this stack's "
                                  f"address {int_to_ip(self.host.address)}")
        _check_port(port)
        if reuse_address is None:
            reuse_address = True    # as asyncio's create_server on Unix
        sock = _sock.Socket(self.host)
        now = self._now()
        sock.setsockopt(_sock.SOL_SOCKET, _sock.SO_REUSEADDR, bool(reuse_address), now=now)
        sock.setsockopt(_sock.SOL_SOCKET, _sock.SO_REUSEPORT, bool(reuse_port), now=now)
        try:
            sock.bind(port, now=now)
            if start_serving:
                sock.listen(backlog, now=now)
        except BaseException:
            sock.abort(now=now)
            raise
        server = Server(self, sock, protocol_factory, sslcontext, ssl_handshake_timeout,
                        ssl_shutdown_timeout)
        server._backlog = backlog
        self._servers.add(server)
        return server

    async def start_server(self, client_connected_cb: Callable[..., Any],
                           host: str | list[str] | None = None, port: int = 0, *,
                           limit: int = _DEFAULT_LIMIT, **kwds: Any) -> Server:
        """asyncio.start_server on ustack (same arguments, ssl= included)."""
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            reader = asyncio.StreamReader(limit=limit, loop=loop)
            return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)
        return await self.create_server(factory, host, port, **kwds)

    async def _resolve(self, host: str, port: int, what: str) -> int:
        """An IPv4 address, or a name resolved as asyncio does (getaddrinfo, AF_INET)."""
        try:
            return ip_to_int(str(ipaddress.IPv4Address(host)))
        except ValueError:
            pass
        if not isinstance(host, str):
            raise TypeError(f"{what} must be a str, not {type(host).__name__}")
        try:
            infos = await self._loop.getaddrinfo(host, port, family=socket.AF_INET,
                                                 type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise OSError(e.errno, f"cannot resolve {what} {host!r}: {e.strerror} (ustack "
                                   f"speaks IPv4)") from None
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned no IPv4 address")
        return ip_to_int(infos[0][4][0])

    async def create_connection(self, protocol_factory: ProtocolFactory,
                                host: str, port: int, *, ssl: Any = None,
                                family: int = socket.AF_UNSPEC, proto: int = 0,
                                flags: int = 0,
                                local_addr: tuple[str | None, int] | None = None,
                                server_hostname: str | None = None,
                                ssl_handshake_timeout: float | None = None,
                                ssl_shutdown_timeout: float | None = None,
                                timeout: float | None = None,
                                options: dict[str, Any] | None = None
                                ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """loop.create_connection on ustack.  `ssl` (an SSLContext or True) runs TLS through
        asyncio's own SSL protocol; `server_hostname` defaults to `host`.  ustack's extras:
        `timeout` (seconds for the handshake) and `options` (connection fields to set before
        the SYN, e.g. {"rcvbuf": 8192})."""
        self._require_running()
        _check_family(family)
        sslcontext = _ssl_context(ssl, server_side=False)
        _check_ssl_args(sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)
        if server_hostname is not None and sslcontext is None:
            raise ValueError("server_hostname is only meaningful with ssl")
        _check_port(port, zero_ok=False)
        raddr = await self._resolve(host, port, "host")
        lport = 0
        if local_addr is not None:
            laddr, lport = local_addr
            if laddr not in (None, "", "0.0.0.0") and \
                    await self._resolve(laddr, lport, "local_addr") != self.host.address:
                raise OSError(99, f"Cannot assign requested address: {laddr} is not this "
                                  f"stack's address {int_to_ip(self.host.address)}")
            _check_port(lport, "local_addr port")
        now = self._now()
        sock = _sock.Socket(self.host, nonblock=True)
        if options:
            options = dict(options)
            if "reuseaddr" in options:
                sock.setsockopt(_sock.SOL_SOCKET, _sock.SO_REUSEADDR,
                                bool(options.pop("reuseaddr")), now=now)
            sock.extra_options = options       # connection fields set before the SYN
        try:
            if lport:
                sock.bind(lport, now=now)
            sock.connect(raddr, port, now=now)
        except BlockingIOError:
            pass                                   # EINPROGRESS: the SYN is out
        except BaseException:
            sock.abort(now=now)                    # a failed bind/connect lets the port go
            raise
        sock.nonblock = False                      # close() waits for SO_LINGER as Linux
        waiter = self._loop.create_future()
        app_protocol = protocol_factory()
        protocol: asyncio.BaseProtocol = app_protocol
        ssl_waiter = None
        if sslcontext is not None:
            ssl_waiter = self._loop.create_future()
            protocol = sslproto.SSLProtocol(
                self._loop, app_protocol, sslcontext, ssl_waiter, server_side=False,
                server_hostname=host if server_hostname is None else server_hostname,
                **_ssl_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout))
        transport = TcpTransport(self, sock, protocol, waiter)
        self._kick()
        try:
            if timeout is None:
                await waiter
            else:
                await asyncio.wait_for(waiter, timeout)
        except BaseException:
            if sock.conn is not None and sock.conn.state != S.CLOSED:
                sock.abort(now=self._now())
                self._kick()
            raise
        sock.connecting, sock.connected = False, True
        self._transports.add(transport)
        try:
            protocol.connection_made(transport)
        except BaseException:
            transport.abort()        # the caller gets the error; the connection is reset
            raise
        conn = sock.conn
        if conn.rcv_queued or conn.rcv_fin:
            transport.tcp_data(conn)
        if ssl_waiter is None:
            return transport, app_protocol
        try:
            await ssl_waiter                         # the TLS handshake
        except BaseException:
            transport.abort()
            raise
        return protocol._app_transport, app_protocol  # type: ignore[attr-defined]

    async def open_connection(self, host: str, port: int, *,
                              limit: int = _DEFAULT_LIMIT, **kwds: Any
                              ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """asyncio.open_connection on ustack (same arguments, ssl= included)."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await self.create_connection(lambda: protocol, host, port, **kwds)
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        return reader, writer

    async def start_tls(self, transport: asyncio.BaseTransport,
                        protocol: asyncio.BaseProtocol, sslcontext: _ssl.SSLContext, *,
                        server_side: bool = False, server_hostname: str | None = None,
                        ssl_handshake_timeout: float | None = None,
                        ssl_shutdown_timeout: float | None = None) -> asyncio.Transport:
        """loop.start_tls for a ustack transport: upgrade it to TLS in place and return the
        TLS transport (uvloop's own start_tls accepts only its own transports; on asyncio's
        default loop, loop.start_tls and StreamWriter.start_tls work too).  For a stream pair
        use `upgrade_streams`."""
        if not isinstance(sslcontext, _ssl.SSLContext):
            raise TypeError(f"sslcontext must be an ssl.SSLContext, not "
                            f"{type(sslcontext).__name__}")
        if not isinstance(transport, TcpTransport):
            raise TypeError(f"start_tls: {transport!r} is not a ustack transport")
        _check_ssl_args(sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)
        loop = self._loop
        waiter = loop.create_future()
        ssl_protocol = sslproto.SSLProtocol(
            loop, protocol, sslcontext, waiter, server_side, server_hostname,
            call_connection_made=False,
            **_ssl_timeouts(ssl_handshake_timeout, ssl_shutdown_timeout))
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        made = loop.call_soon(ssl_protocol.connection_made, transport)
        resumed = loop.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            made.cancel()
            resumed.cancel()
            raise
        return ssl_protocol._app_transport  # type: ignore[attr-defined]

    async def upgrade_streams(self, writer: asyncio.StreamWriter, sslcontext: _ssl.SSLContext,
                              *, server_side: bool = False, server_hostname: str | None = None,
                              ssl_handshake_timeout: float | None = None) -> None:
        """StreamWriter.start_tls for a ustack stream pair: the same reader and writer go on
        over TLS (STARTTLS-style protocols)."""
        await writer.drain()
        protocol = writer.transport.get_protocol()
        new = await self.start_tls(writer.transport, protocol, sslcontext,
                                   server_side=server_side, server_hostname=server_hostname,
                                   ssl_handshake_timeout=ssl_handshake_timeout)
        writer._transport = new               # what StreamWriter.start_tls does itself
        protocol._replace_writer(writer)      # type: ignore[attr-defined]

    # ---------------------------------------------------------------- visibility
    def connections(self) -> list[ConnInfo]:
        """Every socket, listener and TIME-WAIT record, like `ss -tanoe`."""
        if self._running:
            self._sync_time()
        return self.host.connections()

    def event_log(self, local_port: int, remote: tuple[str, int]) -> list[Any]:
        """The event log of the newest connection between `local_port` and `remote` (set
        `ustack.event_log` to the number of events to keep per connection first):
        LogEvent(ms, kind, detail) entries for state changes, timers, retransmissions and
        segments in and out; `ustack.ladder.segments_from_log` turns it into a ladder."""
        return self.host.event_log(local_port, remote[0], remote[1])

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

