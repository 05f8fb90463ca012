"""mta.smtpd.restrictions - Postfix's restriction lists (smtpd_*_restrictions).

A restriction list is evaluated left to right; each restriction answers
PERMIT (stop, accept), REJECT or DEFER (stop, with a reply) or DUNNO (go
on), as in access(5).  An empty list, or one that ends without a decision,
permits.  Restrictions that take an argument (check_recipient_access
type:table) consume the next item.  RestrictionList.run() evaluates a list
within an Evaluation (the state Postfix's SMTPD_STATE carries across the
stages: mta.smtpd.policy); a name that is not a restriction is a
restriction class, a bare table the stage's check_*_access, and an access
value that is a class name or a list is evaluated in its place, with the
table's subject; the generic replies (reject, defer, defer_if_*, a policy
server's) name the stage's subject (Request.stage: subjectOf).  More:
check_helo_access, check_sasl_access, sleep N, reject_unauth_pipelining,
permit_inet_interfaces, reject_plaintext_session.

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
reject_unverified_recipient and reject_unverified_sender ask the verify
service (mta.smtpd.verifycheck, mta.verify).
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
from mta.smtpd.access import accessKeys, addressKeysOf, domainKeys, lookupKeys
from mta.smtpd.decision import DUNNO, PERMIT, Decision
from mta.smtpd.verifycheck import unverified
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
    # The stage whose list is evaluated (client, helo, sender, recipient, data, eod, etrn): it names
    # the subject of the generic replies (reject, defer, defer_if_*, a policy server's), as Postfix.
    stage: str = "recipient"
    subject: tuple | None = None  # (name, class) of an access value's list: the table's subject
    illegal_pipelining: bool = False  # reject_unauth_pipelining: commands sent ahead where not allowed
    server_address: str | None = None  # the address the client connected to (permit_inet_interfaces)
    # The addresses as the client gave them, before mta.rewrite qualified them: what the replies
    # name and what reject_non_fqdn_* judge, as Postfix (whose lookups use the canonical form).
    sender_given: object = None
    recipient_given: object = None


def given(request, which):
    """The sender or recipient as the client gave it (the qualified one when that is not known)."""
    address = getattr(request, f"{which}_given")
    return address if address is not None else getattr(request, which)


STAGE_CLASSES = {"client": "Client host", "helo": "Helo command", "sender": "Sender address",
                 "recipient": "Recipient address", "etrn": "Etrn command", "data": "Data command",
                 "eod": "End-of-data"}


def subjectOf(request):
    """Postfix's reply_name and reply_class of the stage (or of the access value being evaluated)."""
    if request.subject is not None:
        return request.subject
    stage = request.stage
    if stage == "client":
        name = f"{request.client_name}[{request.client_address}]"
    elif stage == "helo":
        name = request.helo or ""
    elif stage == "sender":
        sender = given(request, "sender")
        name = "" if sender is None or sender.isNull else str(sender)
    elif stage == "recipient":
        name = str(given(request, "recipient")) if request.recipient is not None else ""
    elif stage == "etrn":
        name = request.etrn_domain or ""
    elif stage == "data":
        name = "DATA"
    else:
        name = "END-OF-MESSAGE"
    return name, STAGE_CLASSES[stage]


def _generic(kind):
    """reject and defer: reject_code (5.7.1 Access denied) or defer_code (4.3.2 Try again later), as Postfix."""

    def make(policy, argument):
        async def check(request):
            name, what = subjectOf(request)
            if kind == "reject":
                code, detail, text = policy.settings.rejectCode, "7.1", "Access denied"
            else:
                code, detail, text = policy.settings.deferCode, "3.2", "Try again later"
            return Decision("reject" if code >= 500 else "defer",
                            Reply(code, f"{code // 100}.{detail}", f"<{name}>: {what} rejected: {text}"))

        return check

    return make


def _sleep(policy, seconds):
    """sleep N: pause, then DUNNO (Postfix's remedy for clients that talk before the reply)."""

    async def check(request):
        if policy.clock is not None and seconds > 0:
            from twisted.internet.task import deferLater

            await deferLater(policy.clock, seconds, lambda: None)
        return DUNNO

    return check


def _unauthPipelining(policy, argument):
    async def check(request):
        if not request.illegal_pipelining:
            return DUNNO
        name, what = subjectOf(request)
        return Decision("reject", Reply(503, "5.5.0", f"<{name}>: {what} rejected: Improper use of SMTP command "
                                                      f"pipelining"))

    return check


