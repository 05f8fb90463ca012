"""mta.delivery.mtasts - MTA-STS (RFC 8461) in the SMTP client: discovery, HTTPS fetch, cache, enforcement.

    Sts(settings, resolver, clock, maillog=None, fetch=None, cachePath=None)
        .apply(site)                  -> SitePolicy (async; TlsPolicy.forDestination)
        .hostAllowed(site, host)      -> a reason to skip an MX host, or None
        .judge(site, verdict, connection, host) -> TlsVerdict
        .enforcedTls(tls)             -> the ClientTls an enforce policy needs
        .policyFor(domain)            -> StsPolicy or None (async)
    StsPolicy, StsError, parseTxt(strings), parsePolicy(text, domain, id, now),
    mxMatches(pattern, host), PolicyFetcher(reactor, resolver, families, ...)

mta.delivery.tlspolicy.TlsPolicy calls the hooks: for a destination found
through MX records (not a relayhost, a [host] or a transport's fixed next
hop; RFC 8461 applies to MX deliveries only) and with no
smtp_tls_policy_maps entry, apply() finds the policy domain's policy:

  1. The TXT record ``_mta-sts.<domain>``: the records that begin with
     ``v=STSv1`` (several such records: as if none, RFC 8461 3.1); its
     ``id`` (1 to 32 letters and digits) tells whether the cached policy is
     current.
  2. A cached policy that has not expired (fetched + max_age) and has the
     same id is used as it is.  Otherwise the policy is fetched from
     ``https://mta-sts.<domain>/.well-known/mta-sts.txt``: the host name is
     looked up through mta's own resolver (dns_servers, inet_protocols),
     the server certificate is verified against the web PKI (the system
     trust store, or smtp_mta_sts_CAfile) for that name, with SNI;
     redirects are not followed (RFC 8461 3.3); the status must be 200, the
     media type text/plain, the body at most 64 KiB, all within
     smtp_mta_sts_fetch_timeout.  One fetch per domain is in flight at a
     time; the deliveries that need it wait for it.
  3. A fetch that fails, a TXT lookup that fails or finds nothing: the
     unexpired cached policy if there is one (its protection is what the
     cache is for: RFC 8461 5), else no policy; a failed fetch is not
     retried for smtp_mta_sts_retry_time and is reported to TLS-RPT
     (sts-policy-fetch-error, sts-webpki-invalid, sts-policy-invalid).

The policy file (RFC 8461 3.2): ``key: value`` lines (CRLF or LF);
version STSv1, mode enforce / testing / none, max_age (seconds, at most
31557600: larger values are capped), and one or more mx patterns (a host
name, or ``*.`` and a domain: one label in its place).  Unknown keys are
ignored; of a repeated key other than mx the first is used; a policy
without version, mode, max_age, or without mx under enforce or testing,
is invalid.

What each mode does:
    none      no policy (cached, so that it replaces an earlier one)
    testing   delivery as without a policy; an MX that does not match, or
              a certificate that would not verify, is logged and reported
              to TLS-RPT (TlsVerdict.report), never enforced
    enforce   MX hosts that match no pattern are skipped ("skipped: MX host
              ... does not match the MTA-STS policy"); the others need
              TLS with a certificate that chains to a trusted CA and is
              valid for the MX host name (level verify with match=hostname
              and SNI the host name): anything else defers (4.7.5), never
              plaintext, never a bounce (RFC 8461 5.1: a later policy may
              fix it).  When no MX matches, the mail is deferred.

The policy's level replaces smtp_tls_security_level may and encrypt;
verify, secure and fingerprint (stronger, the administrator's) stay, with
the MX filter; dane and dane-only stay: DANE takes precedence where the
host has usable DNSSEC-validated TLSA records (RFC 8461 2), and where it
has none TlsPolicy applies enforcedTls() to what DANE fell back to.
Under smtp_tls_security_level none MTA-STS is not used.

The cache lives in memory and in an SQLite file (smtp_mta_sts_cache_file;
empty: mta-sts.sqlite in the queue directory), so that a restart keeps
the policies; a file that cannot be opened or written leaves the memory
cache, with a warning.  Each decision is a mail-log line: the policy
(id, mode, mx, where from), every skipped MX, every testing-mode report.

SECURITY
    The TXT record, the HTTPS response and the cache file are untrusted:
    sizes are bounded (64 KiB, 32-character ids, 1000 mx patterns), the
    parser never raises anything but StsError, a value that does not parse
    is an invalid policy.  The fetch verifies the certificate for
    mta-sts.<domain> and does not follow redirects.  A policy can only
    raise the TLS requirement (or, in testing, log): never lower it.

CONFIGURATION
    smtp_mta_sts_enable, smtp_mta_sts_cache_file, smtp_mta_sts_fetch_timeout,
    smtp_mta_sts_CAfile, smtp_mta_sts_retry_time; inet_protocols and
    dns_servers for the policy host's addresses.

DEVIATIONS
    Postfix has no MTA-STS of its own (it takes a policy server such as
    postfix-mta-sts-resolver through smtp_tls_policy_maps, which mta also
    supports through socketmap:).  The parameters are mta's own.  No
    proactive refresh of policies before they expire (RFC 8461 5.1 makes
    it a SHOULD): a policy is refreshed when a delivery needs it and its
    TXT id changed or it expired.
"""

