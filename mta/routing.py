"""mta.routing - trivial-rewrite(8): the one resolver of address class and transport:nexthop; the router.

AddressResolver is the one place that decides what class an address is in
and where it goes, as Postfix's trivial-rewrite resolve service; the SMTP
server's recipient checks (mta.smtpd.policy: relay control,
reject_unlisted_recipient) and the queue manager's router ask the same
object, so they can never disagree about a domain.  Router adds the alias
expansion in front of it for the queue manager.

ADDRESS CLASSES (AddressResolver.addressClass(domain), Postfix's resolve_class)
    Tried in this order, as Postfix's RESOLVE_CLASS_*:

    local     $mydestination, and an address without a domain
    alias     $virtual_alias_domains (every address there must be
              rewritten by virtual_alias_maps; one that is not is
              "User unknown in virtual alias table")
    virtual   $virtual_mailbox_domains
    relay     $relay_domains, and their subdomains
    default   everything else

    Local, alias and virtual are final delivery (RESOLVE_CLASS_FINAL).

RESOLVING (AddressResolver.resolve(address) -> Resolution)
    The class picks the transport: local_transport, virtual_transport,
    relay_transport, default_transport (the alias class goes to error:,
    "5.1.1 User unknown in virtual alias table").  The nexthop is the
    transport's own (``smtp:[relay]:587``), else $relayhost for relay and
    default mail (sender_dependent_relayhost_maps first: the sender, its
    @domain, <> for the null sender; DUNNO stops there), else $myhostname
    for local mail, else the domain.
    transport_maps override that (not for the alias class, as in
    Postfix): keys tried are the address, the address without extension,
    the domain, each parent as ``.parent``, then ``*``; a value is
    ``transport:nexthop`` where an empty part keeps the one above.

FLAGS (Resolution)
    routed    the local part holds "@", "%" or "!": sender-specified
              routing (Postfix's RESOLVE_FLAG_ROUTED), judged on the
              address as parsed (mta.address: ``user%other@relay`` has
              local part ``user%other``, ``"user@other"@relay`` has
              ``user@other``).  Relay control never authorizes it.
    literal   the domain is an address literal (``[192.0.2.1]``); relay
              control never authorizes it either (mta's rule, see
              DEVIATIONS).

    classify(address) gives the class and the flags without the transport
    (what the SMTP server's checks need: no transport_maps lookup at RCPT
    time); resolve(address) gives all.

THE ROUTER (Router.route(address), for the queue manager)
    1. virtual_alias_maps rewrite any address (user+ext@domain,
       user@domain, @domain, with the extension carried over to the result
       as propagate_unmatched_extensions = virtual does); alias_maps
       rewrite the local part of $mydestination addresses (aliases(5):
       name: targets).  One address may become many; expansion is
       recursive, an address that maps to itself stops there, and
       virtual_alias_recursion_limit and virtual_alias_expansion_limit
       bound the work (a loop or an explosion is a bounce, 5.4.6 / 5.3.0).
       An alias with no targets, or one naming a file, a command or an
       :include:, is an error (deferred 4.3.0: mta has no local(8) to run
       them, and the administrator can fix the table).
    2. Every resulting address is resolved (above): a Route(address,
       transport, nexthop), or a RouteError for the alias class.

ONE RESOLVER, FROM [main]
    The resolver is built from [main] (mta.config.settings.routing
    ResolverSettings) and shared by the router and every listener (the
    daemon's generation makes it: Generation.addressResolver), as Postfix's
    one trivial-rewrite reads main.cf only.  A listener's override of
    mydestination, relay_domains, virtual_*_domains, the transports or
    transport_maps therefore does not change an address's class, for
    relay control as for delivery (in Postfix, ``smtpd -o relay_domains=``
    has no effect on reject_unauth_destination either).  What smtpd reads
    itself (mynetworks, the recipient tables, the restriction lists) stays
    per listener: mta.smtpd.policy.

SECURITY
    Addresses are untrusted (they come from clients and from queue files);
    they are only split, looked up and compared.  A table that cannot
    answer raises TableTemporaryError (the SMTP server answers 4xx, the
    router defers 4.3.0), never a bounce.

CONFIGURATION
    mydestination, virtual_alias_domains, virtual_mailbox_domains,
    relay_domains, relayhost, sender_dependent_relayhost_maps,
    empty_address_relayhost_maps_lookup_key, local_transport, virtual_transport,
    relay_transport, default_transport, transport_maps, virtual_alias_maps,
    alias_maps, recipient_delimiter, virtual_alias_recursion_limit,
    virtual_alias_expansion_limit, myhostname (ResolverSettings).

DEVIATIONS
    Postfix resolves a domain literal that names one of its own interface
    addresses to the local class; mta never treats a literal as one of its
    own (it is never an authorized destination, and mail to it goes to
    default_transport).  Postfix's local class nexthop is the recipient's
    domain; mta's is $myhostname (one queue for all local mail, which
    Postfix gets with local_transport = local:$myhostname).  Postfix's
    smtpd asks the full resolve, so a failing transport_maps defers RCPT
    there; mta's server asks classify(), which does not read
    transport_maps.  Postfix also strips local domains from
    ``user%other@$mydestination`` and resolves again (allow_percent_hack,
    swap_bangpath); mta does not rewrite routing operators: such an
    address keeps its class and its routed flag.
"""

