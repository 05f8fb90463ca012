"""mta.tables.tcp without sockets: the %XX codec, replies, timeouts, reconnects, queueing."""

import pytest
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables, TableTemporaryError
from mta.tables.tcp import (
    MAX_KEY, MAX_REPLY, TIMEOUT, TcpReplyError, TcpTable, encodeRequest, hexQuote, hexUnquote, parseAddress,
    parseReply,
)

# -- the codec (dict_tcp's hex_quote / hex_unquote) ------------------------------------


def test_hexQuote_leaves_printable_ascii_and_encodes_the_rest():
    assert hexQuote(b"user@example.com") == b"user@example.com"
    assert hexQuote(b"a b\tc%d") == b"a%20b%09c%25d"
    assert hexQuote(b"\x00\r\n\x7f") == b"%00%0D%0A%7F"
    assert hexQuote("é".encode()) == b"%C3%A9"


def test_request_line_cannot_be_split_by_a_key():
    # A key holding a newline and a second command stays one request line.
    line = encodeRequest("a\nget b")
    assert line == b"get a%0Aget%20b\n"
    assert line.count(b"\n") == 1


def test_hexUnquote_any_case_and_unencoded_text():
    assert hexUnquote(b"a%2cb%2Cc") == b"a,b,c"
    assert hexUnquote(b"plain:text") == b"plain:text"
    assert hexUnquote(b"%c3%A9") == "é".encode()


@pytest.mark.parametrize("text", [b"%", b"%4", b"%4g", b"%G0", b"abc%"])
def test_hexUnquote_bad(text):
    with pytest.raises(TcpReplyError):
        hexUnquote(text)


def test_round_trip_every_byte():
    raw = bytes(range(256))
    assert hexUnquote(hexQuote(raw)) == raw


@pytest.mark.parametrize("line, expected", [
    (b"200 value", ("2", b"value")),
    (b"200 smtp:%5Bmx%5D", ("2", b"smtp:[mx]")),
    (b"500 not found", ("5", b"not found")),
    (b"400 try later", ("4", b"try later")),
    (b"200 ", ("2", b"")),
    (b"200\tx", ("2", b"x")),
    (b"200 value\r", ("2", b"value")),
    (b"250 x", ("2", b"x")),
])
def test_parseReply(line, expected):
    assert parseReply(line) == expected


@pytest.mark.parametrize("line, message", [
    (b"200", "malformed"), (b"20 x", "malformed"), (b"200x", "malformed"), (b"OK value", "malformed"),
    (b"", "malformed"), (b"200 %zz", "bad %XX"), (b"300 x", "bad status"), (b"100 x", "bad status"),
])
def test_parseReply_errors(line, message):
    with pytest.raises(TcpReplyError) as info:
        parseReply(line)
    assert message in str(info.value)


# -- the spec --------------------------------------------------------------------------


def test_parseAddress():
    assert parseAddress("s", "127.0.0.1:2525") == ("127.0.0.1", 2525)
    assert parseAddress("s", "[::1]:2525") == ("::1", 2525)
    assert parseAddress("s", "map.example:1") == ("map.example", 1)


@pytest.mark.parametrize("name, message", [
    ("127.0.0.1", "tcp requires host:port"), (":25", "tcp requires host:port"), ("h:x", "bad port"),
    ("h:0", "bad port"), ("h:70000", "bad port"), ("[::1:25", "bad host"), ("[zz]:25", "bad IPv6"),
    ("h st:25", "bad host"),
])
def test_parseAddress_errors(name, message):
    with pytest.raises(TableError) as info:
        Tables(MemoryReactorClock()).open(f"tcp:{name}")
    assert str(info.value).startswith(f"tcp:{name}: {message}")


def test_opened_by_prefix_is_a_pattern_table_and_connects_late():
    reactor = MemoryReactorClock()
    table = Tables(reactor).open("tcp:127.0.0.1:2525")
    assert isinstance(table, TcpTable)
    verifyObject(ILookupTable, table)
    assert table.pattern is True  # dict_tcp sets DICT_FLAG_PATTERN
    assert table.spec == "tcp:127.0.0.1:2525"
    assert reactor.tcpClients == []


# -- the client ------------------------------------------------------------------------


