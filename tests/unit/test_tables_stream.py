"""mta.tables.stream without sockets: the line decoder, host:port parsing and RequestStream's rules."""

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from mta.tables import TableError, TableTemporaryError
from mta.tables.stream import (
    FrameError, LineDecoder, ProtocolError, ReplyError, RequestStream, parseHostPort,
)

# -- the line decoder and host:port ------------------------------------------------------


def test_lines_split_across_reads_and_several_in_one():
    d = LineDecoder(10)
    assert d.feed(b"ab") == []
    assert d.feed(b"c\nde\n\nf") == [b"abc", b"de", b""]
    assert d.feed(b"\n") == [b"f"]


def test_overlong_line_refused_before_its_newline():
    d = LineDecoder(5)
    assert d.feed(b"1234") == []
    with pytest.raises(FrameError, match="longer than 5"):
        d.feed(b"5")


def test_line_of_exactly_the_limit_with_its_newline():
    assert LineDecoder(5).feed(b"1234\n") == [b"1234"]
    with pytest.raises(FrameError):
        LineDecoder(5).feed(b"12345\n")


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:25", ("127.0.0.1", 25)), ("[::1]:1", ("::1", 1)), ("map.example:65535", ("map.example", 65535)),
])
def test_parseHostPort(text, expected):
    assert parseHostPort("t:x", text, "needs host:port") == expected


@pytest.mark.parametrize("text, message", [
    ("25", "t:x: needs host:port"), (":25", "t:x: needs host:port"), ("h:0", "t:x: bad port"),
    ("h:x\n", "t:x: bad port 'x?'"), ("[::1:25", "t:x: bad host"), ("[1.2.3.4]:25", "t:x: bad IPv6"),
    ("h;rm:25", "t:x: bad host"),
])
def test_parseHostPort_errors(text, message):
    with pytest.raises(TableError) as info:
        parseHostPort("t:x", text, "needs host:port")
    assert str(info.value).startswith(message)


# -- RequestStream with a toy codec: "ok V", "miss", "fail", "close", "bad" ---------------


def toyReply(line):
    word, _, rest = line.partition(b" ")
    if word == b"ok":
        return rest.decode()
    if word == b"miss":
        return None
    if word == b"fail":
        raise ReplyError("server says no")
    if word == b"close":
        raise ReplyError("server says later", close=True)
    raise ProtocolError("unknown reply")


class Harness:
    def __init__(self, kind="inet", address=("127.0.0.1", 7), **limits):
        self.reactor = MemoryReactorClock()
        settings = dict(timeout=30.0, maxQueue=3)
        settings.update(limits)
        self.stream = RequestStream("toy:x", self.reactor, kind, address, decoder=lambda: LineDecoder(100),
                                    parseReply=toyReply, **settings)
        self.accepted = 0

    def clients(self):
        return self.reactor.tcpClients or self.reactor.unixClients

    def accept(self):
        factory = self.clients()[self.accepted][-3 if self.reactor.tcpClients else 1]
        self.accepted += 1
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def ask(self, key):
        out = []
        self.stream.request(key, key.encode() + b"\n").addBoth(out.append)
        return out

    def reply(self, wire):
        self.protocol.dataReceived(wire)


def failed(out):
    assert len(out) == 1 and isinstance(out[0], Failure), out
    assert out[0].check(TableTemporaryError)
    return str(out[0].value)


def test_values_and_not_found_in_order_on_one_connection():
    h = Harness()
    first, second = h.ask("a"), h.ask("b")
    h.accept()
    assert h.transport.value() == b"a\n"
    h.reply(b"ok A\n")
    assert h.transport.value() == b"a\nb\n"
    h.reply(b"miss\n")
    assert (first, second) == (["A"], [None])
    assert len(h.reactor.tcpClients) == 1 and not h.transport.disconnecting


def test_reply_error_fails_the_request_and_keeps_the_connection():
    h = Harness()
    out = h.ask("a")
    h.accept()
    h.reply(b"fail\n")
    assert failed(out) == "toy:x: server says no"
    assert not h.transport.disconnecting
    again = h.ask("b")
    h.reply(b"ok B\n")
    assert again == ["B"]


def test_reply_error_with_close_drops_the_connection_and_the_next_reconnects():
    h = Harness()
    out = h.ask("a")
    h.accept()
    h.reply(b"close\n")
    assert "server says later" in failed(out)
    assert h.transport.disconnecting
    again = h.ask("b")
    h.accept()
    h.reply(b"ok B\n")
    assert again == ["B"]


@pytest.mark.parametrize("wire, why", [(b"garbage\n", "unknown reply"), (b"x" * 101, "longer than 100")])
def test_protocol_and_frame_errors_fail_and_close(wire, why):
    h = Harness()
    out, waiting = h.ask("a"), h.ask("b")
    h.accept()
    h.reply(wire)
    assert why in failed(out)
    assert h.transport.disconnecting
    assert waiting == []  # still queued: sent on the next connection
    h.accept()
    assert h.transport.value() == b"b\n"


def test_queue_limit_refuses_without_queueing():
    h = Harness(maxQueue=2)
    outs = [h.ask(k) for k in ("a", "b")]
    refused = h.ask("c")
    assert "more than 2 lookups waiting" in failed(refused)
    h.accept()
    h.reply(b"ok A\nok B\n")
    assert outs == [["A"], ["B"]]


def test_without_maxIdle_an_idle_connection_stays_open():
    h = Harness()
    out = h.ask("a")
    h.accept()
    h.reply(b"ok A\n")
    assert out == ["A"]
    assert h.reactor.getDelayedCalls() == []  # no idle timer, the request's timer cancelled
    h.reactor.advance(3600)
    assert not h.transport.disconnecting


def test_maxIdle_and_maxTtl_close():
    h = Harness(maxIdle=5.0, maxTtl=20.0)
    h.ask("a")
    h.accept()
    h.reply(b"ok A\n")
    h.reactor.advance(5)
    assert h.transport.disconnecting
    h.ask("b")
    h.accept()
    h.reactor.advance(25)
    h.reply(b"ok B\n")  # older than maxTtl: closed as soon as it is idle
    assert h.transport.disconnecting


def test_lost_twice_fails_and_unix_endpoint_is_used():
    h = Harness(kind="unix", address="/run/toy.sock")
    out = h.ask("a")
    assert h.reactor.unixClients[0][0] == "/run/toy.sock"
    h.accept()
    h.protocol.connectionLost(Failure(ConnectionDone()))
    h.accept()
    assert h.transport.value() == b"a\n"
    h.protocol.connectionLost(Failure(ConnectionDone()))
    assert "connection lost" in failed(out)


def test_close_fails_the_request_out_and_those_waiting():
    h = Harness()
    outs = [h.ask(k) for k in ("a", "b")]
    h.accept()
    h.stream.close()
    assert all("table closed" in failed(o) for o in outs)
    assert h.transport.disconnecting