def _permitInetInterfaces(policy, argument):
    """permit_inet_interfaces: the client is this host (a loopback address, or the address it connected to)."""

    from mta.rewrite import isOwnAddress

    async def check(request):
        return PERMIT if isOwnAddress(request.client_address, request.server_address) else DUNNO

    return check


def _plaintextSession(policy, argument):
    async def check(request):
        if request.tls is not None:
            return DUNNO
        code = policy.settings.plaintextRejectCode
        return Decision("reject" if code >= 500 else "defer",
                        Reply(code, f"{code // 100}.7.1", "Session encryption is required"))

    return check


def _checkSaslAccess(policy, table):
    """check_sasl_access: the SASL login name, as an access(5) key (only after AUTH)."""

    async def check(request):
        if not request.sasl_username:
            return DUNNO
        value = await table.lookup(request.sasl_username.lower())
        if value is None:
            return DUNNO
        return policy.access(value, request.sasl_username, "SASL login name")

    return check


async def _permitAll(request):
    return PERMIT


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
            recipient = given(request, "recipient")  # the reply names it as given, as Postfix
            if action == "defer":  # Postfix: relay_domains_reject_code - 100
                code = policy.relayRejectCode - 100
                return Decision("defer", Reply(code, f"{code // 100}.7.1", f"<{recipient}>: Relay access denied"))
            code = policy.relayRejectCode
            return Decision("reject", Reply(code, f"{code // 100}.7.1", f"<{recipient}>: Relay access denied"))

        return check

    return make


def _unlistedRecipient(policy, argument):
    async def check(request):
        if request.recipient is None:
            return DUNNO
        reply = await policy.unlistedRecipient(request.recipient, shown=given(request, "recipient"))
        return Decision("reject", reply, errorClass="bounce") if reply is not None else DUNNO

    return check


def _nonFqdn(which):
    def make(policy, argument):
        async def check(request):
            address = given(request, which)  # as given: the qualified form always has a domain
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
                # the address and its networks (a pattern table: the name and the address only).
                keys = (lookupKeys(table, domainKeys(request.client_name))
                        + lookupKeys(table, addressKeysOf(request.client_address)))
                what = "Client host"
                subject = f"{request.client_name}[{request.client_address}]"
            elif which == "reverse_client":
                keys = (lookupKeys(table, domainKeys(request.reverse_client_name))
                        + lookupKeys(table, addressKeysOf(request.client_address)))
                what = "Unverified Client host"  # Postfix's SMTPD_NAME_REV_CLIENT
                subject = f"{request.reverse_client_name}[{request.client_address}]"
            elif which == "etrn":
                if request.etrn_domain is None:
                    return DUNNO
                keys = lookupKeys(table, domainKeys(request.etrn_domain))
                subject, what = request.etrn_domain, "Etrn command"
            elif which == "helo":
                if not request.helo:
                    return DUNNO
                keys = lookupKeys(table, domainKeys(request.helo))
                subject, what = request.helo, "Helo command"
            else:
                address = getattr(request, which)
                if address is None:
                    return DUNNO
                if address.isNull:  # smtpd_null_access_lookup_key (recipients are never null)
                    keys = [policy.settings.nullAccessKey]
                else:
                    keys = lookupKeys(table, accessKeys(address))
                subject = given(request, which)
                what = "Recipient address" if which == "recipient" else "Sender address"
            for key in keys:
                value = await table.lookup(key)
                if value is not None:
                    return policy.access(value, subject, what)
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


def _deferIf(which):
    """defer_if_permit and defer_if_reject, as restrictions of their own (450 4.7.0, Postfix's text)."""

    def make(policy, argument):
        async def check(request):
            name, what = subjectOf(request)
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
        name, what = subjectOf(request)
        return policy.access(action, name, what)

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
        reply = await policy.unlistedRecipient(sender, "Sender address", "1.0", shown=given(request, "sender"))
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
            sender = given(request, "sender")  # the replies name it as given
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
                return policy.access(value, peer.subjectCN, "Client certificate")
        return DUNNO

    return check


