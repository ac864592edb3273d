"""Time in, events out: the core's notifications run when its public call ends, in order,
never in the middle of processing a segment; time comes in with the call."""
from __future__ import annotations

from tests.core.trace import ACK, PSH, RST, SYN, Recorder, Trace
from ustack.host import ListenerUser
from ustack.tcp import sock as S


class CloseOnAccept(ListenerUser):
    """An owner that accepts and closes at once (as a server that rejects a client)."""

    def __init__(self, t: Trace) -> None:
        self.t = t
        self.seen: list[tuple[str, int]] = []

    def tcp_accept(self, listener) -> None:
        conn = listener.accept()
        # the handshake's ACK was processed whole: its data is already queued
        self.seen.append((conn.state_name, conn.rcv_queued))
        conn.close()


def test_accept_runs_after_the_segment_is_processed():
    """The handshake's ACK carries data.  The owner's accept callback runs after the segment
    is processed (as Linux's accept() in another thread would), so closing there finds unread
    data and resets (RFC 2525 §2.17), like Linux; a callback run mid-segment would see an empty
    queue and send a FIN."""
    t = Trace()
    owner = CloseOnAccept(t)
    t.host.listen(80, user=owner)
    t.inject(SYN, 1000, 0, 65535, mss=1460, sack_ok=True, wscale=7)
    synack = t.expect(flags=SYN | ACK)
    assert not t.host.events
    t.inject(ACK | PSH, 1001, synack.seq + 1, 502, payload=b"hello")
    assert owner.seen == [("ESTAB", 5)]
    t.expect_many({"flags": ACK, "ack": 1006}, {"flags": RST | ACK})   # quick ACK, then reset
    assert t.mib["TcpExtTCPAbortOnClose"] == 1
    assert not t.host.events


def test_callbacks_may_call_back_into_the_core():
    """A data callback that writes (an echo) runs after the segment; its reply leaves in
    order, and events it causes are run by the same drain."""
    t = Trace()
    conn, rec, _ = t.passive_open()

    class Echo(Recorder):
        def tcp_data(self, c) -> None:
            data = c.recv()
            self.events.append(f"data:{data!r}")
            c.send(data.upper())
    echo = Echo()
    conn.user = echo
    t.inject(ACK | PSH, 1001, conn.snd_nxt, 502, payload=b"abc", ts_val=102,
             ts_ecr=conn.ts_recent and 0)
    out = t.output()
    assert [bytes(s.payload) for s in out if s.payload] == [b"ABC"]
    assert echo.events == ["data:b'abc'"]


def test_time_comes_in_with_the_call():
    """receive(packet, now) runs the timers due before `now` first; a socket call's `now=`
    does the same."""
    t = Trace()
    rec = Recorder()
    conn = t.host.connect("198.18.0.1", 80, user=rec)
    syn = t.expect(flags=SYN)
    # 1 s later (the initial RTO) the SYN is sent again: receive() at that time runs the timer
    # before the (unrelated) packet it carries
    t.host.receive(b"\x00" * 10, now=t.now + 1000)
    again = t.expect(flags=SYN)
    assert again.seq == syn.seq
    s = S.Socket(t.host)
    s.setsockopt(S.SOL_SOCKET, S.SO_REUSEADDR, 1, now=t.now + 2000)
    t.expect(flags=SYN)             # 2 s after the first retransmission: the next one
    assert conn.state_name == "SYN-SENT"
