"""mta tls as its own process (python3 -m mta.cli.main), checked with openssl(1): the key and the
certificate it writes, and the TLSA digest, computed independently as DANE's documentation says:
``openssl x509 -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum``."""

import os
import re
import stat
import subprocess
import sys

import pytest

from tests.integration.daemon import ROOT, environment

pytestmark = pytest.mark.integration

HOST = "mail.example.org"


def mta(*args):
    env = environment()
    env.pop("MTA_CONFIG", None)
    done = subprocess.run([sys.executable, "-m", "mta.cli.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done


def shell(command):
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def opensslDigest(cert):
    out = shell(f"openssl x509 -in '{cert}' -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum")
    return out.split()[0]


@pytest.fixture
def ini(tmp_path):
    (tmp_path / "tls").mkdir()
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\nmyhostname = {HOST}\nqueue_directory = {tmp_path}/spool\n"
                    f"smtpd_tls_cert_file = {tmp_path}/tls/cert.pem\nsmtpd_tls_key_file = {tmp_path}/tls/key.pem\n"
                    f"smtpd_tls_security_level = may\n")
    return path


@pytest.mark.parametrize("algorithm, marker, bits", [("rsa", "publicExponent: 65537", "2048"),
                                                     ("ecdsa", "NIST CURVE: P-256", "256")])
def test_keyCertificateAndTlsaAgreeWithOpenssl(ini, tmp_path, algorithm, marker, bits):
    done = mta("-c", str(ini), "tls", "new-server-key", "-t", algorithm)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    key, cert = tmp_path / "tls" / "key.pem", tmp_path / "tls" / "cert.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    text = shell(f"openssl pkey -in '{key}' -noout -text")
    assert re.search(rf"Private-Key: \({bits} bit", text) and marker in text, text
    shell(f"openssl pkey -in '{key}' -noout -check")
    certText = shell(f"openssl x509 -in '{cert}' -noout -text")
    assert f"Subject: CN = {HOST}" in certText and f"Issuer: CN = {HOST}" in certText
    assert f"DNS:{HOST}" in shell(f"openssl x509 -in '{cert}' -noout -ext subjectAltName")
    assert f"Public Key Algorithm: {'rsaEncryption' if algorithm == 'rsa' else 'id-ecPublicKey'}" in certText
    # valid now and for 99 years yet (36525 days); verifies as its own issuer
    shell(f"openssl x509 -in '{cert}' -noout -checkend {99 * 365 * 86400}")
    assert ": OK" in shell(f"openssl verify -CAfile '{cert}' -partial_chain '{cert}'")
    # the key and the certificate belong together
    assert shell(f"openssl pkey -in '{key}' -pubout") == shell(f"openssl x509 -in '{cert}' -noout -pubkey")
    digest = opensslDigest(cert)
    assert f"  _25._tcp.{HOST}. IN TLSA 3 1 1 {digest}\n" in done.stdout
    tlsa = mta("-c", str(ini), "tls", "output-server-tlsa")
    assert (tlsa.returncode, tlsa.stdout) == (0, f"; {key}\n_25._tcp.{HOST}. IN TLSA 3 1 1 {digest}\n")


def test_aSecondKeyIsRefusedAndForceReplacesIt(ini, tmp_path):
    assert mta("-c", str(ini), "tls", "new-server-key").returncode == 0
    cert = tmp_path / "tls" / "cert.pem"
    first = opensslDigest(cert)
    again = mta("-c", str(ini), "tls", "new-server-key")
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == f"mta: error: {tmp_path}/tls/key.pem: already exists (use --force to replace it)\n"
    assert opensslDigest(cert) == first
    renewed = mta("-c", str(ini), "tls", "new-server-cert", "--force", "-d", "10")
    assert renewed.returncode == 0, renewed.stderr
    assert opensslDigest(cert) == first  # a new certificate, the same key: the TLSA record stays
    shell(f"openssl x509 -in '{cert}' -noout -checkend {9 * 86400}")
    assert subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-checkend", str(11 * 86400)],
                          capture_output=True).returncode == 1  # expires within 11 days
    forced = mta("-c", str(ini), "tls", "new-server-key", "--force")
    assert forced.returncode == 0, forced.stderr
    assert opensslDigest(cert) != first


def test_stampedFilesAndATlsaRecordForAnotherHost(tmp_path):
    """Nothing configured: eccert-STAMP.pem beside the INI file; its TLSA record for -h, given the certificate."""
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\nmyhostname = {HOST}\nqueue_directory = {tmp_path}/spool\n")
    done = mta("-c", str(path), "tls", "new-server-key", "-a", "ecdsa")
    assert done.returncode == 0, done.stderr
    (cert,) = [n for n in os.listdir(tmp_path) if re.fullmatch(r"eccert-\d{8}-\d{6}\.pem", n)]
    digest = opensslDigest(tmp_path / cert)
    tlsa = mta("-c", str(path), "tls", "output-server-tlsa", "-h", "mx.example.net", str(tmp_path / cert))
    assert tlsa.stdout == f"; {tmp_path / cert}\n_25._tcp.mx.example.net. IN TLSA 3 1 1 {digest}\n"
