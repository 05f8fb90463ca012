"""mta.tables.socketmap without sockets: the netstring codec, replies, timeouts, reconnects, queueing."""

import pytest
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables, TableTemporaryError
from mta.tables.socketmap import (
    MAX_IDLE, MAX_KEY, MAX_REPLY, MAX_TTL, TIMEOUT, NetstringDecoder, NetstringError, SocketmapTable,
    encodeNetstring, parseServer,
)

# -- the codec ---------------------------------------------------------------------


def test_encode():
    assert encodeNetstring(b"") == b"0:,"
    assert encodeNetstring(b"name key") == b"8:name key,"


def test_decode_whole_and_several_in_one_read():
    d = NetstringDecoder()
    assert d.feed(b"3:abc,0:,9:NOTFOUND ,") == [b"abc", b"", b"NOTFOUND "]


def test_decode_split_across_reads_byte_by_byte():
    d = NetstringDecoder()
    out = []
    for byte in b"11:OK some,val,2:ab,":
        out += d.feed(bytes([byte]))
    assert out == [b"OK some,val", b"ab"]


def test_decode_payload_with_colons_and_commas():
    assert NetstringDecoder().feed(b"5:a:,b:,") == [b"a:,b:"]


@pytest.mark.parametrize("wire, message", [
    (b"x3:abc,", "bad netstring length prefix"),
    (b"3a:abc,", "bad netstring length prefix"),
    (b"-1:,", "bad netstring length prefix"),
    (b" 3:abc,", "bad netstring length prefix"),
    (b":abc,", "netstring length prefix missing"),
    (b"3:abcd", "netstring without its terminating comma"),
    (b"3:abc;", "netstring without its terminating comma"),
    (b"1234567", "netstring length prefix over 6 digits"),
    (b"100001:", "netstring length 100001 over the limit of 100000"),
])
def test_decode_errors(wire, message):
    with pytest.raises(NetstringError) as info:
        NetstringDecoder().feed(wire)
    assert str(info.value).startswith(message)


def test_decode_overlong_prefix_refused_before_the_colon_arrives():
    d = NetstringDecoder()
    assert d.feed(b"999999") == []
    with pytest.raises(NetstringError):
        d.feed(b"9")


def test_decode_maximum_is_accepted():
    payload = b"x" * MAX_REPLY
    assert NetstringDecoder().feed(encodeNetstring(payload)) == [payload]


# -- the spec ----------------------------------------------------------------------


def test_parseServer_forms():
    assert parseServer("s", "inet:127.0.0.1:8461:postfix") == ("inet", ("127.0.0.1", 8461), "postfix")
    assert parseServer("s", "inet:[::1]:8461:postfix") == ("inet", ("::1", 8461), "postfix")
    assert parseServer("s", "inet:localhost:10:m") == ("inet", ("localhost", 10), "m")
    assert parseServer("s", "unix:/run/sts.sock:postfix") == ("unix", "/run/sts.sock", "postfix")


@pytest.mark.parametrize("name, message", [
    ("postfix", "socketmap requires server:socketmap-name"),
    (":postfix", "socketmap requires server:socketmap-name"),
    ("inet:127.0.0.1:8461:", "bad socketmap name"),
    ("inet:127.0.0.1:8461:a b", "bad socketmap name 'a b'"),
    ("tcp:127.0.0.1:8461:m", "unknown socketmap transport 'tcp'"),
    ("127.0.0.1:8461:m", "unknown socketmap transport '127.0.0.1'"),
    ("inet:127.0.0.1:m", "inet: needs host:port"),
    ("inet:127.0.0.1:0:m", "bad port '0'"),
    ("inet:127.0.0.1:65536:m", "bad port"),
    ("inet:127.0.0.1:smtp:m", "bad port 'smtp'"),
    ("inet:[::1:25:m", "bad host"),
    ("inet:[nothing]:25:m", "bad IPv6 address"),
    ("inet:a/b:25:m", "bad host"),
    ("unix:relative/path:m", "unix: needs an absolute socket path"),
])
def test_parseServer_errors(name, message):
    with pytest.raises(TableError) as info:
        parseServer(f"socketmap:{name}", name)
    assert str(info.value).startswith(f"socketmap:{name}: {message}")


