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
idle limit makes cheap.  Not yet: TLS.

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
the double-bounce address.  The client has no other class: Postfix's smtp
sets only protocol and data (a table lookup that fails: the client's
header/body checks, reply filter and EHLO keyword maps, which mta's client
does not have), and no delivery agent, the queue manager or bounce(8)
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
    smtp_connection_reuse_count_limit, disable_mime_output_conversion,
    notify_classes (protocol: see below), error_notice_recipient,
    bounce_notice_recipient, double_bounce_sender, best_mx_transport (mail whose best
    MX is this host goes to that transport, e.g. virtual), syslog_name,
    the [listener:NAME] endpoints, and the session parameters of
    mta.delivery.smtpclient.

DEVIATIONS FROM POSTFIX
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

from mta.cleanup import Cleanup
from mta.config.settings.cleanup import CleanupSettings
from mta.config.settings.notices import NoticeSettings
from mta.interfaces import IDeliveryTransport
from mta.maillog import MailLogger
from mta.model import RecipientResult
from mta.queue.fileformat import readContent
from mta.delivery.localaddr import listenerAddresses, parseAddress
from mta.delivery.mime7bit import to7bit
from mta.delivery.mx import DeliveryProblem, PassToTransport, destinationHosts, parseInetProtocols
from mta.delivery.nexthop import parseNexthop
from mta.delivery.smtpclient import ClientSettings, RemoteHost, SMTPClientSession
from mta.transcript import Transcript, TranscriptNotices

log = Logger()

CHUNK = 65536
# The notify_classes a client session can meet (Postfix's smtp error_mask: protocol; its data
# class is for table lookups that mta's client does not make).
CLIENT_ERROR_CLASSES = frozenset({"protocol"})
# Lines of a client session's transcript kept for a postmaster notice: the first and the last half.
TRANSCRIPT_LINES = 400


def _withSuccessAction(outcome):
    """Mark sent results: the next hop took NOTIFY (it reports success), or our notice's action."""
    action = "none" if outcome.dsnOffered else outcome.successAction
    return tuple(attrs.evolve(r, success_action=action) if r.status == "sent" else r for r in outcome.results)


def _converted(store, request):
    """The whole content, converted to 7-bit MIME (mta.delivery.mime7bit) in the thread pool."""

    def load():
        data = b"".join(readContent(request.path, request.content_offset, request.content_length, CHUNK))
        return to7bit(data)

    async def chunks():
        yield await store.inPool(load)

    return chunks()


def _chunks(store, request):
    """The message content, read in the store's thread pool one chunk at a time."""

    async def chunks():
        reader = readContent(request.path, request.content_offset, request.content_length, CHUNK)
        while True:
            chunk = await store.inPool(next, reader, None)
            if chunk is None:
                return
            yield chunk

    return chunks()


@attrs.define
class _Cached:
    session: object
    remote: object
    created: float
    uses: int
    expiry: object  # the DelayedCall that closes it when idle too long


class ConnectionCache:
    """Idle connections by destination, each closed after C{idleLimit} seconds."""

    def __init__(self, clock, idleLimit, reuseLimit, countLimit):
        self.clock = clock
        self.idleLimit = idleLimit
        self.reuseLimit = reuseLimit
        self.countLimit = countLimit
        self._idle = {}  # destination -> [_Cached]

    def put(self, destination, session, remote, created, uses):
        if self.countLimit and uses >= self.countLimit:
            session.quit()
            return
        if self.clock.seconds() - created >= self.reuseLimit:
            session.quit()
            return
        entry = _Cached(session, remote, created, uses, None)
        entry.expiry = self.clock.callLater(self.idleLimit, self._expire, destination, entry)
        self._idle.setdefault(destination, []).append(entry)

    def take(self, destination):
        """An idle connection reached for C{destination}, or None."""
        entries = self._idle.get(destination)
        while entries:
            entry = entries.pop()
            if entry.expiry.active():
                entry.expiry.cancel()
            if self.clock.seconds() - entry.created < self.reuseLimit:
                if not entries:
                    del self._idle[destination]
                return entry
            entry.session.quit()
        self._idle.pop(destination, None)
        return None

    def _expire(self, destination, entry):
        entries = self._idle.get(destination, [])
        if entry in entries:
            entries.remove(entry)
            if not entries:
                del self._idle[destination]
            entry.session.quit()

    def closeAll(self):
        from twisted.internet.defer import DeferredList

        quits = []
        for entries in self._idle.values():
            for entry in entries:
                if entry.expiry.active():
                    entry.expiry.cancel()
                quits.append(entry.session.quit())
        self._idle.clear()
        return DeferredList(quits, consumeErrors=True)


