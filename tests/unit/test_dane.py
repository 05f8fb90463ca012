"""mta.delivery.dane: the RFC 7672 decisions per MX host, and chains judged by TLSA records (no sockets)."""

import datetime
import hashlib

import attrs
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import Deferred, fail, succeed

from mta.config import load
from mta.delivery.dane import Dane, DanePolicyError, Tlsa, decide, usable, verifyChain
from mta.delivery.dns import Answer, DNSError
from mta.delivery.mx import Host
from mta.delivery.tlspolicy import PolicyError, SitePolicy, TlsPolicy
from mta.testing import resultOf

NOW = datetime.datetime.now(datetime.timezone.utc)


def key():
    return ec.generate_private_key(ec.SECP256R1())


def cert(cn, k, issuer=None, issuerKey=None, *, ca=False, names=(), days=(-1, 30)):
    issuerName = issuer.subject if issuer is not None else x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(issuerName).public_key(k.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW + datetime.timedelta(days=days[0]))
         .not_valid_after(NOW + datetime.timedelta(days=days[1]))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    return b.sign(issuerKey or k, hashes.SHA256())


def der(c):
    return c.public_bytes(serialization.Encoding.DER)


def spki(c):
    return c.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def pki():
    caKey, midKey, leafKey, otherKey = key(), key(), key(), key()
    ca = cert("Test CA", caKey, ca=True)
    mid = cert("Test Intermediate", midKey, ca, caKey, ca=True)
    leaf = cert("mx.example.com", leafKey, mid, midKey, names=("mx.example.com",))
    wild = cert("wild", leafKey, mid, midKey, names=("*.example.com",))
    wrongName = cert("other", leafKey, mid, midKey, names=("other.example.net",))
    expired = cert("mx.example.com", leafKey, mid, midKey, names=("mx.example.com",), days=(-30, -1))
    forged = cert("mx.example.com", otherKey, mid, otherKey, names=("mx.example.com",))  # claims mid, self-signed
    return dict(ca=ca, mid=mid, leaf=leaf, wild=wild, wrongName=wrongName, expired=expired, forged=forged)


def rec(usage, selector, mtype, c):
    data = der(c) if selector == 0 else spki(c)
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return Tlsa(usage, selector, mtype, data)


# -- usable records ------------------------------------------------------------------------------


@pytest.mark.parametrize("usage, selector, mtype, size, ok", [
    (3, 1, 1, 32, True), (3, 0, 2, 64, True), (2, 0, 1, 32, True), (3, 1, 0, 91, True),
    (0, 0, 1, 32, False), (1, 1, 1, 32, False),  # PKIX-TA / PKIX-EE: unusable for SMTP
    (3, 2, 1, 32, False), (3, 1, 3, 32, False),  # unknown selector / matching type
    (3, 1, 1, 31, False), (3, 1, 2, 32, False),  # digest of the wrong length
])
def test_usable(usage, selector, mtype, size, ok):
    assert usable(Tlsa(usage, selector, mtype, b"x" * size)) is ok


# -- DANE-EE(3) -----------------------------------------------------------------------------------


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_matches_the_leaf_in_every_form(pki, selector, mtype):
    result = verifyChain([rec(3, selector, mtype, pki["leaf"])], [pki["leaf"], pki["mid"]], ("nothing.invalid",))
    assert result.matched and result.record.usage == 3


def test_dane_ee_ignores_names_and_expiry(pki):
    assert verifyChain([rec(3, 0, 1, pki["expired"])], [pki["expired"]], ("x.invalid",)).matched
    assert verifyChain([rec(3, 1, 1, pki["leaf"])], [pki["wrongName"]], ("x.invalid",)).matched  # same key


def test_dane_ee_mismatch(pki):
    result = verifyChain([rec(3, 1, 1, pki["forged"])], [pki["leaf"], pki["mid"]], ("mx.example.com",))
    assert not result.matched


# -- DANE-TA(2) ------------------------------------------------------------------------------------