def test_opened_by_prefix_through_the_plugin():
    reactor = MemoryReactorClock()
    table = Tables(reactor).open("socketmap:inet:127.0.0.1:8461:postfix")
    assert isinstance(table, SocketmapTable)
    verifyObject(ILookupTable, table)
    assert table.spec == "socketmap:inet:127.0.0.1:8461:postfix"
    assert reactor.tcpClients == []  # nothing connects at open


def test_bad_spec_is_a_table_error_through_Tables():
    with pytest.raises(TableError) as info:
        Tables(MemoryReactorClock()).open("socketmap:inet:127.0.0.1:x:postfix")
    assert "bad port 'x'" in str(info.value)


# -- the client --------------------------------------------------------------------


class Harness:
    """A table on a MemoryReactorClock; accept() completes the pending connection."""

    def __init__(self, spec="inet:127.0.0.1:8461:postfix"):
        self.reactor = MemoryReactorClock()
        self.table = SocketmapTable(spec, self.reactor)
        self.accepted = 0

    def accept(self):
        host, port, factory, timeout, bind = self.reactor.tcpClients[self.accepted]
        assert (host, port) == ("127.0.0.1", 8461)
        self.accepted += 1
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.transport, self.protocol = transport, protocol
        return transport

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


def test_lookup_sends_name_and_key_and_returns_the_value():
    h = Harness()
    out = outcome(h.table.lookup("example.com"))
    assert out == []
    h.accept()
    assert h.sent() == b"19:postfix example.com,"
    h.reply(b"32:OK secure match=mx.example.com:x,")
    assert out == ["secure match=mx.example.com:x"]


def test_key_sent_as_given_utf8():
    h = Harness()
    h.table.lookup("Ünï.Example")
    h.accept()
    payload = "postfix Ünï.Example".encode()
    assert h.sent() == encodeNetstring(payload)


@pytest.mark.parametrize("reply", [b"NOTFOUND ", b"NOTFOUND", b"OK"])
def test_not_found(reply):
    h = Harness()
    out = outcome(h.table.lookup("example.com"))
    h.accept()
    h.reply(encodeNetstring(reply))
    assert out == [None]


def test_ok_with_empty_value():
    h = Harness()
    out = outcome(h.table.lookup("k"))
    h.accept()
    h.reply(b"3:OK ,")
    assert out == [""]


@pytest.mark.parametrize("reply, errorClass, reason", [
    (b"TEMP try later", "temporary", "try later"),
    (b"TIMEOUT  dns", "timeout", "dns"),
    (b"PERM no such map", "permanent", "no such map"),
    (b"PERM", "permanent", ""),
    (b"MAYBE so", "unknown", "MAYBE so"),
    (b"ok lower case", "unknown", "ok lower case"),
    (b"TEMP \x01\xff" + b"x" * 300, "temporary", "??" + "x" * 198),
])
def test_error_statuses_are_temporary_with_a_warning(reply, errorClass, reason):
    h = Harness()
    with capturedLogs() as events:
        out = outcome(h.table.lookup("example.com"))
        h.accept()
        h.sent()
        h.reply(encodeNetstring(reply))
    assert failed(out) == f"socketmap:inet:127.0.0.1:8461:postfix: socketmap server {errorClass} error"
    [w] = warnings(events)
    assert (w["error_class"], w["reason"]) == (errorClass, reason)
    # The connection stays usable after an error status.
    out = outcome(h.table.lookup("b"))
    assert h.sent() == b"9:postfix b,"
    h.reply(b"4:OK 1,")
    assert out == ["1"]


