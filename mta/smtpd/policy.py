"""mta.smtpd.policy - the restriction stages, relay control and recipient checks.

The protocol only parses; this layer decides, stage by stage as Postfix's
smtpd_check.c (the lists: mta.smtpd.restrictions):

    client   smtpd_client_restrictions     at connect, or at each RCPT/ETRN
    helo     smtpd_helo_restrictions       at HELO/EHLO, or at each RCPT/ETRN
    sender   smtpd_sender_restrictions     at MAIL FROM, or at each RCPT
    recipient smtpd_relay_restrictions and smtpd_recipient_restrictions, at RCPT
             (smtpd_relay_before_recipient_restrictions = no: recipient first)
    data     smtpd_data_restrictions       at DATA
    eod      smtpd_end_of_data_restrictions before the message is queued
    etrn     smtpd_etrn_restrictions       at ETRN

"or at each RCPT" is smtpd_delay_reject = yes (the default).  A
DEFER_IF_PERMIT is carried from stage to stage (client, then HELO, then
sender, then recipient; the DATA and end-of-data stages start afresh) and
turns an acceptance at the end of the recipient, ETRN, DATA or end-of-data
stage into its 450.  Each check returns an Outcome: the refusal (a Reply and
its notify_classes class), or none, and the Evaluation with the effects met
(HOLD, DISCARD, REDIRECT, BCC).  A name in a list that is no restriction is
a restriction class (smtpd_restriction_classes, compiled at first use); an
access value that is a class name or a restriction list is compiled once
(valueList, at most VALUE_LISTS kept).

ETRN's domain must then be in fast_flush_domains (default $relay_domains,
with subdomains).  After the recipient stage, with
smtpd_reject_unlisted_recipient = yes, recipients unknown in their address
class are refused, as Postfix does:

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
    smtpd_client_restrictions, smtpd_helo_restrictions,
    smtpd_sender_restrictions, smtpd_relay_restrictions,
    smtpd_relay_before_recipient_restrictions, smtpd_data_restrictions,
    smtpd_end_of_data_restrictions, smtpd_delay_reject,
    smtpd_restriction_classes, smtpd_reject_unlisted_sender,
    access_map_reject_code, access_map_defer_code, reject_code, defer_code,
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
    Without smtpd_delay_reject, the HOLD, DISCARD, REDIRECT and BCC of the
    client and HELO stages apply to every transaction of the session.
"""

import attrs

from mta.config.types import TableSpec, parseRestrictions, splitList
from mta.model import Reply
from mta.smtpd.access import accessResult
from mta.smtpd.decision import Decision
from mta.smtpd.restrictions import RESTRICTIONS, Evaluation, Request, RestrictionList, given, subjectOf
from mta.tables import TableTemporaryError, addressKeys, tableKeys

VALUE_LISTS = 1000  # access values compiled as restriction lists, kept per listener
DUNNO_DECISION = Decision("dunno")


@attrs.frozen
class Outcome:
    """What a stage check says: the refusal (reply, errorClass), None to go on, and its Evaluation."""

    reply: Reply | None
    errorClass: str | None
    evaluation: Evaluation

    @property
    def hold(self):
        return self.evaluation.hold


def _refuses(decision):
    return decision.action in ("reject", "defer")


def _lookupFailure(request, stage):
    """Postfix's reject_dict_retry: 451 4.3.0 <name>: Temporary lookup failure."""
    name, _ = subjectOf(attrs.evolve(request, stage=stage))
    return Reply(451, "4.3.0", f"<{name}>: Temporary lookup failure")
from mta.tables.matchers import DomainMatcher, NetworkMatcher

_TABLE_NAMES = {
    "local": "local recipient table",
    "alias": "virtual alias table",
    "virtual": "virtual mailbox table",
    "relay": "relay recipient table",
}