def test_dane_ta_matches_a_chain_certificate_and_the_name(pki):
    chain = [pki["leaf"], pki["mid"], pki["ca"]]
    assert verifyChain([rec(2, 0, 1, pki["ca"])], chain, ("mx.example.com",)).matched
    assert verifyChain([rec(2, 1, 2, pki["mid"])], chain, ("example.com", "mx.example.com")).matched
    assert verifyChain([rec(2, 0, 1, pki["mid"])], [pki["wild"], pki["mid"]], ("mx.example.com",)).matched


def test_dane_ta_needs_a_matching_name(pki):
    result = verifyChain([rec(2, 0, 1, pki["mid"])], [pki["wrongName"], pki["mid"]], ("mx.example.com",))
    assert not result.matched and "no name" in result.detail
    # a wildcard covers one label only
    assert not verifyChain([rec(2, 0, 1, pki["mid"])], [pki["wild"], pki["mid"]], ("a.mx.example.com",)).matched


def test_dane_ta_needs_the_leaf_to_chain_to_it(pki):
    result = verifyChain([rec(2, 0, 1, pki["mid"])], [pki["forged"], pki["mid"]], ("mx.example.com",))
    assert not result.matched and "does not lead" in result.detail


def test_dane_ta_checks_expiry(pki):
    result = verifyChain([rec(2, 0, 1, pki["mid"])], [pki["expired"], pki["mid"]], ("mx.example.com",))
    assert not result.matched and "expired" in result.detail


def test_dane_ta_never_matches_the_leaf_itself(pki):
    assert not verifyChain([rec(2, 0, 1, pki["leaf"])], [pki["leaf"], pki["mid"]], ("mx.example.com",)).matched


# -- decide() -----------------------------------------------------------------------------------------

MX = Host("mx.example.com", "192.0.2.1", 25, 10, secure=True, mxSecure=True)
EE = Tlsa(3, 1, 1, b"e" * 32)
PKIX = Tlsa(1, 1, 1, b"p" * 32)


def test_decide_usable_records_make_dane():
    d = decide("dane", MX, ("mx.example.com", [EE, PKIX]))
    assert d.level == "dane" and d.tlsa == (EE,) and d.base == "mx.example.com" and d.mxSecure
    assert d.names == ("mx.example.com",)


def test_decide_names_are_the_base_domain_and_both_mx_names():
    host = attrs.evolve(MX, canonical="smtp.example.net")
    d = decide("dane-only", host, ("smtp.example.net", [EE]))
    assert d.names == ("smtp.example.net", "mx.example.com")


@pytest.mark.parametrize("found, level, reason", [
    (None, "may", "no TLSA records found"),
    (("mx.example.com", [PKIX]), "encrypt", "TLSA records unusable"),
])
def test_decide_dane_falls_back(found, level, reason):
    d = decide("dane", MX, found)
    assert d.level == level and d.reason == reason and not d.tlsa


@pytest.mark.parametrize("found, text", [
    (None, "no TLSA records found"),
    (("mx.example.com", [PKIX]), "TLSA records unusable"),
])
def test_decide_dane_only_defers(found, text):
    with pytest.raises(DanePolicyError) as e:
        decide("dane-only", MX, found)
    assert e.value.dsn == "4.7.5" and e.value.text == text


def test_decide_insecure_mx():
    host = attrs.evolve(MX, mxSecure=False)
    assert decide("dane", host, ("mx.example.com", [EE]), insecureMxPolicy="may").level == "may"
    assert decide("dane", host, ("mx.example.com", [EE]), insecureMxPolicy="encrypt").level == "encrypt"
    d = decide("dane", host, ("mx.example.com", [EE]), insecureMxPolicy="dane")
    assert d.level == "dane" and not d.mxSecure  # judged by TLSA, logged "Trusted"
    with pytest.raises(DanePolicyError, match="non DNSSEC destination"):
        decide("dane-only", host, ("mx.example.com", [EE]))


def test_decide_configuration_problem():
    assert decide("dane", MX, None, problem="dane configured with dnssec lookups disabled").level == "may"
    with pytest.raises(DanePolicyError, match="client TLS configuration problem"):
        decide("dane-only", MX, None, problem="x")


# -- Dane.forHost() with a fake DNS ------------------------------------------------------------------


