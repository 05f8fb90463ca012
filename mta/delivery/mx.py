"""mta.delivery.mx - which hosts to connect to for a next-hop, as smtp(8) chooses.

destinationHosts(resolver, nexthop, ...) is Postfix's smtp_domain_addr()
and smtp_host_addr() (smtp_addr.c) with the address limit of
smtp_connect.c: it returns a HostList, the addresses to try in order, or
raises DeliveryProblem(status, dsn, text), or (best_mx_transport) returns
PassToTransport.

    domain[:port]       MX lookup.  MX hosts in preference order; with
                        smtp_randomize_addresses the addresses of equal
                        preference are shuffled (shuffle, then a stable sort
                        by preference: preference classes never mix).
                        No MX record (NODATA) or no such domain: the
                        domain's own addresses, preference 0 (implicit MX,
                        RFC 5321 5.1).  A null MX (RFC 7505, an MX whose
                        exchange is "."): 5.1.10 "Domain D does not accept
                        mail (nullMX)", nothing else is looked up.
                        MX lookup failure (SERVFAIL, timeout, ...): 4.4.3,
                        deferred, unless ignore_mx_lookup_error (then the
                        domain's own addresses are used).
                        MX hosts without addresses are skipped; if none has
                        one: the last lookup error (5.4.4 "Host or domain
                        name not found ...", or 4.4.x if any lookup failed
                        temporarily: a soft error dominates), made 4.x.x by
                        smtp_defer_if_no_mx_address_found.
    [host], address     addresses only (also for every LMTP destination and
                        with disable_dns_lookups).

Host address lookup follows smtp_host_lookup: "dns" (the Resolver), then,
if listed and DNS found nothing, "native" (getaddrinfo() in a thread,
/etc/hosts; SystemResolver).  disable_dns_lookups means native only and no
MX lookup.  Only a next-hop address literal ([192.0.2.1], or Postfix's
"sloppy" bare 192.0.2.1 in the configuration) is used as an address
without a lookup.  A name from the DNS is a name: an MX exchange that is
an IP address (or that getaddrinfo() would read as one, such as 127.1 or
0x7f.1) is skipped with Postfix's warning "numeric domain name in
resource data of MX record for D: 127.0.0.1" ("malformed domain name"
for the other forms and for names that are not valid host names), as
Postfix's valid_rr_name() drops a malformed name; when no MX record is
left: 5.4.4 "Name service error for name=D type=MX: Malformed or
unexpected name server reply" (Postfix's DNS_INVAL), or with
ignore_mx_lookup_error the domain's own addresses.

Loops (SMTP to port 25 only, as Postfix's SMTP_MISC_FLAG_LOOP_DETECT): when
an address of an MX host is one of myAddresses (inet_interfaces and
proxy_interfaces addresses) or the host's name is in myHostnames, that
host and every host of the same or a worse preference are dropped
(smtp_truncate_self); HostList.foundMyself is then true (this host is an
MX for the domain: the caller must not use fall-back relays).  Nothing
left: "5.4.6 mail for D loops back to myself" if we are the best MX, else
"4.4.4 unable to find primary relay for D" (the better MX hosts have no
address now).  A [host] or implicit-MX destination that is us: 5.4.6.
With best_mx_transport set, a 5.4.6 becomes PassToTransport(transport,
nexthop) for the caller to hand the mail over (Postfix's
deliver_pass_all()).

DNSSEC (dnssec=True, smtp_dns_support_level = dnssec): the MX and
address lookups ask with the DO/AD bits (mta.delivery.dns), and each Host
carries C{mxSecure} (the MX RRset was validated; True where there is none:
a [host] or implicit-MX destination, which Postfix treats as a statically
validated "MX 0 host"), C{secure} (its address RRset was) and
C{canonical} (its CNAME-expanded name): what DANE (mta.delivery.dane)
decides from.

Limits: smtp_balance_inet_protocols keeps both IPv4 and IPv6 addresses
within smtp_mx_address_limit (Postfix's smtp_balance_inet_proto()), then
the list is cut at smtp_mx_address_limit (0: no limit).  The session
limit (smtp_mx_session_limit) counts sessions that completed the
EHLO/TLS handshake, which only the caller can see: it is passed on as
HostList.sessionLimit.

With relay=True (the next-hop is $relayhost or a smtp_fallback_relay
entry), every permanent problem becomes 4.3.5 with the same text and
best_mx_transport is not used, as Postfix treats "what could be
configuration problems".

SECURITY
    MX and address records come from the DNS (untrusted): names were
    validated by the resolver, the number of MX records used is bounded
    (100, Postfix's dns_rr_list_limit), and a hostile domain can at most
    make us defer or bounce its own mail.

    An MX exchange that looks like an address is never used as one (see
    above): a hostile or careless zone cannot point mail at 127.0.0.1 or
    another internal address by writing it as a host name.

CONFIGURATION
    Passed in by the caller: smtp_randomize_addresses (yes),
    smtp_mx_address_limit (5), smtp_mx_session_limit (2),
    ignore_mx_lookup_error (no), smtp_defer_if_no_mx_address_found (no),
    disable_dns_lookups (no), smtp_host_lookup (dns), inet_protocols
    (all), smtp_address_preference (any), smtp_balance_inet_protocols
    (yes), best_mx_transport (empty); myAddresses from inet_interfaces and
    proxy_interfaces.

DEVIATIONS FROM POSTFIX
    * A numeric MX exchange ("MX 10 127.0.0.1") is skipped like a
      malformed one.  Postfix's valid_rr_name() only warns ("numeric
      domain name in resource data of MX record for ...") and passes the
      name on, and smtp_addr_one() then uses it as an address; the
      warning text here is Postfix's.  Names that getaddrinfo() would
      parse as an address (127.1, 0x7f.0.0.1, 2130706433) are malformed
      here too, so that smtp_host_lookup = native cannot turn them into
      addresses either.
"""