import attrs

from mta.config.settings.routing import ADDRESS_CLASSES, splitTransport
from mta.config.types import splitList
from mta.model import Address
from mta.tables import TableTemporaryError, addressKeys, tableKeys
from mta.tables.matchers import DomainMatcher

__all__ = ["ADDRESS_CLASSES", "AddressResolver", "Resolution", "Route", "RouteError", "Router", "splitTransport"]

FINAL_CLASSES = frozenset({"local", "alias", "virtual"})  # Postfix's RESOLVE_CLASS_FINAL
ROUTING_OPERATORS = "@%!"
ALIAS_UNKNOWN = "User unknown in virtual alias table"


@attrs.frozen
class Route:
    address: str  # the address to deliver to
    transport: str
    nexthop: str


@attrs.frozen
class RouteError:
    address: str
    status: str  # "deferred" or "bounced"
    dsn: str
    text: str


@attrs.frozen
class Resolution:
    """
    trivial-rewrite's answer for one address.  C{addressClass} is one of
    ADDRESS_CLASSES; C{routed} and C{literal} are the flags (see the module
    docstring); C{transport} and C{nexthop} are None from classify().
    """

    address: str
    addressClass: str
    routed: bool = False
    literal: bool = False
    transport: str | None = None
    nexthop: str | None = None

    @property
    def final(self):
        """Final delivery here (local, alias or virtual: Postfix's RESOLVE_CLASS_FINAL)."""
        return self.addressClass in FINAL_CLASSES


def splitAddress(address):
    """(local part, lower-cased domain) of C{address}: an mta.model.Address or its text."""
    if isinstance(address, Address):
        return address.local, address.domain.lower()
    local, at, domain = address.rpartition("@")
    return (local, domain.lower()) if at else (address, "")