def Site(tls, **kw):
    return SitePolicy(tls=tls, domain="example.com", **kw)


class FakeDNS:
    def __init__(self, answers):
        self.answers = answers
        self.asked = []

    def lookupRecords(self, name, rdtype, dnssec=False):
        assert rdtype == "TLSA" and dnssec
        self.asked.append(name)
        value = self.answers.get(name, [])
        if isinstance(value, Exception):
            return fail(value)
        records, secure = value if isinstance(value, tuple) else (value, True)
        rdatas = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TLSA, text) for text in records]
        return succeed(Answer(rdatas, secure, name))


def smtp(text=""):
    return load("/etc/mta/mta.ini", "[main]\nsmtp_dns_support_level = dnssec\n" + text).settings.smtpClient


def forHost(answers, host=MX, level="dane", extra=""):
    settings = smtp(f"smtp_tls_security_level = {level}\n" + extra)
    dane = Dane(FakeDNS(answers), settings)
    d = Deferred.fromCoroutine(dane.forHost(Site(settings.tls), host))
    return d, dane


EE_TEXT = "3 1 1 " + "ab" * 32


def test_for_host_usable_tlsa():
    d, dane = forHost({"_25._tcp.mx.example.com": [EE_TEXT, "0 0 1 " + "cd" * 32]})
    site = resultOf(d)
    assert site.tls.level == "dane" and site.source == "dane" and site.mxSecure
    assert site.tlsa == (Tlsa(3, 1, 1, bytes.fromhex("ab" * 32)),)
    assert site.tls.serverName == "mx.example.com" and site.tls.required  # SNI: the TLSA base domain


def test_for_host_no_tlsa_dane_is_may_and_dane_only_defers():
    site = resultOf(forHost({})[0])
    assert site.tls.level == "may" and not site.tls.required and site.tlsa == () and site.failure is None
    failure = resultOf(forHost({}, level="dane-only")[0]).failure
    assert isinstance(failure, PolicyError) and (failure.dsn, failure.text) == ("4.7.5", "no TLSA records found")


def test_for_host_insecure_tlsa_rrset_does_not_count():
    site = resultOf(forHost({"_25._tcp.mx.example.com": ([EE_TEXT], False)})[0])
    assert site.tls.level == "may" and site.tlsa == ()


def test_for_host_servfail_defers():
    error = DNSError("try again", temporary=True)
    failure = resultOf(forHost({"_25._tcp.mx.example.com": error})[0]).failure
    assert (failure.dsn, failure.text) == ("4.7.5", "TLSA lookup error for mx.example.com:25")


def test_for_host_cname_expanded_name_first_then_the_original():
    host = attrs.evolve(MX, canonical="smtp.example.net")
    d, dane = forHost({"_25._tcp.mx.example.com": [EE_TEXT]}, host=host)
    site = resultOf(d)
    assert dane.resolver.asked == ["_25._tcp.smtp.example.net", "_25._tcp.mx.example.com"]
    assert site.tls.serverName == "mx.example.com" and site.tls.level == "dane"


def test_for_host_insecure_address_rrset_means_no_tlsa_lookup():
    d, dane = forHost({"_25._tcp.mx.example.com": [EE_TEXT]}, host=attrs.evolve(MX, secure=False))
    assert resultOf(d).tls.level == "may" and dane.resolver.asked == []


def test_for_host_insecure_address_rrset_with_forced_tlsa_lookup():
    d, dane = forHost({"_25._tcp.mx.example.com": [EE_TEXT]}, host=attrs.evolve(MX, secure=False),
                      extra="smtp_tls_force_insecure_host_tlsa_lookup = yes\n")
    site = resultOf(d)
    assert dane.resolver.asked == ["_25._tcp.mx.example.com"] and site.tls.level == "dane" and len(site.tlsa) == 1
    d, dane = forHost({"_25._tcp.mx.example.com": ([EE_TEXT], False)}, host=attrs.evolve(MX, secure=False),
                      extra="smtp_tls_force_insecure_host_tlsa_lookup = yes\n")
    assert resultOf(d).tls.level == "may"  # the TLSA RRset itself must still be secure