# name -> (needs a table argument, or "dnsxl": a DNS list's domain[=pattern]; maker(policy, argument) ->
# async check(request)); the names and
# their arguments are mta.config.types.RESTRICTION_NAMES (the list is parsed at load, in mta.config).
RESTRICTIONS = {
    "permit": (False, lambda policy, argument: _permitAll),
    "reject": (False, _generic("reject")),
    "defer": (False, _generic("defer")),
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
    "check_helo_access": (True, _checkAccess("helo")),
    "check_sasl_access": (True, _checkSaslAccess),
    "sleep": ("number", _sleep),
    "reject_unauth_pipelining": (False, _unauthPipelining),
    "permit_inet_interfaces": (False, _permitInetInterfaces),
    "reject_plaintext_session": (False, _plaintextSession),
    "permit_tls_clientcerts": (False, _permitClientcerts(False)),
    "permit_tls_all_clientcerts": (False, _permitClientcerts(True)),
    "check_ccert_access": (True, _checkCcertAccess),
    "permit_sasl_authenticated": (False, _permitSaslAuthenticated),
    "reject_sender_login_mismatch": (False, _senderLoginMismatch(True, False, True)),
    "reject_known_sender_login_mismatch": (False, _senderLoginMismatch(True, True, True)),
    "reject_authenticated_sender_login_mismatch": (False, _senderLoginMismatch(True, False, False)),
    "reject_unauthenticated_sender_login_mismatch": (False, _senderLoginMismatch(False, False, True)),
    "reject_unverified_recipient": (False, unverified("recipient")),  # mta.smtpd.verifycheck
    "reject_unverified_sender": (False, unverified("sender")),
}


RECURSION_LIMIT = 100  # nested classes and access values, as Postfix's "unreasonable recursion"


class Evaluation:
    """
    What evaluating the lists of one request carries (Postfix's SMTPD_STATE
    flags): the defer_if_permit reply, carried from stage to stage (a permit
    anywhere later, or the end of the recipient stage, becomes that defer);
    the defer_if_reject reply of the current stage; the effects met on the
    way: C{hold} (the first HOLD reason), C{discard} (DISCARD's text: every
    later restriction is skipped, the message is accepted and dropped),
    C{redirect} (the last REDIRECT target), C{bcc} (BCC targets).  C{note}
    is RestrictionList.evaluate's.
    """

    def __init__(self, note=None, deferIfPermit=None, discard=None):
        self.note = note
        self.deferIfPermit = deferIfPermit
        self.deferIfReject = None
        self.warnNext = False
        self.hold = None
        self.discard = discard
        self.redirect = None
        self.bcc = []
        self.depth = 0

    def newStage(self):
        """Postfix's SMTPD_CHECK_RESET at the start of a stage."""
        self.deferIfReject = None
        self.warnNext = False

    def emit(self, action, value):
        if self.note is not None:
            self.note(action, value)


