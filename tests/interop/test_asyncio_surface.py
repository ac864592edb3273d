"""The asyncio surface people use, on ustack against the Linux kernel: TLS both ways (ssl=,
server_hostname=, a STARTTLS-style upgrade), BufferedProtocol, names resolved as asyncio does,
and the socket object behind `get_extra_info("socket")` and `server.sockets` with the `socket`
module's constants and values.  Kernel-side peers use the standard library's ssl and sockets
on the same loop; everything runs in the test's own network namespace."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import subprocess
import struct

import pytest

from ustack import Stack
from ustack.aio import run_until

pytestmark = pytest.mark.root

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[str, str]:
    """A self-signed certificate for both addresses and the name ustack.test."""
    d = tmp_path_factory.mktemp("tls")
    key, crt = str(d / "key.pem"), str(d / "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", crt,
                    "-days", "2", "-subj", "/CN=ustack.test", "-addext",
                    f"subjectAltName=DNS:ustack.test,IP:{USTACK},IP:{KERNEL}"],
                   check=True, capture_output=True)
    return crt, key


def server_ctx(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(*cert)
    return ctx


def client_ctx(cert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cert[0])
    return ctx


async def sha_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a length-prefixed message, answer with its SHA-256 and the message itself (TLS
    has no half-close, so the length ends the message)."""
    (n,) = struct.unpack("!Q", await reader.readexactly(8))
    data = await reader.readexactly(n)
    writer.write(hashlib.sha256(data).digest() + data)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def exchange(reader, writer, size: int) -> None:
    data = os.urandom(size)
    writer.write(struct.pack("!Q", size) + data)
    await writer.drain()
    got = await reader.readexactly(32 + size)
    assert got[:32] == hashlib.sha256(data).digest()
    assert got[32:] == data
    writer.close()


def test_tls_server_on_ustack_kernel_client(netns, run, cert):
    async def main():
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            server = await stack.start_server(sha_echo, port=4433, ssl=server_ctx(cert),
                                              ssl_handshake_timeout=10)
            async with server:
                for size in (1, 100_000, 2_000_000):
                    # the kernel's client: the standard library's ssl on a kernel socket
                    reader, writer = await asyncio.open_connection(
                        USTACK, 4433, ssl=client_ctx(cert), server_hostname="ustack.test")
                    assert writer.get_extra_info("ssl_object").version().startswith("TLS")
                    await exchange(reader, writer, size)
    run(main(), timeout=60)


def test_tls_client_on_ustack_kernel_server(netns, run, cert):
    async def main():
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack, \
                await asyncio.start_server(sha_echo, KERNEL, 4434, ssl=server_ctx(cert)):
            for size in (1, 1_500_000):
                reader, writer = await stack.open_connection(
                    KERNEL, 4434, ssl=client_ctx(cert), server_hostname="ustack.test",
                    ssl_handshake_timeout=10)
                peer = writer.get_extra_info("peercert")
                assert dict(x[0] for x in peer["subject"])["commonName"] == "ustack.test"
                await exchange(reader, writer, size)
            # the certificate's IP address verifies when server_hostname defaults to host
            reader, writer = await stack.open_connection(KERNEL, 4434, ssl=client_ctx(cert))
            await exchange(reader, writer, 1000)
            # a wrong name fails verification: the error surfaces, nothing hangs
            with pytest.raises(ssl.SSLCertVerificationError):
                await stack.open_connection(KERNEL, 4434, ssl=client_ctx(cert),
                                            server_hostname="other.test")
    run(main(), timeout=60)


def test_starttls_upgrade_both_ends(netns, run, cert):
    """A plain connection that turns into TLS in place (SMTP's STARTTLS pattern): ustack
    upgrades its client streams, the kernel server upgrades with StreamWriter.start_tls."""
    async def kernel_side(reader, writer):
        assert await reader.readline() == b"STARTTLS\r\n"
        writer.write(b"220 go ahead\r\n")
        await writer.drain()
        await writer.start_tls(server_ctx(cert))
        await sha_echo(reader, writer)

    async def main():
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack, \
                await asyncio.start_server(kernel_side, KERNEL, 2525):
            reader, writer = await stack.open_connection(KERNEL, 2525)
            writer.write(b"STARTTLS\r\n")
            assert await reader.readline() == b"220 go ahead\r\n"
            await stack.upgrade_streams(writer, client_ctx(cert), server_hostname="ustack.test")
            assert writer.get_extra_info("ssl_object") is not None
            await exchange(reader, writer, 300_000)
    run(main(), timeout=60)