def test_for_host_insecure_mx_under_the_default_policy_uses_tlsa():
    d, dane = forHost({"_25._tcp.mx.example.com": [EE_TEXT]}, host=attrs.evolve(MX, mxSecure=False))
    site = resultOf(d)
    assert site.tls.level == "dane" and not site.mxSecure
    d, dane = forHost({"_25._tcp.mx.example.com": [EE_TEXT]}, host=attrs.evolve(MX, mxSecure=False),
                      extra="smtp_tls_dane_insecure_mx_policy = may\n")
    assert resultOf(d).tls.level == "may" and dane.resolver.asked == []


def test_other_levels_are_left_alone():
    settings = smtp("smtp_tls_security_level = verify\n")
    site = Site(settings.tls)
    assert resultOf(Deferred.fromCoroutine(Dane(FakeDNS({}), settings).forHost(site, MX))) is site


# -- Dane.judge() ------------------------------------------------------------------------------------


class FakeX509:
    def __init__(self, c):
        self.c = c

    def to_cryptography(self):
        return self.c


class FakeConnection:
    def __init__(self, *chain):
        self.chain = [FakeX509(c) for c in chain]

    def get_peer_cert_chain(self):
        return self.chain

    def get_peer_certificate(self):
        return self.chain[0] if self.chain else None


def judged(pki, records, chain, mxSecure=True):
    settings = smtp("smtp_tls_security_level = dane\n")
    tls = attrs.evolve(settings.tls, verifyCertMatch=("mx.example.com",))
    site = Site(tls, tlsa=tuple(records), mxSecure=mxSecure)
    return Dane(FakeDNS({}), settings).judge(site, None, FakeConnection(*chain), MX)


def test_judge_verified_trusted_untrusted(pki):
    chain = [pki["leaf"], pki["mid"]]
    assert judged(pki, [rec(3, 1, 1, pki["leaf"])], chain).trust == "Verified"
    assert judged(pki, [rec(2, 0, 1, pki["mid"])], chain, mxSecure=False).trust == "Trusted"
    verdict = judged(pki, [rec(3, 1, 1, pki["forged"])], chain)
    assert verdict.trust == "Untrusted" and verdict.failure == "Server certificate not verified"
    assert judged(pki, [rec(3, 1, 1, pki["leaf"])], []).failure == "Server certificate not verified"


def test_judge_without_tlsa_keeps_the_verdict(pki):
    settings = smtp()
    marker = object()
    assert Dane(FakeDNS({}), settings).judge(Site(settings.tls), marker, FakeConnection(pki["leaf"]), MX) is marker


def test_through_the_tls_policy_hooks(pki):
    """TlsPolicy.forHost asks DANE for dane levels, and TlsPolicy.judge lets it judge by TLSA."""
    settings = smtp("smtp_tls_security_level = dane-only\n")
    policy = TlsPolicy(settings)
    policy.dane = Dane(FakeDNS({"_25._tcp.mx.example.com": ["3 1 1 " + rec(3, 1, 1, pki["leaf"]).data.hex()]}),
                       settings)
    site = resultOf(Deferred.fromCoroutine(policy.forHost(policy.default("example.com"), MX)))
    assert site.tls.level == "dane" and len(site.tlsa) == 1 and site.failure is None
    verdict = policy.judge(site, policy.context(site.tls).judge(FakeConnection(pki["leaf"]), ()),
                           FakeConnection(pki["leaf"], pki["mid"]), MX)
    assert verdict.trust == "Verified" and verdict.failure is None
    assert site.reuseKey != policy.default("example.com").reuseKey  # a DANE connection is cached apart


def test_a_warning_when_no_dns_server_is_trusted():
    class Untrusted(FakeDNS):
        trustedServers = frozenset()

    lines = []

    class Log:
        def emit(self, text, queueId=None, level=None):
            lines.append(text)

    Dane(Untrusted({}), smtp(), Log())
    assert lines and lines[0].startswith("warning: smtp_dns_support_level = dnssec, but no DNS server is trusted")
    lines.clear()
    Dane(FakeDNS({}), smtp(), Log())  # (a resolver without the attribute: nothing to say)
    assert lines == []
