"""mta.address - RFC 5321 envelope paths and MAIL/RCPT parameters.

NAME
    mta.address - split, parse, check and format the argument of
    ``MAIL FROM:`` and ``RCPT TO:``.

DESCRIPTION
    Pure functions, no I/O.  The SMTP server calls them in this order:

    splitPathAndParameters(argument, strict)
        Cuts what follows ``MAIL FROM:`` / ``RCPT TO:`` into the path text
        (always returned in angle brackets) and the ESMTP parameters as
        (UPPERCASED keyword, value or None) pairs, in order.  Spaces after
        the colon are tolerated (Postfix does too).  With strict=False
        (Postfix's strict_rfc821_envelopes=no) a bare address without <>
        is accepted, followed by parameters or not, as Postfix does.
    parsePath(path, allowNull, smtputf8=False)
        Checks the path (RFC 5321 4.1.2, limits of 4.5.3.1) and returns an
        mta.model.Address: local part unquoted, domain lower-cased, source
        route dropped, address literals checked with ipaddress.
    parseMailParameters(params, sizeLimit=..., offered=...)
    parseRcptParameters(params, offered=..., smtputf8=...)
        Check SIZE (RFC 1870), BODY (RFC 6152, RFC 3030), SMTPUTF8
        (RFC 6531), RET/ENVID/NOTIFY/ORCPT (RFC 3461, RFC 6533 for
        utf-8 ORCPT) and AUTH (RFC 4954) and return attrs value objects.
    formatAddress(address)
        RFC 5321 text of an Address (quoting the local part when needed);
        defined beside Address in mta.model (which imports nothing of
        mta, so the two modules never import each other), re-exported here.
    xtextDecode / xtextEncode
        RFC 3461 section 4 xtext.

    One module of about 750 lines (a sixth of them this text), on purpose:
    the path grammar, xtext and the parameters share the error types, the
    control-character and length checks and the octet counting, and are
    read together when the relay check's split of an address is reviewed;
    split, they would import each other's private helpers.

    Errors are exceptions whose str() is short, printable ASCII, never an
    echo of control characters, and safe to put in a reply:

    PathError (ValueError)        bad path: 501 5.1.7 (MAIL) / 5.1.3 (RCPT)
    NonAsciiPathError (PathError) non-ASCII path without SMTPUTF8; a
                                  server may answer 553 5.6.7 (RFC 6531)
    ParameterError (ValueError)   unknown/malformed parameter: 555 5.5.4
    SizeExceeded (ValueError)     SIZE above the limit: 552 5.3.4

    Where this module is stricter than Postfix 3.7 (measured against a
    private Postfix instance), on purpose:
      * no RFC 822 forms in a path (comments, phrases, nested <>, a bare
        address with a stray ">"), with strict=False too;
      * no address without a domain except <postmaster> in RCPT (Postfix
        appends $myorigin to ``<user>``; the SMTP server and pickup do the
        same before they call parsePath, see mta.rewrite);
      * local parts must be a dot-atom or a quoted string (no ``a..b``,
        no leading/trailing dot), domains must be LDH labels (no ``_``),
        no trailing dot in a domain (Postfix strips it), no leading zeros
        in IPv4 literals (ipaddress refuses them);
      * local part <= 64 octets as sent (quotes and backslashes
        included), domain <= 255, path <= 256 octets with its brackets
        and any source route (RFC 5321 4.5.3.1; Postfix does not check
        the local part);
      * duplicate parameters are refused (Postfix accepts a repeated SIZE
        or BODY), ENVID must be at most 100 characters, NOTIFY may not list a
        value twice, ORCPT may not have an empty address, xtext hex digits
        must be upper case (RFC 3461; Postfix accepts lower case);
      * a parameter whose extension was not offered is refused (Postfix
        3.7 ignores AUTH= when SASL is off).

SIZE
    About 770 lines, and still one job: the syntax of the envelope as
    RFC 5321 and its extensions define it (paths, domains and literals,
    local parts, the MAIL and RCPT parameters, xtext), pure functions with
    no I/O.  The parameters (SIZE, BODY, RET, ENVID, NOTIFY, ORCPT,
    SMTPUTF8, REQUIRETLS, AUTH) are the natural split into a module of
    their own.

SECURITY
    Everything here is client input, read before any restriction runs.
    Control characters (C0, DEL, C1), NUL, CR and LF are refused in paths,
    in parameters and in decoded xtext, so nothing here can smuggle a line
    end into a log, a queue file, a DSN or an outgoing SMTP command.
    The local part/domain split is the one the relay check must judge:
    ``user%other@relay`` has local part ``user%other``; ``other!user@relay``
    has local part ``other!user``; ``"user@other"@relay`` has local part
    ``user@other`` (and is formatted back with quotes); a source route
    ``<@a:user@b>`` is dropped so only ``user@b`` is judged; domains are
    lower-cased; ``[1.2.3.4]`` literals are kept in brackets so that they
    can never match a domain name.  Input length is bounded before any
    parsing work.  formatAddress refuses (ValueError) to format an Address
    that holds a control character, so a damaged queue file cannot make
    the SMTP client send one.

CONFIGURATION
    None read here; the caller passes:
    strict_rfc821_envelopes (default no)  -> splitPathAndParameters(strict=)
    message_size_limit (default 10240000) -> parseMailParameters(sizeLimit=)
    the EHLO keywords offered in the session (SIZE, 8BITMIME, BINARYMIME,
    CHUNKING, SMTPUTF8, DSN, AUTH, ...)   -> offered=

SIZE
    Past 700 lines (about 100 of them this page; REQUIRETLS added its
    parameter): it is the one parser of the
    argument of MAIL FROM: and RCPT TO:, whose path and parameters share
    the split, the limits, the error types and the character checks; the
    value types it returns (and their formatting) are in mta.model.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

import attrs

from mta.model import ATEXT as _ATEXT
from mta.model import NULL_SENDER, Address, formatAddress
from mta.model import isBadUnicode as _badUnicode
from mta.model import isControl as _isControl

__all__ = [
    "MailParameters",
    "NonAsciiPathError",
    "ParameterError",
    "PathError",
    "RcptParameters",
    "SizeExceeded",
    "formatAddress",
    "parseDomain",
    "parseMailParameters",
    "parsePath",
    "parseRcptParameters",
    "splitPathAndParameters",
    "xtextDecode",
    "xtextEncode",
]


class PathError(ValueError):
    """A MAIL FROM / RCPT TO path is malformed (501 5.1.7 / 501 5.1.3)."""


class NonAsciiPathError(PathError):
    """A path holds non-ASCII text but SMTPUTF8 is not in use (553 5.6.7)."""


class ParameterError(ValueError):
    """An ESMTP parameter is unknown, not offered or malformed (555 5.5.4)."""


class SizeExceeded(ValueError):
    """The SIZE parameter is above the configured limit (552 5.3.4)."""


# RFC 5321 4.5.3.1.1-3
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
MAX_PATH = 256
MAX_LABEL = 63
# RFC 3461 4.4 and 4.2
MAX_ENVID = 100
MAX_ORCPT = 500
# RFC 1870: SIZE is a decimal number; 20 digits hold any 64-bit value.
MAX_SIZE_DIGITS = 20
# Anything longer than this is refused before any real parsing work.
_HARD_CAP = 4 * MAX_PATH

_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
_HEX = frozenset("0123456789ABCDEF")
# Characters outside L*/M*/N* that IDNA2008 allows in a label by context.
_IDNA_CONTEXT = frozenset("\u00b7\u0375\u05f3\u05f4\u30fb\u200c\u200d")


def _safe(text: str, limit: int = 32) -> str:
    """C{text} fit for a reply: printable ASCII only, at most C{limit} chars."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


