"""mta.delivery.mtasts: the TXT record, the policy file, MX patterns, the cache, the modes and the TlsPolicy hooks."""

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from mta.delivery.dns import DNSError
from mta.delivery.mtasts import MAX_AGE_LIMIT, Sts, StsError, StsPolicy, mxMatches, parsePolicy, parseTxt
from mta.delivery.nexthop import parseNexthop
from mta.delivery.smtpresults import RemoteHost
from mta.delivery.smtptls import TlsVerdict
from mta.delivery.tlspolicy import SitePolicy, TlsPolicy
from tests.synchronous import run
from tests.unit.test_smtpclient import clientSettings

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.backup.example.net\r\nmax_age: 86400\r\n"


# -- the TXT record ---------------------------------------------------------------------------------


@pytest.mark.parametrize("records, ident", [
    ([[b"v=STSv1; id=20160831085700Z;"]], "20160831085700Z"),
    ([[b"v=STSv1;id=abc"]], "abc"),
    ([[b"v=STSv1; ", b"id=split1; ext=1"]], "split1"),  # character strings are concatenated
    ([[b"v=spf1 -all"], [b"v=STSv1; id=one"]], "one"),  # other TXT records are ignored
    ([[b"v=spf1 -all"]], None),
    ([], None),
    ([[b"v=STSv1; id=a"], [b"v=STSv1; id=b"]], None),  # two STS records: as if none (RFC 8461 3.1)
    ([[b"v=STSv10; id=a"]], None),
])
def test_txt_record_gives_the_policy_id(records, ident):
    assert parseTxt(records) == ident


@pytest.mark.parametrize("text", ["v=STSv1;", "v=STSv1; id=", "v=STSv1; id=has-dash", "v=STSv1; id=" + "a" * 33])
def test_txt_record_without_a_valid_id_is_an_invalid_policy(text):
    with pytest.raises(StsError) as e:
        parseTxt([[text.encode()]])
    assert e.value.failureType == "sts-policy-invalid"


# -- the policy file ----------------------------------------------------------------------------------


def test_policy_file_fields():
    policy = parsePolicy(POLICY, "example.com", "id1", now=100.0)
    assert policy == StsPolicy("example.com", "id1", "enforce", ("mx1.example.com", "*.backup.example.net"), 86400,
                               POLICY, 100.0)
    assert policy.expires == 86500.0


def test_policy_file_with_lf_unknown_keys_and_repeated_keys():
    text = "version: STSv1\nmode: testing\nmode: enforce\nmx: MX.Example.COM.\nmax_age:604800\nfuture: x\n\n"
    policy = parsePolicy(text, "example.com", "i")
    assert (policy.mode, policy.mx, policy.maxAge) == ("testing", ("mx.example.com",), 604800)


def test_policy_max_age_is_capped_and_none_needs_no_mx():
    policy = parsePolicy("version: STSv1\nmode: none\nmax_age: 9999999999\n", "example.com", "i")
    assert policy.mode == "none" and policy.mx == () and policy.maxAge == MAX_AGE_LIMIT


@pytest.mark.parametrize("text, why", [
    ("mode: enforce\nmx: mx.example.com\nmax_age: 1\n", "version"),
    ("version: STSv2\nmode: enforce\nmx: mx.example.com\nmax_age: 1\n", "version"),
    ("version: STSv1\nmode: strict\nmx: mx.example.com\nmax_age: 1\n", "mode"),
    ("version: STSv1\nmode: enforce\nmx: mx.example.com\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: -1\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmx: mx.example.com\nmax_age: 1e5\n", "max_age"),
    ("version: STSv1\nmode: enforce\nmax_age: 1\n", "without mx"),
    ("version: STSv1\nmode: testing\nmx: bad_name!\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: testing\nmx: *.*.example.com\nmax_age: 1\n", "not a host name"),
    ("version: STSv1\nmode: enforce\ngarbage line\n", "without a key"),
    ("version: STSv1\n" + "x: " + "y" * 70000 + "\n", "64 KiB"),
])
def test_invalid_policy_files(text, why):
    with pytest.raises(StsError) as e:
        parsePolicy(text, "example.com", "i")
    assert e.value.failureType == "sts-policy-invalid" and why in e.value.text


