"""mta.smtpd.restrictions - Postfix's restriction lists (smtpd_*_restrictions).

A restriction list is evaluated left to right; each restriction answers
PERMIT (stop, accept), REJECT or DEFER (stop, with a reply) or DUNNO (go
on), as in access(5).  An empty list, or one that ends without a decision,
permits.  Restrictions that take an argument (check_recipient_access
type:table) consume the next item.

Implemented: permit, reject, defer, permit_mynetworks,
permit_auth_destination, reject_unauth_destination,
defer_unauth_destination, reject_unlisted_recipient,
reject_non_fqdn_recipient, reject_non_fqdn_sender, check_client_access
(the client's verified name, "unknown" too, and its parent domains, then its address and
the address with its last octets or IPv6 groups cut off, as Postfix),
check_reverse_client_hostname_access (the unverified PTR name and its
parents, then the address), reject_unknown_client_hostname (or reject_unknown_client; 450
4.7.25 or unknown_client_reject_code: "Client host rejected: cannot find
your hostname, [ADDR]") and reject_unknown_reverse_client_hostname (the
same with "reverse hostname" and 4.7.1; a temporary DNS failure is always
a 450), the names from mta.smtpd.peername, the DNS lists of
mta.smtpd.dnsxl (reject_rbl_client, permit_dnswl_client,
reject_rhsbl_client, permit_rhswl_client, reject_rhsbl_reverse_client,
reject_rhsbl_helo, reject_rhsbl_sender, reject_rhsbl_recipient; a
domain[=pattern] argument),
check_sender_access, check_recipient_access, check_etrn_access (the ETRN
domain and its parent domains; smtpd_etrn_restrictions only),
permit_tls_clientcerts (the client certificate's fingerprint or public-key
fingerprint in relay_clientcerts), permit_tls_all_clientcerts (any client
certificate that verifies against smtpd_tls_CAfile), check_ccert_access
type:table (those fingerprints as access(5) keys; the reply names the
certificate's CN: "<CN>: Client certificate rejected: ..."),
permit_sasl_authenticated (any AUTH login but ANONYMOUS),
reject_sender_login_mismatch, reject_known_sender_login_mismatch,
reject_authenticated_sender_login_mismatch and
reject_unauthenticated_sender_login_mismatch (smtpd_sender_login_maps:
the sender address, looked up as virtual(5) keys, gives the login names
that own it; "553 5.7.1 <addr>: Sender address rejected: not owned by
user NAME" or "... not logged in", as Postfix; the null sender passes).  Outside the
RCPT stage (ETRN) the recipient restrictions answer DUNNO, as in Postfix.  Access tables answer as in
access(5): OK or PERMIT, REJECT [text], DEFER [text], DUNNO, or an SMTP
code with optional enhanced status and text (4xx defers, 5xx rejects),
or HOLD [text] (the message goes to the hold queue; evaluation goes on).
An allow list that cannot be asked answers DEFER_IF_REJECT: evaluation
goes on, and a reject that follows becomes that 450 (as in Postfix); a
domain check whose DNS lookup failed for now answers DEFER_IF_PERMIT: a
permit that follows (or the end of the list) becomes that 450.  The HELO
and domain checks are mta.smtpd.dnschecks'.
defer_if_permit and defer_if_reject are restrictions too (450 4.7.0
"<ADDR>: Recipient address rejected: defer_if_permit requested");
warn_if_reject makes a reject of the next restriction a warning (the
caller logs "NOQUEUE: reject_warning: ..."), reject_multi_recipient_bounce
refuses a second recipient of the null sender (550 5.5.3,
multi_recipient_bounce_reject_code), reject_unlisted_sender refuses a
sender unknown in its address class (5.1.0, the unknown_*_reject_code of
its class).
A reject or defer carries its notify_classes class (Decision.errorClass, as
Postfix's smtpd_check_reject): policy, bounce for
reject_unlisted_recipient, data for a table that cannot answer, software
for an access value that cannot be used.
The set grows with later changes (IAccessRestriction plugins).

A list is parsed once, at load: mta.config.types.parseRestrictions checks
the names (RESTRICTION_NAMES, which must list exactly the names
implemented here) and the tables, and the recipient check settings
(mta.config.settings.routing) hold the (name, table) pairs that
RestrictionList turns into checks.  So the configuration floor does not
import the server to know the names.

SECURITY
    Input is untrusted; a table that cannot answer now defers (4xx),
    never rejects.

CONFIGURATION
    smtpd_recipient_restrictions (permit_mynetworks,
    reject_unauth_destination), smtpd_etrn_restrictions (empty),
    relay_domains_reject_code (554),
    unknown_*_reject_code (550).
"""

