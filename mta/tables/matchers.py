"""mta.tables.matchers - match a domain or a client address against a list parameter.

Postfix list parameters (mydestination, relay_domains, mynetworks, ...) mix
literal entries with lookup tables.  DomainMatcher answers "is this domain
listed?" (optionally with subdomains, as parent_domain_matches_subdomains
has it for relay_domains); NetworkMatcher answers "is this client address
in one of these networks or tables?".  DomainMatcher makes the address
classes of the one address resolver (mta.routing) and the SMTP server's
fast_flush_domains; NetworkMatcher its mynetworks and the other client
lists.

SECURITY
    The domain or address is untrusted; it is only compared and looked up.

CONFIGURATION
    None of their own.
"""

import ipaddress

from mta.config.types import TableSpec
from mta.tables import tableKeys


class DomainMatcher:
    """Matches a domain against a list of names and tables (a domains parameter)."""

    def __init__(self, items, tables, subdomains):
        self._names = frozenset(i for i in items if isinstance(i, str) and not i.startswith("."))
        self._dotted = tuple(i for i in items if isinstance(i, str) and i.startswith("."))
        self._tables = [tables.open(i) for i in items if isinstance(i, TableSpec)]
        self._subdomains = subdomains

    def _candidates(self, domain):
        yield domain
        if self._subdomains:
            parts = domain.split(".")
            for i in range(1, len(parts)):
                yield ".".join(parts[i:])

    async def matches(self, domain):
        domain = domain.lower().rstrip(".")
        if domain in self._names:
            return True
        if self._subdomains and any(domain.endswith("." + d) for d in self._names):
            return True
        if any(domain.endswith(d) for d in self._dotted):
            return True
        for table in self._tables:
            for candidate in tableKeys(table, list(self._candidates(domain))):  # a pattern table: the name
                if await table.lookup(candidate) is not None:
                    return True
        return False


class NetworkMatcher:
    def __init__(self, items, tables):
        self._networks = [i for i in items if not isinstance(i, TableSpec)]
        self._tables = [tables.open(i) for i in items if isinstance(i, TableSpec)]
        self.static = not self._tables  # staticMatch() is the whole answer

    def staticMatch(self, address):
        """Does C{address} fall in one of the listed networks (tables not consulted)?"""
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates = (ip, ip.ipv4_mapped)
        else:
            candidates = (ip,)
        return any(c in net for c in candidates for net in self._networks if c.version == net.version)

    async def matches(self, address):
        if self.staticMatch(address):
            return True
        for table in self._tables:
            try:
                key = str(ipaddress.ip_address(address.split("%", 1)[0]))
            except ValueError:
                return False
            if await table.lookup(key) is not None:
                return True
        return False


