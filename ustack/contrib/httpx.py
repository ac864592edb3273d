"""httpx (and httpcore) on ustack: HTTP client requests over a `Stack`.

Install with ``pip install 'ustack[httpx]'``.

With httpx -- `UstackTransport` is an `httpx.AsyncBaseTransport`; TLS settings go to the
transport (an `httpx.AsyncClient` given a ``transport=`` ignores its own ``verify=``)::

    import ssl, httpx
    from ustack import Stack
    from ustack.contrib.httpx import UstackTransport

    async with Stack.tun("ust0", "198.18.0.2", "198.18.0.1/24") as stack:
        ctx = ssl.create_default_context(cafile="server-ca.pem")
        async with httpx.AsyncClient(transport=UstackTransport(stack, verify=ctx)) as client:
            r = await client.get("https://198.18.0.1:8443/")

With httpcore alone -- `UstackBackend` is an `httpcore.AsyncNetworkBackend`, httpcore's
documented extension point for "how to open a connection"::

    import httpcore
    from ustack.contrib.httpx import UstackBackend

    async with httpcore.AsyncConnectionPool(network_backend=UstackBackend(stack)) as pool:
        r = await pool.request("GET", "http://198.18.0.1:8080/")

`UstackTransport` is a thin httpx transport around such a pool (``httpx.AsyncHTTPTransport``
takes no network backend): it converts httpx requests to httpcore requests and httpcore's
exceptions to httpx's.  Unix sockets (``uds=``) and proxies are not supported: ustack carries
TCP over IPv4; names are resolved with the event loop's getaddrinfo.
"""
from __future__ import annotations

import asyncio
import contextlib
import ssl
import typing
from typing import Any

import httpcore
import httpx

from ustack.aio import Stack

__all__ = ["UstackBackend", "UstackStream", "UstackTransport"]

_READ_LIMIT = 256 * 1024      # bytes buffered before the transport is paused