import attrs

from mta.model import Reply
from mta.smtpd import dnschecks
from mta.smtpd.access import accessKeys, accessResult, addressKeysOf, domainKeys
from mta.smtpd.decision import DUNNO, PERMIT, Decision
from mta.tables import TableTemporaryError



@attrs.frozen
class Request:
    """What a restriction may look at."""

    client_address: str
    helo: str | None
    sender: object  # mta.model.Address or None
    recipient: object  # mta.model.Address or None
    client_name: str = "unknown"
    reverse_client_name: str = "unknown"
    client_name_status: int = 5  # mta.smtpd.peername: 2 found, 4 temporary failure, 5 not found/confirmed
    reverse_client_name_status: int = 5
    etrn_domain: str | None = None  # the ETRN command's domain (smtpd_etrn_restrictions)
    recipient_count: int = 0  # recipients accepted so far in the transaction (reject_multi_recipient_bounce)
    attributes: object = None  # a callable: more of the session for check_policy_service (mta.smtpd.commands)
    tls: object = None  # the session's TlsInfo (mta.tls.info), None without TLS
    sasl_username: str | None = None  # the AUTH login (mta.smtpd.auth), None without one
    sasl_method: str | None = None


def _constant(decision):
    def make(policy, argument):
        async def check(request):
            return decision

        return check

    return make


def _permitMynetworks(policy, argument):
    async def check(request):
        return PERMIT if await policy.mynetworks.matches(request.client_address) else DUNNO

    return check


def _unauthDestination(action):
    def make(policy, argument):
        async def check(request):
            recipient = request.recipient
            if recipient is None:  # not a recipient stage (ETRN): nothing to judge, as in Postfix
                return DUNNO
            if await policy.authorizedDestination(recipient):
                return PERMIT if action == "permit" else DUNNO
            if action == "permit":
                return DUNNO
            if action == "defer":
                return Decision("defer", Reply(454, "4.7.1", f"<{recipient}>: Relay access denied"))
            code = policy.relayRejectCode
            return Decision("reject", Reply(code, f"{code // 100}.7.1", f"<{recipient}>: Relay access denied"))

        return check

    return make


def _unlistedRecipient(policy, argument):
    async def check(request):
        if request.recipient is None:
            return DUNNO
        reply = await policy.unlistedRecipient(request.recipient)
        return Decision("reject", reply, errorClass="bounce") if reply is not None else DUNNO

    return check


def _nonFqdn(which):
    def make(policy, argument):
        async def check(request):
            address = getattr(request, which)
            if address is None or address.isNull or address.domain.startswith("["):
                return DUNNO
            if "." not in address.domain:
                what = "Recipient" if which == "recipient" else "Sender"
                text = f"<{address}>: {what} address rejected: need fully-qualified address"
                return Decision("reject", Reply(policy.nonFqdnRejectCode, "5.5.2", text))
            return DUNNO

        return check

    return make


def _checkAccess(which):
    def make(policy, table):
        async def check(request):
            if which == "client":
                # Postfix's check_namadr_access: the verified name ("unknown" too) and its parents, then
                # the address and its networks.
                keys = domainKeys(request.client_name) + addressKeysOf(request.client_address)
                what = "Client host"
                subject = f"{request.client_name}[{request.client_address}]"
            elif which == "reverse_client":
                keys = domainKeys(request.reverse_client_name) + addressKeysOf(request.client_address)
                what = "Unverified Client host"  # Postfix's SMTPD_NAME_REV_CLIENT
                subject = f"{request.reverse_client_name}[{request.client_address}]"
            elif which == "etrn":
                if request.etrn_domain is None:
                    return DUNNO
                parts = request.etrn_domain.split(".")
                keys = [".".join(parts[i:]) for i in range(len(parts))]
                subject, what = request.etrn_domain, "Etrn command"
            else:
                address = getattr(request, which)
                if address is None:
                    return DUNNO
                keys, subject = accessKeys(address), address
                what = "Recipient address" if which == "recipient" else "Sender address"
            for key in keys:
                value = await table.lookup(key)
                if value is not None:
                    return accessResult(value, subject, what)
            return DUNNO

        return check

    return make


