"""mta.delivery.tlsrpt - TLS-RPT (RFC 8460): count the SMTP client's TLS sessions per policy domain, send daily reports.

NAME
    TlsReporter(settings, clock, cleanup=None, resolver=None, maillog=None,
                trustRoot=None, agent=None)
        .record(site, host, result, sendingIp=None)   one TLS attempt (cheap)
        .ignores(request)       mail from smtp_tlsrpt_sender: not recorded
        .start() / .stop()      timers; stop() writes what is in memory
        .use(generation)        a reload: the new settings, cleanup, DNS
        .flush()                memory -> the SQLite store
        .reportDue(now)         report every finished interval (async)
    policyOf(site, host, result), daneFailureType(text)
    (from mta.delivery.tlsrptreport: parseRecords(texts), the _smtp._tls
    TXT answer -> rua URIs; buildReport(...), compress(...),
    reportMessage(...), reportFilename(...))

DESCRIPTION
    Recording.  mta.delivery.smtpstarttls reports every TLS attempt through
    mta.delivery.tlspolicy's TlsPolicy.record() (the transport sets
    TlsPolicy.reporter to the daemon's one TlsReporter): success,
    starttls-not-supported (TLS required and not offered or refused),
    validation-failure (a failed handshake), certificate-not-trusted,
    certificate-host-mismatch, tlsa-invalid (a DANE chain that matches no
    TLSA record), MTA-STS testing-mode failures, and from mta.delivery.smtp
    the DANE policy failures of a host: dane-required (dane-only, no TLSA
    records), tlsa-invalid (no usable record), dnssec-invalid (the TLSA
    lookup failed).  Nothing is recorded for a cached connection used
    again nor, with smtp_tlsrpt_skip_reused_handshakes = yes (Postfix's
    default), for a handshake that resumed a TLS session: no new
    information; with no, both count as successful sessions.  Mail from
    smtp_tlsrpt_sender (the reports themselves) is not recorded, so
    reports never beget reports.

    record() counts in memory, per (interval, policy domain, policy type,
    policy-string, mx-host): successes, failures, and failures by
    (result-type, sending-mta-ip, receiving-mx-hostname, receiving-ip,
    failure-reason-code).  The policy type is the result's, else "sts"
    (site.sts: policy-string the policy file's non-empty lines, mx-host its
    mx patterns), "tlsa" (site.tlsa: the records, mx-host the MX host) or
    "no-policy-found".  Every minute and at stop the counts are added to
    the SQLite store (smtp_tlsrpt_store, one transaction).  At most
    MAX_POLICIES policy rows per interval and MAX_DETAILS failure details
    per policy are kept: beyond, a new policy is not counted, a failure
    counts in the summary without a detail, and one warning says so.

    Reporting.  Intervals are smtp_tlsrpt_report_interval long (1d: the UTC
    day, 00:00 to 24:00, as RFC 8460 4.1 wants) and aligned on UTC
    midnight.  Shortly after an interval ends (and at start, for
    intervals that ended while the daemon was down) every policy domain
    with data gets one report: the TXT record _smtp._tls.DOMAIN is looked
    up; exactly one record must start "v=TLSRPTv1;" (RFC 8460 3) and have
    rua= with mailto: or https: URIs, else the data is dropped with one
    log line.  A DNS lookup that fails temporarily keeps the data, tried
    again an hour later, for up to KEEP_UNSENT after the interval.  The
    report is RFC 8460 4's JSON, gzipped; one over
    smtp_tlsrpt_max_report_size loses failure details (the least counted
    first) until it fits.

      mailto:  one message to all mailto: addresses, queued through the
               generation's cleanup from smtp_tlsrpt_sender: Subject
               "Report Domain: D Submitter: ORG Report-ID: <ID>",
               TLS-Report-Domain, TLS-Report-Submitter, multipart/report;
               report-type="tlsrpt" with a text/plain part and the
               application/tlsrpt+gzip attachment
               "ORG!D!START!END!UNIQUE.json.gz" (RFC 8460 5.3)
      https:   a POST of the gzipped JSON as application/tlsrpt+gzip
               (RFC 8460 5.4) with Twisted's Agent, certificates checked
               against the system trust store, smtp_tlsrpt_http_timeout
               for the whole exchange; a 2xx answer is delivered, anything
               else is tried again after 5 min, 30 min and 2 h, then given up

    Each report sent, queued, failed or dropped is one mail-log line under
    the program tlsrpt ("tlsrpt: example.com: report 2026-12-01T00:00:00Z_
    example.com@mx.example.org queued as QUEUEID to mailto:...").

SECURITY
    The TXT record, the https: server's answer and the MX host names are
    untrusted: a record is parsed strictly and bounded (MAX_RECORD octets,
    MAX_RUA URIs, each URI MAX_URI octets, addresses checked), only https:
    URLs are posted to, an answer's body is read up to MAX_ANSWER octets
    and thrown away, every text that reaches a header is printable ASCII
    and cut.  The store is ours (the queue directory); a damaged one is a
    warning (data kept in memory, bounded), never a traceback per session.

CONFIGURATION
    TlsRptSettings (mta.config.settings.tlsrpt): smtp_tlsrpt_enable (no),
    smtp_tlsrpt_skip_reused_handshakes (yes), smtp_tlsrpt_organization_name
    ($myhostname), smtp_tlsrpt_contact_info (postmaster@$mydomain),
    smtp_tlsrpt_sender (noreply-smtp-tls-reporting@$mydomain),
    smtp_tlsrpt_report_interval (1d), smtp_tlsrpt_store
    ($queue_directory/tlsrpt.sqlite), smtp_tlsrpt_http_timeout (30s),
    smtp_tlsrpt_max_report_size (1m).

DEVIATIONS
    Postfix 3.10 hands each event to libtlsrpt and the external
    tlsrpt-reporter, which sends the reports; mta does it in the daemon
    (no smtp_tlsrpt_socket_name).  Report mail is not DKIM-signed (RFC
    8460 5.3 requires a signature; sign it on the way out, e.g. with a
    milter, where that matters).  The detail text of a failure goes into
    failure-reason-code (additional-information is for a URI; none is
    sent); receiving-mx-helo is not sent.  Deliveries of the reports are
    not recorded (their own sender).  What is in memory at a crash (at
    most one minute of sessions) and https: retries in progress are lost.
"""

