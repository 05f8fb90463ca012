"""mta.smtpd.access - access(5): what a table value (or a policy server's action) means, and the keys looked up.

    accessResult(value, subject, what) -> Decision
    lookupKeys(table, keys)  the keys a table is asked (a pattern table: the whole key only)
    accessKeys(address)      user@domain, domain and its parents, user@ (an envelope address)
    domainKeys(name)         a host name and its parent domains
    addressKeysOf(address)   a client address and its networks (Postfix's check_addr_access)

SECURITY
    Table values are the administrator's; a value that cannot be used is
    a 451 4.3.5 and a software-class error, never a permit.

CONFIGURATION
    None.
"""

import re

from mta.model import Reply
from mta.smtpd.decision import DUNNO, PERMIT, Decision
from mta.tables import tableKeys

_HEADER = re.compile(r"[!-9;-~]+:")  # a header field name and its colon (RFC 5322 2.2)
_CODE = re.compile(r"([245])([0-9][0-9])(?:\s+([245]\.[0-9]{1,3}\.[0-9]{1,3}))?(?:\s+(.*))?$", re.S)


lookupKeys = tableKeys  # the keys a table is asked: a pattern table gets the whole key only


def _splitDsn(rest, default):
    """access(5)'s optional enhanced status code at the start of the text: (status, text)."""
    match = re.match(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?:\s+(.*))?$", rest, re.S)
    if match:
        return f"{match.group(1)}.{match.group(2)}.{match.group(3)}", (match.group(4) or "").strip()
    return default, rest


def accessResult(value, subject, what, rejectCode=554, deferCode=450):
    """
    Turn an access(5) table value into a Decision.  C{rejectCode} and
    C{deferCode}: access_map_reject_code and access_map_defer_code.
    """
    text = value.strip()
    word, _, rest = text.partition(" ")
    word = word.upper()
    rest = rest.strip()
    prefix = f"<{subject}>: {what} rejected"
    if word in ("OK", "PERMIT", "RELAY") or (word.isdigit() and not text.startswith(("4", "5"))):
        return PERMIT
    if word == "DISCARD":  # accept, then drop the message; evaluation stops
        return Decision("discard", text=f"<{subject}>: {what} triggers DISCARD action" + (f": {rest}" if rest else ""))
    if word in ("REDIRECT", "BCC"):
        if "@" not in rest or len(rest.split()) != 1:
            return Decision("warn", text=f"access value {text!r} requires user@domain target")
        return Decision(word.lower(), text=rest)
    if word == "DUNNO":
        return DUNNO
    if word == "HOLD":
        return Decision("hold", hold=f"<{subject}>: {what} triggers HOLD action" + (f": {rest}" if rest else ""))
    if word in ("WARN", "INFO"):  # a log line, and evaluation goes on
        return Decision(word.lower(), text=rest)
    if word == "PREPEND":  # a header for the message (Postfix's is_header check)
        if not _HEADER.match(rest):
            return Decision("warn", text=f"access value {text!r} requires header: text")
        return Decision("prepend", text=rest)
    if word in ("DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
        status, why = _splitDsn(rest, "4.7.1")
        code = deferCode
        return Decision(word.lower(), Reply(code, f"{code // 100}{status[1:]}", f"{prefix}: {why or 'Service unavailable'}"))
    if word in ("REJECT", "DEFER"):
        code = rejectCode if word == "REJECT" else deferCode
        status, why = _splitDsn(rest, f"{code // 100}.7.1")
        return Decision("reject" if code >= 500 else "defer",
                        Reply(code, f"{code // 100}{status[1:]}", f"{prefix}: {why or 'Access denied'}"))
    match = _CODE.match(text)
    if match and match.group(1) in "45":
        code = int(match.group(1) + match.group(2))
        status = match.group(3) or f"{match.group(1)}.7.1"
        reply = Reply(code, status, f"{prefix}: {match.group(4) or 'Access denied'}")
        return Decision("reject" if code >= 500 else "defer", reply)
    if ":" not in text:
        # A restriction class name or a restriction list: mta.smtpd.restrictions evaluates it.
        return Decision("restrictions", text=text, subject=(str(subject), what))
    # FILTER (a content filter, not built yet) and a lookup table inside an access value, which
    # Postfix refuses too ("define a restriction class and specify its name instead").
    return Decision("defer", Reply(451, "4.3.5", "Server configuration error"), errorClass="software",
                    text=f"access table value {text!r} cannot be used here")


def accessKeys(address):
    """access(5)'s keys for an address: user@domain, domain and its parents, user@."""
    if address.isNull:
        return ["<>"]
    local = address.local.lower()
    if not address.domain:
        return [local, f"{local}@"]
    parts = address.domain.split(".")
    return [f"{local}@{address.domain}"] + [".".join(parts[i:]) for i in range(len(parts))] + [f"{local}@"]


def domainKeys(name):
    """A host name and its parent domains, as access(5) looks them up (parent_domain_matches_subdomains)."""
    parts = name.lower().split(".")
    return [".".join(parts[i:]) for i in range(len(parts))]


def addressKeysOf(address):
    """
    access(5)'s keys for a client address: the address, then the address
    with its last octets (IPv4) or its last 16-bit groups (IPv6) cut off,
    as Postfix's check_addr_access; a mapped IPv4 address as IPv4.
    """
    import ipaddress

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return [address]
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    text, delimiter = str(ip), ("." if ip.version == 4 else ":")  # IPv6 in RFC 5952 form, as inet_ntop
    keys = [text]
    while delimiter in text:  # Postfix's split_at_right: "2001:db8::1", "2001:db8:", "2001:db8", "2001"
        text = text.rsplit(delimiter, 1)[0]
        if not text:
            break
        keys.append(text)
    return keys


__all__ = ["accessKeys", "accessResult", "addressKeysOf", "domainKeys", "lookupKeys"]