import re
import sqlite3

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from mta.maillog import note

__all__ = ["MAX_AGE_LIMIT", "MAX_POLICY_SIZE", "PolicyFetcher", "Sts", "StsError", "StsPolicy", "mxMatches",
           "parsePolicy", "parseTxt"]

log = Logger()

MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 3.3
MAX_AGE_LIMIT = 31557600  # RFC 8461 3.2: about a year
MAX_MX_PATTERNS = 1000
WELL_KNOWN = "/.well-known/mta-sts.txt"
MODES = ("enforce", "testing", "none")
_ID = re.compile(r"[A-Za-z0-9]{1,32}\Z")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


class StsError(Exception):
    """A policy that could not be had: C{failureType} is RFC 8460's (sts-policy-fetch-error, ...)."""

    def __init__(self, text, failureType="sts-policy-fetch-error"):
        super().__init__(text)
        self.text = text
        self.failureType = failureType


@attrs.frozen
class StsPolicy:
    """One domain's MTA-STS policy as fetched (mx: lower-case patterns; text: the file, for TLS-RPT)."""

    domain: str
    id: str
    mode: str
    mx: tuple
    maxAge: int
    text: str = ""
    fetched: float = 0.0

    @property
    def expires(self):
        return self.fetched + self.maxAge

    def matches(self, hostname):
        """Does the MX host name match one of the policy's mx patterns?"""
        return any(mxMatches(pattern, hostname) for pattern in self.mx)

    def describe(self):
        return f"id={self.id} mode={self.mode} max_age={self.maxAge} mx={','.join(self.mx) or '-'}"


def mxMatches(pattern, hostname):
    """RFC 8461 4.1: "mx.example.com" matches itself; "*.example.com" one label in place of the "*"."""
    name = (hostname or "").lower().rstrip(".")
    pattern = pattern.lower().rstrip(".")
    if not name or not pattern:
        return False
    if pattern.startswith("*."):
        first, _, rest = name.partition(".")
        return bool(first) and rest == pattern[2:]
    return name == pattern


def _validName(name):
    labels = name.split(".")
    return len(name) <= 253 and len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def parseTxt(strings):
    """
    The policy id of the ``_mta-sts`` TXT records (each a list of its
    character strings, bytes or text), or None when there is no usable
    record: none begins with v=STSv1, or more than one does (RFC 8461 3.1).
    StsError for a single v=STSv1 record without a valid id.
    """
    records = []
    for parts in strings:
        text = b"".join(p if isinstance(p, bytes) else p.encode("utf-8", "replace") for p in parts)
        text = text.decode("ascii", "replace")
        if re.match(r"v=STSv1\s*(;|\Z)", text):
            records.append(text)
    if len(records) != 1:
        return None
    fields = {}
    for item in records[0].split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    ident = fields.get("id", "")
    if not _ID.match(ident):
        raise StsError(f"bad MTA-STS TXT record id {ident[:40]!r}", "sts-policy-invalid")
    return ident


