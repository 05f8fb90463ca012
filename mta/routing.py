"""mta.routing - where each recipient goes: trivial-rewrite(8)'s resolve.

Router.route(address) expands aliases and resolves every resulting address
to (transport, nexthop), as Postfix's cleanup(8) and trivial-rewrite(8) do:

1. virtual_alias_maps rewrite any address (user+ext@domain, user@domain,
   @domain, with the extension carried over to the result as
   propagate_unmatched_extensions = virtual does); alias_maps rewrite the
   local part of $mydestination addresses (aliases(5): name: targets).
   One address may become many; expansion is recursive, an address that
   maps to itself stops there, and virtual_alias_recursion_limit and
   virtual_alias_expansion_limit bound the work (a loop or an explosion
   is a bounce, 5.4.6 / 5.3.0).  An alias with no targets, or one naming
   a file, a command or an :include:, is an error (deferred 4.3.0: mta
   has no local(8) to run them, and the administrator can fix the table).
2. The address class picks the transport: $mydestination (and addresses
   without a domain) -> local_transport; $virtual_alias_domains not
   rewritten -> bounced "User unknown in virtual alias table";
   $virtual_mailbox_domains -> virtual_transport; $relay_domains ->
   relay_transport; anything else -> default_transport.  The nexthop is
   the transport's own (``smtp:[relay]:587``), else $relayhost for relay
   and default mail, else the domain.
3. transport_maps override that: keys tried are the address, the address
   without extension, the domain, each parent as ``.parent``, then ``*``;
   a value is ``transport:nexthop`` where an empty part keeps the one from
   step 2.

SECURITY
    Addresses are untrusted (they come from the queue file, i.e. from
    clients); they are only looked up and compared.  Table failures defer
    (4.3.0), never bounce.

CONFIGURATION
    mydestination, virtual_alias_domains, virtual_mailbox_domains,
    relay_domains, relayhost, local_transport, virtual_transport,
    relay_transport, default_transport, transport_maps, virtual_alias_maps,
    alias_maps, recipient_delimiter, virtual_alias_recursion_limit,
    virtual_alias_expansion_limit.
"""

import attrs

from mta.config.types import splitList
from mta.tables.matchers import DomainMatcher
from mta.tables import TableTemporaryError, addressKeys


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


def splitTransport(value):
    """'smtp:[host]:25' -> ('smtp', '[host]:25'); 'error:text' -> ('error', 'text')."""
    transport, _, nexthop = value.strip().partition(":")
    return transport.strip(), nexthop.strip()


def _split(address):
    local, at, domain = address.rpartition("@")
    return (local, domain.lower()) if at else (address, "")


class Router:
    def __init__(self, params, tables):
        self.hostname = params["myhostname"]
        self.localDomains = DomainMatcher(params["mydestination"], tables, subdomains=False)
        self.aliasDomains = DomainMatcher(params["virtual_alias_domains"], tables, subdomains=False)
        self.mailboxDomains = DomainMatcher(params["virtual_mailbox_domains"], tables, subdomains=False)
        self.relayDomains = DomainMatcher(params["relay_domains"], tables, subdomains=True)
        self.virtualAliases = [tables.open(t) for t in params["virtual_alias_maps"]]
        self.localAliases = [tables.open(t) for t in params["alias_maps"]]
        self.transportMaps = [tables.open(t) for t in params["transport_maps"]]
        self.relayhost = params["relayhost"]
        self.delimiter = params["recipient_delimiter"]
        self.recursionLimit = params["virtual_alias_recursion_limit"]
        self.expansionLimit = params["virtual_alias_expansion_limit"]
        self.transports = {
            "local": splitTransport(params["local_transport"]),
            "virtual": splitTransport(params["virtual_transport"]),
            "relay": splitTransport(params["relay_transport"]),
            "default": splitTransport(params["default_transport"]),
        }

    async def route(self, address):
        """A list of Route or RouteError, one per address C{address} expands to."""
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
                results.append(await self.resolve(item))
            except TableTemporaryError:
                results.append(RouteError(item, "deferred", "4.3.0", "transport table lookup failure"))
        return results

    # -- aliases -----------------------------------------------------------------

    async def _isLocal(self, domain):
        return not domain or await self.localDomains.matches(domain)

    async def _lookupAlias(self, address):
        """(matched key, targets text) from virtual_alias_maps, then alias_maps; or None."""
        local, domain = _split(address)
        isLocal = await self._isLocal(domain)
        for table in self.virtualAliases:
            for key in addressKeys(address, self.delimiter, False):
                value = await table.lookup(key)
                if value is not None:
                    return key, value
        if isLocal and self.localAliases:
            for key in addressKeys(local, self.delimiter, True):
                for table in self.localAliases:
                    value = await table.lookup(key)
                    if value is not None:
                        return key + (f"@{domain}" if domain and "@" not in key else ""), value
        return None

    def _extension(self, address, matchedKey):
        """The +ext of C{address} that the matched key did not contain (propagated to targets)."""
        local, _ = _split(address)
        matchedLocal, _ = _split(matchedKey)
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
                _, domain = _split(address)
                target = f"{target}@{domain or self.hostname}"
            if extension:
                tlocal, tdomain = _split(target)
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

    # -- resolve -------------------------------------------------------------------

    async def resolve(self, address):
        """Route (or RouteError) for one address, without alias expansion."""
        _, domain = _split(address)
        if await self._isLocal(domain):
            addressClass = "local"
        elif await self.aliasDomains.matches(domain):
            return RouteError(address, "bounced", "5.1.1", "User unknown in virtual alias table")
        elif await self.mailboxDomains.matches(domain):
            addressClass = "virtual"
        elif await self.relayDomains.matches(domain):
            addressClass = "relay"
        else:
            addressClass = "default"
        transport, nexthop = self.transports[addressClass]
        if not nexthop:
            if addressClass in ("relay", "default") and self.relayhost:
                nexthop = self.relayhost
            elif addressClass == "local":
                nexthop = self.hostname
            else:
                nexthop = domain
        override = await self._transportMap(address, domain)
        if override is not None:
            t, n = splitTransport(override)
            transport = t or transport
            nexthop = n or nexthop
        return Route(address, transport, nexthop)

    async def _transportMap(self, address, domain):
        if not self.transportMaps:
            return None
        keys = [address.lower()]
        local, _ = _split(address.lower())
        for c in self.delimiter:
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


class _Refused(Exception):
    def __init__(self, error):
        super().__init__(error.text)
        self.error = error
