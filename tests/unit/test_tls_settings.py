"""TlsSettings (mta.config.settings.tls): what is checked at load, and the older names mapped onto the new."""

import pytest

from mta.config.errors import ConfigError
from mta.config.loader import load
from mta.config.settings.tls import parseProtocols
from tests.tlssupport import Certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


def tls(text, listener=""):
    config = load("<t>", "[main]\n" + text + (f"[listener:x]\nendpoint = tcp:2525\n{listener}" if listener else ""))
    return config.listeners[0].settings.tls


def error(text):
    with pytest.raises(ConfigError) as e:
        tls(text)
    return str(e.value)


def cert(certs, extra=""):
    return f"smtpd_tls_cert_file = {certs['server.pem']}\nsmtpd_tls_key_file = {certs['server.key']}\n{extra}"


def test_the_defaults_are_postfixs():
    s = tls("")
    assert (s.securityLevel, s.level, s.enabled, s.wrapperMode) == ("", "none", False, False)
    assert (s.ciphers, s.mandatoryCiphers, s.fingerprintDigest, s.verifyDepth) == ("medium", "medium", "sha256", 9)
    assert (s.starttlsTimeout, s.sessionCacheTimeout, s.loglevel, s.receivedHeader) == (300, 3600, 0, False)
    assert s.groups[:2] == ("X25519", "X448") and "ffdhe2048" in s.groups


def test_a_certificate_and_may_enable_tls(certs):
    s = tls(cert(certs, "smtpd_tls_security_level = may\n"))
    assert (s.level, s.enabled) == ("may", True)
    [pair] = s.keyPairs
    assert (pair.certFile, pair.keyFile, pair.keyType, pair.keyBits) == (certs["server.pem"], certs["server.key"],
                                                                          "RSA", 2048)


def test_the_level_is_per_listener(certs):
    s = tls(cert(certs, "smtpd_tls_security_level = may\n"), "smtpd_tls_security_level = encrypt\n")
    assert s.level == "encrypt" and s.mandatory


def test_chain_files_give_several_keys_and_win_over_the_cert_file(certs):
    s = tls(cert(certs, f"smtpd_tls_chain_files = {certs['server-chain.pem']}, {certs['ec-chain.pem']}\n"))
    assert [p.keyType for p in s.keyPairs] == ["RSA", "EC"]
    assert [p.certFile for p in s.keyPairs] == [certs["server-chain.pem"], certs["ec-chain.pem"]]


@pytest.mark.parametrize("text, parameter", [
    ("smtpd_tls_cert_file = /nonexistent/cert.pem\n", "smtpd_tls_cert_file"),
    ("smtpd_tls_chain_files = /nonexistent/chain.pem\n", "smtpd_tls_chain_files"),
])
def test_a_missing_file_is_an_error_naming_the_parameter_and_its_line(text, parameter):
    message = error(text)
    assert message.startswith(f"<t>:2: [main] {parameter}:") and "no such file" in message


def test_an_unreadable_file_is_an_error(certs, tmp_path):
    path = tmp_path / "nokey.pem"
    path.write_text("not a key\n")
    message = error(f"smtpd_tls_cert_file = {certs['server.pem']}\nsmtpd_tls_key_file = {path}\n")
    assert "smtpd_tls_key_file" in message and "no unencrypted PEM private key" in message


def test_a_file_without_a_certificate_is_an_error(certs):
    message = error(f"smtpd_tls_cert_file = {certs['server.key']}\n")
    assert "<t>:2: [main] smtpd_tls_cert_file" in message and "holds no PEM certificate" in message


def test_a_key_that_does_not_match_its_certificate_is_an_error(certs):
    message = error(f"smtpd_tls_cert_file = {certs['server.pem']}\nsmtpd_tls_key_file = {certs['client.key']}\n")
    assert message.startswith("<t>:3: [main] smtpd_tls_key_file:") and "does not match" in message


def test_wrapper_mode_needs_a_certificate():
    assert "smtpd_tls_wrappermode" in error("smtpd_tls_wrappermode = yes\n")


@pytest.mark.parametrize("text, parameter", [
    ("smtpd_tls_ciphers = high\ntls_high_cipherlist = NOSUCHCIPHER\n", "smtpd_tls_ciphers"),
    ("smtpd_tls_exclude_ciphers = ALL, eNULL\n", "smtpd_tls_exclude_ciphers"),
    ("smtpd_tls_cipherlist = BOGUS\n", "smtpd_tls_ciphers"),
])
def test_a_cipher_list_that_selects_nothing_is_an_error(certs, text, parameter):
    message = error(cert(certs, text))
    assert parameter in message and "selects no cipher" in message


def test_excluded_ciphers_are_appended_as_postfix_does():
    s = tls("smtpd_tls_exclude_ciphers = aNULL, RC4\nsmtpd_tls_mandatory_exclude_ciphers = CAMELLIA\n")
    assert s.cipherList == "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH:!aNULL:!RC4"
    assert s.mandatoryCipherList.endswith(":!aNULL:!RC4:!CAMELLIA")


