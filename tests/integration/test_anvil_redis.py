"""
anvil_store = redis:... against a real redis-server (Debian's, started by the test as a child in
its own temporary directory on 127.0.0.1 and a free port, with a password and a database other
than 0) and real ``twistd mta`` daemons sharing it:

- two daemons (one of them with worker_processes = 2: its master asks Redis for its workers)
  with smtpd_client_connection_rate_limit = 2: the third connection from a client, over both
  daemons, gets 421 and Postfix's warning; another client address is not affected;
- smtpd_client_connection_count_limit = 1 over two daemons: a second session from the client on
  the other daemon gets 421, and after the first one's QUIT (released in Redis) it is served;
- smtpd_client_message_rate_limit = 1 over two daemons: the second MAIL, on the other, gets 450;
- a daemon killed with -9 while a session of its is open: its session stops counting within
  the node TTL (30 s; slow);
- Redis stopped: mail is still accepted (the limits fail open) and the warning is logged once;
  Redis started again: the limits hold again and "available again" is logged.

Each test's clients connect from their own 127.0.0.x address: the daemons' start-up probes come
from 127.0.0.1 and count too.
"""

import os
import shutil
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from tests.integration.daemon import Daemon, twistd, waitFor
from tests.integration.peers import RawClient
from tests.integration.peerservers import freePort

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-anvil"


def redisServerPath():
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    assert os.path.exists(path), "redis-server is not installed (scripts/test installs it)"
    return path