@pytest.mark.parametrize("pattern, host, matches", [
    ("mx1.example.com", "mx1.example.com", True),
    ("mx1.example.com", "MX1.Example.com.", True),
    ("mx1.example.com", "mx2.example.com", False),
    ("*.example.com", "mx.example.com", True),
    ("*.example.com", "a.b.example.com", False),  # one label only (RFC 8461 4.1)
    ("*.example.com", "example.com", False),
    ("*.example.com", "mxexample.com", False),
    ("mx1.example.com", "", False),
])
def test_mx_patterns(pattern, host, matches):
    assert mxMatches(pattern, host) is matches


# -- discovery and the cache --------------------------------------------------------------------------


class Txt:
    def __init__(self, *strings):
        self.strings = strings


class FakeDNS:
    """TXT answers by name: a list of Txt, a DNSError, or missing (NXDOMAIN)."""

    def __init__(self, answers):
        self.answers = answers
        self.asked = []

    def lookupRecords(self, name, rdtype, dnssec=False):
        assert rdtype == "TXT"
        self.asked.append(name)
        value = self.answers.get(name)
        if value is None:
            return fail(DNSError("Host or domain name not found", temporary=False, notFound=True))
        if isinstance(value, Exception):
            return fail(value)
        return succeed(value)


class Fetcher:
    """The policy files by domain: text, an exception, or a Deferred fired later."""

    def __init__(self, files):
        self.files = files
        self.calls = []

    def __call__(self, domain):
        self.calls.append(domain)
        value = self.files[domain]
        if isinstance(value, Deferred):
            return value
        if isinstance(value, Exception):
            return fail(value)
        return succeed(value)


def makeSts(txt="v=STSv1; id=one", policy=POLICY, cachePath=None, **params):
    settings = clientSettings(**params)
    clock = Clock()
    clock.advance(1000)
    dns = FakeDNS({} if txt is None else {"_mta-sts.example.com": [Txt(txt.encode())]})
    fetcher = Fetcher({"example.com": policy})
    recorded = []
    maillog = Maillog()
    sts = Sts(settings, dns, clock, maillog, fetch=fetcher, cachePath=cachePath,
              record=lambda site, host, result: recorded.append((site, host, result)))
    sts.logged = maillog.lines
    return sts, dns, fetcher, clock, recorded


class Maillog:
    def __init__(self):
        self.lines = []

    def emit(self, text, queueId=None, level=None):
        self.lines.append(text)


def test_no_txt_record_no_policy_and_no_fetch():
    sts, dns, fetcher, _, _ = makeSts(txt=None)
    assert run(sts.policyFor("example.com")) is None
    assert dns.asked == ["_mta-sts.example.com"] and fetcher.calls == []


def test_policy_is_fetched_once_and_used_from_the_cache_while_the_id_is_the_same():
    sts, _, fetcher, _, _ = makeSts()
    first = run(sts.policyFor("example.com"))
    assert first.mode == "enforce" and first.id == "one" and first.fetched == 1000
    assert run(sts.policyFor("example.com")) is first
    assert fetcher.calls == ["example.com"]
    assert sts.logged == ["example.com: MTA-STS policy fetched: id=one mode=enforce max_age=86400 "
                          "mx=mx1.example.com,*.backup.example.net"]


def test_a_new_id_fetches_the_policy_again():
    sts, dns, fetcher, _, _ = makeSts()
    run(sts.policyFor("example.com"))
    dns.answers["_mta-sts.example.com"] = [Txt(b"v=STSv1; id=two")]
    fetcher.files["example.com"] = POLICY.replace("enforce", "testing")
    policy = run(sts.policyFor("example.com"))
    assert (policy.id, policy.mode) == ("two", "testing") and len(fetcher.calls) == 2