def _unknownClient(reverse):
    """
    reject_unknown_client_hostname (the name did not resolve back to the
    address, or there is none) and reject_unknown_reverse_client_hostname
    (no PTR name at all): unknown_client_reject_code, or 450 after a
    temporary DNS failure, as Postfix's reject_unknown_client and
    reject_unknown_reverse_name.
    """

    def make(policy, argument):
        async def check(request):
            status = request.reverse_client_name_status if reverse else request.client_name_status
            if status == 2:
                return DUNNO
            code = policy.unknownClientCode if status >= 5 else 450
            detail, text = ("7.1", "reverse hostname") if reverse else ("7.25", "hostname")
            return Decision("reject" if code >= 500 else "defer",
                            Reply(code, f"{code // 100}.{detail}",
                                  f"Client host rejected: cannot find your {text}, [{request.client_address}]"))

        return check

    return make


def _dnsxl(kind, permit):
    """
    The DNS list restrictions (mta.smtpd.dnsxl): C{kind} says what is
    looked up (client, reverse_client, helo, sender, recipient); C{permit}
    makes it an allow list.
    """
    from mta.smtpd import dnsxl

    def what(request):
        """(what the reply names, the query) or None when there is nothing to ask."""
        if kind == "client":
            return request.client_address, None
        if kind == "client_name":
            name = request.client_name
        elif kind == "reverse_client":
            name = request.reverse_client_name
        elif kind == "helo":
            name = request.helo
        else:
            address = getattr(request, kind)
            if address is None or address.isNull:
                return None
            name = str(address)
        if not name or (kind in ("client_name", "reverse_client") and name == "unknown"):
            return None
        return name, name

    def make(policy, spec):
        async def check(request):
            found = what(request)
            if found is None or not request.client_address and kind == "client":
                return DUNNO
            shown, name = found
            if policy.dnsxl is None:
                return DUNNO
            if permit and request.recipient is not None and not await policy.authorizedDestination(request.recipient):
                return DUNNO  # Postfix: an allow list never lets through mail for unauthorized recipients
            try:
                query = dnsxl.clientQuery(shown, spec.domain) if name is None else dnsxl.domainQuery(name, spec.domain)
            except ValueError:
                return DUNNO
            if query is None:
                return DUNNO
            status, txt = await policy.dnsxl.listed(query, spec)
            replyClass = dnsxl.CLASSES["client" if kind == "client_name" else kind]
            if permit:
                if status == "listed":
                    return PERMIT
                if status == "unavailable":
                    return Decision("defer_if_reject", Reply(450, "4.7.1",
                                                             f"<{shown}>: {replyClass} rejected: Service unavailable"))
                return DUNNO
            if status != "listed":
                return DUNNO
            reply = await policy.dnsxl.reply(request, spec, shown, "client" if kind == "client_name" else kind, txt)
            if reply.code < 400:
                return DUNNO
            return Decision("reject" if reply.code >= 500 else "defer", reply)

        return check

    return make


def _subject(request):
    """Postfix's reply_name and reply_class in the recipient stage (ETRN: the domain)."""
    if request.recipient is not None:
        return str(request.recipient), "Recipient address"
    return request.etrn_domain or "", "Etrn command"


def _deferIf(which):
    """defer_if_permit and defer_if_reject, as restrictions of their own (450 4.7.0, Postfix's text)."""

    def make(policy, argument):
        async def check(request):
            name, what = _subject(request)
            return Decision(f"defer_if_{which}", Reply(450, "4.7.0", f"<{name}>: {what} rejected: "
                                                                     f"defer_if_{which} requested"))

        return check

    return make