import io
import json
import os
import sqlite3

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from mta.delivery.tlsrptreport import (RecordError, buildReport, clean, compress, isoTime, parseRecords,
                                       reportFilename, reportId, reportMessage)

__all__ = ["RecordError", "TlsReporter", "buildReport", "compress", "daneFailureType", "parseRecords", "policyOf",
           "reportFilename", "reportId", "reportMessage"]

log = Logger()

FLUSH_INTERVAL = 60  # seconds between writes of the in-memory counts
MAX_POLICIES = 10000  # policy rows per interval (memory and store)
MAX_DETAILS = 100  # failure-detail rows per policy row
MAX_POLICY_STRINGS = 100  # policy-string entries kept (lines of an MTA-STS policy, TLSA records)
MAX_ANSWER = 65536  # octets read (and dropped) of an https: answer
RETRY_DELAYS = (300, 1800, 7200)  # https: tries after the first
DNS_RETRY = 3600  # a temporary DNS failure: the next try
KEEP_UNSENT = 2 * 86400  # data whose report cannot be sent (DNS trouble) is dropped after this
REPORT_DELAY = 60  # seconds after an interval's end before it is reported (at most a tenth of the interval)

MEDIA_TYPE = "application/tlsrpt+gzip"
RESULT_TYPES = frozenset({
    "starttls-not-supported", "certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
    "validation-failure", "tlsa-invalid", "dnssec-invalid", "dane-required", "sts-policy-fetch-error",
    "sts-policy-invalid", "sts-webpki-invalid",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS policy (
    start INTEGER, end INTEGER, domain TEXT, type TEXT, strings TEXT, mx TEXT,
    success INTEGER NOT NULL, failure INTEGER NOT NULL,
    PRIMARY KEY (start, end, domain, type, strings, mx));
CREATE TABLE IF NOT EXISTS detail (
    start INTEGER, end INTEGER, domain TEXT, type TEXT, strings TEXT, mx TEXT,
    result TEXT, sending TEXT, mxname TEXT, ip TEXT, reason TEXT, count INTEGER NOT NULL,
    PRIMARY KEY (start, end, domain, type, strings, mx, result, sending, mxname, ip, reason));
"""
_POLICY_KEY = "start = ? AND end = ? AND domain = ? AND type = ? AND strings = ? AND mx = ?"


def daneFailureType(text):
    """The RFC 8460 result type of a DANE policy failure (mta.delivery.dane's texts), or None."""
    if text == "no TLSA records found":
        return "dane-required"
    if text == "TLSA records unusable":
        return "tlsa-invalid"
    if text.startswith("TLSA lookup error"):
        return "dnssec-invalid"
    return None


def policyOf(site, host, result):
    """(policy type, policy-string tuple, mx-host tuple) of one recorded attempt."""
    sts = getattr(site, "sts", None)
    tlsa = tuple(getattr(site, "tlsa", ()) or ())
    kind = result.policyType or ("sts" if sts is not None else "tlsa" if tlsa else "no-policy-found")
    if kind == "sts" and sts is not None:
        lines = [line.strip() for line in (getattr(sts, "text", "") or "").splitlines() if line.strip()]
        strings = tuple(clean(line) for line in lines[:MAX_POLICY_STRINGS])
        mx = tuple(clean(m) for m in tuple(getattr(sts, "mx", ()) or ())[:MAX_POLICY_STRINGS])
        return kind, strings, mx
    if kind == "tlsa":
        strings = tuple(clean(t) for t in tlsa[:MAX_POLICY_STRINGS])
        name = (getattr(host, "name", "") or "").lower().rstrip(".") if host is not None else ""
        return kind, strings, (clean(name),) if name else ()
    return kind, (), ()


# -- https: ------------------------------------------------------------------------------------------


def _reason(error):
    """A failed request's words: the TLS library's texts, or the error's."""
    reasons = getattr(error, "reasons", None)  # twisted.web's ResponseNeverReceived and friends
    errors = [r.value for r in reasons] if reasons else [error]
    texts = []
    for e in errors:
        args = getattr(e, "args", ())
        if args and isinstance(args[0], list):  # OpenSSL.SSL.Error: [(library, function, reason)]
            texts.extend(t[2] for t in args[0] if isinstance(t, tuple) and len(t) == 3)
        else:
            texts.append(str(e) or type(e).__name__)
    return clean("; ".join(texts) or type(error).__name__, 300)


class _Drain(Protocol):
    """Reads (and drops) an answer's body, at most MAX_ANSWER octets."""

    def __init__(self, done):
        self.done = done
        self.seen = 0

    def dataReceived(self, data):
        self.seen += len(data)
        if self.seen > MAX_ANSWER and self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(None)


class _Counts:
    __slots__ = ("success", "failure", "details")

    def __init__(self):
        self.success = 0
        self.failure = 0
        self.details = {}


# -- the reporter ------------------------------------------------------------------------------------


class TlsReporter:
    """
    The daemon's one TLS-RPT reporter (see the module docstring).

    @param settings: a TlsRptSettings.
    @param clock: IReactorTime (the reactor; for https: also the reactor's
        TCP and TLS, unless C{agent} is given).
    @param cleanup: an mta.cleanup.Cleanup for mailto: reports.
    @param resolver: an mta.delivery.dns.Resolver (lookupRecords(name, "TXT")).
    @param maillog: a MailLogger (program tlsrpt).
    @param trustRoot: for https: an IOpenSSLTrustRoot (tests: a test CA);
        None: the system trust store.
    @param agent: an IAgent to POST with (tests); None: twisted.web's Agent.
    """

    def __init__(self, settings, clock, cleanup=None, resolver=None, maillog=None, trustRoot=None, agent=None):
        self.settings = settings
        self.clock = clock
        self.cleanup = cleanup
        self.resolver = resolver
        self.maillog = maillog
        self.trustRoot = trustRoot
        self.agent = agent
        self._memory = {}
        self._db = None
        self._dbPath = None
        self._warned = set()
        self._flushCall = None
        self._reportCall = None
        self._running = None  # the Deferred of a reportDue() in progress
        self._started = False
        self.pending = set()  # Deferreds of https: deliveries in progress (with their retries)
        self._generation = None  # forGeneration()/use(): its resolver, made on first use

    # -- configuration -------------------------------------------------------------------------

    @classmethod
    def forGeneration(cls, generation, **kw):
        """A reporter for a generation's settings, cleanup, DNS client (made on first use) and mail log."""
        reporter = cls(generation.config.settings.tlsrpt, generation.clock, generation.cleanup, None,
                       generation.maillogFor("tlsrpt"), **kw)
        reporter._generation = generation
        return reporter

    def use(self, generation):
        """A reload: the new generation's settings, cleanup, DNS client and mail log; timers follow."""
        settings = generation.config.settings.tlsrpt
        if self._db is not None and settings.path != self._dbPath:
            self.flush()
            self._close()
        self.settings = settings
        self.cleanup = generation.cleanup
        self.resolver = None
        self._generation = generation
        self.maillog = generation.maillogFor("tlsrpt")
        if self._started:
            self._stopTimers()
            self._startTimers()

    def _dns(self):
        if self.resolver is None and self._generation is not None:
            return self._generation.resolver  # made on first use
        return self.resolver

    def ignores(self, request):
        """Is C{request} a report (mail from smtp_tlsrpt_sender)?  Its sessions are not recorded."""
        sender = getattr(getattr(request, "envelope", None), "sender", None) or ""
        return bool(sender) and sender.lower() == self.settings.sender.lower()

    @property
    def skipReused(self):
        return self.settings.skipReused

    @property
    def enabled(self):
        return self.settings.enable

    # -- recording ---------------------------------------------------------------------------------

    def interval(self, t):
        """(start, end) of the interval holding time C{t}."""
        length = int(self.settings.interval)
        start = int(t // length) * length
        return start, start + length

    def record(self, site, host, result, sendingIp=None):
        """One TLS attempt's outcome (mta.delivery.tlspolicy.TlsResult); counts in memory only."""
        if not self.settings.enable:
            return
        domain = clean((getattr(site, "domain", "") or "").lower().rstrip("."), 255)
        if not domain:
            return
        kind, strings, mx = policyOf(site, host, result)
        start, end = self.interval(self.clock.seconds())
        key = (start, end, domain, kind, strings, mx)
        counts = self._memory.get(key)
        if counts is None:
            if len(self._memory) >= MAX_POLICIES:
                self._warnOnce("policies", f"more than {MAX_POLICIES} policy domains and policies in one interval: "
                                           f"sessions to further ones are not counted")
                return
            counts = self._memory[key] = _Counts()
        if result.success:
            counts.success += 1
            return
        counts.failure += 1
        failureType = result.failureType if result.failureType in RESULT_TYPES else "validation-failure"
        detail = (failureType, clean(sendingIp or "", 64),
                  clean((getattr(host, "name", "") or "").lower().rstrip("."), 255) if host is not None else "",
                  clean(getattr(host, "address", "") or "", 64) if host is not None else "",
                  clean(result.detail or ""))
        if detail in counts.details:
            counts.details[detail] += 1
        elif len(counts.details) < MAX_DETAILS:
            counts.details[detail] = 1
        else:
            self._warnOnce("details", f"more than {MAX_DETAILS} failure details for one policy: further failures "
                                      f"are counted without details")

    def _warnOnce(self, what, text):
        if what not in self._warned:
            self._warned.add(what)
            self._warn(text)

    # -- the store -------------------------------------------------------------------------------------

    def _open(self):
        if self._db is None:
            path = self.settings.path
            directory = os.path.dirname(path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout = 2000")
                db.executescript(_SCHEMA)
            except Exception:
                db.close()
                raise
            self._db, self._dbPath = db, path
        return self._db

    def _close(self):
        if self._db is not None:
            self._db.close()
            self._db = self._dbPath = None

    def flush(self):
        """Add the in-memory counts to the store (one transaction); on an error they stay in memory."""
        if not self._memory:
            return True
        memory, self._memory = self._memory, {}
        try:
            db = self._open()
            db.execute("BEGIN IMMEDIATE")
            try:
                self._write(db, memory)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as e:
            self._warn(f"cannot write {self.settings.path}: {e}; the counts stay in memory")
            self._close()
            for key, counts in memory.items():  # merge back, newer first
                kept = self._memory.setdefault(key, counts)
                if kept is not counts:
                    kept.success += counts.success
                    kept.failure += counts.failure
                    for d, n in counts.details.items():
                        if d in kept.details or len(kept.details) < MAX_DETAILS:
                            kept.details[d] = kept.details.get(d, 0) + n
            return False
        return True

    def _write(self, db, memory):
        rows = {}
        for (start, end, domain, kind, strings, mx), counts in memory.items():
            key = (start, end, domain, kind, json.dumps(strings), json.dumps(mx))
            updated = db.execute(f"UPDATE policy SET success = success + ?, failure = failure + ? WHERE {_POLICY_KEY}",
                                 (counts.success, counts.failure, *key)).rowcount
            if not updated:
                if start not in rows:
                    rows[start] = db.execute("SELECT COUNT(*) FROM policy WHERE start = ?", (start,)).fetchone()[0]
                if rows[start] >= MAX_POLICIES:
                    self._warnOnce("policies", f"more than {MAX_POLICIES} policy domains and policies in one "
                                               f"interval: sessions to further ones are not counted")
                    continue
                rows[start] += 1
                db.execute("INSERT INTO policy VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*key, counts.success, counts.failure))
            if not counts.details:
                continue
            have = None
            for detail, count in counts.details.items():
                updated = db.execute(f"UPDATE detail SET count = count + ? WHERE {_POLICY_KEY} AND result = ? AND "
                                     f"sending = ? AND mxname = ? AND ip = ? AND reason = ?",
                                     (count, *key, *detail)).rowcount
                if updated:
                    continue
                if have is None:
                    have = db.execute(f"SELECT COUNT(*) FROM detail WHERE {_POLICY_KEY}", key).fetchone()[0]
                if have >= MAX_DETAILS:
                    self._warnOnce("details", f"more than {MAX_DETAILS} failure details for one policy: further "
                                              f"failures are counted without details")
                    continue
                have += 1
                db.execute("INSERT INTO detail VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (*key, *detail, count))

    def _stored(self, now):
        """[(start, end, domain)] with data whose interval has ended by C{now}."""
        if self._db is None and not os.path.exists(self.settings.path):
            return []
        db = self._open()
        return db.execute("SELECT DISTINCT start, end, domain FROM policy WHERE end <= ? ORDER BY start, domain",
                          (now,)).fetchall()

    def _policies(self, start, end, domain):
        db = self._open()
        result = []
        for kind, strings, mx, success, failure in db.execute(
                "SELECT type, strings, mx, success, failure FROM policy WHERE start = ? AND end = ? AND domain = ? "
                "ORDER BY type, strings, mx", (start, end, domain)).fetchall():
            details = [((r, s, n, i, why), c) for r, s, n, i, why, c in db.execute(
                f"SELECT result, sending, mxname, ip, reason, count FROM detail WHERE {_POLICY_KEY}",
                (start, end, domain, kind, strings, mx)).fetchall()]
            result.append(((kind, tuple(json.loads(strings)), tuple(json.loads(mx))), success, failure, details))
        return result

    def _forget(self, start, end, domain):
        db = self._open()
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM policy WHERE start = ? AND end = ? AND domain = ?", (start, end, domain))
        db.execute("DELETE FROM detail WHERE start = ? AND end = ? AND domain = ?", (start, end, domain))
        db.execute("COMMIT")

    # -- timers ------------------------------------------------------------------------------------------

    def start(self):
        """Start the flush timer and the reporting schedule (and report what a past run left)."""
        self._started = True
        self._startTimers()

    def _startTimers(self):
        if not self.settings.enable:
            return
        self._flushCall = self.clock.callLater(FLUSH_INTERVAL, self._flushTick)
        self._reportCall = self.clock.callLater(0, self._reportTick)

    def _stopTimers(self):
        for name in ("_flushCall", "_reportCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def stop(self):
        """Stop the timers and write what is in memory; a Deferred."""
        self._started = False
        self._stopTimers()
        if self.pending:
            self._warn(f"{len(self.pending)} https: report deliveries in progress given up at stop")
            for d in list(self.pending):
                d.cancel()
        self.flush()
        self._close()
        return succeed(None)

    def _flushTick(self):
        self._flushCall = self.clock.callLater(FLUSH_INTERVAL, self._flushTick)
        try:
            self.flush()
        except Exception:
            log.failure("TLS-RPT flush failed")

    def _reportTick(self):
        self._reportCall = None
        d = Deferred.fromCoroutine(self.reportDue())

        def failed(failure):
            log.failure("TLS-RPT reporting failed", failure)
            return None

        d.addErrback(failed)
        d.addCallback(self._scheduleNext)

    def _scheduleNext(self, retry):
        if not self._started or not self.settings.enable:
            return
        now = self.clock.seconds()
        start, end = self.interval(now)
        delay = min(REPORT_DELAY, self.settings.interval / 10)
        at = end + delay
        if retry:
            at = min(at, now + DNS_RETRY)
        if self._reportCall is not None and self._reportCall.active():
            self._reportCall.cancel()
        self._reportCall = self.clock.callLater(max(0, at - now), self._reportTick)

    # -- reporting ----------------------------------------------------------------------------------------

    async def reportDue(self, now=None):
        """
        Report every interval that has ended by C{now} (default: the clock)
        and has data; True when some data is kept for a later try (DNS).
        """
        if self._running is not None:
            return False
        self._running = True
        try:
            return await self._reportDue(self.clock.seconds() if now is None else now)
        finally:
            self._running = None

    async def _reportDue(self, now):
        self.flush()
        try:
            due = self._stored(now)
        except (sqlite3.Error, OSError) as e:
            self._warn(f"cannot read {self.settings.path}: {e}")
            self._close()
            return True
        retry = False
        for start, end, domain in due:
            try:
                outcome = await self._reportDomain(start, end, domain, now)
            except (sqlite3.Error, OSError) as e:
                self._warn(f"cannot read {self.settings.path}: {e}")
                self._close()
                return True
            if outcome == "later":
                if now >= end + KEEP_UNSENT:
                    self._emit(f"{domain}: report for {isoTime(start)} dropped: no answer from DNS since "
                               f"{isoTime(end)}")
                    self._forget(start, end, domain)
                else:
                    retry = True
            else:
                self._forget(start, end, domain)
        return retry

    async def _reportDomain(self, start, end, domain, now):
        """Report one domain's interval: "done" (sent, queued or dropped: forget it) or "later"."""
        from mta.delivery.dns import DNSError

        name = f"_smtp._tls.{domain}"
        resolver = self._dns()
        try:
            if resolver is None:
                raise DNSError("no DNS client", temporary=True)
            answer = await resolver.lookupRecords(name, "TXT")
            texts = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
            uris = parseRecords(texts)
        except DNSError as e:
            if e.temporary:
                self._emit(f"{domain}: TXT lookup of {name} failed: {clean(e.detail or e)}; trying again later")
                return "later"
            self._emit(f"{domain}: no TLSRPT policy ({name}: {clean(e)}); report for {isoTime(start)} dropped")
            return "done"
        except RecordError as e:
            self._emit(f"{domain}: no TLSRPT policy ({name}: {e}); report for {isoTime(start)} dropped")
            return "done"
        s = self.settings
        report = buildReport(organization=s.organizationName, contact=s.contactInfo, start=start, end=end,
                             domain=domain, hostname=s.hostname, policies=self._policies(start, end, domain))
        payload = compress(report, s.maxReportSize)
        rid = report["report-id"]
        if payload is None:
            self._emit(f"{domain}: report {rid} dropped: over smtp_tlsrpt_max_report_size ({s.maxReportSize})")
            return "done"
        mailto = [target for scheme, target in uris if scheme == "mailto"]
        if mailto:
            await self._mail(domain, report, payload, mailto, start, end, now)
        for scheme, url in uris:
            if scheme == "https":
                d = Deferred.fromCoroutine(self._post(domain, rid, url, payload))
                self.pending.add(d)
                d.addBoth(lambda r, d=d: self.pending.discard(d))
        return "done"

    async def _mail(self, domain, report, payload, recipients, start, end, now):
        from mta.cleanup import Origin
        from mta.model import Recipient

        s = self.settings
        rid = report["report-id"]
        targets = ", ".join(f"mailto:{r}" for r in recipients)
        if self.cleanup is None:
            self._emit(f"{domain}: report {rid} to {targets} not sent: no queue")
            return
        content = reportMessage(sender=s.sender, recipients=recipients, organization=s.organizationName,
                                domain=domain, report=report, payload=payload, start=start, end=end, now=now,
                                hostname=s.hostname)
        try:
            queueId = await self.cleanup.submit(Origin.internal(), s.sender, tuple(Recipient(r) for r in recipients),
                                                content, body="7BIT", arrival=now)
        except Exception as e:
            self._warn(f"{domain}: report {rid} to {targets} could not be queued: {clean(e)}")
            return
        self._emit(f"{domain}: report {rid} queued as {queueId} to {targets}")

    async def _post(self, domain, rid, url, payload):
        """POST the report to C{url}, trying again after RETRY_DELAYS; True when a 2xx answer came."""
        from twisted.internet.task import deferLater

        for attempt in range(len(RETRY_DELAYS) + 1):
            if attempt:
                await deferLater(self.clock, RETRY_DELAYS[attempt - 1], lambda: None)
            try:
                code = await self._postOnce(url, payload)
            except CancelledError:
                raise  # stop()
            except Exception as e:
                why = _reason(e)
            else:
                if 200 <= code < 300:
                    self._emit(f"{domain}: report {rid} sent to {clean(url)}: HTTP {code}")
                    return True
                why = f"HTTP {code}"
            if attempt < len(RETRY_DELAYS):
                self._emit(f"{domain}: report {rid} to {clean(url)} failed: {why}; trying again in "
                           f"{RETRY_DELAYS[attempt]}s")
            else:
                self._warn(f"{domain}: report {rid} to {clean(url)} failed: {why}; given up")
        return False

    def _makeAgent(self):
        if self.agent is None:
            from twisted.internet.ssl import platformTrust
            from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

            root = self.trustRoot if self.trustRoot is not None else platformTrust()
            self.agent = Agent(self.clock, contextFactory=BrowserLikePolicyForHTTPS(root),
                               connectTimeout=self.settings.httpTimeout)
        return self.agent

    async def _postOnce(self, url, payload):
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        agent = self._makeAgent()
        headers = Headers({b"Content-Type": [MEDIA_TYPE.encode()], b"User-Agent": [b"mta TLS-RPT"]})
        d = agent.request(b"POST", url.encode("ascii"), headers, FileBodyProducer(io.BytesIO(payload)))
        d.addTimeout(self.settings.httpTimeout, self.clock)
        response = await d
        done = Deferred()
        response.deliverBody(_Drain(done))
        done.addTimeout(self.settings.httpTimeout, self.clock)
        try:
            await done
        except Exception:
            pass  # the code is what counts
        return response.code

    # -- logging ------------------------------------------------------------------------------------------

    def _emit(self, text):
        if self.maillog is not None:
            self.maillog.emit(text)
        else:
            log.info("tlsrpt: {text}", text=text)

    def _warn(self, text):
        if self.maillog is not None:
            self.maillog.warning(text)
        else:
            log.warn("tlsrpt: {text}", text=text)
