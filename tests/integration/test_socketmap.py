"""socketmap: tables against real socketmap servers on loopback, through the real reactor.

1. A small threaded socketmap server written here (its own netstring code, so
   the client is not checked against itself) answering OK, NOTFOUND, TEMP,
   PERM, TIMEOUT, garbage, over-long replies, and closing mid-request; it
   counts connections and requests, so reuse and the one resend are visible.
   Over TCP and over a UNIX socket.
2. postfix-mta-sts-resolver's mta-sts-daemon (PyPI), the server the issue
   names, with its DNS on the tests' dnsmasq: a domain with no _mta-sts
   record, an IP address and a parent-domain key all get NOTFOUND, as the
   daemon answers.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mta.tables import Tables, TableTemporaryError
from tests.integration.daemon import ROOT, environment, freePort
from tests.integration.peers import waitFor
from tests.integration.peerservers import Dnsmasq, stopProcess

pytestmark = pytest.mark.integration


def readNetstring(sock, buffer):
    """One netstring from C{sock}; (payload or None at EOF, rest of the buffer)."""
    while b":" not in buffer:
        data = sock.recv(4096)
        if not data:
            return None, buffer
        buffer += data
    head, _, buffer = buffer.partition(b":")
    length = int(head)
    while len(buffer) < length + 1:
        data = sock.recv(4096)
        if not data:
            return None, buffer
        buffer += data
    assert buffer[length:length + 1] == b",", "client sent a bad netstring"
    return buffer[:length], buffer[length + 1:]


class TinySocketmapServer:
    """A threaded socketmap server; the key chooses the answer."""

    ANSWERS = {
        "ok": b"OK the value",
        "utf8": "OK värde".encode(),
        "missing": b"NOTFOUND ",
        "temp": b"TEMP try later",
        "timeout": b"TIMEOUT slow!",
        "perm": b"PERM no map!",
        "unknown": b"MAYBE so",
        "huge": b"OK " + b"x" * 100001,
        "injection": b"OK 250 a\r\n550 b",
    }

    def __init__(self, unixPath=None):
        if unixPath:
            self.listener = socket.socket(socket.AF_UNIX)
            self.listener.bind(unixPath)
        else:
            self.listener = socket.socket()
            self.listener.bind(("127.0.0.1", 0))
            self.port = self.listener.getsockname()[1]
        self.listener.listen(16)
        self.connections = 0
        self.requests = []
        self.closedOnce = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

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
        buffer = b""
        with conn:
            while True:
                try:
                    payload, buffer = readNetstring(conn, buffer)
                except OSError:
                    return
                if payload is None:
                    return
                name, _, key = payload.decode().partition(" ")
                with self.lock:
                    self.requests.append((name, key))
                if key == "restart" and key not in self.closedOnce:
                    self.closedOnce.add(key)
                    return  # as a server that restarts: the client must resend once
                if key == "alwaysclose":
                    return
                if key == "garbage":
                    conn.sendall(b"hello world\r\n")
                    return
                reply = self.ANSWERS.get(key, f"OK {name}={key}".encode())
                conn.sendall(b"%d:%s," % (len(reply), reply))

    def close(self):
        self.listener.close()


class TinyServerTests(unittest.TestCase):
    def setUp(self):
        self.server = TinySocketmapServer()
        self.addCleanup(self.server.close)
        self.tables = Tables(reactor)
        self.table = self.tables.open(f"socketmap:inet:127.0.0.1:{self.server.port}:postfix")

    @inlineCallbacks
    def tearDown(self):
        self.table.close()
        yield deferLater(reactor, 0.05, lambda: None)  # let the closed socket go

    @inlineCallbacks
    def assertTemporary(self, key, text):
        with self.assertRaises(TableTemporaryError) as info:
            yield self.table.lookup(key)
        self.assertIn(text, str(info.exception))

    @inlineCallbacks
    def test_answers(self):
        self.assertEqual((yield self.table.lookup("ok")), "the value")
        self.assertEqual((yield self.table.lookup("utf8")), "värde")
        self.assertIsNone((yield self.table.lookup("missing")))
        self.assertEqual((yield self.table.lookup("example.com")), "postfix=example.com")
        yield self.assertTemporary("temp", "socketmap server temporary error")
        yield self.assertTemporary("timeout", "socketmap server timeout error")
        yield self.assertTemporary("perm", "socketmap server permanent error")
        yield self.assertTemporary("unknown", "socketmap server unknown error")
        yield self.assertTemporary("injection", "reply with NUL, CR or LF")
        # One connection for all of them: error statuses keep it.
        self.assertEqual(self.server.connections, 1)
        self.assertEqual(len(self.server.requests), 9)

    @inlineCallbacks
    def test_concurrent_lookups_queue_on_one_connection_in_order(self):
        keys = [f"k{i}.example" for i in range(20)]
        results = yield _gather([self.table.lookup(k) for k in keys])
        self.assertEqual(results, [f"postfix={k}" for k in keys])
        self.assertEqual(self.server.connections, 1)
        self.assertEqual([k for _, k in self.server.requests], keys)

    @inlineCallbacks
    def test_garbage_closes_and_the_next_lookup_reconnects(self):
        yield self.assertTemporary("garbage", "bad netstring length prefix")
        self.assertEqual((yield self.table.lookup("after")), "postfix=after")
        self.assertEqual(self.server.connections, 2)

    @inlineCallbacks
    def test_reply_over_the_limit_is_temporary(self):
        yield self.assertTemporary("huge", "netstring length 100004 over the limit of 100000")
        self.assertEqual((yield self.table.lookup("after")), "postfix=after")

    @inlineCallbacks
    def test_server_restart_mid_request_is_resent_once(self):
        self.assertEqual((yield self.table.lookup("first")), "postfix=first")
        self.assertEqual((yield self.table.lookup("restart")), "postfix=restart")
        self.assertEqual([k for _, k in self.server.requests], ["first", "restart", "restart"])
        self.assertEqual(self.server.connections, 2)
        yield self.assertTemporary("alwaysclose", "connection lost")
        self.assertEqual([k for _, k in self.server.requests][-2:], ["alwaysclose", "alwaysclose"])

    @inlineCallbacks
    def test_refused_keys_never_reach_the_server(self):
        yield self.assertTemporary("a\r\nb", "control character")
        yield self.assertTemporary("x" * 1001, "over 1000 bytes")
        self.assertEqual(self.server.requests, [])

    @inlineCallbacks
    def test_nothing_listening_is_temporary(self):
        table = Tables(reactor).open(f"socketmap:inet:127.0.0.1:{freePort()}:postfix")
        with self.assertRaises(TableTemporaryError) as info:
            yield table.lookup("example.com")
        self.assertIn("cannot connect", str(info.exception))


class UnixSocketTests(unittest.TestCase):
    @inlineCallbacks
    def test_unix_socket(self):
        directory = tempfile.mkdtemp(prefix="mta-sockmap-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "map.sock")
        server = TinySocketmapServer(unixPath=path)
        self.addCleanup(server.close)
        table = Tables(reactor).open(f"socketmap:unix:{path}:aliases")
        try:
            self.assertEqual((yield table.lookup("bob")), "aliases=bob")
            self.assertIsNone((yield table.lookup("missing")))
            self.assertEqual(server.connections, 1)
        finally:
            table.close()
            yield deferLater(reactor, 0.05, lambda: None)


def _gather(deferreds):
    from twisted.internet.defer import gatherResults

    return gatherResults(deferreds, consumeErrors=True)


# -- 2. postfix-mta-sts-resolver ------------------------------------------------------


STS_CONFIG = """\
host: 127.0.0.1
port: {port}
reuse_port: true
shutdown_timeout: 1
cache:
  type: internal
  options:
    cache_size: 100
