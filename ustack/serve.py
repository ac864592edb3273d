"""`ustack serve`: a server on ustack over a TUN device, until SIGINT/SIGTERM.

By default it makes its own private network namespace (the network rule: never put a TUN device
in the root namespace) and says how to enter it.  While it runs, `ustack ss` and `ustack nstat`
ask it for its sockets and counters over a local control socket (see ustack.control for the
protocol); only root may use it (checked with SO_PEERCRED).  On SIGINT or SIGTERM it closes its
servers and connections, removes the TUN device and the control socket, and exits 0.
With --pcap FILE every packet of the TUN device is recorded (ustack.pcap.PcapTap), flushed
every second so that tcpdump -r can read the file while the server runs.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from ustack.control import DEFAULT_PATH

APP_PORTS = {"echo": 7, "discard": 9, "http": 80}
REQUEST_TIMEOUT = 5.0
MAX_REQUEST = 4096
PCAP_FLUSH_INTERVAL = 1.0   # seconds: a capture can be read while the server runs


class ServeError(Exception):
    """A reason not to start (or to stop), for a one-line message."""


async def discard_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(1 << 16):
        pass
    writer.close()


def app_handler(app: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]:
    from ustack.demo import echo_handler, http_handler
    return {"echo": echo_handler, "discard": discard_handler, "http": http_handler}[app]


def parse_sysctls(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ServeError(f"--sysctl takes name=value, not {item!r}")
        out[name.strip()] = value.strip()
    return out


# ------------------------------------------------------------------ the control socket
def _live(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


@contextlib.contextmanager
def control_socket(path: str) -> Iterator[socket.socket]:
    """A listening AF_UNIX socket at `path`; the file is removed on the way out."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o700, exist_ok=True)
        os.chmod(parent, 0o700)
    if os.path.lexists(path):
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ServeError(f"{path} exists and is not a socket; not touching it")
        if _live(path):
            raise ServeError(f"another ustack serve is already listening on {path}")
        os.unlink(path)  # stale, from a server that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError as e:
        sock.close()
        raise ServeError(f"cannot create the control socket {path}: {e.strerror or e}") from None
    ino = os.lstat(path).st_ino
    try:
        # Anyone who can reach the file may connect, so that a refusal comes with a reason;
        # the refusal itself is by the peer's uid (SO_PEERCRED), and the default directory
        # is 0700 anyway.
        os.chmod(path, 0o666)
        sock.listen(16)
        sock.setblocking(False)
        yield sock
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            if os.lstat(path).st_ino == ino:
                os.unlink(path)


def peer_uid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    if sock is None:
        return None
    dup = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(sock.fileno()))
    try:
        raw = dup.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    finally:
        dup.close()
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def socket_record(info: Any) -> dict[str, Any]:
    """One ConnInfo as the control protocol's JSON record (its fields; tuples as lists)."""
    return {f.name: getattr(info, f.name) for f in dataclasses.fields(info)}


def answer(stack: Any, req: Any, server_id: str | None = None) -> dict[str, Any]:
    """The response to one control request (see ustack.control for the protocol)."""
    if not isinstance(req, dict):
        return {"error": "a request is a JSON object"}
    cmd = req.get("cmd")
    if cmd == "ss":
        return {"sockets": [socket_record(c) for c in stack.connections()]}
    if cmd == "nstat":
        # every counter, zeros too: the client prints increments or absolute values, with or
        # without zeros, as nstat's options say
        return {"counters": dict(stack.counters.values), "server": server_id}
    return {"error": f"unknown request {cmd!r} (ss, nstat)"}


