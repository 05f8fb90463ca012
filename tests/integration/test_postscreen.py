"""postscreen_enable against a running mta and a real DNS list (dnsmasq on loopback).

An early talker is refused before smtpd sees it; a listed client meets the
dummy engine (550 to RCPT, nothing queued); a clean client passes (PASS
NEW), speaks SMTP to smtpd and its message is accepted; its next
connection is PASS OLD, without the greeting delay.
"""

import smtplib
import socket
import sqlite3
import time

import pytest

from tests.integration.daemon import Daemon, waitFor
from tests.integration.peerservers import Dnsmasq

pytestmark = pytest.mark.integration


@pytest.fixture
def dnsmasq():
    server = Dnsmasq(hosts=[("2.0.0.127.zen.example", "127.0.0.2"), ("5.0.0.127.wl.example", "127.0.0.5")],
                     local=("example",)).start()
    yield server
    server.stop()


@pytest.fixture
def daemon(tmp_path, dnsmasq):
    access = tmp_path / "postscreen_access"
    access.write_text("127.0.0.1 permit\n127.0.0.6 reject\n")
    d = Daemon(tmp_path, main=f"""\
        dns_servers = 127.0.0.1:{dnsmasq.port}
        postscreen_enable = yes
        postscreen_access_list = texthash:{access}
        postscreen_denylist_action = drop
        postscreen_greet_wait = 2s
        postscreen_greet_action = drop
        postscreen_dnsbl_sites = zen.example=127.0.0.[2..11]*2, wl.example*-3
        postscreen_dnsbl_threshold = 2
        postscreen_dnsbl_allowlist_threshold = -1
        postscreen_dnsbl_action = enforce
        postscreen_cache_map = sqlite:{tmp_path}/postscreen_cache.db
        """).start()
    yield d
    code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err


def readReply(sock):
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def readAll(sock):
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


def test_screen(daemon, dnsmasq, tmp_path):
    # An early talker: the teaser, then its EHLO before the greeting: 521 and a close.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20, source_address=("127.0.0.4", 0)) as s:
        assert readReply(s) == b"220-mta.test ESMTP mta\r\n"
        s.sendall(b"EHLO zombie.example\r\n")
        assert readAll(s) == b"521 5.5.1 Protocol error\r\n"

    # A listed client: the dummy engine refuses its recipient; nothing is queued.
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="spam.example", timeout=30,
                      source_address=("127.0.0.2", 0)) as client:
        code, text = client.ehlo()
        assert code == 250 and b"PIPELINING" not in text
        assert client.mail("s@example.org")[0] == 250
        code, text = client.rcpt("b@mta.test")
        assert (code, text) == (550, b"5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example")
        assert client.quit()[0] == 221

    # A clean client passes after the greeting delay, and smtpd accepts its message.
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=30,
                      source_address=("127.0.0.3", 0)) as client:
        assert time.monotonic() - started >= 1.9
        client.sendmail("a@example.org", ["b@mta.test"], b"Subject: screened\r\n\r\nhello\r\n")
    waitFor(lambda: len(daemon.incoming()) == 1, what="the clean client's message in the queue")

    # Its next connection is PASS OLD: no delay.
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=30,
                      source_address=("127.0.0.3", 0)) as client:
        assert client.noop()[0] == 250
    assert time.monotonic() - started < 1.5

    # An allow-listed client (wl.example, score -3 <= -1) skips the greeting delay at once.
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="good.example", timeout=30,
                      source_address=("127.0.0.5", 0)) as client:
        assert client.noop()[0] == 250

    # A deny-listed client (postscreen_access_list): 521 at once.
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=20, source_address=("127.0.0.6", 0)) as s:
        assert readReply(s) == b"521 5.3.2 Service currently unavailable\r\n"

    log = waitFor(lambda: (lambda text: text if "DENYLISTED" in text else None)(daemon.maillogText()),
                  what="the mail log")
    assert "PREGREET 21 after " in log and " from [127.0.0.4]:" in log and ": EHLO zombie.example" in log
    assert "DNSBL rank 2 for [127.0.0.2]:" in log
    assert ("NOQUEUE: reject: RCPT from [127.0.0.2]:" in log and ": 550 5.7.1 Service unavailable; client "
            "[127.0.0.2] blocked using zen.example; from=<s@example.org>, to=<b@mta.test>, proto=ESMTP, "
            "helo=<spam.example>" in log)
    assert "postscreen" in log and "CONNECT from [127.0.0.3]:" in log
    assert "PASS NEW [127.0.0.3]:" in log and "PASS OLD [127.0.0.3]:" in log
    assert "PASS NEW [127.0.0.5]:" in log
    assert "DISCONNECT [127.0.0.2]:" in log and "DENYLISTED [127.0.0.6]:" in log
    assert "connect from unknown[127.0.0.3]" in log and "connect from unknown[127.0.0.2]" not in log
    assert len(daemon.incoming()) == 1  # the listed client's message was never queued
    assert "2.0.0.127.zen.example" in dnsmasq.logText()

    # The cache file holds the passed clients (written a second after each change).
    def rows():
        try:
            with sqlite3.connect(tmp_path / "postscreen_cache.db") as db:
                return {address for address, in db.execute("SELECT address FROM postscreen")}
        except sqlite3.Error:
            return None

    found = waitFor(lambda: (lambda r: r if r and {"127.0.0.3", "127.0.0.5"} <= r else None)(rows()),
                    what="the cache file's entries")
    assert "127.0.0.2" not in found and "127.0.0.4" not in found


