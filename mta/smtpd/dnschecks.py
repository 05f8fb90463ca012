"""mta.smtpd.dnschecks - the HELO name and address domain checks of Postfix's smtpd_check.c.

    reject_invalid_helo_hostname     501 5.5.2 <NAME>: Helo command rejected: Invalid name
                                     (an address literal: ... invalid ip address)
    reject_non_fqdn_helo_hostname    504 5.5.2 <NAME>: Helo command rejected: need fully-qualified hostname
    reject_unknown_helo_hostname     450 4.7.1 <NAME>: Helo command rejected: Host not found
                                     (no A, AAAA or MX record; a null MX is fine for an MTA's name)
    reject_unknown_sender_domain     450 4.1.8 <ADDR>: Sender address rejected: Domain not found
    reject_unknown_recipient_domain  450 4.1.2 <ADDR>: Recipient address rejected: Domain not found
                                     (no MX, A or AAAA record; a null MX: 550 5.7.27 for a
                                     sender, 556 5.1.10 for a recipient, "Domain D does not
                                     accept mail (nullMX)"; the domains mta delivers itself
                                     and address literals are not looked up)

check_{client,reverse_client,helo,sender,recipient}_{a,mx,ns}_access
type:table (Postfix's check_server_access): the name's MX hosts (none:
the domain itself; a null MX: none), its NS hosts (from the nearest
enclosing zone) or its addresses are looked up in the table, host names
with their parent domains, then their addresses with their networks; the
first value found decides, except that OK is refused (451 4.3.5 and three
warnings: an allow list here would let anyone in who points an MX at a
listed host); a DNS failure is a warning and no match.

The older names reject_invalid_hostname, reject_non_fqdn_hostname and
reject_unknown_hostname are the HELO checks too.  The codes are
invalid_hostname_reject_code, non_fqdn_reject_code,
unknown_hostname_reject_code and unknown_address_reject_code.  A DNS
lookup that fails temporarily gives 450 through
unknown_helo_hostname_tempfail_action or unknown_address_tempfail_action
(both $reject_tempfail_action): defer_if_permit (the default: the 450
only if the decision would otherwise be a permit) or defer (at once).
Lookups go through mta's DNS client (mta.delivery.dns), which caches
them.

SECURITY
    The names come from the client; the DNS client checks them before any
    query.  A temporary DNS failure never gives a 5xx.

CONFIGURATION
    invalid_hostname_reject_code, non_fqdn_reject_code,
    unknown_hostname_reject_code, unknown_address_reject_code,
    reject_tempfail_action, unknown_address_tempfail_action,
    unknown_helo_hostname_tempfail_action (through the policy's settings).

DEVIATIONS
    Postfix also reports "Malformed DNS server reply"; mta's DNS client
    treats a malformed answer as a temporary failure.  The HELO name is
    the one the session kept (mta.smtpd.commands: at most 255 octets,
    sanitized).
"""

import ipaddress

from mta.model import Reply
from mta.smtpd.decision import DUNNO, Decision
from mta.smtpd.peername import validHostname


def _truncated(name):
    """Postfix's dup_if_truncate: one trailing dot (not two) is dropped."""
    return name[:-1] if name.endswith(".") and not name.endswith("..") else name


def _validAddressLiteral(name):
    inner = name[1:-1] if name.startswith("[") and name.endswith("]") and len(name) > 2 else name
    if inner[:5].lower() == "ipv6:":
        inner = inner[5:]
    try:
        ipaddress.ip_address(inner)
    except ValueError:
        return False
    return True


async def hostProblem(dns, name, mailhost):
    """
    None when C{name} has what it needs (mailhost: an MX, else an address;
    else: an address, else an MX), or "nullmx", "notfound", "retry".
    """
    from mta.delivery.dns import DNSError

    async def addresses():
        try:
            return bool(await dns.lookupAddresses(name, ("ipv4", "ipv6")))
        except DNSError as e:
            return "retry" if e.temporary else False

    async def exchangers():
        try:
            mx = await dns.lookupMX(name)
        except DNSError as e:
            return "retry" if e.temporary else False
        if len(mx) == 1 and mx[0][1] == ".":
            return "nullmx"
        return bool(mx)

    first, second = (exchangers, addresses) if mailhost else (addresses, exchangers)
    found = await first()
    if found == "nullmx":
        return "nullmx" if mailhost else None
    if found is True:
        return None
    other = await second()
    if other == "nullmx":
        return "nullmx" if mailhost else None
    if other is True:
        return None
    return "retry" if "retry" in (found, other) else "notfound"


