"""The smtp transport against Postfix's smtp-sink on loopback."""

import os
import shutil
import signal
import smtplib
import subprocess

import pytest

from tests.integration.daemon import freePort, waitFor

pytestmark = pytest.mark.integration

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"




@pytest.fixture
def sink(tmp_path):
    """smtp-sink on a free loopback port dumping each message into a file; (port, dump directory, start)."""
    # smtp-sink drops privileges to the postfix user: its dump directory must be
    # reachable by that user (pytest's tmp_path is not).
    import tempfile
    from pathlib import Path

    dump = Path(tempfile.mkdtemp(prefix="mta-sink-", dir="/tmp"))
    os.chmod(dump, 0o777)
    processes = []

    def start(*options):
        port = freePort()
        process = subprocess.Popen(
            [SMTP_SINK, "-u", "postfix", "-d", f"{dump}/%H%M%S.", *options, f"127.0.0.1:{port}", "64"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        processes.append(process)
        waitFor(lambda: _answers(port), what="smtp-sink")
        return port

    yield dump, start
    for process in processes:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(dump, ignore_errors=True)


def _answers(port):
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def send(daemon, recipient, body=b"Subject: out\r\n\r\nhello\r\n..dot\r\n"):
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as s:
        s.sendmail("sender@example.org", [recipient], body)


def dumped(dump, needle):
    """The first message in smtp-sink's dump directory that holds C{needle}, once it does.

    smtp-sink creates a dump file first and fills it as the data arrives, so a
    file that exists may still be empty."""

    def find():
        for name in sorted(os.listdir(dump)):
            with open(os.path.join(dump, name), "rb") as f:
                data = f.read()
            if needle in data:
                return data
        return None

    return waitFor(find, what=f"a message with {needle!r} at smtp-sink")


def test_relayToSmtpSink(makeDaemon, sink):
    dump, start = sink
    port = start()
    d = makeDaemon(main=f"transport_maps = inline:{{ sink.example=smtp:[127.0.0.1]:{port} }}\n", hold=False).start()
    send(d, "u@sink.example")
    log = waitFor(lambda: "removed" in d.maillogText() and d.maillogText(), what="removed")
    data = dumped(dump, b"Subject: out")
    assert b"\nhello\n..dot\n" in data.replace(b"\r\n", b"\n")  # dots intact
    assert f"relay=127.0.0.1[127.0.0.1]:{port}" in log
    assert "dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as" in log or "status=sent (" in log


def test_tempfailIsDeferred(makeDaemon, sink):
    dump, start = sink
    port = start("-r", "RCPT")
    d = makeDaemon(main=f"transport_maps = inline:{{ sink.example=smtp:[127.0.0.1]:{port} }}\n", hold=False).start()
    send(d, "u@sink.example")
    log = waitFor(lambda: "status=deferred" in d.maillogText() and d.maillogText(), what="a deferral")
    assert "(in reply to RCPT TO command)" in log
    assert len(os.listdir(os.path.join(d.queue, "deferred"))) == 1


def test_connectionRefusedIsDeferred(makeDaemon):
    port = freePort()  # nothing listens there
    d = makeDaemon(main=f"transport_maps = inline:{{ sink.example=smtp:[127.0.0.1]:{port} }}\n", hold=False).start()
    send(d, "u@sink.example")
    log = waitFor(lambda: "status=deferred" in d.maillogText() and d.maillogText(), what="a deferral")
    assert f"connect to 127.0.0.1[127.0.0.1]:{port}: Connection refused" in log


def test_connectionIsReusedForTheSameDestination(makeDaemon, sink):
    dump, start = sink
    port = start()
    d = makeDaemon(main=f"transport_maps = inline:{{ sink.example=smtp:[127.0.0.1]:{port} }}\n", hold=False).start()
    send(d, "u@sink.example")
    waitFor(lambda: "removed" in d.maillogText(), what="the first delivery")
    send(d, "v@sink.example")  # within smtp_connection_cache_time_limit (2 s)
    log = waitFor(lambda: "to=<v@sink.example>" in d.maillogText() and d.maillogText(), what="the second delivery")
    line = [l for l in log.splitlines() if "to=<v@sink.example>" in l][0]
    assert f"relay=127.0.0.1[127.0.0.1]:{port}, conn_use=2," in line
    assert len(waitFor(lambda: len(os.listdir(dump)) == 2 and os.listdir(dump), what="two messages")) == 2


def test_eightBitIsConvertedForAServerWithout8bitmime(makeDaemon, sink):
    dump, start = sink
    port = start("-8")  # smtp-sink does not announce 8BITMIME
    d = makeDaemon(main=f"transport_maps = inline:{{ sink.example=smtp:[127.0.0.1]:{port} }}\n", hold=False).start()
    body = (b"MIME-Version: 1.0\r\nSubject: 8bit\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9\r\n")
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.sendmail("sender@example.org", ["u@sink.example"], body, mail_options=["BODY=8BITMIME"])
    data = dumped(dump, b"caf")
    assert data.isascii(), data
    assert b"Content-Transfer-Encoding: quoted-printable" in data and b"caf=C3=A9" in data
    assert b"BODY=8BITMIME" not in data  # smtp-sink records the MAIL FROM arguments