import ipaddress
import random
import socket

import attrs
from twisted.internet.defer import Deferred, FirstError, gatherResults
from twisted.logger import Logger, LogLevel

from mta.config.schema import BY_NAME
from mta.config.settings.client import inetProtocols
from mta.delivery.dns import FAMILIES, NO_DATA, DNSError, SystemResolver, nameServiceError
from mta.delivery.nexthop import Nexthop, parseNexthop, validHostname
from mta.maillog import sanitize

log = Logger()

DNS_RR_LIST_LIMIT = 100


@attrs.frozen
class Host:
    """One address to connect to: the host name (or the address itself), address, port, MX preference."""

    name: str
    address: str
    port: int
    preference: int
    # smtp_dns_support_level = dnssec only (else all False/""): DANE's inputs (mta.delivery.dane)
    secure: bool = False  # the host's address RRset was DNSSEC-validated
    mxSecure: bool = False  # the MX RRset that named it was (True: no MX RRset, as [host] or implicit MX)
    canonical: str = ""  # the CNAME-expanded host name, when it differs


class HostList(list):
    """
    The L{Host}s to try, in order.

    @ivar sessionLimit: stop after this many sessions that completed the
        EHLO (and TLS) handshake; 0: no limit (smtp_mx_session_limit).
    @ivar foundMyself: this host is an MX host for the destination: do not
        go on to fall-back relays (Postfix's SMTP_MISC_FLAG_FINAL_NEXTHOP).
    @ivar bestPreference: the preference of the first host (the caller's
        "best MX" for connection caching).
    """

    def __init__(self, hosts=(), *, sessionLimit=0, foundMyself=False):
        super().__init__(hosts)
        self.sessionLimit = sessionLimit
        self.foundMyself = foundMyself

    @property
    def bestPreference(self):
        return self[0].preference if self else None

    def __repr__(self):
        return f"HostList({list.__repr__(self)}, sessionLimit={self.sessionLimit}, foundMyself={self.foundMyself})"


@attrs.frozen
class PassToTransport:
    """
    Mail for the destination loops back to this host and best_mx_transport
    is set: hand the recipients to C{transport}, with C{nexthop} (None: the
    request's own next-hop), as Postfix's deliver_pass_all().
    """

    transport: str
    nexthop: str | None
    reason: str


