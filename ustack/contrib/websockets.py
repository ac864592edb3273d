"""websockets on ustack: WebSocket servers and clients over a `Stack`, with the websockets
library's asyncio implementation (`websockets.asyncio`, websockets 13 or later).

Install with ``pip install 'ustack[websockets]'``.

Server -- as `websockets.asyncio.server.serve`, with the stack after the handler; the result is
the library's own `websockets.asyncio.server.Server` (``close()``, ``wait_closed()``,
``connections``, ``sockets``)::

    from ustack import Stack
    from ustack.contrib import websockets as ustack_ws

    async def echo(ws):                       # a websockets.asyncio.server.ServerConnection
        async for message in ws:
            await ws.send(message)

    async with Stack.tun("ust0", "198.18.0.2", "198.18.0.1/24") as stack:
        async with ustack_ws.serve(echo, stack, port=8765) as server:   # ssl=ctx for wss
            await server.serve_forever()

Client -- as `websockets.asyncio.client.connect`, with the stack after the URI; it yields the
library's `websockets.asyncio.client.ClientConnection`::

    async with ustack_ws.connect("ws://198.18.0.1:8765/", stack) as ws:
        await ws.send("hello")
        print(await ws.recv())

Extension point: websockets' `serve()`/`connect()` open their TCP connections with
``asyncio.get_running_loop().create_server/create_connection`` and accept only kernel sockets
(``sock=``), so this module drives the library's documented connection classes through a
protocol factory instead: a `websockets.server.ServerProtocol` /
`websockets.client.ClientProtocol` (the Sans-I/O protocol) inside a
`websockets.asyncio.server.ServerConnection` / `websockets.asyncio.client.ClientConnection`
(an asyncio protocol), handed to `Stack.create_server` / `Stack.create_connection`; the opening
handshake is the connection's own ``handshake()``.  The server side attaches the listener to
a `websockets.asyncio.server.Server`: with ``Server.wrap()`` on websockets 13-16 (the method
the library documents for exactly this), and on websockets 17+ -- whose ``Server`` takes a
``create_server`` coroutine function and a connection handler -- with a handler here that
runs the handshake, keepalive and the user's handler as the library's ``serve()`` does.

Keyword arguments are websockets' own (``origins``, ``extensions``, ``subprotocols``,
``compression``, ``process_request``, ``process_response``, ``server_header``,
``open_timeout``, ``ping_interval``, ``ping_timeout``, ``close_timeout``, ``max_size``,
``max_queue``, ``write_limit``, ``logger``, ``create_connection`` and for clients ``origin``,
``additional_headers``, ``user_agent_header``); the rest go to `Stack.create_server` /
`Stack.create_connection` (``ssl``, ``backlog``, ``server_hostname``, ``local_addr``, ``host``
and ``port`` for clients).  Not supported: ``select_subprotocol`` (use ``subprotocols``),
redirects and reconnection (`connect` is one connection; loop yourself), proxies, Unix
sockets.
"""
from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import Server, ServerConnection
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (enable_client_permessage_deflate,
                                                       enable_server_permessage_deflate)
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from ustack.aio import Stack

__all__ = ["serve", "connect"]

# websockets 13-16: Server(handler, ...) and Server.wrap(asyncio_server);
# websockets 17+: Server(create_server, handler, logger).
_WRAP = hasattr(Server, "wrap")


def _extensions(extensions: Any, compression: str | None, enable: Callable[[Any], Any]) -> Any:
    if compression == "deflate":
        return enable(extensions)
    if compression is not None:
        raise ValueError(f"unsupported compression: {compression}")
    return extensions


