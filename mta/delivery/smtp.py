"""mta.delivery.smtp - the smtp, relay and lmtp transports (smtp(8), lmtp(8)).

For a DeliveryRequest: parse the nexthop (mta.delivery.nexthop), find the
hosts (mta.delivery.mx: MX order, implicit MX, null MX, limits, loops to
self), then try them in order: connect (smtp_connect_timeout, from
smtp_bind_address / smtp_bind_address6), run one client session
(mta.delivery.smtpclient) for the recipients still to do, keep the results
the host gave, and go on to the next host only with the recipients the
session says may be tried elsewhere (4xx, lost connection before the final
".", a 5xx greeting).  At most smtp_mx_session_limit sessions; then the
smtp_fallback_relay destinations, unless this host is itself an MX for
the destination.  Recipients no host took are deferred with the last
problem ("connect to mx[192.0.2.1]:25: Connection refused").  LMTP
destinations may be ``unix:/path``.

The content is read from the queue file in the store's thread pool, one
chunk at a time, as the session asks for it.

Connections are cached in the process (Postfix's scache(8)): after a
finished transaction the connection stays open, idle, for at most
smtp_connection_cache_time_limit, and the next delivery for the same
destination (the nexthop as routed, never another one: a connection is
reused only for the destination it was reached for) takes it after an
RSET, while it is younger than smtp_connection_reuse_time_limit and has
been used fewer than smtp_connection_reuse_count_limit times; the mail
log then says conn_use=N.  Postfix caches on demand (while a destination
has a backlog); mta caches every finished connection, which the short
idle limit makes cheap (mta.delivery.connectioncache).  The cache's key
is the destination, the TLS policy (SitePolicy.reuseKey; the transport's
ClientTls) and the SASL identity, if any: a connection made under one TLS
policy never serves a destination whose policy differs, and on top of
that never a plaintext one where TLS is required (encrypt and above), nor
one made under another level.  TLS connections are cached only with
smtp_tls_connection_reuse = yes (mta's default; Postfix's is no, since it
needs tlsproxy(8)) or the policy's connection_reuse=yes; with no, a TLS
connection gets QUIT after its delivery, as in Postfix.

SASL (smtp_sasl_*, mta.delivery.smtpsasl): AUTH after the final EHLO;
with smtp_sender_dependent_authentication the cache key holds the sender
too; a failed handshake under may is not retried in plaintext when there
are SASL credentials for the host (as Postfix).

TLS sessions are resumed (smtp_tls_session_cache_timeout, 0: never): the
transport keeps the sessions of its TLS connections in memory by server
address, port, SNI and TLS policy (mta.delivery.tlssessions) and offers
the session to the next new connection to the same server; with
smtp_tls_loglevel >= 2 the log says "smtp:ADDR:PORT: Reusing old session"
(the handshake line still says "established"); a cached TLS connection
used again logs "Untrusted TLS connection reused to ..." at
smtp_tls_loglevel >= 1, as Postfix's tlsproxy-backed reuse does.


TLS (smtp_tls_security_level and the rest, mta.delivery.smtptls; per
destination smtp_tls_policy_maps and the other sources of
mta.delivery.tlspolicy, resolved once per destination and once per host;
a policy that defers is the destination's problem, as a failed lookup): the
session sends STARTTLS after EHLO when offered and the level is not none,
and EHLO again after the handshake.  Under may, a failed handshake is
followed by a new connection to the same host without TLS (Postfix's
behaviour); under encrypt and above, no STARTTLS, a refused STARTTLS, a
failed handshake or (verify, secure) a certificate that does not verify
defers the host (4.7.x) and the next host is tried.

Mail-loop detection needs this host's addresses (Postfix's inet_interfaces
and proxy_interfaces): those of the listeners, read from their endpoint
descriptions with Twisted's own parser (mta.delivery.localaddr, so
"tcp6:port=25:interface=\\:\\:1" is ::1), every address of the host's
interfaces for a listener without an interface (inet_interfaces = all),
none for a UNIX socket, and the proxy_interfaces addresses.

Postmaster notices (Postfix's smtp_chat_notify): with protocol in
notify_classes, each session keeps a transcript (the commands, "Out: ",
and the replies, "In:  ", never the content; the first and last 200 lines
of a longer one) and notes the protocol errors Postfix notes
(smtp_chat.c, smtp_trouble.c): a malformed reply, a reply nobody asked
for, a reply of the wrong class ("Protocol error"), a refusal with a code
that is not 4xx/5xx, 555 or 500-509.  After a delivery that met one, the
transcript is queued as "Subject: $mail_name SMTP client: errors from
HOST[ADDR]:PORT" (LMTP client for lmtp) to error_notice_recipient, from
double_bounce_sender (mta.transcript), unless the mail is from <> or from
the double-bounce address.  The client has one other class, data (a
table lookup that fails: smtp_discard_ehlo_keyword_address_maps; mta's
client has no header/body checks or reply filter); Postfix's smtp sets
only these two, and no delivery agent, the queue manager or bounce(8)
reports resource or software problems; so mta does neither.  Warnings
(an MX host name that is an address, an over-long reply, a malformed
reply, an interface that is a host name) go to the mail log as
"warning: ...".

SECURITY
    The servers are untrusted: the session bounds what it reads and times
    out every phase; nothing from them reaches a log unescaped.

CONFIGURATION
    relayhost, smtp_fallback_relay, smtp_connect_timeout, smtp_bind_address,
    smtp_bind_address6, smtp_mx_address_limit, smtp_mx_session_limit,
    smtp_randomize_addresses, ignore_mx_lookup_error,
    smtp_defer_if_no_mx_address_found, disable_dns_lookups,
    smtp_host_lookup, inet_protocols, smtp_address_preference,
    smtp_balance_inet_protocols, proxy_interfaces, dns_servers, lmtp_tcp_port,
    smtp_connection_cache_on_demand, smtp_connection_cache_destinations,
    smtp_connection_cache_time_limit, smtp_connection_reuse_time_limit,
    smtp_connection_reuse_count_limit, smtp_tls_connection_reuse,
    smtp_tls_session_cache_timeout, lmtp_cache_connection (no: LMTP
    connections are never cached), smtp_cname_overrides_servername (the end
    of the host name's CNAME chain names the server in the log and the TLS
    checks), disable_mime_output_conversion,
    smtp_tls_* and lmtp_tls_* (mta.delivery.smtptls, mta.delivery.smtpstarttls),
    notify_classes (protocol: see below), error_notice_recipient,
    bounce_notice_recipient, double_bounce_sender, best_mx_transport (mail whose best
    MX is this host goes to that transport, e.g. virtual), syslog_name,
    the [listener:NAME] endpoints, and the session parameters of
    mta.delivery.smtpclient: all of them (but the endpoints, which the
    generation gives, and dns_servers, which its resolver reads) in one
    settings object, mta.config.settings.client.SmtpClientSettings
    (``config.settings.smtpClient``, for smtp and relay) or
    LmtpClientSettings (``lmtpClient``), built and checked at load.

DEVIATIONS FROM POSTFIX
    * smtp_tls_connection_reuse defaults to yes (Postfix: no); no
      tlsproxy(8) or scache(8) is needed, the cache is in the process.
    * Client TLS sessions are cached in memory without
      smtp_tls_session_cache_database (Postfix caches them only when that
      names a database); they do not survive a restart.
    * Under encrypt and above a STARTTLS refused with 5xx defers the host
      like a 4xx (Postfix's smtp_site_fail() may bounce on a 5xx at the
      last host); no mail is lost to a server's TLS trouble.
    * An interface or proxy_interfaces entry given as a host name is not
      looked up (Postfix resolves it at start-up): it is left out of the
      loop detection, with a warning.
"""

