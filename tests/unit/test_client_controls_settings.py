"""The client's remaining controls and older names at load: values, the mapping, its warnings, errors with file:line."""

import pytest
from twisted.internet.task import Clock

from mta.config import ConfigError, load
from mta.delivery.smtpclient import RemoteHost, SMTPClientSession
from mta.delivery.smtptls import ClientTLS
from mta.delivery.tlspersite import combinePerSite, perSiteLevel, perSitePolicy
from mta.generation import Generation
from mta.testing import FakeQueueStore
from tests.dialogs.harness import MailLog
from tests.tlssupport import Certificates, TLSServerEnd, TLSStringTransport
from tests.unit.test_smtpclient import BODY, makeRequest

PATH = "/etc/mta/mta.ini"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


def settings(text, lmtp=False):
    compiled = load(PATH, "[main]\n" + text).settings
    return compiled.lmtpClient if lmtp else compiled.smtpClient


def test_defaults_are_postfix_s():
    s = settings("")
    assert s.discardEhloKeywordMaps == () and s.skip4xxGreeting
    assert s.pixWorkarounds == {"disable_esmtp", "delay_dotcrlf"} and s.pixWorkaroundMaps == ()
    assert s.pixDelayTime == 10 and s.pixThresholdTime == 500
    assert not s.cnameOverridesServername and not s.tlsBlockEarlyMailReply
    assert s.tlsEnforcePeername and not s.useTls and not s.enforceTls and s.tlsPerSite == ()
    assert s.tlsChainFiles == () and s.tls.keyPairs == () and s.notes == ()
    assert s.fallbackRelays == () and s.cacheConnection
    lmtp = settings("", lmtp=True)
    assert lmtp.cacheConnection and lmtp.fallbackRelays == () and lmtp.skip4xxGreeting


def test_the_lmtp_twins_are_read():
    text = ("lmtp_discard_lhlo_keyword_address_maps = inline:{a=b}\nlmtp_pix_workarounds = delay_dotcrlf\n"
            "lmtp_pix_workaround_delay_time = 2s\nlmtp_pix_workaround_threshold_time = 0\n"
            "lmtp_cname_overrides_servername = yes\nlmtp_tls_block_early_mail_reply = yes\n"
            "lmtp_cache_connection = no\nlmtp_fallback_relay = backup.example:24\nlmtp_tls_per_site = inline:{x=MAY}\n")
    lmtp, smtp = settings(text, lmtp=True), settings(text)
    assert str(lmtp.discardEhloKeywordMaps[0]) == "inline:{a=b}" and lmtp.pixWorkarounds == {"delay_dotcrlf"}
    assert lmtp.pixDelayTime == 2 and lmtp.pixThresholdTime == 0 and lmtp.cnameOverridesServername
    assert lmtp.tlsBlockEarlyMailReply and not lmtp.cacheConnection and lmtp.fallbackRelays == ("backup.example:24",)
    assert len(lmtp.tlsPerSite) == 1
    assert smtp.discardEhloKeywordMaps == () and smtp.pixWorkarounds == {"disable_esmtp", "delay_dotcrlf"}
    assert not smtp.cnameOverridesServername and smtp.fallbackRelays == () and smtp.tlsPerSite == ()


@pytest.mark.parametrize("line, key", [
    ("smtp_pix_workarounds = disable_esmtp, nonsense", "smtp_pix_workarounds"),
    ("smtp_pix_workaround_delay_time = 0", "smtp_pix_workaround_delay_time"),
    ("smtp_pix_workaround_threshold_time = soon", "smtp_pix_workaround_threshold_time"),
    ("smtp_skip_4xx_greeting = maybe", "smtp_skip_4xx_greeting"),
    ("lmtp_cache_connection = perhaps", "lmtp_cache_connection"),
    ("smtp_tls_chain_files = /nonexistent/chain.pem", "smtp_tls_chain_files"),
    ("smtp_tls_eccert_file = /nonexistent/ec.pem", "smtp_tls_eccert_file"),
])
def test_bad_values_fail_at_load_with_the_line(line, key):
    with pytest.raises(ConfigError) as e:
        settings(line + "\n")
    assert str(e.value).startswith(f"{PATH}:2: [main] {key}:"), str(e.value)


