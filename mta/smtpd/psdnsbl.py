"""mta.smtpd.psdnsbl - postscreen's DNSBL score (postscreen_dnsbl_sites), as postscreen_dnsbl.c.

    Dnsbl(settings, dns, clock, replyMaps, maillog)
        start(address) -> DnsblScore     every list asked at once
        displayName(domain) -> Deferred  postscreen_dnsbl_reply_map's name
    DnsblScore: total (the sum of the weights of the lists whose A
        records match their pattern), name (the domain of the heaviest
        matching list), ttl, finished, done (a Deferred)

Each list is asked by mta's DNS client (mta.delivery.dns, cached and
non-blocking) with the client address reversed (IPv6: nibbles), within
postscreen_dnsbl_timeout; a timeout or a temporary failure is a warning and
counts as not listed.  The result's TTL is psc_dnsbl_receive's: for a
score above 0 the smallest TTL of the answers that count against the
client (listings on block lists, absences on allow lists), else of the
others, clamped to postscreen_dnsbl_min_ttl .. postscreen_dnsbl_max_ttl
(no TTL known: the minimum).

SECURITY
    The query is made from the socket's peer address (never client text);
    A records are compared as dotted text; a reply-map value is shown in a
    reply as the configuration gives it.

CONFIGURATION
    postscreen_dnsbl_sites, postscreen_dnsbl_timeout,
    postscreen_dnsbl_min_ttl, postscreen_dnsbl_max_ttl,
    postscreen_dnsbl_reply_map (mta.config.settings.postscreen).

DEVIATIONS
    No dnsblog(8) process: the DNS client asks directly, and the lists'
    answers are shared by concurrent connections through its cache and
    in-flight queries rather than postscreen's score table.
"""

from twisted.internet.defer import Deferred, DeferredList

from mta.smtpd.psengine import formatDelay

__all__ = ["Dnsbl", "DnsblScore"]


class Dnsbl:
    """postscreen_dnsbl_sites: the score of a client address, its heaviest list and the TTL of the result."""

    def __init__(self, settings, dns, clock, replyMaps, maillog):
        self.sites = settings.dnsblSites
        self.domains = tuple(dict.fromkeys(site.spec.domain for site in self.sites))
        self.timeout = settings.dnsblTimeout
        self.minTTL, self.maxTTL = settings.dnsblMinTTL, settings.dnsblMaxTTL
        self.dns = dns  # a callable that returns the DNS client (mta.delivery.dns.Resolver), or None
        self.clock = clock
        self.replyMaps = replyMaps
        self.maillog = maillog

    def start(self, address):
        """A DnsblScore for C{address}, its lookups started."""
        return DnsblScore(self, address)

    async def displayName(self, domain):
        """postscreen_dnsbl_reply_map: the name shown for C{domain} (the domain itself when not mapped)."""
        from mta.tables import TableError, TableTemporaryError

        for table in self.replyMaps:
            try:
                value = await table.lookup(domain)
            except (TableError, TableTemporaryError) as e:
                self.maillog.emit(f"warning: postscreen_dnsbl_reply_map lookup error for {domain}: {e}")
                return domain
            if value is not None:
                return value.strip() or domain
        return domain

    def clampTTL(self, ttl):
        ttl = self.minTTL if ttl is None or ttl < 0 else ttl
        return max(self.minTTL, min(self.maxTTL, ttl))


class DnsblScore:
    """The DNSBL lookups of one connection; C{done} fires when every list has answered (or timed out)."""

    def __init__(self, dnsbl, address):
        self.dnsbl = dnsbl
        self.address = address
        self.total = 0
        self.name = None  # the domain of the heaviest matching list
        self.weight = None
        self.passTTL = None
        self.failTTL = None
        self.pending = 0
        self.finished = False
        self.done = Deferred()
        lookups = [Deferred.fromCoroutine(self._ask(domain)) for domain in dnsbl.domains]
        self.pending = len(lookups)
        if not lookups:
            self._finish(None)
            return
        DeferredList(lookups, consumeErrors=True).addCallback(self._finish)

    def _finish(self, _):
        self.finished = True
        self.done.callback(self)

    @property
    def ttl(self):
        """The result's lifetime: the failing TTL when listed (score > 0), else the passing one, clamped."""
        return self.dnsbl.clampTTL(self.failTTL if self.total > 0 else self.passTTL)

    async def _ask(self, domain):
        from mta.delivery.dns import DNSError
        from mta.smtpd.dnsxl import clientQuery

        dnsbl = self.dnsbl
        query = clientQuery(self.address, domain)
        resolver = dnsbl.dns() if dnsbl.dns is not None else None
        if resolver is None:
            return
        d = resolver.lookupRecords(query, "A")
        d.addTimeout(dnsbl.timeout, dnsbl.clock)
        try:
            records = await d
        except DNSError as e:
            if e.temporary:
                dnsbl.maillog.emit(f"warning: dnsblog_query: lookup error for DNS query {query}: {e.text}")
                return
            records = []  # not listed (NXDOMAIN, no A record)
        except Exception as e:  # the timeout (CancelledError/TimeoutError), or a resolver bug
            dnsbl.maillog.emit(f"warning: dnsblog reply timeout {formatDelay(dnsbl.timeout)}s for {domain}"
                               if type(e).__name__ in ("TimeoutError", "CancelledError")
                               else f"warning: dnsblog_query: lookup error for DNS query {query}: {e}")
            return
        addresses = [getattr(rdata, "address", "") for rdata in records]
        cachedTTL = getattr(resolver, "cachedTTL", None)
        ttl = cachedTTL(query, "A") if cachedTTL is not None else None
        ttl = -1 if ttl is None else ttl
        # As psc_dnsbl_receive: with records, each list's weight counts when its pattern matches, and
        # the answer's TTL is a failing one for a block list (weight > 0), a passing one for an allow
        # list; without records the other way round.
        for site in dnsbl.sites:
            if site.spec.domain != domain:
                continue
            if addresses and (site.spec.octets is None or any(site.spec.matches(a) for a in addresses)):
                if self.name is None or self.weight < site.weight:
                    self.name, self.weight = domain, site.weight
                self.total += site.weight
            failing = (site.weight > 0) == bool(addresses)
            if failing:
                self.failTTL = _smaller(self.failTTL, ttl)
            else:
                self.passTTL = _smaller(self.passTTL, ttl)


def _smaller(current, ttl):
    """The smaller TTL, where None or a negative value means "no TTL yet"."""
    return ttl if current is None or current < 0 or current > ttl else current