import os

import attrs
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import IDeliveryTransport
from mta.maillog import MailLogger
from mta.model import RecipientResult
from mta.queue.fileformat import readContent
from mta.delivery.localaddr import listenerAddresses, parseAddress
from mta.delivery.mime7bit import to7bit
from mta.delivery.mx import DeliveryProblem, PassToTransport, destinationHosts
from mta.delivery.nexthop import parseNexthop
from mta.delivery.connectioncache import ConnectionCache, cacheKey
from mta.delivery.smtpclient import RemoteHost, SMTPClientSession
from mta.delivery.tlspolicy import TlsPolicy
from mta.delivery.tlssessions import TlsSessionCache
from mta.delivery.dane import Dane
from mta.delivery.mtasts import Sts
from mta.delivery.smtpsasl import SaslClient
from mta.transcript import Transcript, TranscriptNotices

log = Logger()

CHUNK = 256 * 1024  # bytes of a big message read per thread job (64 KiB: 11% more CPU on a 10 MB relay)
# The notify_classes a client session can meet (Postfix's smtp error_mask: protocol, and data for a
# table lookup that fails: smtp_discard_ehlo_keyword_address_maps).
CLIENT_ERROR_CLASSES = frozenset({"protocol", "data"})
# Lines of a client session's transcript kept for a postmaster notice: the first and the last half.
TRANSCRIPT_LINES = 400


