"""mta.smtpd.policy - relay control and recipient checks at RCPT.

The protocol only parses; this layer decides.  ETRN runs
smtpd_etrn_restrictions (default empty: permit) on its domain, which must
then be in fast_flush_domains (default $relay_domains, with subdomains).
RCPT TO runs
smtpd_recipient_restrictions (mta.smtpd.restrictions; default
``permit_mynetworks, reject_unauth_destination``), then, with
smtpd_reject_unlisted_recipient = yes, refuses recipients unknown in their
address class, as Postfix does:

    local    ($mydestination)            local_recipient_maps (empty: all valid)
    alias    ($virtual_alias_domains)    virtual_alias_maps
    virtual  ($virtual_mailbox_domains)  virtual_alias_maps, then virtual_mailbox_maps
    relay    ($relay_domains)            relay_recipient_maps (empty: all valid)

The address class is not decided here: the shared address resolver
(mta.routing.AddressResolver, trivial-rewrite) gives it, the same object
that the queue manager's router asks, so the server and the queue never
disagree about a domain.  It is built from [main]: a listener's override of
mydestination, relay_domains or virtual_*_domains does not change the
classes (as in Postfix, whose smtpd asks trivial-rewrite, which reads
main.cf only).  What this module reads itself is per listener
(mta.config.settings.routing.RecipientCheckSettings): mynetworks, the
recipient tables, the restriction lists, the reply codes, fast_flush_domains.

checkRecipient() and checkEtrn() also say the notify_classes class of a
refusal (policy; bounce for an unknown recipient; data for a table that
cannot answer), for the postmaster's transcript notices (mta.smtpd.chat).

Relay control (reject_unauth_destination, Postfix's
permit_auth_destination) lets an untrusted client reach only final
destinations (local, alias, virtual) and relay destinations
(relay_domains with their subdomains).  Relay tricks are judged on the
address as parsed (mta.address) through the resolver's flags: a recipient
whose local part holds '@', '%' or '!' (sender-specified routing, the
resolver's "routed" flag; Postfix's allow_untrusted_routing = no) or whose
domain is a literal is never an authorized destination.

SECURITY
    Addresses are untrusted; a table that cannot answer gives a 4xx, never
    a 5xx.

CONFIGURATION
    mynetworks, virtual_alias_maps, virtual_mailbox_maps,
    relay_recipient_maps, local_recipient_maps, recipient_delimiter,
    smtpd_recipient_restrictions, smtpd_reject_unlisted_recipient,
    relay_domains_reject_code, unknown_*_reject_code, non_fqdn_reject_code,
    smtpd_etrn_restrictions, fast_flush_domains (per listener); the address
    classes through the resolver (mydestination, virtual_alias_domains,
    virtual_mailbox_domains, relay_domains, from [main]).

DEVIATIONS
    A domain literal is never an authorized destination (Postfix accepts
    one naming its own interface address as local).  See mta.routing.
"""

from mta.model import Reply
from mta.smtpd.restrictions import Request, RestrictionList
from mta.tables import TableTemporaryError, addressKeys
from mta.tables.matchers import DomainMatcher, NetworkMatcher

_TABLE_NAMES = {
    "local": "local recipient table",
    "alias": "virtual alias table",
    "virtual": "virtual mailbox table",
    "relay": "relay recipient table",
}


async def _inMaps(maps, address, delimiter, local):
    for table in maps:
        for key in addressKeys(address, delimiter, local):
            if await table.lookup(key) is not None:
                return True
    return False