# -- splitting the command argument ---------------------------------------


def _scanQuoted(text: str, start: int, error: type[ValueError]) -> int:
    """C{text[start]} is a double quote; return the index after the closing
    one.  Backslash escapes the next character."""
    i = start + 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return i + 1
        i += 1
    raise error("unbalanced quotes in address")


def _checkNoControls(text: str, error: type[ValueError], what: str) -> None:
    for c in text:
        if _isControl(c):
            raise error(f"control character in {what}")


def splitPathAndParameters(
    argument: str, strict: bool, *, smtputf8: bool | None = None
) -> tuple[str, list[tuple[str, str | None]]]:
    """
    Split the text after C{MAIL FROM:} or C{RCPT TO:} into the path (with
    its angle brackets) and the ESMTP parameters.

    @param strict: Postfix's strict_rfc821_envelopes: the path must be in
        <>.  Otherwise a bare address (``user@example.com``) is also
        accepted and returned as ``<user@example.com>``; parameters may
        follow it, as in Postfix.
    @param smtputf8: whether parameter values may hold UTF-8 (RFC 6531
        3.3).  None (the default) means: when this same argument carries
        the SMTPUTF8 keyword (MAIL).  The server passes the transaction's
        flag for RCPT.
    @return: (path, [(KEYWORD, value or None), ...]) in order.
    @raise PathError: bad or missing path, junk glued to it, controls.
    @raise ParameterError: malformed or duplicate parameter.
    """
    if len(argument) > _HARD_CAP * 4:
        raise PathError("command argument too long")
    text = argument.lstrip(" ")
    if not text:
        raise PathError("missing address")
    if text[0] == "<":
        i = 1
        n = len(text)
        while True:
            if i >= n:
                raise PathError("unbalanced angle brackets in address")
            c = text[i]
            if c == '"':
                i = _scanQuoted(text, i, PathError)
                continue
            if c == "<":
                raise PathError("unexpected < in address")
            if c == ">":
                break
            i += 1
        path = text[: i + 1]
        rest = text[i + 1 :]
        if rest and rest[0] != " ":
            raise PathError("garbage after address")
    else:
        if strict:
            raise PathError("address must be enclosed in <>")
        i = 0
        n = len(text)
        while i < n and text[i] != " ":
            if text[i] == '"':
                i = _scanQuoted(text, i, PathError)
                continue
            if text[i] in "<>":
                raise PathError("unbalanced angle brackets in address")
            i += 1
        path = "<" + text[:i] + ">"
        rest = text[i:]
    _checkNoControls(path, PathError, "address")
    return path, _splitParameters(rest, smtputf8)


