"""mta.delivery.dns - a non-blocking DNS stub resolver for the SMTP client.

Resolver sends recursive queries to the configured name servers and never
blocks the reactor.  It is the lookup logic; its parts are

    mta.delivery.dnswire    one query to one server: UDP, TCP when
                            truncated, EDNS0 and its fall-back, the
                            name server list (dns_servers, resolv.conf)
    mta.delivery.dnscache   the TTL cache and the queries in flight

    lookupMX(domain)          -> Deferred[list[(preference, exchange)]]
    lookupAddresses(name, families=("ipv4", "ipv6"), preference="any")
                              -> Deferred[list[str]]
    lookupRecords(name, rdtype) -> Deferred[list[dnspython rdata]]

    With dnssec=True (smtp_dns_support_level = dnssec) each of them asks
    with the DO and AD bits and returns an Answer: the same list, with
    ``secure`` (every reply of the CNAME chain had the AD bit, from a
    trusted server) and ``name`` (the last name of the chain: the
    CNAME-expanded name that RFC 7672 2.2.3 looks TLSA records up at).

Results: a list (empty for NODATA: the name exists without records of the
type).  Failures: DNSError, with ``temporary`` (SERVFAIL, REFUSED and
every other error rcode, timeouts, network errors: try again later) or
permanent (NXDOMAIN, "Host or domain name not found", and names that are
not valid domain names).  The text is Postfix's ("Host or domain name not
found. Name service error for name=example.com type=MX: Host not found,
try again"); ``detail`` says what happened at which server, for the log.

Retries follow the C library's resolver: ``attempts`` rounds over all
servers, ``timeout`` seconds for each query; a server answering with an
error rcode (SERVFAIL, REFUSED, ...) makes the query go to the next one.

CNAME chains in an answer are followed (at most 10 links, as Postfix's
dns_lookup()); a chain that ends without data and without an SOA record
(a server that did not chase it) is continued with a new query.  Names
may be given as U-labels (converted to A-labels with dnspython's IDNA
codec: UTS 46 non-transitional, as Postfix, when dnspython has IDNA 2008
support, else IDNA 2003) or A-labels, with or without a trailing dot.
Results are lower case, without the trailing dot; the null MX exchange
(RFC 7505) is ".".

Answers are cached (mta.delivery.dnscache) for their TTL, negative ones
per RFC 2308, bounded by maxTTL, maxNegativeTTL and cacheSize; temporary
failures are not cached.  Identical queries in flight at the same time
share one exchange.  Time comes from the clock (IReactorTime) given, the
reactor by default.

SystemResolver does the same address lookup with getaddrinfo() in the
reactor's thread pool (smtp_host_lookup = native, disable_dns_lookups):
it sees /etc/hosts and NSS, and never blocks the reactor either.

Both provide mta.interfaces.IHostResolver; Resolver also IDNSResolver.

SECURITY
    Answers come from the network, and anybody can send UDP datagrams:
    see mta.delivery.dnswire for what is accepted as an answer.  Only
    answer records for the names of the chain that starts at the question
    are used; the additional and authority sections are never cached (the
    SOA only gives a negative TTL).  No 0x20 case randomization and no
    DNSSEC validation here: a validating resolver does it, and its AD
    bit says so.  The AD bit is believed only from a trusted server: one
    named in dns_servers (the administrator chose it), or a loopback
    address from /etc/resolv.conf (nobody on the network can forge the
    bit on the way); from any other server an answer is never "secure".
    Negative answers are never secure (a secure denial is not needed:
    no TLSA records and insecure TLSA records mean the same to DANE).

DEVIATIONS
    Postfix trusts the AD bit of whatever resolver /etc/resolv.conf
    names; mta trusts a resolv.conf server only on a loopback address
    (dns_servers entries are trusted as configured).

CONFIGURATION
    dns_servers (empty: /etc/resolv.conf).  The timeout (5 s) and attempts
    (2) are the C library's defaults; the cache bounds are constructor
    arguments.
"""

import ipaddress
import socket

import dns.exception
import dns.flags
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from mta.delivery.dnscache import NODATA, NXDOMAIN, DNSCache, Flight
from mta.delivery.dnswire import (  # noqa: F401 - parseServer and systemServers are this module's API too
    EDNS_PAYLOAD,
    DNSNetworkError,
    DNSTimeout,
    DNSWire,
    parseServer,
    serverText,
    systemServers,
)
from mta.interfaces import IDNSResolver, IHostResolver

__all__ = ["Answer", "DNSError", "Records", "Resolver", "SystemResolver", "nameServiceError", "nameText", "parseServer",
           "systemServers", "toASCII", "toName"]