@implementer(IDeliveryTransport)
class SMTPTransport:
    def __init__(self, name, params, context, lmtp=False):
        self.name = name
        self.lmtp = lmtp
        self.reactor = context.clock
        self.store = context.store
        self.resolver = context.resolver
        self.settings = ClientSettings.fromParameters(params, lmtp=lmtp)
        self.connectTimeout = params["smtp_connect_timeout"]
        self.relayhost = params["relayhost"]
        self.fallbackRelays = tuple(params["smtp_fallback_relay"])
        self.bind4 = params["smtp_bind_address"] or None
        self.bind6 = params["smtp_bind_address6"] or None
        self.defaultPort = params["lmtp_tcp_port"] if lmtp else None
        self.convert8bit = not params["disable_mime_output_conversion"]
        self.cacheAll = params["smtp_connection_cache_on_demand"]
        self.cacheDestinations = frozenset(params["smtp_connection_cache_destinations"])
        self.cache = ConnectionCache(self.reactor, params["smtp_connection_cache_time_limit"],
                                     params["smtp_connection_reuse_time_limit"],
                                     params["smtp_connection_reuse_count_limit"])
        self.maillog = MailLogger(params["syslog_name"], name)
        # Transcripts go through the one cleanup: the generation's ([main]), or one of our own.
        cleanup = getattr(context, "cleanup", None) or Cleanup(
            CleanupSettings.build(params), self.store, self.reactor,
            getattr(context, "maillogFor", None) or (lambda program: MailLogger(params["syslog_name"], program)))
        self.notices = TranscriptNotices(NoticeSettings.build(params), cleanup, self.reactor, self.maillog)
        self.keepTranscripts = self.notices.wants(CLIENT_ERROR_CLASSES)
        addresses = listenerAddresses([e for _, e in context.listenerDescriptions()], warn=self._warn)
        for interface in params["proxy_interfaces"]:
            address = parseAddress(interface)
            if address is None:
                self._warn(f"proxy_interfaces: {interface} is not an IP address; not used for mail loop detection")
            else:
                addresses.add(address)
        self.mxOptions = dict(
            randomize=params["smtp_randomize_addresses"],
            mxAddressLimit=params["smtp_mx_address_limit"],
            mxSessionLimit=params["smtp_mx_session_limit"],
            ignoreMxLookupError=params["ignore_mx_lookup_error"],
            deferIfNoMxAddressFound=params["smtp_defer_if_no_mx_address_found"],
            disableDnsLookups=params["disable_dns_lookups"],
            hostLookup=tuple(params["smtp_host_lookup"]),
            families=parseInetProtocols(params["inet_protocols"]),
            addressPreference=params["smtp_address_preference"],
            balanceInetProtocols=params["smtp_balance_inet_protocols"],
            myAddresses=frozenset(addresses),
            myHostnames=frozenset({params["myhostname"]}),
            bestMxTransport=params["best_mx_transport"],
            lmtp=lmtp,
            maillog=self.maillog,
        )
        self.transports = getattr(context, "transports", None)

    def _warn(self, text):
        from twisted.logger import LogLevel

        self.maillog.emit(f"warning: {text}", None, LogLevel.warn)

    def deliver(self, request):
        return Deferred.fromCoroutine(self._deliver(request))

    def stop(self):
        return self.cache.closeAll()

    # -- one request ---------------------------------------------------------------

    async def _deliver(self, request):
        pending = {r.index for r in request.recipients}
        final, last = {}, {}
        problem = None
        destinations = [request.nexthop] + [r for r in self.fallbackRelays if r != request.nexthop]
        cached = self.cache.take(request.nexthop)
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
            isRelay = number > 0 or destination == self.relayhost
            try:
                nexthop = parseNexthop(destination, "lmtp" if self.lmtp else "smtp", self.defaultPort)
            except ValueError as e:
                problem = ("deferred", "4.3.5", f"bad next-hop {destination!r}: {e}")
                break
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
                outcome, error = await self._session(request, pending, nexthop, host, destination)
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
            if self.convert8bit and "8BITMIME" not in session.extensions:
                return _converted(self.store, request)
            return _chunks(self.store, request)

        return content

    def _cacheable(self, destination):
        return self.cacheAll or destination in self.cacheDestinations

    async def _reuse(self, request, pending, cached):
        """Deliver over a cached connection after an RSET; the outcome, or None if it was not usable."""
        try:
            usable = await cached.session.reset()
        except Exception:
            usable = False
        if not usable:
            return None
        uses = cached.uses + 1
        subrequest = attrs.evolve(request, recipients=tuple(r for r in request.recipients if r.index in pending))
        outcome = await cached.session.deliver(subrequest, self._content(cached.session, request), cached.remote,
                                               keepOpen=True)
        self._chatNotify(cached.session, request, cached.remote)
        outcome = attrs.evolve(outcome, results=tuple(attrs.evolve(r, conn_use=uses) for r in outcome.results))
        if outcome.reusable:
            self.cache.put(request.nexthop, cached.session, cached.remote, cached.created, uses)
        return outcome

    async def _session(self, request, pending, nexthop, host, destination):
        """One connection and session; (SessionOutcome, None) or (None, connect error text)."""
        if host is None:  # LMTP over a UNIX socket
            endpoint = UNIXClientEndpoint(self.reactor, nexthop.name, timeout=self.connectTimeout)
            remote = RemoteHost(self.settings.myHostname, nexthop.name, None)  # Postfix: myhostname[/path]
        else:
            v6 = ":" in host.address
            bind = self.bind6 if v6 else self.bind4
            factory = TCP6ClientEndpoint if v6 else TCP4ClientEndpoint
            endpoint = factory(self.reactor, host.address, host.port, timeout=self.connectTimeout,
                               bindAddress=(bind, 0) if bind else None)
            remote = RemoteHost(host.name, host.address, host.port)
        transcript = Transcript(maxLines=TRANSCRIPT_LINES) if self.keepTranscripts else None
        session = SMTPClientSession(self.settings, self.reactor, self.maillog, transcript=transcript)
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
            self.cache.put(destination, session, remote, created, 1)
        return outcome, None


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
        if self.notices.due(transcript) and sender and sender.lower() != self.notices.sender.lower():
            role = "LMTP client" if self.lmtp else "SMTP client"
            self.notices.send(role, remote.relay, transcript, preface=f"Unexpected response from {remote.relay}.")
        transcript.clear()


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