def parsePolicy(text, domain, ident, now=0.0):
    """The StsPolicy of a fetched policy file (text); StsError (sts-policy-invalid) when it is not one."""
    if len(text) > MAX_POLICY_SIZE:
        raise StsError("policy larger than 64 KiB", "sts-policy-invalid")
    fields = {}
    mx = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise StsError(f"policy line without a key: {line[:60]!r}", "sts-policy-invalid")
        key, value = key.strip(), value.strip()
        if key == "mx":
            if len(mx) >= MAX_MX_PATTERNS:
                raise StsError("policy with too many mx patterns", "sts-policy-invalid")
            pattern = value.lower().rstrip(".")
            check = pattern[2:] if pattern.startswith("*.") else pattern
            if not _validName(check):
                raise StsError(f"policy mx pattern {value[:60]!r} is not a host name", "sts-policy-invalid")
            mx.append(pattern)
        elif key not in fields:
            fields[key] = value
    if fields.get("version") != "STSv1":
        raise StsError(f"policy version {fields.get('version', '')[:20]!r} is not STSv1", "sts-policy-invalid")
    mode = fields.get("mode", "")
    if mode not in MODES:
        raise StsError(f"policy mode {mode[:20]!r} is not enforce, testing or none", "sts-policy-invalid")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or not age.isascii():
        raise StsError(f"policy max_age {age[:20]!r} is not a number of seconds", "sts-policy-invalid")
    if mode != "none" and not mx:
        raise StsError(f"policy in mode {mode} without mx patterns", "sts-policy-invalid")
    return StsPolicy(domain, ident, mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), text, now)


# -- the HTTPS fetch -----------------------------------------------------------------------------


class _Body(Protocol):
    """Reads a response body of at most C{limit} bytes into C{finished}."""

    def __init__(self, finished, limit):
        self.finished = finished
        self.limit = limit
        self.parts = []
        self.size = 0

    def dataReceived(self, data):
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.finished.errback(StsError("policy larger than 64 KiB", "sts-policy-invalid"))
            self.transport.stopProducing()
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(StsError(f"policy fetch failed: {reason.getErrorMessage()}"))


def _trustRoot(caFile):
    """The trust root for the fetch: the system's, or the certificates of C{caFile} (PEM)."""
    from twisted.internet import ssl

    if not caFile:
        return ssl.platformTrust()
    data = open(caFile, "rb").read()
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not blocks:
        raise ValueError(f"{caFile}: no PEM certificate")
    return ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])


def _isWebPkiFailure(failure):
    """Did the request fail on the certificate (sts-webpki-invalid) rather than the connection?"""
    from OpenSSL import SSL
    from service_identity import VerificationError

    reasons = getattr(failure.value, "reasons", None) or [failure]
    for reason in reasons:
        if reason.check(SSL.Error, VerificationError):
            return True
    return False