def policyRequest(request):
    """The attributes of a policy query (SMTPD_POLICY_README), for the recipient or ETRN stage."""
    import mta

    def text(address):
        return "" if address is None or address.isNull else str(address)

    extra = dict(request.attributes()) if request.attributes is not None else {}
    attributes = {
        "request": "smtpd_access_policy",
        "protocol_state": "RCPT" if request.recipient is not None else "ETRN",
        "protocol_name": extra.pop("protocol_name", "ESMTP"), "helo_name": request.helo or "", "queue_id": "",
        "sender": text(request.sender), "recipient": text(request.recipient),
        "recipient_count": request.recipient_count, "client_address": request.client_address,
        "client_name": request.client_name, "reverse_client_name": request.reverse_client_name,
        "sasl_method": request.sasl_method or "", "sasl_username": request.sasl_username or "",
        "sasl_sender": "", "etrn_domain": request.etrn_domain or "", "stress": "", "policy_context": "",
        "mail_version": mta.__version__,
    }
    attributes.update(extra)
    return attributes


def _policyService(policy, spec):
    """check_policy_service SERVER: the server's action, as an access(5) value (mta.smtpd.policyclient)."""

    async def check(request):
        if policy.policyClients is None:
            return DUNNO
        action = await policy.policyClients.query(spec, policyRequest(request))
        name, what = _subject(request)
        return accessResult(action, name, what)

    return check


def _warnIfReject(policy, argument):
    async def check(request):
        return Decision("warn_if_reject")

    return check


def _multiRecipientBounce(policy, argument):
    async def check(request):
        sender = request.sender
        if sender is None or not sender.isNull or request.recipient_count < 1:
            return DUNNO
        code = policy.settings.multiRecipientBounceCode
        return Decision("reject" if code >= 500 else "defer",
                        Reply(code, f"{code // 100}.5.3", "<>: Sender address rejected: Multi-recipient bounce"))

    return check


def _unlistedSender(policy, argument):
    async def check(request):
        sender = request.sender
        if sender is None or sender.isNull:
            return DUNNO
        reply = await policy.unlistedRecipient(sender, "Sender address", "1.0")
        return Decision("reject" if reply.code >= 500 else "defer", reply) if reply is not None else DUNNO

    return check


def _permitClientcerts(everyTrusted):
    """
    permit_tls_all_clientcerts (C{everyTrusted}): any client certificate
    that verifies; permit_tls_clientcerts: a certificate (trusted or not,
    as Postfix) whose fingerprint or public-key fingerprint is a key of
    relay_clientcerts.
    """

    def make(policy, argument):
        async def check(request):
            peer = request.tls.peer if request.tls is not None else None
            if peer is None:
                return DUNNO
            if everyTrusted:
                return PERMIT if peer.trusted else DUNNO
            for table in policy.relayClientcerts:
                for key in (peer.fingerprint, peer.pkeyFingerprint):
                    if await table.lookup(key) is not None:
                        return PERMIT
            return DUNNO

        return check

    return make


def _permitSaslAuthenticated(policy, argument):
    async def check(request):  # Postfix's permit_sasl_auth: any login but ANONYMOUS
        method = request.sasl_method
        return PERMIT if request.sasl_username and method and method.upper() != "ANONYMOUS" else DUNNO

    return check


def _senderLoginMismatch(authenticated, unknownAllowed, unauthenticated):
    """
    Postfix's reject_auth_sender_login_mismatch (C{authenticated}; an
    unknown sender passes with C{unknownAllowed}) and
    reject_unauth_sender_login_mismatch (C{unauthenticated}), against
    smtpd_sender_login_maps (address -> the login names that own it).
    """

    def make(policy, argument):
        async def check(request):
            sender = request.sender
            if sender is None or sender.isNull or not policy.senderLoginMaps:
                return DUNNO
            owners = await policy.senderOwners(sender)
            user = request.sasl_username
            if user is not None and authenticated:
                if owners is None and unknownAllowed:
                    return DUNNO
                if owners is None or user.lower() not in owners:
                    text = f"<{sender}>: Sender address rejected: not owned by user {user}"
                    return Decision("reject", Reply(553, "5.7.1", text))
            elif user is None and unauthenticated and owners is not None:
                return Decision("reject", Reply(553, "5.7.1", f"<{sender}>: Sender address rejected: not logged in"))
            return DUNNO

        return check

    return make


def _checkCcertAccess(policy, table):
    """check_ccert_access type:table: the certificate's fingerprint, then its public key's, as access(5)."""

    async def check(request):
        peer = request.tls.peer if request.tls is not None else None
        if peer is None:
            return DUNNO
        for key in (peer.fingerprint, peer.pkeyFingerprint):
            value = await table.lookup(key)
            if value is not None:
                return accessResult(value, peer.subjectCN, "Client certificate")
        return DUNNO

    return check


