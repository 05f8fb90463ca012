"""mta.delivery.smtpcommands - the commands the SMTP/LMTP client writes, and the EHLO keywords they depend on.

NAME
    parseEhlo(reply, discard)       the server's ESMTP extensions and SIZE
    mailCommand(request, extensions, needUtf8, quote)
    rcptCommand(rcpt, extensions, needUtf8, quote)
    envelopePath(address, quote)    an address as it goes between <>

DESCRIPTION
    parseEhlo() reads the keywords of an EHLO (or LHLO) reply, case
    insensitive, without those of smtp_discard_ehlo_keywords
    (lmtp_discard_lhlo_keywords): keyword (upper case) -> its parameters.
    SIZE gives the server's limit (0: none announced, or a value that is
    not a number); SMTPUTF8 implies 8BITMIME, as in Postfix.

    mailCommand() is "MAIL FROM:<sender>" with, as offered and needed,
    SIZE=<content length>, BODY=8BITMIME (an envelope that says 8BITMIME
    or BINARYMIME; BODY=7BIT is never sent), ENVID= and RET= (DSN,
    xtext-encoded), SMTPUTF8.  rcptCommand() is "RCPT TO:<recipient>" with
    ORCPT= and NOTIFY= when DSN is offered: ORCPT from the queue file's
    "type;address" (re-encoded: xtext, or RFC 6533 utf-8-addr-xtext for
    utf-8), else rfc822 (utf-8 for a non-ASCII original when SMTPUTF8 is
    used) of the original recipient; NOTIFY only with the known keywords.

    envelopePath() follows smtp_quote_rfc821_envelope: with it the local
    part is (re)quoted when it needs it (mta.address.formatAddress);
    without it an address that would need quotes is refused.

SECURITY
    Addresses and DSN values come from the queue file, and through it from
    the network: a command never carries CR, LF or NUL.  An address with a
    control character, a domain with white space, quotes or angle
    brackets, and (without quoting) a local part that needs quotes raise
    ValueError (the session bounces the recipient, 5.1.7 / 5.1.3, without
    sending anything); DSN values are re-encoded, never passed through.
    The session checks every command line once more before it writes it.

CONFIGURATION
    smtp_discard_ehlo_keywords, lmtp_discard_lhlo_keywords,
    smtp_quote_rfc821_envelope, lmtp_quote_rfc821_envelope: passed in.
"""

import re

from mta.address import formatAddress, xtextEncode
from mta.model import Address

__all__ = ["envelopePath", "hasControl", "mailCommand", "parseEhlo", "rcptCommand", "uxtext"]

_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")
_QUOTED_LOCAL = re.compile(r'"((?:[^"\\]|\\.)*)"\Z', re.S)
_UNQUOTE = re.compile(r"\\(.)", re.S)
_BAD_DOMAIN = re.compile(r"[\s<>\"]")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}\Z")
_UXTEXT_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("+=\\")


def hasControl(text):
    """Whether C{text} holds a C0 or C1 control character (CR, LF, NUL, TAB, DEL, ...)."""
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def uxtext(text):
    """RFC 6533 utf-8-addr-xtext: QCHAR as is, anything else as \\x{HEX}."""
    return "".join(c if c in _UXTEXT_SAFE else f"\\x{{{ord(c):X}}}" for c in text)


def parseEhlo(reply, discard):
    """
    (extensions, sizeLimit) of an EHLO/LHLO C{reply} (an SMTPReply; None
    for HELO: no extensions), leaving out the keywords in C{discard}
    (upper case).
    """
    extensions = {}
    sizeLimit = 0
    if reply is None:
        return extensions, sizeLimit
    for line in reply.lines[1:]:
        words = re.split(r"[ \t=]+", line[4:].strip(), maxsplit=1)
        keyword = words[0].upper()
        if not keyword or keyword in discard:
            continue
        extensions[keyword] = words[1] if len(words) > 1 else ""
    if "SIZE" in extensions:
        value = extensions["SIZE"].split()[:1]
        if value and _SIZE_VALUE.match(value[0]):
            sizeLimit = int(value[0])
    if "SMTPUTF8" in extensions and "8BITMIME" not in extensions:
        extensions["8BITMIME"] = ""  # Postfix: SMTPUTF8 implies 8BITMIME
    return extensions, sizeLimit


def mailCommand(request, extensions, needUtf8, quote, requiretls=False):
    """
    The MAIL FROM line for C{request}; ValueError for a sender that cannot
    be sent.  C{requiretls}: add RFC 8689's REQUIRETLS (the caller decides:
    mta.delivery.requiretls.beforeMail, only inside TLS when offered).
    """
    envelope = request.envelope
    line = f"MAIL FROM:<{envelopePath(envelope.sender, quote)}>"
    if "SIZE" in extensions:
        line += f" SIZE={request.content_length}"
    if "8BITMIME" in extensions and envelope.body in ("8BITMIME", "BINARYMIME"):
        line += " BODY=8BITMIME"
    if "DSN" in extensions:
        if envelope.envid:
            line += " ENVID=" + xtextEncode(envelope.envid)
        if envelope.ret in ("FULL", "HDRS"):
            line += f" RET={envelope.ret}"
    if needUtf8:
        line += " SMTPUTF8"
    if requiretls:
        line += " REQUIRETLS"
    return line


def rcptCommand(rcpt, extensions, needUtf8, quote):
    """The RCPT TO line for C{rcpt} (a DeliveryRecipient); ValueError for an address that cannot be sent."""
    line = f"RCPT TO:<{envelopePath(rcpt.address, quote)}>"
    if "DSN" in extensions:
        orcpt = orcptParameter(rcpt, needUtf8)
        if orcpt:
            line += " ORCPT=" + orcpt
        if rcpt.notify and set(rcpt.notify) <= _NOTIFY:
            line += " NOTIFY=" + ",".join(rcpt.notify)
    return line


def orcptParameter(rcpt, needUtf8):
    """The ORCPT= value for C{rcpt}, or None."""
    if rcpt.orcpt:
        addrType, semi, address = rcpt.orcpt.partition(";")
        if semi and address and _ADDR_TYPE.match(addrType):
            if addrType.lower() == "utf-8":
                return "utf-8;" + uxtext(address)
            return addrType + ";" + xtextEncode(address)
    if rcpt.original:
        if needUtf8 and not rcpt.original.isascii():
            return "utf-8;" + uxtext(rcpt.original)
        return "rfc822;" + xtextEncode(rcpt.original)
    return None


def envelopePath(address, quote):
    """
    The address as it goes between <>: with C{quote}
    (smtp_quote_rfc821_envelope) the local part is (re)quoted when it needs
    it (mta.address.formatAddress).

    @raise ValueError: control characters, or a domain with white space
        or angle brackets, or (without quoting) a local part that would
        need quotes.
    """
    if not address:
        return ""
    if hasControl(address):
        raise ValueError("control character in address")
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if _BAD_DOMAIN.search(domain):
        raise ValueError("bad domain")
    match = _QUOTED_LOCAL.match(local)
    unquoted = _UNQUOTE.sub(r"\1", match.group(1)) if match else local
    formatted = formatAddress(Address(unquoted, domain))
    if quote:
        return formatted
    if match or formatted == address:
        return address
    raise ValueError("local part needs quoting")