class PolicyFetcher:
    """
    fetch(domain) -> Deferred[str]: the policy file of C{domain} over
    HTTPS (module docstring, step 2), or StsError.  C{resolver}:
    mta.delivery.dns.Resolver (the policy host's addresses); C{port}: 443
    (another only for tests).
    """

    def __init__(self, reactor, resolver, families=("ipv4", "ipv6"), caFile="", timeout=10.0, port=443):
        self.reactor = reactor
        self.resolver = resolver
        self.families = tuple(families)
        self.trustRoot = _trustRoot(caFile)
        self.timeout = timeout
        self.port = port

    def fetch(self, domain):
        d = Deferred.fromCoroutine(self._fetch(domain))
        d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=lambda *_: self._timedOut(domain))
        return d

    @staticmethod
    def _timedOut(domain):
        raise StsError(f"policy fetch from mta-sts.{domain} timed out")

    async def _fetch(self, domain):
        from twisted.web.client import Agent, HTTPConnectionPool
        from twisted.web.http_headers import Headers

        host = f"mta-sts.{domain}"
        agent = Agent.usingEndpointFactory(self.reactor, _Endpoints(self, host),
                                           pool=HTTPConnectionPool(self.reactor, persistent=False))
        url = f"https://{host}{WELL_KNOWN}" if self.port == 443 else f"https://{host}:{self.port}{WELL_KNOWN}"
        try:
            response = await agent.request(b"GET", url.encode("ascii"), Headers({b"User-Agent": [b"mta (MTA-STS)"]}))
        except StsError:
            raise
        except defer.CancelledError:
            raise
        except Exception as e:
            from twisted.python.failure import Failure

            if _isWebPkiFailure(Failure(e)):
                raise StsError(f"certificate of {host} not valid: {_describe(e)}", "sts-webpki-invalid") from None
            raise StsError(f"policy fetch from {host} failed: {_describe(e)}") from None
        if response.code != 200:
            response.deliverBody(_Discard())
            raise StsError(f"policy fetch from {host}: HTTP status {response.code}")
        kind = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if kind.split(b";")[0].strip().lower() != b"text/plain":
            response.deliverBody(_Discard())
            raise StsError(f"policy from {host} has media type {kind[:60].decode('latin-1')!r}, not text/plain",
                           "sts-policy-invalid")
        if response.length is not None and response.length != -1 and response.length > MAX_POLICY_SIZE:
            response.deliverBody(_Discard())
            raise StsError("policy larger than 64 KiB", "sts-policy-invalid")
        finished = Deferred()
        response.deliverBody(_Body(finished, MAX_POLICY_SIZE))
        body = await finished
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise StsError(f"policy from {host} is not UTF-8 text", "sts-policy-invalid") from None


class _Discard(Protocol):
    def dataReceived(self, data):
        self.transport.stopProducing()


def _describe(error):
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(r.getErrorMessage() for r in reasons)[:300]
    return (str(error) or error.__class__.__name__)[:300]


class _Endpoints:
    """The Agent's endpoints: the policy host's address from mta's resolver, TLS verified for its name."""

    def __init__(self, fetcher, host):
        self.fetcher = fetcher
        self.host = host

    def endpointForURI(self, uri):
        return _ResolvingTlsEndpoint(self.fetcher, self.host, uri.port)


class _ResolvingTlsEndpoint:
    def __init__(self, fetcher, host, port):
        self.fetcher = fetcher
        self.host = host
        self.port = port

    def connect(self, factory):
        return Deferred.fromCoroutine(self._connect(factory))

    async def _connect(self, factory):
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
        from twisted.internet.error import ConnectError
        from twisted.internet.ssl import optionsForClientTLS

        from mta.delivery.dns import DNSError

        f = self.fetcher
        try:
            addresses = await f.resolver.lookupAddresses(self.host, f.families)
        except DNSError as e:
            raise ConnectError(string=f"{self.host}: {e.text}") from None
        if not addresses:
            raise ConnectError(string=f"{self.host}: no address")
        problem = None
        for address in addresses[:4]:
            tcp = (TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint)(f.reactor, address, self.port,
                                                                              timeout=f.timeout)
            endpoint = wrapClientTLS(optionsForClientTLS(self.host, trustRoot=f.trustRoot), tcp)
            try:
                return await endpoint.connect(factory)
            except ConnectError as e:
                problem = e
        raise problem


# -- the cache ------------------------------------------------------------------------------------


class _Store:
    """
    The policies kept on disk (SQLite), opened on first use (the queue
    directory may not exist yet when the transport is made); a failure
    leaves the memory cache, with one warning.
    """

    def __init__(self, path, warn):
        self.path = path
        self._warn = warn
        self._db = None
        self._broken = not path

    def _open(self):
        if self._db is None and not self._broken:
            try:
                self._db = sqlite3.connect(self.path, isolation_level=None)
                self._db.execute("CREATE TABLE IF NOT EXISTS policies (domain TEXT PRIMARY KEY, id TEXT, "
                                 "mode TEXT, mx TEXT, max_age INTEGER, text TEXT, fetched REAL)")
            except (sqlite3.Error, OSError) as e:
                self._failed(e)
        return self._db

    def _failed(self, error):
        self._warn(f"MTA-STS cache {self.path}: {error}; policies are kept in memory only")
        if self._db is not None:
            self._db.close()
        self._db = None
        self._broken = True

    def load(self, domain):
        if self._open() is None:
            return None
        try:
            row = self._db.execute("SELECT id, mode, mx, max_age, text, fetched FROM policies WHERE domain = ?",
                                   (domain,)).fetchone()
        except sqlite3.Error as e:
            self._failed(e)
            return None
        if row is None:
            return None
        try:
            ident, mode, mx, maxAge, text, fetched = row
            policy = parsePolicy(str(text), domain, str(ident), float(fetched))
        except (StsError, TypeError, ValueError):
            return None  # a damaged row: as if not cached
        return policy if policy.mode == mode else None

    def save(self, policy):
        if self._open() is None:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO policies VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (policy.domain, policy.id, policy.mode, "\n".join(policy.mx), policy.maxAge,
                              policy.text, policy.fetched))
        except sqlite3.Error as e:
            self._failed(e)

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None