@pytest.mark.parametrize("items, expected", [
    ((">=TLSv1",), ("TLSv1", "TLSv1.3")),
    ((">=TLSv1.2",), ("TLSv1.2", "TLSv1.3")),
    (("!SSLv2", "!SSLv3", "!TLSv1", "!TLSv1.1"), ("TLSv1.2", "TLSv1.3")),
    (("TLSv1.3",), ("TLSv1.3", "TLSv1.3")),
    ((">=TLSv1.2", "<=TLSv1.2"), ("TLSv1.2", "TLSv1.2")),
])
def test_protocol_lists(items, expected):
    assert parseProtocols(items) == expected


@pytest.mark.parametrize("text, what", [
    ("smtpd_tls_protocols = TLSv9\n", "unknown TLS protocol"),
    ("smtpd_tls_mandatory_protocols = <=TLSv1.1, >=TLSv1.2\n", "enables no protocol"),
    ("smtpd_tls_protocols = SSLv3\n", "enables no protocol"),
])
def test_bad_protocol_lists_are_errors(text, what):
    message = error(text)
    assert text.split(" =")[0] in message and what in message


def test_unknown_groups_are_skipped_and_none_left_is_an_error():
    assert tls("tls_eecdh_auto_curves = nosuchcurve X25519\n").groups[0] == "X25519"
    message = error("tls_eecdh_auto_curves = nosuchcurve\ntls_ffdhe_auto_groups = nosuchgroup\n")
    assert "tls_eecdh_auto_curves" in message


def test_dh_ca_and_ticket_checks(certs, tmp_path):
    bad = tmp_path / "dh.pem"
    bad.write_text("nothing\n")
    assert "smtpd_tls_dh1024_param_file" in error(f"smtpd_tls_dh1024_param_file = {bad}\n")
    assert "smtpd_tls_CAfile" in error("smtpd_tls_CAfile = /nonexistent/ca.pem\n")
    assert "smtpd_tls_CApath" in error("smtpd_tls_CApath = /nonexistent/dir\n")
    assert "smtpd_tls_session_cache_timeout" in error("smtpd_tls_session_cache_timeout = 9000000s\n")
    assert tls(f"smtpd_tls_CAfile = {certs['ca.pem']}\n").caFile == certs["ca.pem"]


# -- older names -----------------------------------------------------------------------------

def test_smtpd_use_tls_means_may_with_a_note(certs):
    s = tls(cert(certs, "smtpd_use_tls = yes\n"))
    assert s.level == "may" and s.enabled
    assert any("smtpd_use_tls is obsolete; use smtpd_tls_security_level = may" in n for n in s.notes)


def test_smtpd_enforce_tls_means_encrypt_and_wins_over_use_tls(certs):
    s = tls(cert(certs, "smtpd_use_tls = yes\nsmtpd_enforce_tls = yes\n"))
    assert s.level == "encrypt"


def test_the_current_level_wins_over_the_older_names(certs):
    s = tls(cert(certs, "smtpd_tls_security_level = none\nsmtpd_enforce_tls = yes\n"))
    assert s.level == "none"
    assert any("ignored: smtpd_tls_security_level is set" in n for n in s.notes)


def test_dcert_and_eccert_files_are_loaded_as_more_keys(certs):
    s = tls(cert(certs, f"smtpd_tls_eccert_file = {certs['ec-chain.pem']}\n"
                        f"smtpd_tls_dcert_file = {certs['server-chain.pem']}\n"))
    assert [p.parameter for p in s.keyPairs] == ["smtpd_tls_cert_file", "smtpd_tls_eccert_file", "smtpd_tls_dcert_file"]
    assert any("smtpd_tls_dcert_file is obsolete" in n for n in s.notes)


def test_the_obsolete_cipherlist_replaces_the_grade():
    s = tls("smtpd_tls_cipherlist = HIGH:!aNULL\n")
    assert s.cipherList == "HIGH:!aNULL"
    assert any("smtpd_tls_cipherlist is obsolete" in n for n in s.notes)


@pytest.mark.parametrize("grade, groups", [("strong", ("prime256v1",)), ("ultra", ("secp384r1",)),
                                           ("none", ())])
def test_the_eecdh_grade_names_the_curve(grade, groups):
    s = tls(f"smtpd_tls_eecdh_grade = {grade}\ntls_ffdhe_auto_groups =\n")
    assert s.groups == groups
    assert any("smtpd_tls_eecdh_grade is obsolete" in n for n in s.notes)


@pytest.mark.parametrize("name", ["smtpd_tls_always_issue_session_ids = no", "smtpd_tls_session_cache_database = "
                                  "btree:/var/lib/postfix/smtpd_scache", "tls_medium_cipherlist = HIGH"])
def test_ignored_or_discouraged_names_are_noted(name):
    assert tls(name + "\n").notes


def test_req_ccert_below_encrypt_is_noted_and_ignored(certs):
    s = tls(cert(certs, "smtpd_tls_security_level = may\nsmtpd_tls_req_ccert = yes\n"))
    assert not s.requireClientCertificate and any("smtpd_tls_req_ccert" in n for n in s.notes)
