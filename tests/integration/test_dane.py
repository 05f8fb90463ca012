"""
DANE against a real validating resolver: zones signed with ldns-signzone, served by nsd, validated
by unbound (tests/integration/dnssec.py), all on loopback; mta's DNS client asks unbound with
DNSSEC, DANE decides per MX host, and the chain of mta's own TLS server (the next hop, smtpd TLS
with the test certificate for mx.test) is judged by the TLSA records after a real STARTTLS
(tests/integration/danecheck.py, in its own process for the reactor).

TLSA records: 3 1 1 of the server's key (matching and not), 2 0 1 of the test CA, none, and an
MX found through an unsigned zone (smtp_tls_dane_insecure_mx_policy).
"""

import hashlib
import json
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.integration.daemon import ROOT, environment
from tests.integration.dnssec import SignedDNS
from tests.integration.test_client_tls import mtaNexthop
from tests.tlssupport import Certificates

pytestmark = pytest.mark.integration


@pytest.fixture
def certs(tmp_path):
    directory = tmp_path / "certs"
    directory.mkdir()
    return Certificates(directory)


def pems(path):
    return x509.load_pem_x509_certificates(open(path, "rb").read())


def leafSpkiSha256(certs):
    leaf = pems(certs["server.pem"])[0]
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def caSha256(certs):
    return hashlib.sha256(pems(certs["ca.pem"])[0].public_bytes(serialization.Encoding.DER)).hexdigest()


@pytest.fixture
def nexthop(makeDaemon, certs):
    """mta with smtpd TLS (the certificate for mx.test, its chain with the test CA)."""
    return mtaNexthop(makeDaemon, certs.serverMain("may"))


@pytest.fixture
def bed(tmp_path):
    beds = []

    def make(port, tlsa):
        records = "".join(f"_{port}._tcp IN TLSA {t}\n" for t in tlsa)
        b = SignedDNS(tmp_path / f"dns{len(beds)}", signed={
            "dane.test": "@ IN MX 10 mx.test.\n",
            "mx.test": "@ IN A 127.0.0.1\n" + records,
        }, unsigned={"plain.test": "@ IN MX 10 mx.test.\n"})
        beds.append(b)
        return b.start()

    yield make
    for b in beds:
        b.stop()