# -- the policy hooks ------------------------------------------------------------------------------


MEMORY_LIMIT = 10000


class Sts:
    """MTA-STS for one SMTP transport (module docstring)."""

    def __init__(self, settings, resolver, clock, maillog=None, fetch=None, cachePath=None, record=None):
        self.settings = settings
        self.resolver = resolver
        self.clock = clock
        self.maillog = maillog
        self.retryTime = getattr(settings, "mtaStsRetryTime", 300.0)
        if fetch is None:
            fetcher = PolicyFetcher(clock, resolver, getattr(settings, "families", ("ipv4", "ipv6")),
                                    getattr(settings, "mtaStsCAfile", ""), getattr(settings, "mtaStsFetchTimeout", 10.0))
            fetch = fetcher.fetch
        self._fetch = fetch
        self.record = record  # TlsPolicy.record (TLS-RPT), set by TlsPolicy
        self._store = _Store(cachePath, self._warning)
        self._memory = {}  # domain -> StsPolicy (a "none" policy too)
        self._failed = {}  # domain -> when a fetch last failed
        self._inFlight = {}  # domain -> Deferred of the fetch

    def close(self):
        self._store.close()

    # -- finding the policy

    async def policyFor(self, domain):
        """The policy of C{domain} that applies now (module docstring, steps 1 to 3), or None."""
        from mta.delivery.dns import DNSError

        now = self.clock.seconds()
        cached = self._cached(domain, now)
        try:
            ident = await self._txt(domain)
        except DNSError as e:
            if e.temporary:
                self._log(f"{domain}: MTA-STS TXT lookup failed: {e.text}" +
                          (f"; using the cached policy {cached.describe()}" if cached else ""))
            return cached
        except StsError as e:
            self._log(f"{domain}: {e.text}" + (f"; using the cached policy {cached.describe()}" if cached else ""))
            self._report(domain, e)
            return cached
        if ident is None:
            return cached
        if cached is not None and cached.id == ident:
            return cached
        if now - self._failed.get(domain, -1e18) < self.retryTime:
            return cached
        try:
            policy = await self._fetchShared(domain, ident)
        except StsError as e:
            self._failed[domain] = self.clock.seconds()
            if len(self._failed) > MEMORY_LIMIT:
                self._failed.clear()
            self._log(f"{domain}: MTA-STS policy id={ident}: {e.text}" +
                      (f"; using the cached policy {cached.describe()}" if cached else "; no policy used"), warn=True)
            self._report(domain, e)
            return cached
        self._failed.pop(domain, None)
        return policy

    def _cached(self, domain, now):
        policy = self._memory.get(domain)
        if policy is None:
            policy = self._store.load(domain)
            if policy is not None:
                self._remember(policy)
        if policy is not None and policy.expires <= now:
            return None
        return policy

    def _remember(self, policy):
        if len(self._memory) >= MEMORY_LIMIT and policy.domain not in self._memory:
            self._memory.pop(next(iter(self._memory)))
        self._memory[policy.domain] = policy

    async def _txt(self, domain):
        from mta.delivery.dns import DNSError

        try:
            records = await self.resolver.lookupRecords(f"_mta-sts.{domain}", "TXT")
        except DNSError as e:
            if e.temporary:
                raise
            return None  # NXDOMAIN: no policy
        return parseTxt([list(getattr(r, "strings", ())) for r in records])

    def _fetchShared(self, domain, ident):
        """A Deferred of the policy fetched for C{domain}: one fetch in flight per domain, shared."""
        waiter = Deferred()
        waiters = self._inFlight.get(domain)
        if waiters is not None:
            waiters.append(waiter)
        else:
            self._inFlight[domain] = [waiter]  # before the fetch starts: it may finish at once
            Deferred.fromCoroutine(self._fetchOne(domain, ident)).addBoth(self._fetchDone, domain)
        return waiter

    def _fetchDone(self, result, domain):
        from twisted.python.failure import Failure

        for waiter in self._inFlight.pop(domain, []):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    async def _fetchOne(self, domain, ident):
        try:
            text = await self._fetch(domain)
        except StsError:
            raise
        except defer.CancelledError:
            raise StsError(f"policy fetch from mta-sts.{domain} cancelled") from None
        except Exception as e:
            raise StsError(f"policy fetch from mta-sts.{domain} failed: {_describe(e)}") from None
        policy = parsePolicy(text, domain, ident, self.clock.seconds())
        self._remember(policy)
        self._store.save(policy)
        self._log(f"{domain}: MTA-STS policy fetched: {policy.describe()}")
        return policy

    def _report(self, domain, error):
        if self.record is not None:
            from mta.delivery.tlspolicy import SitePolicy, TlsResult

            site = SitePolicy(tls=self.settings.tls, source="mta-sts", domain=domain)
            self.record(site, None, TlsResult(False, error.failureType, error.text, policyType="sts"))

    # -- the TlsPolicy hooks

    def enforcedTls(self, tls):
        """The ClientTls an enforce policy needs in place of may or encrypt: verified for the MX host name."""
        return attrs.evolve(tls, level="verify", verifyCertMatch=("hostname",), serverName="hostname")

    async def apply(self, site):
        """The site under its domain's policy (the SitePolicy of mta.delivery.tlspolicy)."""
        if site.tls.level == "none" or not site.domain or not _validName(site.domain):
            return site
        policy = await self.policyFor(site.domain)
        if policy is None or policy.mode == "none":
            return site
        if policy.mode == "testing":
            return attrs.evolve(site, sts=policy)
        tls = self.enforcedTls(site.tls) if site.tls.level in ("may", "encrypt") else site.tls
        return attrs.evolve(site, tls=tls, sts=policy, source="mta-sts")

    def hostAllowed(self, site, host):
        """Under enforce, a reason to skip an MX host whose name matches no pattern; testing: a log line."""
        policy = site.sts
        if policy is None or host is None or policy.matches(host.name):
            return None
        text = f"MX host {host.name} does not match the MTA-STS policy of {policy.domain}"
        if self.record is not None:
            from mta.delivery.tlspolicy import TlsResult

            self.record(site, host, TlsResult(False, "validation-failure", text))
        if policy.mode == "enforce":
            return text  # the transport logs "skipped" and defers when no host is left
        self._log(f"{host.name}[{host.address}]:{host.port}: {text} (mode testing: not enforced)")
        return None

    def judge(self, site, verdict, connection, host):
        """Testing mode: what enforce would have said, as a report-only failure (TlsVerdict.report)."""
        policy = site.sts
        if policy is None or policy.mode != "testing" or verdict.failure is not None or site.tlsa:
            return verdict
        problem = None
        if not verdict.trusted:
            problem = ("certificate-not-trusted", "Server certificate not trusted")
        elif host is not None and not _certificateMatches(connection, host.name):
            problem = ("certificate-host-mismatch", f"Server certificate not valid for {host.name}")
        if problem is None:
            return verdict
        where = f"{host.name}[{host.address}]:{host.port}" if host is not None else policy.domain
        self._log(f"{where}: MTA-STS {policy.domain} (mode testing): {problem[1]}; not enforced")
        return attrs.evolve(verdict, report=problem)

    # -- logging

    def _warning(self, text):
        self._log(text, warn=True)

    def _log(self, text, warn=False):
        note(self.maillog, text, warn, log)


def _certificateMatches(connection, hostname):
    from service_identity.pyopenssl import verify_hostname

    try:
        verify_hostname(connection, hostname)
        return True
    except Exception:
        return False