class RecipientPolicy:
    """
    The recipient checks of one listener.  C{settings}: its
    RecipientCheckSettings (``listener.settings.recipients``);
    C{resolver}: the shared mta.routing.AddressResolver; C{tables}: the
    Tables registry.  Attributes: C{settings}, C{resolver}, C{mynetworks}
    (a NetworkMatcher, also used for local_header_rewrite_clients),
    C{fastFlushDomains}, C{restrictions}, C{etrnRestrictions}, and the
    reply codes the restrictions read (C{relayRejectCode},
    C{nonFqdnRejectCode}).  C{dns}: a callable that returns the DNS client,
    for the DNS lists (C{dnsxl}, mta.smtpd.dnsxl; without one a DNS list
    restriction never matches and a warning says why); C{maillog}: where
    the lists' warnings go.
    """

    def __init__(self, settings, resolver, tables, dns=None, maillog=None, reactor=None, queueDirectory=None):
        from mta.smtpd.dnsxl import Dnsxl
        from mta.smtpd.policyclient import PolicyClients

        self.settings = settings
        self.dns = dns
        self.dnsxl = Dnsxl(dns, settings.rblCode, settings.defaultRblReply,
                           [tables.open(t) for t in settings.rblReplyMaps], maillog) if dns is not None else None
        self.maillog = maillog
        # check_policy_service's servers and their connections (None without a reactor: no queries).
        self.policyClients = PolicyClients(reactor, settings, queueDirectory, maillog) if reactor is not None else None
        self.resolver = resolver
        self.mynetworks = NetworkMatcher(settings.mynetworks, tables)
        self.aliasMaps = [tables.open(t) for t in settings.virtualAliasMaps]
        self.mailboxMaps = [tables.open(t) for t in settings.virtualMailboxMaps]
        self.relayRecipientMaps = [tables.open(t) for t in settings.relayRecipientMaps]
        self.localRecipientMaps = [tables.open(t) for t in settings.localRecipientMaps]
        self.delimiter = settings.delimiter
        self.rejectUnlisted = settings.rejectUnlisted
        self.relayRejectCode = settings.relayRejectCode
        self.nonFqdnRejectCode = settings.nonFqdnRejectCode
        self.unknownClientCode = settings.unknownClientCode
        self.restrictions = RestrictionList(settings.recipientRestrictions, self, tables)
        self.etrnRestrictions = RestrictionList(settings.etrnRestrictions, self, tables)
        self.fastFlushDomains = DomainMatcher(settings.fastFlushDomains, tables, subdomains=True)
        self.relayClientcerts = [tables.open(t) for t in settings.relayClientcerts]  # permit_tls_clientcerts
        self.senderLoginMaps = [tables.open(t) for t in settings.senderLoginMaps]

    async def senderOwners(self, sender):
        """smtpd_sender_login_maps: the login names (lower case) that own C{sender}, or None if unlisted."""
        for table in self.senderLoginMaps:
            for key in addressKeys(str(sender), self.delimiter, False):
                value = await table.lookup(key)
                if value is not None:
                    return {name.lower() for name in value.replace(",", " ").split()}
        return None

    async def checkRecipient(self, clientAddress, address, helo=None, sender=None, tls=None, login=(None, None),
                             peer=None, recipients=0, note=None, attributes=None):
        """
        Judge RCPT TO:<address> (an mta.model.Address) from C{clientAddress}.
        Return (reply, hold, errorClass): reply None to accept, or the Reply
        to send; hold None, or the reason a HOLD action gave; errorClass
        the notify_classes class of a refusal, as Postfix's: policy for a
        restriction, bounce for an unknown recipient, data for a table
        that cannot answer.  C{tls}: the session's TlsInfo (mta.tls.info), None without TLS.
        C{peer}: the client's names (mta.smtpd.peername.PeerName), None: unknown.
        C{recipients}: the recipients accepted so far in the transaction;
        C{note}: RestrictionList.evaluate's, for PREPEND, WARN, INFO and
        warn_if_reject (the caller adds the header or logs the line);
        C{attributes}: a callable that gives what check_policy_service sends
        besides (mta.smtpd.policyclient), called only when a query is made.
        """
        names = {} if peer is None else dict(
            client_name=peer.name, reverse_client_name=peer.reverseName, client_name_status=peer.nameStatus,
            reverse_client_name_status=peer.reverseStatus)
        try:
            request = Request(clientAddress, helo, sender, address, tls=tls, sasl_method=login[0],
                              sasl_username=login[1], recipient_count=recipients, attributes=attributes,
                              **names)
            decision = await self.restrictions.evaluate(request, note)
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
        """
        permit_auth_destination: may any client send to C{address}?  Not
        when it is routed or a literal; yes for the final classes and
        relay; no for default.
        """
        routed, literal = self.resolver.flags(address)
        if routed or literal:  # judged before any lookup: a trick never costs a table query
            return False
        return await self.resolver.addressClass(address.domain) != "default"

    async def unlistedRecipient(self, address, what="Recipient address", detail="1.1"):
        """
        A Reply if C{address} is unknown in its address class, else None
        (reject_unlisted_sender: C{what} "Sender address", C{detail} "1.0").
        """
        addressClass = await self.resolver.addressClass(address.domain)
        text = str(address)
        if addressClass == "local":
            if not address.domain or address.local.lower() == "postmaster" or not self.localRecipientMaps:
                return None
            if await _inMaps(self.localRecipientMaps + self.aliasMaps, text, self.delimiter, True):
                return None
        elif addressClass == "alias":
            if await _inMaps(self.aliasMaps, text, self.delimiter, False):
                return None
        elif addressClass == "virtual":
            if await _inMaps(self.aliasMaps + self.mailboxMaps, text, self.delimiter, False):
                return None
        elif addressClass == "relay":
            if not self.relayRecipientMaps or await _inMaps(self.relayRecipientMaps, text, self.delimiter, False):
                return None
        else:
            return None
        code = self.settings.unknownCode(addressClass)
        table = _TABLE_NAMES[addressClass]
        return Reply(code, f"{code // 100}.{detail}", f"<{address}>: {what} rejected: User unknown in {table}")