def danecheck(bed, nexthop, main):
    spec = {"dns": bed.port, "nexthop": nexthop, "main": main}
    done = subprocess.run([sys.executable, "-m", "tests.integration.danecheck", json.dumps(spec)], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert "error" not in result, (result, bed.logs()[-3000:])
    return result


DANE = "smtp_tls_security_level = dane\n"


def test_dane_ee_spki_sha256_matching_is_verified(bed, nexthop, certs):
    b = bed(nexthop.port, [f"3 1 1 {leafSpkiSha256(certs)}"])
    result = danecheck(b, f"dane.test:{nexthop.port}", DANE)
    assert result["hosts"] == [["mx.test", True, True]]  # MX and A RRsets validated by unbound
    assert result["level"] == "dane" and result["tlsa"] == 1 and result["sni"] == "mx.test"
    assert result["trust"] == "Verified" and result["failure"] is None


def test_dane_ee_not_matching_is_untrusted_and_deferred(bed, nexthop, certs):
    b = bed(nexthop.port, ["3 1 1 " + "00" * 32])
    result = danecheck(b, f"dane.test:{nexthop.port}", DANE)
    assert result["level"] == "dane"
    assert result["trust"] == "Untrusted" and result["failure"] == "Server certificate not verified"


def test_dane_ta_of_the_test_ca_is_verified(bed, nexthop, certs):
    b = bed(nexthop.port, [f"2 0 1 {caSha256(certs)}"])
    result = danecheck(b, f"dane.test:{nexthop.port}", "smtp_tls_security_level = dane-only\n")
    assert result["level"] == "dane" and result["trust"] == "Verified", result


def test_insecure_mx_with_secure_tlsa_is_trusted_not_verified(bed, nexthop, certs):
    b = bed(nexthop.port, [f"3 1 1 {leafSpkiSha256(certs)}"])
    result = danecheck(b, f"plain.test:{nexthop.port}", DANE)
    assert result["hosts"] == [["mx.test", False, True]]  # the MX RRset is in an unsigned zone
    assert result["level"] == "dane" and result["mxSecure"] is False and result["trust"] == "Trusted"
    result = danecheck(b, f"plain.test:{nexthop.port}", DANE + "smtp_tls_dane_insecure_mx_policy = may\n")
    assert result["level"] == "may" and result["tlsa"] == 0
    result = danecheck(b, f"plain.test:{nexthop.port}", "smtp_tls_security_level = dane-only\n")
    assert result["deferred"] == ["4.7.5", "non DNSSEC destination"]


def test_no_tlsa_dane_is_may_and_dane_only_defers(bed, nexthop):
    b = bed(nexthop.port, [])
    assert danecheck(b, f"dane.test:{nexthop.port}", DANE)["level"] == "may"
    result = danecheck(b, f"dane.test:{nexthop.port}", "smtp_tls_security_level = dane-only\n")
    assert result["deferred"] == ["4.7.5", "no TLSA records found"]


def test_only_unusable_tlsa_dane_is_encrypt(bed, nexthop, certs):
    b = bed(nexthop.port, [f"1 1 1 {leafSpkiSha256(certs)}"])  # PKIX-EE: unusable for SMTP
    assert danecheck(b, f"dane.test:{nexthop.port}", DANE)["level"] == "encrypt"


# -- end to end: mta relays to mta over DANE ---------------------------------------------------------


def daneSender(makeDaemon, b, port, level="dane"):
    """mta sending mail for dane.test / plain.test through MX lookups at unbound, to port C{port}."""
    main = (f"transport_maps = inline:{{ dane.test=smtp:dane.test:{port}, plain.test=smtp:plain.test:{port} }}\n"
            f"dns_servers = 127.0.0.1:{b.port}\nsmtp_dns_support_level = dnssec\ninet_protocols = ipv4\n"
            f"smtp_tls_security_level = {level}\nsmtp_tls_loglevel = 1\n")
    return makeDaemon(main=main, hold=False).start()


def test_delivery_over_dane_is_verified(makeDaemon, bed, nexthop, certs):
    from tests.integration.peers import waitFor
    from tests.integration.test_client_peers import send, waitDelivery

    b = bed(nexthop.port, [f"3 1 1 {leafSpkiSha256(certs)}"])
    d = daneSender(makeDaemon, b, nexthop.port, "dane-only")
    qid = send(d, ["rcpt@dane.test"])
    [line] = waitDelivery(d, qid, "rcpt@dane.test")
    assert line[3] == "sent", (line, d.maillogText())
    log = d.maillogText()
    assert f"Verified TLS connection established to mx.test[127.0.0.1]:{nexthop.port}: TLSv1.3" in log, log
    assert waitFor(lambda: nexthop.incoming(), timeout=15, what="the message at the next hop")


def test_delivery_with_a_wrong_tlsa_record_is_deferred(makeDaemon, bed, nexthop):
    from tests.integration.test_client_peers import send, waitDelivery

    b = bed(nexthop.port, ["3 1 1 " + "00" * 32])
    d = daneSender(makeDaemon, b, nexthop.port)
    qid = send(d, ["rcpt@dane.test"])
    [line] = waitDelivery(d, qid, "rcpt@dane.test")
    assert line[2:] == ("4.7.5", "deferred", "Server certificate not verified"), (line, d.maillogText())
    assert f"Untrusted TLS connection established to mx.test[127.0.0.1]:{nexthop.port}" in d.maillogText()
    assert nexthop.incoming() == []
