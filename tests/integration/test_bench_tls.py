"""The benchmark's TLS case against a real Postfix (bench/postfix_instance.py with tls=...):
bench/tlsload.py sends over STARTTLS and checks every reply, verifies the certificate the
harness made, counts one handshake per message (or per session with --reuse), and fails when
STARTTLS is not offered or the certificate is another; treeCpuSeconds counts reaped children.
relay --relay-tls: bench/tlssink.py counts connections, full and resumed handshakes and
messages, and both mta and Postfix (through tlsproxy) reuse TLS connections and resume sessions."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.integration.daemon import ROOT
from tests.integration.peerservers import freePort

pytestmark = pytest.mark.integration

BENCH = os.path.join(ROOT, "bench")
TLSLOAD = os.path.join(BENCH, "tlsload.py")


@pytest.fixture
def loads(monkeypatch):
    """bench/loads.py, imported as bench/run.py imports it (bench/ on sys.path)."""
    monkeypatch.syspath_prepend(BENCH)
    import loads

    return loads


@pytest.fixture
def postfixWith():
    """Start a private Postfix (accept mode: bench.example mail is held) with tls=(cert, key) or without."""
    from bench.postfix_instance import PostfixInstance

    started = []

    def start(tls=None):
        # in /tmp itself: below tmp_path the postlog socket's name is too long for a UNIX socket
        instance = PostfixInstance(freePort(), tls=tuple(map(str, tls)) if tls else None)
        started.append(instance)
        instance.start()
        return instance

    yield start
    for instance in started:
        instance.stop()


def tlsload(port, *args, cafile=None):
    argv = [sys.executable, TLSLOAD, "--json", *args]
    if cafile is not None:
        argv += ["--cafile", str(cafile), "--servername", "bench-tls.example"]
    done = subprocess.run([*argv, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def waitCount(instance, n, timeout=10):
    deadline = time.monotonic() + timeout
    while instance.queueCount() < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return instance.queueCount()


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_aHandshakePerMessageAndPerSession(loads, postfixWith, tmp_path, kind):
    cert, key = loads.makeCertificate(tmp_path / "tls", kind)
    assert oct(os.stat(key).st_mode & 0o777) == "0o600"
    postfix = postfixWith((cert, key))
    assert loads.offersStarttls(postfix.port)[0]
    cpu0 = loads.treeCpuSeconds(postfix.masterPid())
    code, result = tlsload(postfix.port, "-m", "30", "-s", "5", cafile=cert)
    assert code == 0, result
    assert (result["ok"], result["failed"], result["connections"]) == (30, 0, 30)
    assert result["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    code, result = tlsload(postfix.port, "-m", "20", "-s", "2", "--reuse", cafile=cert)
    assert code == 0, result
    assert (result["ok"], result["connections"]) == (20, 2)
    assert waitCount(postfix, 50) == 50 == postfix.postqueueCount()  # every 250 is a queued message
    assert loads.treeCpuSeconds(postfix.masterPid()) > cpu0


def test_noStarttlsIsAFailureOfEveryMessage(loads, postfixWith, tmp_path):
    cert, _ = loads.makeCertificate(tmp_path / "tls", "ecdsa")
    postfix = postfixWith()
    offered, keywords = loads.offersStarttls(postfix.port)
    assert not offered and "PIPELINING" in keywords
    code, result = tlsload(postfix.port, "-m", "4", "-s", "2", cafile=cert)
    assert code == 1 and (result["ok"], result["failed"]) == (0, 4)
    assert result["errors"][0] == "SmtpError: the server does not offer STARTTLS"
    assert postfix.queueCount() == 0


def test_anotherCertificateIsRefused(loads, postfixWith, tmp_path):
    served = loads.makeCertificate(tmp_path / "served", "ecdsa")
    other, _ = loads.makeCertificate(tmp_path / "other", "ecdsa")
    postfix = postfixWith(served)
    code, result = tlsload(postfix.port, "-m", "3", "-s", "1", cafile=other)
    assert code == 1 and result["failed"] == 3
    assert "certificate verify failed" in result["errors"][0]


def test_treeCpuSecondsCountsAReapedChild(loads):
    before = loads.treeCpuSeconds(os.getpid())
    subprocess.run([sys.executable, "-c", "import time\nt = time.process_time()\n"
                    "while time.process_time() - t < 0.3: pass"], check=True, timeout=60)
    assert loads.treeCpuSeconds(os.getpid()) - before >= 0.25  # the child's, in our cutime once reaped
    assert loads.treeCpuSeconds(2 ** 22 + 12345) is None  # no such process


def test_anMtaWithoutStarttlsFailsWithAClearLine(loads, tmp_path):
    """bench/run.py's mta side under --tls, against this branch's mta started without TLS parameters."""
    import types

    import run

    server = run.MtaServer(tmp_path / "mta", freePort(), None, 30)
    entry = run.Entry(server, None, 10)
    try:
        with pytest.raises(run.BenchFailure) as failure:
            run.prepare(entry, types.SimpleNamespace(tls=True, warmup=5))
    finally:
        entry.stop()
    assert str(failure.value).startswith("mta does not offer STARTTLS (EHLO: PIPELINING ")
    assert str(failure.value).endswith("--tls needs its server TLS with smtpd_tls_security_level = may")


# -- relay --relay-tls: outbound TLS to bench/tlssink.py ------------------------------------


def _starttls(port, context, session=None, mail=False):
    """One connection to the sink: EHLO, STARTTLS, EHLO (and a message); the SSL socket's session."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        f = raw.makefile("rb")

        def replies(sock, reader):
            lines = []
            while True:
                lines.append(reader.readline())
                if lines[-1][3:4] != b"-":
                    return b"".join(lines)

        assert f.readline().startswith(b"220 ")
        raw.sendall(b"EHLO client.example\r\n")
        assert b"250 STARTTLS\r\n" in replies(raw, f)
        raw.sendall(b"MAIL FROM:<a@example.org>\r\n")
        assert f.readline().startswith(b"530 ")  # --require-tls: nothing in plaintext
        raw.sendall(b"STARTTLS\r\n")
        assert f.readline().startswith(b"220 ")
        tls = context.wrap_socket(raw, session=session)
        t = tls.makefile("rb")
        tls.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" not in replies(tls, t)  # not offered again inside TLS
        if mail:
            tls.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
            assert [t.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
            tls.sendall(b"Subject: x\r\n\r\nbody\r\n.\r\n")
            assert t.readline().startswith(b"250 ")
        tls.sendall(b"QUIT\r\n")
        assert t.readline().startswith(b"221 ")
        return tls.session, tls.session_reused


def test_theTlsSinkCountsConnectionsHandshakesResumptionsAndMessages(loads, tmp_path):
    import ssl

    import tlssink

    cert, key = loads.makeCertificate(tmp_path / "tls", "ecdsa")
    sink = tlssink.TlsSink(freePort(), 30, cert, key)
    sink.start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False
        session, reused = _starttls(sink.port, context, mail=True)
        assert not reused
        _, reused = _starttls(sink.port, context, session=session, mail=True)
        assert reused
        assert sink.waitFor(2, 10, 5) == 2
        deadline = time.monotonic() + 5
        while sink.snapshot()["resumed"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # the start-up probe is a connection too
        assert sink.snapshot() == {"conn": 3, "tls": 2, "resumed": 1, "mesg": 2}
    finally:
        sink.stop()


def test_relayOverTlsMtaAndPostfixReuseConnectionsAndResumeSessions():
    """bench/run.py relay --relay-tls, small: both relay everything over TLS, with fewer connections and
    handshakes than messages (Postfix only through tlsproxy: TLS is required to the sink)."""
    done = subprocess.run([sys.executable, os.path.join(BENCH, "run.py"), "relay", "--relay-tls", "--messages", "60",
                           "--sessions", "4", "--rounds", "1", "--warmup", "10", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(done.stdout)
    assert doc["relay_tls"] is True
    for name in ("mta", "postfix"):
        result = doc["results"][name]
        assert result["ok"] and result["verified"] and result["delivered"] == 60, result
        out = result["out"]
        assert out["conn"] == out["tls"] >= 1  # every connection to the sink was TLS (it refuses plaintext)
        per = doc["out"][name]
        assert per["messages_per_connection"] > 1, (name, out)  # TLS connections were reused
        assert per["handshakes_per_message"] < 1, (name, out)
        assert out["resumed"] >= 1, (name, out)  # new connections resumed the warm-up's sessions
    assert doc["out_ratios"]["messages_per_connection"] > 0 and doc["out_ratios"]["handshakes_per_message"] > 0
