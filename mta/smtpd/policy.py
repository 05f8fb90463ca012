"""mta.smtpd.policy - relay control and recipient checks at RCPT.

The protocol only parses; this layer decides.  ETRN runs
smtpd_etrn_restrictions (default empty: permit) on its domain, which must
then be in fast_flush_domains (default $relay_domains, with subdomains).
RCPT TO runs
smtpd_recipient_restrictions (mta.smtpd.restrictions; default
``permit_mynetworks, reject_unauth_destination``), then, with
smtpd_reject_unlisted_recipient = yes, refuses recipients unknown in their
address class, as Postfix does:

    $mydestination            local_recipient_maps (empty: all valid)
    $virtual_alias_domains    virtual_alias_maps
    $virtual_mailbox_domains  virtual_alias_maps, then virtual_mailbox_maps
    $relay_domains            relay_recipient_maps (empty: all valid)

checkRecipient() and checkEtrn() also say the notify_classes class of a
refusal (policy; bounce for an unknown recipient; data for a table that
cannot answer), for the postmaster's transcript notices (mta.smtpd.chat).

Relay control (reject_unauth_destination) lets an untrusted client reach
only those domains (relay_domains with their subdomains).  Relay tricks
are judged on the address as parsed (mta.address): a recipient whose local
part holds '@', '%' or '!' (sender-specified routing; Postfix's
allow_untrusted_routing = no) or whose domain is a literal is never an
authorized destination.

SECURITY
    Addresses are untrusted; a table that cannot answer gives a 4xx, never
    a 5xx.

CONFIGURATION
    mynetworks, mydestination, relay_domains, virtual_alias_domains,
    virtual_alias_maps, virtual_mailbox_domains, virtual_mailbox_maps,
    relay_recipient_maps, local_recipient_maps, recipient_delimiter,
    smtpd_recipient_restrictions, smtpd_reject_unlisted_recipient,
    relay_domains_reject_code, unknown_*_reject_code, non_fqdn_reject_code,
    smtpd_etrn_restrictions, fast_flush_domains.
"""

from mta.model import Reply
from mta.smtpd.restrictions import Request, RestrictionList
from mta.tables import TableTemporaryError, addressKeys
from mta.tables.matchers import DomainMatcher, NetworkMatcher


async def _inMaps(maps, address, delimiter, local):
    for table in maps:
        for key in addressKeys(address, delimiter, local):
            if await table.lookup(key) is not None:
                return True
    return False


class RecipientPolicy:
    def __init__(self, params, tables):
        self.mynetworks = NetworkMatcher(params["mynetworks"], tables)
        self.mydestination = DomainMatcher(params["mydestination"], tables, subdomains=False)
        self.relayDomains = DomainMatcher(params["relay_domains"], tables, subdomains=True)
        self.aliasDomains = DomainMatcher(params["virtual_alias_domains"], tables, subdomains=False)
        self.mailboxDomains = DomainMatcher(params["virtual_mailbox_domains"], tables, subdomains=False)
        self.aliasMaps = [tables.open(t) for t in params["virtual_alias_maps"]]
        self.mailboxMaps = [tables.open(t) for t in params["virtual_mailbox_maps"]]
        self.relayRecipientMaps = [tables.open(t) for t in params["relay_recipient_maps"]]
        self.localRecipientMaps = [tables.open(t) for t in params["local_recipient_maps"]]
        self.delimiter = params["recipient_delimiter"]
        self.rejectUnlisted = params["smtpd_reject_unlisted_recipient"]
        self.relayRejectCode = params["relay_domains_reject_code"]
        self.nonFqdnRejectCode = params["non_fqdn_reject_code"]
        self.codes = {
            "local": params["unknown_local_recipient_reject_code"],
            "alias": params["unknown_virtual_alias_reject_code"],
            "mailbox": params["unknown_virtual_mailbox_reject_code"],
            "relay": params["unknown_relay_recipient_reject_code"],
        }
        self.restrictions = RestrictionList(params["smtpd_recipient_restrictions"], self, tables)
        self.etrnRestrictions = RestrictionList(params["smtpd_etrn_restrictions"], self, tables)
        self.fastFlushDomains = DomainMatcher(params["fast_flush_domains"], tables, subdomains=True)

    async def addressClass(self, domain):
        """local, alias, mailbox, relay or None (elsewhere), as trivial-rewrite(8) sees it."""
        if not domain or await self.mydestination.matches(domain):
            return "local"
        if await self.aliasDomains.matches(domain):
            return "alias"
        if await self.mailboxDomains.matches(domain):
            return "mailbox"
        if await self.relayDomains.matches(domain):
            return "relay"
        return None

    async def checkRecipient(self, clientAddress, address, helo=None, sender=None):
        """
        Judge RCPT TO:<address> (an mta.model.Address) from C{clientAddress}.
        Return (reply, hold, errorClass): reply None to accept, or the Reply
        to send; hold None, or the reason a HOLD action gave; errorClass
        the notify_classes class of a refusal, as Postfix's: policy for a
        restriction, bounce for an unknown recipient, data for a table
        that cannot answer.
        """
        try:
            decision = await self.restrictions.evaluate(Request(clientAddress, helo, sender, address))
            if decision.action in ("reject", "defer"):
                return decision.reply, None, decision.errorClass
            if self.rejectUnlisted:
                reply = await self.unlistedRecipient(address)
                if reply is not None:
                    return reply, None, "bounce"
        except TableTemporaryError:
            return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure"), None, "data"
        return None, decision.hold, None

    async def checkEtrn(self, clientAddress, clientName, helo, domain):
        """
        Judge ETRN C{domain} with smtpd_etrn_restrictions (the domain is
        what check_etrn_access looks up; recipient restrictions have nothing
        to judge): (the Reply to send, its notify_classes class), or (None,
        None) to go on.
        """
        request = Request(clientAddress, helo, None, None, client_name=clientName, etrn_domain=domain)
        decision = await self.etrnRestrictions.evaluate(request)
        if decision.action in ("reject", "defer"):
            return decision.reply, decision.errorClass
        return None, None

    async def authorizedDestination(self, address):
        if address.domain.startswith("["):
            return False
        if any(c in address.local for c in "@%!"):
            return False
        return await self.addressClass(address.domain) is not None

    async def unlistedRecipient(self, address):
        """A Reply if C{address} is unknown in its address class, else None."""
        addressClass = await self.addressClass(address.domain)
        text = str(address)
        if addressClass == "local":
            if not address.domain or address.local.lower() == "postmaster" or not self.localRecipientMaps:
                return None
            if await _inMaps(self.localRecipientMaps + self.aliasMaps, text, self.delimiter, True):
                return None
            table = "local recipient table"
        elif addressClass == "alias":
            if await _inMaps(self.aliasMaps, text, self.delimiter, False):
                return None
            table = "virtual alias table"
        elif addressClass == "mailbox":
            if await _inMaps(self.aliasMaps + self.mailboxMaps, text, self.delimiter, False):
                return None
            table = "virtual mailbox table"
        elif addressClass == "relay":
            if not self.relayRecipientMaps or await _inMaps(self.relayRecipientMaps, text, self.delimiter, False):
                return None
            table = "relay recipient table"
        else:
            return None
        code = self.codes[addressClass]
        return Reply(code, f"{code // 100}.1.1", f"<{address}>: Recipient address rejected: User unknown in {table}")
