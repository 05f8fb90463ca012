"""mta.smtpd.dnsxl - DNS block and allow lists in the restrictions, as Postfix's smtpd_check.c.

    reject_rbl_client D[=P]            the client address, reversed (1.2.0.192.D; IPv6: 32
                                       nibbles), has an A record (matching P)
    permit_dnswl_client D[=P]          the same, as a permit (never for a recipient that is
                                       not an authorized destination)
    reject_rhsbl_client D[=P]          the client's verified name (not "unknown"): NAME.D
    permit_rhswl_client D[=P]          the same, as a permit
    reject_rhsbl_reverse_client D[=P]  the unverified PTR name
    reject_rhsbl_helo D[=P]            the HELO/EHLO name
    reject_rhsbl_sender D[=P]          the sender's domain
    reject_rhsbl_recipient D[=P]       the recipient's domain

P is Postfix's A-record pattern (mta.config.types.DnsxlSpec: 127.0.0.[2..11]).
A listed client gets the reply of rbl_reply_maps (looked up by D=P, then
D) or default_rbl_reply, a template expanded with $rbl_code
(maps_rbl_reject_code), $rbl_class ("Client host", "Helo command", ...),
$rbl_what (the address or name looked up), $rbl_domain, $rbl_reason and
$rbl_txt (the TXT records of the listing, at most 500 characters), and the
session's $client_address, $client_name, $reverse_client_name,
$helo_name, $sender, $sender_name, $sender_domain, $recipient,
$recipient_name and $recipient_domain; ${name?text} and ${name:text} as
in Postfix.  By default::

    554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.example; listed

A template that does not expand, or does not start with a 4xx/5xx code, is
a warning and the default (or 450 4.7.1 Service unavailable).

A list that cannot be asked (SERVFAIL, timeout) is a warning
(``warning: 1.2.0.192.zen.example: RBL lookup error: ...``) and: a block
list does not match (mail is not refused because a list is down); an
allow list gives Postfix's DEFER_IF_REJECT (450 4.7.1 ... Service
unavailable, if the decision would otherwise be a reject).  Answers are
cached by the DNS client (mta.delivery.dns) for their TTL; above it,
Dnsxl keeps each answer (not a failure) RESULT_CACHE_SECONDS, at most
RESULT_CACHE_SIZE of them, as Postfix's smtpd_rbl_cache per process.

SECURITY
    Names from the client (HELO, the sender's and recipient's domains, the
    PTR name) are checked (valid hostname, not numeric, converted to ASCII)
    before they become a query.  Expanded values pass
    smtpd_expansion_filter (default printable ASCII and tab; the rest
    becomes "_").

CONFIGURATION
    default_rbl_reply, rbl_reply_maps, maps_rbl_reject_code (through
    mta.smtpd.policy.RecipientPolicy).

DEVIATIONS
    Postfix 3.9's "&" bit-mask patterns are not built.
"""

import ipaddress
import re

from twisted.logger import Logger

from mta.model import Reply
from mta.smtpd.peername import validHostname

log = Logger()

TXT_LIMIT = 500  # characters of the listing's TXT records kept for $rbl_reason (Postfix's RBL_TXT_LIMIT)
# Answers kept per listener, as Postfix's smtpd keeps them per process (smtpd_rbl_cache, 1000 entries,
# for the process's life: at most max_use sessions); here at most RESULT_CACHE_SECONDS.
RESULT_CACHE_SIZE = 1000
RESULT_CACHE_SECONDS = 60.0
CLASSES = {  # Postfix's SMTPD_NAME_* reply classes
    "client": "Client host", "reverse_client": "Unverified Client host", "helo": "Helo command",
    "sender": "Sender address", "recipient": "Recipient address",
}


def clientQuery(address, domain):
    """The query name of a client address on DNS list C{domain}: reversed octets, or nibbles for IPv6."""
    ip = ipaddress.ip_address(address)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    reverse = ip.reverse_pointer  # 1.2.0.192.in-addr.arpa / ....ip6.arpa
    return reverse.rsplit(".", 2)[0] + "." + domain


def domainQuery(what, domain):
    """The query name of a name or address (its part after '@') on C{domain}, or None when it cannot be asked."""
    name = what.rpartition("@")[2] if "@" in what else what
    if not name or name.startswith("["):
        return None
    name = name.rstrip(".")
    if name.rpartition(".")[2].isdigit():  # a numeric last label (Spamhaus refuses IP queries): not asked
        return None
    try:
        name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return None
    if not validHostname(name):
        return None
    return f"{name.lower()}.{domain}"


# smtpd_expansion_filter's default: printable ASCII and tab.
DEFAULT_FILTER = frozenset(chr(c) for c in range(32, 127)) | {"\t"}


def _filtered(value, allowed=DEFAULT_FILTER):
    """smtpd_expansion_filter: the allowed characters stay, any other becomes '_'."""
    return "".join(ch if ch in allowed else "_" for ch in value)