class AddressResolver:
    """
    The address resolver (see the module docstring).  C{settings} is an
    mta.config.settings.routing.ResolverSettings; C{tables} opens the
    tables it names.  Attributes: C{settings}, C{hostname}, the four
    domain matchers (C{localDomains}, C{aliasDomains}, C{mailboxDomains},
    C{relayDomains}) and C{transportMaps} (opened tables).
    """

    def __init__(self, settings, tables):
        self.settings = settings
        self.hostname = settings.hostname
        self.localDomains = DomainMatcher(settings.localDomains, tables, subdomains=False)
        self.aliasDomains = DomainMatcher(settings.aliasDomains, tables, subdomains=False)
        self.mailboxDomains = DomainMatcher(settings.mailboxDomains, tables, subdomains=False)
        self.relayDomains = DomainMatcher(settings.relayDomains, tables, subdomains=True)
        self.transportMaps = [tables.open(t) for t in settings.transportMaps]
        self.senderRelayhostMaps = [tables.open(t) for t in settings.senderRelayhostMaps]

    async def isLocal(self, domain):
        """Is C{domain} in $mydestination (an empty domain is)?"""
        return not domain or await self.localDomains.matches(domain)

    async def addressClass(self, domain):
        """The class of C{domain}: local, alias, virtual, relay or default (Postfix's resolve_class)."""
        if await self.isLocal(domain):
            return "local"
        if await self.aliasDomains.matches(domain):
            return "alias"
        if await self.mailboxDomains.matches(domain):
            return "virtual"
        if await self.relayDomains.matches(domain):
            return "relay"
        return "default"

    def flags(self, address):
        """(routed, literal) of C{address}: no lookup needed (see FLAGS)."""
        local, domain = splitAddress(address)
        return any(c in local for c in ROUTING_OPERATORS), domain.startswith("[")

    async def classify(self, address):
        """The Resolution of C{address} (an Address or its text): class and flags, no transport."""
        _, domain = splitAddress(address)
        routed, literal = self.flags(address)
        text = address if isinstance(address, str) else str(address)
        return Resolution(text, await self.addressClass(domain), routed=routed, literal=literal)

    async def resolve(self, address, sender=None):
        """
        The Resolution of C{address} with its transport and nexthop
        (transport_maps applied); C{sender} (the envelope sender, "" for
        <>; None: unknown) for sender_dependent_relayhost_maps.
        """
        resolution = await self.classify(address)
        _, domain = splitAddress(address)
        addressClass = resolution.addressClass
        if addressClass == "alias":
            return attrs.evolve(resolution, transport="error", nexthop=f"5.1.1 {ALIAS_UNKNOWN}")
        transport, nexthop = self.settings.transport(addressClass)
        if not nexthop:
            relayhost = None
            if addressClass in ("relay", "default") and sender is not None:
                relayhost = await self._senderRelayhost(sender)
            if relayhost:
                nexthop = relayhost
            elif addressClass in ("relay", "default") and self.settings.relayhost:
                nexthop = self.settings.relayhost
            elif addressClass == "local":
                nexthop = self.hostname
            else:
                nexthop = domain
        override = await self._transportMap(resolution.address, domain)
        if override is not None:
            t, n = splitTransport(override)
            transport = t or transport
            nexthop = n or nexthop
        return attrs.evolve(resolution, transport=transport, nexthop=nexthop)

    async def _senderRelayhost(self, sender):
        """sender_dependent_relayhost_maps: the sender, then @domain (<> as its key); DUNNO: none."""
        if not self.senderRelayhostMaps:
            return None
        keys = addressKeys(sender, self.settings.delimiter) if sender else [self.settings.nullSenderRelayKey]
        for table in self.senderRelayhostMaps:
            for key in tableKeys(table, keys):
                value = await table.lookup(key)
                if value is not None:
                    value = value.strip()
                    return None if value.upper() == "DUNNO" else value
        return None

    async def _transportMap(self, address, domain):
        if not self.transportMaps:
            return None
        keys = [address.lower()]
        local, _ = splitAddress(address.lower())
        for c in self.settings.delimiter:
            if c in local:
                keys.append(f"{local.split(c, 1)[0]}@{domain}")
                break
        if domain:
            keys.append(domain)
            parts = domain.split(".")
            keys.extend("." + ".".join(parts[i:]) for i in range(1, len(parts)))
        keys.append("*")
        for table in self.transportMaps:
            for key in keys:
                value = await table.lookup(key)
                if value is not None:
                    return value
        return None