def test_an_expired_policy_is_fetched_again_and_not_used_without_the_txt_record():
    sts, dns, fetcher, clock, _ = makeSts()
    run(sts.policyFor("example.com"))
    clock.advance(86400)
    assert run(sts.policyFor("example.com")).fetched == 86400 + 1000
    assert len(fetcher.calls) == 2
    del dns.answers["_mta-sts.example.com"]
    assert run(sts.policyFor("example.com")) is not None  # cached and unexpired: still in force
    clock.advance(86401)
    assert run(sts.policyFor("example.com")) is None


def test_a_failed_fetch_keeps_the_cached_policy_reports_and_waits_before_trying_again():
    sts, dns, fetcher, clock, recorded = makeSts()
    cached = run(sts.policyFor("example.com"))
    dns.answers["_mta-sts.example.com"] = [Txt(b"v=STSv1; id=two")]
    fetcher.files["example.com"] = StsError("policy fetch from mta-sts.example.com failed: Connection refused")
    assert run(sts.policyFor("example.com")) is cached
    assert sts.logged[-1] == ("warning: example.com: MTA-STS policy id=two: policy fetch from mta-sts.example.com "
                              "failed: Connection refused; using the cached policy id=one mode=enforce "
                              "max_age=86400 mx=mx1.example.com,*.backup.example.net")
    [(site, host, result)] = recorded
    assert site.domain == "example.com" and host is None
    assert (result.success, result.failureType, result.policyType) == (False, "sts-policy-fetch-error", "sts")
    assert run(sts.policyFor("example.com")) is cached and len(fetcher.calls) == 2  # smtp_mta_sts_retry_time
    clock.advance(300)
    run(sts.policyFor("example.com"))
    assert len(fetcher.calls) == 3


def test_a_failed_fetch_without_a_cached_policy_is_no_policy():
    sts, _, fetcher, _, recorded = makeSts(policy=StsError("certificate of mta-sts.example.com not valid",
                                                           "sts-webpki-invalid"))
    assert run(sts.policyFor("example.com")) is None
    assert sts.logged[-1].endswith("not valid; no policy used")
    assert recorded[0][2].failureType == "sts-webpki-invalid"


def test_an_invalid_policy_file_is_reported_as_invalid():
    sts, _, _, _, recorded = makeSts(policy="version: STSv1\nmode: enforce\n")
    assert run(sts.policyFor("example.com")) is None
    assert recorded[0][2].failureType == "sts-policy-invalid"


def test_an_unexpected_fetch_error_is_a_fetch_error_not_a_traceback():
    sts, _, _, _, recorded = makeSts(policy=RuntimeError("boom"))
    assert run(sts.policyFor("example.com")) is None
    assert recorded[0][2].failureType == "sts-policy-fetch-error" and "boom" in recorded[0][2].detail


def test_a_temporary_txt_failure_uses_the_cached_policy():
    sts, dns, _, _, _ = makeSts()
    cached = run(sts.policyFor("example.com"))
    dns.answers["_mta-sts.example.com"] = DNSError("Name service error", temporary=True)
    assert run(sts.policyFor("example.com")) is cached
    assert "MTA-STS TXT lookup failed" in sts.logged[-1]


def test_deliveries_at_the_same_time_share_one_fetch():
    sts, _, fetcher, _, _ = makeSts()
    later = Deferred()
    fetcher.files["example.com"] = later
    results = []
    for _ in range(3):
        Deferred.fromCoroutine(sts.policyFor("example.com")).addCallback(results.append)
    assert results == [] and fetcher.calls == ["example.com"]
    later.callback(POLICY)
    assert len(results) == 3 and results[0] is results[1] is results[2] and results[0].mode == "enforce"