class _ServerFactory:
    """The protocol factory given to `Stack.create_server`, and (websockets 17+) the
    connection handler given to `Server`."""

    def __init__(self, handler: Callable[[ServerConnection], Awaitable[None]], *,
                 origins: Any, extensions: Any, subprotocols: Any, max_size: Any,
                 logger: Any, create_connection: type[ServerConnection],
                 connection_kwargs: dict[str, Any], handshake_kwargs: dict[str, Any],
                 open_timeout: float | None) -> None:
        self.handler = handler
        self.protocol_kwargs = {"origins": origins, "extensions": extensions,
                                "subprotocols": subprotocols, "max_size": max_size,
                                "logger": logger}
        self.create_connection = create_connection
        self.connection_kwargs = connection_kwargs
        self.handshake_kwargs = handshake_kwargs
        self.open_timeout = open_timeout
        self.server: Server | None = None

    def __call__(self) -> ServerConnection:
        assert self.server is not None
        return self.create_connection(ServerProtocol(**self.protocol_kwargs), self.server,
                                      **self.connection_kwargs)

    async def run_connection(self, connection: ServerConnection) -> None:
        """websockets 17+: one connection's life -- the opening handshake within
        open_timeout, keepalive, the user's handler; the TCP connection ends with it."""
        server = self.server
        assert server is not None
        try:
            async with asyncio.timeout(self.open_timeout):
                await connection.handshake(**self.handshake_kwargs)
            if connection.protocol.state is not State.OPEN:   # rejected, or lost
                connection.transport.abort()
                return
            server.all_connections.add(connection)
            connection.start_keepalive()
            try:
                async with connection:
                    await self.handler(connection)
            except Exception:
                connection.logger.error("connection handler failed", exc_info=True)
            finally:
                server.all_connections.discard(connection)
        except Exception:
            connection.transport.abort()
        finally:
            server.handler_tasks.discard(asyncio.current_task())  # type: ignore[arg-type]


