"""ustack.contrib's adapters against the real libraries on the Linux kernel's side.

Each test runs in its own network namespace with ustack at 198.18.0.2 and the kernel at
198.18.0.1 (a TUN device); the kernel side uses the same libraries on ordinary kernel sockets
on the same event loop.  Bodies and messages are random and compared by SHA-256; every test
runs plain and over TLS (a self-signed certificate made with the openssl CLI for both
addresses), on uvloop and on the standard asyncio loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import os
import shutil
import ssl
import subprocess

import pytest

aiohttp = pytest.importorskip("aiohttp")
httpx = pytest.importorskip("httpx")
websockets = pytest.importorskip("websockets")

from aiohttp import web  # noqa: E402
from websockets.asyncio.client import connect as kernel_ws_connect  # noqa: E402
from websockets.asyncio.server import serve as kernel_ws_serve  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from ustack import Stack  # noqa: E402
from ustack.aio import run_until  # noqa: E402
from ustack.contrib import websockets as ustack_ws  # noqa: E402
from ustack.contrib.aiohttp import UstackConnector, UstackSite  # noqa: E402
from ustack.contrib.httpx import UstackTransport  # noqa: E402

pytestmark = pytest.mark.root

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"
BLOB = os.urandom(3 * 1024 * 1024)          # downloaded
UPLOAD = os.urandom(2 * 1024 * 1024)        # uploaded
WS_SIZES = [0, 1, 125, 126, 65535, 65536, 1024 * 1024]
WS_MAX = 4 * 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tun_stack() -> Stack:
    return Stack.tun("ust0", USTACK, f"{KERNEL}/24")


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory):
    """A self-signed certificate for both addresses (the openssl CLI; no cryptography here)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=ustack interop test", "-keyout", str(key), "-out", str(cert),
                    "-addext", f"subjectAltName=IP:{KERNEL},IP:{USTACK}"],
                   check=True, capture_output=True, timeout=30)
    return str(cert), str(key)


@pytest.fixture(params=["plain", "tls"])
def tls(request, cert_files):
    """(server context, client context), or (None, None) for plain connections."""
    if request.param == "plain":
        return None, None
    cert, key = cert_files
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)     # verifies the IP address SAN
    return server, client


# ------------------------------------------------------------------ the HTTP application
async def blob(request: web.Request) -> web.Response:
    return web.Response(body=BLOB, content_type="application/octet-stream")


async def digest(request: web.Request) -> web.Response:
    h, n = hashlib.sha256(), 0           # streamed: no client_max_size on web.Server
    async for chunk in request.content.iter_any():
        h.update(chunk)
        n += len(chunk)
    return web.json_response({"sha256": h.hexdigest(), "length": n})


async def peer(request: web.Request) -> web.Response:
    sock = request.transport.get_extra_info("socket")
    return web.json_response({"remote": request.remote, "secure": request.secure,
                              "peername": list(sock.getpeername())})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/blob", blob)
    app.router.add_post("/sha256", digest)
    app.router.add_get("/peer", peer)
    return app


async def lowlevel_handler(request: web.BaseRequest) -> web.StreamResponse:
    """The same three resources without a router (for aiohttp.web.Server)."""
    routes = {("GET", "/blob"): blob, ("POST", "/sha256"): digest, ("GET", "/peer"): peer}
    handler = routes.get((request.method, request.path))
    if handler is None:
        return web.Response(status=404)
    return await handler(request)  # type: ignore[arg-type]