# name -> (needs a table argument, or "dnsxl": a DNS list's domain[=pattern]; maker(policy, argument) ->
# async check(request)); the names and
# their arguments are mta.config.types.RESTRICTION_NAMES (the list is parsed at load, in mta.config).
RESTRICTIONS = {
    "permit": (False, _constant(PERMIT)),
    "reject": (False, _constant(Decision("reject", Reply(554, "5.7.1", "Access denied")))),
    "defer": (False, _constant(Decision("defer", Reply(450, "4.7.1", "Try again later")))),
    "permit_mynetworks": (False, _permitMynetworks),
    "permit_auth_destination": (False, _unauthDestination("permit")),
    "reject_unauth_destination": (False, _unauthDestination("reject")),
    "defer_unauth_destination": (False, _unauthDestination("defer")),
    "reject_unlisted_recipient": (False, _unlistedRecipient),
    "reject_non_fqdn_recipient": (False, _nonFqdn("recipient")),
    "reject_non_fqdn_sender": (False, _nonFqdn("sender")),
    "check_client_access": (True, _checkAccess("client")),
    "check_reverse_client_hostname_access": (True, _checkAccess("reverse_client")),
    "reject_unknown_client_hostname": (False, _unknownClient(False)),
    "reject_unknown_client": (False, _unknownClient(False)),
    "reject_unknown_reverse_client_hostname": (False, _unknownClient(True)),
    "defer_if_permit": (False, _deferIf("permit")),
    "defer_if_reject": (False, _deferIf("reject")),
    "warn_if_reject": (False, _warnIfReject),
    "check_policy_service": ("policy", _policyService),
    "reject_multi_recipient_bounce": (False, _multiRecipientBounce),
    "reject_unlisted_sender": (False, _unlistedSender),
    "check_client_a_access": (True, dnschecks.serverAccess("client", "a")),
    "check_client_mx_access": (True, dnschecks.serverAccess("client", "mx")),
    "check_client_ns_access": (True, dnschecks.serverAccess("client", "ns")),
    "check_reverse_client_a_access": (True, dnschecks.serverAccess("reverse_client", "a")),
    "check_reverse_client_mx_access": (True, dnschecks.serverAccess("reverse_client", "mx")),
    "check_reverse_client_ns_access": (True, dnschecks.serverAccess("reverse_client", "ns")),
    "check_helo_a_access": (True, dnschecks.serverAccess("helo", "a")),
    "check_helo_mx_access": (True, dnschecks.serverAccess("helo", "mx")),
    "check_helo_ns_access": (True, dnschecks.serverAccess("helo", "ns")),
    "check_sender_a_access": (True, dnschecks.serverAccess("sender", "a")),
    "check_sender_mx_access": (True, dnschecks.serverAccess("sender", "mx")),
    "check_sender_ns_access": (True, dnschecks.serverAccess("sender", "ns")),
    "check_recipient_a_access": (True, dnschecks.serverAccess("recipient", "a")),
    "check_recipient_mx_access": (True, dnschecks.serverAccess("recipient", "mx")),
    "check_recipient_ns_access": (True, dnschecks.serverAccess("recipient", "ns")),
    "reject_invalid_helo_hostname": (False, dnschecks.invalidHelo),
    "reject_invalid_hostname": (False, dnschecks.invalidHelo),
    "reject_non_fqdn_helo_hostname": (False, dnschecks.nonFqdnHelo),
    "reject_non_fqdn_hostname": (False, dnschecks.nonFqdnHelo),
    "reject_unknown_helo_hostname": (False, dnschecks.unknownHelo),
    "reject_unknown_hostname": (False, dnschecks.unknownHelo),
    "reject_unknown_sender_domain": (False, dnschecks.unknownAddress("sender")),
    "reject_unknown_recipient_domain": (False, dnschecks.unknownAddress("recipient")),
    "reject_rbl_client": ("dnsxl", _dnsxl("client", False)),
    "reject_rbl": ("dnsxl", _dnsxl("client", False)),
    "permit_dnswl_client": ("dnsxl", _dnsxl("client", True)),
    "reject_rhsbl_client": ("dnsxl", _dnsxl("client_name", False)),
    "permit_rhswl_client": ("dnsxl", _dnsxl("client_name", True)),
    "reject_rhsbl_reverse_client": ("dnsxl", _dnsxl("reverse_client", False)),
    "reject_rhsbl_helo": ("dnsxl", _dnsxl("helo", False)),
    "reject_rhsbl_sender": ("dnsxl", _dnsxl("sender", False)),
    "reject_rhsbl_recipient": ("dnsxl", _dnsxl("recipient", False)),
    "check_sender_access": (True, _checkAccess("sender")),
    "check_recipient_access": (True, _checkAccess("recipient")),
    "check_etrn_access": (True, _checkAccess("etrn")),
    "permit_tls_clientcerts": (False, _permitClientcerts(False)),
    "permit_tls_all_clientcerts": (False, _permitClientcerts(True)),
    "check_ccert_access": (True, _checkCcertAccess),
    "permit_sasl_authenticated": (False, _permitSaslAuthenticated),
    "reject_sender_login_mismatch": (False, _senderLoginMismatch(True, False, True)),
    "reject_known_sender_login_mismatch": (False, _senderLoginMismatch(True, True, True)),
    "reject_authenticated_sender_login_mismatch": (False, _senderLoginMismatch(True, False, False)),
    "reject_unauthenticated_sender_login_mismatch": (False, _senderLoginMismatch(False, False, True)),
}