def _splitParameters(rest: str, smtputf8: bool | None) -> list[tuple[str, str | None]]:
    _checkNoControls(rest, ParameterError, "parameters")
    words = [w for w in rest.split(" ") if w]
    params: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for word in words:
        keyword, eq, value = word.partition("=")
        if not _KEYWORD.match(keyword):
            raise ParameterError(f"bad parameter syntax: {_safe(word)}")
        keyword = keyword.upper()
        if keyword in seen:
            raise ParameterError(f"duplicate parameter {_safe(keyword)}")
        seen.add(keyword)
        params.append((keyword, value if eq else None))
    if smtputf8 is None:
        smtputf8 = "SMTPUTF8" in seen
    for keyword, value in params:
        if value is None:
            continue
        if not value:
            raise ParameterError(f"empty value for {_safe(keyword)}")
        for c in value:
            if c == "=":
                raise ParameterError(f"bad value for {_safe(keyword)}")
            if ord(c) > 0x7E:
                if not smtputf8:
                    raise ParameterError(f"non-ASCII value for {_safe(keyword)} without SMTPUTF8")
                if _badUnicode(c):
                    raise ParameterError(f"bad character in value for {_safe(keyword)}")
    return params


# -- paths ------------------------------------------------------------------


def _checkUnicode(text: str, smtputf8: bool, what: str) -> None:
    """Refuse controls always and non-ASCII unless SMTPUTF8."""
    for c in text:
        if _isControl(c):
            raise PathError(f"control character in {what}")
        if ord(c) > 0x7F:
            if not smtputf8:
                raise NonAsciiPathError(f"non-ASCII {what} requires SMTPUTF8")
            if _badUnicode(c):
                raise PathError(f"bad character in {what}")