def control_handler(stack: Any, server_id: str | None = None
                    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The control socket's connection handler: one request line, one response line."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
            except (asyncio.TimeoutError, ValueError, ConnectionError):
                return
            uid = peer_uid(writer)
            if uid != 0:
                resp: dict[str, Any] = {
                    "error": f"refused: only root may use the ustack control socket "
                             f"(you are uid {uid})"}
            else:
                try:
                    resp = answer(stack, json.loads(line), server_id)
                except ValueError:
                    resp = {"error": "a request is one line of JSON"}
            writer.write(json.dumps(resp).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
    return handle


# ------------------------------------------------------------------ the server
async def run(app: str, port: int, ifname: str, address: str, kernel_address: str,
              sysctl: dict[str, str], control: socket.socket, control_path: str,
              allow_root_namespace: bool, pcap: Any = None, offload: bool = False) -> int:
    """Serve until SIGINT/SIGTERM; `pcap` (a PcapWriter) records the TUN device's packets;
    `offload`: the TUN device's checksum and TSO offloads (super-segments both ways)."""
    from ustack import Stack
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        # pcap: everything the TUN device carries is recorded (the writer is closed with
        # the link)
        stack = Stack.tun(ifname, address, kernel_address, sysctl=sysctl,
                          allow_root_namespace=allow_root_namespace, pcap=pcap,
                          offload=offload)
    except (KeyError, ValueError) as e:
        raise ServeError(f"bad setting: {e.args[0] if e.args else e}") from None
    try:
        await stack.start()
    except (OSError, RuntimeError) as e:
        raise ServeError(f"cannot open TUN device {ifname}: {e}") from None
    flusher = asyncio.create_task(_flush_periodically(pcap)) if pcap is not None else None
    try:
        await stack.start_server(app_handler(app), port=port)
        server_id = f"{os.getpid()}-{time.time_ns()}"
        ctl = await asyncio.start_unix_server(control_handler(stack, server_id), sock=control)
        print(f"ustack serve: {app} on {address}:{port} (TUN {ifname}, kernel side "
              f"{kernel_address}); control socket {control_path}; SIGINT/SIGTERM to stop",
              flush=True)
        try:
            await stop.wait()
        finally:
            ctl.close()
    finally:
        if flusher is not None:
            flusher.cancel()
        await stack.aclose()
    print("ustack serve: stopped; TUN device and control socket removed", flush=True)
    return 0


async def _flush_periodically(writer: Any) -> None:
    """Flush a capture every PCAP_FLUSH_INTERVAL seconds, until cancelled."""
    while True:
        await asyncio.sleep(PCAP_FLUSH_INTERVAL)
        writer.flush()


def main(app: str, port: int | None, ifname: str, address: str, kernel_address: str,
         control_path: str = DEFAULT_PATH, sysctls: list[str] | None = None, *,
         in_current_namespace: bool = False, allow_root_namespace: bool = False,
         use_uvloop: bool = True, pcap: str | None = None, offload: bool = False) -> int:
    """`ustack serve`: returns the exit status (1 with a one-line message if it cannot run).
    `pcap`: a file (or "-" for standard output) to record every packet of the TUN device in."""
    from ustack.netns import Netns, in_root_namespace
    port = APP_PORTS[app] if port is None else port
    try:
        sysctl = parse_sysctls(sysctls or [])
        if in_current_namespace and not allow_root_namespace and in_root_namespace():
            raise ServeError("--in-current-namespace: this is the root network namespace; "
                             "ustack puts no TUN device here unless --allow-root-namespace")
        with contextlib.ExitStack() as cleanup:
            writer = None
            if pcap is not None:
                from ustack.pcap import PcapWriter
                try:
                    writer = PcapWriter(pcap)
                except OSError as e:
                    raise ServeError(str(e)) from None
                cleanup.callback(_report_pcap, writer)
                if pcap == "-":
                    # standard output carries the capture (ustack serve --pcap - | tcpdump
                    # -r -): the messages go to standard error
                    cleanup.enter_context(contextlib.redirect_stdout(sys.stderr))
            if not in_current_namespace:
                ns = cleanup.enter_context(Netns())
                print(f"ustack serve: private network namespace net:[{ns.inode}], removed on "
                      f"exit; enter it with: nsenter --net=/proc/{os.getpid()}/task/"
                      f"{threading.get_native_id()}/ns/net", flush=True)
            control = cleanup.enter_context(control_socket(control_path))
            coro = run(app, port, ifname, address, kernel_address, sysctl, control,
                       control_path, allow_root_namespace, writer, offload)
            if use_uvloop:
                import uvloop
                return uvloop.run(coro)
            return asyncio.run(coro)
    except ServeError as e:
        print(f"ustack serve: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:
        print(f"ustack serve: {e.strerror or e}", file=sys.stderr)
        return 1


def _report_pcap(writer: Any) -> None:
    """Close the capture and say what is in it (on stderr if it was written to stdout)."""
    writer.close()
    if writer.error is not None:
        print(f"ustack serve: the capture stopped after {writer.packets} packets: "
              f"{writer.error.strerror or writer.error} ({writer.dropped} packets not written "
              f"to {writer.name})", file=sys.stderr, flush=True)
    else:
        print(f"ustack serve: {writer.packets} packets written to {writer.name}", flush=True)