class RestrictionList:
    """
    One restriction list, ready to evaluate: C{pairs} is the list as the
    settings compiled it (((name, TableSpec or None), ...): see
    mta.config.types.parseRestrictions), C{policy} what the checks ask
    (mynetworks, authorizedDestination, unlistedRecipient, the reply
    codes: mta.smtpd.policy.RecipientPolicy), C{tables} the registry that
    opens the tables named.
    """

    def __init__(self, pairs, policy, tables):
        from mta.config.types import TableSpec

        self._checks = []
        for name, argument in pairs:
            # A table is opened; another argument (a DNS list's domain=pattern) is given as it is.
            table = tables.open(argument) if isinstance(argument, TableSpec) else argument
            self._checks.append((name, RESTRICTIONS[name][1](policy, table)))

    async def evaluate(self, request, note=None):
        """
        The first decision other than DUNNO; PERMIT when none.  HOLD does not
        stop the evaluation (as in Postfix): its reason rides on the result.
        A DEFER_IF_REJECT (an allow list that could not be asked) does not
        stop it either: if a reject follows, that reject becomes its defer.
        C{note(action, value)} gets what only has an effect: "prepend" (the
        header), "warn" and "info" (the text), "reject_warning" (the Reply
        that warn_if_reject made a warning).
        """
        hold = deferIfReject = deferIfPermit = None
        warnNext = False
        for name, check in self._checks:
            warning, warnNext = warnNext, False
            try:
                decision = await check(request)
            except TableTemporaryError:
                return Decision("defer", Reply(451, "4.3.0", "Temporary lookup failure"), errorClass="data")
            if decision.action == "warn_if_reject":
                warnNext = True
            elif warning and decision.action in ("reject", "defer"):  # warn_if_reject: logged, evaluation goes on
                if note is not None:
                    note("reject_warning", decision.reply)
            elif decision.action in ("prepend", "warn", "info"):  # an effect, and evaluation goes on
                if note is not None:
                    note(decision.action, decision.text)
            elif decision.action == "hold":
                hold = hold or decision.hold
            elif decision.action == "defer_if_reject":
                deferIfReject = deferIfReject or decision.reply
            elif decision.action == "defer_if_permit":
                deferIfPermit = deferIfPermit or decision.reply
            elif decision.action != "dunno":
                if decision.action == "reject" and deferIfReject is not None:
                    decision = Decision("defer", deferIfReject, errorClass=decision.errorClass)
                elif decision.action == "permit" and deferIfPermit is not None:
                    decision = Decision("defer", deferIfPermit)
                return attrs.evolve(decision, hold=hold) if hold else decision
        if deferIfPermit is not None:  # the implicit permit at the end
            return Decision("defer", deferIfPermit, hold=hold)
        return Decision("permit", hold=hold) if hold else PERMIT