def _parseAddressLiteral(text: str) -> str:
    """C{text} is ``[...]``; return the normalised literal, brackets kept."""
    inner = text[1:-1]
    if ":" not in inner:
        try:
            ip = ipaddress.IPv4Address(inner)
        except ValueError:
            raise PathError("bad IPv4 address literal") from None
        return f"[{ip}]"
    tag, _, addr = inner.partition(":")
    if tag.lower() != "ipv6":
        raise PathError("unsupported address literal")
    if not addr or not all(c in "0123456789abcdefABCDEF:." for c in addr):
        raise PathError("bad IPv6 address literal")
    try:
        ip6 = ipaddress.IPv6Address(addr)
    except ValueError:
        raise PathError("bad IPv6 address literal") from None
    return f"[IPv6:{ip6.compressed}]"


def _checkULabel(label: str) -> None:
    """An IDNA-ish U-label: letters, marks, digits, hyphens, a few
    contextual characters; no leading mark, no edge hyphens; its A-label
    form must fit in 63 octets."""
    if label[0] == "-" or label[-1] == "-":
        raise PathError("bad domain label")
    if unicodedata.category(label[0]).startswith("M"):
        raise PathError("bad domain label")
    for c in label:
        if c.isascii():
            if not (c.isalnum() or c == "-"):
                raise PathError("bad character in domain")
            continue
        if _badUnicode(c):
            raise PathError("bad character in domain")
        if unicodedata.category(c)[0] not in "LMN" and c not in _IDNA_CONTEXT:
            raise PathError("bad character in domain")
    try:
        alabel = "xn--" + label.encode("punycode").decode("ascii")
    except UnicodeError:
        raise PathError("bad domain label") from None
    if len(alabel) > MAX_LABEL:
        raise PathError(f"domain label exceeds {MAX_LABEL} octets")


def parseDomain(text: str, smtputf8: bool = False) -> str:
    """
    Check a domain (a name, ``[IPv4]`` or ``[IPv6:...]``) and return it
    normalised: lower case, literal brackets kept, ``IPv6:`` tag and IPv6
    text canonical.

    @raise PathError: malformed, too long, or non-ASCII without smtputf8.
    """
    if not text:
        raise PathError("missing domain")
    _checkUnicode(text, smtputf8, "domain")
    if _octets(text) > MAX_DOMAIN:
        raise PathError(f"domain exceeds {MAX_DOMAIN} octets")
    if text[0] == "[":
        if text[-1] != "]" or "[" in text[1:] or "]" in text[:-1]:
            raise PathError("unbalanced brackets in domain")
        return _parseAddressLiteral(text)
    domain = text.lower()
    if domain.endswith("."):
        raise PathError("trailing dot in domain")
    for label in domain.split("."):
        if not label:
            raise PathError("empty label in domain")
        if label.isascii():
            if len(label) > MAX_LABEL:
                raise PathError(f"domain label exceeds {MAX_LABEL} octets")
            if not _LDH_LABEL.match(label):
                if all(c.isalnum() or c == "-" for c in label):
                    raise PathError("bad domain label")
                raise PathError("bad character in domain")
        else:
            _checkULabel(label)
    return domain


def _parseLocalPart(text: str, smtputf8: bool) -> tuple[str, int]:
    """
    Parse the local part at the start of C{text}.  Return (unquoted local
    part, index just after it).
    """
    if text.startswith('"'):
        out = []
        i = 1
        n = len(text)
        while True:
            if i >= n:
                raise PathError("unbalanced quotes in address")
            c = text[i]
            if c == '"':
                i += 1
                break
            if c == "\\":
                if i + 1 >= n:
                    raise PathError("unbalanced quotes in address")
                c = text[i + 1]
                i += 2
            else:
                i += 1
            # qtextSMTP and quoted-pairSMTP: SP and printable ASCII (plus
            # UTF-8 with SMTPUTF8, already screened by _checkUnicode).
            if c == " " or "!" <= c <= "~" or (ord(c) > 0x7F and smtputf8):
                out.append(c)
            else:
                raise PathError("bad character in quoted local part")
        local = "".join(out)
        if not local:
            raise PathError("empty local part")
        return local, i
    i = 0
    n = len(text)
    while i < n and text[i] != "@":
        c = text[i]
        if not (c in _ATEXT or c == "." or (ord(c) > 0x7F and smtputf8)):
            if c == " ":
                raise PathError("space in address")
            if c == '"':
                raise PathError("misplaced quote in address")
            raise PathError("bad character in local part")
        i += 1
    local = text[:i]
    if not local:
        raise PathError("empty local part")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise PathError("bad dots in local part")
    return local, i


