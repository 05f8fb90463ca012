"""mta.cli.sendmail.addresses - RFC 5322 address lists on mta-sendmail's command line and in -t headers; the sender.

extractAddresses(text) finds the addr-specs in an RFC 5322 address list
as Postfix's sendmail reads them: "Name <user@example.org>", comments,
groups, several addresses in one argument, a source route dropped.
canonicalAddress() appends @$myorigin to a bare name (Postfix's local
rewriting) and checks the result as an SMTP path (mta.address); a bad one
is Exit(64).  resolveSender() is the envelope sender: -f's address, else
the invoking user's login name @$myorigin; fromHeader() the From: header
that -F (or the full name of the password file) asks for.

SECURITY
    Addresses from the command line and from the message's headers are
    untrusted: each is parsed again by mta.address, and control characters
    never reach the envelope or the added header.

CONFIGURATION
    myorigin (SendmailSettings), passed in by the caller.
"""

import email.charset
import os
import pwd
import re

from mta.address import PathError, formatAddress, parsePath
from mta.cli.sendmail.options import EX_OSERR, EX_USAGE, Exit
from mta.maillog import sanitize
from mta.model import NULL_SENDER, Address
from mta.rewrite import hasUnquotedAt

_SPECIALS = frozenset('()<>@,;:\\".[]')
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _tokens(text):
    """RFC 5322 tokens of C{text}: (kind, text); comments and white space are dropped."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth, i = 1, i + 1
            while i < n and depth:
                if text[i] == "\\":
                    i += 2
                    continue
                depth += {"(": 1, ")": -1}.get(text[i], 0)
                i += 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            yield "word", text[i:j + 1]
            i = j + 1
        elif c == "[":
            j = text.find("]", i)
            j = n - 1 if j < 0 else j
            yield "word", text[i:j + 1]
            i = j + 1
        elif c in _SPECIALS:
            yield c, c
            i += 1
        else:
            j = i
            while j < n and text[j] not in _SPECIALS and text[j] not in " \t\r\n":
                j += 1
            yield "word", text[i:j]
            i = j


def extractAddresses(text):
    """
    The addr-specs in the RFC 5322 address list C{text}, in order: the
    part in angle brackets when there is one (a source route dropped),
    else the mailbox's own tokens; display names, comments and group names
    are dropped; empty results (``<>``, ``undisclosed-recipients:;``) too.
    """
    found = []
    phrase, addr, angle = [], None, None

    def flush():
        nonlocal phrase, addr
        spec = addr if addr is not None else phrase
        if spec and spec[0][0] == "@":  # a source route: @a,@b:user@c
            colon = next((k for k, (kind, _) in enumerate(spec) if kind == ":"), None)
            spec = spec[colon + 1:] if colon is not None else []
        # Adjacent words (a phrase, "exa mple") keep their space, so that parsePath refuses them.
        text = "".join((" " if k and spec[k - 1][0] == kind == "word" else "") + value
                       for k, (kind, value) in enumerate(spec))
        if text:
            found.append(text)
        phrase, addr = [], None

    for kind, value in _tokens(text):
        if angle is not None:
            if kind == ">":
                addr, angle = angle, None
            else:
                angle.append((kind, value))
        elif kind == "<":
            angle = []
        elif kind in (",", ";"):
            flush()
        elif kind == ":" and addr is None:
            phrase = []  # a group's display name
        elif kind != ">":
            phrase.append((kind, value))
    if angle is not None:
        addr = angle
    flush()
    return found


def canonicalAddress(spec, origin, what):
    """C{spec} (an addr-spec) as an Address, @C{origin} appended to a bare name; Exit(64) if bad."""
    if not hasUnquotedAt(spec):
        spec = f"{spec}@{origin}"
    try:
        return parsePath(f"<{spec}>", allowNull=False, smtputf8=not spec.isascii(), allowPostmaster=False)
    except PathError as e:
        raise Exit(EX_USAGE, f"bad {what} address {sanitize(spec)!r}: {e}") from None


def loginName(uid):
    """The login name of C{uid}; Exit(71) if there is none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise Exit(EX_OSERR, f"no login name found for user ID {uid}") from None


def defaultFullName(uid):
    """As Postfix's fullname(): $NAME, else the password file's GECOS name ('&' = login name)."""
    name = os.environ.get("NAME")
    if name is not None:
        return name
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return None
    gecos = entry.pw_gecos.split(",", 1)[0]
    if "&" in gecos:
        gecos = gecos.replace("&", entry.pw_name[:1].upper() + entry.pw_name[1:])
    return gecos


def resolveSender(value, origin, uid):
    """The envelope sender: -f C{value}, or the login name of C{uid}; @C{origin} for bare names."""
    if value is None:
        name = loginName(uid)
        try:
            spec = formatAddress(Address(name, origin))
        except ValueError:
            raise Exit(EX_USAGE, f"bad login name {sanitize(name)!r}") from None
        return canonicalAddress(spec, origin, "sender")
    found = extractAddresses(value)
    if not found:  # "", "<>", "< >"
        return NULL_SENDER
    if len(found) > 1:
        raise Exit(EX_USAGE, f"-f option specified malformed sender: {sanitize(value)!r}")
    return canonicalAddress(found[0], origin, "sender")


def fromHeader(fullName, sender):
    """The From: header for C{fullName} and C{sender}, or None when there is nothing to add."""
    if fullName is None or sender.isNull:
        return None
    name = " ".join(_CONTROL.sub(" ", fullName).split())
    if not name:
        return None
    if not name.isascii():
        phrase = email.charset.Charset("utf-8").header_encode(name)
    elif all(c in _ATEXT or c == " " for c in name):
        phrase = name
    else:
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"From: {phrase} <{sender}>\r\n".encode("ascii")
