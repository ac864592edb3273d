"""aiohttp on ustack: serve an aiohttp application, and make client requests, over a `Stack`.

Install with ``pip install 'ustack[aiohttp]'``.

Serving an application -- `UstackSite` is used with `aiohttp.web.AppRunner` exactly like
`aiohttp.web.TCPSite`, with the stack as its second argument::

    from aiohttp import web
    from ustack import Stack
    from ustack.contrib.aiohttp import UstackSite

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.remote}")

    app = web.Application()
    app.router.add_get("/", hello)
    async with Stack.tun("ust0", "198.18.0.2", "198.18.0.1/24") as stack:
        runner = web.AppRunner(app)
        await runner.setup()
        site = UstackSite(runner, stack, port=8080)      # ssl_context=... for https
        await site.start()
        print("serving on", site.name)                   # http://198.18.0.2:8080
        ...
        await runner.cleanup()

The low-level server needs no adapter: an `aiohttp.web.Server` is a protocol factory, and
`Stack.create_server` takes protocol factories as `loop.create_server` does::

    server = web.Server(handler)                         # handler(request) -> StreamResponse
    listener = await stack.create_server(server, port=8080, ssl=None)
    ...
    listener.close()
    await server.shutdown(timeout=1.0)

Client requests -- `UstackConnector` opens the session's connections on the stack (http and
https; ``ssl=`` takes an `ssl.SSLContext` per request or for the connector, as with
`aiohttp.TCPConnector`, whose keyword arguments it accepts)::

    import aiohttp
    from ustack.contrib.aiohttp import UstackConnector

    async with aiohttp.ClientSession(connector=UstackConnector(stack)) as session:
        async with session.get("https://198.18.0.1:8443/", ssl=client_context) as resp:
            body = await resp.read()

Extension point of the connector: aiohttp has no public hook for "open the TCP connection
with this function" (its ``socket_factory`` must return a kernel socket), so `UstackConnector`
subclasses `aiohttp.TCPConnector` and overrides one underscore method,
``TCPConnector._wrap_create_connection`` -- the place where aiohttp, after resolving the host,
turns addresses into a connected transport.  Everything else (pooling, keep-alive, the TLS
context rules, fingerprints, timeouts, errors) is aiohttp's own.  That method's keyword form
(``addr_infos=``) exists since aiohttp 3.10, so the ``aiohttp`` extra pins
``aiohttp>=3.10,<4``; importing this module checks the signature and fails clearly otherwise.

Files (`web.FileResponse`, static routes) go through ``loop.sendfile``: on asyncio's loop
the ustack transport takes asyncio's read-and-write fallback, on uvloop aiohttp writes the
file itself.

Limits: IPv4 only (IPv6 addresses from the resolver are skipped); HTTPS through an HTTP proxy
(CONNECT) upgrades with ``loop.start_tls``, which uvloop refuses for a non-uvloop transport,
so that case works on asyncio's default loop only.
"""
from __future__ import annotations

import asyncio
import inspect
import socket
import ssl
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ustack.aio import Stack

__all__ = ["UstackSite", "UstackConnector"]

_hook = inspect.signature(aiohttp.TCPConnector._wrap_create_connection).parameters
if "addr_infos" not in _hook or "req" not in _hook or "timeout" not in _hook:
    raise ImportError(f"ustack.contrib.aiohttp needs aiohttp>=3.10,<4 (TCPConnector."
                      f"_wrap_create_connection(*args, addr_infos, req, timeout, ...)); "
                      f"aiohttp {aiohttp.__version__} is installed")
del _hook