def parsePath(path: str, allowNull: bool, smtputf8: bool = False, *, allowPostmaster: bool | None = None) -> Address:
    """
    Parse an RFC 5321 Reverse-path or Forward-path, brackets included.

    @param allowNull: ``<>`` is allowed (MAIL FROM); it gives NULL_SENDER.
    @param smtputf8: the transaction uses SMTPUTF8: non-ASCII is allowed
        in the local part and domain (RFC 6531).
    @param allowPostmaster: ``<postmaster>`` without a domain is allowed
        and gives Address("postmaster", ""); default: when not allowNull
        (that is, for RCPT TO).
    @raise PathError: with a short message saying what is wrong.
    """
    if allowPostmaster is None:
        allowPostmaster = not allowNull
    if len(path) > _HARD_CAP:
        raise PathError(f"path exceeds {MAX_PATH} octets")
    if len(path) < 2 or path[0] != "<" or path[-1] != ">":
        raise PathError("address must be enclosed in <>")
    _checkUnicode(path, smtputf8, "address")
    inner = path[1:-1]
    if not inner:
        if allowNull:
            return NULL_SENDER
        raise PathError("null address not allowed here")
    if allowPostmaster and inner.lower() == "postmaster":
        return Address("postmaster", "")
    if inner[0] == "@":
        # A-d-l = At-domain *( "," At-domain ) ":" ; accepted and ignored.
        route, colon, mailbox = inner.partition(":")
        if not colon:
            raise PathError("bad source route")
        for hop in route.split(","):
            if not hop.startswith("@") or hop[1:2] == "[":
                raise PathError("bad source route")
            parseDomain(hop[1:], smtputf8)
        if not mailbox:
            raise PathError("missing mailbox after source route")
    else:
        mailbox = inner
    local, end = _parseLocalPart(mailbox, smtputf8)
    if end >= len(mailbox) or mailbox[end] != "@":
        if end >= len(mailbox):
            raise PathError("address has no domain")
        raise PathError("bad local part")
    if _octets(mailbox[:end]) > MAX_LOCAL_PART:
        raise PathError(f"local part exceeds {MAX_LOCAL_PART} octets")
    domain = parseDomain(mailbox[end + 1 :], smtputf8)
    if _octets(path) > MAX_PATH:
        raise PathError(f"path exceeds {MAX_PATH} octets")
    return Address(local, domain)


# -- xtext (RFC 3461 section 4) -------------------------------------------------


def xtextDecode(text: str) -> str:
    """
    Decode RFC 3461 xtext: ``!``..``~`` except ``+`` and ``=`` stand for
    themselves, ``+XX`` (two UPPER-case hex digits) for the octet XX.  The
    octets are read as UTF-8.

    @raise ParameterError: bad syntax, invalid UTF-8, or a decoded control
        character (CR, LF, NUL, ...: never let one through to a DSN).
    """
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "+":
            digits = text[i + 1 : i + 3]
            if len(digits) != 2 or not all(d in _HEX for d in digits):
                raise ParameterError("bad xtext hex escape")
            out.append(int(digits, 16))
            i += 3
        elif "!" <= c <= "~" and c != "=":
            out.append(ord(c))
            i += 1
        else:
            raise ParameterError("bad character in xtext")
    try:
        decoded = out.decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterError("xtext is not valid UTF-8") from None
    for c in decoded:
        if _isControl(c):
            raise ParameterError("control character in xtext")
    return decoded


def xtextEncode(text: str) -> str:
    """Encode C{text} (its UTF-8 octets) as RFC 3461 xtext."""
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b not in (0x2B, 0x3D) else f"+{b:02X}" for b in text.encode("utf-8")
    )


# -- MAIL parameters --------------------------------------------------------------


@attrs.frozen
class MailParameters:
    """The checked ESMTP parameters of one MAIL FROM command."""

    size: int | None = None
    body: str = "7BIT"  # 7BIT, 8BITMIME or BINARYMIME
    smtputf8: bool = False
    ret: str | None = None  # FULL or HDRS
    envid: str | None = None  # xtext-decoded
    auth: str | None = None  # xtext-decoded mailbox or "<>"
    requiretls: bool = False  # RFC 8689 REQUIRETLS (offered inside TLS only)