def _failureStatus(failure):
    """A TLS policy failure (mta.delivery.tlspolicy.PolicyError) bounces with a 5.x.x code (REQUIRETLS), else defers."""
    return "bounced" if failure.dsn.startswith("5") else "deferred"


def _withSuccessAction(outcome):
    """Mark sent results: the next hop took NOTIFY (it reports success), or our notice's action."""
    action = "none" if outcome.dsnOffered else outcome.successAction
    return tuple(attrs.evolve(r, success_action=action) if r.status == "sent" else r for r in outcome.results)


def _converted(store, request):
    """The whole content, converted to 7-bit MIME (mta.delivery.mime7bit) in the thread pool."""

    def load():
        if request.content is not None:
            return to7bit(request.content)
        data = b"".join(readContent(request.path, request.content_offset, request.content_length, CHUNK))
        return to7bit(data)

    async def chunks():
        yield await store.inPool(load)

    return chunks()


def _chunks(store, request):
    """
    The message content: from memory when the queue manager read the file
    whole (small messages), else read in the store's thread pool one chunk
    at a time.
    """

    if request.content is not None:

        async def inMemory():
            if request.content:
                yield request.content

        return inMemory()

    async def chunks():
        reader = readContent(request.path, request.content_offset, request.content_length, CHUNK)
        while True:
            chunk = await store.inPool(next, reader, None)
            if chunk is None:
                return
            yield chunk

    return chunks()