class Router:
    """
    Alias expansion, then the resolver: what the queue manager asks for
    each recipient.  C{settings}: ResolverSettings; C{resolver}: the shared
    AddressResolver (made from C{settings} when None).  Attributes:
    C{resolver}, C{virtualAliases} and C{localAliases} (opened tables).
    """

    def __init__(self, settings, tables, resolver=None):
        self.settings = settings
        self.resolver = resolver if resolver is not None else AddressResolver(settings, tables)
        self.hostname = settings.hostname
        self.virtualAliases = [tables.open(t) for t in settings.virtualAliasMaps]
        self.localAliases = [tables.open(t) for t in settings.aliasMaps]
        self.delimiter = settings.delimiter
        self.recursionLimit = settings.recursionLimit
        self.expansionLimit = settings.expansionLimit

    async def route(self, address, sender=None):
        """A list of Route or RouteError, one per address C{address} expands to (C{sender}: see resolve())."""
        try:
            expanded = await self._expand(address, 0, frozenset())
        except _Refused as e:
            return [e.error]
        except TableTemporaryError:
            return [RouteError(address, "deferred", "4.3.0", "alias table lookup failure")]
        if len(expanded) > self.expansionLimit:
            return [RouteError(address, "bounced", "5.3.0", "virtual alias table expansion limit exceeded")]
        results = []
        for item in expanded:
            if isinstance(item, RouteError):
                results.append(item)
                continue
            try:
                results.append(await self.resolve(item, sender))
            except TableTemporaryError:
                results.append(RouteError(item, "deferred", "4.3.0", "transport table lookup failure"))
        return results

    async def resolve(self, address, sender=None):
        """Route (or RouteError) for one address, without alias expansion."""
        resolution = await self.resolver.resolve(address, sender)
        if resolution.addressClass == "alias":
            return RouteError(address, "bounced", "5.1.1", ALIAS_UNKNOWN)
        return Route(address, resolution.transport, resolution.nexthop)

    # -- aliases -----------------------------------------------------------------

    async def _lookupAlias(self, address):
        """(matched key, targets text) from virtual_alias_maps, then alias_maps; or None."""
        local, domain = splitAddress(address)
        isLocal = await self.resolver.isLocal(domain)
        for table in self.virtualAliases:
            for key in tableKeys(table, addressKeys(address, self.delimiter, False)):
                value = await table.lookup(key)
                if value is not None:
                    return key, value
        if isLocal and self.localAliases:
            for i, key in enumerate(addressKeys(local, self.delimiter, True)):
                for table in self.localAliases:
                    if i and getattr(table, "pattern", False):  # a pattern table: the whole key only
                        continue
                    value = await table.lookup(key)
                    if value is not None:
                        return key + (f"@{domain}" if domain and "@" not in key else ""), value
        return None

    def _extension(self, address, matchedKey):
        """The +ext of C{address} that the matched key did not contain (propagated to targets)."""
        local, _ = splitAddress(address)
        matchedLocal, _ = splitAddress(matchedKey)
        if not self.delimiter or matchedKey.startswith("@") or matchedLocal == local.lower():
            return ""
        return local[len(matchedLocal):]

    async def _expand(self, address, depth, seen):
        if depth > self.recursionLimit:
            raise _Refused(RouteError(address, "bounced", "5.4.6", "mail forwarding loop (virtual alias recursion limit)"))
        found = await self._lookupAlias(address)
        if found is None:
            return [address]
        key, value = found
        targets = [t.strip().strip("<>") for t in splitList(value) if t.strip().strip("<>")]
        if not targets:
            return [RouteError(address, "deferred", "4.3.0", f"alias {key} has no targets")]
        extension = self._extension(address, key)
        results = []
        for target in targets:
            if target.startswith(("|", "/", ":include:")):
                results.append(RouteError(address, "deferred", "4.3.0", f"alias {key}: unsupported target {target[:40]}"))
                continue
            if "@" not in target:
                _, domain = splitAddress(address)
                target = f"{target}@{domain or self.hostname}"
            if extension:
                tlocal, tdomain = splitAddress(target)
                target = f"{tlocal}{extension}@{tdomain}"
            if target.lower() == address.lower() or target.lower() in seen:
                results.append(target)  # maps to itself: deliver here
                continue
            results.extend(await self._expand(target, depth + 1, seen | {address.lower()}))
            if len(results) > self.expansionLimit:
                break
        unique = []
        seenAddresses = set()
        for item in results:
            key = item.lower() if isinstance(item, str) else id(item)
            if key not in seenAddresses:
                seenAddresses.add(key)
                unique.append(item)
        return unique


class _Refused(Exception):
    def __init__(self, error):
        super().__init__(error.text)
        self.error = error
