"""mta.addrlist - RFC 822 address lists in message headers, as Postfix's tok822 reads them.

NAME
    scan, parse, external, internal, quoteLocal - the tokenizer, parser and
    quoting of Postfix's src/global/tok822_parse.c and quote_822_local.c,
    with the position of every token in the header kept

SYNOPSIS
    tokens = scan(header, start)          # list of Token; Malformed if unusable
    found = parse(tokens)                 # AddressList: addresses, commas
    external(token), internal(tokens), quoteLocal(mailbox)

DESCRIPTION
    Works on bytes, as Postfix does: a byte of 0x80 or above is an atom
    character, so UTF-8 (RFC 6532) and raw 8-bit text pass through as they
    are, and RFC 2047 encoded words are atoms (they are never decoded).

    scan() cuts the header text from C{start} into tokens: atoms, quoted
    strings, domain literals and comments (nested, with backslash escapes)
    and the one-character operators ( ) < > @ , ; : \\ " . [ ] % ! |.  White
    space (SP, HT, CR, LF) separates tokens.  A backslash escapes the next
    byte in an atom, a quoted string or a domain literal; an atom that then
    holds a special, a space or a control byte is a quoted string (Postfix's
    tok822_quote_atom).  Each Token keeps its unescaped value and its start
    and end offsets in the header.

    parse() is tok822_parse(): it walks the tokens from right to left and
    groups them into addresses exactly as Postfix does.  Comments are never
    part of an address.  "Name <addr>" gives the tokens inside the angle
    brackets (the phrase before them is skipped up to the previous ">", ";",
    "," or ":"); "group: a, b;" gives a and b (the group name is skipped);
    words with no operator between them are separate addresses ("John
    Smith" is two), and so are an address after ";" or ">" without a comma:
    Postfix's re-emitted header has a comma there, so the positions where a
    comma is missing are reported too.

    internal() and external() are tok822_internalize() and
    tok822_externalize() for the tokens of one address; quoteLocal() is
    quote_822_local(): a local part that is not a dot-string (empty, a
    leading, trailing or doubled dot, a space, a control byte or a special)
    is put in double quotes, with backslashes before '"', '\\' and CR.

    Why not the email package: email._header_value_parser decodes encoded
    words and closes unterminated quoted strings, so str() of its tree is
    not the header as received and offsets cannot be recovered from it;
    Python 3.11's parser raises IndexError on "root@"; it reads "John Smith"
    as one local part with defects where Postfix sees two addresses; and
    email.utils.getaddresses() gives no positions at all.  The rewriting
    must change only the addresses it qualifies and leave every other byte
    of the header alone, and agree with Postfix on what the addresses are.

SECURITY
    The header is untrusted.  Work and memory are linear in its length; at
    most TOKEN_LIMIT tokens are made (Postfix's token_limit, 10240), beyond
    that the header is Malformed.  Nothing here raises anything but
    Malformed, and that only from scan(): an unterminated quoted string,
    comment or domain literal, a backslash at a line end, a control byte
    (other than HT, CR, LF) or too many tokens.

CONFIGURATION
    None.
"""

import re

__all__ = ["AddressList", "Malformed", "TOKEN_LIMIT", "Token", "external", "internal", "parse", "quoteLocal", "scan"]

TOKEN_LIMIT = 10240
"""Postfix's token_limit: the most tokens in one header."""

OPERATORS = frozenset(b"|%!()<>@,;:\\\".[]")
_WORDS = ("atom", "qstring", "domlit")
_WHITE = frozenset(b" \t\r\n")
_DOT_STRING_SPECIALS = frozenset(b"()<>@,;:\\\"[]")
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class Malformed(ValueError):
    """The header text cannot be tokenized as an address list."""


class Token:
    """One token: C{kind} is atom, qstring, domlit, comment or the operator character."""

    __slots__ = ("kind", "value", "start", "end")

    def __init__(self, kind, value=b"", start=None, end=None):
        self.kind = kind
        self.value = value  # unescaped content (a comment: its text as written)
        self.start = start  # offsets in the header; None for a token made by a rewrite
        self.end = end

    def __repr__(self):
        return f"Token({self.kind!r}, {bytes(self.value)!r}, {self.start}, {self.end})"


