"""mta.delivery.tlspolicy: smtp_tls_policy_maps keys and values, the fingerprint level, the per-host hooks."""

import hashlib

import attrs
import pytest
from twisted.internet.defer import succeed
from twisted.internet.task import Clock

from mta.delivery.nexthop import parseNexthop
from mta.delivery.smtpclient import RemoteHost, SMTPClientSession
from mta.delivery.tlspolicy import (PolicyError, SitePolicy, TlsPolicy, TlsResult, fingerprintMatches,
                                    parsePolicyEntry, policyKeys)
from mta.tables import TableTemporaryError
from tests.unit.test_smtpclient import BODY, clientSettings, makeRequest
from tests.unit.test_smtpclient_tls import EHLO_TLS, HOST, Lines, certs  # noqa: F401 (fixture)
from tests.tlssupport import TLSServerEnd, TLSStringTransport
from tests.synchronous import run


class Table:
    """A lookup table with the keys it was asked, answering from a dict (or failing)."""

    def __init__(self, values, fail=False):
        self.values = values
        self.asked = []
        self.fail = fail

    def lookup(self, key):
        self.asked.append(key)
        if self.fail:
            from twisted.internet.defer import fail

            return fail(TableTemporaryError("socketmap:inet:127.0.0.1:1:x: timed out"))
        return succeed(self.values.get(key))


class Tables:
    def __init__(self, table):
        self.table = table

    def open(self, spec):
        return self.table


def policyFor(table, **params):
    params.setdefault("smtp_tls_policy_maps", "texthash:/nonexistent/tls_policy")
    settings = clientSettings(**params)
    warnings = []
    return TlsPolicy(settings, None, Clock(), Tables(table), warn=warnings.append), warnings


@pytest.mark.parametrize("nexthop, keys", [
    ("mail.example.com", ["mail.example.com", ".example.com", ".com"]),
    ("Example.COM.", ["example.com", ".com"]),
    ("[relay.example.com]:587", ["[relay.example.com]:587"]),
    ("[relay.example.com]", ["[relay.example.com]"]),
    ("relay.example.com:2525", ["relay.example.com:2525"]),
    ("[192.0.2.1]", ["[192.0.2.1]"]),
    ("", []),
])
def test_policy_keys_are_postfix_s(nexthop, keys):
    assert policyKeys(nexthop) == keys


def base(**params):
    settings = clientSettings(**params)
    return settings.tls, settings


def test_an_entry_sets_the_level_and_the_match_names():
    tls, settings = base()
    new, fingerprints, reuse = parsePolicyEntry("secure match=example.com:.example.com", tls, settings)
    assert new.level == "secure" and new.required and new.mustMatch
    assert new.matchNames == ("example.com", ".example.com") and fingerprints == () and reuse is None
    new, _, _ = parsePolicyEntry("verify match=hostname:nexthop", tls, settings)
    assert new.matchNames == ("hostname", "nexthop")


def test_protocols_ciphers_exclude_servername_reuse():
    tls, settings = base()
    new, _, reuse = parsePolicyEntry("encrypt protocols=>=TLSv1.2 ciphers=high exclude=3DES:RC4 "
                                     "servername=hostname connection_reuse=no", tls, settings)
    assert new.activeProtocolRange == ("TLSv1.2", "TLSv1.3")
    assert new.activeCipherList.startswith(settings.highCipherlist) and new.activeCipherList.endswith(":!3DES:!RC4")
    assert new.serverName == "hostname" and reuse is False
    new, _, _ = parsePolicyEntry("may protocols=!SSLv2:!SSLv3:!TLSv1", tls, settings)
    assert new.activeProtocolRange == ("TLSv1.1", "TLSv1.3")


def test_fingerprint_entries_take_bar_separated_and_repeated_digests():
    tls, settings = base()
    new, fingerprints, _ = parsePolicyEntry("fingerprint match=AB:CD|01:02 match=FF:EE", tls, settings)
    assert new.level == "fingerprint" and new.required
    assert fingerprints == ("abcd", "0102", "ffee")


@pytest.mark.parametrize("entry, words", [
    ("", "empty TLS policy"),
    ("sometimes", "invalid TLS security level 'sometimes'"),
    ("may frobnicate=yes", "unknown TLS policy attribute 'frobnicate=yes'"),
    ("may tafile=/etc/ta.pem", "unknown TLS policy attribute"),
    ("may match=example.com", "match= is not allowed with level may"),
    ("encrypt protocols=<=SSLv3", "protocols=<=SSLv3"),
    ("encrypt ciphers=strong", "ciphers=strong: not a cipher grade"),
    ("encrypt exclude=ALL", "selects no cipher"),
    ("encrypt servername=-bad-", "not a server name"),
    ("encrypt connection_reuse=maybe", "connection_reuse=maybe"),
    ("fingerprint match=xyz", "malformed fingerprint"),
    ("fingerprint", "fingerprint level without match= digests"),
    ("encrypt ciphers=high ciphers=low", "duplicate TLS policy attribute"),
    ("encrypt ciphers=", "attribute 'ciphers' has an empty value"),
    ("encrypt match=example.com", "match= is not allowed with level encrypt"),
])
def test_bad_entries_are_refused_with_a_reason(entry, words):
    tls, settings = base()
    with pytest.raises(PolicyError, match=words.replace("(", r"\(").replace("=<", "=<").replace("|", r"\|")):
        parsePolicyEntry(entry, tls, settings)