class DeliveryProblem(Exception):
    """
    No host to deliver to: C{status} "deferred" or "bounced", an RFC 3463
    C{dsn}, and a C{text} for the delivery status and the log.
    """

    def __init__(self, status, dsn, text):
        if status not in ("deferred", "bounced"):
            raise ValueError(f"bad status {status!r}")
        super().__init__(f"{dsn} {text}")
        self.status = status
        self.dsn = dsn
        self.text = text

    @classmethod
    def fromDsn(cls, dsn, text):
        return cls("deferred" if dsn.startswith("4") else "bounced", dsn, text)

    @property
    def loops(self):
        """Mail loops back to this host (5.4.6)."""
        return self.dsn == "5.4.6"

    def __repr__(self):
        return f"DeliveryProblem({self.status!r}, {self.dsn!r}, {self.text!r})"


def parseInetProtocols(values):
    """
    inet_protocols (its text, or its items: all, ipv4, ipv6) as a tuple of
    families in Postfix's order; ValueError for anything else.  The same
    conversion as the settings' (mta.config.settings.client), which is
    what the smtp transport uses.
    """
    text = values if isinstance(values, str) else ", ".join(values)
    return inetProtocols(BY_NAME["inet_protocols"].type.parse(text))


def _family(address):
    return "ipv6" if ":" in address else "ipv4"


def _asAddress(name):
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def rrNameGripe(name):
    """
    What is wrong with a host name found in the resource data of a DNS
    record, as Postfix's valid_rr_name() says it: "numeric domain name" (an
    IP address), "malformed domain name" (not a valid host name, or a form
    that inet_aton() and so getaddrinfo() would take for an address), or
    None when it is a proper name.
    """
    text = name.strip()
    if text.endswith(".") and text != ".":
        text = text[:-1]
    if _asAddress(text) is not None:
        return "numeric domain name"
    try:
        socket.inet_aton(text)
    except (OSError, ValueError):
        pass
    else:
        return "malformed domain name"
    if not validHostname(text.lower()):
        return "malformed domain name"
    return None


class _Why:
    """Postfix's DSN_BUF for address lookups: a soft error dominates."""

    def __init__(self):
        self.dsn = None
        self.text = None

    @property
    def soft(self):
        return self.dsn is not None and self.dsn.startswith("4")

    def hard(self, soft, hard):
        """The status to use for a not-found kind of error."""
        return soft if self.soft else hard

    def set(self, dsn, text):
        if self.soft and not dsn.startswith("4"):
            return
        self.dsn, self.text = dsn, text