def _isControl(byte):
    return (byte < 0x20 and byte not in (0x09, 0x0A, 0x0D)) or byte == 0x7F


def _collect(data, i, close):
    """The unescaped text from C{i} up to the byte C{close}; (value, index of C{close})."""
    value = bytearray()
    n = len(data)
    while i < n:
        c = data[i]
        if c == 0x5C:  # backslash
            i += 1
            if i >= n or data[i] in (0x0D, 0x0A):
                raise Malformed("backslash at the end of a line")
            c = data[i]
        elif c == close:
            return bytes(value), i
        value.append(0x20 if c in _WHITE else c)
        i += 1
    raise Malformed("unterminated quoted string" if close == 0x22 else "unterminated domain literal")


def _comment(data, i):
    """The end (exclusive) of the comment whose "(" is at C{i}."""
    level, n = 1, len(data)
    i += 1
    while i < n:
        c = data[i]
        i += 1
        if c == 0x28:
            level += 1
        elif c == 0x29:
            level -= 1
            if level == 0:
                return i
        elif c == 0x5C:
            if i >= n or data[i] in (0x0D, 0x0A):
                raise Malformed("backslash at the end of a line")
            i += 1
    raise Malformed("unterminated comment")


def _atom(data, i):
    """The atom starting at C{i} with backslash escapes (the slow way); (value, end)."""
    value = bytearray()
    j, n = i, len(data)
    while j < n:
        ch = data[j]
        if ch == 0x5C:
            j += 1
            if j >= n or data[j] in (0x0D, 0x0A):
                raise Malformed("backslash at the end of a line")
            ch = data[j]
        elif ch in _WHITE or ch in OPERATORS:
            break
        value.append(0x20 if ch in _WHITE else ch)
        j += 1
    return bytes(value), j


# Fast paths for the common forms (no backslash, no nested comment); the rest goes the slow way.
_SPACE = re.compile(rb"[ \t\r\n]+")
_PLAIN_ATOM = re.compile(rb"[^\x00-\x20\x7f()<>@,;:\\\".\[\]%!|]+")
_PLAIN_QSTRING = re.compile(rb'"([^"\\]*)"')
_PLAIN_DOMLIT = re.compile(rb"\[([^\]\\]*)\]")
_PLAIN_COMMENT = re.compile(rb"\([^()\\]*\)")
_WHITE_TO_SPACE = bytes.maketrans(b"\t\r\n", b"   ")


def scan(data, start=0, limit=TOKEN_LIMIT):
    """The tokens of C{data[start:]} (bytes); Malformed if it cannot be read as Postfix would."""
    if _CONTROL.search(data, start):
        raise Malformed("control character in header")
    tokens = []
    append = tokens.append
    i, n = start, len(data)
    while i < n:
        c = data[i]
        if c in _WHITE:
            i = _SPACE.match(data, i).end()
            continue
        if len(tokens) >= limit:
            raise Malformed(f"more than {limit} tokens")
        if c == 0x28:
            m = _PLAIN_COMMENT.match(data, i)
            end = m.end() if m else _comment(data, i)
            append(Token("comment", data[i:end], i, end))
        elif c == 0x5B:
            m = _PLAIN_DOMLIT.match(data, i)
            if m:
                value, end = m.group(1).translate(_WHITE_TO_SPACE), m.end()
            else:
                value, close = _collect(data, i + 1, 0x5D)
                end = close + 1
            append(Token("domlit", value, i, end))
        elif c == 0x22:
            m = _PLAIN_QSTRING.match(data, i)
            if m:
                value, end = m.group(1).translate(_WHITE_TO_SPACE), m.end()
            else:
                value, close = _collect(data, i + 1, 0x22)
                end = close + 1
            append(Token("qstring", value, i, end))
        elif c != 0x5C and c in OPERATORS:
            end = i + 1
            append(Token(chr(c), data[i:end], i, end))
        else:
            m = _PLAIN_ATOM.match(data, i)
            if m and (m.end() >= n or data[m.end()] != 0x5C):
                end = m.end()
                append(Token("atom", m.group(), i, end))
            else:
                value, end = _atom(data, i)
                quoted = any(b == 0x20 or _isControl(b) or b in OPERATORS for b in value)
                append(Token("qstring" if quoted else "atom", value, i, end))
        i = end
    return tokens