# -- the older names, mapped at load ---------------------------------------------------------------------


@pytest.mark.parametrize("text, level", [
    ("smtp_use_tls = yes\n", "may"),
    ("smtp_use_tls = no\n", "none"),
    ("smtp_enforce_tls = yes\n", "verify"),
    ("smtp_enforce_tls = yes\nsmtp_tls_enforce_peername = no\n", "encrypt"),
    ("smtp_use_tls = yes\nsmtp_enforce_tls = yes\n", "verify"),
    ("smtp_tls_enforce_peername = no\n", "may"),  # alone it changes nothing (Postfix: only with enforce)
])
def test_the_older_tls_names_give_the_level(text, level):
    s = settings(text)
    assert s.tls.level == level
    names = [line.split(" = ", 1)[0] for line in text.splitlines()]
    assert len(s.notes) == len(names)
    for number, (note, name) in enumerate(zip(s.notes, names), start=2):
        assert note == (f"{PATH}:{number}: [main] {name}: {name} is obsolete; use smtp_tls_security_level "
                        f"(smtp_tls_security_level = {level} is used)")


def test_smtp_tls_security_level_wins():
    s = settings("smtp_tls_security_level = encrypt\nsmtp_use_tls = no\n")
    assert s.tls.level == "encrypt"
    assert s.notes == (f"{PATH}:3: [main] smtp_use_tls: smtp_use_tls is obsolete; use smtp_tls_security_level "
                       f"(ignored: smtp_tls_security_level is set)",)


def test_the_lmtp_older_names():
    s = settings("lmtp_enforce_tls = yes\nlmtp_tls_enforce_peername = no\n", lmtp=True)
    assert s.tls.level == "encrypt" and len(s.notes) == 2
    assert "lmtp_enforce_tls is obsolete; use lmtp_tls_security_level" in s.notes[0]
    assert settings("lmtp_enforce_tls = yes\n").tls.level == "may"  # the SMTP client is not affected


def test_fallback_relay_is_smtp_fallback_relay():
    s = settings("fallback_relay = [backup.example]:587\n")
    assert s.fallbackRelays == ("[backup.example]:587",)
    assert s.notes == (f"{PATH}:2: [main] fallback_relay: fallback_relay is obsolete; use smtp_fallback_relay "
                       f"(its value is used)",)
    s = settings("fallback_relay = [old.example]\nsmtp_fallback_relay = [new.example]\n")
    assert s.fallbackRelays == ("[new.example]",) and "(ignored: smtp_fallback_relay is set)" in s.notes[0]
    assert settings("fallback_relay = [old.example]\n", lmtp=True).fallbackRelays == ()  # lmtp_fallback_relay


def test_smtp_tls_per_site_is_compiled_to_a_table_list_and_noted():
    s = settings("smtp_tls_per_site = inline:{ example.com=MUST }, inline:{ x=NONE }\n")
    assert [str(t) for t in s.tlsPerSite] == ["inline:{ example.com=MUST }", "inline:{ x=NONE }"]
    assert s.notes == (f"{PATH}:2: [main] smtp_tls_per_site: smtp_tls_per_site is obsolete; use "
                       f"smtp_tls_policy_maps",)


def test_the_notes_are_logged_when_the_configuration_is_put_in_force():
    config = load(PATH, "[main]\nsmtp_use_tls = yes\nlmtp_enforce_tls = yes\n", checkEndpoints=False)
    with MailLog() as log:
        Generation(config, None, Clock(), FakeQueueStore(), lambda listener, generation: None)
    assert [line for line in log.lines if "is obsolete" in line] == [
        f"warning: {PATH}:2: [main] smtp_use_tls: smtp_use_tls is obsolete; use smtp_tls_security_level "
        f"(smtp_tls_security_level = may is used)",
        f"warning: {PATH}:3: [main] lmtp_enforce_tls: lmtp_enforce_tls is obsolete; use lmtp_tls_security_level "
        f"(lmtp_tls_security_level = verify is used)",
    ]