class Harness:
    def __init__(self, spec="127.0.0.1:2525"):
        self.reactor = MemoryReactorClock()
        self.table = TcpTable(spec, self.reactor)
        self.accepted = 0

    def accept(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[self.accepted]
        assert (host, port, timeout) == ("127.0.0.1", 2525, TIMEOUT)
        self.accepted += 1
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def refuse(self):
        factory = self.reactor.tcpClients[self.accepted][2]
        self.accepted += 1
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def sent(self):
        data = self.transport.value()
        self.transport.clear()
        return data

    def reply(self, wire):
        self.protocol.dataReceived(wire)

    def lose(self):
        self.protocol.connectionLost(Failure(ConnectionDone()))


def outcome(d):
    out = []
    d.addBoth(out.append)
    return out


def failed(out):
    assert len(out) == 1 and isinstance(out[0], Failure), out
    assert out[0].check(TableTemporaryError)
    return str(out[0].value)


def warnings(events):
    return [e for e in events if e["log_level"] == LogLevel.warn]


def test_found_value_decoded():
    h = Harness()
    out = outcome(h.table.lookup("user@example.com"))
    h.accept()
    assert h.sent() == b"get user@example.com\n"
    h.reply(b"200 smtp:%5Bmx.example.com%5D%2C%20x\n")
    assert out == ["smtp:[mx.example.com], x"]


def test_utf8_key_and_value():
    h = Harness()
    out = outcome(h.table.lookup("ü@é.example"))
    h.accept()
    assert h.sent() == b"get %C3%BC@%C3%A9.example\n"
    h.reply(b"200 %C3%BC\n")
    assert out == ["ü"]


def test_not_found_keeps_the_connection():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"500 no such key\n")
    assert out == [None]
    assert not h.transport.disconnecting
    again = outcome(h.table.lookup("b"))
    assert h.sent() == b"get a\nget b\n"
    h.reply(b"200 B\n")
    assert again == ["B"]


def test_temporary_reply_fails_and_closes():
    h = Harness()
    with capturedLogs() as events:
        out = outcome(h.table.lookup("a"))
        h.accept()
        h.reply(b"400 database%20busy\n")
    assert "temporary" in failed(out)
    assert h.transport.disconnecting
    assert warnings(events)


@pytest.mark.parametrize("wire", [b"hello\n", b"300 x\n", b"200 %q\n", b"200\n"])
def test_malformed_reply_fails_and_closes(wire):
    h = Harness()
    with capturedLogs() as events:
        out = outcome(h.table.lookup("a"))
        h.accept()
        h.reply(wire)
    failed(out)
    assert h.transport.disconnecting
    assert len(warnings(events)) == 1


@pytest.mark.parametrize("wire", [b"200 a%00b\n", b"200 a%0Db\n", b"200 a%0Ab\n", b"200 %FF\n"])
def test_values_with_nul_cr_lf_or_bad_utf8_refused(wire):
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(wire)
    assert "bad reply value" in failed(out)


def test_reply_longer_than_max_reply_refused_before_the_newline():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"200 " + b"x" * (MAX_REPLY - 4))
    assert "longer than" in failed(out)
    assert h.transport.disconnecting


def test_reply_just_under_max_reply_accepted():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"200 " + b"x" * (MAX_REPLY - 5) + b"\n")
    assert out == ["x" * (MAX_REPLY - 5)]


def test_reply_split_byte_by_byte():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    for byte in b"200 v%41l\n":
        h.reply(bytes([byte]))
    assert out == ["vAl"]


def test_unsolicited_reply_closes():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"200 A\n")
    h.reply(b"200 extra\n")
    assert out == ["A"]
    assert h.transport.disconnecting


def test_one_request_at_a_time_in_order():
    h = Harness()
    outs = [outcome(h.table.lookup(k)) for k in ("a", "b", "c")]
    h.accept()
    assert h.sent() == b"get a\n"
    h.reply(b"200 A\n")
    assert h.sent() == b"get b\n"
    h.reply(b"500 no\n")
    assert h.sent() == b"get c\n"
    h.reply(b"200 C\n")
    assert [o[0] for o in outs] == ["A", None, "C"]


@pytest.mark.parametrize("key, why", [("x" * (MAX_KEY + 1), "key over"), ("\udc80", "not UTF-8")])
def test_bad_keys_refused_without_sending(key, why):
    h = Harness()
    assert why in failed(outcome(h.table.lookup(key)))
    assert h.reactor.tcpClients == []


def test_timeout_on_the_wire_closes_and_the_next_reconnects():
    h = Harness()
    first = outcome(h.table.lookup("a"))
    h.accept()
    h.sent()
    h.reactor.advance(TIMEOUT - 1)
    second = outcome(h.table.lookup("b"))
    h.reactor.advance(1)
    assert "timeout" in failed(first)
    assert h.transport.disconnecting
    h.accept()
    assert h.sent() == b"get b\n"
    h.reply(b"200 B\n")
    assert second == ["B"]


def test_connect_timeout():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.reactor.advance(TIMEOUT)
    failed(out)


def test_connection_refused_then_next_lookup_retries():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.refuse()
    assert "cannot connect" in failed(out)
    again = outcome(h.table.lookup("b"))
    h.accept()
    h.reply(b"200 B\n")
    assert again == ["B"]


def test_connection_lost_during_a_request_resends_once():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.sent()
    h.lose()
    assert out == []
    h.accept()
    assert h.sent() == b"get a\n"
    h.lose()
    assert "connection lost" in failed(out)
    assert len(h.reactor.tcpClients) == 2


def test_connection_lost_between_requests_reconnects():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"200 A\n")
    h.lose()
    again = outcome(h.table.lookup("b"))
    h.accept()
    assert h.sent() == b"get b\n"
    h.reply(b"200 B\n")
    assert (out, again) == (["A"], ["B"])


def test_close_fails_what_waits():
    h = Harness()
    outs = [outcome(h.table.lookup(k)) for k in ("a", "b")]
    h.accept()
    h.table.close()
    assert all("closed" in failed(o) for o in outs)
    assert h.transport.disconnecting