def test_none_ignores_its_attributes_with_a_warning():
    tls, settings = base()
    warnings = []
    new, fingerprints, reuse = parsePolicyEntry("none match=x ciphers=high", tls, settings, warn=warnings.append)
    assert new.level == "none" and fingerprints == () and reuse is None
    assert warnings == ["smtp_tls_policy_maps: ignoring attributes 'match=x ciphers=high' with TLS disabled"]


def test_for_destination_looks_up_the_domain_then_parents():
    table = Table({".example.com": "secure match=.example.com"})
    policy, _ = policyFor(table)
    site = run(policy.forDestination(parseNexthop("mail.example.com", "smtp"), "mail.example.com"))
    assert table.asked == ["mail.example.com", ".example.com"]
    assert site.source == "smtp_tls_policy_maps" and site.tls.level == "secure" and site.domain == "mail.example.com"
    assert site.failure is None


def test_no_entry_keeps_the_transport_s_policy():
    table = Table({})
    policy, _ = policyFor(table, smtp_tls_security_level="encrypt")
    site = run(policy.forDestination(parseNexthop("[relay.example]:587", "smtp"), "[relay.example]:587"))
    assert table.asked == ["[relay.example]:587"]
    assert site.source == "transport" and site.tls.level == "encrypt"


def test_a_bad_entry_defers_with_a_warning():
    policy, warnings = policyFor(Table({"example.com": "sometimes"}))
    site = run(policy.forDestination(parseNexthop("example.com", "smtp"), "example.com"))
    assert site.failure.text == "TLS policy lookup error" and site.failure.dsn == "4.7.5"
    assert "invalid TLS security level 'sometimes' (key 'example.com'); deferring mail for example.com" in warnings[0]


def test_a_table_that_cannot_answer_defers():
    policy, warnings = policyFor(Table({}, fail=True))
    site = run(policy.forDestination(parseNexthop("example.com", "smtp"), "example.com"))
    assert site.failure.dsn == "4.3.0" and site.failure.text == "TLS policy lookup for example.com failed"
    assert "timed out" in warnings[0]


def test_parsed_entries_are_cached_by_value():
    policy, _ = policyFor(Table({"a.example": "encrypt", "b.example": "encrypt"}))
    one = run(policy.forDestination(parseNexthop("a.example", "smtp"), "a.example"))
    two = run(policy.forDestination(parseNexthop("b.example", "smtp"), "b.example"))
    assert one.tls is two.tls
    assert policy.context(one.tls) is policy.context(two.tls)


def test_reuse_keys_differ_by_policy():
    tls, settings = base()
    a = SitePolicy(tls=tls)
    b = SitePolicy(tls=attrs.evolve(tls, level="encrypt"))
    assert a.reuseKey == SitePolicy(tls=tls).reuseKey and a.reuseKey != b.reuseKey
    assert SitePolicy(tls=tls, fingerprints=("ab",)).reuseKey != a.reuseKey


def test_dane_without_dane_support():
    policy, _ = policyFor(Table({"example.com": "dane", "example.org": "dane-only"}))
    host = RemoteHost("mx.example.com", "192.0.2.1", 25)
    site = run(policy.forDestination(parseNexthop("example.com", "smtp"), "example.com"))
    assert run(policy.forHost(site, host)).tls.level == "may"
    site = run(policy.forDestination(parseNexthop("example.org", "smtp"), "example.org"))
    assert "DANE is not available" in run(policy.forHost(site, host)).failure.text


def test_results_reach_the_reporter():
    policy, _ = policyFor(Table({}))
    seen = []
    policy.reporter = type("R", (), {"record": lambda self, *a: seen.append(a)})()
    site = policy.default("example.com")
    policy.record(site, HOST, TlsResult(False, "starttls-not-supported", "x"))
    assert seen == [(site, HOST, TlsResult(False, "starttls-not-supported", "x"))]


def digestOf(path, kind, algorithm="sha256"):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(open(path, "rb").read())
    blob = cert.public_bytes(serialization.Encoding.DER) if kind == "cert" else cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.new(algorithm, blob).hexdigest()


def test_fingerprint_matches_the_certificate_or_its_public_key(certs):  # noqa: F811
    from OpenSSL import crypto

    path = certs["server.pem"]  # the server certificate first, then the CA
    x509 = crypto.load_certificate(crypto.FILETYPE_PEM, open(path, "rb").read())
    assert fingerprintMatches(x509, (digestOf(path, "cert"),), "sha256")
    assert fingerprintMatches(x509, (digestOf(path, "spki", "sha512"),), "sha512")
    assert not fingerprintMatches(x509, ("00" * 32,), "sha256")
    assert not fingerprintMatches(None, ("00" * 32,), "sha256")


