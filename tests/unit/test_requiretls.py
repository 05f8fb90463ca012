"""REQUIRETLS (RFC 8689) in the client: the policy (mta.delivery.requiretls), the session's checks over
in-memory TLS, the bounce status of a 5.7.x policy failure, and redacted notices (mta.bounce)."""

import email
import email.policy

import attrs
import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from mta.config.errors import ConfigError
from mta.delivery import requiretls as R
from mta.delivery.smtp import _failureStatus
from mta.delivery.smtpclient import SMTPClientSession
from mta.delivery.tlspolicy import SitePolicy, TlsPolicy
from tests.tlssupport import TLSServerEnd, TLSStringTransport
from tests.unit.test_bounce import BOB, CONTENT, REJECTED, envelope, notice
from tests.unit.test_smtpclient import BODY, clientSettings, makeRequest
from tests.tlssupport import Certificates
from tests.unit.test_smtpclient_tls import EHLO_AFTER, EHLO_TLS, HOST, Lines
from tests.synchronous import run

EHLO_REQUIRETLS = "250-mx.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 REQUIRETLS\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


# -- the session over in-memory TLS -------------------------------------------------------------

class Session:
    """A client session delivering one message (REQUIRETLS unless told) to a pyOpenSSL server end."""

    def __init__(self, certs, chain="server-chain.pem", requiretls=True, tls_required_no=False, site=None, **params):
        params.setdefault("smtp_tls_security_level", "verify")
        if params["smtp_tls_security_level"] in ("verify", "secure"):
            params.setdefault("smtp_tls_CAfile", certs["ca.pem"])
        self.settings = clientSettings(**params)
        self.log = Lines()
        site = site(self.settings) if site is not None else None
        self.protocol = SMTPClientSession(self.settings, Clock(), self.log, site=site)
        self.transport = TLSStringTransport(client=True)
        self.transport.protocol = self.protocol
        self.server = TLSServerEnd(self.transport, TLSServerEnd.serverContext(certs, chain))
        self.protocol.makeConnection(self.transport)
        self.outcomes = []
        request = makeRequest(requiretls=requiretls, tls_required_no=tls_required_no)
        self.protocol.deliver(request, (BODY,), HOST).addBoth(self.outcomes.append)

    def greet(self, ehlo=EHLO_TLS):
        self.server.send("220 mx.test ESMTP\r\n")
        assert self.server.read() == "EHLO client.example.org\r\n"
        self.server.send(ehlo)

    def starttls(self):
        assert self.server.read() == "STARTTLS\r\n"
        self.server.send("220 2.0.0 Ready to start TLS\r\n")
        self.server.accept()
        assert self.server.read() == "EHLO client.example.org\r\n"

    def mail(self):
        """The MAIL FROM line sent, then the rest of a successful transaction."""
        sent = self.server.read()
        self.server.send("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n")
        self.server.read()
        self.server.send("250 2.0.0 Ok: queued as X\r\n")
        self.server.read()
        self.server.send("221 Bye\r\n")
        self.transport.tlsClock.advance(0)
        return sent.split("\r\n")[0]

    @property
    def outcome(self):
        assert len(self.outcomes) == 1, self.outcomes
        return self.outcomes[0]

    def statuses(self):
        return [(r.status, r.dsn, r.text) for r in self.outcome.results]


def test_verified_tls_to_a_server_offering_requiretls_sends_it_in_mail_from(certs):
    s = Session(certs)
    s.greet()
    s.starttls()
    s.server.send(EHLO_REQUIRETLS)
    assert s.mail() == "MAIL FROM:<alice@example.org> REQUIRETLS"
    assert s.statuses()[0][:2] == ("sent", "2.0.0")


def test_a_server_without_requiretls_after_starttls_is_a_5_7_30_and_the_next_mx_is_tried(certs):
    s = Session(certs)
    s.greet()
    s.starttls()
    s.server.send(EHLO_AFTER)
    assert s.server.read() == "QUIT\r\n"  # no MAIL FROM: the message never reaches that server
    assert s.statuses() == [("bounced", "5.7.30", "Sender requested REQUIRETLS, but no server was found that "
                             "supports REQUIRETLS. The last attempted server was mx.test[127.0.0.1]")]
    assert s.outcome.tryNextHost  # bounced only when no MX host is left (mta.delivery.smtp)