async def _inMaps(maps, address, delimiter, local):
    for table in maps:
        for key in tableKeys(table, addressKeys(address, delimiter, local)):
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
    the lists' warnings go; C{verifier} and C{unverified}: the verify
    service's query and the UnverifiedCheckSettings, for
    reject_unverified_recipient and reject_unverified_sender.
    """

    def __init__(self, settings, resolver, tables, dns=None, maillog=None, reactor=None, queueDirectory=None,
                 verifier=None, unverified=None):
        from mta.smtpd.dnsxl import Dnsxl
        from mta.smtpd.policyclient import PolicyClients

        self.settings = settings
        self.dns = dns
        self.dnsxl = Dnsxl(dns, settings.rblCode, settings.defaultRblReply,
                           [tables.open(t) for t in settings.rblReplyMaps], maillog,
                           settings.expansionFilter, clock=reactor) if dns is not None else None
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
        self.clock = reactor  # sleep N, address_verify_poll_delay
        # reject_unverified_* (mta.smtpd.verifycheck): verifier(address) -> Deferred[(status, text)], the
        # verify service's query (None: a service failure, 450), and the listener's UnverifiedCheckSettings.
        self.verifier = verifier
        self.unverified = unverified
        self._tables = tables
        self._classes = {}  # name -> RestrictionList, made at first use
        self._valueLists = {}  # access values that are restriction lists, compiled once (bounded)
        self.clientRestrictions = RestrictionList(settings.clientRestrictions, self, tables)
        self.heloRestrictions = RestrictionList(settings.heloRestrictions, self, tables)
        self.senderRestrictions = RestrictionList(settings.senderRestrictions, self, tables)
        self.relayRestrictions = RestrictionList(settings.relayRestrictions, self, tables)
        self.restrictions = RestrictionList(settings.recipientRestrictions, self, tables)
        self.dataRestrictions = RestrictionList(settings.dataRestrictions, self, tables)
        self.endOfDataRestrictions = RestrictionList(settings.endOfDataRestrictions, self, tables)
        self.etrnRestrictions = RestrictionList(settings.etrnRestrictions, self, tables)
        self.delayReject = settings.delayReject
        self.fastFlushDomains = DomainMatcher(settings.fastFlushDomains, tables, subdomains=True)
        self.relayClientcerts = [tables.open(t) for t in settings.relayClientcerts]  # permit_tls_clientcerts
        self.senderLoginMaps = [tables.open(t) for t in settings.senderLoginMaps]

    def access(self, value, subject, what):
        """An access(5) value as a Decision, with access_map_reject_code and access_map_defer_code."""
        return accessResult(value, subject, what, self.settings.accessRejectCode, self.settings.accessDeferCode)

    def restrictionClass(self, name):
        """The RestrictionList of the restriction class C{name} (smtpd_restriction_classes), or None."""
        compiled = self._classes.get(name)
        if compiled is None and name in self.settings.restrictionClasses:
            compiled = self._classes[name] = RestrictionList(self.settings.restrictionClasses[name], self,
                                                             self._tables)
        return compiled

    def valueList(self, text):
        """
        An access value that is a class name or a restriction list, compiled
        (and kept: at most VALUE_LISTS of them); None when it is not one (an
        unknown name, a table inside it).
        """
        compiled = self._valueLists.get(text)
        if compiled is not None or text in self._valueLists:
            return compiled
        try:
            pairs = parseRestrictions(splitList(text))
        except ValueError:
            pairs = None
        if pairs is not None and (not pairs or any(
                isinstance(argument, TableSpec) or (name not in RESTRICTIONS and name not in self.settings.
                                                    restrictionClasses) for name, argument in pairs)):
            pairs = None
        compiled = RestrictionList(pairs, self, self._tables) if pairs is not None else None
        if len(self._valueLists) >= VALUE_LISTS:
            self._valueLists.clear()
        self._valueLists[text] = compiled
        return compiled

    async def senderOwners(self, sender):
        """smtpd_sender_login_maps: the login names (lower case) that own C{sender}, or None if unlisted."""
        for table in self.senderLoginMaps:
            for key in tableKeys(table, addressKeys(str(sender), self.delimiter, False)):
                value = await table.lookup(key)
                if value is not None:
                    return {name.lower() for name in value.replace(",", " ").split()}
        return None

    @staticmethod
    def request(clientAddress, helo=None, sender=None, recipient=None, tls=None, login=(None, None), peer=None,
                recipients=0, attributes=None, **more):
        """The Request the restrictions look at (mta.smtpd.restrictions.Request) from the session's parts."""
        names = {} if peer is None else dict(
            client_name=peer.name, reverse_client_name=peer.reverseName, client_name_status=peer.nameStatus,
            reverse_client_name_status=peer.reverseStatus)
        return Request(clientAddress, helo, sender, recipient, tls=tls, sasl_method=login[0], sasl_username=login[1],
                       recipient_count=recipients, attributes=attributes, **names, **more)

    async def _stage(self, stage, restrictions, request, evaluation):
        """One stage's list (Postfix's generic_checks from smtpd_check_<stage>): the Decision, DUNNO at its end."""
        evaluation.newStage()
        if not restrictions:
            return DUNNO_DECISION
        return await restrictions.run(attrs.evolve(request, stage=stage), evaluation)

    async def _delayed(self, request, evaluation, sender=True):
        """
        smtpd_delay_reject: the client, HELO and (C{sender}) sender stages
        again, at RCPT or ETRN; a refusal, or None.  Each stage starts from
        the defer_if_permit of the stages before it, as Postfix.
        """
        evaluation.deferIfPermit = None
        decision = await self._stage("client", self.clientRestrictions, request, evaluation)
        if _refuses(decision):
            return decision
        if request.helo is not None:
            decision = await self._stage("helo", self.heloRestrictions, request, evaluation)
            if _refuses(decision):
                return decision
        if sender and request.sender is not None:
            decision = await self._stage("sender", self.senderRestrictions, request, evaluation)
            if _refuses(decision):
                return decision
            reply = await self._unlistedSender(request, evaluation)
            if reply is not None:
                return Decision("reject" if reply.code >= 500 else "defer", reply)
        return None

    async def _unlistedSender(self, request, evaluation):
        """smtpd_reject_unlisted_sender, after the sender stage: a Reply, or None."""
        sender = request.sender
        if not self.settings.rejectUnlistedSender or sender is None or sender.isNull or evaluation.discard:
            return None
        return await self.unlistedRecipient(sender, "Sender address", "1.0", shown=given(request, "sender"))

    async def checkSessionStage(self, stage, request, deferIfPermit=None, note=None):
        """
        Without smtpd_delay_reject: the client stage at connect, the HELO
        stage at HELO/EHLO, the sender stage at MAIL FROM.  Returns an
        Outcome: the refusal (reply, errorClass) or none, and the
        Evaluation (its deferIfPermit is carried to the next stages; its
        hold, discard, redirect and bcc are the transaction's).
        C{deferIfPermit}: what the stages before raised.
        """
        lists = {"client": self.clientRestrictions, "helo": self.heloRestrictions,
                 "sender": self.senderRestrictions}
        evaluation = Evaluation(note, deferIfPermit)
        try:
            decision = await self._stage(stage, lists[stage], request, evaluation)
            if stage == "sender" and not _refuses(decision):
                reply = await self._unlistedSender(request, evaluation)
                if reply is not None:
                    return Outcome(reply, "policy", evaluation)
        except TableTemporaryError:
            return Outcome(_lookupFailure(request, stage), "data", evaluation)
        if _refuses(decision):
            return Outcome(decision.reply, decision.errorClass, evaluation)
        return Outcome(None, None, evaluation)

    async def checkRecipient(self, request, note=None, carried=None, discard=None):
        """
        Judge RCPT TO (C{request}: its recipient is the address, an
        mta.model.Address), as Postfix's smtpd_check_rcpt: with
        smtpd_delay_reject the client, HELO and sender stages first; then
        smtpd_relay_restrictions and smtpd_recipient_restrictions (in the
        order smtpd_relay_before_recipient_restrictions says; neither may
        refuse); a DEFER_IF_PERMIT raised anywhere makes an
        acceptance a 450; then, with smtpd_reject_unlisted_recipient,
        recipients unknown in their address class are refused.
        C{carried}: without smtpd_delay_reject, the defer_if_permit reply
        the session's earlier stages raised; C{discard}: a DISCARD met
        earlier in the transaction (nothing is evaluated then).  Returns
        an Outcome: reply None to accept, or the Reply to send, with its
        notify_classes class (policy; bounce for an unknown recipient;
        data for a table that cannot answer), and the Evaluation (hold,
        discard, redirect, bcc).  C{note}: RestrictionList.evaluate's.
        """
        evaluation = Evaluation(note, carried, discard=discard)
        if discard is not None:
            return Outcome(None, None, evaluation)
        try:
            if self.delayReject:
                decision = await self._delayed(request, evaluation)
                if decision is not None:
                    return Outcome(decision.reply, decision.errorClass, evaluation)
            evaluation.newStage()
            lists = [self.restrictions, self.relayRestrictions]
            if self.settings.relayFirst:
                lists.reverse()
            decision = DUNNO_DECISION
            for restrictions in lists:
                if restrictions:
                    decision = await restrictions.run(attrs.evolve(request, stage="recipient"), evaluation)
                    if _refuses(decision):
                        return Outcome(decision.reply, decision.errorClass, evaluation)
            if evaluation.deferIfPermit is not None:
                return Outcome(evaluation.deferIfPermit, "policy", evaluation)
            if self.rejectUnlisted and evaluation.discard is None:
                reply = await self.unlistedRecipient(request.recipient, shown=given(request, "recipient"))
                if reply is not None:
                    return Outcome(reply, "bounce", evaluation)
        except TableTemporaryError:
            return Outcome(_lookupFailure(request, "recipient"), "data", evaluation)
        return Outcome(None, None, evaluation)

    async def checkEtrn(self, request, carried=None, note=None):
        """
        Judge ETRN (C{request}: its etrn_domain) as Postfix's smtpd_check_etrn:
        with smtpd_delay_reject the client and HELO stages first, then
        smtpd_etrn_restrictions (check_etrn_access looks the domain up).
        An Outcome.
        """
        evaluation = Evaluation(note, carried)
        try:
            if self.delayReject:
                decision = await self._delayed(request, evaluation, sender=False)
                if decision is not None:
                    return Outcome(decision.reply, decision.errorClass, evaluation)
            decision = await self._stage("etrn", self.etrnRestrictions, request, evaluation)
        except TableTemporaryError:
            return Outcome(_lookupFailure(request, "etrn"), "data", evaluation)
        if _refuses(decision):
            return Outcome(decision.reply, decision.errorClass, evaluation)
        if evaluation.deferIfPermit is not None:
            return Outcome(evaluation.deferIfPermit, "policy", evaluation)
        return Outcome(None, None, evaluation)

    async def checkContent(self, stage, request, note=None, discard=None):
        """
        smtpd_data_restrictions (C{stage} "data", at DATA or the first BDAT)
        or smtpd_end_of_data_restrictions ("eod", before the message is
        queued), as Postfix's smtpd_check_data and smtpd_check_eod: no
        defer_if_permit is carried in; the request names the recipient
        only when there is one.  An Outcome.
        """
        evaluation = Evaluation(note, discard=discard)
        restrictions = self.dataRestrictions if stage == "data" else self.endOfDataRestrictions
        try:
            decision = await self._stage(stage, restrictions, request, evaluation)
        except TableTemporaryError:
            return Outcome(_lookupFailure(request, stage), "data", evaluation)
        if _refuses(decision):
            return Outcome(decision.reply, decision.errorClass, evaluation)
        if evaluation.deferIfPermit is not None:
            return Outcome(evaluation.deferIfPermit, "policy", evaluation)
        return Outcome(None, None, evaluation)

    async def authorizedDestination(self, address):
        """
        permit_auth_destination: may any client send to C{address}?  Not
        when it is routed or a literal; yes for the final classes and
        relay; no for default.
        """
        routed, literal = self.resolver.flags(address)
        if (routed and not self.settings.allowUntrustedRouting) or literal:  # a trick costs no table query
            return False
        return await self.resolver.addressClass(address.domain) != "default"

    async def unlistedRecipient(self, address, what="Recipient address", detail="1.1", shown=None):
        """
        A Reply if C{address} is unknown in its address class, else None
        (reject_unlisted_sender: C{what} "Sender address", C{detail} "1.0").
        C{shown}: the address as the client gave it, for the reply.
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
        table = f" in {_TABLE_NAMES[addressClass]}" if self.settings.showUnknownTable else ""
        shown = address if shown is None else shown
        return Reply(code, f"{code // 100}.{detail}", f"<{shown}>: {what} rejected: User unknown{table}")
