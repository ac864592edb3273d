"""ustack.tcp_tw_recycle behind a NAT, with two real kernel clients: seed 000's failure.

Three private network namespaces, nothing in the root one:

    C1: kernel client 198.19.1.2 --veth-- 198.19.1.1 N
    C2: kernel client 198.19.2.2 --veth-- 198.19.2.1 N
    N:  NAT router    198.18.0.1 --ust0 (TUN)-- 198.18.0.2 ustack

N is the test thread's own namespace (the `netns` fixture): it forwards, and an nftables rule
masquerades whatever leaves through ust0, so ustack sees both clients as 198.18.0.1.  NAT does
not touch timestamps, and the kernel adds a random offset to its TSval clock, so behind that one
address ustack sees unrelated clocks.  The offset is a keyed hash of (saddr, daddr) in Linux
4.11 to 6.x, and again of the whole 4-tuple since "tcp: secure_seq: add back ports to TS
offset" (165573e41f2f, backported to stable kernels).  The test does not care which: it
measures the very 4-tuples it uses later, each client binding its source address and port.

1. measure (recycle off): a connection from C1 and one from C2; each accepted connection's
   ts_recent, less ustack's clock, is that 4-tuple's offset (the kernel's TSval clock and
   ustack's are both CLOCK_MONOTONIC in ms).  The one whose offset is ahead is AHEAD, the other
   BEHIND.  The client ends each with a RST (SO_LINGER 0): neither side keeps TIME-WAIT, so the
   same 4-tuples connect again later.
2. recycle on: AHEAD connects, ustack closes first and enters TIME-WAIT, caching 198.18.0.1's
   TSval.  Every SYN of BEHIND then looks older than that and is dropped without a word
   (PAWSPassive, one per SYN that crossed the NAT): its connect() times out.  AHEAD still gets in.
3. recycle off again: the cache is still there but no longer consulted; BEHIND gets in.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ustack import Stack
from ustack.aio import run_until
from ustack.netns import entered, iproute
from ustack.wire import ip_to_int
from tests.conftest import IN_CI

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

USTACK = "198.18.0.2"
NAT = "198.18.0.1"                 # N's end of ust0: the address masquerade gives every client
PORT = 80
M32 = 0xFFFFFFFF
CONNECT_TIMEOUT = 2.5              # s: the kernel sends its SYN at 0 s and 1 s (RTO 1 s), not 3 s
MARGIN = 30_000                    # ms: the clocks must differ by more than the test lasts
# client -> (N's address on its link, the client's endpoints (source address, source port)).
# C2's spares give new offsets in the astronomically rare case that the first two are too close.
CLIENTS = {"c1": ("198.19.1.1", [("198.19.1.2", 41000)]),
           "c2": ("198.19.2.1", [("198.19.2.2", 42000), ("198.19.2.3", 42001),
                                 ("198.19.2.4", 42002)])}
_names = itertools.count()


# -- namespaces ---------------------------------------------------------------------------------
@contextmanager
def client_namespaces() -> Iterator[dict[str, int]]:
    """C1 and C2 (pyroute2 named namespaces, removed on the way out), each joined to the calling
    thread's namespace (N) by a veth pair, addressed, with a default route via N."""
    from pyroute2 import netns as pnetns
    tag = f"ust{os.getpid()}-{next(_names)}"
    names: dict[str, str] = {}
    fds: dict[str, int] = {}
    try:
        for client in CLIENTS:
            names[client] = name = f"{tag}-{client}"
            pnetns.create(name)
            fds[client] = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        for i, (client, (router_ip, endpoints)) in enumerate(CLIENTS.items(), 1):
            def router_side(ipr: Any) -> None:
                ipr.link("add", ifname=f"nat{i}", kind="veth",
                         peer={"ifname": "up0", "net_ns_fd": fds[client]})
                (index,) = ipr.link_lookup(ifname=f"nat{i}")
                ipr.addr("add", index=index, address=router_ip, prefixlen=24)
                ipr.link("set", index=index, state="up")

            def client_side(ipr: Any) -> None:
                (lo,) = ipr.link_lookup(ifname="lo")
                ipr.link("set", index=lo, state="up")
                (index,) = ipr.link_lookup(ifname="up0")
                for ip, _ in endpoints:
                    ipr.addr("add", index=index, address=ip, prefixlen=24)
                ipr.link("set", index=index, state="up")
                ipr.route("add", dst="0.0.0.0/0", gateway=router_ip)

            iproute(router_side)
            with entered(fds[client]):
                iproute(client_side)
        yield fds
    finally:
        for fd in fds.values():
            os.close(fd)
        for name in set(names.values()) & set(pnetns.listnetns()):
            pnetns.remove(name)                # the veth pairs go with them
    left = set(names.values()) & set(pnetns.listnetns())
    assert not left, f"namespaces left behind: {left}"