class RedisServer:
    """A private redis-server on 127.0.0.1, nothing saved to disk, with a password."""

    def __init__(self, directory, port=None):
        self.directory = str(directory)
        self.port = port or freePort()
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [redisServerPath(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory,
             "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--unixsocket", "",
             "--daemonize", "no", "--logfile", os.path.join(self.directory, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def answers():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    s.sendall(b"AUTH " + PASSWORD.encode() + b"\r\nPING\r\n")
                    data = b""
                    while data.count(b"\r\n") < 2:
                        chunk = s.recv(100)
                        if not chunk:
                            return False
                        data += chunk
                    return b"+PONG" in data
            except OSError:
                return False

        waitFor(answers, 30, "redis-server to answer")
        return self

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


class ClientFrom(RawClient):
    """RawClient from a source address of our choosing on loopback."""

    def __init__(self, source, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        self.banner = self.reply()


@pytest.fixture
def redis(tmp_path):
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()


@pytest.fixture
def makeDaemon(tmp_path):
    daemons = []

    def make(main, name):
        directory = tmp_path / name
        directory.mkdir()
        d = Daemon(directory, main=main)
        daemons.append(d)
        return d

    yield make
    for d in daemons:
        if d.process is not None and d.process.poll() is None:
            d.stop()


def storeSettings(redis, tmp_path, extra=""):
    secret = tmp_path / "anvil.secret"
    secret.write_text(PASSWORD + "\n")
    return (f"anvil_store = redis:127.0.0.1:{redis.port}/3\nanvil_store_password_file = {secret}\n"
            "anvil_rate_time_unit = 600s\nsmtpd_client_event_limit_exceptions =\n" + extra)


def served(client):
    """A session that got its banner ends with QUIT."""
    assert client.banner[0] == 220, client.banner
    assert client.command("QUIT")[0] == 221


def refused(client, address):
    assert client.banner == (421, [f"4.7.0 mta.test Error: too many connections from {address}"])
    assert client.closedByPeer()


def test_twoDaemonsShareTheConnectionRate(makeDaemon, redis, tmp_path):
    settings = storeSettings(redis, tmp_path, "smtpd_client_connection_rate_limit = 2\n")
    a = makeDaemon(settings + "worker_processes = 2\n", "a").start()
    b = makeDaemon(settings, "b").start()
    a.waitForWorkers(2)
    with ClientFrom("127.0.0.5", a.port) as client:
        served(client)
    with ClientFrom("127.0.0.5", b.port) as client:
        served(client)
    with ClientFrom("127.0.0.5", a.port) as client:  # the third over both daemons
        refused(client, "127.0.0.5")
    with ClientFrom("127.0.0.5", b.port) as client:
        refused(client, "127.0.0.5")
    with ClientFrom("127.0.0.6", b.port) as client:  # every client has its own window
        served(client)
    warning = "warning: Connection rate limit exceeded: 3 from unknown[127.0.0.5] for service smtp"
    waitFor(lambda: warning in a.maillogText(), what="the rate warning of the daemon with workers")
    assert "warning: Connection rate limit exceeded: 4 from unknown[127.0.0.5] for service smtp" in b.maillogText()
    assert "anvil_store" not in a.maillogText() + b.maillogText()  # Redis answered every time


def test_twoDaemonsShareTheSessionCountAndQuitReleasesIt(makeDaemon, redis, tmp_path):
    settings = storeSettings(redis, tmp_path, "smtpd_client_connection_count_limit = 1\n")
    a = makeDaemon(settings, "a").start()
    b = makeDaemon(settings, "b").start()
    first = ClientFrom("127.0.0.7", a.port)
    assert first.banner[0] == 220
    with ClientFrom("127.0.0.7", b.port) as client:
        refused(client, "127.0.0.7")
    assert "warning: Connection concurrency limit exceeded: 2 from unknown[127.0.0.7] for service smtp" in \
        b.maillogText()
    assert first.command("QUIT")[0] == 221
    first.close()

    def servedNow():
        with ClientFrom("127.0.0.7", b.port) as client:
            if client.banner[0] != 220:
                return False
            assert client.command("QUIT")[0] == 221
            return True

    waitFor(servedNow, 15, "a session on b once the one on a is over")
    # A daemon that stops releases its sessions: open one on a, stop a, then b serves the client.
    held = ClientFrom("127.0.0.8", a.port)
    assert held.banner[0] == 220
    with ClientFrom("127.0.0.8", b.port) as client:
        refused(client, "127.0.0.8")
    a.stop()
    held.close()
    with ClientFrom("127.0.0.8", b.port) as client:
        served(client)


def sendMail(port, source):
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=30) as client:
        client.ehlo("client.test")
        refused = client.sendmail("a@example.org", ["b@example.org"], b"Subject: t\r\n\r\nbody\r\n")
        assert refused == {}


def test_redisDownLetsMailThroughAndWarns(makeDaemon, redis, tmp_path):
    settings = storeSettings(redis, tmp_path, "smtpd_client_connection_rate_limit = 1\n"
                                              "smtpd_client_message_rate_limit = 1\n")
    d = makeDaemon(settings + "mydestination = example.org\n", "a").start()
    sendMail(d.port, "127.0.0.9")
    with ClientFrom("127.0.0.9", d.port) as client:  # Redis counts: the second connection is refused
        refused(client, "127.0.0.9")
    redis.stop()
    for _ in range(3):  # down: nothing is counted, nothing refused
        sendMail(d.port, "127.0.0.9")
    assert len(d.incoming()) == 4
    text = d.maillogText()
    warnings = [line for line in text.splitlines()
                if f"warning: anvil_store redis:127.0.0.1:{redis.port}/3:" in line]
    assert len(warnings) == 1, warnings  # once a minute
    assert "client limits are not enforced" in warnings[0]

    # Redis back on the same port: counting starts again (after the client's retry pause).
    redis.start()
    deadline = time.monotonic() + 30
    while True:
        with ClientFrom("127.0.0.9", d.port) as client:
            if client.banner[0] == 421:
                break
            served(client)
        assert time.monotonic() < deadline, "the limit was not enforced again once Redis was back"
        time.sleep(0.5)
    waitFor(lambda: f"anvil_store redis:127.0.0.1:{redis.port}/3: available again" in d.maillogText(),
            what="the recovery line")


def test_aWrongPasswordFailsOpenWithAWarning(makeDaemon, redis, tmp_path):
    settings = storeSettings(redis, tmp_path, "smtpd_client_connection_rate_limit = 1\n")
    (tmp_path / "anvil.secret").write_text("wrong\n")
    d = makeDaemon(settings, "a").start()
    for _ in range(2):
        with ClientFrom("127.0.0.10", d.port) as client:
            served(client)
    waitFor(lambda: "AUTH or SELECT refused" in d.maillogText(), what="the refused AUTH warning")


def test_anUnreadablePasswordFileStopsTheStart(tmp_path):
    d = Daemon(tmp_path, main=f"anvil_store = redis:127.0.0.1:{freePort()}\n"
                              f"anvil_store_password_file = {tmp_path}/missing\n")
    process = twistd(["mta", "-c", d.config], cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"anvil_store_password_file {tmp_path}/missing: cannot read" in (out + err).decode()


def test_twoDaemonsShareTheMessageRate(makeDaemon, redis, tmp_path):
    settings = storeSettings(redis, tmp_path, "smtpd_client_message_rate_limit = 1\n")
    a = makeDaemon(settings, "a").start()
    b = makeDaemon(settings, "b").start()
    with ClientFrom("127.0.0.11", a.port) as client:
        assert client.command("EHLO client.test")[0] == 250
        assert client.command("MAIL FROM:<x@example.org>")[0] == 250
        assert client.command("QUIT")[0] == 221
    with ClientFrom("127.0.0.11", b.port) as client:
        assert client.command("EHLO client.test")[0] == 250
        assert client.command("MAIL FROM:<x@example.org>") == (450, ["4.7.1 Error: too much mail from 127.0.0.11"])
        assert client.command("QUIT")[0] == 221
    assert "warning: Message delivery request rate limit exceeded: 2 from unknown[127.0.0.11] for service smtp" in \
        b.maillogText()


@pytest.mark.slow
def test_theSessionsOfAKilledDaemonStopCountingWithinTheNodeTtl(makeDaemon, redis, tmp_path):
    from mta.smtpd.anvilstore import HEARTBEAT, NODE_TTL

    settings = storeSettings(redis, tmp_path, "smtpd_client_connection_count_limit = 1\n")
    a = makeDaemon(settings, "a").start()
    b = makeDaemon(settings, "b").start()
    held = ClientFrom("127.0.0.12", a.port)
    assert held.banner[0] == 220
    a.kill()  # kill -9: no release; its node key and fields remain until their TTL
    held.close()
    killedAt = time.monotonic()
    with ClientFrom("127.0.0.12", b.port) as client:
        refused(client, "127.0.0.12")

    def servedNow():
        with ClientFrom("127.0.0.12", b.port) as client:
            if client.banner[0] != 220:
                return False
            assert client.command("QUIT")[0] == 221
            return True

    waitFor(servedNow, NODE_TTL + 15, "the dead daemon's session to stop counting", interval=1.0)
    assert time.monotonic() - killedAt >= NODE_TTL - HEARTBEAT - 1  # not released by anything else