@pytest.mark.parametrize("value, message", [
    (b"OK \xff\xfe", "reply not UTF-8"),
    (b"OK 550 x\r\n250 ok", "reply with NUL, CR or LF"),
    (b"OK a\x00b", "reply with NUL, CR or LF"),
])
def test_untrusted_values_refused(value, message):
    h = Harness()
    with capturedLogs() as events:
        out = outcome(h.table.lookup("k"))
        h.accept()
        h.reply(encodeNetstring(value))
    assert failed(out).endswith(message)
    assert len(warnings(events)) == 1


@pytest.mark.parametrize("key, why", [
    ("a\nb", "control character"),
    ("a\x00", "control character"),
    ("a\x7f", "control character"),
    ("a\x85", "control character"),
    ("\udcff", "not UTF-8"),
    ("x" * (MAX_KEY + 1), f"over {MAX_KEY} bytes"),
    ("é" * (MAX_KEY // 2 + 1), f"over {MAX_KEY} bytes"),
])
def test_bad_keys_refused_without_sending(key, why):
    h = Harness()
    with capturedLogs() as events:
        out = outcome(h.table.lookup(key))
    assert why in failed(out)
    assert h.reactor.tcpClients == []
    assert len(warnings(events)) == 1


def test_longest_key_is_sent():
    h = Harness()
    h.table.lookup("x" * MAX_KEY)
    h.accept()
    assert h.sent().endswith(b"x" * MAX_KEY + b",")


@pytest.mark.parametrize("wire, message", [
    (b"5:OK 1", None),  # incomplete: still waiting
    (b"abc:", "bad netstring length prefix"),
    (b"3:OK 1.", "netstring without its terminating comma"),
    (b"999999999:", "netstring length prefix over 6 digits"),
    (b"100001:", "over the limit of 100000"),
])
def test_malformed_replies_fail_and_close(wire, message):
    h = Harness()
    with capturedLogs() as events:
        out = outcome(h.table.lookup("k"))
        h.accept()
        h.reply(wire)
    if message is None:
        assert out == []
        return
    assert message in failed(out)
    assert h.transport.disconnecting or h.transport.disconnected
    [w] = warnings(events)
    assert message in w["why"]
    # The next lookup opens a new connection.
    out = outcome(h.table.lookup("k2"))
    h.accept()
    assert h.sent() == b"10:postfix k2,"
    h.reply(b"4:OK 2,")
    assert out == ["2"]


def test_reply_over_max_reply_is_temporary():
    h = Harness()
    out = outcome(h.table.lookup("k"))
    h.accept()
    h.reply(encodeNetstring(b"OK " + b"x" * MAX_REPLY))
    assert "over the limit" in failed(out)


def test_reply_at_max_reply_is_accepted():
    h = Harness()
    out = outcome(h.table.lookup("k"))
    h.accept()
    h.reply(encodeNetstring(b"OK " + b"x" * (MAX_REPLY - 3)))
    assert out == ["x" * (MAX_REPLY - 3)]


def test_unsolicited_reply_closes_the_connection():
    h = Harness()
    out = outcome(h.table.lookup("k"))
    h.accept()
    h.reply(b"4:OK 1,4:OK 2,")
    assert out == ["1"]
    assert h.transport.disconnecting


def test_requests_queued_in_order_one_at_a_time():
    h = Harness()
    outs = [outcome(h.table.lookup(k)) for k in ("a", "b", "c")]
    h.accept()
    assert h.sent() == b"9:postfix a,"  # only the first is on the wire
    h.reply(b"4:OK A,")
    assert h.sent() == b"9:postfix b,"
    h.reply(b"9:NOTFOUND ,")
    assert h.sent() == b"9:postfix c,"
    h.reply(b"6:TEMP x,")
    assert outs[0] == ["A"] and outs[1] == [None]
    failed(outs[2])
    assert h.accepted == 1  # one connection for all three


def test_two_replies_in_one_read_answer_two_requests():
    # A server that answers ahead (it cannot know the key, but the stream is still in step).
    h = Harness()
    outs = [outcome(h.table.lookup(k)) for k in ("a", "b")]
    h.accept()
    h.reply(b"4:OK A,")
    h.reply(b"4:OK B,")
    assert (outs[0], outs[1]) == (["A"], ["B"])


def test_request_timeout_on_the_wire_closes_and_next_reconnects():
    h = Harness()
    with capturedLogs() as events:
        first = outcome(h.table.lookup("a"))
        h.accept()
        h.sent()
        h.reactor.advance(TIMEOUT - 1)
        second = outcome(h.table.lookup("b"))
        assert first == []
        h.reactor.advance(1)
    assert failed(first).endswith("timeout")
    assert h.transport.disconnecting
    assert any("timeout" in w["log_format"] for w in warnings(events))
    # The second, queued behind it, goes out on a new connection.
    assert second == []
    h.accept()
    assert h.sent() == b"9:postfix b,"
    h.reply(b"4:OK B,")
    assert second == ["B"]


def test_queued_request_times_out_too():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.reactor.advance(TIMEOUT)  # the connection never completes
    assert "timeout" in failed(out)


def test_connect_timeout_cancels_the_attempt():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.reactor.advance(TIMEOUT - 0.5)
    late = outcome(h.table.lookup("b"))
    h.reactor.advance(0.5)
    failed(out)
    assert "connect timeout" in failed(late)


def test_connection_refused_fails_the_waiting_lookups_and_next_retries():
    h = Harness()
    outs = [outcome(h.table.lookup(k)) for k in ("a", "b")]
    with capturedLogs() as events:
        h.refuse()
    assert all("cannot connect" in failed(o) for o in outs)
    assert len(warnings(events)) == 1
    out = outcome(h.table.lookup("c"))
    h.accept()
    assert h.sent() == b"9:postfix c,"
    h.reply(b"4:OK C,")
    assert out == ["C"]


def test_connection_lost_during_a_request_resends_it_once():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.sent()
    h.lose()  # a server restart
    assert out == []
    h.accept()
    assert h.sent() == b"9:postfix a,"
    h.lose()  # lost again: no third try
    assert failed(out).endswith("connection lost")
    assert len(h.reactor.tcpClients) == 2


def test_connection_lost_between_requests_reconnects_at_the_next():
    h = Harness()
    out = outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"4:OK A,")
    h.lose()
    assert len(h.reactor.tcpClients) == 1  # nothing waits: no reconnect yet
    out = outcome(h.table.lookup("b"))
    h.accept()
    assert h.sent() == b"9:postfix b,"
    h.reply(b"4:OK B,")
    assert out == ["B"]


def test_idle_connection_closed_after_max_idle():
    h = Harness()
    outcome(h.table.lookup("a"))
    h.accept()
    h.reply(b"4:OK A,")
    h.reactor.advance(MAX_IDLE - 1)
    out = outcome(h.table.lookup("b"))  # reuses it and restarts the idle timer
    h.reply(b"4:OK B,")
    assert out == ["B"] and not h.transport.disconnecting
    h.reactor.advance(MAX_IDLE - 1)
    assert not h.transport.disconnecting
    h.reactor.advance(1)
    assert h.transport.disconnecting
    assert h.accepted == 1


def test_old_connection_closed_once_idle_after_max_ttl():
    h = Harness()
    for i in range(int(MAX_TTL / (MAX_IDLE - 1)) + 2):
        out = outcome(h.table.lookup("a"))
        if i == 0:
            h.accept()
        h.reply(b"4:OK A,")
        assert out == ["A"]
        if h.transport.disconnecting:
            break
        h.reactor.advance(MAX_IDLE - 1)
    assert h.transport.disconnecting
    assert h.reactor.seconds() >= MAX_TTL


def test_close_fails_what_waits():
    h = Harness()
    outs = [outcome(h.table.lookup(k)) for k in ("a", "b")]
    h.accept()
    h.table.close()
    assert all("table closed" in failed(o) for o in outs)


def test_unix_endpoint():
    h = Harness("unix:/run/sts.sock:postfix")
    h.table.lookup("a")
    assert h.reactor.unixClients[0][0] == "/run/sts.sock"
