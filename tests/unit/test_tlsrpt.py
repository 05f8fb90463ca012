"""mta.delivery.tlsrpt: TLS-RPT (RFC 8460) recording, the SQLite store, the JSON report, the rua record, delivery."""

import calendar
import email
import email.policy
import gzip
import json

import attrs
import pytest
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from mta.config import ConfigError, load
from mta.delivery import tlsrpt
from mta.delivery.dns import DNSError
from mta.delivery.smtpclient import RemoteHost
from mta.delivery.tlspolicy import SitePolicy, TlsResult
from mta.delivery.tlsrpt import RecordError, TlsReporter, compress, parseRecords, reportFilename
from tests.synchronous import run

DAY = 86400
T0 = calendar.timegm((2026, 12, 1, 10, 0, 0))  # 2026-12-01T10:00:00Z
START = calendar.timegm((2026, 12, 1, 0, 0, 0))
MX1 = RemoteHost("mx1.example.com", "192.0.2.1", 25)
MX2 = RemoteHost("mx2.example.com", "192.0.2.2", 25)


def settingsFor(tmp_path, extra=""):
    text = (f"[main]\nqueue_directory = {tmp_path}\nmyhostname = mta.example.org\nmydomain = example.org\n"
            f"smtp_tlsrpt_enable = yes\n{extra}")
    return load(text=text).settings.tlsrpt


class Log:
    def __init__(self):
        self.lines = []

    def emit(self, text, queue_id=None, level=None):
        self.lines.append(text)

    def warning(self, text, queue_id=None):
        self.lines.append("warning: " + text)

    def text(self):
        return "\n".join(self.lines)


class Txt:
    def __init__(self, *strings):
        self.strings = tuple(s.encode() for s in strings)


class Resolver:
    def __init__(self, records=None):
        self.records = records or {}
        self.asked = []

    def lookupRecords(self, name, rdtype):
        self.asked.append((name, rdtype))
        value = self.records.get(name)
        if value is None:
            return fail(DNSError("Host not found", temporary=False, notFound=True))
        if isinstance(value, Exception):
            return fail(value)
        return succeed(value)


class Cleanup:
    def __init__(self):
        self.messages = []

    def submit(self, origin, sender, recipients, content, *, body="7BIT", arrival=None, **kw):
        self.messages.append((origin, sender, [r.address for r in recipients], content, body))
        return succeed(f"QID{len(self.messages)}")


class Response:
    def __init__(self, code):
        self.code = code

    def deliverBody(self, protocol):
        protocol.dataReceived(b"thanks")
        protocol.connectionLost(None)


class Agent:
    def __init__(self, codes=(200,)):
        self.codes = list(codes)
        self.posts = []

    def request(self, method, url, headers, producer):
        self.posts.append((method, url, headers, producer._inputFile.getvalue()))
        code = self.codes.pop(0) if self.codes else 200
        return succeed(Response(code))


@attrs.frozen
class Sts:
    domain: str = "example.com"
    id: str = "20261201"
    mode: str = "enforce"
    mx: tuple = ("mx1.example.com", "*.example.net")
    maxAge: int = 604800
    text: str = "version: STSv1\r\nmode: enforce\r\n\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"


@attrs.frozen
class Envelope:
    sender: str


@attrs.frozen
class Request:
    envelope: Envelope


RUA = "v=TLSRPTv1; rua=mailto:tlsrpt@example.com,https://reports.example.com/v1/tlsrpt"


@pytest.fixture
def world(tmp_path):
    clock = Clock()
    clock.advance(T0)
    maillog = Log()
    resolver = Resolver({"_smtp._tls.example.com": [Txt(RUA)]})
    cleanup = Cleanup()
    agent = Agent()
    reporter = TlsReporter(settingsFor(tmp_path), clock, cleanup, resolver, maillog, agent=agent)
    return attrs.make_class("World", ["clock", "log", "resolver", "cleanup", "agent", "reporter", "path"])(
        clock, maillog, resolver, cleanup, agent, reporter, tmp_path)


def site(domain="example.com", **kw):
    return SitePolicy(tls=None, domain=domain, **kw)