def _require(extension: str, offered: frozenset[str]) -> None:
    if extension not in offered:
        raise ParameterError(f"{extension} not offered")


def _needValue(keyword: str, value: str | None) -> str:
    if value is None:
        raise ParameterError(f"{keyword} needs a value")
    return value


def _uniqueUpper(params) -> list[tuple[str, str | None]]:
    seen: set[str] = set()
    out = []
    for keyword, value in params:
        keyword = keyword.upper()
        if keyword in seen:
            raise ParameterError(f"duplicate parameter {_safe(keyword)}")
        seen.add(keyword)
        out.append((keyword, value))
    return out


def parseMailParameters(params, *, sizeLimit: int, offered: frozenset[str]) -> MailParameters:
    """
    Check the parameters of MAIL FROM (as splitPathAndParameters gives
    them) against the extensions C{offered} in this session.

    @param sizeLimit: message_size_limit; 0 means no limit.
    @raise ParameterError: unknown, not offered, duplicate or malformed.
    @raise SizeExceeded: SIZE > sizeLimit (checked after everything else,
        so a malformed command gets 555 rather than 552).
    """
    params = _uniqueUpper(params)
    smtputf8 = any(k == "SMTPUTF8" for k, _ in params)
    fields: dict[str, object] = {}
    for keyword, value in params:
        if value is not None and not value.isascii() and not smtputf8:
            raise ParameterError(f"non-ASCII value for {_safe(keyword)} without SMTPUTF8")
        if keyword == "SIZE":
            _require("SIZE", offered)
            value = _needValue(keyword, value)
            if not _DIGITS.match(value) or len(value) > MAX_SIZE_DIGITS:
                raise ParameterError("bad SIZE value")
            fields["size"] = int(value)
        elif keyword == "BODY":
            value = _needValue(keyword, value).upper()
            if value == "BINARYMIME":
                _require("BINARYMIME", offered)
                _require("CHUNKING", offered)
            elif value in ("7BIT", "8BITMIME"):
                _require("8BITMIME", offered)
            else:
                raise ParameterError("bad BODY value")
            fields["body"] = value
        elif keyword == "SMTPUTF8":
            _require("SMTPUTF8", offered)
            if value is not None:
                raise ParameterError("SMTPUTF8 takes no value")
            fields["smtputf8"] = True
        elif keyword == "RET":
            _require("DSN", offered)
            value = _needValue(keyword, value).upper()
            if value not in ("FULL", "HDRS"):
                raise ParameterError("bad RET value")
            fields["ret"] = value
        elif keyword == "ENVID":
            _require("DSN", offered)
            value = _needValue(keyword, value)
            if len(value) > MAX_ENVID:
                raise ParameterError(f"ENVID exceeds {MAX_ENVID} characters")
            envid = xtextDecode(value)
            if not envid.isascii():
                raise ParameterError("ENVID must be ASCII")
            fields["envid"] = envid
        elif keyword == "AUTH":
            _require("AUTH", offered)
            value = _needValue(keyword, value)
            if len(value) > MAX_PATH * 3:
                raise ParameterError("AUTH value too long")
            fields["auth"] = xtextDecode(value)
        elif keyword == "REQUIRETLS":
            _require("REQUIRETLS", offered)
            if value is not None:
                raise ParameterError("REQUIRETLS takes no value")
            fields["requiretls"] = True
        else:
            raise ParameterError(f"unsupported parameter {_safe(keyword)}")
    result = MailParameters(**fields)
    if sizeLimit > 0 and result.size is not None and result.size > sizeLimit:
        raise SizeExceeded("message size exceeds fixed limit")
    return result


# -- RCPT parameters ----------------------------------------------------------------


@attrs.frozen
class RcptParameters:
    """The checked ESMTP parameters of one RCPT TO command."""

    notify: tuple = ()  # () = not given; ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY
    orcpt: str | None = None  # "addr-type;address", address decoded


