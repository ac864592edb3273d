"""ustack and the kernel through our own impairing link (ustack.link.impair): loss, reordering,
duplication, corruption and all of them at once, in both directions.

Unit tests of the Impairment model and of the Relay (on memory wires) need nothing; the rest
need root and run in private namespaces:

- ustack on an ImpairedLink over a TUN device in the test's namespace (kernel 198.18.0.1,
  ustack 198.18.0.2): 1 MiB kernel -> ustack and ustack -> kernel, byte-exact by SHA-256, and
  every corrupted copy the link handed to ustack counted as TcpInCsumErrors;
- two kernels through a Relay between two TUN devices in two namespaces (KernelPair), the set-up
  bench/bench_loss.py uses as its reference.

Nothing asserts on time: delays and loss only make transfers slower, and each transfer has a
bound after which it fails with the relay's counters in the message.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import struct

import pytest

from tests.interop.kernel import kernel_mib
from ustack.link import MemoryWire
from ustack.link.impair import (Impairment, KernelPair, Relay, corrupt_tcp, impaired_tun_stack,
                                symmetric)
from ustack.wire import build_ipv4, build_tcp, ip_to_int, parse

KERNEL = "198.18.0.1"
USTACK = "198.18.0.2"
SIZE = 1 << 20
TRANSFER_LIMIT = 25.0  # s: a transfer that takes longer fails (with the relay's counters)

CASES = {
    "loss1": dict(loss=0.01),
    "loss5": dict(loss=0.05),
    "reorder25": dict(reorder=0.25),
    "dup5": dict(duplicate=0.05),
    "corrupt1": dict(corrupt=0.01),
    "all": dict(loss=0.01, reorder=0.25, duplicate=0.05, corrupt=0.01, delay_ms=1.0,
                jitter_ms=0.5),
}
# Every case on uvloop; the combined one on the standard asyncio loop as well.
MATRIX = [pytest.param(case, "uvloop", id=f"{case}-uvloop") for case in CASES] + [
    pytest.param("all", "asyncio", id="all-asyncio")]


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the model, pure ---------------------------------------------------------------------------
def tcp_packet(payload: bytes = b"", seq: int = 1000) -> bytes:
    return build_tcp(ip_to_int(KERNEL), ip_to_int(USTACK), 40000, 7, seq, 1, 0x18, 65535,
                     payload, ts_val=1, ts_ecr=2)


def test_rates_match_the_probabilities():
    n = 20_000
    packet = tcp_packet(b"x" * 100)
    for name, p, stat in (("loss", 0.05, "dropped"), ("loss", 0.01, "dropped"),
                          ("duplicate", 0.05, "duplicated"), ("corrupt", 0.01, "corrupted"),
                          ("reorder", 0.25, "reordered")):
        imp = Impairment(seed=7, **{name: p})
        for _ in range(n):
            imp.apply(packet)
        assert imp.stats["packets"] == n
        assert abs(imp.stats[stat] / n - p) < max(0.2 * p, 0.004), (name, p, imp.stats)
    imp = Impairment(seed=3, **CASES["all"])
    outs = [imp.apply(packet) for _ in range(n)]
    s = imp.stats
    assert s["delivered"] == sum(len(o) for o in outs) == n - s["dropped"] + s["duplicated"]
    assert sum(1 for o in outs if not o) == s["dropped"]
    assert s["delayed"] == sum(1 for o in outs for d, _ in o if d > 0)
    assert s["corrupted"] == sum(1 for o in outs for _, q in o if q != packet)
    for stat, p in (("dropped", 0.01), ("duplicated", 0.05)):
        assert abs(s[stat] / n - p) < 0.2 * p, (stat, s)


def test_seeded_and_independent_per_direction():
    packets = [tcp_packet(os.urandom(50), seq=i) for i in range(2000)]

    def run(imp: Impairment) -> list:
        return [imp.apply(p) for p in packets]
    assert run(Impairment(seed=5, **CASES["all"])) == run(Impairment(seed=5, **CASES["all"]))
    a, b = symmetric(5, **CASES["all"])
    assert run(a) != run(b)          # two directions, two random streams
    assert run(Impairment()) == [[(0.0, p)] for p in packets]   # no impairment: untouched


def test_reorder_really_reorders():
    """Packets leave every 0.05 ms; delivered in order of arrival time, some held back ones are
    overtaken by later ones, and those not held keep their relative order."""
    imp = Impairment(reorder=0.25, seed=11)
    arrivals = []
    held = set()
    for i in range(2000):
        (delay, _), = imp.apply(tcp_packet(seq=i))
        if delay:
            held.add(i)
            assert 2.0 <= delay <= 8.0
        arrivals.append((i * 0.05 + delay, i))
    order = [i for _, i in sorted(arrivals)]
    assert order != sorted(order)
    assert abs(len(held) / 2000 - 0.25) < 0.05
    not_held = [i for i in order if i not in held]
    assert not_held == sorted(not_held)
    overtaken = {i for pos, i in enumerate(order) if any(j < i for j in order[pos + 1:pos + 400])}
    assert overtaken  # some later packet arrived before an earlier one ...
    assert held >= {j for pos, j in enumerate(order) if any(k > j for k in order[:pos])}
    # ... and only held-back packets arrive after a later one


def test_jitter_spreads_delays_around_the_mean():
    imp = Impairment(delay_ms=5.0, jitter_ms=2.0, seed=2)
    delays = [imp.apply(tcp_packet())[0][0] for _ in range(5000)]
    assert all(3.0 <= d <= 7.0 for d in delays)
    assert abs(sum(delays) / len(delays) - 5.0) < 0.1
    assert len({round(d, 3) for d in delays}) > 1000
    assert imp.stats["delayed"] == 5000


@pytest.mark.parametrize("payload", [b"", b"y" * 1, b"z" * 1400], ids=["pure-ack", "1-byte",
                                                                      "full"])
def test_corruption_breaks_the_tcp_checksum(payload):
    rng = random.Random(1)
    packet = tcp_packet(payload)
    ihl = (packet[0] & 0x0F) * 4
    counters: dict[str, int] = {}
    assert parse(packet, counters) is not None
    assert counters.get("TcpInCsumErrors", 0) == 0
    for trial in range(2000):
        bad = corrupt_tcp(packet, rng)
        assert bad is not None and len(bad) == len(packet)
        assert bad[:ihl] == packet[:ihl]                       # IP header untouched
        doff = (packet[ihl + 12] >> 4) * 4
        assert bad[ihl + 12] == packet[ihl + 12]                        # data offset untouched
        assert bad[ihl + 20:ihl + doff] == packet[ihl + 20:ihl + doff]  # options untouched
        assert sum(x != y for x, y in zip(bad, packet)) == 1   # exactly one byte flipped
        assert parse(bad, counters) is None, bad.hex()
        assert counters["TcpInCsumErrors"] == trial + 1
    imp = Impairment(corrupt=1.0, seed=4)
    (_, bad), = imp.apply(packet)
    assert bad != packet and imp.stats["corrupted"] == 1


def test_only_tcp_is_corrupted():
    rng = random.Random(2)
    src, dst = ip_to_int(KERNEL), ip_to_int(USTACK)
    udp = build_ipv4(src, dst, 17, struct.pack("!HHHH", 5, 6, 12, 0) + b"abcd")
    icmp = build_ipv4(src, dst, 1, b"\x08\x00\x00\x00" + b"ping")
    fragment = bytearray(tcp_packet(b"q" * 64))
    fragment[6] |= 0x20  # MF
    for packet in (udp, icmp, bytes(fragment), b"\x60" + bytes(39), b"\x45\x00"):
        assert corrupt_tcp(packet, rng) is None
    imp = Impairment(corrupt=1.0, seed=1)
    assert imp.apply(udp) == [(0.0, udp)]
    assert imp.stats["corrupted"] == 0


def test_bad_parameters_refused():
    for kw in (dict(loss=1.5), dict(duplicate=-0.1), dict(delay_ms=-1), dict(reorder_ms=(5, 1)),
               dict(reorder_ms=(0, 1))):
        with pytest.raises(ValueError):
            Impairment(**kw)


def test_relay_on_memory_wires_delivers_held_and_duplicate_copies():
    """A Relay between two memory wires: sender -- wire1 -- relay -- wire2 -- receiver."""
    async def main():
        loop = asyncio.get_running_loop()
        w1, w2 = MemoryWire(), MemoryWire()
        imp = Impairment(loss=0.05, duplicate=0.05, reorder=0.25, reorder_ms=(1, 3), seed=9)
        relay = Relay(w1.b, w2.a, a_to_b=imp)
        got: list[bytes] = []
        w1.a.start(loop, lambda pkts: None)
        w2.b.start(loop, got.extend)
        relay.start()
        sent = [i.to_bytes(4, "big") for i in range(3000)]
        for k in range(0, len(sent), 50):
            w1.a.send_many(sent[k:k + 50])
            await asyncio.sleep(0)
        assert await relay.drained()
        await asyncio.sleep(0)  # the memory wire hands over on the next iteration
        s = relay.stats["a->b"]
        assert s["held"] == 0 and s["held_peak"] > 0
        assert len(got) == s["delivered"] == 3000 - s["dropped"] + s["duplicated"]
        assert len(set(got)) == 3000 - s["dropped"]
        assert got != sorted(got)
        assert relay.stats["b->a"]["packets"] == 0
        relay.close()
        w1.a.close()
        w2.b.close()
    asyncio.run(asyncio.wait_for(main(), 20))


# -- ustack on an impaired TUN link --------------------------------------------------------------
def limit_message(what: str, stats: dict) -> str:
    return f"{what} did not finish within {TRANSFER_LIMIT} s; link: {stats}"


async def bounded(coro, what: str, stats) -> object:
    try:
        return await asyncio.wait_for(coro, TRANSFER_LIMIT)
    except asyncio.TimeoutError:
        pytest.fail(limit_message(what, stats()))


def check_corruption_counted(stack) -> None:
    """Every corrupted copy handed to ustack was counted as a checksum error (and dropped)."""
    corrupted = stack.link.impair_stats["in"]["corrupted"]
    assert stack.counters["TcpInCsumErrors"] == corrupted
    assert stack.counters["TcpInErrs"] >= corrupted


@pytest.mark.root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, loop_kind", MATRIX)
def test_kernel_to_ustack(netns, run, case):
    to_kernel, from_kernel = symmetric(100, **CASES[case])
    data = os.urandom(SIZE)

    async def main():
        loop = asyncio.get_running_loop()
        got = bytearray()
        done = loop.create_future()

        async def sink(reader, writer):
            while chunk := await reader.read(1 << 16):
                got.extend(chunk)
            writer.close()
            done.set_result(None)

        stack = impaired_tun_stack("ust0", USTACK, f"{KERNEL}/24", to_kernel=to_kernel,
                                   from_kernel=from_kernel)
        async with stack:
            await stack.start_server(sink, port=7)
            s = socket.socket()
            s.setblocking(False)
            try:
                async def send():
                    await loop.sock_connect(s, (USTACK, 7))
                    await loop.sock_sendall(s, data)
                    s.shutdown(socket.SHUT_WR)
                    await done
                await bounded(send(), f"kernel -> ustack under {case}",
                              lambda: stack.link.impair_stats)
            finally:
                s.close()
            assert len(got) == len(data)
            assert sha(got) == sha(data)
            await drained(stack.link)
            check_corruption_counted(stack)
            expect_impairment(stack.link.impair_stats, case)
    run(main())


@pytest.mark.root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case, loop_kind", MATRIX)
def test_ustack_to_kernel(netns, run, case):
    to_kernel, from_kernel = symmetric(200, **CASES[case])
    data = os.urandom(SIZE)

    async def main():
        loop = asyncio.get_running_loop()
        stack = impaired_tun_stack("ust0", USTACK, f"{KERNEL}/24", to_kernel=to_kernel,
                                   from_kernel=from_kernel)
        async with stack:
            ls = socket.socket()  # after the stack: the kernel's address is on its device
            ls.bind((KERNEL, 9000))
            ls.listen()
            ls.setblocking(False)
            got = bytearray()
            try:
                async def transfer():
                    reader, writer = await stack.open_connection(KERNEL, 9000)
                    ks, _ = await loop.sock_accept(ls)
                    ks.setblocking(False)
                    try:
                        async def send():
                            writer.write(data)
                            await writer.drain()
                            writer.close()
                        task = asyncio.create_task(send())
                        while chunk := await loop.sock_recv(ks, 1 << 18):
                            got.extend(chunk)
                        await task
                    finally:
                        ks.close()
                await bounded(transfer(), f"ustack -> kernel under {case}",
                              lambda: stack.link.impair_stats)
            finally:
                ls.close()
            assert len(got) == len(data)
            assert sha(got) == sha(data)
            await drained(stack.link)
            check_corruption_counted(stack)
            expect_impairment(stack.link.impair_stats, case)
    run(main())


async def drained(link) -> None:
    """Wait until the link holds no delayed copy (they are either delivered or never will be)."""
    for _ in range(2000):
        if not link.held:
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"the link still holds {link.held} copies")


def expect_impairment(stats: dict, case: str) -> None:
    """The case's impairments really happened (over the data direction and the ACKs together)."""
    total = {k: sum(d[k] for d in stats.values()) for k in next(iter(stats.values()))}
    params = CASES[case]
    for param, stat in (("loss", "dropped"), ("duplicate", "duplicated"),
                        ("corrupt", "corrupted"), ("reorder", "reordered")):
        if params.get(param):
            assert total[stat] > 0, (param, stats)
        else:
            assert total[stat] == 0, (param, stats)