def reportOf(world, domain="example.com"):
    """Run the reports for the day of T0 and give the JSON POSTed for C{domain}."""
    run(world.reporter.reportDue(START + DAY + 1))
    for _, url, headers, body in world.agent.posts:
        report = json.loads(gzip.decompress(body))
        if report["policies"][0]["policy"]["policy-domain"] == domain:
            return report
    raise AssertionError(f"no report for {domain}: {world.log.text()}")


# -- recording and the report's content ----------------------------------------------------------


def test_report_fields_as_rfc_8460_names_them(world):
    r = world.reporter
    for _ in range(3):
        r.record(site(), MX1, TlsResult(True), sendingIp="198.51.100.7")
    r.record(site(), MX1, TlsResult(False, "certificate-not-trusted", "Server certificate not trusted"),
             sendingIp="198.51.100.7")
    r.record(site(), MX1, TlsResult(False, "certificate-not-trusted", "Server certificate not trusted"),
             sendingIp="198.51.100.7")
    r.record(site(), MX2, TlsResult(False, "starttls-not-supported", "STARTTLS not offered"), sendingIp="198.51.100.7")
    report = reportOf(world)
    assert set(report) == {"organization-name", "date-range", "contact-info", "report-id", "policies"}
    assert report["organization-name"] == "mta.example.org"
    assert report["contact-info"] == "postmaster@example.org"
    assert report["date-range"] == {"start-datetime": "2026-12-01T00:00:00Z", "end-datetime": "2026-12-01T23:59:59Z"}
    assert report["report-id"] == "2026-12-01T00:00:00Z_example.com@mta.example.org"
    [entry] = report["policies"]
    assert entry["policy"] == {"policy-type": "no-policy-found", "policy-domain": "example.com"}
    assert entry["summary"] == {"total-successful-session-count": 3, "total-failure-session-count": 3}
    assert entry["failure-details"] == [
        {"result-type": "certificate-not-trusted", "sending-mta-ip": "198.51.100.7",
         "receiving-mx-hostname": "mx1.example.com", "receiving-ip": "192.0.2.1", "failed-session-count": 2,
         "failure-reason-code": "Server certificate not trusted"},
        {"result-type": "starttls-not-supported", "sending-mta-ip": "198.51.100.7",
         "receiving-mx-hostname": "mx2.example.com", "receiving-ip": "192.0.2.2", "failed-session-count": 1,
         "failure-reason-code": "STARTTLS not offered"},
    ]


def test_sts_and_tlsa_policies_are_reported_apart(world):
    r = world.reporter
    r.record(site(sts=Sts()), MX1, TlsResult(True))
    r.record(site(tlsa=("3 1 1 aabb", "2 0 1 ccdd")), MX2, TlsResult(True))
    policies = {p["policy"]["policy-type"]: p for p in reportOf(world)["policies"]}
    assert policies["sts"]["policy"] == {
        "policy-type": "sts", "policy-domain": "example.com", "mx-host": ["mx1.example.com", "*.example.net"],
        "policy-string": ["version: STSv1", "mode: enforce", "mx: mx1.example.com", "mx: *.example.net",
                          "max_age: 604800"]}
    assert policies["sts"]["summary"]["total-successful-session-count"] == 1
    assert policies["tlsa"]["policy"] == {"policy-type": "tlsa", "policy-string": ["3 1 1 aabb", "2 0 1 ccdd"],
                                          "policy-domain": "example.com", "mx-host": ["mx2.example.com"]}
    assert policies["tlsa"]["summary"]["total-successful-session-count"] == 1


def test_a_policy_fetch_failure_has_the_results_type(world):
    world.reporter.record(site(), None, TlsResult(False, "sts-policy-fetch-error", "timeout", policyType="sts"))
    [entry] = reportOf(world)["policies"]
    assert entry["policy"] == {"policy-type": "sts", "policy-domain": "example.com"}
    assert entry["failure-details"] == [{"result-type": "sts-policy-fetch-error", "failed-session-count": 1,
                                         "failure-reason-code": "timeout"}]


def test_an_unknown_result_type_is_a_validation_failure(world):
    world.reporter.record(site(), MX1, TlsResult(False, "made-up\r\nX: y", "x"))
    [entry] = reportOf(world)["policies"]
    assert entry["failure-details"][0]["result-type"] == "validation-failure"