_NOTIFY_ORDER = ("SUCCESS", "FAILURE", "DELAY")
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("\\+=")
_ESCAPE = re.compile(r"\\x\{([0-9A-F]{1,6})\}")


def _parseNotify(value: str) -> tuple:
    items = [item.upper() for item in value.split(",")]
    seen: list[str] = []
    for item in items:
        if item not in ("NEVER",) + _NOTIFY_ORDER:
            raise ParameterError("bad NOTIFY value")
        if item in seen:
            raise ParameterError("duplicate NOTIFY value")
        seen.append(item)
    if "NEVER" in seen:
        if len(seen) > 1:
            raise ParameterError("NOTIFY=NEVER cannot be combined")
        return ("NEVER",)
    return tuple(v for v in _NOTIFY_ORDER if v in seen)


def _utf8AddrDecode(text: str, smtputf8: bool) -> str:
    """
    RFC 6533 utf-8-addr-xtext (QCHAR and \\x{HEX}) or, with SMTPUTF8,
    utf-8-addr-unitext (raw UTF-8 too).  An escape must be canonical
    upper-case hex without leading zeros and may only stand for SP, "+",
    "=", "\\" or a non-ASCII character.
    """
    out = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            m = _ESCAPE.match(text, i)
            if not m:
                raise ParameterError("bad ORCPT utf-8 escape")
            digits = m.group(1)
            cp = int(digits, 16)
            if f"{cp:X}" != digits or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise ParameterError("bad ORCPT utf-8 escape")
            if not (cp in (0x20, 0x2B, 0x3D, 0x5C) or cp >= 0x80):
                raise ParameterError("bad ORCPT utf-8 escape")
            out.append(chr(cp))
            i = m.end()
        elif c in _QCHAR:
            out.append(c)
            i += 1
        elif ord(c) > 0x7F and smtputf8:
            out.append(c)
            i += 1
        else:
            raise ParameterError("bad character in ORCPT")
    decoded = "".join(out)
    for c in decoded:
        if _isControl(c) or (ord(c) > 0x7F and _badUnicode(c)):
            raise ParameterError("bad character in ORCPT")
    return decoded


def _parseOrcpt(value: str, smtputf8: bool) -> str:
    if len(value) > MAX_ORCPT:
        raise ParameterError(f"ORCPT exceeds {MAX_ORCPT} characters")
    addrType, semi, encoded = value.partition(";")
    if not semi or not addrType or not all(c in _ATEXT for c in addrType):
        raise ParameterError("bad ORCPT syntax")
    if not encoded:
        raise ParameterError("empty ORCPT address")
    lowered = addrType.lower()
    if lowered == "utf-8":
        return "utf-8;" + _utf8AddrDecode(encoded, smtputf8)
    if not encoded.isascii():
        raise ParameterError("non-ASCII ORCPT needs addr-type utf-8")
    address = xtextDecode(encoded)
    if lowered == "rfc822":
        if not address.isascii():
            raise ParameterError("rfc822 ORCPT must be ASCII")
        return "rfc822;" + address
    return addrType + ";" + address


def parseRcptParameters(params, *, offered: frozenset[str], smtputf8: bool) -> RcptParameters:
    """
    Check the parameters of RCPT TO (NOTIFY and ORCPT, RFC 3461; ORCPT of
    addr-type utf-8 per RFC 6533) against the extensions C{offered}.

    @param smtputf8: the transaction uses SMTPUTF8 (MAIL FROM had it).
    @raise ParameterError: unknown, not offered, duplicate or malformed.
    """
    params = _uniqueUpper(params)
    fields: dict[str, object] = {}
    for keyword, value in params:
        if value is not None and not value.isascii() and not smtputf8:
            raise ParameterError(f"non-ASCII value for {_safe(keyword)} without SMTPUTF8")
        if keyword == "NOTIFY":
            _require("DSN", offered)
            fields["notify"] = _parseNotify(_needValue(keyword, value))
        elif keyword == "ORCPT":
            _require("DSN", offered)
            fields["orcpt"] = _parseOrcpt(_needValue(keyword, value), smtputf8)
        else:
            raise ParameterError(f"unsupported parameter {_safe(keyword)}")
    return RcptParameters(**fields)
