"""smtp_tls_* / lmtp_tls_*: compiled into ClientSettings.tls at load, errors with file:line."""

import pytest

from mta.config import ConfigError, load
from tests.tlssupport import Certificates


def client(text, lmtp=False):
    settings = load("/etc/mta/mta.ini", "[main]\n" + text).settings
    return (settings.lmtpClient if lmtp else settings.smtpClient).tls


def test_defaults_are_postfix_s():
    tls = client("")
    assert tls.level == "may" and not tls.required and not tls.mustMatch
    assert tls.protocolRange == ("TLSv1", "TLSv1.3") and tls.mandatoryProtocolRange == ("TLSv1", "TLSv1.3")
    assert tls.verifyCertMatch == ("hostname",) and tls.secureCertMatch == ("nexthop", "dot-nexthop")
    assert tls.starttlsTimeout == 300 and tls.loglevel == 0 and not tls.wrapperMode
    assert tls.caFile == "" and tls.caPath == "" and tls.certFile == "" and tls.serverName == ""
    # the groups are explicit, classical only (no post-quantum key share in the first ClientHello)
    assert tls.groups[0] == "X25519" and not any("MLKEM" in g.upper() for g in tls.groups)


def test_lmtp_twins_are_separate():
    text = "smtp_tls_security_level = encrypt\nlmtp_tls_security_level = none\n"
    assert client(text).level == "encrypt" and client(text).required
    assert client(text, lmtp=True).level == "none"


@pytest.mark.parametrize("level", ["verify", "secure"])
def test_match_levels(level):
    tls = client(f"smtp_tls_security_level = {level}\n")
    assert tls.required and tls.mustMatch
    assert tls.matchNames == (("hostname",) if level == "verify" else ("nexthop", "dot-nexthop"))


def test_dane_without_dnssec_is_may():
    tls = client("smtp_tls_security_level = dane\n")
    assert tls.level == "may" and tls.configuredLevel == "dane"  # more in test_dane_settings.py


def test_fingerprint_needs_digests_and_checks_them():
    with pytest.raises(ConfigError, match=r"mta.ini:2: .*fingerprint needs smtp_tls_fingerprint_cert_match"):
        client("smtp_tls_security_level = fingerprint\n")
    with pytest.raises(ConfigError, match=r"mta.ini:3: .*'zz:11' is not a hex fingerprint"):
        client("smtp_tls_security_level = fingerprint\nsmtp_tls_fingerprint_cert_match = zz:11\n")
    tls = client("smtp_tls_security_level = fingerprint\nsmtp_tls_fingerprint_cert_match = AB:CD, 0102\n"
                 "smtp_tls_fingerprint_digest = sha512\n")
    assert tls.required and not tls.mustMatch
    assert tls.fingerprintCertMatch == ("AB:CD", "0102") and tls.fingerprintDigest == "sha512"


def test_mandatory_ranges_and_ciphers():
    tls = client("smtp_tls_security_level = encrypt\nsmtp_tls_mandatory_protocols = >=TLSv1.2\n"
                 "smtp_tls_protocols = !TLSv1, !TLSv1.1\nsmtp_tls_mandatory_exclude_ciphers = aNULL\n")
    assert tls.activeProtocolRange == ("TLSv1.2", "TLSv1.3")
    assert tls.protocolRange == ("TLSv1.2", "TLSv1.3")
    assert tls.activeCipherList.endswith(":!aNULL")


@pytest.mark.parametrize("text, where", [
    ("smtp_tls_protocols = <=SSLv3\n", "smtp_tls_protocols"),
    ("smtp_tls_exclude_ciphers = ALL\n", "smtp_tls_exclude_ciphers"),
    ("smtp_tls_CAfile = /nonexistent/ca.pem\n", "smtp_tls_CAfile"),
    ("smtp_tls_CApath = /nonexistent\n", "smtp_tls_CApath"),
    ("smtp_tls_cert_file = /nonexistent/c.pem\n", "smtp_tls_cert_file"),
    ("lmtp_tls_security_level = fingerprint\n", "lmtp_tls_security_level"),
])
def test_bad_values_name_the_file_and_line(text, where):
    with pytest.raises(ConfigError) as e:
        client(text)
    assert "mta.ini:2" in str(e.value) and where in str(e.value)


def test_files_are_checked(tmp_path):
    certs = Certificates(tmp_path)
    tls = client(f"smtp_tls_CAfile = {certs['ca.pem']}\nsmtp_tls_cert_file = {certs['client.pem']}\n"
                 f"smtp_tls_key_file = {certs['client.key']}\n")
    assert tls.caFile == certs["ca.pem"] and tls.keyFile == certs["client.key"]
    with pytest.raises(ConfigError, match=r"mta.ini:3: .*holds no unencrypted PEM private key"):
        client(f"smtp_tls_cert_file = {certs['client.pem']}\nsmtp_tls_key_file = {certs['rogue.key']}\n")
    with pytest.raises(ConfigError, match=r"mta.ini:2: .*holds no PEM CA certificates"):
        client(f"smtp_tls_CAfile = {certs['server.key']}\n")