def test_nothing_is_recorded_when_disabled(tmp_path):
    clock = Clock()
    reporter = TlsReporter(load(text=f"[main]\nqueue_directory = {tmp_path}\n").settings.tlsrpt, clock)
    reporter.record(site(), MX1, TlsResult(True))
    assert reporter._memory == {}
    reporter.start()
    assert clock.getDelayedCalls() == []
    reporter.stop()
    assert not (tmp_path / "tlsrpt.sqlite").exists()


def test_reports_are_not_recorded_and_domains_are_lower_case(world):
    r = world.reporter
    assert r.ignores(Request(Envelope("NoReply-SMTP-TLS-Reporting@example.org")))
    assert not r.ignores(Request(Envelope("user@example.org")))
    assert not r.ignores(Request(Envelope("")))
    r.record(site("Example.COM."), MX1, TlsResult(True))
    assert reportOf(world)["policies"][0]["policy"]["policy-domain"] == "example.com"


# -- bounds --------------------------------------------------------------------------------------------


def test_failure_details_are_bounded(world, monkeypatch):
    monkeypatch.setattr(tlsrpt, "MAX_DETAILS", 2)
    r = world.reporter
    for i in range(5):
        r.record(site(), RemoteHost(f"mx{i}.example.com", f"192.0.2.{i}", 25), TlsResult(False, "validation-failure"))
    r.flush()
    for i in range(5, 8):  # and in the store, across flushes
        r.record(site(), RemoteHost(f"mx{i}.example.com", f"192.0.2.{i}", 25), TlsResult(False, "validation-failure"))
    [entry] = reportOf(world)["policies"]
    assert entry["summary"]["total-failure-session-count"] == 8
    assert len(entry["failure-details"]) == 2
    assert world.log.text().count("failure details for one policy") == 1


def test_policies_are_bounded(world, monkeypatch):
    monkeypatch.setattr(tlsrpt, "MAX_POLICIES", 3)
    world.resolver.records.update({f"_smtp._tls.d{i}.example": [Txt("v=TLSRPTv1;rua=https://r.example/")]
                                   for i in range(6)})
    for i in range(6):
        world.reporter.record(site(f"d{i}.example"), MX1, TlsResult(True))
    run(world.reporter.reportDue(START + DAY))
    assert len(world.agent.posts) == 3
    assert world.log.text().count("more than 3 policy domains") == 1