def test_a_server_without_starttls_is_a_5_7_30_never_plaintext(certs):
    s = Session(certs)
    s.greet(ehlo=EHLO_AFTER)
    assert s.server.read() == "QUIT\r\n"
    assert s.statuses() == [("bounced", "5.7.30", "Sender requested REQUIRETLS, but TLS service was not offered "
                             "by host mx.test[127.0.0.1]")]
    assert s.outcome.tryNextHost
    assert any("TLS service was not offered" in line for line in s.log)


def test_a_certificate_that_does_not_verify_is_a_5_7_10_not_a_deferral(certs):
    s = Session(certs, chain="other-chain.pem")
    s.greet()
    assert s.server.read() == "STARTTLS\r\n"
    s.server.send("220 2.0.0 Ready to start TLS\r\n")
    s.server.accept()
    status, dsn, text = s.statuses()[0]
    assert (status, dsn) == ("bounced", "5.7.10")
    assert text == ("Sender requested REQUIRETLS, but TLS failed with host mx.test[127.0.0.1]: "
                    "Server certificate not verified")
    assert s.outcome.tryNextHost


def test_encrypt_without_a_verified_certificate_is_refused_before_mail_from(certs):
    # A site whose level cannot match (only reached if the policy layer is bypassed): the session refuses.
    s = Session(certs, smtp_tls_security_level="encrypt")
    s.greet()
    s.starttls()
    s.server.send(EHLO_REQUIRETLS)
    assert s.server.read() == "QUIT\r\n"
    status, dsn, text = s.statuses()[0]
    assert (status, dsn) == ("bounced", "5.7.10") and "was not verified" in text


def test_a_message_without_requiretls_does_not_send_it_even_when_offered(certs):
    s = Session(certs, requiretls=False)
    s.greet()
    s.starttls()
    s.server.send(EHLO_REQUIRETLS)
    assert s.mail() == "MAIL FROM:<alice@example.org>"


def test_opportunistic_delivers_in_plaintext_without_requiretls(certs):
    s = Session(certs, smtp_tls_security_level="may", smtp_requiretls_policy="opportunistic")
    s.greet(ehlo=EHLO_AFTER)
    assert s.mail() == "MAIL FROM:<alice@example.org>"
    assert s.statuses()[0][0] == "sent"


def test_requiretls_enable_no_delivers_as_if_not_requested(certs):
    s = Session(certs, requiretls_enable=False, smtp_tls_security_level="may")
    s.greet(ehlo=EHLO_AFTER)
    assert s.mail() == "MAIL FROM:<alice@example.org>"


# -- the policy layer (TlsPolicy.forDestination / forHost) --------------------------------------------

class Tables:
    def __init__(self, values):
        self.values = values
        self.asked = []

    def open(self, spec):
        return self

    def lookup(self, key):
        self.asked.append(key)
        return succeed(self.values.get(key))


def policy(tables=None, **params):
    return TlsPolicy(clientSettings(**params), None, Clock(), tables)


def destination(tlsPolicy, request, nexthop="example.net"):
    return run(tlsPolicy.forDestination(None, nexthop, request))


def test_enforce_at_level_may_fails_the_destination_with_5_7_10_which_bounces():
    encrypt = destination(policy(smtp_tls_security_level="encrypt"), makeRequest(requiretls=True))
    assert encrypt.failure.dsn == "5.7.10" and "'encrypt' disables certificate matching" in encrypt.failure.text
    site = destination(policy(), makeRequest(requiretls=True))
    assert site.requiretls == "enforce"
    assert site.failure.dsn == "5.7.10" and _failureStatus(site.failure) == "bounced"
    assert site.failure.text == ("Sender requested REQUIRETLS, but my configured TLS security level 'may' "
                                 "disables certificate matching")


@pytest.mark.parametrize("level", ["verify", "secure", "fingerprint"])
def test_enforce_at_a_matching_level_is_allowed(level):
    extra = {"smtp_tls_fingerprint_cert_match": "ab:cd"} if level == "fingerprint" else {}
    site = destination(policy(smtp_tls_security_level=level, **extra), makeRequest(requiretls=True))
    assert site.failure is None and site.requiretls == "enforce" and site.tls.level == level


def test_dane_is_decided_per_host_by_its_tlsa_records():
    tlsPolicy = policy(smtp_tls_security_level="dane")
    site = destination(tlsPolicy, makeRequest(requiretls=True))
    assert site.failure is None
    host = run(tlsPolicy.forHost(site, HOST))  # no DANE here: "dane" is "may" for this host
    assert host.failure.dsn == "5.7.10" and "'may' disables certificate matching" in host.failure.text
    dane = attrs.evolve(site, tls=attrs.evolve(site.tls, level="dane"))
    assert R.canMatch(attrs.evolve(dane, tlsa=("3 1 1 ab",))) and not R.canMatch(dane)