class serve:
    """Start a WebSocket server on `stack`; await it, or use ``async with``, for the
    `websockets.asyncio.server.Server`.  `host` None means the stack's address."""

    def __init__(self, handler: Callable[[ServerConnection], Awaitable[None]], stack: Stack,
                 host: str | None = None, port: int = 0, *,
                 origins: Any = None, extensions: Any = None, subprotocols: Any = None,
                 compression: str | None = "deflate",
                 process_request: Any = None, process_response: Any = None,
                 server_header: Any = ..., open_timeout: float | None = 10,
                 ping_interval: float | None = 20, ping_timeout: float | None = 20,
                 close_timeout: float | None = 10, max_size: Any = 2 ** 20,
                 max_queue: Any = 16, write_limit: Any = 2 ** 15, logger: Any = None,
                 create_connection: type[ServerConnection] | None = None,
                 **server_kwargs: Any) -> None:
        if not isinstance(stack, Stack):
            raise TypeError(f"stack must be a ustack.Stack, not {type(stack).__name__}")
        if "select_subprotocol" in server_kwargs:
            raise TypeError("ustack.contrib.websockets.serve does not take select_subprotocol")
        self.stack = stack
        self.host, self.port = host, port
        if logger is None:
            logger = logging.getLogger("websockets.server")
        handshake_kwargs: dict[str, Any] = {"process_request": process_request,
                                            "process_response": process_response}
        if server_header is not ...:
            handshake_kwargs["server_header"] = server_header
        self.factory = _ServerFactory(
            handler, origins=origins,
            extensions=_extensions(extensions, compression, enable_server_permessage_deflate),
            subprotocols=subprotocols, max_size=max_size, logger=logger,
            create_connection=create_connection or ServerConnection,
            connection_kwargs={"ping_interval": ping_interval, "ping_timeout": ping_timeout,
                               "close_timeout": close_timeout, "max_queue": max_queue,
                               "write_limit": write_limit},
            handshake_kwargs=handshake_kwargs, open_timeout=open_timeout)
        if server_kwargs.get("ssl") is not None:
            server_kwargs.setdefault("ssl_handshake_timeout", open_timeout)
            server_kwargs.setdefault("ssl_shutdown_timeout", close_timeout)
        self.server_kwargs = server_kwargs
        self.logger = logger
        self.server: Server | None = None

    async def create_server(self) -> Any:
        """The ustack listener (a `ustack.Server`) with this server's protocol factory."""
        return await self.stack.create_server(self.factory, self.host, self.port,
                                              **self.server_kwargs)

    async def _start(self) -> Server:
        if self.server is not None:
            return self.server
        if _WRAP:                                          # websockets 13-16
            kw = dict(self.factory.handshake_kwargs)
            server = Server(self.factory.handler, open_timeout=self.factory.open_timeout,
                            logger=self.logger, **kw)
            self.factory.server = server
            server.wrap(await self.create_server())
        else:                                              # websockets 17+
            server = Server(self.create_server, self.factory.run_connection, self.logger)
            self.factory.server = server
            await server
        self.server = server
        return server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._start().__await__()

    async def __aenter__(self) -> Server:
        return await self._start()

    async def __aexit__(self, *exc: Any) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class connect:
    """Open a WebSocket connection to `uri` over `stack`; await it, or use ``async with``,
    for the `websockets.asyncio.client.ClientConnection` (closed when the block ends)."""

    def __init__(self, uri: str, stack: Stack, *, origin: Any = None, extensions: Any = None,
                 subprotocols: Any = None, compression: str | None = "deflate",
                 additional_headers: Any = None, user_agent_header: Any = ...,
                 open_timeout: float | None = 10, ping_interval: float | None = 20,
                 ping_timeout: float | None = 20, close_timeout: float | None = 10,
                 max_size: Any = 2 ** 20, max_queue: Any = 16, write_limit: Any = 2 ** 15,
                 logger: Any = None, create_connection: type[ClientConnection] | None = None,
                 **connection_kwargs: Any) -> None:
        if not isinstance(stack, Stack):
            raise TypeError(f"stack must be a ustack.Stack, not {type(stack).__name__}")
        self.stack = stack
        self.ws_uri = parse_uri(uri)
        if self.ws_uri.secure:
            connection_kwargs.setdefault("ssl", True)
            if connection_kwargs["ssl"] is True:
                connection_kwargs["ssl"] = ssl_module.create_default_context()
            if connection_kwargs["ssl"] is None:
                raise ValueError("ssl=None is incompatible with a wss:// URI")
            connection_kwargs.setdefault("server_hostname", self.ws_uri.host)
        elif connection_kwargs.get("ssl") is not None:
            raise ValueError("ssl argument is incompatible with a ws:// URI")
        self.host = connection_kwargs.pop("host", None) or self.ws_uri.host
        self.port = connection_kwargs.pop("port", None) or self.ws_uri.port
        self.connection_kwargs = connection_kwargs
        if logger is None:
            logger = logging.getLogger("websockets.client")
        self.protocol_kwargs = {
            "origin": origin, "subprotocols": subprotocols, "max_size": max_size,
            "logger": logger,
            "extensions": _extensions(extensions, compression,
                                      enable_client_permessage_deflate)}
        self.create_connection = create_connection or ClientConnection
        self.ws_kwargs = {"ping_interval": ping_interval, "ping_timeout": ping_timeout,
                          "close_timeout": close_timeout, "max_queue": max_queue,
                          "write_limit": write_limit}
        self.handshake_args: tuple[Any, ...] = (additional_headers,) if \
            user_agent_header is ... else (additional_headers, user_agent_header)
        self.open_timeout = open_timeout
        self.connection: ClientConnection | None = None

    def protocol_factory(self) -> ClientConnection:
        """The asyncio protocol for `Stack.create_connection`: a ClientConnection around a
        fresh Sans-I/O ClientProtocol."""
        return self.create_connection(ClientProtocol(self.ws_uri, **self.protocol_kwargs),
                                      **self.ws_kwargs)

    async def _connect(self) -> ClientConnection:
        try:
            async with asyncio.timeout(self.open_timeout):
                _, connection = await self.stack.create_connection(
                    self.protocol_factory, self.host, self.port, **self.connection_kwargs)
                try:
                    await connection.handshake(*self.handshake_args)
                except BaseException:
                    connection.transport.abort()
                    raise
        except TimeoutError as exc:
            raise TimeoutError("timed out during opening handshake") from exc
        connection.start_keepalive()
        return connection  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._connect().__await__()

    async def __aenter__(self) -> ClientConnection:
        if self.connection is not None:
            raise RuntimeError("connect() isn't reentrant")
        self.connection = await self._connect()
        return await self.connection.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        connection, self.connection = self.connection, None
        assert connection is not None
        await connection.__aexit__(*exc)