log = Logger()

IDNA_CODEC = dns.name.IDNA_2008_Practical if dns.name.have_idna_2008 else dns.name.IDNA_2003_Practical

MAX_CNAME = 10

NOT_FOUND = "Host not found"
TRY_AGAIN = "Host not found, try again"
NO_DATA = "Host found but no data record of requested type"

FAMILIES = {"ipv4": dns.rdatatype.A, "ipv6": dns.rdatatype.AAAA}


class Records(tuple):
    """Records as the cache keeps them: a tuple, with C{secure} and the chain's last C{name}."""

    def __new__(cls, items=(), secure=False, name=None):
        self = super().__new__(cls, items)
        self.secure = secure
        self.name = name
        return self


class Answer(list):
    """
    The result of a dnssec=True lookup: a list (records, addresses or MX
    pairs) with C{secure} (DNSSEC-validated by a trusted resolver) and
    C{name} (the CNAME-expanded name, text, or None).
    """

    def __init__(self, items=(), secure=False, name=None):
        super().__init__(items)
        self.secure = secure
        self.name = name


def _isLoopback(address):
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


class DNSError(Exception):
    """
    A lookup failed.

    @ivar text: Postfix's wording, fit for a delivery status.
    @ivar temporary: True if the lookup may succeed later (defer, never
        bounce).
    @ivar rcode: the DNS rcode of the last answer (dns.rcode), or None
        (timeout, network error, invalid name, getaddrinfo() error).
    @ivar notFound: the name does not exist (NXDOMAIN and the like).
    @ivar detail: what happened where, for the log.
    """

    def __init__(self, text, *, temporary, rcode=None, notFound=False, name=None, rdtype=None,
                 detail=None):
        super().__init__(text)
        self.text = text
        self.temporary = temporary
        self.rcode = rcode
        self.notFound = notFound
        self.name = name
        self.rdtype = rdtype
        self.detail = detail

    def __repr__(self):
        kind = "temporary" if self.temporary else "permanent"
        return f"<DNSError {kind} rcode={self.rcode} {self.text!r} ({self.detail})>"


def nameServiceError(name, rdtype, what):
    """Postfix's dns_lookup() text for a failed lookup."""
    return f"Host or domain name not found. Name service error for name={name} type={rdtype}: {what}"


# Labels as the DNS client sends them: letters, digits, hyphen, underscore.
_LDH = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