def test_opportunistic_starttls_raises_may_to_encrypt():
    site = destination(policy(smtp_requiretls_policy="opportunistic+starttls"), makeRequest(requiretls=True))
    assert (site.tls.level, site.source, site.failure) == ("encrypt", "requiretls", None)


def test_a_message_without_requiretls_keeps_the_transport_policy():
    site = destination(policy(), makeRequest())
    assert (site.tls.level, site.requiretls, site.failure) == ("may", "", None)


def test_tls_required_no_lowers_the_level_to_may_and_drops_mta_sts():
    tlsPolicy = policy(smtp_tls_security_level="verify")
    site = destination(tlsPolicy, makeRequest(tls_required_no=True))
    assert (site.tls.level, site.source, site.sts) == ("may", "tls-required", None)


def test_requiretls_wins_over_tls_required_no():
    site = destination(policy(smtp_tls_security_level="verify"), makeRequest(requiretls=True, tls_required_no=True))
    assert (site.tls.level, site.requiretls, site.failure) == ("verify", "enforce", None)


def test_tls_required_enable_no_ignores_the_header():
    site = destination(policy(smtp_tls_security_level="verify", tls_required_enable=False),
                       makeRequest(tls_required_no=True))
    assert site.tls.level == "verify"


def test_policy_tables_are_asked_by_domain_then_parents_and_the_first_answer_wins():
    tables = Tables({".example.net": "opportunistic"})
    tlsPolicy = policy(tables, smtp_requiretls_policy="texthash:/nonexistent/rt, enforce")
    site = destination(tlsPolicy, makeRequest(requiretls=True), "[mail.example.net]:587")
    assert tables.asked == ["mail.example.net"]  # a [literal] is looked up as it is, no parents
    assert site.requiretls == "enforce"
    tables.asked.clear()
    site = destination(tlsPolicy, makeRequest(requiretls=True), "mx.example.net")
    assert tables.asked == ["mx.example.net", ".example.net"]
    assert (site.requiretls, site.failure) == ("opportunistic", None)


def test_a_bad_table_answer_defers_with_a_configuration_error():
    tlsPolicy = policy(Tables({"example.net": "sometimes"}), smtp_requiretls_policy="texthash:/nonexistent/rt")
    site = destination(tlsPolicy, makeRequest(requiretls=True))
    assert (site.failure.dsn, site.failure.text) == ("4.7.10", "REQUIRETLS policy configuration error")
    assert _failureStatus(site.failure) == "deferred"


def test_a_bad_policy_item_fails_at_load():
    with pytest.raises(ConfigError, match="not a REQUIRETLS action"):
        clientSettings(smtp_requiretls_policy="enforce, maybe")


def test_lmtp_defaults_to_opportunistic():
    settings = clientSettings(lmtp=True)
    assert settings.requiretlsPolicy == ("opportunistic",)
    assert R.demand(SitePolicy(tls=settings.tls), makeRequest(requiretls=True).envelope, settings) == "opportunistic"


# -- non-delivery notices (RFC 8689 5) ---------------------------------------------------------------

def parts(result):
    msg = email.message_from_bytes(result.message, policy=email.policy.compat32)
    return msg, [p.get_content_type() for p in msg.walk()]


def test_a_bounce_of_a_requiretls_message_returns_headers_only_and_goes_without_requiretls():
    result = notice(env=envelope(requiretls=True), items=[(BOB, REJECTED)])
    msg, types = parts(result)
    assert "text/rfc822-headers" in types and "message/rfc822" not in types
    assert b"first body line" not in result.message and b"Subject: hello" in result.message
    assert result.requiretls is False


def test_requiretls_redact_dsn_no_returns_the_message_and_keeps_requiretls():
    result = notice(env=envelope(requiretls=True), items=[(BOB, REJECTED)], requiretlsRedact=False)
    _, types = parts(result)
    assert "message/rfc822" in types and b"first body line" in result.message
    assert result.requiretls is True


def test_a_bounce_of_a_tls_required_no_message_carries_the_header():
    msg, _ = parts(notice(env=envelope(tls_required_no=True)))
    assert msg["TLS-Required"] == "No"
    msg, _ = parts(notice(env=envelope(tls_required_no=True, requiretls=True)))
    assert msg["TLS-Required"] is None  # REQUIRETLS wins
    msg, _ = parts(notice(env=envelope(tls_required_no=True), tlsRequiredEnable=False))
    assert msg["TLS-Required"] is None
    assert CONTENT  # the original used by these notices