class RestrictionList:
    """
    One restriction list, ready to evaluate: C{pairs} is the list as the
    settings compiled it (((name, argument or None), ...): see
    mta.config.types.parseRestrictions), C{policy} what the checks ask
    (mynetworks, authorizedDestination, unlistedRecipient, the reply
    codes, the restriction classes: mta.smtpd.policy.RecipientPolicy),
    C{tables} the registry that opens the tables named.  A name that is
    not a restriction is a restriction class (policy.restrictionClass); a
    bare table (STAGE_ACCESS) is the stage's check_*_access.
    """

    def __init__(self, pairs, policy, tables):
        from mta.config.types import STAGE_ACCESS, TableSpec

        self._checks = []
        self._policy = policy
        for name, argument in pairs:
            # A table is opened; another argument (a DNS list's domain=pattern) is given as it is.
            table = tables.open(argument) if isinstance(argument, TableSpec) else argument
            if name == STAGE_ACCESS:
                self._checks.append((name, _stageAccess(policy, table)))
            elif name in RESTRICTIONS:
                self._checks.append((name, RESTRICTIONS[name][1](policy, table)))
            else:
                self._checks.append((name, None))  # a restriction class, found when evaluated

    def __bool__(self):
        return bool(self._checks)

    async def run(self, request, evaluation):
        """
        Evaluate the list within C{evaluation}: the first decision that
        stops it (permit, reject, defer), or DUNNO at its end.  Effects
        (hold, discard, redirect, bcc, prepend, warn, info, reject_warning)
        go to C{evaluation}.  TableTemporaryError propagates.
        """
        evaluation.depth += 1
        try:
            if evaluation.depth > RECURSION_LIMIT:
                return _configurationError(evaluation, "restriction classes or access values nest too deep")
            for name, check in self._checks:
                if evaluation.discard is not None:
                    return PERMIT
                warning, evaluation.warnNext = evaluation.warnNext, False
                if check is None:
                    nested = self._policy.restrictionClass(name)
                    if nested is None:
                        decision = _configurationError(evaluation, f"unknown smtpd restriction: {name!r}")
                    else:
                        decision = await nested.run(request, evaluation)
                else:
                    decision = await check(request)
                if decision.action == "restrictions":  # an access value that is a list or a class name
                    nested = self._policy.valueList(decision.text)
                    if nested is None:
                        decision = _configurationError(evaluation, f"access value {decision.text!r} is not a "
                                                                   f"restriction list")
                    else:
                        subject = decision.subject or subjectOf(request)
                        decision = await nested.run(attrs.evolve(request, subject=subject), evaluation)
                if decision.action == "warn_if_reject":
                    evaluation.warnNext = True
                    continue
                if (decision.action in ("reject", "defer") and warning
                        and decision.errorClass not in ("software", "resource", "data")):
                    evaluation.emit("reject_warning", decision.reply)  # warn_if_reject: logged, and on
                    continue
                stop = self._apply(decision, evaluation)
                if stop is not None:
                    return stop
                if evaluation.deferIfPermit is not None and evaluation.deferIfReject is not None:
                    return DUNNO  # both are raised: nothing later can change the outcome (Postfix)
            return DUNNO
        finally:
            evaluation.depth -= 1

    @staticmethod
    def _apply(decision, evaluation):
        """Record an effect (None: go on) or give the decision that stops the list."""
        action = decision.action
        if action in ("prepend", "warn", "info"):
            evaluation.emit(action, decision.text)
        elif action == "hold":
            evaluation.hold = evaluation.hold or decision.hold
        elif action == "discard":
            evaluation.discard = decision.text
            evaluation.emit("discard", decision.text)
            return PERMIT
        elif action == "redirect":
            evaluation.redirect = decision.text
            evaluation.emit("redirect", decision.text)
        elif action == "bcc":
            evaluation.bcc.append(decision.text)
            evaluation.emit("bcc", decision.text)
        elif action == "defer_if_reject":
            evaluation.deferIfReject = evaluation.deferIfReject or decision.reply
        elif action == "defer_if_permit":
            evaluation.deferIfPermit = evaluation.deferIfPermit or decision.reply
        elif action != "dunno":
            if action == "reject" and evaluation.deferIfReject is not None:
                return Decision("defer", evaluation.deferIfReject, errorClass=decision.errorClass)
            return decision
        return None

    async def evaluate(self, request, note=None):
        """
        The list alone, as one stage: the first decision other than DUNNO,
        PERMIT when none; a DEFER_IF_PERMIT met becomes a defer unless a
        reject follows; a HOLD reason rides on the result (mta.smtpd.policy
        evaluates the stages of a session with run()).
        """
        evaluation = Evaluation(note)
        try:
            decision = await self.run(request, evaluation)
        except TableTemporaryError:
            return Decision("defer", Reply(451, "4.3.0", "Temporary lookup failure"), errorClass="data")
        if decision.action not in ("reject", "defer") and evaluation.deferIfPermit is not None:
            decision = Decision("defer", evaluation.deferIfPermit)
        elif decision.action == "dunno":
            decision = PERMIT
        hold = evaluation.hold
        return attrs.evolve(decision, hold=hold) if hold else decision


def _configurationError(evaluation, why):
    """Postfix's reject_server_error: 451 4.3.5, a software-class error, and a warning."""
    evaluation.emit("warning", why)
    return Decision("defer", Reply(451, "4.3.5", "Server configuration error"), errorClass="software")


def _stageAccess(policy, table):
    """A bare type:table in a list: check_client_access in the client stage, and so on (Postfix's def_acl)."""
    makers = {stage: _checkAccess(stage)(policy, table)
              for stage in ("client", "helo", "sender", "recipient", "etrn")}

    async def check(request):
        which = makers.get(request.stage)
        if which is None:  # DATA, end of data: no default (refused at load for the lists themselves)
            return Decision("defer", Reply(451, "4.3.5", "Server configuration error"), errorClass="software")
        return await which(request)

    return check