class _Selection:
    def __init__(self, resolver, nexthop, options):
        self.resolver = resolver
        self.nexthop = nexthop
        self.__dict__.update(options)
        self.why = _Why()

    # -- smtp_addr_one --------------------------------------------------------

    async def addrOne(self, host, why):
        """
        The addresses of one host name (or address); problems go to C{why}.
        With dnssec, an Answer (mta.delivery.dns) whose C{secure} tells.
        """
        address = _asAddress(host)
        if address is not None:
            if f"ipv{address.version}" in self.families:
                return [str(address)]
            why.set(why.hard("4.4.4", "5.4.4"),
                    f"{host}: address family ipv{address.version} is disabled by inet_protocols")
            return []
        if "dns" in self.hostLookup:
            try:
                if self.dnssec:
                    addresses = await self.resolver.lookupAddresses(host, self.families, "any", dnssec=True)
                else:
                    addresses = await self.resolver.lookupAddresses(host, self.families, "any")
            except DNSError as e:
                if e.temporary:
                    # (with dnssec, Postfix too never goes on to "native" after a temporary failure)
                    why.set("4.4.3", e.text)
                    return []
                why.set(why.hard("4.4.4", "5.4.4"), e.text)
            else:
                if addresses:
                    return addresses
                rdtype = "AAAA" if self.families[-1] == "ipv6" else "A"
                why.set(why.hard("4.4.4", "5.4.4"), nameServiceError(host, rdtype, NO_DATA))
            # Not found in the DNS: maybe the native name service knows it.
        if "native" in self.hostLookup:
            try:
                addresses = await self.native().lookupAddresses(host, self.families, "any")
            except DNSError as e:
                if why.soft or e.temporary:
                    dsn = "4.4.4" if e.notFound else "4.3.0"
                else:
                    dsn = "5.4.4" if e.notFound else "5.3.0"
                why.set(dsn, e.text)
                return []
            if not addresses:
                why.set(why.hard("4.4.4", "5.4.4"), f"{host}: host not found")
            return addresses
        return []

    def native(self):
        if self.nativeResolver is None:
            reactor = getattr(self.resolver, "reactor", None)
            if reactor is None:
                from twisted.internet import reactor
            self.nativeResolver = SystemResolver(reactor)
        return self.nativeResolver

    # -- self detection -------------------------------------------------------

    def isMe(self, host):
        if host.name.lower().rstrip(".") in self.myHostnames:
            return True
        address = ipaddress.ip_address(host.address)
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address in self.myAddresses

    # -- ordering -------------------------------------------------------------

    def order(self, hosts, sortFamilies=True):
        if len(hosts) < 2:
            return hosts
        if self.randomize:
            self.rng.shuffle(hosts)
        rank = {"ipv6": {"ipv6": 0, "ipv4": 1}, "ipv4": {"ipv4": 0, "ipv6": 1}}.get(self.addressPreference)
        if rank is None or not sortFamilies:
            hosts.sort(key=lambda h: h.preference)
        else:
            hosts.sort(key=lambda h: (h.preference, rank[_family(h.address)]))
        if self.mxAddressLimit > 0 and self.balanceInetProtocols:
            hosts = balanceInetProtocols(hosts, self.mxAddressLimit)
        return hosts

    def result(self, hosts, foundMyself=False):
        if self.mxAddressLimit > 0:
            hosts = hosts[:self.mxAddressLimit]
        return HostList(hosts, sessionLimit=self.mxSessionLimit, foundMyself=foundMyself)

    # -- problems -------------------------------------------------------------

    def problem(self, dsn, text):
        if self.relay and dsn.startswith("5"):
            self.warn(f"{self.relayName} configuration problem")
            dsn = "4.3.5"
        return DeliveryProblem.fromDsn(dsn, text)

    def loop(self, name):
        text = f"mail for {name} loops back to myself"
        if self.bestMxTransport and not self.relay:
            transport, _, nexthop = self.bestMxTransport.partition(":")
            return PassToTransport(transport, nexthop or None, text)
        raise self.problem("5.4.6", text)

    def warn(self, text):
        if self.maillog is not None:
            self.maillog.emit(f"warning: {text}", None, LogLevel.warn)
        else:
            log.warn("{text}", text=text)

    # -- smtp_host_addr -----------------------------------------------------

    async def hostAddresses(self, name):
        why = self.why = _Why()
        addresses = await self.addrOne(name, why)
        if not addresses:
            raise self.problem(why.dsn or "5.4.4", why.text or f"{name}: host not found")
        hosts = [self.host(name, address, 0, addresses, True) for address in addresses]
        if self.loopDetect and any(self.isMe(host) for host in hosts):
            return self.loop(name)
        hosts = self.order(hosts, sortFamilies=len(self.families) > 1)
        return self.result(hosts)

    def host(self, name, address, preference, answer, mxSecure):
        """A Host; with dnssec, the DNSSEC status of its MX and address RRsets (DANE's inputs)."""
        if not self.dnssec:
            return Host(name, address, self.nexthop.port, preference)
        canonical = getattr(answer, "name", None) or ""
        return Host(name, address, self.nexthop.port, preference, secure=bool(getattr(answer, "secure", False)),
                    mxSecure=mxSecure, canonical="" if canonical == name.lower().rstrip(".") else canonical)

    # -- smtp_domain_addr -------------------------------------------------

    async def domainAddresses(self, name):
        why = self.why
        try:
            records = await (self.resolver.lookupMX(name, dnssec=True) if self.dnssec else self.resolver.lookupMX(name))
        except DNSError as e:
            if not e.temporary:
                # NXDOMAIN, invalid name: Postfix's DNS_NOTFOUND.
                return await self.hostAddresses(name)
            if self.ignoreMxLookupError:
                self.warn(f"ignoring the MX lookup error for {name}: {e.text}")
                return await self.hostAddresses(name)
            raise self.problem("4.4.3", e.text)
        if not records:
            return await self.hostAddresses(name)
        if any(exchange in (".", "") for _, exchange in records):
            raise self.problem("5.1.10", f"Domain {name} does not accept mail (nullMX)")
        # A name from the DNS is a name (see DEVIATIONS): drop what is not one.
        valid = []
        for preference, exchange in records:
            gripe = rrNameGripe(exchange)
            if gripe is None:
                valid.append((preference, exchange))
            else:
                self.warn(f"{gripe} in resource data of MX record for {name}: {sanitize(exchange[:100])}")
        if not valid:
            if self.ignoreMxLookupError:
                return await self.hostAddresses(name)
            raise self.problem("5.4.4", f"Name service error for name={name} type=MX: "
                                        "Malformed or unexpected name server reply")
        mxSecure = bool(getattr(records, "secure", False))
        records = valid
        if len(records) > DNS_RR_LIST_LIMIT:
            self.warn(f"DNS resource record limit ({DNS_RR_LIST_LIMIT}) exceeded while looking up MX "
                      f"records for domain {name}")
            records = records[:DNS_RR_LIST_LIMIT]
        records = sorted(records, key=lambda r: r[0])
        bestPreference = records[0][0]

        # Look up every MX host (in parallel; the outcome is folded in
        # preference order, as Postfix's sequential lookups would be).
        whys = [_Why() for _ in records]
        lookups = [Deferred.fromCoroutine(self.addrOne(exchange, w)) for (_, exchange), w in zip(records, whys)]
        try:
            results = await gatherResults(lookups, consumeErrors=True)
        except FirstError as e:
            e.subFailure.raiseException()
        hosts = []
        for (preference, exchange), addresses, w in zip(records, results, whys):
            if w.dsn is not None:
                why.set(w.dsn, w.text)
            hosts.extend(self.host(exchange, address, preference, addresses, mxSecure) for address in addresses)
        if not hosts:
            dsn, text = why.dsn or "5.4.4", why.text or f"no MX host for {name} has a valid address record"
            if self.deferIfNoMxAddressFound and dsn.startswith("5"):
                dsn = "4" + dsn[1:]
            self.warn(f"no MX host for {name} has a valid address record")
            raise self.problem(dsn, text)
        bestFound = hosts[0].preference
        foundMyself = False
        if self.loopDetect:
            me = next((host for host in hosts if self.isMe(host)), None)
            if me is not None:
                foundMyself = True
                hosts = [host for host in hosts if host.preference < me.preference]
                if not hosts:
                    if bestPreference != bestFound:
                        raise self.problem("4.4.4", f"unable to find primary relay for {name}")
                    return self.loop(name)
        hosts = self.order(hosts)
        return self.result(hosts, foundMyself)


