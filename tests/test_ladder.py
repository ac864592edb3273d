"""ustack.ladder: a real connection's life (two in-memory stacks) drawn as an SVG ladder."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from ustack import Stack
from ustack.ladder import LEFT_X, RIGHT_X, connections, ladder_from_pcap, ladder_html, \
    ladder_svg, parse_conn, parse_segments
from ustack.pcap import PcapWriter
from ustack.wire import ACK, FIN, SYN, build_tcp, ip_to_int

SVG = "{http://www.w3.org/2000/svg}"
REPO = Path(__file__).resolve().parent.parent


def payload_len(packet: bytes) -> int:
    ihl = (packet[0] & 15) * 4
    return len(packet) - ihl - (packet[ihl + 12] >> 4) * 4


def capture_life(drop_first_data: bool = True) -> tuple[list[tuple[float, bytes, str]],
                                                        list[bytes]]:
    """Client 198.18.0.1 talks to an echo server on 198.18.0.2:7 and closes first, so it ends
    in TIME-WAIT; the wire loses the client's first data segment once, so it is retransmitted.
    Returns every packet sent (ts, packet, direction) and the lost ones."""
    a, b, wire = Stack.memory_pair()
    trace: list[tuple[float, bytes, str]] = []
    lost: list[bytes] = []
    wire.tap(lambda direction, packet: trace.append((time.time(), packet, direction)))

    def lose(direction: str, packet: bytes) -> bool:
        if drop_first_data and direction == "a->b" and payload_len(packet) and not lost:
            lost.append(packet)
            return True
        return False
    wire.drop_if(lose)

    async def main() -> None:
        async def echo(reader, writer):
            while data := await reader.read(1000):
                writer.write(data)
            writer.close()

        async with a, b:
            await b.start_server(echo, port=7)
            reader, writer = await a.open_connection("198.18.0.2", 7)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.write_eof()   # the client closes first
            assert await reader.read() == b""
            writer.close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if not b.host.conns and not a.host.conns:
                    break
            assert [c.state for c in a.connections()] == ["TIME-WAIT"]
    asyncio.run(main())
    return trace, lost


@pytest.fixture(scope="module")
def life() -> tuple[list[tuple[float, bytes, str]], list[bytes]]:
    return capture_life()


def state_texts(root: ET.Element, left: bool) -> list[str]:
    """The states written beside one side's line, top to bottom (one label may hold several
    changes at one point, "FIN-WAIT-2 \u2192 TIME-WAIT")."""
    out = []
    for text in root.iter(SVG + "text"):
        if text.get("class") == "state":
            x = float(text.get("x"))
            if (x < LEFT_X) == left and (x > RIGHT_X) != left:
                out.extend(text.text.split(" \u2192 "))
    return out


def test_ladder_of_a_whole_life(life) -> None:
    trace, lost = life
    svg = ladder_svg(trace)
    root = ET.fromstring(svg.encode())
    assert root.tag == SVG + "svg"
    segments = [g for g in root.iter(SVG + "g") if "segment" in g.get("class", "").split()]
    assert len(segments) == len(trace)   # one arrow per packet sent
    assert all(len(g.findall(SVG + "line")) == 1 for g in segments)
    # the endpoints, client (the SYN's sender) on the left
    endpoints = [t.text for t in root.iter(SVG + "text") if t.get("class") == "endpoint"]
    assert endpoints[0].startswith("198.18.0.1:") and endpoints[1] == "198.18.0.2:7"
    # the states of each side, in the order they were passed through
    client = state_texts(root, left=True)
    server = state_texts(root, left=False)
    assert client == ["CLOSED", "SYN-SENT", "ESTABLISHED", "FIN-WAIT-1",
                      "FIN-WAIT-2", "TIME-WAIT"], client
    assert server == ["LISTEN", "SYN-RECV", "ESTABLISHED", "CLOSE-WAIT", "LAST-ACK",
                      "CLOSED"], server
    # the lost segment and its retransmission: the second is marked, the first is not
    retrans = [g for g in segments if "retransmission" in g.get("class").split()]
    assert len(retrans) == 1
    lost_seq = int.from_bytes(lost[0][24:28], "big")
    assert int(retrans[0].get("data-seq")) == lost_seq
    first = [g for g in segments if int(g.get("data-seq")) == lost_seq]
    assert first[0] is not retrans[0] and "retransmission" not in first[0].get("class")
    assert "(retransmission)" in "".join(retrans[0].itertext())
    # TIME-WAIT as a band on the client's line only
    bands = [r for r in root.iter(SVG + "rect") if r.get("class") == "timewait-band"]
    assert len(bands) == 1
    x = float(bands[0].get("x")) + float(bands[0].get("width")) / 2
    assert x == LEFT_X and float(bands[0].get("height")) > 0
    # relative sequence numbers: the handshake is seq=0, the data starts at 1
    labels = ["".join(g.itertext()).strip() for g in segments]
    assert labels[0].startswith("SYN") and "seq=0" in labels[0]
    assert "seq=1" in labels[2] and "ack=1" in labels[2]
    assert any("len=4" in label for label in labels)


def test_png_rendering_is_possible(life, tmp_path) -> None:
    """rsvg-convert (librsvg) renders it, when installed: the SVG is valid for a renderer."""
    converter = "/usr/bin/rsvg-convert"
    if not os.path.exists(converter):
        pytest.skip("rsvg-convert is not installed (apt-get install librsvg2-bin)")
    svg = tmp_path / "life.svg"
    svg.write_text(ladder_svg(life[0]))
    png = tmp_path / "life.png"
    subprocess.run([converter, str(svg), "-o", str(png)], check=True, timeout=30)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simultaneous_close_is_closing_then_time_wait_on_both_sides() -> None:
    a, b = ip_to_int("198.18.0.1"), ip_to_int("198.18.0.2")
    packets = [
        build_tcp(a, b, 5000, 80, 100, 0, SYN, 1000),
        build_tcp(b, a, 80, 5000, 900, 101, SYN | ACK, 1000),
        build_tcp(a, b, 5000, 80, 101, 901, ACK, 1000),
        build_tcp(a, b, 5000, 80, 101, 901, FIN | ACK, 1000),   # the FINs cross
        build_tcp(b, a, 80, 5000, 901, 101, FIN | ACK, 1000),
        build_tcp(a, b, 5000, 80, 102, 902, ACK, 1000),
        build_tcp(b, a, 80, 5000, 902, 102, ACK, 1000),
    ]
    root = ET.fromstring(ladder_svg([(i * 0.001, p) for i, p in enumerate(packets)]).encode())
    for left in (True, False):
        states = state_texts(root, left)
        assert states[-2:] == ["CLOSING", "TIME-WAIT"], states
    assert len([r for r in root.iter(SVG + "rect") if r.get("class") == "timewait-band"]) == 2


def test_pcap_file_connection_choice_and_html(life, tmp_path) -> None:
    trace, _ = life
    other, _ = capture_life(drop_first_data=False)   # a second connection, other port
    path = tmp_path / "two.pcap"
    with PcapWriter(path) as writer:
        for ts, packet, _direction in sorted(trace + other, key=lambda e: e[0]):
            writer.write(packet, ts)
    conns = connections(parse_segments(trace + other))
    assert len(conns) == 2
    wanted = conns[1]
    assert parse_conn(str(wanted)) == wanted
    out = tmp_path / "second.svg"
    assert ladder_from_pcap(path, out, conn=str(wanted)) == wanted
    root = ET.fromstring(out.read_bytes())
    segments = [g for g in root.iter(SVG + "g") if "segment" in g.get("class", "").split()]
    assert len(segments) == len(other)
    assert not [g for g in segments if "retransmission" in g.get("class")]
    # reversed endpoints name the same connection; an unknown one is an error
    assert ladder_from_pcap(path, out, conn=f"{wanted.b[0]}:{wanted.b[1]}-"
                                            f"{wanted.a[0]}:{wanted.a[1]}") == wanted
    with pytest.raises(ValueError, match="no segments of 198.18.0.9:1-198.18.0.2:7"):
        ladder_from_pcap(path, out, conn="198.18.0.9:1-198.18.0.2:7")
    page = tmp_path / "page.html"
    ladder_from_pcap(path, page)
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text and "TIME-WAIT" in text
    assert "<svg" in ladder_html(trace)


def test_cli_ladder(life, tmp_path) -> None:
    path = tmp_path / "life.pcap"
    with PcapWriter(path) as writer:
        for ts, packet, _direction in life[0]:
            writer.write(packet, ts)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "ustack", "ladder", str(path), "-o",
                        str(tmp_path / "out.svg")], capture_output=True, text=True, env=env,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    root = ET.fromstring((tmp_path / "out.svg").read_bytes())
    assert any(t.get("class") == "state" and t.text.endswith("TIME-WAIT")
               for t in root.iter(SVG + "text"))
    # default output name next to the capture
    r = subprocess.run([sys.executable, "-m", "ustack", "ladder", str(path)],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and (tmp_path / "life.svg").exists()
    for bad in (["--conn", "nonsense"], ["--conn", "198.18.0.9:1-198.18.0.2:7"]):
        r = subprocess.run([sys.executable, "-m", "ustack", "ladder", str(path), *bad],
                           capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "ustack", "ladder", str(tmp_path / "none.pcap")],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 1 and "No such file" in r.stderr and "Traceback" not in r.stderr



def test_event_log_records_a_life_and_draws_its_ladder() -> None:
    """ustack.event_log keeps each connection's states, timers, retransmissions and segments;
    the log alone draws the ladder (no capture), TIME-WAIT band included."""
    from ustack.ladder import segments_from_log

    a, b, wire = Stack.memory_pair(sysctl={"ustack.event_log": 1000})
    lost: list[bytes] = []

    def lose_first_data(direction: str, packet: bytes) -> bool:
        if direction == "a->b" and packet.endswith(b"hello") and not lost:
            lost.append(packet)
            return True
        return False
    wire.drop_if(lose_first_data)

    async def main() -> tuple[int, list, list]:
        async def echo(reader, writer):
            writer.write(await reader.read(100))
            await writer.drain()
            writer.close()
        async with a, b:
            await b.start_server(echo, port=7)
            reader, writer = await a.open_connection("198.18.0.2", 7)
            lport = writer.get_extra_info("sockname")[1]
            writer.write(b"hello")
            assert await reader.read() == b"hello"
            writer.close()
            for _ in range(100):
                await asyncio.sleep(0.01)
                if any(c.state == "TIME-WAIT" for c in a.connections() + b.connections()):
                    break
            return (lport, a.event_log(lport, ("198.18.0.2", 7)),
                    b.event_log(7, ("198.18.0.1", lport)))

    lport, client, server = asyncio.run(main())
    assert lost, "the data segment was not lost"
    # the client lost its data: the timer that fired and the retransmission are in its log
    kinds = [e.kind for e in client]
    assert ("timer", ("rto",)) in [(e.kind, e.detail) for e in client] or \
        ("timer", ("loss-probe",)) in [(e.kind, e.detail) for e in client], client
    assert any(e.kind == "retransmit" and e.detail[1] == 5 for e in client), client
    # the server closed first (the echo handler): it went through TIME-WAIT
    states = [e.detail[1] for e in server if e.kind == "state"]
    assert states[:2] == ["SYN-RECV", "ESTAB"], states
    assert "FIN-WAIT-1" in states and any(e.kind == "timewait" and e.detail[0] == "TIME-WAIT"
                                          for e in server), server
    assert kinds.count("in") >= 3 and kinds.count("out") >= 3
    times = [e.t for e in client]
    assert times == sorted(times)
    svg = ladder_svg(segments_from_log(server, ("198.18.0.2", 7), ("198.18.0.1", lport)))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "TIME-WAIT" in svg
    # no log unless asked for
    quiet, _, _ = Stack.memory_pair()
    assert quiet.host.sysctl["ustack.event_log"] == 0
    assert quiet.host.event_log(1, "198.18.0.2", 7) == []