def toName(text):
    """
    The absolute dns.name.Name for a host or domain name given as U-labels
    or A-labels, with or without a trailing dot.  Raises ValueError for
    anything that is not a valid host or domain name (IP addresses, the
    root, escapes, empty labels, labels with other characters than
    letters, digits, hyphen and underscore after IDNA conversion).
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a domain name")
    stripped = text.strip()
    if not stripped or stripped == "." or "\\" in stripped or "@" in stripped:
        raise ValueError(f"{text!r} is not a domain name")
    if _isAddress(stripped.rstrip(".")):
        raise ValueError(f"{text!r} is an address, not a domain name")
    try:
        name = dns.name.from_text(stripped, origin=dns.name.root, idna_codec=IDNA_CODEC)
    except (dns.exception.DNSException, UnicodeError, ValueError) as e:
        raise ValueError(f"{text!r} is not a valid domain name: {e}") from None
    for label in name.labels[:-1]:
        if not label or not set(label.lower().decode("ascii", "replace")) <= _LDH:
            raise ValueError(f"{text!r} is not a valid domain name")
    if len(name.labels) < 2:
        raise ValueError(f"{text!r} is not a domain name")
    return name


def toASCII(text):
    """The A-label form of a host or domain name, lower case, no trailing dot."""
    return nameText(toName(text))


def nameText(name):
    """A dns.name.Name as lower-case text without the trailing dot ('.' for the root)."""
    if name == dns.name.root:
        return "."
    return name.to_text(omit_final_dot=True).lower()


def _isAddress(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _orderAddresses(byFamily, families, preference):
    order = list(families)
    if preference in ("ipv4", "ipv6") and preference in order:
        order.remove(preference)
        order.insert(0, preference)
    return [address for family in order for address in byFamily.get(family, ())]


def _checkFamilies(families, preference):
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown address family {family!r} (ipv4 or ipv6)")
    if preference not in ("any", "ipv4", "ipv6"):
        raise ValueError(f"unknown address preference {preference!r} (any, ipv4 or ipv6)")


def _literal(name, families):
    """[address] if C{name} is an IP address of an enabled family, [] if of another, else None."""
    try:
        address = ipaddress.ip_address(name.strip().strip("[]"))
    except ValueError:
        return None
    return [str(address)] if f"ipv{address.version}" in families else []


@implementer(IDNSResolver)
class Resolver:
    """
    A caching stub resolver over UDP and TCP, on the reactor.

    @param reactor: provides IReactorUDP, IReactorTCP and IReactorTime.
    @param servers: name servers (L{parseServer} syntax, or (address, port)
        pairs); empty: those of /etc/resolv.conf.
    @param timeout: seconds to wait for one answer from one server.
    @param attempts: rounds over all servers.
    @param clock: IReactorTime for the cache (default: the reactor).
    @param edns, payload, rng: for the queries (mta.delivery.dnswire.DNSWire).

    @ivar wire: the DNSWire that sends the queries.
    @ivar cache: the DNSCache of answers.
    """

    def __init__(self, reactor, servers=(), timeout=5.0, attempts=2, *, clock=None, cacheSize=10000,
                 maxTTL=86400.0, maxNegativeTTL=3600.0, edns=True, payload=EDNS_PAYLOAD,
                 resolvConf="/etc/resolv.conf", rng=None):
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        parsed = []
        for server in servers or ():
            parsed.append(parseServer(server) if isinstance(server, str) else (str(server[0]), int(server[1])))
        self.servers = tuple(parsed) or systemServers(resolvConf)
        # Whose AD bit is believed (see SECURITY): configured servers, or loopback ones from resolv.conf.
        self.trustedServers = frozenset(s for s in self.servers if parsed or _isLoopback(s[0]))
        if timeout <= 0:
            raise ValueError("the DNS timeout must be positive")
        self.timeout = float(timeout)
        self.attempts = max(1, int(attempts))
        self.wire = DNSWire(reactor, self.timeout, edns, payload, rng)
        self.cache = DNSCache(self.clock, cacheSize, maxTTL, maxNegativeTTL)
        self._flights = {}

    # -- public API ------------------------------------------------------

    def lookupMX(self, domain, dnssec=False):
        """The MX records of C{domain}: [(preference, exchange)], answer order (an Answer with dnssec)."""
        return Deferred.fromCoroutine(self._lookupMX(domain, dnssec))

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any", dnssec=False):
        """
        The addresses of C{name}: A and/or AAAA records as C{families} asks
        (inet_protocols), in that order or with C{preference}'s family first
        (smtp_address_preference: any, ipv4, ipv6).  An IP address is its
        own result.  Records of one family are enough: a failure of the
        other is then ignored, as by Postfix.  With dnssec, an Answer that
        is secure when every family's records were.
        """
        return Deferred.fromCoroutine(self._lookupAddresses(name, tuple(families), preference, dnssec))

    def lookupRecords(self, name, rdtype, dnssec=False):
        """The rdata of type C{rdtype} for C{name}, CNAMEs followed (an Answer with dnssec)."""
        return Deferred.fromCoroutine(self._lookupRecords(name, dns.rdatatype.RdataType.make(rdtype), dnssec))

    def cachedTTL(self, name, rdtype):
        """
        Seconds left of the cached answer (records, or a negative answer)
        for C{name} and C{rdtype}, e.g. just after a lookup; None when
        nothing is cached (a failure, a TTL of 0).  postscreen's DNSBL
        test keeps its result this long (mta.smtpd.postscreen).
        """
        try:
            qname = toName(name)
        except ValueError:
            return None
        rdtype = dns.rdatatype.RdataType.make(rdtype)
        for key in ((qname, rdtype), (qname, None)):
            left = self.cache.remaining(key)
            if left is not None:
                return left
        return None

    # -- lookups ------------------------------------------------------------

    async def _lookupMX(self, domain, dnssec=False):
        records = await self._lookupRecords(domain, dns.rdatatype.MX, dnssec)
        pairs = [(rdata.preference, nameText(rdata.exchange)) for rdata in records]
        return Answer(pairs, records.secure, records.name) if dnssec else pairs

    async def _lookupAddresses(self, name, families, preference, dnssec=False):
        _checkFamilies(families, preference)
        literal = _literal(name, families)
        if literal is not None:
            return Answer(literal, True, None) if dnssec else literal
        if not families:
            return Answer() if dnssec else []
        deferreds = [Deferred.fromCoroutine(self._lookupRecords(name, FAMILIES[family], dnssec))
                     for family in families]
        results = await defer.DeferredList(deferreds, consumeErrors=True)
        byFamily = {}
        problems = []
        secure, canonical = True, None
        for family, (ok, value) in zip(families, results):
            if ok:
                byFamily[family] = [str(ipaddress.ip_address(rdata.address)) for rdata in value]
                if dnssec and len(value):
                    secure = secure and value.secure
                    canonical = canonical or value.name
            elif value.check(DNSError):
                problems.append(value.value)
            else:
                value.raiseException()
        addresses = _orderAddresses(byFamily, families, preference)
        if addresses:
            return Answer(addresses, secure, canonical) if dnssec else addresses
        for problem in problems:
            if problem.temporary:
                raise problem
        if problems:
            raise problems[-1]
        return Answer() if dnssec else []

    async def _lookupRecords(self, name, rdtype, dnssec=False):
        records = await self._lookupCached(name, rdtype, dnssec)
        if dnssec:
            return Answer(records, records.secure, None if records.name is None else nameText(records.name))
        return list(records)

    async def _lookupCached(self, name, rdtype, dnssec=False):
        """A L{Records} (from the cache, a query in flight or a new one), or DNSError."""
        typeText = dns.rdatatype.to_text(rdtype)
        try:
            qname = toName(name)
        except ValueError:
            raise DNSError(f"Name service error for {name}: invalid host or domain name", temporary=False,
                           notFound=True, name=name, rdtype=typeText) from None
        # DNSSEC answers (DO/AD asked) are kept apart: a plain answer says nothing of security.
        key = (qname, rdtype, "dnssec") if dnssec else (qname, rdtype)
        for cacheKey in (key, (qname, None)):
            cached = self.cache.get(cacheKey)
            if cached is NXDOMAIN:
                raise self._nxdomain(qname, typeText, "cached")
            if cached is NODATA:
                return Records()
            if cached is not None:
                return cached
        flight = self._flights.get(key)
        if flight is not None:
            return await flight.wait()
        flight = self._flights[key] = Flight()
        waiter = flight.wait()

        def done(result):
            self._flights.pop(key, None)
            flight.fire(result)

        Deferred.fromCoroutine(self._resolve(qname, rdtype, key, dnssec)).addBoth(done)
        return await waiter

    def _nxdomain(self, qname, typeText, detail):
        return DNSError(nameServiceError(nameText(qname), typeText, NOT_FOUND), temporary=False,
                        rcode=dns.rcode.NXDOMAIN, notFound=True, name=nameText(qname), rdtype=typeText,
                        detail=detail)

    async def _resolve(self, qname, rdtype, key=None, dnssec=False):
        """Query, follow CNAMEs, cache; the L{Records}, or DNSError."""
        typeText = dns.rdatatype.to_text(rdtype)
        key = key or (qname, rdtype)
        current = qname
        chainTTL = float("inf")
        seen = {qname}
        links = 0
        secure = dnssec
        while True:
            response, server = await self._query(current, rdtype, dnssec)
            secure = secure and self._authenticated(response, server)
            records, last, ttl, chain = self._answer(response, current, rdtype)
            chainTTL = min(chainTTL, ttl)
            for name in chain:
                if name in seen or links >= MAX_CNAME:
                    raise DNSError(f"Name server loop for {nameText(qname)}", temporary=False,
                                   name=nameText(qname), rdtype=typeText, detail="CNAME loop or chain too long")
                seen.add(name)
                links += 1
            if records:
                found = Records(records, secure, last)
                self.cache.put(key, found, chainTTL)
                return found
            negativeTTL = min(chainTTL, self._negativeTTL(response))
            if response.rcode() == dns.rcode.NXDOMAIN:
                self.cache.put(key, NXDOMAIN, negativeTTL)
                if last == qname:
                    self.cache.put((qname, None), NXDOMAIN, negativeTTL)
                raise self._nxdomain(qname, typeText, f"NXDOMAIN for {nameText(last)} from {server}")
            if last != current and self._soa(response) is None:
                # The server gave part of a CNAME chain only: ask for the rest.
                current = last
                continue
            self.cache.put(key, NODATA, negativeTTL)
            return Records()

    def _authenticated(self, response, server):
        """The AD bit of a reply from a trusted server (see SECURITY)."""
        return bool(response.flags & dns.flags.AD) and server in self._trustedText

    @staticmethod
    def _answer(response, qname, rdtype):
        """
        (records, last name, smallest TTL, CNAME targets) for the chain that
        starts at C{qname} in the answer section; only those records count.
        """
        current = qname
        ttl = float("inf")
        chain = []
        for _ in range(MAX_CNAME + 1):
            rrset = response.get_rrset(response.answer, current, dns.rdataclass.IN, rdtype)
            if rrset is not None and len(rrset):
                return list(rrset), current, min(ttl, rrset.ttl), chain
            cname = response.get_rrset(response.answer, current, dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is None or not len(cname):
                break
            ttl = min(ttl, cname.ttl)
            current = cname[0].target
            chain.append(current)
        return [], current, ttl, chain

    @staticmethod
    def _soa(response):
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and rrset.rdclass == dns.rdataclass.IN and len(rrset):
                return rrset
        return None

    def _negativeTTL(self, response):
        soa = self._soa(response)
        if soa is None:
            return 0
        return min(soa.ttl, soa[0].minimum)

    # -- the wire ---------------------------------------------------------

    @property
    def _trustedText(self):
        return {serverText(s) for s in self.trustedServers}

    async def _query(self, qname, rdtype, dnssec=False):
        """
        An answer (NOERROR or NXDOMAIN) for one question, trying every server
        C{attempts} times; else a temporary DNSError.
        """
        typeText = dns.rdatatype.to_text(rdtype)
        problems = []
        lastRcode = None
        for _ in range(self.attempts):
            for server in self.servers:
                where = serverText(server)
                try:
                    response = await self.wire.exchange(server, qname, rdtype, dnssec)
                except (DNSTimeout, DNSNetworkError) as e:
                    problems.append(f"{e} at {where}")
                    continue
                rcode = response.rcode()
                if rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
                    return response, where
                lastRcode = rcode
                problems.append(f"{dns.rcode.to_text(rcode)} from {where}")
        detail = "; ".join(problems)
        log.info("DNS lookup of {name}/{type} failed: {detail}", name=nameText(qname), type=typeText,
                 detail=detail)
        raise DNSError(nameServiceError(nameText(qname), typeText, TRY_AGAIN), temporary=True, rcode=lastRcode,
                       name=nameText(qname), rdtype=typeText, detail=detail)


@implementer(IHostResolver)
class SystemResolver:
    """
    Address lookups with the system's getaddrinfo() (/etc/hosts, NSS), in
    the reactor's thread pool: smtp_host_lookup = native.

    @param runInThread: C{f(callable, *args) -> Deferred}; default
        deferToThreadPool on the reactor's pool.
    """

    def __init__(self, reactor, getaddrinfo=socket.getaddrinfo, runInThread=None):
        self.reactor = reactor
        self.getaddrinfo = getaddrinfo
        if runInThread is None:
            from twisted.internet.threads import deferToThreadPool

            def runInThread(f, *args):
                return deferToThreadPool(reactor, reactor.getThreadPool(), f, *args)

        self.runInThread = runInThread

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any"):
        return Deferred.fromCoroutine(self._lookup(name, tuple(families), preference))

    async def _lookup(self, name, families, preference):
        _checkFamilies(families, preference)
        literal = _literal(name, families)
        if literal is not None:
            return literal
        if not families:
            return []
        try:
            ascii = toASCII(name)
        except ValueError:
            raise DNSError(f"unable to look up host {name}: Name or service not known", temporary=False,
                           notFound=True, name=name) from None
        family = socket.AF_UNSPEC if len(set(families)) > 1 else (
            socket.AF_INET if families[0] == "ipv4" else socket.AF_INET6)
        try:
            infos = await self.runInThread(self.getaddrinfo, ascii, None, family, socket.SOCK_STREAM)
        except socket.gaierror as e:
            code = e.args[0] if e.args else None
            temporary = code in _EAI_RETRY
            notFound = code in _EAI_NOHOST
            text = e.args[1] if len(e.args) > 1 else str(e)
            raise DNSError(f"unable to look up host {name}: {text}", temporary=temporary, notFound=notFound,
                           name=name, detail=f"getaddrinfo error {code}") from None
        except OSError as e:
            raise DNSError(f"unable to look up host {name}: {e}", temporary=True, name=name) from None
        byFamily = {}
        for info in infos:
            sockFamily, sockaddr = info[0], info[4]
            key = "ipv4" if sockFamily == socket.AF_INET else "ipv6" if sockFamily == socket.AF_INET6 else None
            if key is None or key not in families:
                continue
            address = str(ipaddress.ip_address(sockaddr[0].split("%")[0]))
            if address not in byFamily.setdefault(key, []):
                byFamily[key].append(address)
        return _orderAddresses(byFamily, families, preference)


_EAI_RETRY = {getattr(socket, name) for name in ("EAI_AGAIN", "EAI_MEMORY", "EAI_SYSTEM") if hasattr(socket, name)}
_EAI_NOHOST = {getattr(socket, name) for name in ("EAI_AGAIN", "EAI_NODATA", "EAI_NONAME") if hasattr(socket, name)}