def balanceInetProtocols(hosts, limit):
    """
    Postfix's smtp_balance_inet_proto(): when the list holds both IPv4 and
    IPv6 addresses and is longer than C{limit}, keep enough of each family
    that neither crowds the other out of the first C{limit}; the order is
    kept.
    """
    v4 = sum(1 for h in hosts if _family(h.address) == "ipv4")
    v6 = len(hosts) - v4
    if not (v4 > 0 and v6 > 0 and v4 + v6 > limit):
        return hosts
    if v6 <= limit // 2:
        v6Target = v6
        v4Target = limit - v6Target
    elif v4 <= limit // 2:
        v4Target = v4
        v6Target = limit - v4Target
    else:
        v4Target = (limit + (_family(hosts[0].address) == "ipv4")) // 2
        v6Target = limit - v4Target
    targets = {"ipv4": v4Target, "ipv6": v6Target}
    kept = []
    for host in hosts:
        family = _family(host.address)
        if targets[family] > 0:
            kept.append(host)
            targets[family] -= 1
    return kept


def _addressSet(addresses):
    result = set()
    for address in addresses:
        text = str(address).strip().strip("[]")
        if text.lower().startswith("ipv6:"):
            text = text[5:]
        ip = ipaddress.ip_address(text)
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        result.add(ip)
    return frozenset(result)