def test_oversized_reports_lose_details_first():
    details = [(("validation-failure", "", f"mx{i}.example", "192.0.2.1", "x" * 50 + str(i)), i + 1)
               for i in range(400)]
    report = tlsrpt.buildReport(organization="o", contact="c", start=START, end=START + DAY, domain="example.com",
                                hostname="h", policies=[(("no-policy-found", (), ()), 0, 400, details)])
    whole = compress(report, 10 ** 7)
    data = compress(report, len(whole) // 3)
    smaller = json.loads(gzip.decompress(data))
    kept = smaller["policies"][0]["failure-details"]
    assert 0 < len(kept) < 400
    assert kept[0]["failed-session-count"] == 400  # the most counted first
    assert smaller["policies"][0]["summary"]["total-failure-session-count"] == 400
    assert compress(report, 20) is None


# -- intervals, the store, start and stop -------------------------------------------------------------


def test_interval_boundaries_are_utc_days(world):
    r = world.reporter
    world.clock.advance(START + DAY - 1 - T0)  # 23:59:59
    r.record(site(), MX1, TlsResult(True))
    world.clock.advance(1)  # 00:00:00 the next day
    r.record(site(), MX1, TlsResult(True))
    r.record(site(), MX1, TlsResult(True))
    run(r.reportDue(START + DAY - 1))
    assert world.agent.posts == []
    run(r.reportDue(START + DAY))
    [(_, _, _, body)] = world.agent.posts
    report = json.loads(gzip.decompress(body))
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 1
    run(r.reportDue(START + 2 * DAY))
    report = json.loads(gzip.decompress(world.agent.posts[1][3]))
    assert report["date-range"]["start-datetime"] == "2026-12-02T00:00:00Z"
    assert report["policies"][0]["summary"]["total-successful-session-count"] == 2
    run(r.reportDue(START + 3 * DAY))
    assert len(world.agent.posts) == 2  # each interval once


def test_shorter_intervals_divide_the_day(tmp_path):
    clock = Clock()
    clock.advance(T0 + 7)
    reporter = TlsReporter(settingsFor(tmp_path, "smtp_tlsrpt_report_interval = 1h\n"), clock)
    assert reporter.interval(clock.seconds()) == (T0, T0 + 3600)
    for value in ("7s", "25h", "0s"):
        with pytest.raises(ConfigError, match="smtp_tlsrpt_report_interval"):
            settingsFor(tmp_path, f"smtp_tlsrpt_report_interval = {value}\n")


def test_counts_survive_a_new_reporter_on_the_same_store(world):
    r = world.reporter
    r.start()
    r.record(site(), MX1, TlsResult(True))
    r.record(site(), MX1, TlsResult(False, "validation-failure", "handshake failure"))
    world.clock.advance(60)  # the minute's flush
    assert r._memory == {}
    r.record(site(), MX1, TlsResult(True))
    r.stop()  # writes the rest
    assert world.clock.getDelayedCalls() == []
    # The daemon was down over midnight: the next one reports the past day at start.
    world.clock.advance(START + DAY + 3600 - world.clock.seconds())
    again = TlsReporter(r.settings, world.clock, world.cleanup, world.resolver, world.log, agent=world.agent)
    again.start()
    world.clock.advance(0)
    [(method, url, headers, body)] = world.agent.posts
    assert (method, url) == (b"POST", b"https://reports.example.com/v1/tlsrpt")
    assert headers.getRawHeaders(b"Content-Type") == [b"application/tlsrpt+gzip"]
    entry = json.loads(gzip.decompress(body))["policies"][0]
    assert entry["summary"] == {"total-successful-session-count": 2, "total-failure-session-count": 1}
    # The next run is scheduled after the end of the current day.
    [call] = [c for c in world.clock.getDelayedCalls() if c.func == again._reportTick]
    assert call.getTime() == START + 2 * DAY + tlsrpt.REPORT_DELAY
    again.stop()


def test_a_broken_store_keeps_the_counts_in_memory(world):
    (world.path / "tlsrpt.sqlite").write_bytes(b"this is not a database" * 100)
    world.reporter.record(site(), MX1, TlsResult(True))
    assert world.reporter.flush() is False
    assert "warning: cannot write" in world.log.text()
    assert len(world.reporter._memory) == 1
    (world.path / "tlsrpt.sqlite").unlink()
    assert world.reporter.flush() is True
    assert reportOf(world)["policies"][0]["summary"]["total-successful-session-count"] == 1


# -- the _smtp._tls record -----------------------------------------------------------------------------


def test_rua_parsing():
    assert parseRecords([RUA]) == [("mailto", "tlsrpt@example.com"), ("https", "https://reports.example.com/v1/tlsrpt")]
    assert parseRecords(["v=TLSRPTv1 ;rua=mailto:a@example.com?subject=x; ext=1;"]) == [("mailto", "a@example.com")]
    assert parseRecords(["v=spf1 -all", "v=TLSRPTv1;rua=https://x.example/;"]) == [("https", "https://x.example/")]
    assert parseRecords(["v=TLSRPTv1;rua=mailto:no-domain,ftp://x.example/,http://plain.example/,"
                         "https://ok.example/r"]) == [("https", "https://ok.example/r")]
    assert parseRecords(["v=TLSRPTv1; rua=mailto:a@example.com%2Cb@example.com"]) == [
        ("mailto", "a@example.com"), ("mailto", "b@example.com")]


@pytest.mark.parametrize("texts, why", [
    ([], "no TLSRPTv1 record"),
    (["v=spf1 -all"], "no TLSRPTv1 record"),
    (["v=TLSRPTv2; rua=mailto:a@example.com"], "no TLSRPTv1 record"),
    (["v=TLSRPTv1; rua=mailto:a@example.com", "v=TLSRPTv1; rua=mailto:b@example.com"], "2 TLSRPTv1 records"),
    (["v=TLSRPTv1;"], "no rua="),
    (["v=TLSRPTv1; rua=mailto:a@example.com; junk"], "bad field"),
    (["v=TLSRPTv1; rua=mailto:a@example.com; rua=mailto:b@example.com"], "more than one rua="),
    (["v=TLSRPTv1; rua=mailto:not an address,http://x.example/"], "no usable"),
    (["v=TLSRPTv1; rua=https://user:pw@x.example/"], "no usable"),
    (["v=TLSRPTv1; rua=mailto:" + "a" * 3000 + "@example.com"], "record too long"),
])
def test_bad_records(texts, why):
    with pytest.raises(RecordError, match=why):
        parseRecords(texts)


def test_no_record_drops_the_data_with_a_log_line(world):
    world.reporter.record(site("norecord.example"), MX1, TlsResult(True))
    world.resolver.records["_smtp._tls.bad.example"] = [Txt("v=TLSRPTv1; rua=gopher://x")]
    world.reporter.record(site("bad.example"), MX1, TlsResult(True))
    assert run(world.reporter.reportDue(START + DAY)) is False
    text = world.log.text()
    assert ("norecord.example: no TLSRPT policy (_smtp._tls.norecord.example: Host not found); report for "
            "2026-12-01T00:00:00Z dropped") in text
    assert "bad.example: no TLSRPT policy (_smtp._tls.bad.example: no usable mailto: or https: URI in rua=)" in text
    assert world.reporter._stored(START + 10 * DAY) == []


def test_a_temporary_dns_failure_keeps_the_data_for_a_while(world):
    world.resolver.records["_smtp._tls.example.com"] = DNSError("try again", temporary=True, detail="SERVFAIL")
    world.reporter.record(site(), MX1, TlsResult(True))
    assert run(world.reporter.reportDue(START + DAY)) is True
    assert "example.com: TXT lookup of _smtp._tls.example.com failed: SERVFAIL; trying again later" in world.log.text()
    world.resolver.records["_smtp._tls.example.com"] = [Txt(RUA)]
    assert run(world.reporter.reportDue(START + DAY + 3600)) is False
    assert len(world.agent.posts) == 1
    # Given up after KEEP_UNSENT.
    world.resolver.records["_smtp._tls.example.com"] = DNSError("try again", temporary=True)
    world.clock.advance(DAY)
    world.reporter.record(site(), MX1, TlsResult(True))
    run(world.reporter.reportDue(START + 2 * DAY))
    run(world.reporter.reportDue(START + 2 * DAY + tlsrpt.KEEP_UNSENT))
    assert "report for 2026-12-02T00:00:00Z dropped: no answer from DNS" in world.log.text()
    assert world.reporter._stored(START + 10 * DAY) == []


# -- delivery ----------------------------------------------------------------------------------------------


def test_the_mailto_report(world):
    world.reporter.record(site(), MX1, TlsResult(False, "validation-failure", "handshake failure: bad record mac"))
    run(world.reporter.reportDue(START + DAY + 60))
    [(origin, sender, recipients, content, body)] = world.cleanup.messages
    assert (sender, recipients, body) == ("noreply-smtp-tls-reporting@example.org", ["tlsrpt@example.com"], "7BIT")
    assert origin.kind == "internal" or origin.clientAddress == "127.0.0.1"
    assert b"\r\n" in content and b"\n" not in content.replace(b"\r\n", b"")
    message = email.message_from_bytes(content, policy=email.policy.default)
    rid = "2026-12-01T00:00:00Z_example.com@mta.example.org"
    assert message["Subject"] == f"Report Domain: example.com Submitter: mta.example.org Report-ID: <{rid}>"
    assert message["TLS-Report-Domain"] == "example.com"
    assert message["TLS-Report-Submitter"] == "mta.example.org"
    assert message["From"] == "noreply-smtp-tls-reporting@example.org"
    assert message["To"] == "tlsrpt@example.com"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "tlsrpt"
    text, attachment = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "2026-12-01T00:00:00Z" in text.get_content()
    assert attachment.get_content_type() == "application/tlsrpt+gzip"
    assert attachment.get_content_disposition() == "attachment"
    assert attachment.get_filename() == f"mta.example.org!example.com!{START}!{START + DAY}!20261201T000000Z.json.gz"
    report = json.loads(gzip.decompress(attachment.get_content()))
    assert report["report-id"] == rid
    assert report["policies"][0]["failure-details"][0]["failure-reason-code"] == "handshake failure: bad record mac"
    # The POST carries the same report.
    assert json.loads(gzip.decompress(world.agent.posts[0][3])) == report
    text = world.log.text()
    assert f"example.com: report {rid} queued as QID1 to mailto:tlsrpt@example.com" in text
    assert f"example.com: report {rid} sent to https://reports.example.com/v1/tlsrpt: HTTP 200" in text


def test_the_filename_has_no_path_or_separator():
    assert reportFilename("a!b/c", "example.com", 1.0, 2.0, "u") == "a_b_c!example.com!1!2!u.json.gz"


def test_https_failures_are_tried_again_a_few_times(world):
    world.agent.codes = [500, 503, 200]
    world.reporter.record(site(), MX1, TlsResult(True))
    run(world.reporter.reportDue(START + DAY))
    assert len(world.agent.posts) == 1 and len(world.reporter.pending) == 1
    assert "failed: HTTP 500; trying again in 300s" in world.log.text()
    world.clock.advance(300)
    assert len(world.agent.posts) == 2
    world.clock.advance(1800)
    assert len(world.agent.posts) == 3
    assert "sent to https://reports.example.com/v1/tlsrpt: HTTP 200" in world.log.text()
    assert world.reporter.pending == set()


def test_https_gives_up(world):
    world.agent.codes = [500] * 10
    world.reporter.record(site(), MX1, TlsResult(True))
    run(world.reporter.reportDue(START + DAY))
    for delay in tlsrpt.RETRY_DELAYS:
        world.clock.advance(delay)
    assert len(world.agent.posts) == 1 + len(tlsrpt.RETRY_DELAYS)
    assert "failed: HTTP 500; given up" in world.log.text()
    world.clock.advance(DAY)
    assert len(world.agent.posts) == 1 + len(tlsrpt.RETRY_DELAYS)


def test_dane_failure_types():
    assert tlsrpt.daneFailureType("no TLSA records found") == "dane-required"
    assert tlsrpt.daneFailureType("TLSA records unusable") == "tlsa-invalid"
    assert tlsrpt.daneFailureType("TLSA lookup error for mx.example.com:25") == "dnssec-invalid"
    assert tlsrpt.daneFailureType("non DNSSEC destination") is None


# -- the client's calls (mta.delivery.smtpstarttls) ----------------------------------------------------------


class Session:
    """Just enough of an SMTPClientSession for StartTLS._recordTls."""

    def __init__(self, reporter):
        from mta.delivery.tlspolicy import TlsPolicy

        self.tlsPolicy = TlsPolicy.__new__(TlsPolicy)
        self.tlsPolicy.reporter = reporter
        self.site = site()

        class Transport:
            def getHost(self):
                from twisted.internet.address import IPv4Address

                return IPv4Address("TCP", "127.0.0.9", 40000)

        self.transport = Transport()


def test_resumed_handshakes_and_reports_are_not_recorded(world):
    from mta.delivery.smtpstarttls import StartTLS

    class S(StartTLS, Session):
        pass

    session = S(world.reporter)
    tx = attrs.make_class("Tx", ["request", "host"])(Request(Envelope("user@example.org")), MX1)
    StartTLS._recordTls(session, tx, True)
    StartTLS._recordTls(session, tx, True, resumed=True)  # skipped (smtp_tlsrpt_skip_reused_handshakes = yes)
    report = attrs.make_class("Tx", ["request", "host"])(Request(Envelope(world.reporter.settings.sender)), MX1)
    StartTLS._recordTls(session, report, False, "validation-failure", "x")
    [counts] = world.reporter._memory.values()
    assert (counts.success, counts.failure) == (1, 0)
    StartTLS._recordTls(session, tx, False, "validation-failure", "x")
    [counts] = world.reporter._memory.values()
    assert list(counts.details) == [("validation-failure", "127.0.0.9", "mx1.example.com", "192.0.2.1", "x")]
    world.reporter.settings = attrs.evolve(world.reporter.settings, skipReused=False)
    StartTLS._recordTls(session, tx, True, resumed=True)
    assert counts.success == 2


def test_stop_gives_up_https_retries(world):
    world.agent.codes = [500] * 10
    world.reporter.record(site(), MX1, TlsResult(True))
    run(world.reporter.reportDue(START + DAY))
    assert len(world.reporter.pending) == 1
    world.reporter.stop()
    assert world.reporter.pending == set()
    assert "warning: 1 https: report deliveries in progress given up at stop" in world.log.lines
    world.clock.advance(DAY)
    assert len(world.agent.posts) == 1


def test_dane_policy_failures_are_recorded_by_the_transport(world):
    """mta.delivery.smtp records a host's DANE policy failure as its RFC 8460 type (policy type tlsa)."""
    from mta.delivery.mx import Host
    from mta.delivery.smtp import SMTPTransport
    from mta.delivery.tlspolicy import PolicyError, TlsPolicy

    transport = SMTPTransport.__new__(SMTPTransport)
    transport.tlsPolicy = TlsPolicy.__new__(TlsPolicy)
    transport.tlsPolicy.reporter = world.reporter
    host = Host("mx1.example.com", "192.0.2.1", 25, 10)
    request = Request(Envelope("user@example.org"))
    for text in ("no TLSA records found", "TLSA lookup error for mx1.example.com:25", "non DNSSEC destination"):
        transport._recordPolicyFailure(request, site(failure=PolicyError(text)), host)
    transport._recordPolicyFailure(Request(Envelope(world.reporter.settings.sender)),
                                   site(failure=PolicyError("no TLSA records found")), host)
    [entry] = reportOf(world)["policies"]
    assert entry["policy"] == {"policy-type": "tlsa", "policy-domain": "example.com", "mx-host": ["mx1.example.com"]}
    assert entry["summary"]["total-failure-session-count"] == 2
    assert sorted(d["result-type"] for d in entry["failure-details"]) == ["dane-required", "dnssec-invalid"]


# -- what a real client session records (in-memory TLS, mta.delivery.smtpstarttls) ----------------------------


class Recorder:
    skipReused = True

    def __init__(self):
        self.seen = []

    def record(self, site, host, result, sendingIp=None):
        self.seen.append((site, host, result, sendingIp))

    def ignores(self, request):
        return False


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from tests.tlssupport import Certificates

    return Certificates(tmp_path_factory.mktemp("certs"))


def recordingSession(certs, tlsa=(), **params):
    from mta.delivery.dane import Dane
    from mta.delivery.tlspolicy import TlsPolicy
    from tests.unit.test_smtpclient_tls import TLSSession

    s = TLSSession(certs, **params)
    policy = TlsPolicy(s.settings)
    policy.dane = Dane(None, s.settings)
    policy.reporter = Recorder()
    tls = s.settings.tls if not tlsa else attrs.evolve(s.settings.tls, level="dane")
    s.protocol.tlsPolicy = policy
    s.protocol.site = SitePolicy(tls=tls, domain="example.net", tlsa=tlsa)
    return s, policy.reporter


def test_sessions_record_success_and_certificate_failures(certs):
    s, reporter = recordingSession(certs, smtp_tls_security_level="may")
    s.greet()
    s.starttls()
    s.finish()
    [(recordedSite, host, result, _)] = reporter.seen
    assert result == TlsResult(True) and recordedSite.domain == "example.net" and host.name == "mx.test"
    s, reporter = recordingSession(certs, smtp_tls_security_level="verify")
    s.greet()
    s.starttls()
    assert [r.failureType for _, _, r, _ in reporter.seen] == ["certificate-not-trusted"]
    s, reporter = recordingSession(certs, chain="other-chain.pem", smtp_tls_security_level="verify",
                                   smtp_tls_CAfile=certs["ca.pem"])
    s.greet()
    s.starttls()
    assert [r.failureType for _, _, r, _ in reporter.seen] == ["certificate-host-mismatch"]


def test_a_dane_chain_that_matches_no_tlsa_record_is_tlsa_invalid(certs):
    from mta.delivery.dane import Tlsa

    s, reporter = recordingSession(certs, tlsa=(Tlsa(3, 1, 1, b"\x00" * 32),), smtp_tls_security_level="may")
    s.greet()
    s.starttls()
    [(_, _, result, _)] = reporter.seen
    assert (result.success, result.failureType, result.detail) == (False, "tlsa-invalid",
                                                                   "Server certificate not verified")


def test_a_failed_handshake_is_a_validation_failure(certs):
    s, reporter = recordingSession(certs, smtp_tls_security_level="may")
    s.greet()
    assert s.server.read() == "STARTTLS\r\n"
    s.server.send("220 Ready\r\n")
    s.transport.deliver(b"this is not a TLS server hello\r\n" * 4)
    s.transport.tlsClock.advance(0)
    [(_, _, result, sendingIp)] = reporter.seen
    assert result.failureType == "validation-failure" and result.detail.startswith("handshake failure")
    assert sendingIp == s.transport.getHost().host