# -- client certificates: chain files, the ECDSA and DSA files -------------------------------------------


def test_chain_files_replace_the_legacy_files(certs):
    s = settings(f"smtp_tls_cert_file = {certs['client.pem']}\nsmtp_tls_key_file = {certs['client.key']}\n"
                 f"smtp_tls_chain_files = {certs['ec-chain.pem']}, {certs['server-chain.pem']}\n")
    assert s.tls.certFile == "" and s.tls.keyFile == ""
    assert s.tls.keyPairs == ((certs["ec-chain.pem"],) * 2, (certs["server-chain.pem"],) * 2)
    assert s.notes == (f"{PATH}:2: [main] smtp_tls_cert_file: smtp_tls_cert_file is ignored: smtp_tls_chain_files "
                       f"is set",)


def test_the_eccert_file_is_loaded_beside_the_cert_file(certs):
    s = settings(f"smtp_tls_cert_file = {certs['server-chain.pem']}\nsmtp_tls_eccert_file = {certs['ec-chain.pem']}\n")
    assert s.tls.certFile == certs["server-chain.pem"] and s.tls.keyPairs == ((certs["ec-chain.pem"],) * 2,)
    assert s.notes == ()
    s = settings(f"smtp_tls_dcert_file = {certs['ec-chain.pem']}\n")
    assert s.tls.keyPairs == ((certs["ec-chain.pem"],) * 2,)
    assert "smtp_tls_dcert_file is obsolete; use smtp_tls_chain_files (the file is still loaded)" in s.notes[0]


def test_a_chain_file_whose_key_is_missing_fails_at_load(certs):
    with pytest.raises(ConfigError) as e:
        settings(f"smtp_tls_chain_files = {certs['client.pem']}\n")
    assert str(e.value).startswith(f"{PATH}:2: [main] smtp_tls_chain_files:")
    assert "holds no unencrypted PEM private key" in str(e.value)


def test_the_chain_file_certificate_is_presented(certs):
    """In-memory TLS: a server that asks for a client certificate gets the chain file's."""
    from OpenSSL import SSL

    s = settings(f"myhostname = client.example.org\nsmtp_tls_chain_files = {certs['ec-chain.pem']}\n")
    clock = Clock()
    protocol = SMTPClientSession(s, clock, None, tls=ClientTLS(s.tls))
    transport = TLSStringTransport(client=True)
    transport.protocol = protocol
    context = TLSServerEnd.serverContext(certs)
    context.set_verify(SSL.VERIFY_PEER, lambda *args: True)
    server = TLSServerEnd(transport, context)
    protocol.makeConnection(transport)
    outcomes = []
    protocol.deliver(makeRequest(), (BODY,), RemoteHost("mx.test", "127.0.0.1", 25)).addBoth(outcomes.append)
    server.send("220 mx.test ESMTP\r\n")
    assert server.read() == "EHLO client.example.org\r\n"
    server.send("250-mx.test\r\n250 STARTTLS\r\n")
    assert server.read() == "STARTTLS\r\n"
    server.send("220 2.0.0 Ready\r\n")
    server.accept()
    assert server.read() == "EHLO client.example.org\r\n"
    from cryptography import x509

    with open(certs["ec-chain.pem"], "rb") as f:
        expected = x509.load_pem_x509_certificates(f.read())[0]
    assert server.server.get_peer_certificate().to_cryptography() == expected