async def check_aiohttp_client(session, base: str, client_ctx, client_addr: str) -> None:
    """Download, upload, four downloads at once and the peer's view, byte-exact."""
    kw = {"ssl": client_ctx} if client_ctx is not None else {}
    async with session.get(f"{base}/blob", **kw) as r:
        assert r.status == 200
        assert sha(await r.read()) == sha(BLOB)
    async with session.post(f"{base}/sha256", data=io.BytesIO(UPLOAD), **kw) as r:
        assert await r.json() == {"sha256": sha(UPLOAD), "length": len(UPLOAD)}

    async def one() -> str:
        async with session.get(f"{base}/blob", **kw) as r:
            return sha(await r.read())
    assert await asyncio.gather(*(one() for _ in range(4))) == [sha(BLOB)] * 4
    async with session.get(f"{base}/peer", **kw) as r:
        info = await r.json()
    assert info["remote"] == client_addr and info["peername"][0] == client_addr
    assert info["secure"] is (client_ctx is not None)


async def check_httpx_client(client, base: str, client_addr: str, secure: bool) -> None:
    r = await client.get(f"{base}/blob")
    assert r.status_code == 200 and sha(r.content) == sha(BLOB)
    r = await client.post(f"{base}/sha256", content=UPLOAD)
    assert r.json() == {"sha256": sha(UPLOAD), "length": len(UPLOAD)}
    async with client.stream("GET", f"{base}/blob") as r:      # streamed, in chunks
        h = hashlib.sha256()
        async for chunk in r.aiter_bytes():
            h.update(chunk)
        assert h.hexdigest() == sha(BLOB)
    rs = await asyncio.gather(*(client.get(f"{base}/blob") for _ in range(4)))
    assert [sha(r.content) for r in rs] == [sha(BLOB)] * 4
    info = (await client.get(f"{base}/peer")).json()
    assert info["remote"] == client_addr and info["secure"] is secure


