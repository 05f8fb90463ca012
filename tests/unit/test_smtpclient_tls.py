"""STARTTLS in mta.delivery.smtpclient over in-memory TLS: each level and outcome (no sockets, no sleeps)."""

import attrs
import pytest
from OpenSSL import SSL
from twisted.internet.task import Clock

from mta.delivery.smtpclient import RemoteHost, SMTPClientSession
from mta.delivery.smtptls import ClientTLS, matchNamesFor, nexthopDomain, serverNameFor
from tests.tlssupport import Certificates, TLSServerEnd, TLSStringTransport
from tests.unit.test_smtpclient import BODY, clientSettings, makeRequest

HOST = RemoteHost("mx.test", "127.0.0.1", 25)
EHLO_TLS = "250-mx.test\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
EHLO_AFTER = "250-mx.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


class Lines(list):
    def emit(self, text, queue_id=None, level=None, **kw):
        self.append(text)


class TLSSession:
    def __init__(self, certs, chain="server-chain.pem", nexthop="example.net", lmtp=False, **params):
        self.clock = Clock()
        self.settings = clientSettings(lmtp, **params)
        self.log = Lines()
        self.protocol = SMTPClientSession(self.settings, self.clock, self.log)
        self.transport = TLSStringTransport(client=True)
        self.transport.protocol = self.protocol
        self.server = TLSServerEnd(self.transport, TLSServerEnd.serverContext(certs, chain))
        self.protocol.makeConnection(self.transport)
        self.outcomes = []
        request = attrs.evolve(makeRequest(), nexthop=nexthop)
        self.protocol.deliver(request, (BODY,), HOST).addBoth(self.outcomes.append)

    def greet(self, ehlo=EHLO_TLS):
        self.server.send("220 mx.test ESMTP\r\n")
        assert self.server.read() == "EHLO client.example.org\r\n"
        self.server.send(ehlo)

    def starttls(self, extra=""):
        assert self.server.read() == "STARTTLS\r\n"
        self.server.send("220 2.0.0 Ready to start TLS\r\n" + extra)
        self.server.accept()

    def finish(self):
        """After TLS: EHLO again, then the mail; True if it went through."""
        assert self.server.read() == "EHLO client.example.org\r\n"
        self.server.send(EHLO_AFTER)
        sent = self.server.read()
        assert sent.startswith("MAIL FROM:<alice@example.org>")
        self.server.send("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        self.server.read()
        self.server.send("250 2.0.0 Ok: queued as X\r\n")
        self.server.read()
        self.server.send("221 Bye\r\n")
        self.transport.tlsClock.advance(0)
        return sent

    @property
    def outcome(self):
        assert len(self.outcomes) == 1, self.outcomes
        return self.outcomes[0]

    def statuses(self):
        return [(r.status, r.dsn, r.text) for r in self.outcome.results]


def test_may_starts_tls_repeats_ehlo_and_forgets_the_plaintext_keywords(certs):
    s = TLSSession(certs, smtp_tls_loglevel=1)
    s.greet()
    s.starttls()
    assert s.protocol.tlsActive and s.protocol.extensions == {}  # nothing from before the handshake
    sent = s.finish()
    assert "STARTTLS" not in s.protocol.extensions  # the second EHLO's keywords only
    assert sent.count("\r\n") == 3  # pipelined as the new EHLO said
    assert s.statuses()[0][0] == "sent"
    line = [t for t in s.log if "TLS connection established" in t][0]
    # no CA configured: the system store does not know the test CA
    assert line.startswith("Untrusted TLS connection established to mx.test[127.0.0.1]:25: TLSv1.3 with cipher ")
    assert "bits)" in line and "server-signature RSA-PSS (2048 bits)" in line


def test_loglevel_0_logs_no_success_line(certs):
    s = TLSSession(certs)
    s.greet()
    s.starttls()
    s.finish()
    assert s.statuses()[0][0] == "sent"
    assert not [t for t in s.log if "TLS connection" in t]


def test_plaintext_after_the_220_in_the_same_segment_is_discarded(certs):
    s = TLSSession(certs)
    s.greet()
    # A server (or a man in the middle) that injects a reply after 220: it must never count.
    s.starttls(extra="250-mx.test\r\n250 AUTH PLAIN\r\n")
    assert s.protocol.tlsActive and s.outcomes == []
    assert "AUTH" not in s.protocol.extensions
    s.finish()
    assert s.statuses()[0][0] == "sent"


def test_may_without_starttls_is_plaintext(certs):
    s = TLSSession(certs)
    s.greet(ehlo=EHLO_AFTER)
    assert s.server.read().startswith("MAIL FROM:")
    assert not s.protocol.tlsActive


def test_none_never_sends_starttls_and_can_note_the_offer(certs):
    s = TLSSession(certs, smtp_tls_security_level="none", smtp_tls_note_starttls_offer=True)
    s.greet()
    assert s.server.read().startswith("MAIL FROM:")
    assert "Host offered STARTTLS: [mx.test]" in s.log


@pytest.mark.parametrize("level", ["encrypt", "verify", "secure"])
def test_required_levels_defer_when_not_offered(certs, level):
    s = TLSSession(certs, smtp_tls_security_level=level)
    s.greet(ehlo=EHLO_AFTER)
    assert s.server.read() == "QUIT\r\n"
    s.server.send("221 Bye\r\n")
    assert s.statuses() == [("deferred", "4.7.4", "TLS is required, but was not offered by host mx.test[127.0.0.1]")]
    assert s.outcome.tryNextHost


def test_encrypt_starttls_refused_defers(certs):
    s = TLSSession(certs, smtp_tls_security_level="encrypt")
    s.greet()
    assert s.server.read() == "STARTTLS\r\n"
    s.server.send("454 4.7.0 TLS not available due to local problem\r\n")
    status, dsn, text = s.statuses()[0]
    assert (status, dsn) == ("deferred", "4.7.0")
    assert text.startswith("TLS is required, but host mx.test[127.0.0.1] refused to start TLS: 454 4.7.0")


def test_may_starttls_refused_goes_on_in_plaintext(certs):
    s = TLSSession(certs)
    s.greet()
    assert s.server.read() == "STARTTLS\r\n"
    s.server.send("454 4.7.0 TLS not available\r\n")
    assert s.server.read().startswith("MAIL FROM:")
    assert not s.protocol.tlsActive


@pytest.mark.parametrize("level", ["may", "encrypt"])
def test_handshake_failure_defers_the_host(certs, level):
    s = TLSSession(certs, smtp_tls_security_level=level)
    s.greet()
    assert s.server.read() == "STARTTLS\r\n"
    s.server.send("220 Ready\r\n")
    s.transport.deliver(b"this is not a TLS server hello\r\n" * 4)
    s.transport.tlsClock.advance(0)
    assert s.statuses() == [("deferred", "4.7.5", "Cannot start TLS: handshake failure")]
    assert s.outcome.tryNextHost and s.protocol.tlsFailed
    assert any(t.startswith("warning: SSL_connect error to mx.test[127.0.0.1]:25: ") for t in s.log)


def test_handshake_timeout(certs):
    s = TLSSession(certs, smtp_tls_security_level="encrypt", smtp_starttls_timeout="10s")
    s.greet()
    assert s.server.read() == "STARTTLS\r\n"
    s.server.send("220 Ready\r\n")  # and then nothing answers the ClientHello
    s.clock.advance(11)
    s.transport.tlsClock.advance(0)
    assert s.statuses() == [("deferred", "4.7.5", "Cannot start TLS: handshake failure")]
    assert any("timed out" in t for t in s.log)


def test_verify_with_the_ca_and_a_matching_hostname(certs):
    s = TLSSession(certs, smtp_tls_security_level="verify", smtp_tls_CAfile=certs["ca.pem"], smtp_tls_loglevel=1)
    s.greet()
    s.starttls()
    s.finish()
    assert s.statuses()[0][0] == "sent"
    assert any(t.startswith("Verified TLS connection established to mx.test[127.0.0.1]:25: TLSv1.3") for t in s.log)


def test_verify_without_the_ca_is_not_trusted(certs):
    s = TLSSession(certs, smtp_tls_security_level="verify")
    s.greet()
    s.starttls()
    assert s.server.read() == "QUIT\r\n"
    assert s.statuses() == [("deferred", "4.7.5", "Server certificate not trusted")]
    assert any(t.startswith("Untrusted TLS connection established to mx.test[127.0.0.1]:25") for t in s.log)


def test_verify_with_a_name_that_does_not_match(certs):
    s = TLSSession(certs, chain="other-chain.pem", smtp_tls_security_level="verify", smtp_tls_CAfile=certs["ca.pem"])
    s.greet()
    s.starttls()
    assert s.statuses() == [("deferred", "4.7.5", "Server certificate not verified")]
    assert any(t.startswith("Trusted TLS connection established to mx.test[127.0.0.1]:25") for t in s.log)


def test_encrypt_accepts_any_certificate(certs):
    s = TLSSession(certs, chain="other-chain.pem", smtp_tls_security_level="encrypt", smtp_tls_CAfile=certs["ca.pem"],
                   smtp_tls_loglevel=1)
    s.greet()
    s.starttls()
    s.finish()
    assert s.statuses()[0][0] == "sent"
    assert any(t.startswith("Trusted TLS connection established to") for t in s.log)


@pytest.mark.parametrize("nexthop, chain, ok", [
    ("mta.test", "server-chain.pem", True),  # nexthop: the cert names mta.test
    ("test", "server-chain.pem", True),  # dot-nexthop: mx.test is below test
    ("example.net", "server-chain.pem", False),  # neither: the MX name alone does not do under secure
    ("other.test", "server-chain.pem", False),
])
def test_secure_matches_the_nexthop(certs, nexthop, chain, ok):
    s = TLSSession(certs, chain=chain, nexthop=nexthop, smtp_tls_security_level="secure",
                   smtp_tls_CAfile=certs["ca.pem"])
    s.greet()
    s.starttls()
    if ok:
        s.finish()
        assert s.statuses()[0][0] == "sent"
    else:
        assert s.statuses() == [("deferred", "4.7.5", "Server certificate not verified")]


def test_sni_is_sent_as_configured(certs):
    seen = []
    s = TLSSession(certs, smtp_tls_servername="hostname")
    s.server.context.set_tlsext_servername_callback(lambda c: seen.append(c.get_servername()))
    s.greet()
    s.starttls()
    assert seen == [b"mx.test"]


def test_the_first_client_hello_carries_only_a_classical_key_share(certs):
    """pitfalls.md: no post-quantum share in the first ClientHello (it would not fit one segment)."""
    settings = clientSettings()
    tls = ClientTLS(settings.tls)
    client = tls.creator("mx.test").clientConnectionForTLS(None)
    try:
        client.do_handshake()
    except SSL.WantReadError:
        pass
    hello = client.bio_read(65536)
    assert len(hello) < 1400  # one TCP segment with room to spare
    assert keyShares(hello) == [(0x001D, 32)]  # X25519 alone, never X25519MLKEM768 (0x11EC, 1216 bytes)
    assert settings.tls.groups[0] == "X25519"


def keyShares(record):
    """[(group, key length)] of the key_share extension of a TLS ClientHello record."""
    body = record[5 + 4:]
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 1 + body[pos]
    end = pos + 2 + int.from_bytes(body[pos:pos + 2], "big")
    pos += 2
    while pos < end:
        kind, length = int.from_bytes(body[pos:pos + 2], "big"), int.from_bytes(body[pos + 2:pos + 4], "big")
        data = body[pos + 4:pos + 4 + length]
        pos += 4 + length
        if kind == 51:
            shares, at = [], 2
            while at < len(data):
                group, size = int.from_bytes(data[at:at + 2], "big"), int.from_bytes(data[at + 2:at + 4], "big")
                shares.append((group, size))
                at += 4 + size
            return shares
    return []


def test_wrapper_mode_starts_tls_at_connect(certs):
    s = TLSSession(certs, smtp_tls_wrappermode=True, smtp_tls_security_level="encrypt", smtp_tls_loglevel=1)
    s.server.accept()  # the ClientHello went out at once
    s.server.send("220 mx.test ESMTP\r\n")
    assert s.server.read() == "EHLO client.example.org\r\n"
    s.server.send(EHLO_AFTER)
    assert s.server.read().startswith("MAIL FROM:")
    assert s.protocol.tlsActive


def test_names_from_the_policy(certs):
    policy = clientSettings(smtp_tls_security_level="secure").tls
    assert matchNamesFor(policy, HOST, "[relay.test]:587") == [("exact", "relay.test"), ("below", "relay.test")]
    assert nexthopDomain("example.net") == "example.net" and nexthopDomain("relay.test:465") == "relay.test"
    assert serverNameFor(clientSettings(smtp_tls_servername="nexthop").tls, HOST, "[relay.test]") == "relay.test"
    assert serverNameFor(clientSettings(smtp_tls_servername="hostname").tls, RemoteHost("1.2.3.4", "1.2.3.4", 25),
                         "x") is None
    assert serverNameFor(clientSettings().tls, HOST, "x") is None


@pytest.mark.parametrize("level, tlsActive, madeUnder, allowed", [
    ("encrypt", False, "encrypt", False),  # never a plaintext connection where TLS is required
    ("encrypt", True, "encrypt", True),
    ("verify", True, "encrypt", False),  # made under another policy
    ("may", False, "may", True),  # a plaintext retry under may serves may
    ("may", True, "may", True),
    ("none", False, "none", True),
    ("may", True, "encrypt", False),
])
def test_cached_connections_serve_only_their_tls_policy(level, tlsActive, madeUnder, allowed):
    from types import SimpleNamespace

    from mta.delivery.smtp import SMTPTransport
    from mta.delivery.tlspolicy import SitePolicy

    site = SitePolicy(tls=clientSettings(smtp_tls_security_level=level).tls)
    made = SitePolicy(tls=clientSettings(smtp_tls_security_level=madeUnder).tls)
    session = SimpleNamespace(tlsActive=tlsActive, siteKey=made.reuseKey)
    assert SMTPTransport._tlsAllows(None, session, site) is allowed


def test_lmtp_reads_the_lmtp_twins(certs):
    s = TLSSession(certs, lmtp=True, lmtp_tls_security_level="encrypt", smtp_tls_security_level="none")
    s.server.send("220 mx.test LMTP\r\n")
    assert s.server.read() == "LHLO client.example.org\r\n"
    s.server.send(EHLO_TLS)
    s.starttls()
    assert s.server.read() == "LHLO client.example.org\r\n"  # LHLO again inside TLS
    assert s.protocol.tlsActive