def test_block_early_mail_reply_over_real_tls(certs):
    """A reply fragment that arrives inside TLS with the EHLO reply, before MAIL: 4.7.0, no MAIL."""
    s = settings("smtp_tls_block_early_mail_reply = yes\nmyhostname = client.example.org\n")
    protocol = SMTPClientSession(s, Clock(), None)
    transport = TLSStringTransport(client=True)
    transport.protocol = protocol
    server = TLSServerEnd(transport, TLSServerEnd.serverContext(certs))
    protocol.makeConnection(transport)
    outcomes = []
    protocol.deliver(makeRequest(), (BODY,), RemoteHost("mx.test", "127.0.0.1", 25)).addBoth(outcomes.append)
    server.send("220 mx.test ESMTP\r\n")
    server.read()
    server.send("250-mx.test\r\n250 STARTTLS\r\n")
    server.read()
    server.send("220 2.0.0 Ready\r\n")
    server.accept()
    assert server.read() == "EHLO client.example.org\r\n"
    server.send("250-mx.test\r\n250 PIPELINING\r\n250 2.1.0 Sender o")
    transport.tlsClock.advance(0)
    [result] = outcomes[0].results
    assert (result.status, result.dsn, result.text) == ("deferred", "4.7.0", "unexpected server message")
    assert "MAIL" not in server.read()


# -- smtp_tls_per_site values (for the TLS policy) ---------------------------------------------------


@pytest.mark.parametrize("value, level", [("NONE", "none"), ("may", "may"), ("MUST_NOPEERMATCH", "encrypt"),
                                          ("Must", "verify")])
def test_per_site_values(value, level):
    assert perSiteLevel(value) == level


@pytest.mark.parametrize("value", ["ENCRYPT", "", "MUST NOW", "verify"])
def test_unknown_per_site_values(value):
    with pytest.raises(ValueError, match="unknown TLS policy"):
        perSiteLevel(value)


@pytest.mark.parametrize("first, second, combined", [
    (None, None, None),
    ("MAY", None, "may"),
    ("MAY", "NONE", "none"),  # the more specific NONE overrides MAY
    ("NONE", "MAY", "none"),  # MAY overrides only "not found"
    ("NONE", "MUST_NOPEERMATCH", "encrypt"),  # the more secure overrides NONE
    ("MUST", "MUST_NOPEERMATCH", "verify"),
    ("MUST_NOPEERMATCH", "MUST", "verify"),
    ("MUST", "NONE", "verify"),
])
def test_two_lookups_combine_as_postfix_does(first, second, combined):
    assert combinePerSite(combinePerSite(None, first), second) == combined


@pytest.mark.parametrize("globalLevel, results, level", [
    ("may", (None, None), "may"),
    ("verify", ("MAY", None), "verify"),  # a per-site MAY does not lower the global level
    ("verify", ("NONE", None), "none"),  # any other per-site result replaces it
    ("none", (None, "MUST"), "verify"),
    ("encrypt", ("MAY", "NONE"), "none"),
])
def test_the_level_of_a_delivery(globalLevel, results, level):
    assert perSitePolicy(globalLevel, results) == level


# -- the destinations are checked at load (not at the first delivery) ----------------------------------


@pytest.mark.parametrize("line, key, message", [
    ("smtp_fallback_relay = [backup.example", "smtp_fallback_relay", "bad next-hop '[backup.example': missing \"]\""),
    ("smtp_fallback_relay = ok.example, [192.0.2.1]:99999", "smtp_fallback_relay", "bad network port: 99999"),
    ("fallback_relay = relay..example", "fallback_relay", "valid hostname or network address required"),
    ("lmtp_tcp_port = no-such-service", "lmtp_tcp_port", "unknown service: no-such-service/tcp"),
    ("lmtp_fallback_relay = unix:/run/lmtp", "lmtp_fallback_relay", "the fall-back relays must be TCP destinations"),
    ("lmtp_fallback_relay = [lmtp.example", "lmtp_fallback_relay", "missing \"]\""),
])
def test_bad_destinations_fail_at_load(line, key, message):
    with pytest.raises(ConfigError) as e:
        load(PATH, f"[main]\n{line}\n")
    assert str(e.value).startswith(f"{PATH}:2: [main] {key}: ") and message in str(e.value), str(e.value)


def test_good_destinations_load():
    s = settings("smtp_fallback_relay = [192.0.2.1]:587, backup.example, [ipv6:2001:db8::1]\n"
                 "lmtp_tcp_port = lmtp\nlmtp_fallback_relay = inet:h.example:2003, h2.example\n", lmtp=True)
    assert s.defaultPort == "lmtp" and s.fallbackRelays == ("inet:h.example:2003", "h2.example")