class _StreamProtocol(asyncio.Protocol):
    """Bytes in, with a waiter for the reader; write flow control for the writer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.lost = False
        self._reading_paused = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._writing_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_LIMIT and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return True               # httpcore closes the stream itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.eof = True
        self.error = exc
        self._wake_reader()
        self._wake_writers()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_writers()

    # -- for the stream
    def _wake_reader(self) -> None:
        waiter, self._read_waiter = self._read_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_writers(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def read(self, max_bytes: int) -> bytes:
        while not self.buffer and not self.eof:
            self._read_waiter = asyncio.get_running_loop().create_future()
            await self._read_waiter
        if not self.buffer:
            if self.error is not None:
                raise self.error
            return b""
        data = bytes(self.buffer[:max_bytes])
        del self.buffer[:max_bytes]
        if self._reading_paused and len(self.buffer) <= _READ_LIMIT // 2 and not self.lost:
            self._reading_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        return data

    async def drain(self) -> None:
        while self._writing_paused and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter
        if self.lost:
            raise self.error or ConnectionResetError("the connection is closed")


@contextlib.contextmanager
def _mapped(mapping: dict[type[BaseException], type[Exception]]) -> typing.Iterator[None]:
    try:
        yield
    except tuple(mapping) as exc:               # first matching entry, in order
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(exc) from exc
        raise                                     # pragma: no cover


class UstackStream(httpcore.AsyncNetworkStream):
    """An `httpcore.AsyncNetworkStream` over one ustack connection (plain or TLS)."""

    def __init__(self, stack: Stack, transport: asyncio.Transport,
                 protocol: _StreamProtocol) -> None:
        self._stack = stack
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _mapped({TimeoutError: httpcore.ReadTimeout, OSError: httpcore.ReadError}):
            async with asyncio.timeout(timeout):
                return await self._protocol.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        with _mapped({TimeoutError: httpcore.WriteTimeout, OSError: httpcore.WriteError,
                      RuntimeError: httpcore.WriteError}):
            if self._protocol.lost:
                raise self._protocol.error or ConnectionResetError("the connection is closed")
            self._transport.write(buffer)
            async with asyncio.timeout(timeout):
                await self._protocol.drain()

    async def aclose(self) -> None:
        self._transport.close()

    async def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        with _mapped({TimeoutError: httpcore.ConnectTimeout, OSError: httpcore.ConnectError}):
            try:
                async with asyncio.timeout(timeout):
                    tls = await self._stack.start_tls(self._transport, self._protocol,
                                                      ssl_context,
                                                      server_hostname=server_hostname)
            except BaseException:
                self._transport.abort()
                raise
        self._protocol.transport = tls
        return UstackStream(self._stack, tls, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":    # an idle keep-alive connection with data or EOF is stale
            p = self._protocol
            return bool(p.buffer) or p.eof or self._transport.is_closing()
        return None


class UstackBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on a ustack `Stack`: ``connect_tcp`` opens a ustack
    connection; ``socket_options`` are applied with the socket module's constants (see
    `ustack.aio.StackSocket`); ``local_address`` must be the stack's address."""

    def __init__(self, stack: Stack) -> None:
        if not isinstance(stack, Stack):
            raise TypeError(f"stack must be a ustack.Stack, not {type(stack).__name__}")
        self.stack = stack

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        protocol = _StreamProtocol()
        local = None if local_address is None else (local_address, 0)
        with _mapped({TimeoutError: httpcore.ConnectTimeout, OSError: httpcore.ConnectError,
                      ValueError: httpcore.ConnectError}):
            async with asyncio.timeout(timeout):
                transport, _ = await self.stack.create_connection(
                    lambda: protocol, host, port, local_addr=local)
            sock = transport.get_extra_info("socket")
            try:
                for option in socket_options or ():
                    sock.setsockopt(*option)
            except BaseException:
                transport.abort()
                raise
        return UstackStream(self.stack, transport, protocol)  # type: ignore[arg-type]

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("ustack carries TCP over IPv4: no Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# httpcore's exceptions and the httpx ones they become, most specific first.
_HTTPX_ERRORS: dict[type[BaseException], type[Exception]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.ProtocolError: httpx.ProtocolError,
}


@contextlib.contextmanager
def _httpx_errors(request: httpx.Request) -> typing.Iterator[None]:
    try:
        yield
    except tuple(_HTTPX_ERRORS) as exc:
        for source, target in _HTTPX_ERRORS.items():
            if isinstance(exc, source):
                raise target(str(exc), request=request) from exc  # type: ignore[call-arg]
        raise                                     # pragma: no cover


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: typing.AsyncIterable[bytes], request: httpx.Request) -> None:
        self._stream = stream
        self._request = request

    async def __aiter__(self) -> typing.AsyncIterator[bytes]:
        with _httpx_errors(self._request):
            async for chunk in self._stream:
                yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._stream, "aclose", None)
        if aclose is not None:
            with _httpx_errors(self._request):
                await aclose()


class UstackTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections are ustack connections, through
    ``httpcore.AsyncConnectionPool(network_backend=UstackBackend(stack))``.

    `verify` (an `ssl.SSLContext`, True, False or a CA bundle path), `cert` and `trust_env`
    build the TLS context as httpx does (`httpx.create_ssl_context`); `limits` is an
    `httpx.Limits`; other keyword arguments (``http1``, ``http2``, ``retries``,
    ``local_address``, ``socket_options``, ...) go to `httpcore.AsyncConnectionPool`."""

    def __init__(self, stack: Stack, *, verify: ssl.SSLContext | str | bool = True,
                 cert: Any = None, trust_env: bool = True,
                 limits: httpx.Limits = httpx.Limits(max_connections=100,
                                                     max_keepalive_connections=20,
                                                     keepalive_expiry=5.0),
                 **pool_kwargs: Any) -> None:
        for name in ("network_backend", "uds", "proxy"):
            if name in pool_kwargs:
                raise TypeError(f"UstackTransport does not take {name}=")
        if isinstance(verify, ssl.SSLContext):
            if cert is not None:
                raise TypeError("cert= with an SSLContext: load the client certificate into "
                                "the context (load_cert_chain)")
            ssl_context = verify
        else:
            ssl_context = httpx.create_ssl_context(verify=verify, cert=cert,
                                                   trust_env=trust_env)
        self.backend = UstackBackend(stack)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, network_backend=self.backend,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry, **pool_kwargs)

    @property
    def pool(self) -> httpcore.AsyncConnectionPool:
        return self._pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                             target=url.raw_path),
            headers=request.headers.raw,
            content=request.stream,                  # an async byte stream
            extensions=request.extensions)
        with _httpx_errors(request):
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream, request),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()