async def checked(coro):
    """Run `coro` and fail on anything reported to the loop's exception handler (an
    adapter's or a protocol's error that nobody awaited)."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        return await coro
    finally:
        loop.set_exception_handler(None)
        assert not errors, [(c.get("message"), c.get("exception")) for c in errors]


def scheme(client_ctx, base: str = "http") -> str:
    return base + ("s" if client_ctx is not None else "")


# ------------------------------------------------------------------ aiohttp
def test_aiohttp_app_on_ustack_site(netns, run, tls):
    """web.AppRunner + UstackSite on ustack <- aiohttp.ClientSession on the kernel."""
    server_ctx, client_ctx = tls

    async def main():
        async with tun_stack() as stack:
            runner = web.AppRunner(make_app())
            await runner.setup()
            site = UstackSite(runner, stack, port=0, ssl_context=server_ctx)
            await site.start()
            port = site.port
            assert port != 0 and site.name == f"{scheme(client_ctx)}://{USTACK}:{port}"
            assert runner.addresses == [(USTACK, port)]
            try:
                async with aiohttp.ClientSession() as session:       # kernel sockets
                    await check_aiohttp_client(session, f"{scheme(client_ctx)}://{USTACK}:{port}",
                                               client_ctx, KERNEL)
            finally:
                await runner.cleanup()
            assert site.stack is stack
            assert all(c.state != "LISTEN" for c in stack.connections())   # site stopped
            assert stack.counters["TcpPassiveOpens"] >= 1
            assert stack.counters["TcpInCsumErrors"] == 0
    run(checked(main()))


def test_aiohttp_lowlevel_server_via_create_server(netns, run, tls):
    """aiohttp.web.Server is a protocol factory: Stack.create_server takes it as it is."""
    server_ctx, client_ctx = tls

    async def main():
        async with tun_stack() as stack:
            web_server = web.Server(lowlevel_handler)
            listener = await stack.create_server(web_server, port=8080, ssl=server_ctx)
            try:
                async with aiohttp.ClientSession() as session:
                    await check_aiohttp_client(session, f"{scheme(client_ctx)}://{USTACK}:8080",
                                               client_ctx, KERNEL)
                    assert len(web_server.connections) >= 1       # keep-alive, on ustack
            finally:
                listener.close()
                await listener.wait_closed()
                await web_server.shutdown(1.0)
            assert stack.counters["TcpPassiveOpens"] >= 1
    run(checked(main()))


async def kernel_app(server_ctx, port: int) -> web.AppRunner:
    runner = web.AppRunner(make_app())
    await runner.setup()
    await web.TCPSite(runner, KERNEL, port, ssl_context=server_ctx).start()
    return runner


def test_aiohttp_client_over_ustack(netns, run, tls):
    """aiohttp.ClientSession(connector=UstackConnector(stack)) -> aiohttp on the kernel."""
    server_ctx, client_ctx = tls

    async def main():
        async with tun_stack() as stack:
            runner = await kernel_app(server_ctx, 8443)    # after the stack: its address
            try:
                async with aiohttp.ClientSession(connector=UstackConnector(stack)) as session:
                    await check_aiohttp_client(session, f"{scheme(client_ctx)}://{KERNEL}:8443",
                                               client_ctx, USTACK)
                    # a failed TLS verification is aiohttp's own error
                    if client_ctx is not None:
                        with pytest.raises(aiohttp.ClientConnectorCertificateError):
                            await session.get(f"https://{KERNEL}:8443/peer")
                    # nobody listening: the kernel's RST is aiohttp's ClientConnectorError
                    with pytest.raises(aiohttp.ClientConnectorError):
                        await session.get(f"http://{KERNEL}:9/")
            finally:
                await runner.cleanup()
            assert stack.counters["TcpActiveOpens"] >= 1
    run(checked(main()))


def test_aiohttp_file_response_on_ustack(netns, run, tls, loop_kind, request, tmp_path):
    """web.FileResponse (static files) on UstackSite.  aiohttp sends files with
    loop.sendfile(transport, ...): uvloop has none (aiohttp writes the file itself); asyncio's
    loop takes its fallback (read and write) because the ustack transport declares it."""
    server_ctx, client_ctx = tls
    path = tmp_path / "blob.bin"
    path.write_bytes(BLOB)

    async def main():
        async with tun_stack() as stack:
            app = web.Application()
            async def send_file(request: web.Request) -> web.FileResponse:
                return web.FileResponse(path)
            app.router.add_get("/file", send_file)
            runner = web.AppRunner(app)
            await runner.setup()
            site = UstackSite(runner, stack, port=8080, ssl_context=server_ctx)
            await site.start()
            kw = {"ssl": client_ctx} if client_ctx is not None else {}
            try:
                async with aiohttp.ClientSession() as session:
                    async with session.get(f"{scheme(client_ctx)}://{USTACK}:8080/file",
                                           **kw) as r:
                        assert r.status == 200
                        assert sha(await r.read()) == sha(BLOB)
            finally:
                await runner.cleanup()
    run(checked(main()))


# ------------------------------------------------------------------ httpx
def test_httpx_client_over_ustack(netns, run, tls):
    """httpx.AsyncClient(transport=UstackTransport(stack)) -> aiohttp on the kernel."""
    server_ctx, client_ctx = tls

    async def main():
        async with tun_stack() as stack:
            runner = await kernel_app(server_ctx, 8443)
            try:
                transport = UstackTransport(stack, verify=client_ctx or True)
                async with httpx.AsyncClient(transport=transport, timeout=30) as client:
                    await check_httpx_client(client, f"{scheme(client_ctx)}://{KERNEL}:8443",
                                             USTACK, client_ctx is not None)
                    if client_ctx is not None:                # unverifiable: httpx's error
                        async with httpx.AsyncClient(transport=UstackTransport(stack)) as bad:
                            with pytest.raises(httpx.ConnectError):
                                await bad.get(f"https://{KERNEL}:8443/peer")
                    with pytest.raises(httpx.ConnectError):
                        await client.get(f"http://{KERNEL}:9/")
            finally:
                await runner.cleanup()
            assert stack.counters["TcpActiveOpens"] >= 1
    run(checked(main()))


# ------------------------------------------------------------------ websockets
def close_info(ws) -> tuple[int | None, str | None]:
    """The close code and reason received (websockets < 15 has them on the Sans-I/O
    protocol only)."""
    if hasattr(ws, "close_code"):
        return ws.close_code, ws.close_reason
    return ws.protocol.close_code, ws.protocol.close_reason


# websockets 15 added proxy support (on by default from the environment); older ones take
# no proxy= argument.
NO_PROXY = {"proxy": None} if int(websockets.__version__.split(".")[0]) >= 15 else {}


def ws_messages() -> list[bytes | str]:
    out: list[bytes | str] = [os.urandom(n) for n in WS_SIZES]
    out += ["text ✓", "x" * 70000]
    return out


class Echo:
    """An echo handler that records the close code and reason each connection ended with;
    "close:4001" makes it close with 4001 "bye"."""

    def __init__(self) -> None:
        self.closed: list[tuple[int | None, str | None]] = []
        self.peers: list[tuple[str, int]] = []

    async def __call__(self, ws) -> None:
        self.peers.append(ws.remote_address[:2])
        try:
            async for message in ws:
                if message == "close:4001":
                    await ws.close(4001, "bye")
                    break
                await ws.send(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        self.closed.append(close_info(ws))


async def ws_client_session(open_ws, echo: Echo) -> None:
    """Echo every message byte-exact, then both ways of closing: the server's 4001 and the
    client's 4002."""
    messages = ws_messages()
    async with open_ws() as ws:
        for m in messages:
            await ws.send(m)
            got = await ws.recv()
            assert type(got) is type(m) and sha(got if isinstance(got, bytes)
                                                else got.encode()) == \
                sha(m if isinstance(m, bytes) else m.encode())
        # pipelined: all sent before any is read back
        for m in messages:
            await ws.send(m)
        assert [await ws.recv() for _ in messages] == messages
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        assert close_info(ws) == (4001, "bye")
    async with open_ws() as ws:
        await ws.send(b"last")
        assert await ws.recv() == b"last"
        await ws.close(4002, "done")
        assert close_info(ws) == (4002, "done")      # the server echoes the close frame
    assert await run_until(lambda: len(echo.closed) == 2, timeout=10)
    assert echo.closed == [(4001, "bye"), (4002, "done")]