def test_policies_survive_a_restart_in_the_cache_file(tmp_path):
    path = str(tmp_path / "mta-sts.sqlite")
    sts, _, _, _, _ = makeSts(cachePath=path)
    first = run(sts.policyFor("example.com"))
    sts.close()
    again, _, fetcher, _, _ = makeSts(cachePath=path)
    assert run(again.policyFor("example.com")) == first
    assert fetcher.calls == []


def test_a_damaged_cache_file_leaves_the_memory_cache(tmp_path):
    path = tmp_path / "mta-sts.sqlite"
    path.write_bytes(b"this is not SQLite" * 100)
    sts, _, fetcher, _, _ = makeSts(cachePath=str(path))
    assert run(sts.policyFor("example.com")).mode == "enforce"
    assert run(sts.policyFor("example.com")).mode == "enforce" and len(fetcher.calls) == 1
    assert any("policies are kept in memory only" in line for line in sts.logged)


# -- the modes and the hooks ---------------------------------------------------------------------------


def site(sts, level="may"):
    tls = attrs.evolve(sts.settings.tls, level=level)
    return SitePolicy(tls=tls, domain="example.com")


def test_enforce_turns_may_into_verified_tls_for_the_mx_name():
    sts, _, _, _, _ = makeSts()
    s = run(sts.apply(site(sts)))
    assert s.source == "mta-sts" and s.sts.mode == "enforce"
    assert (s.tls.level, s.tls.verifyCertMatch, s.tls.serverName) == ("verify", ("hostname",), "hostname")
    assert s.tls.mustMatch and s.tls.required


@pytest.mark.parametrize("level", ["secure", "fingerprint", "dane", "dane-only"])
def test_enforce_keeps_a_stronger_or_dane_level(level):
    sts, _, _, _, _ = makeSts()
    s = run(sts.apply(site(sts, level)))
    assert s.tls.level == level and s.sts is not None


def test_level_none_means_no_mta_sts_lookup():
    sts, dns, _, _, _ = makeSts()
    s = site(sts, "none")
    assert run(sts.apply(s)) is s and dns.asked == []


def test_testing_mode_attaches_the_policy_and_keeps_the_level():
    sts, _, _, _, _ = makeSts(policy=POLICY.replace("enforce", "testing"))
    s = run(sts.apply(site(sts)))
    assert s.tls.level == "may" and s.sts.mode == "testing" and s.source == "transport"


def test_mode_none_is_no_policy():
    sts, _, _, _, _ = makeSts(policy="version: STSv1\nmode: none\nmax_age: 86400\n")
    s = site(sts)
    assert run(sts.apply(s)) is s


def test_enforce_skips_an_mx_that_matches_no_pattern_and_reports_it():
    sts, _, _, _, recorded = makeSts()
    s = run(sts.apply(site(sts)))
    assert sts.hostAllowed(s, RemoteHost("mx1.example.com", "192.0.2.1")) is None
    assert sts.hostAllowed(s, RemoteHost("a.backup.example.net", "192.0.2.2")) is None
    other = RemoteHost("evil.example.org", "192.0.2.3")
    assert sts.hostAllowed(s, other) == "MX host evil.example.org does not match the MTA-STS policy of example.com"
    assert recorded[-1][1] is other and recorded[-1][2].failureType == "validation-failure"


def test_testing_mode_logs_an_mx_mismatch_and_uses_the_host():
    sts, _, _, _, recorded = makeSts(policy=POLICY.replace("enforce", "testing"))
    s = run(sts.apply(site(sts)))
    assert sts.hostAllowed(s, RemoteHost("evil.example.org", "192.0.2.3")) is None
    assert "(mode testing: not enforced)" in sts.logged[-1] and len(recorded) == 1


class Connection:
    def get_peer_certificate(self):
        return None


