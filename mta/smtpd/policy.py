"""mta.smtpd.policy - relay control and recipient checks at RCPT.

The protocol only parses; this layer decides.  Today it evaluates the
Postfix default smtpd_recipient_restrictions, ``permit_mynetworks,
reject_unauth_destination``: a client in $mynetworks may send anywhere;
anyone else only to a domain in $mydestination or $relay_domains (and their
subdomains, as parent_domain_matches_subdomains has it for relay_domains).

Relay tricks are judged on the address as parsed (mta.address): an
untrusted client never gets a recipient whose local part holds '@', '%' or
'!' (sender-specified routing, Postfix's allow_untrusted_routing = no),
nor one at a domain literal.

SECURITY
    Addresses are untrusted; a table that cannot answer gives 450 4.3.0,
    never a 5xx.

CONFIGURATION
    mynetworks, mydestination, relay_domains; relay_domains_reject_code
    arrives with the restriction language.
"""

import ipaddress

from mta.config.types import TableSpec
from mta.model import Reply
from mta.tables import TableTemporaryError


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
            for candidate in self._candidates(domain):
                if await table.lookup(candidate) is not None:
                    return True
        return False


class NetworkMatcher:
    def __init__(self, items, tables):
        self._networks = [i for i in items if not isinstance(i, TableSpec)]
        self._tables = [tables.open(i) for i in items if isinstance(i, TableSpec)]

    async def matches(self, address):
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            candidates = (ip, ip.ipv4_mapped)
        else:
            candidates = (ip,)
        if any(c in net for c in candidates for net in self._networks if c.version == net.version):
            return True
        for table in self._tables:
            if await table.lookup(str(ip)) is not None:
                return True
        return False


class RecipientPolicy:
    def __init__(self, params, tables):
        self.mynetworks = NetworkMatcher(params["mynetworks"], tables)
        self.mydestination = DomainMatcher(params["mydestination"], tables, subdomains=False)
        self.relayDomains = DomainMatcher(params["relay_domains"], tables, subdomains=True)

    async def isLocal(self, domain):
        return await self.mydestination.matches(domain)

    async def checkRecipient(self, clientAddress, address):
        """
        Judge RCPT TO:<address> (an mta.model.Address) from C{clientAddress}.
        Return None to accept, or the Reply to send.
        """
        try:
            if await self.mynetworks.matches(clientAddress):
                return None
            if await self._authorizedDestination(address):
                return None
        except TableTemporaryError:
            return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure")
        return Reply(554, "5.7.1", f"<{address}>: Relay access denied")

    async def _authorizedDestination(self, address):
        if not address.domain:  # <postmaster>
            return True
        if address.domain.startswith("["):
            return False
        if any(c in address.local for c in "@%!"):
            return False
        return await self.mydestination.matches(address.domain) or await self.relayDomains.matches(address.domain)
