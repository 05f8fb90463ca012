"""tcp: tables against a tcp_table(5) server on loopback, through the real reactor.

The server is written here (its own %XX code, so the client is not checked
against itself), threaded, answering 200, 500, 400, garbage, an over-long
line, and closing mid-request; it records every request line.  Postfix's own
``postmap -q KEY tcp:host:port`` asks the same server for the same keys: the
request lines it sends and the values it prints must be ours (a differential
check of the codec).
"""

import shutil
import socket
import subprocess
import threading

import pytest
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mta.tables import Tables, TableTemporaryError
from tests.integration.daemon import freePort

pytestmark = pytest.mark.integration

POSTMAP = shutil.which("postmap") or "/usr/sbin/postmap"


def quote(raw):
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else "%%%02x" % b for b in raw).encode()


def unquote(text):
    out, i = bytearray(), 0
    while i < len(text):
        if text[i:i + 1] == b"%":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


class TinyTcpTableServer:
    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lines = []
        self.connections = 0
        self.closedOnce = False
        self.lock = threading.Lock()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                with self.lock:
                    self.lines.append(line)
                assert line.startswith(b"get ") and line.endswith(b"\n")
                key = unquote(line[4:-1]).decode()
                if key == "restart" and not self.closedOnce:
                    self.closedOnce = True
                    return
                if key == "alwaysclose":
                    return
                reply = {
                    "missing": b"500 no such key",
                    "temp": b"400 database busy",
                    "garbage": b"hello world",
                    "huge": b"200 " + b"x" * 5000,
                    "injection": b"200 a%0d%0a550 b",
                    "plain": b"200 smtp:[mx.example.com]",
                }.get(key, b"200 " + quote(f"value of {key}".encode()))
                conn.sendall(reply + b"\n")

    def close(self):
        self.listener.close()


class TcpTableTests(unittest.TestCase):
    def setUp(self):
        self.server = TinyTcpTableServer()
        self.addCleanup(self.server.close)
        self.table = Tables(reactor).open(f"tcp:127.0.0.1:{self.server.port}")

    @inlineCallbacks
    def tearDown(self):
        self.table.close()
        yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def assertTemporary(self, key, text):
        with self.assertRaises(TableTemporaryError) as info:
            yield self.table.lookup(key)
        self.assertIn(text, str(info.exception))

    @inlineCallbacks
    def test_answers_on_one_connection(self):
        self.assertEqual((yield self.table.lookup("user@example.com")), "value of user@example.com")
        self.assertEqual((yield self.table.lookup("a b%c,d")), "value of a b%c,d")
        self.assertEqual((yield self.table.lookup("ü@é.example")), "value of ü@é.example")
        self.assertEqual((yield self.table.lookup("plain")), "smtp:[mx.example.com]")
        self.assertIsNone((yield self.table.lookup("missing")))
        self.assertEqual(self.server.connections, 1)
        self.assertEqual(self.server.lines[1], b"get a%20b%25c,d\n")

    @inlineCallbacks
    def test_errors_are_temporary_and_reconnect(self):
        yield self.assertTemporary("temp", "server temporary error")
        yield self.assertTemporary("garbage", "malformed reply")
        yield self.assertTemporary("huge", "reply longer than 4096")
        yield self.assertTemporary("injection", "bad reply value")
        self.assertEqual((yield self.table.lookup("after")), "value of after")
        self.assertGreaterEqual(self.server.connections, 4)  # each of 400, garbage, huge closed it

    @inlineCallbacks
    def test_a_key_cannot_add_a_request(self):
        # The key's newline is sent %0A: one request line, the server sees the key whole.  Its
        # answer echoes the newline back, and a value with a newline is refused.
        yield self.assertTemporary("a\nget b", "bad reply value")
        self.assertEqual(self.server.lines, [b"get a%0Aget%20b\n"])

    @inlineCallbacks
    def test_server_restart_mid_request_is_resent_once(self):
        self.assertEqual((yield self.table.lookup("restart")), "value of restart")
        self.assertEqual(self.server.lines, [b"get restart\n", b"get restart\n"])
        yield self.assertTemporary("alwaysclose", "connection lost")

    @inlineCallbacks
    def test_concurrent_lookups_in_order(self):
        keys = [f"k{i}" for i in range(20)]
        results = yield gatherResults([self.table.lookup(k) for k in keys])
        self.assertEqual(results, [f"value of {k}" for k in keys])
        self.assertEqual(self.server.lines, [f"get {k}\n".encode() for k in keys])
        self.assertEqual(self.server.connections, 1)

    @inlineCallbacks
    def test_nothing_listening_is_temporary(self):
        table = Tables(reactor).open(f"tcp:127.0.0.1:{freePort()}")
        with self.assertRaises(TableTemporaryError) as info:
            yield table.lookup("x")
        self.assertIn("cannot connect", str(info.exception))


class PostmapDifferentialTests(unittest.TestCase):
    """Postfix's postmap -q and mta ask the same server: the same request lines, the same answers."""

    KEYS = ["user@example.com", "a b%c", "tab\there", "ü@é.example", "semi;colon=equals", "plain", "missing"]

    def setUp(self):
        self.server = TinyTcpTableServer()
        self.addCleanup(self.server.close)

    def postmap(self, key):
        done = subprocess.run([POSTMAP, "-q", key, f"tcp:127.0.0.1:{self.server.port}"], capture_output=True,
                              timeout=60)
        return done.returncode, done.stdout.decode()

    @inlineCallbacks
    def test_same_requests_and_values_as_postmap(self):
        table = Tables(reactor).open(f"tcp:127.0.0.1:{self.server.port}")
        try:
            for key in self.KEYS:
                del self.server.lines[:]
                code, printed = yield deferLater(reactor, 0, self.postmap, key)
                theirs = list(self.server.lines)
                del self.server.lines[:]
                ours = yield table.lookup(key)
                self.assertEqual(self.server.lines, theirs, (key, code, printed))
                if key == "missing":
                    self.assertEqual((code, printed, ours), (1, "", None))
                else:
                    self.assertEqual((code, printed), (0, ours + "\n"), key)
        finally:
            table.close()
            yield deferLater(reactor, 0.05, lambda: None)