def test_testing_mode_reports_an_untrusted_certificate_without_failing():
    sts, _, _, _, _ = makeSts(policy=POLICY.replace("enforce", "testing"))
    s = run(sts.apply(site(sts)))
    verdict = sts.judge(s, TlsVerdict("Untrusted", False, False), Connection(), RemoteHost("mx1.example.com", "192.0.2.1"))
    assert verdict.failure is None and verdict.report == ("certificate-not-trusted", "Server certificate not trusted")


def test_testing_mode_reports_a_certificate_for_another_name(monkeypatch):
    import mta.delivery.mtasts as mtasts

    monkeypatch.setattr(mtasts, "_certificateMatches", lambda connection, name: name == "other.example.com")
    sts, _, _, _, _ = makeSts(policy=POLICY.replace("enforce", "testing"))
    s = run(sts.apply(site(sts)))
    host = RemoteHost("mx1.example.com", "192.0.2.1")
    verdict = sts.judge(s, TlsVerdict("Trusted", True, False), Connection(), host)
    assert verdict.report[0] == "certificate-host-mismatch"
    monkeypatch.setattr(mtasts, "_certificateMatches", lambda connection, name: True)
    assert sts.judge(s, TlsVerdict("Trusted", True, False), Connection(), host).report is None


def test_enforce_leaves_the_verdict_to_the_verify_level():
    sts, _, _, _, _ = makeSts()
    s = run(sts.apply(site(sts)))
    verdict = TlsVerdict("Trusted", True, False, "Server certificate not verified")
    assert sts.judge(s, verdict, Connection(), RemoteHost("mx1.example.com", "192.0.2.1")) is verdict


# -- through TlsPolicy ------------------------------------------------------------------------------------


def tlsPolicy(sts, **params):
    policy = TlsPolicy(clientSettings(**params), None, Clock(), None)
    policy.sts = sts
    return policy


def test_tls_policy_asks_mta_sts_for_mx_destinations_only():
    sts, dns, _, _, _ = makeSts()
    policy = tlsPolicy(sts)
    s = run(policy.forDestination(parseNexthop("example.com"), "example.com"))
    assert s.source == "mta-sts" and s.tls.level == "verify"
    relay = run(policy.forDestination(parseNexthop("[example.com]"), "[example.com]"))
    assert relay.sts is None and relay.tls.level == "may"
    assert dns.asked == ["_mta-sts.example.com"]


def test_tls_policy_under_dane_without_tlsa_falls_back_to_the_mta_sts_policy():
    sts, _, _, _, _ = makeSts()
    policy = tlsPolicy(sts, smtp_tls_security_level="dane", smtp_dns_support_level="dnssec")

    class NoTlsa:
        async def forHost(self, site, host):
            return attrs.evolve(site, tls=attrs.evolve(site.tls, level="may"), tlsa=())

    policy.dane = NoTlsa()
    s = run(policy.forDestination(parseNexthop("example.com"), "example.com"))
    assert s.tls.level == "dane" and s.sts.mode == "enforce"
    host = run(policy.forHost(s, RemoteHost("mx1.example.com", "192.0.2.1")))
    assert host.tls.level == "verify" and host.source == "mta-sts"


def test_sts_is_made_by_the_smtp_transport_only_when_enabled():
    from mta.delivery.smtp import _stsCachePath

    settings = clientSettings()
    assert settings.mtaStsEnable is True and settings.mtaStsFetchTimeout == 10 and settings.mtaStsRetryTime == 300

    class Store:
        directory = "/var/spool/mta"

    class Context:
        store = Store()

    assert _stsCachePath(settings, Context()) == "/var/spool/mta/mta-sts.sqlite"
    assert _stsCachePath(clientSettings(smtp_mta_sts_cache_file="/tmp/x.sqlite"), Context()) == "/tmp/x.sqlite"
    assert clientSettings(lmtp=True).mtaStsEnable is False


def test_a_bad_mta_sts_ca_file_is_a_load_error(tmp_path):
    from mta.config.errors import ConfigError

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError, match="smtp_mta_sts_CAfile"):
        clientSettings(smtp_mta_sts_CAfile=str(bad))