@implementer(IDeliveryTransport)
class SMTPTransport:
    """
    smtp(8) or lmtp(8) (see the module docstring).

    @param name: the transport's name (smtp, relay, lmtp, ...): the mail
        log's program name.
    @param settings: a mta.config.settings.client.SmtpClientSettings
        (``config.settings.smtpClient``) or LmtpClientSettings
        (``lmtpClient``); its C{lmtp} says which protocol.
    @param context: the generation (mta.generation.Generation): C{clock},
        C{store}, C{resolver}, C{cleanup} (the one way into the queue, for
        the postmaster transcripts), C{listenerDescriptions()}, and
        optionally C{maillogFor(program)} and C{transports} (for
        best_mx_transport).
    @param notices: the NoticeSettings (``config.settings.notices``) of
        the postmaster transcripts (notify_classes); None: no transcripts.

    @ivar settings: the settings, as given; the session gets them too.
    @ivar cache: the ConnectionCache of this transport's idle connections.
    @ivar mxOptions: what mta.delivery.mx.destinationHosts() is given.
    """

    def __init__(self, name, settings, context, notices=None):
        self.name = name
        self.settings = settings
        self.lmtp = settings.lmtp
        self.reactor = context.clock
        self.store = context.store
        self.resolver = context.resolver
        self.cache = ConnectionCache(self.reactor, settings.cacheTimeLimit, settings.reuseTimeLimit,
                                     settings.reuseCountLimit)
        self.maillog = MailLogger(settings.syslogName, name)
        # The TLS policy of each destination and host (smtp_tls_*, smtp_tls_policy_maps; DANE,
        # MTA-STS): mta.delivery.tlspolicy; it also holds the TLS contexts, one per distinct policy.
        self.tlsPolicy = TlsPolicy(settings, self.resolver, self.reactor, getattr(context, "tables", None),
                                   warn=self._warn)
        # TLS session resumption (smtp_tls_session_cache_timeout; mta.delivery.tlssessions).
        sessionTimeout = TlsSessionCache.effectiveTimeout(settings.tlsSessionCacheTimeout)
        self.tlsSessions = TlsSessionCache(self.reactor, sessionTimeout) if sessionTimeout else None
        # DANE (smtp_tls_security_level dane / dane-only, per MX host): mta.delivery.dane.
        self.tlsPolicy.dane = Dane(self.resolver, settings, self.maillog)
        # TLS-RPT (mta.delivery.tlsrpt): the daemon's one reporter, for SMTP (not LMTP) deliveries.
        if not self.lmtp:
            self.tlsPolicy.reporter = getattr(context, "tlsReporter", None)
        # MTA-STS (RFC 8461) for MX deliveries: mta.delivery.mtasts.
        if settings.mtaStsEnable and hasattr(self.resolver, "lookupRecords"):
            self.tlsPolicy.sts = Sts(settings, self.resolver, self.reactor, self.maillog,
                                     cachePath=_stsCachePath(settings, context), record=self.tlsPolicy.record)
        if settings.tls.daneProblem:
            self._warn(f"{settings.tls.daneProblem}: " + ("DANE is not used (may)" if settings.tls.level == "may"
                                                          else "every delivery defers"))
        # Postmaster transcripts (notify_classes) go through the generation's one cleanup.
        self.notices = None if notices is None else TranscriptNotices(notices, context.cleanup, self.reactor,
                                                                      self.maillog)
        self.keepTranscripts = self.notices is not None and self.notices.wants(CLIENT_ERROR_CLASSES)
        addresses = listenerAddresses([e for _, e in context.listenerDescriptions()], warn=self._warn)
        for interface in settings.proxyInterfaces:
            address = parseAddress(interface)
            if address is None:
                self._warn(f"proxy_interfaces: {interface} is not an IP address; not used for mail loop detection")
            else:
                addresses.add(address)
        self.mxOptions = dict(
            randomize=settings.randomize,
            mxAddressLimit=settings.mxAddressLimit,
            mxSessionLimit=settings.mxSessionLimit,
            ignoreMxLookupError=settings.ignoreMxLookupError,
            deferIfNoMxAddressFound=settings.deferIfNoMxAddressFound,
            disableDnsLookups=settings.dnsDisabled,  # disable_dns_lookups or smtp_dns_support_level
            dnssec=settings.dnssec,  # smtp_dns_support_level = dnssec: Hosts say what was validated (DANE)
            hostLookup=settings.hostLookup,
            families=settings.families,
            addressPreference=settings.addressPreference,
            balanceInetProtocols=settings.balanceInetProtocols,
            myAddresses=frozenset(addresses),
            myHostnames=frozenset({settings.myHostname}),
            bestMxTransport=settings.bestMxTransport,
            lmtp=self.lmtp,
            maillog=self.maillog,
        )
        self.transports = getattr(context, "transports", None)
        self.tables = getattr(context, "tables", None)  # the session's *_address_maps (mta.delivery.smtpquirks)
        self.sasl = _saslClient(settings, context, self.reactor)  # smtp_sasl_* (mta.delivery.smtpsasl)

    def _warn(self, text):
        from twisted.logger import LogLevel

        self.maillog.emit(f"warning: {text}", None, LogLevel.warn)

    def deliver(self, request):
        return Deferred.fromCoroutine(self._deliver(request))

    def stop(self):
        if self.sasl is not None:
            self.sasl.close()
        if self.tlsPolicy.sts is not None:
            self.tlsPolicy.sts.close()
        return self.cache.closeAll()

    # -- one request ---------------------------------------------------------------

    async def _deliver(self, request):
        pending = {r.index for r in request.recipients}
        final, last = {}, {}
        problem = None
        destinations = [request.nexthop] + [r for r in self.settings.fallbackRelays if r != request.nexthop]
        sites = {}  # destination -> (Nexthop, SitePolicy), or a problem tuple
        first = await self._site(request, destinations[0])
        sites[destinations[0]] = first
        usable = isinstance(first, tuple) and len(first) == 2
        cached = self.cache.take(self._cacheKey(request.nexthop, first[1].reuseKey,
                                                self._saslLabel(request))) if usable else None
        if cached is not None and not self._tlsAllows(cached.session, first[1]):
            cached.session.quit()
            cached = None
        if cached is not None:
            outcome = await self._reuse(request, pending, cached)
            if outcome is not None:
                for result in _withSuccessAction(outcome):
                    if result.index in outcome.retry:
                        last[result.index] = result
                    else:
                        final[result.index] = result
                        pending.discard(result.index)
        for number, destination in enumerate(destinations):
            if not pending:
                break
            isRelay = number > 0 or destination == self.settings.relayhost
            found = sites.get(destination) or await self._site(request, destination)
            if len(found) == 3:
                problem = found
                if found[1] == "4.3.5":  # a bad next-hop: the next ones are not tried (as before)
                    break
                continue
            nexthop, site = found
            if nexthop.kind == "unix":
                hosts = [None]
                sessionLimit = 0
                final_ = True
            else:
                try:
                    hosts = await destinationHosts(self.resolver, nexthop, relay=isRelay, **self.mxOptions)
                except DeliveryProblem as e:
                    problem = (e.status, e.dsn, e.text)
                    if e.status == "bounced" or getattr(e, "loops", False):
                        break
                    continue
                if isinstance(hosts, PassToTransport):
                    return await self._pass(request, hosts)
                sessionLimit = hosts.sessionLimit
                final_ = hosts.foundMyself
            sessions = 0
            for host in hosts:
                if sessionLimit and sessions >= sessionLimit:
                    break
                hostSite = site
                if host is not None:
                    reason = self.tlsPolicy.hostAllowed(site, host)
                    if reason is not None:
                        self.maillog.emit(f"{host.name}[{host.address}]:{host.port}: skipped: {reason}",
                                          request.queue_id)
                        problem = ("deferred", "4.7.5", reason)
                        continue
                    hostSite = await self.tlsPolicy.forHost(site, host)
                    if hostSite.failure is not None:
                        self._recordPolicyFailure(request, hostSite, host)
                        problem = (_failureStatus(hostSite.failure), hostSite.failure.dsn, hostSite.failure.text)
                        continue
                outcome, error = await self._session(request, pending, nexthop, host, destination, site=hostSite,
                                                     siteKey=site.reuseKey)
                if error is not None:
                    problem = ("deferred", "4.4.1", error)
                    continue
                sessions += 1
                for result in _withSuccessAction(outcome):
                    if result.index in outcome.retry:
                        last[result.index] = result
                    else:
                        final[result.index] = result
                        pending.discard(result.index)
                if not pending:
                    break
            if not pending or final_:
                break
        results = []
        for recipient in request.recipients:
            result = final.get(recipient.index) or last.get(recipient.index)
            if result is None:
                status, dsn, text = problem or ("deferred", "4.4.1", "no destination host could be reached")
                result = RecipientResult(recipient.index, status, dsn, text)
            results.append(result)
        return results

    async def _pass(self, request, passing):
        """best_mx_transport: this host is the best MX; hand the request to that transport."""
        transport = self.transports(passing.transport) if self.transports is not None else None
        if transport is None or transport is self:
            text = f"{passing.reason}; best_mx_transport {passing.transport} is not available"
            return [RecipientResult(r.index, "deferred", "4.3.5", text) for r in request.recipients]
        nexthop = passing.nexthop or request.nexthop
        return await transport.deliver(attrs.evolve(request, transport=passing.transport, nexthop=nexthop))

    def _content(self, session, request):
        """
        The content source for a session, chosen after EHLO (the session
        calls it after 354): as stored, or converted to 7-bit MIME when the
        server lacks 8BITMIME (disable_mime_output_conversion = no).
        """

        def content():
            if not self.settings.disableMimeOutputConversion and "8BITMIME" not in session.extensions:
                return _converted(self.store, request)
            return _chunks(self.store, request)

        return content

    async def _site(self, request, destination):
        """
        (Nexthop, SitePolicy) of one destination, or a (status, dsn, text)
        problem: a next hop that cannot be parsed, or a TLS policy that
        defers (mta.delivery.tlspolicy).
        """
        try:
            nexthop = parseNexthop(destination, "lmtp" if self.lmtp else "smtp", self.settings.defaultPort)
        except ValueError as e:
            return ("deferred", "4.3.5", f"bad next-hop {destination!r}: {e}")
        if nexthop.kind == "unix":
            return nexthop, self.tlsPolicy.default(destination)
        site = await self.tlsPolicy.forDestination(nexthop, destination, request)
        if site.failure is not None:
            return (_failureStatus(site.failure), site.failure.dsn, site.failure.text)
        return nexthop, site

    def _tlsAllows(self, session, site):
        """
        May a cached connection serve this destination's TLS policy?  Only
        one made under the same policy (SitePolicy.reuseKey), and never a
        plaintext one where TLS is required.
        """
        if site.tls.required and not session.tlsActive:
            return False
        return getattr(session, "siteKey", None) == site.reuseKey

    def _cacheKey(self, destination, policyKey=None, identity=None):
        """
        The connection cache's key: the destination, the TLS policy (the
        destination's SitePolicy.reuseKey; the transport's ClientTls
        without one) and the SASL identity the connection logged in as, if
        any: a connection made under one policy never serves another.
        """
        return cacheKey(destination, self.settings.tls if policyKey is None else policyKey, identity)

    def _tlsReuse(self, site=None):
        """May a TLS connection be cached?  The policy's connection_reuse=, else smtp_tls_connection_reuse."""
        return site.connectionReuse if site is not None else self.settings.tlsConnectionReuse

    def _keep(self, key, session, remote, created, uses, site=None):
        """Cache an idle connection, unless it is a TLS one and TLS connection reuse is off (then QUIT)."""
        if session.tlsActive and not self._tlsReuse(site):
            session.quit()
            return
        self.cache.put(key, session, remote, created, uses)

    def _saslLabel(self, request):
        """
        The SASL part of the cache key: with sender-dependent SASL the sender
        (Postfix's cache label), so that a connection logged in with one
        sender's credentials never serves another; else None (the
        credentials are the destination's).
        """
        return self.sasl.cacheLabel(request) if self.sasl is not None else None

    async def _saslCredentials(self, request, remote, destination):
        """
        Are there SASL credentials for this delivery?  Then a failed TLS
        handshake under may is not retried in plaintext (Postfix's
        PLAINTEXT_FALLBACK_OK_AFTER_STARTTLS_FAILURE): the server may not
        offer AUTH there, and the mail would be refused as a relay attempt.
        """
        if self.sasl is None or not self.sasl.policy.active:
            return False
        try:
            return await self.sasl.credentials(request.envelope.sender, remote.name, destination) is not None
        except Exception:
            return True

    def _cacheable(self, destination):
        if not self.settings.cacheConnection:  # lmtp_cache_connection = no
            return False
        return self.settings.cacheOnDemand or destination in self.settings.cacheDestinations

    async def _reuse(self, request, pending, cached):
        """Deliver over a cached connection after an RSET; the outcome, or None if it was not usable."""
        try:
            usable = await cached.session.reset()
        except Exception:
            usable = False
        if not usable:
            return None
        uses = cached.uses + 1
        session = cached.session
        if session.tlsInfo is not None and session.site.tls.loglevel >= 1 and session.tlsVerdict is not None:
            # Postfix's line for a cached TLS connection used again (TLS_USAGE_USED).
            self.maillog.emit(attrs.evolve(session.tlsInfo, reused=True).clientLogLine(
                cached.remote.relay, session.tlsVerdict.trust), request.queue_id)
        self._recordReuse(request, session, cached.remote)
        subrequest = attrs.evolve(request, recipients=tuple(r for r in request.recipients if r.index in pending))
        outcome = await cached.session.deliver(subrequest, self._content(cached.session, request), cached.remote,
                                               keepOpen=True)
        self._chatNotify(cached.session, request, cached.remote)
        outcome = attrs.evolve(outcome, results=tuple(attrs.evolve(r, conn_use=uses) for r in outcome.results))
        if outcome.reusable:
            key = self._cacheKey(request.nexthop, cached.session.siteKey, self._saslLabel(request))
            self._keep(key, cached.session, cached.remote, cached.created, uses, getattr(cached.session, "site", None))
        return outcome

    def _recordPolicyFailure(self, request, site, host):
        """TLS-RPT: a DANE policy failure of one host (dane-required, tlsa-invalid, dnssec-invalid)."""
        from mta.delivery.tlsrpt import daneFailureType

        reporter = self.tlsPolicy.reporter
        failureType = daneFailureType(site.failure.text)
        if reporter is None or failureType is None or reporter.ignores(request):
            return
        from mta.delivery.tlspolicy import TlsResult

        self.tlsPolicy.record(site, host, TlsResult(False, failureType, site.failure.text, policyType="tlsa"))

    def _recordReuse(self, request, session, remote):
        """TLS-RPT: a cached TLS connection used again counts only with smtp_tlsrpt_skip_reused_handshakes = no."""
        reporter = self.tlsPolicy.reporter
        if reporter is None or reporter.skipReused or not session.tlsActive or reporter.ignores(request):
            return
        from mta.delivery.tlspolicy import TlsResult

        self.tlsPolicy.record(session.site, remote, TlsResult(True), sendingIp=session.localAddress())

    async def _session(self, request, pending, nexthop, host, destination, tlsLevel=None, site=None, siteKey=None):
        """
        One connection and session; (SessionOutcome, None) or (None, connect
        error text).  Under smtp_tls_security_level = may a failed TLS
        handshake is followed by a new connection to the same host in
        plaintext (tlsLevel "none"), as Postfix does.
        """
        if host is None:  # LMTP over a UNIX socket
            endpoint = UNIXClientEndpoint(self.reactor, nexthop.name, timeout=self.settings.connectTimeout)
            remote = RemoteHost(self.settings.myHostname, nexthop.name, None)  # Postfix: myhostname[/path]
        else:
            v6 = ":" in host.address
            bind = self.settings.bind6 if v6 else self.settings.bind4
            factory = TCP6ClientEndpoint if v6 else TCP4ClientEndpoint
            endpoint = factory(self.reactor, host.address, host.port, timeout=self.settings.connectTimeout,
                               bindAddress=(bind, 0) if bind else None)
            remote = RemoteHost(await self._serverName(host), host.address, host.port)
        transcript = Transcript(maxLines=TRANSCRIPT_LINES) if self.keepTranscripts else None
        if site is None:
            site = self.tlsPolicy.default(destination)
        tls = self.tlsPolicy.context(site.tls) if site.tls.level != "none" or site.tls.wrapperMode else None
        session = SMTPClientSession(self.settings, self.reactor, self.maillog, transcript=transcript, tls=tls,
                                    tlsLevel=tlsLevel, site=site, policy=self.tlsPolicy, sasl=self.sasl,
                                    destination=destination)
        session.siteKey = site.reuseKey if siteKey is None else siteKey  # what a cached reuse must match
        session.tlsSessions = self.tlsSessions
        session.tables = self.tables
        try:
            await connectProtocol(endpoint, session)
        except Exception as e:
            return None, f"connect to {remote.relay}: {_connectError(e)}"
        created = self.reactor.seconds()
        keepOpen = self._cacheable(destination) and destination == request.nexthop
        subrequest = attrs.evolve(request, recipients=tuple(r for r in request.recipients if r.index in pending))
        outcome = await session.deliver(subrequest, self._content(session, request), remote, keepOpen=keepOpen)
        self._chatNotify(session, request, remote)
        if keepOpen and outcome.reusable:
            self._keep(self._cacheKey(destination, session.siteKey, self._saslLabel(request)),
                       session, remote, created, 1, site)
        policy = site.tls
        if session.tlsFailed and tlsLevel is None and policy.level == "may" and not policy.wrapperMode \
                and not await self._saslCredentials(request, remote, destination):
            self.maillog.emit(f"{remote.relay}: TLS handshake failed; trying again without TLS (smtp_tls_security_level"
                              f" = may)", request.queue_id)
            return await self._session(request, pending, nexthop, host, destination, tlsLevel="none", site=site,
                                       siteKey=siteKey)
        return outcome, None


    async def _serverName(self, host):
        """
        The server's name for the log and the TLS name checks: the MX or
        host name, or with smtp_cname_overrides_servername = yes the end of
        its DNS CNAME chain (Postfix's rname; SMTP_HNAME()).  Not for
        addresses, nor without DNS; a failed lookup keeps the name.
        """
        name = host.name
        lookup = getattr(self.resolver, "lookupRecords", None)
        if (not self.settings.cnameOverridesServername or lookup is None or not name or name == host.address
                or self.settings.disableDnsLookups or "dns" not in self.settings.hostLookup):
            return name
        from mta.delivery.dns import MAX_CNAME, nameText

        for _ in range(MAX_CNAME):
            try:
                records = await lookup(name, "CNAME")
            except Exception:
                break
            if not records:
                break
            name = nameText(records[0].target)
        return name

    def _chatNotify(self, session, request, remote):
        """
        Postfix's smtp_chat_notify() from smtp_cleanup_session(): after a
        delivery on a session whose errors notify_classes lists, the
        transcript goes to the postmaster, unless the mail is itself a
        bounce or a postmaster notice ("Don't send notifications about
        errors while sending notifications"); then it starts afresh for
        the next delivery on the connection.
        """
        transcript = session.transcript
        if transcript is None:
            return
        sender = request.envelope.sender
        if self.notices is not None and self.notices.due(transcript) and sender and sender.lower() != self.notices.sender.lower():
            role = "LMTP client" if self.lmtp else "SMTP client"
            self.notices.send(role, remote.relay, transcript, preface=f"Unexpected response from {remote.relay}.")
        transcript.clear()


def _stsCachePath(settings, context):
    """smtp_mta_sts_cache_file, or mta-sts.sqlite in the queue directory (None: no store, memory only)."""
    path = settings.mtaStsCacheFile.strip()
    if path:
        return path
    directory = getattr(getattr(context, "store", None), "directory", None)
    return os.path.join(directory, "mta-sts.sqlite") if isinstance(directory, str) and directory else None


def _saslClient(settings, context, clock):
    """The transport's SaslClient (its tables opened once), or None without smtp_sasl_auth_enable."""
    if not settings.sasl.active:
        return None
    tables = getattr(context, "tables", None)
    if tables is None:
        from mta.tables import Tables

        tables = Tables(clock)
    return SaslClient(settings.sasl, tables, clock, lmtp=settings.lmtp)


def _connectError(e):
    """Postfix's wording of a failed connect: the errno text."""
    from twisted.internet import error

    code = getattr(e, "osError", None)
    if isinstance(code, int):
        return os.strerror(code)
    if isinstance(e, error.TimeoutError):
        return "Connection timed out"
    if isinstance(e, error.ConnectionRefusedError):
        return "Connection refused"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__