class AddressList:
    """
    What parse() found: C{addresses}, lists of token indices (never a
    comment), left to right; C{missingCommas}, indices of tokens after which
    Postfix's re-emitted header has a comma the original lacks; C{commas},
    indices of the "," tokens that separate addresses (not those inside <>).
    """

    def __init__(self, addresses, missingCommas, commas):
        self.addresses = addresses
        self.missingCommas = missingCommas
        self.commas = commas


_DO_WORD, _DO_GROUP = 1, 2


def parse(tokens):
    """Group C{tokens} into addresses, as tok822_parse() does (from right to left)."""
    words = [k for k, t in enumerate(tokens) if t.kind != "comment"]  # comments are moved aside
    kinds = [tokens[k].kind for k in words]
    found, missing, inside = [], [], set()

    def group(left, right, comma):
        """The tokens strictly between positions left and right are an address."""
        if right - left > 1:
            found.append(words[left + 1:right])
            if comma:
                missing.append(words[left])

    state = _DO_WORD
    right = len(words)
    i = right - 1
    while i >= 0:
        kind = kinds[i]
        if kind == ";":  # the right-hand side of a named group
            group(i, right, True)
            right = i
            state = _DO_GROUP | _DO_WORD
        elif kind == ":" and state & _DO_GROUP:  # a group's name: skipped
            group(i, right, False)
            i -= 1
            while i >= 0 and kinds[i] != ",":
                i -= 1
            right = i
            continue
        elif kind == ">":  # the right-hand side of <route>
            group(i, right, True)
            j = i - 1
            while j >= 0 and kinds[j] != "<":
                j -= 1
            group(j, i, False)
            inside.update(words[j + 1:i])
            while j >= 0 and kinds[j] not in (">", ";", ",", ":"):
                j -= 1
            right = i = j
            state |= _DO_WORD
            continue
        elif kind in _WORDS:
            if not state & _DO_WORD:  # two words without an operator: a missing comma
                group(i, right, True)
                right = i + 1
            state &= ~_DO_WORD
        elif kind == ",":
            group(i, right, False)
            right = i
            state |= _DO_WORD
        else:
            state |= _DO_WORD
        i -= 1
    group(-1, right, False)
    found.reverse()
    commas = [words[i] for i, kind in enumerate(kinds) if kind == "," and words[i] not in inside]
    return AddressList(found, sorted(missing), commas)


def _escaped(value, special):
    if not any(b in special for b in value):
        return bytes(value)
    out = bytearray()
    for b in value:
        if b in special:
            out.append(0x5C)
        out.append(b)
    return bytes(out)


def external(token):
    """tok822_externalize() of one token of an address."""
    if token.kind == "qstring":
        return b'"' + _escaped(token.value, b'"\\\r\n') + b'"'
    if token.kind == "domlit":
        return b"[" + _escaped(token.value, b"\\\r\n") + b"]"
    return bytes(token.value)


def internal(tokens):
    """tok822_internalize() of the tokens of one address: values unquoted, joined."""
    return b"".join(b"[" + t.value + b"]" if t.kind == "domlit" else bytes(t.value) for t in tokens)


def _isDotString(local):
    if not local or local[:1] == b"." or local[-1:] == b"." or b".." in local:
        return False
    return not any(b == 0x20 or b < 0x20 or b == 0x7F or b in _DOT_STRING_SPECIALS for b in local)


def quoteLocal(mailbox):
    """quote_822_local(): C{mailbox} (internal form) with its local part quoted when it must be."""
    start = 0
    if mailbox[:1] == b"@" and b":" in mailbox:
        start = mailbox.index(b":") + 1
    end = mailbox.rfind(b"@", start)
    if end < 0:
        end = len(mailbox)
    local = mailbox[start:end]
    if _isDotString(local):
        return mailbox
    return mailbox[:start] + b'"' + _escaped(local, b'"\\\r') + b'"' + mailbox[end:]