def _tempfail(action, reply):
    return Decision("defer" if action == "defer" else "defer_if_permit", reply)


def invalidHelo(policy, argument):
    async def check(request):
        helo = request.helo
        if not helo:
            return DUNNO
        code = policy.settings.invalidHostnameCode
        if helo.startswith("["):
            if _validAddressLiteral(helo):
                return DUNNO
            text = f"<{helo}>: Helo command rejected: invalid ip address"
        elif validHostname(_truncated(helo)) or _validAddressLiteral(_truncated(helo)):
            return DUNNO
        else:
            text = f"<{helo}>: Helo command rejected: Invalid name"
        return Decision("reject" if code >= 500 else "defer", Reply(code, f"{code // 100}.5.2", text))

    return check


def nonFqdnHelo(policy, argument):
    async def check(request):
        helo = request.helo
        if not helo:
            return DUNNO
        if helo.startswith("["):
            if _validAddressLiteral(helo):
                return DUNNO
            code, text = policy.settings.invalidHostnameCode, f"<{helo}>: Helo command rejected: invalid ip address"
        else:
            name = _truncated(helo)
            if "." in name and validHostname(name):
                return DUNNO
            code, text = policy.nonFqdnRejectCode, f"<{helo}>: Helo command rejected: need fully-qualified hostname"
        return Decision("reject" if code >= 500 else "defer", Reply(code, f"{code // 100}.5.2", text))

    return check


def unknownHelo(policy, argument):
    async def check(request):
        helo = request.helo
        if not helo or policy.dns is None:
            return DUNNO
        if helo.startswith("["):
            return await invalidHelo(policy, None)(request)
        problem = await hostProblem(policy.dns(), _truncated(helo), mailhost=False)
        if problem is None:
            return DUNNO
        text = f"<{helo}>: Helo command rejected: Host not found"
        if problem == "retry":
            return _tempfail(policy.settings.unknownHeloTempfail, Reply(450, "4.7.1", text))
        code = policy.settings.unknownHostnameCode
        return Decision("reject" if code >= 500 else "defer", Reply(code, f"{code // 100}.7.1", text))

    return check


def unknownAddress(which):
    """reject_unknown_sender_domain (C{which} "sender") and reject_unknown_recipient_domain."""
    what, detail = ("Sender address", "1.8") if which == "sender" else ("Recipient address", "1.2")

    def make(policy, argument):
        async def check(request):
            from mta.delivery.dns import toASCII

            address = getattr(request, which)
            if address is None or address.isNull or not address.domain or policy.dns is None:
                return DUNNO
            domain = address.domain
            if domain.startswith("["):
                return DUNNO
            if await policy.resolver.addressClass(domain) in ("local", "alias", "virtual"):
                return DUNNO  # delivered here: not a DNS question (Postfix's RESOLVE_CLASS_FINAL)
            try:
                name = toASCII(domain)
            except ValueError:
                name = None
            problem = "notfound" if name is None else await hostProblem(policy.dns(), name, mailhost=True)
            if problem is None:
                return DUNNO
            address = getattr(request, f"{which}_given", None) or address  # the replies name it as given
            if problem == "nullmx":
                code, status = (550, "5.7.27") if which == "sender" else (556, "5.1.10")
                return Decision("reject", Reply(code, status, f"<{address}>: {what} rejected: Domain {domain} "
                                                              "does not accept mail (nullMX)"))
            text = f"<{address}>: {what} rejected: Domain not found"
            if problem == "retry":
                return _tempfail(policy.settings.unknownAddressTempfail, Reply(450, f"4.{detail}", text))
            code = policy.settings.unknownAddressCode
            return Decision("reject" if code >= 500 else "defer", Reply(code, f"{code // 100}.{detail}", text))

        return check

    return make


