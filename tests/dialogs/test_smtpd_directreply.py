"""Replies sent straight to a plain TCP socket (mta.smtpd.protocol._sendDirect), and the fall-back
to the transport's buffer when the socket does not take a reply whole; no real sockets: a fake one."""

import socket

from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.internet.testing import StringTransport
from zope.interface import alsoProvides, directlyProvides

from mta.smtpd.protocol import directSocket
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog


class FakeSocket:
    """send() takes at most C{limit} bytes per call (None: all), or raises C{error}."""

    def __init__(self, limit=None, error=None):
        self.sent = b""
        self.limit = limit
        self.error = error
        self.calls = 0

    def send(self, data):
        self.calls += 1
        if self.error is not None:
            raise self.error
        taken = data if self.limit is None else data[:self.limit]
        self.sent += bytes(taken)
        return len(taken)


def dialog(sock):
    d = Dialog(serverFactory(store=FakeQueueStore()))
    d.protocol._directSocket = sock  # as directSocket() gives it for a TCP connection
    return d


def test_replies_go_to_the_socket_not_the_transport():
    sock = FakeSocket()
    d = dialog(sock)
    assert d.send("EHLO client.example\r\n") == "" and sock.sent.startswith(b"250-mx.test\r\n")
    sock.sent, sock.calls = b"", 0
    assert d.send("MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@mx.test>\r\n") == ""  # none buffered
    assert sock.sent == b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" and sock.calls == 1  # pipelined: one send


def test_a_short_send_puts_the_rest_in_the_transport_and_keeps_the_order():
    sock = FakeSocket(limit=5)
    d = dialog(sock)
    assert d.send("NOOP\r\n") == ".0.0 Ok\r\n"  # 5 bytes went out, the rest is buffered
    assert sock.sent == b"250 2"
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"  # and from then on everything is buffered
    assert sock.calls == 1 and d.protocol._directSocket is None


def test_a_full_socket_or_an_error_falls_back_to_the_transport():
    for error in (BlockingIOError(), ConnectionResetError()):
        sock = FakeSocket(error=error)
        d = dialog(sock)
        assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"
        assert d.protocol._directSocket is None


def test_direct_sending_only_for_plain_tcp():
    plain = StringTransport()
    assert directSocket(plain) is None  # not a TCP transport
    tcp = StringTransport()
    alsoProvides(tcp, ITCPTransport)
    real = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # never connected: just its type
    try:
        tcp.getHandle = lambda: real
        assert directSocket(tcp) is real
        alsoProvides(tcp, ISSLTransport)
        assert directSocket(tcp) is None  # TLS (wrapper mode, tls: endpoints)
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            directlyProvides(tcp, ITCPTransport)
            tcp.getHandle = lambda: unix
            assert directSocket(tcp) is None
        finally:
            unix.close()
    finally:
        real.close()


def test_starttls_stops_direct_sending():
    sock = FakeSocket()
    d = dialog(sock)
    started = []
    d.protocol.transport.startTLS = started.append
    d.protocol._beginHandshake("STARTTLS")
    assert started and d.protocol._directSocket is None  # every later byte through the TLS layer