class FingerprintSession:
    """A session under smtp_tls_security_level = fingerprint, judged by a TlsPolicy."""

    def __init__(self, certs, digests):  # noqa: F811
        self.clock = Clock()
        self.settings = clientSettings(smtp_tls_security_level="fingerprint",
                                       smtp_tls_fingerprint_cert_match=", ".join(digests))
        self.log = Lines()
        policy = TlsPolicy(self.settings, None, self.clock)
        site = run(policy.forDestination(parseNexthop("example.net", "smtp"), "example.net"))
        self.protocol = SMTPClientSession(self.settings, self.clock, self.log, site=site, policy=policy)
        self.transport = TLSStringTransport(client=True)
        self.transport.protocol = self.protocol
        self.server = TLSServerEnd(self.transport, TLSServerEnd.serverContext(certs, "server-chain.pem"))
        self.protocol.makeConnection(self.transport)
        self.outcomes = []
        request = attrs.evolve(makeRequest(), nexthop="example.net")
        self.protocol.deliver(request, (BODY,), HOST).addBoth(self.outcomes.append)
        self.server.send("220 mx.test ESMTP\r\n")
        assert self.server.read() == "EHLO client.example.org\r\n"
        self.server.send(EHLO_TLS)
        assert self.server.read() == "STARTTLS\r\n"
        self.server.send("220 2.0.0 Ready\r\n")
        self.server.accept()
        self.transport.tlsClock.advance(0)


def test_the_fingerprint_level_delivers_to_a_matching_certificate(certs):  # noqa: F811
    digest = digestOf(certs["server.pem"], "cert")
    s = FingerprintSession(certs, [":".join(digest[i:i + 2] for i in range(0, len(digest), 2)).upper()])
    assert s.protocol.tlsActive and s.protocol.tlsVerdict.trust == "Verified"
    assert s.server.read() == "EHLO client.example.org\r\n"


def test_the_fingerprint_level_defers_any_other_certificate(certs):  # noqa: F811
    s = FingerprintSession(certs, ["00" * 32])
    assert s.protocol.tlsVerdict.trust == "Untrusted"
    s.clock.advance(0)
    s.transport.tlsClock.advance(0)
    results = s.outcomes[0].results
    assert [(r.status, r.dsn, r.text) for r in results] == [("deferred", "4.7.5", "Server certificate not verified")]
    assert any("Untrusted TLS connection established to mx.test[127.0.0.1]:25" in line for line in s.log)


def perSitePolicy(values, **params):
    params.setdefault("smtp_tls_per_site", "texthash:/nonexistent/per_site")
    params.setdefault("smtp_tls_policy_maps", "")
    table = Table(values)
    settings = clientSettings(**params)
    warnings = []
    return TlsPolicy(settings, None, Clock(), Tables(table), warn=warnings.append), table, warnings


@pytest.mark.parametrize("values, level", [
    ({}, "may"),
    ({"example.com": "MUST"}, "verify"),
    ({"mx.example.com": "MUST_NOPEERMATCH"}, "encrypt"),
    ({"example.com": "NONE", "mx.example.com": "MAY"}, "none"),  # NONE overrides MAY
    ({"example.com": "MAY", "mx.example.com": "must"}, "verify"),
    ({"example.com": "bogus"}, "may"),  # ignored with a warning
])
def test_per_site_looks_up_the_destination_then_the_host(values, level):
    policy, table, warnings = perSitePolicy(values)
    host = RemoteHost("mx.example.com", "192.0.2.1", 25)
    site = run(policy.forDestination(parseNexthop("example.com", "smtp"), "example.com"))
    site = run(policy.forHost(site, host))
    assert table.asked == ["example.com", "mx.example.com"]
    assert site.tls.level == level
    assert warnings == ([] if "bogus" not in values.values() else
                        ["Table smtp_tls_per_site: ignoring unknown TLS policy 'bogus' for next-hop destination "
                         "example.com"])


def test_per_site_may_does_not_lower_a_stronger_global_level():
    policy, _, _ = perSitePolicy({"example.com": "MAY"}, smtp_tls_security_level="encrypt")
    site = run(policy.forDestination(parseNexthop("example.com", "smtp"), "example.com"))
    assert run(policy.forHost(site, RemoteHost("mx.example.com", "192.0.2.1", 25))).tls.level == "encrypt"


def test_per_site_is_ignored_beside_policy_maps():
    policy, table, warnings = perSitePolicy({"example.com": "MUST"}, smtp_tls_policy_maps="texthash:/x")
    assert policy.perSite == [] and warnings == ["smtp_tls_per_site ignored when smtp_tls_policy_maps is not empty."]