def test_screen_in_worker_processes(tmp_path, dnsmasq):
    """With worker_processes the screen runs in the workers, where the sessions run."""
    d = Daemon(tmp_path, main=f"""\
        worker_processes = 2
        dns_servers = 127.0.0.1:{dnsmasq.port}
        postscreen_enable = yes
        postscreen_access_list =
        postscreen_greet_wait = 1s
        postscreen_greet_action = drop
        postscreen_dnsbl_sites = zen.example
        postscreen_dnsbl_action = drop
        """).start()
    try:
        d.waitForWorkers(2)
        with socket.create_connection(("127.0.0.1", d.port), timeout=20, source_address=("127.0.0.2", 0)) as s:
            assert readAll(s) == (b"220-mta.test ESMTP mta\r\n"
                                  b"521 5.7.1 Service unavailable; client [127.0.0.2] blocked using zen.example\r\n")
        for n in range(3):
            with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example", timeout=30,
                              source_address=("127.0.0.3", 0)) as client:
                client.sendmail("a@example.org", ["b@mta.test"], f"Subject: {n}\r\n\r\nhello\r\n".encode())
        waitFor(lambda: len(d.incoming()) == 3, what="three messages in the queue")
        log = waitFor(lambda: (lambda t: t if t.count("PASS ") >= 3 else None)(d.maillogText()), what="the log")
        assert "PASS NEW [127.0.0.3]:" in log and "DNSBL rank 1 for [127.0.0.2]:" in log
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err


def test_deep_protocol_tests(tmp_path):
    """postscreen_pipelining_enable: a pipelining client is refused; a polite one gets 450, then passes."""
    d = Daemon(tmp_path, main="""\
        postscreen_enable = yes
        postscreen_access_list =
        postscreen_pipelining_enable = yes
        postscreen_non_smtp_command_enable = yes
        """).start()
    try:
        with socket.create_connection(("127.0.0.1", d.port), timeout=20, source_address=("127.0.0.7", 0)) as s:
            assert readReply(s) == b"220 mta.test ESMTP mta\r\n"
            s.sendall(b"EHLO bot.example\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<b@mta.test>\r\nQUIT\r\n")
            replies = readAll(s)
            assert b"550 5.5.1 Protocol error\r\n221 2.0.0 Bye\r\n" in replies
        with socket.create_connection(("127.0.0.1", d.port), timeout=20, source_address=("127.0.0.8", 0)) as s:
            assert readReply(s) == b"220 mta.test ESMTP mta\r\n"
            s.sendall(b"GET / HTTP/1.1\r\n")
            assert readAll(s) == b"521 5.7.0 Error: I can break rules, too. Goodbye.\r\n"
        with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example", timeout=30,
                          source_address=("127.0.0.3", 0)) as client:
            client.ehlo()
            client.mail("a@example.org")
            assert client.rcpt("b@mta.test") == (450, b"4.3.2 Service currently unavailable")
        with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example", timeout=30,
                          source_address=("127.0.0.3", 0)) as client:  # it came back: smtpd now
            client.sendmail("a@example.org", ["b@mta.test"], b"Subject: second try\r\n\r\nhello\r\n")
        waitFor(lambda: len(d.incoming()) == 1, what="the message of the second try")
        log = waitFor(lambda: (lambda t: t if "PASS OLD [127.0.0.3]" in t else None)(d.maillogText()), what="the log")
        assert "COMMAND PIPELINING from [127.0.0.7]:" in log and "NON-SMTP COMMAND from [127.0.0.8]:" in log
        assert "PASS NEW [127.0.0.3]:" in log and "NOQUEUE: reject: RCPT from [127.0.0.3]:" in log
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err