# -- check_*_{a,mx,ns}_access: the name's servers (or addresses) looked up in a table ------------------

_WHAT = {"client": "Client host", "reverse_client": "Unverified Client host", "helo": "Helo command",
         "sender": "Sender address", "recipient": "Recipient address"}


def _target(request, which):
    """(the domain looked up, the subject of the reply) of C{which}, or None when there is none."""
    if which in ("client", "reverse_client"):
        name = request.client_name if which == "client" else request.reverse_client_name
        if not name or name == "unknown":
            return None
        return name, f"{name}[{request.client_address}]"
    if which == "helo":
        return (request.helo, request.helo) if request.helo else None
    address = getattr(request, which)
    if address is None or address.isNull or not address.domain:
        return None
    return address.domain, str(address)


async def _servers(dns, domain, rrtype, maillog):
    """The host names (MX, NS) or addresses (A) to look up for C{domain}, or None after a DNS failure (warned)."""
    from mta.delivery.dns import DNSError, nameText

    try:
        if rrtype == "a":
            return await dns.lookupAddresses(domain, ("ipv4", "ipv6"))
        if rrtype == "mx":
            try:
                mx = await dns.lookupMX(domain)
            except DNSError as e:
                if e.temporary:
                    raise
                mx = []
            hosts = [host for _, host in mx if host != "."]
            return hosts if mx else [domain]  # no MX: the domain is its own mail server (Postfix's rule)
        name = domain
        while True:  # NS: the nearest enclosing zone's servers
            try:
                records = await dns.lookupRecords(name, "NS")
            except DNSError as e:
                if e.temporary:
                    raise
                records = []
            if records or "." not in name:
                return [nameText(rdata.target) for rdata in records]
            name = name.split(".", 1)[1]
    except DNSError as e:
        maillog.emit(f"warning: Unable to look up {rrtype.upper()} host for {domain}: {e.text}")
        return None


def serverAccess(which, rrtype):
    """check_{which}_{rrtype}_access type:table (Postfix's check_server_access)."""
    from mta.smtpd.access import addressKeysOf, domainKeys, lookupKeys

    what = _WHAT[which]

    def make(policy, table):
        async def lookup(keys, subject):
            for key in lookupKeys(table, keys):  # a pattern table: the whole name or address only
                value = await table.lookup(key)
                if value is not None:
                    return policy.access(value, subject, what)
            return None

        async def check(request):
            from mta.delivery.dns import DNSError

            found = _target(request, which)
            if found is None or policy.dns is None:
                return DUNNO
            domain, subject = found
            dns = policy.dns()
            if domain.startswith("["):  # an address literal is its own server (no NS equivalent)
                if rrtype == "ns":
                    return DUNNO
                decision = await lookup(addressKeysOf(domain.strip("[]").removeprefix("IPv6:")), subject)
            else:
                decision = None
                servers = await _servers(dns, domain, rrtype, policy.maillog)
                for server in servers or ():
                    if rrtype == "a":
                        decision = await lookup(addressKeysOf(server), subject)
                    else:
                        decision = await lookup(domainKeys(server), subject)
                        if decision is None:
                            try:
                                addresses = await dns.lookupAddresses(server, ("ipv4", "ipv6"))
                            except DNSError:
                                addresses = []
                            for address in addresses:
                                decision = await lookup(addressKeysOf(address), subject)
                                if decision is not None:
                                    break
                    if decision is not None and decision.action != "dunno":
                        break
            if decision is None:
                return DUNNO
            if decision.action == "permit":  # Postfix's forbid_allowlist: OK is no exception here
                maillog = policy.maillog
                rule = f"check_{which}_{rrtype}_access"
                for line in (f"restriction {rule} returns OK for {subject}", "this is not allowed for security reasons",
                             "use DUNNO instead of OK if you want to make an exception"):
                    maillog.emit(f"warning: {line}")
                return Decision("defer", Reply(451, "4.3.5", "Server configuration error"), errorClass="software")
            return decision

        return check

    return make