default_zone:
  strict_testing: false
  timeout: 4
zones:
  postfix:
    strict_testing: false
    timeout: 4
"""


class MtaStsResolverTests(unittest.TestCase):
    """The real mta-sts-daemon, DNS on the tests' dnsmasq (loopback only)."""

    def setUp(self):
        if shutil.which("mta-sts-daemon") is None:
            raise AssertionError("mta-sts-daemon missing: pip install '.[test]' (postfix-mta-sts-resolver)")
        self.dns = Dnsmasq(local=("example",)).start()
        self.addCleanup(self.dns.stop)
        self.directory = tempfile.mkdtemp(prefix="mta-sts-daemon-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.port = freePort()
        config = os.path.join(self.directory, "mta-sts-daemon.yml")
        with open(config, "w") as f:
            f.write(STS_CONFIG.format(port=self.port))
        self.logPath = os.path.join(self.directory, "daemon.log")
        self.logFile = open(self.logPath, "wb")
        self.addCleanup(self.logFile.close)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.stsdaemon", f"127.0.0.1:{self.dns.port}",
             "-c", config, "-v", "debug", "--disable-uvloop"],
            cwd=ROOT, env=environment(), stdin=subprocess.DEVNULL, stdout=self.logFile, stderr=subprocess.STDOUT)
        self.addCleanup(stopProcess, self.process)

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"mta-sts-daemon exited: {open(self.logPath).read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        waitFor(listening, timeout=20, what="mta-sts-daemon")
        self.table = Tables(reactor).open(f"socketmap:inet:127.0.0.1:{self.port}:postfix")

    @inlineCallbacks
    def tearDown(self):
        self.table.close()
        yield deferLater(reactor, 0.05, lambda: None)

    @inlineCallbacks
    def test_no_policy_is_notfound_quickly(self):
        started = time.monotonic()
        self.assertIsNone((yield self.table.lookup("nopolicy.example")))
        self.assertLess(time.monotonic() - started, 3.0)
        # It asked our DNS for the policy record, and only ours.
        waitFor(lambda: "_mta-sts.nopolicy.example" in self.dns.logText(), timeout=5, what="the TXT query")
        # Keys it answers without DNS, on the same connection.
        self.assertIsNone((yield self.table.lookup("127.0.0.1")))
        self.assertIsNone((yield self.table.lookup(".example")))
        self.assertIsNone((yield self.table.lookup("other.example")))