def test_websockets_server_on_ustack(netns, run, tls):
    """ustack.contrib.websockets.serve on ustack <- websockets' client on the kernel."""
    server_ctx, client_ctx = tls

    async def main():
        echo = Echo()
        async with tun_stack() as stack:
            async with ustack_ws.serve(echo, stack, port=8765, ssl=server_ctx,
                                       max_size=WS_MAX) as server:
                assert server.sockets[0].getsockname() == (USTACK, 8765)
                uri = f"{scheme(client_ctx, 'ws')}://{USTACK}:8765/"
                kw = {"ssl": client_ctx} if client_ctx is not None else {}
                await ws_client_session(
                    lambda: kernel_ws_connect(uri, max_size=WS_MAX, **NO_PROXY, **kw), echo)
            assert all(p[0] == KERNEL for p in echo.peers)
            assert stack.counters["TcpPassiveOpens"] == 2
    run(checked(main()))


def test_websockets_client_over_ustack(netns, run, tls):
    """ustack.contrib.websockets.connect over ustack -> websockets' server on the kernel."""
    server_ctx, client_ctx = tls

    async def main():
        echo = Echo()
        async with tun_stack() as stack:
            async with kernel_ws_serve(echo, KERNEL, 8765, ssl=server_ctx, max_size=WS_MAX,
                                       compression=None):
                uri = f"{scheme(client_ctx, 'ws')}://{KERNEL}:8765/"
                kw = {"ssl": client_ctx} if client_ctx is not None else {}
                await ws_client_session(
                    lambda: ustack_ws.connect(uri, stack, max_size=WS_MAX, compression=None,
                                              **kw), echo)
            assert all(p[0] == USTACK for p in echo.peers)
            assert stack.counters["TcpActiveOpens"] == 2
    run(checked(main()))
