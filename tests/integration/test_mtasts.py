"""
MTA-STS against real peers on loopback: the policy fetch from a real HTTPS server with certificates
of a test CA (tests/integration/stscheck.py, its own process), and end to end: mta sending mail for
the test domains finds the MX, the _mta-sts TXT record and the policy host's address at unbound
(unsigned zones served by nsd, tests/integration/dnssec.py), fetches the policy over HTTPS from
127.0.0.43:443 (tests/integration/stshttps.py) and delivers over verified TLS to mta's own server
(the next hop, with the test certificate for mx.test), or defers where the policy says so.
"""

import json
import os
import sqlite3
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.integration.daemon import ROOT, environment
from tests.integration.dnssec import SignedDNS
from tests.integration.test_client_tls import mtaNexthop
from tests.tlssupport import Certificates, _cert, _pem

pytestmark = pytest.mark.integration

POLICY = "version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"
HTTPS_ADDRESS = "127.0.0.43"  # the policy hosts' address (port 443: RFC 8461 fixes it)


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir()
    return Certificates(directory)


def httpsChain(directory, names):
    """(key and chain file, CA file) of an HTTPS server certificate for C{names}, from a fresh CA."""
    pem = serialization.Encoding.PEM
    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("mta-sts test CA", caKey, "mta-sts test CA", caKey, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert(names[0], key, "mta-sts test CA", caKey, names=names)
    chain, caFile = directory / "https-chain.pem", directory / "https-ca.pem"
    chain.write_bytes(_pem(key) + cert.public_bytes(pem) + ca.public_bytes(pem))
    caFile.write_bytes(ca.public_bytes(pem))
    return str(chain), str(caFile)


def stscheck(spec):
    done = subprocess.run([sys.executable, "-m", "tests.integration.stscheck", json.dumps(spec)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "crash" not in result, (result, done.stderr)
    return result


# -- the fetch ---------------------------------------------------------------------------------------


def test_policy_fetch_over_https_with_web_pki_checks(tmp_path, certs):
    good = POLICY.format(mode="enforce", mx="mx.test")
    routes = {
        "mta-sts.good.test": {"body": good},
        "mta-sts.redirect.test": {"status": 301, "location": "https://mta-sts.good.test/.well-known/mta-sts.txt"},
        "mta-sts.html.test": {"body": good, "type": "text/html"},
        "mta-sts.params.test": {"body": good, "type": "text/plain; charset=utf-8"},
        "mta-sts.big.test": {"size": 70000},
        "mta-sts.slow.test": {"body": good, "delay": 10},
        "mta-sts.wrongname.test": {"body": good},
    }
    names = [name for name in routes if name != "mta-sts.wrongname.test"] + ["mta-sts.missing.test"]
    chain, caFile = httpsChain(tmp_path, names)
    spec = {"server": {"chain": chain, "routes": routes}, "ca": caFile, "timeout": 3,
            "addresses": {"mta-sts.down.test": ["127.0.0.2"]},
            "domains": ["good.test", "params.test", "redirect.test", "html.test", "big.test", "slow.test",
                        "wrongname.test", "missing.test", "down.test"]}
    result = stscheck(spec)
    assert result["good.test"] == {"text": good} and result["params.test"] == {"text": good}
    assert result["redirect.test"]["type"] == "sts-policy-fetch-error"  # never followed (RFC 8461 3.3)
    assert "HTTP status 301" in result["redirect.test"]["error"]
    assert result["html.test"]["type"] == "sts-policy-invalid" and "text/html" in result["html.test"]["error"]
    assert result["big.test"]["type"] == "sts-policy-invalid" and "64 KiB" in result["big.test"]["error"]
    assert result["slow.test"] == {"error": "policy fetch from mta-sts.slow.test timed out",
                                   "type": "sts-policy-fetch-error"}
    assert result["wrongname.test"]["type"] == "sts-webpki-invalid", result["wrongname.test"]
    assert "HTTP status 404" in result["missing.test"]["error"]
    assert result["down.test"]["type"] == "sts-policy-fetch-error", result["down.test"]
    assert "mta-sts.good.test" in result["asked"]  # the host name went to mta's resolver


def test_policy_fetch_from_a_server_of_an_untrusted_ca(tmp_path, certs):
    chain, _ = httpsChain(tmp_path, ["mta-sts.good.test"])
    spec = {"server": {"chain": chain, "routes": {"mta-sts.good.test": {"body": "x"}}}, "ca": certs["ca.pem"],
            "domains": ["good.test"]}
    assert stscheck(spec)["good.test"]["type"] == "sts-webpki-invalid"


# -- end to end ----------------------------------------------------------------------------------------


ZONES = {
    "mx.test": "@ IN A 127.0.0.1\n",
    "sts.test": "@ IN MX 10 mx.test.\n_mta-sts IN TXT \"v=STSv1; id=1\"\nmta-sts IN A 127.0.0.43\n",
    "mismatch.test": "@ IN MX 10 mx.test.\n_mta-sts IN TXT \"v=STSv1; id=1\"\nmta-sts IN A 127.0.0.43\n",
    "testing.test": "@ IN MX 10 mx.test.\n_mta-sts IN TXT \"v=STSv1; id=1\"\nmta-sts IN A 127.0.0.43\n",
}


@pytest.fixture
def bed(tmp_path, certs):
    """unbound and nsd with the zones, and the HTTPS policy server on 127.0.0.43:443."""
    chain, caFile = httpsChain(tmp_path, ["mta-sts.sts.test", "mta-sts.mismatch.test", "mta-sts.testing.test"])
    routes = {"mta-sts.sts.test": {"body": POLICY.format(mode="enforce", mx="mx.test")},
              "mta-sts.mismatch.test": {"body": POLICY.format(mode="enforce", mx="other.test")},
              "mta-sts.testing.test": {"body": POLICY.format(mode="testing", mx="*.elsewhere.test")}}
    log = tmp_path / "https.log"
    spec = {"address": HTTPS_ADDRESS, "port": 443, "chain": chain, "routes": routes, "log": str(log)}
    https = subprocess.Popen([sys.executable, "-m", "tests.integration.stshttps", json.dumps(spec)], cwd=ROOT,
                             env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = https.stdout.readline()
    assert line.startswith("ready"), (line, https.stderr.read() if https.poll() is not None else "")
    dns = SignedDNS(tmp_path / "dns", unsigned=ZONES).start()
    dns.httpsCA = caFile
    dns.httpsLog = log
    yield dns
    dns.stop()
    https.terminate()
    https.wait(10)


def stsSender(makeDaemon, bed, certs, port, mxCA=True):
    domains = ", ".join(f"{d}=smtp:{d}:{port}" for d in ("sts.test", "mismatch.test", "testing.test"))
    main = (f"transport_maps = inline:{{ {domains} }}\ndns_servers = 127.0.0.1:{bed.port}\ninet_protocols = ipv4\n"
            f"smtp_mta_sts_CAfile = {bed.httpsCA}\nsmtp_tls_loglevel = 1\n"
            + (f"smtp_tls_CAfile = {certs['ca.pem']}\n" if mxCA else ""))
    return makeDaemon(main=main, hold=False).start()


@pytest.fixture
def nexthop(makeDaemon, certs):
    return mtaNexthop(makeDaemon, certs.serverMain("may"))


def test_enforce_delivers_over_verified_tls_and_keeps_the_policy(makeDaemon, bed, certs, nexthop):
    from tests.integration.peers import waitFor
    from tests.integration.test_client_peers import send, waitDelivery

    d = stsSender(makeDaemon, bed, certs, nexthop.port)
    qid = send(d, ["rcpt@sts.test"])
    [line] = waitDelivery(d, qid, "rcpt@sts.test")
    log = d.maillogText()
    assert line[3] == "sent", (line, log)
    assert "sts.test: MTA-STS policy fetched: id=1 mode=enforce max_age=86400 mx=mx.test" in log, log
    assert f"Verified TLS connection established to mx.test[127.0.0.1]:{nexthop.port}: TLSv1.3" in log, log
    assert waitFor(lambda: nexthop.incoming(), timeout=15, what="the message at the next hop")
    assert "mta-sts.sts.test /.well-known/mta-sts.txt" in bed.httpsLog.read_text()
    # A second message: the cached policy (no second fetch); the cache file holds it for a restart.
    qid = send(d, ["rcpt2@sts.test"])
    assert waitDelivery(d, qid, "rcpt2@sts.test")[0][3] == "sent"
    assert bed.httpsLog.read_text().count("mta-sts.sts.test") == 1
    rows = sqlite3.connect(os.path.join(d.queue, "mta-sts.sqlite")).execute(
        "SELECT domain, id, mode, mx FROM policies").fetchall()
    assert rows == [("sts.test", "1", "enforce", "mx.test")]


def test_enforce_with_an_untrusted_mx_certificate_defers_and_never_sends_in_plaintext(makeDaemon, bed, certs,
                                                                                      nexthop):
    from tests.integration.test_client_peers import send, waitDelivery

    d = stsSender(makeDaemon, bed, certs, nexthop.port, mxCA=False)
    qid = send(d, ["rcpt@sts.test"])
    [line] = waitDelivery(d, qid, "rcpt@sts.test")
    assert line[2:] == ("4.7.5", "deferred", "Server certificate not trusted"), (line, d.maillogText())
    assert (f"warning: Server certificate not trusted: mx.test[127.0.0.1]:{nexthop.port} (MTA-STS policy of "
            "sts.test: mode enforce, TLS level verify)") in d.maillogText()
    assert nexthop.incoming() == []


def test_enforce_skips_an_mx_the_policy_does_not_list(makeDaemon, bed, certs, nexthop):
    from tests.integration.test_client_peers import send, waitDelivery

    d = stsSender(makeDaemon, bed, certs, nexthop.port)
    qid = send(d, ["rcpt@mismatch.test"])
    [line] = waitDelivery(d, qid, "rcpt@mismatch.test")
    reason = "MX host mx.test does not match the MTA-STS policy of mismatch.test"
    assert line[2:] == ("4.7.5", "deferred", reason), (line, d.maillogText())
    assert f"mx.test[127.0.0.1]:{nexthop.port}: skipped: {reason}" in d.maillogText()
    assert nexthop.incoming() == []


def test_testing_mode_logs_and_delivers(makeDaemon, bed, certs, nexthop):
    from tests.integration.test_client_peers import send, waitDelivery

    d = stsSender(makeDaemon, bed, certs, nexthop.port)
    qid = send(d, ["rcpt@testing.test"])
    [line] = waitDelivery(d, qid, "rcpt@testing.test")
    log = d.maillogText()
    assert line[3] == "sent", (line, log)
    assert ("MX host mx.test does not match the MTA-STS policy of testing.test (mode testing: not enforced)"
            in log), log
