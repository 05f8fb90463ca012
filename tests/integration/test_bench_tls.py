"""The benchmark's TLS case against a real Postfix (bench/postfix_instance.py with tls=...):
bench/tlsload.py sends over STARTTLS and checks every reply, verifies the certificate the
harness made, counts one handshake per message (or per session with --reuse), and fails when
STARTTLS is not offered or the certificate is another; treeCpuSeconds counts reaped children."""

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