def expandTemplate(template, values, allowed=DEFAULT_FILTER):
    """
    A reply template expanded with C{values} (Postfix's mac_expand, as the
    configuration's: mta.config.loader.expandMacros); each value passes
    smtpd_expansion_filter.  ValueError for an unknown name or a malformed
    expression.
    """
    from mta.config.loader import expandMacros

    def lookup(name):
        if name not in values:
            raise ValueError(f"unknown name ${name}")
        return _filtered(values[name], allowed)

    return expandMacros(template, lookup)


def requestValues(request):
    """The session's part of the template names (Postfix's smtpd_expand_lookup)."""
    def parts(address):
        if address is None:
            return "", "", ""
        text = str(address) if not address.isNull else ""
        return text, (address.local if text else ""), (address.domain if text else "")

    sender, senderName, senderDomain = parts(request.sender)
    recipient, recipientName, recipientDomain = parts(request.recipient)
    return {
        "client": f"{request.client_name}[{request.client_address}]", "client_address": request.client_address,
        "client_name": request.client_name, "reverse_client_name": request.reverse_client_name,
        "helo_name": request.helo or "", "sender": sender, "sender_name": senderName,
        "sender_domain": senderDomain, "recipient": recipient, "recipient_name": recipientName,
        "recipient_domain": recipientDomain,
    }


class Dnsxl:
    """The DNS list lookups of one listener's restrictions (RecipientPolicy.dnsxl)."""

    def __init__(self, dns, code, template, replyMaps, maillog, allowed=DEFAULT_FILTER, clock=None):
        self.dns = dns  # a callable that returns the IDNSResolver (made on first use)
        self.clock = clock  # for the result cache; None: no cache
        self._results = {}  # query -> (expiry, (status, txt)), Postfix's smtpd_rbl_cache
        self.allowed = allowed  # smtpd_expansion_filter
        self.code = code
        self.template = template
        self.replyMaps = replyMaps
        self.maillog = maillog

    async def listed(self, query, spec):
        """
        Is C{query} listed?  ("listed", txt), ("not listed", None) or
        ("unavailable", None) after a temporary DNS failure (warned).  An
        answer (not a failure) is kept RESULT_CACHE_SECONDS for the same
        query and pattern, as Postfix's smtpd keeps its DNS list results;
        the DNS client's own cache (the records' TTL) is under it.
        """
        key = (query, str(spec))
        now = self.clock.seconds() if self.clock is not None else None
        if now is not None:
            cached = self._results.get(key)
            if cached is not None and cached[0] > now:
                return cached[1]
        result = await self._ask(query, spec)
        if now is not None and result[0] != "unavailable":
            if len(self._results) >= RESULT_CACHE_SIZE:
                self._results = {k: v for k, v in self._results.items() if v[0] > now}
                if len(self._results) >= RESULT_CACHE_SIZE:
                    self._results.clear()
            self._results[key] = (now + RESULT_CACHE_SECONDS, result)
        return result

    async def _ask(self, query, spec):
        from mta.delivery.dns import DNSError

        resolver = self.dns()
        try:
            records = await resolver.lookupRecords(query, "A")
        except DNSError as e:
            if e.temporary:
                self.maillog.emit(f"warning: {query}: RBL lookup error: {e.text}")
                return "unavailable", None
            return "not listed", None
        if not any(spec.matches(getattr(rdata, "address", "")) for rdata in records):
            return "not listed", None
        try:
            texts = await resolver.lookupRecords(query, "TXT")
        except DNSError:
            texts = []
        txt = "".join(b"".join(rdata.strings).decode("utf-8", "replace") for rdata in texts)[:TXT_LIMIT]
        return "listed", txt

    async def reply(self, request, spec, what, kind, txt):
        """The Reply for a listed C{what} (rbl_reply_maps, else default_rbl_reply)."""
        from mta.tables import TableTemporaryError

        template = None
        for table in self.replyMaps:
            for key in dict.fromkeys((str(spec), spec.domain)):
                try:
                    template = await table.lookup(key)
                except TableTemporaryError:
                    return Reply(451, "4.3.0", "Temporary lookup failure")
                if template is not None:
                    break
            if template is not None:
                break
        values = requestValues(request)
        values.update(rbl_code=str(self.code), rbl_domain=spec.domain, rbl_reason=txt or "", rbl_txt=txt or "",
                      rbl_what=what, rbl_class=CLASSES[kind])
        for candidate in ([template] if template is not None else []) + [self.template]:
            try:
                text = expandTemplate(candidate, values, self.allowed)
                break
            except ValueError as e:
                self.maillog.emit(f"warning: bad rbl reply template for domain {spec.domain}: {candidate}: {e}")
        else:
            return Reply(450, "4.7.1", "Service unavailable")
        match = re.match(r"([45][0-9][0-9]) (?:([45]\.[0-9]{1,3}\.[0-9]{1,3}) )?(.*)", text, re.S)
        if not match:
            self.maillog.emit(f"warning: rbl response code configuration error: {text}")
            return Reply(450, "4.7.1", "Service unavailable")
        code, dsn, rest = int(match.group(1)), match.group(2) or "4.7.1", match.group(3)
        return Reply(code, f"{code // 100}{dsn[1:]}", rest or "Service unavailable")
