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

Not yet: the connection cache (smtp_connection_cache_*), TLS.

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
    and the session parameters of mta.delivery.smtpclient.
"""

import os

import attrs
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint, connectProtocol
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import IDeliveryTransport
from mta.model import RecipientResult
from mta.queue.fileformat import readContent
from mta.delivery.mx import DeliveryProblem, PassToTransport, destinationHosts, parseInetProtocols
from mta.delivery.nexthop import parseNexthop
from mta.delivery.smtpclient import ClientSettings, RemoteHost, SMTPClientSession

log = Logger()

CHUNK = 65536


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
        addresses = {a.split(":")[0] for _, e in context.listenerDescriptions() for a in [_interface(e)] if a}
        addresses.update(params["proxy_interfaces"])
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
            myAddresses=frozenset(a for a in addresses if a not in ("0.0.0.0", "::")),
            myHostnames=frozenset({params["myhostname"]}),
            lmtp=lmtp,
        )

    def deliver(self, request):
        return Deferred.fromCoroutine(self._deliver(request))

    def stop(self):
        from twisted.internet.defer import succeed

        return succeed(None)

    # -- one request ---------------------------------------------------------------

    async def _deliver(self, request):
        pending = {r.index for r in request.recipients}
        final, last = {}, {}
        problem = None
        destinations = [request.nexthop] + [r for r in self.fallbackRelays if r != request.nexthop]
        for number, destination in enumerate(destinations):
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
                    problem = ("deferred", "4.3.5", f"{hosts.reason} (best_mx_transport is not supported)")
                    break
                sessionLimit = hosts.sessionLimit
                final_ = hosts.foundMyself
            sessions = 0
            for host in hosts:
                if sessionLimit and sessions >= sessionLimit:
                    break
                outcome, error = await self._session(request, pending, nexthop, host)
                if error is not None:
                    problem = ("deferred", "4.4.1", error)
                    continue
                sessions += 1
                for result in outcome.results:
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

    async def _session(self, request, pending, nexthop, host):
        """One connection and session; (SessionOutcome, None) or (None, connect error text)."""
        if host is None:  # LMTP over a UNIX socket
            endpoint = UNIXClientEndpoint(self.reactor, nexthop.name, timeout=self.connectTimeout)
            remote = RemoteHost(nexthop.name, "private/unix", None)
        else:
            v6 = ":" in host.address
            bind = self.bind6 if v6 else self.bind4
            factory = TCP6ClientEndpoint if v6 else TCP4ClientEndpoint
            endpoint = factory(self.reactor, host.address, host.port, timeout=self.connectTimeout,
                               bindAddress=(bind, 0) if bind else None)
            remote = RemoteHost(host.name, host.address, host.port)
        session = SMTPClientSession(self.settings, self.reactor)
        try:
            await connectProtocol(endpoint, session)
        except Exception as e:
            return None, f"connect to {remote.relay}: {_connectError(e)}"
        subrequest = attrs.evolve(request, recipients=tuple(r for r in request.recipients if r.index in pending))
        outcome = await session.deliver(subrequest, _chunks(self.store, request), remote)
        return outcome, None


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


def _interface(endpoint):
    """The interface address in a listener's endpoint description ('' for all)."""
    for part in endpoint.split(":"):
        if part.startswith("interface="):
            return part[len("interface="):]
    return ""