async def destinationHosts(resolver, nexthop, *, randomize=True, mxAddressLimit=5, mxSessionLimit=2,
                           ignoreMxLookupError=False, deferIfNoMxAddressFound=False, disableDnsLookups=False,
                           hostLookup=("dns",), families=("ipv4", "ipv6"), addressPreference="any",
                           balanceInetProtocols=True, myAddresses=frozenset(), myHostnames=frozenset(),
                           bestMxTransport="", lmtp=False, relay=False, relayName="relayhost",
                           nativeResolver=None, rng=random, maillog=None, dnssec=False):
    """
    The hosts to try for C{nexthop} (a L{Nexthop} or its text), as a
    L{HostList}; or L{PassToTransport}; or raise L{DeliveryProblem}.

    @param resolver: a L{mta.delivery.dns.Resolver} (or anything with its
        lookupMX and lookupAddresses).
    @param hostLookup: smtp_host_lookup / lmtp_host_lookup: "dns" and/or
        "native", in that order of use.
    @param families: inet_protocols as ("ipv4", "ipv6"); see
        L{parseInetProtocols}.
    @param myAddresses: this host's addresses (inet_interfaces,
        proxy_interfaces), as text or ipaddress objects.
    @param myHostnames: names that are this host (MX host names).
    @param lmtp: LMTP: no MX lookup, no loop detection.
    @param relay: the next-hop is $relayhost or a fall-back relay: permanent
        problems become 4.3.5 (C{relayName} names it in the warning).
    @param nativeResolver: for "native" lookups; default a
        L{SystemResolver} on the resolver's reactor.
    @param rng: has C{shuffle} (the random module, or a seeded Random).
    @param maillog: a L{mta.maillog.MailLogger} for warnings, or None.
    @param dnssec: smtp_dns_support_level = dnssec: MX and address lookups
        ask for DNSSEC, and each Host says whether its MX and address
        RRsets were validated (C{mxSecure}, C{secure}).
    """
    if isinstance(nexthop, str):
        nexthop = parseNexthop(nexthop, "lmtp" if lmtp else "smtp")
    if not isinstance(nexthop, Nexthop):
        raise TypeError(f"a Nexthop is required, not {nexthop!r}")
    if nexthop.kind == "unix":
        raise ValueError(f"{nexthop} is a UNIX-domain socket, it has no hosts")
    families = tuple(families)
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"unknown address family {family!r}")
    if addressPreference not in ("any", "ipv4", "ipv6"):
        raise ValueError(f"unknown address preference {addressPreference!r}")
    if not families:
        raise DeliveryProblem("deferred", "4.4.4", "all network protocols are disabled")
    hostLookup = tuple(hostLookup)
    if disableDnsLookups:
        hostLookup = ("native",)
    for method in hostLookup:
        if method not in ("dns", "native"):
            raise ValueError(f"unknown host lookup method {method!r} (dns or native)")
    if not hostLookup:
        raise ValueError("no host lookup method (dns and/or native)")
    selection = _Selection(resolver, nexthop, dict(
        randomize=randomize, mxAddressLimit=mxAddressLimit, mxSessionLimit=mxSessionLimit,
        ignoreMxLookupError=ignoreMxLookupError, deferIfNoMxAddressFound=deferIfNoMxAddressFound,
        hostLookup=hostLookup, families=families, addressPreference=addressPreference,
        balanceInetProtocols=balanceInetProtocols, myAddresses=_addressSet(myAddresses),
        myHostnames=frozenset(n.lower().rstrip(".") for n in myHostnames), bestMxTransport=bestMxTransport,
        relay=relay, relayName=relayName, nativeResolver=nativeResolver, rng=rng, maillog=maillog, dnssec=dnssec,
        loopDetect=not lmtp and nexthop.port == 25))
    if nexthop.kind == "mx" and not lmtp and not disableDnsLookups:
        return await selection.domainAddresses(nexthop.name)
    return await selection.hostAddresses(nexthop.name)