class Collect(asyncio.BufferedProtocol):
    """A BufferedProtocol with a small buffer: many get_buffer/buffer_updated rounds."""

    def __init__(self) -> None:
        self.buf = bytearray(3000)
        self.got = bytearray()
        self.done = asyncio.get_running_loop().create_future()
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.got += self.buf[:nbytes]

    def eof_received(self) -> bool:
        self.transport.write(hashlib.sha256(self.got).digest())
        return False

    def connection_lost(self, exc) -> None:
        if not self.done.done():
            self.done.set_result(bytes(self.got))


def test_buffered_protocol_receives_everything(netns, run):
    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            protocols = []

            def factory():
                p = Collect()
                protocols.append(p)
                return p
            server = await stack.create_server(factory, port=9100)
            data = os.urandom(3_000_000)
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (USTACK, 9100))
            await loop.sock_sendall(s, data)
            s.shutdown(socket.SHUT_WR)
            digest = b""
            while chunk := await loop.sock_recv(s, 100):
                digest += chunk
            s.close()
            got = await asyncio.wait_for(protocols[0].done, 10)
            assert got == data
            assert digest == hashlib.sha256(data).digest()
            server.close()
    run(main(), timeout=60)


def test_socket_object_takes_the_socket_modules_values(netns, run):
    """What aiohttp and friends do with get_extra_info("socket"): family checks, bools for
    TCP_NODELAY, SO_KEEPALIVE with Linux's keepalive timers, getsockopt with buflen."""
    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24", sysctl={
                "net.ipv4.tcp_keepalive_intvl": 1}) as stack:
            server = await stack.start_server(sha_echo, host=USTACK, port=9200)
            (ls,) = server.sockets
            assert ls.family == socket.AF_INET and ls.type == socket.SOCK_STREAM
            assert ls.getsockname() == (USTACK, 9200)
            assert ls.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert ls.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
            ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)   # inherited

            ks = socket.socket()
            ks.setblocking(False)
            await loop.sock_connect(ks, (USTACK, 9200))
            assert await run_until(lambda: len(stack._transports) == 1)
            (child,) = [t.get_extra_info("socket") for t in stack._transports]
            assert child.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            # a client connection from ustack to a kernel listener
            kl = socket.socket()
            kl.bind((KERNEL, 9300))
            kl.listen()
            kl.setblocking(False)
            reader, writer = await stack.open_connection(KERNEL, 9300)
            peer, _ = await loop.sock_accept(kl)
            sock = writer.get_extra_info("socket")
            assert sock.family == socket.AF_INET and sock.proto == socket.IPPROTO_TCP
            assert sock.getpeername() == (KERNEL, 9300) == writer.get_extra_info("peername")
            assert sock.getsockname()[0] == USTACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 4) == \
                struct.pack("i", 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 10000)
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 20000  # doubled
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_LINGER2, 1000)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_LINGER2) == 120  # clamped
            with pytest.raises(OSError) as e:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 0)
            assert e.value.errno == 22
            with pytest.raises(TypeError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, "yes")
            # keepalive: the kernel peer answers the probes; the connection stays up and
            # ss shows the keepalive timer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
            lport = sock.getsockname()[1]
            line = [c for c in stack.connections() if c.local[1] == lport][0]
            assert line.timer and line.timer[0] == "keepalive", line
            assert await run_until(lambda: stack.counters["TCPKeepAlive"] >= 3, timeout=10)
            assert [c.state for c in stack.connections() if c.local[1] == lport] == ["ESTAB"]
            writer.write(b"still there")
            await writer.drain()
            assert await loop.sock_recv(peer, 100) == b"still there"
            writer.close()
            peer.close()
            kl.close()
            ks.close()
            server.close()
    run(main(), timeout=60)


def test_start_serving_false_binds_without_listening(netns, run):
    """create_server(..., start_serving=False): the port is taken but SYNs are refused until
    start_serving(), as asyncio's server calls listen() only then."""
    async def main():
        loop = asyncio.get_running_loop()
        async with Stack.tun("ust0", USTACK, f"{KERNEL}/24") as stack:
            server = await stack.start_server(sha_echo, port=9400, start_serving=False)
            assert not server.is_serving()
            with pytest.raises(OSError):                # the port is held
                await stack.start_server(sha_echo, port=9400, reuse_address=False)
            s = socket.socket()
            s.setblocking(False)
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(s, (USTACK, 9400))
            s.close()
            await server.start_serving()
            assert server.is_serving() and server.sockets[0].getsockname() == (USTACK, 9400)
            reader, writer = await asyncio.open_connection(USTACK, 9400)
            await exchange(reader, writer, 1000)
            server.close()
            await server.wait_closed()
            assert not server.is_serving() and server.sockets == ()
    run(main(), timeout=30)