class UstackSite(web.BaseSite):
    """An `aiohttp.web.BaseSite` listening on a ustack `Stack`: use it as `web.TCPSite`.

    `host` None (or "0.0.0.0") means the stack's own address; `port` None means 8080, or 8443
    with `ssl_context`, as TCPSite; port 0 picks a free port (see `port` after `start()`)."""

    __slots__ = ("_stack", "_host", "_port", "_bound_port", "_reuse_address", "_reuse_port")

    def __init__(self, runner: web.BaseRunner, stack: Stack, host: str | None = None,
                 port: int | None = None, *, ssl_context: ssl.SSLContext | None = None,
                 backlog: int = 128, reuse_address: bool | None = None,
                 reuse_port: bool | None = None) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        if not isinstance(stack, Stack):
            raise TypeError(f"stack must be a ustack.Stack, not {type(stack).__name__}")
        self._stack = stack
        self._host = host
        self._port = (8443 if ssl_context else 8080) if port is None else port
        self._bound_port: int | None = None
        self._reuse_address = reuse_address
        self._reuse_port = reuse_port

    @property
    def stack(self) -> Stack:
        return self._stack

    @property
    def port(self) -> int:
        """The listening port once started (the requested one before)."""
        return self._port if self._bound_port is None else self._bound_port

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host = self._stack.address if self._host in (None, "", "0.0.0.0") else self._host
        return str(URL.build(scheme=scheme, host=host, port=self.port))

    async def start(self) -> None:
        await super().start()                       # registers the site with the runner
        web_server = self._runner.server
        if web_server is None:
            raise RuntimeError("the runner was cleaned up: call runner.setup() again")
        self._server = await self._stack.create_server(
            web_server, self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address,
            reuse_port=bool(self._reuse_port))
        self._bound_port = self._server.sockets[0].getsockname()[1]


class UstackConnector(aiohttp.TCPConnector):
    """An `aiohttp.TCPConnector` whose connections are ustack connections.

    Takes the stack and TCPConnector's keyword arguments (``ssl``, ``limit``, ``force_close``,
    ``resolver``, ``ttl_dns_cache``, ...); ``local_addr`` is ``(host, port)`` on the stack
    (host None or the stack's address).  ``socket_factory`` and ``happy_eyeballs_delay`` make
    no sense here (no kernel sockets) and are refused."""

    def __init__(self, stack: Stack, *, local_addr: tuple[str | None, int] | None = None,
                 **kwargs: Any) -> None:
        if not isinstance(stack, Stack):
            raise TypeError(f"stack must be a ustack.Stack, not {type(stack).__name__}")
        for name in ("socket_factory", "happy_eyeballs_delay", "interleave"):
            if kwargs.get(name) is not None:
                raise TypeError(f"UstackConnector does not take {name}= (ustack opens its "
                                f"connections itself, one IPv4 address at a time)")
        kwargs["happy_eyeballs_delay"] = None
        kwargs.setdefault("family", socket.AF_INET)
        super().__init__(**kwargs)
        self._ustack = stack
        self._ustack_local_addr = local_addr

    @property
    def stack(self) -> Stack:
        return self._ustack

    async def _wrap_create_connection(
            self, protocol_factory: Any, *args: Any, addr_infos: list[Any],
            req: aiohttp.ClientRequest, timeout: aiohttp.ClientTimeout,
            client_error: type[Exception] = aiohttp.ClientConnectorError,
            **kwargs: Any) -> tuple[asyncio.Transport, Any]:
        """aiohttp's hook (see the module docstring): connect to the first IPv4 address of
        `addr_infos` on the stack; aiohttp drops it and calls again for the next on failure."""
        key = req.connection_key
        ipv4 = [info for info in addr_infos if info[0] == socket.AF_INET]
        if not ipv4:
            raise client_error(key, OSError(97, "Address family not supported by protocol: "
                                                "ustack speaks IPv4 only"))
        host, port = ipv4[0][4][:2]
        if ipv4[0] is not addr_infos[0]:
            addr_infos[:] = ipv4                    # aiohttp pops the failed first entry
        try:
            async with asyncio.timeout(timeout.sock_connect):
                return await self._ustack.create_connection(
                    protocol_factory, host, port, *args,
                    local_addr=self._ustack_local_addr, **kwargs)
        except ssl.CertificateError as exc:
            raise aiohttp.ClientConnectorCertificateError(key, exc) from exc
        except ssl.SSLError as exc:
            raise aiohttp.ClientConnectorSSLError(key, exc) from exc
        except OSError as exc:
            if exc.errno is None and isinstance(exc, asyncio.TimeoutError):
                raise                               # aiohttp turns it into its own timeout
            raise client_error(key, exc) from exc