# -- two kernels through the relay ---------------------------------------------------------------
@pytest.mark.root
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["loss5", "all"])
def test_kernel_to_kernel_through_the_relay(case):
    """Namespace A's kernel sends 1 MiB to B's and B's sends 1 MiB back on the same
    connection; both byte-exact; each kernel counted every corrupted copy it was given."""
    a_to_b, b_to_a = symmetric(300, **CASES[case])
    up, down = os.urandom(SIZE), os.urandom(SIZE)

    async def main():
        loop = asyncio.get_running_loop()
        pair = KernelPair(a_to_b=a_to_b, b_to_a=b_to_a)
        async with pair:
            mib0 = {side: _mib(pair, side) for side in "ab"}
            ls = pair.socket("b")
            ls.bind((pair.b_address, 5001))
            ls.listen()
            c = pair.socket("a")

            async def exchange(s: socket.socket, out: bytes) -> bytes:
                task = asyncio.create_task(loop.sock_sendall(s, out))
                got = bytearray()
                while len(got) < SIZE:
                    chunk = await loop.sock_recv(s, 1 << 18)
                    assert chunk, "closed early"
                    got += chunk
                await task
                return bytes(got)

            async def both() -> tuple[bytes, bytes]:
                await loop.sock_connect(c, (pair.b_address, 5001))
                ks, _ = await loop.sock_accept(ls)
                ks.setblocking(False)
                try:
                    return tuple(await asyncio.gather(exchange(c, up), exchange(ks, down)))
                finally:
                    ks.close()
            try:
                at_a, at_b = await bounded(both(), f"kernel <-> kernel under {case}",
                                           lambda: pair.relay.stats)
            finally:
                c.close()
                ls.close()
            assert sha(at_b) == sha(up) and sha(at_a) == sha(down)
            assert await pair.relay.drained()
            stats = pair.relay.stats
            for side, direction in (("b", "a->b"), ("a", "b->a")):
                counted = _mib(pair, side)["TcpInCsumErrors"] - mib0[side]["TcpInCsumErrors"]
                assert counted == stats[direction]["corrupted"], (side, stats)
            expect_impairment(stats, case)
    import uvloop
    uvloop.run(main())


def _mib(pair: KernelPair, side: str) -> dict[str, int]:
    with pair.entered(side):
        return kernel_mib()