def nft_binary() -> str:
    """Where nft is (bash .ci/setup installs nftables); like a missing TUN device, its absence
    skips the test outside CI and fails it in CI."""
    found = shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None)
    if found is None:
        reason = "needs nft (the nftables package; bash .ci/setup installs it)"
        if IN_CI:
            pytest.fail(f"CI must run this test, but: {reason}")
        pytest.skip(reason)
    return found


def nft(ns_path: str, *args: str, script: str | None = None) -> str:
    """nft in N (through nsenter, whatever namespace the calling thread is in)."""
    out = subprocess.run(["nsenter", f"--net={ns_path}", nft_binary(), *args],
                         input=script, capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, f"nft {' '.join(args)}: {out.stderr}"
    return out.stdout


def nat_ruleset() -> str:
    counters = "\n".join(f"    counter syn_{c} {{}}" for c in CLIENTS)
    rules = "\n".join(
        f"        ip saddr {{ {', '.join(ip for ip, _ in eps)} }} "
        f"tcp flags & (syn | ack) == syn counter name syn_{c}"
        for c, (_, eps) in CLIENTS.items())
    return f"""
table ip ustnat {{
{counters}
    chain forward {{
        type filter hook forward priority filter; policy accept;
{rules}
    }}
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "ust0" masquerade
    }}
}}
"""


def syns_forwarded(ns_path: str, client: str) -> int:
    """How many SYNs from `client` N has forwarded towards ustack."""
    doc = json.loads(nft(ns_path, "-j", "list", "counter", "ip", "ustnat", f"syn_{client}"))
    (counter,) = [o["counter"] for o in doc["nftables"] if "counter" in o]
    return counter["packets"]


# -- the test -----------------------------------------------------------------------------------
def test_tw_recycle_drops_the_slower_clock_behind_a_nat(netns, run):
    nft_binary()
    netns.sysctl("net.ipv4.ip_forward", 1)
    n_path = f"/proc/{os.getpid()}/fd/{netns.fileno()}"
    nft(n_path, "-f", "-", script=nat_ruleset())
    assert "masquerade" in nft(n_path, "list", "ruleset")

    with client_namespaces() as cfds:
        async def main() -> None:
            loop = asyncio.get_running_loop()
            accepted: list[dict[str, Any]] = []
            tags = itertools.count()

            async def handler(reader, writer):
                conn = writer.transport._conn
                info = {"peer": writer.get_extra_info("peername"), "ts_ok": conn.ts_ok,
                        "ts": conn.ts_recent, "stamp": conn.ts_recent_stamp}
                info["tag"] = (await reader.readline()).strip()
                accepted.append(info)
                writer.write(b"hello " + info["tag"])
                writer.close()                               # ustack's FIN first

            def client_socket(client: str, ep: tuple[str, int]) -> socket.socket:
                """A kernel socket in the client's namespace, bound to the endpoint."""
                with entered(cfds[client]):
                    s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(ep)
                s.setblocking(False)
                return s

            async def recv_to_eof(s: socket.socket) -> bytes:
                got = bytearray()
                while chunk := await loop.sock_recv(s, 4096):
                    got += chunk
                return bytes(got)

            async def session(client: str, ep: tuple[str, int], *,
                              abort: bool = False) -> dict[str, Any]:
                """Connect, say who we are, read the reply up to ustack's FIN, then close
                (ustack ends in TIME-WAIT) or abort with a RST (no TIME-WAIT anywhere)."""
                s = client_socket(client, ep)
                tag = f"{client}:{ep[1]}:{next(tags)}".encode()
                try:
                    await asyncio.wait_for(loop.sock_connect(s, (USTACK, PORT)), 5)
                    await loop.sock_sendall(s, tag + b"\n")
                    assert await asyncio.wait_for(recv_to_eof(s), 5) == b"hello " + tag
                    if abort:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                finally:
                    s.close()
                (info,) = [a for a in accepted if a["tag"] == tag]
                assert info["peer"] == (NAT, ep[1]), "N did not masquerade (or changed the port)"
                assert info["ts_ok"], "the kernel client sent no timestamps"
                if abort:
                    assert await run_until(lambda: not mine(ep[1])), stack.connections()
                else:
                    assert await run_until(lambda: [c.state for c in mine(ep[1])]
                                           == ["TIME-WAIT"]), stack.connections()
                return info

            def mine(sport: int) -> list[Any]:
                return [c for c in stack.connections() if c.remote == (NAT, sport)]

            def offset(info: dict[str, Any]) -> int:
                """The 4-tuple's TSval offset: its TSval less ustack's clock (both in ms)."""
                return (info["ts"] - info["stamp"]) & M32

            async with Stack.tun("ust0", USTACK, f"{NAT}/24",
                                 sysctl={"ustack.tcp_tw_recycle": 0}) as stack:
                await stack.start_server(handler, port=PORT)

                # 1. measure, recycle off: whose clock is ahead?
                ep = {"c1": CLIENTS["c1"][1][0]}
                off = {"c1": offset(await session("c1", ep["c1"], abort=True))}
                for candidate in CLIENTS["c2"][1]:
                    off["c2"] = offset(await session("c2", candidate, abort=True))
                    diff = (off["c1"] - off["c2"]) & M32          # c1 ahead if below 2**31
                    if MARGIN < diff < 2**32 - MARGIN:
                        ep["c2"] = candidate
                        break
                else:
                    pytest.fail(f"every c2 endpoint's TSval offset is within {MARGIN} ms of "
                                f"c1's (last difference {diff}): impossible odds")
                ahead, behind = ("c1", "c2") if diff < 2**31 else ("c2", "c1")
                print(f"{ahead} {ep[ahead]} is ahead of {behind} {ep[behind]} by "
                      f"{min(diff, 2**32 - diff)} ms")
                assert not stack.host.peer_ts, "recycle off must cache nothing"
                assert stack.counters["TW"] == 0

                # 2. recycle on: ustack's TIME-WAIT with AHEAD caches the NAT address's TSval
                with pytest.warns(RuntimeWarning, match="NAT"):
                    stack.sysctl["ustack.tcp_tw_recycle"] = 1
                await session(ahead, ep[ahead])
                assert list(stack.host.peer_ts) == [ip_to_int(NAT)]
                cached, _ = stack.host.peer_ts[ip_to_int(NAT)]
                behind_now = (off[behind] + stack.host.now) & M32
                assert 1 < (cached - behind_now) & M32 < 2**31, \
                    "the cached TSval should be ahead of the behind client's clock"

                # BEHIND's SYNs cross the NAT and are dropped silently: connect() times out
                paws0 = stack.counters["PAWSPassive"]
                syns0 = syns_forwarded(n_path, behind)
                n_accepted = len(accepted)
                s = client_socket(behind, ep[behind])
                t0 = loop.time()
                try:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(loop.sock_connect(s, (USTACK, PORT)),
                                               CONNECT_TIMEOUT)
                finally:
                    s.close()
                assert loop.time() - t0 < CONNECT_TIMEOUT + 1
                syns = syns_forwarded(n_path, behind) - syns0
                assert syns >= 1, "no SYN of the behind client reached N's forward hook"
                assert await run_until(
                    lambda: stack.counters["PAWSPassive"] - paws0 == syns, timeout=2), \
                    (stack.counters["PAWSPassive"] - paws0, syns)
                assert len(accepted) == n_accepted, accepted[n_accepted:]
                assert not mine(ep[behind][1]), stack.connections()

                # ... while AHEAD, same NAT address, still gets in (its TIME-WAIT, 3.5 RTO
                # with recycle, is long over: the SYN meets the listener's check)
                assert await run_until(lambda: not mine(ep[ahead][1])), stack.connections()
                await session(ahead, ep[ahead])
                assert stack.counters["PAWSPassive"] - paws0 == syns

                # 3. recycle off: the cache stays, but is not consulted; BEHIND gets in
                stack.sysctl["ustack.tcp_tw_recycle"] = 0
                assert ip_to_int(NAT) in stack.host.peer_ts
                await session(behind, ep[behind])
                assert stack.counters["PAWSPassive"] - paws0 == syns

        run(main(), timeout=50)
