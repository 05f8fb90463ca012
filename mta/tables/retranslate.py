"""mta.tables.retranslate - POSIX and PCRE regular expressions as Python re patterns.

Postfix's regexp: tables use POSIX regcomp(3) (glibc, C locale) and its
pcre: tables PCRE2 without UTF mode; both match bytes.  Python's re module
has its own dialect, so a pattern is translated before it is compiled, and
compiled as a bytes pattern: the key is matched as its UTF-8 bytes, byte for
byte as Postfix does (``.`` is one byte, case folding is ASCII only, ``\\w``
is ``[0-9A-Za-z_]``).

posixToPython(pattern, extended) translates an ERE (REG_EXTENDED, the
regexp_table default) or a BRE (the ``x`` flag); pcreToPython() in
mta.tables.pcretranslate translates PCRE syntax with the pieces shared here.  Both return a
str whose characters are bytes (latin-1); compile it with
``re.compile(result.encode("latin-1"), flags)``.  What cannot be expressed
raises PatternError with the reason.

Bracket expressions are computed as sets of bytes and written out as
explicit ranges, so POSIX classes (``[[:alpha:]]``, ``[[:^digit:]]`` in PCRE),
equivalence classes and collating symbols of one character, and PCRE's
``\\h``, ``\\v`` inside classes all work, and nothing in them can reach Python's
own class syntax (``[[``, ``--``, ``&&`` warnings).

SECURITY
    Patterns come from table files (configuration).  The translation is
    linear in the pattern; what Python rejects is an error at open.

CONFIGURATION
    None.

DEVIATIONS
    POSIX: Python finds the leftmost-first match (Perl rules), POSIX the
    leftmost-longest; whether a pattern matches is the same, but with
    alternations like ``(a|ab)(c|bcd)`` the substrings $1..$9 can differ.
    Multibyte collating elements and locale-dependent classes are not
    supported (Postfix runs in the C locale).  ``a**`` and ``a*?`` mean
    ``(a*)*`` and ``(a*)?`` as in POSIX (never Python's lazy ``*?``).
    PCRE: not supported (PatternError at open): ``\\K``, recursion and
    subroutine calls (``(?R)``, ``(?1)``, ``(?&name)``, ``(?P>name)``), branch
    reset ``(?|``, backtracking verbs ``(*VERB)``, callouts, ``\\p{..}``,
    ``\\X``, ``\\C``, variable-length lookbehind, inline option settings in
    the middle of a group (``(?i)`` must open the pattern or a group, where it
    becomes Python's scoped ``(?i:...)``; ``(?i:...)`` works anywhere), ``(?x)``.
    Translated: ``\\Q..\\E``, ``\\x{hh}``, ``\\o{..}``, ``\\e``, ``\\cX``, ``\\h``,
    ``\\H``, ``\\v``, ``\\V``, ``\\R``, ``\\N``, ``\\z``, ``\\Z``, ``\\G`` (as ``\\A``:
    Postfix matches once from the start), ``\\g{n}``, ``\\g{-n}``, ``\\k<name>``,
    ``(?<name>..)``, ``(?'name'..)``, POSIX classes, the x, U and E options.
    Possessive quantifiers and atomic groups are Python 3.11's own.
"""

import re

ALL = frozenset(range(256))


def _r(a, b):
    return set(range(ord(a), ord(b) + 1))


CLASSES = {
    "alpha": _r("A", "Z") | _r("a", "z"),
    "digit": _r("0", "9"),
    "alnum": _r("A", "Z") | _r("a", "z") | _r("0", "9"),
    "upper": _r("A", "Z"),
    "lower": _r("a", "z"),
    "space": {9, 10, 11, 12, 13, 32},
    "blank": {9, 32},
    "punct": _r("!", "/") | _r(":", "@") | _r("[", "`") | _r("{", "~"),
    "print": set(range(0x20, 0x7F)),
    "graph": set(range(0x21, 0x7F)),
    "cntrl": set(range(0x20)) | {0x7F},
    "xdigit": _r("0", "9") | _r("A", "F") | _r("a", "f"),
}
WORD = CLASSES["alnum"] | {ord("_")}


class PatternError(Exception):
    """The pattern cannot be translated; the message says why."""


def byte(c):
    return "\\x%02x" % c


def charSet(members):
    """A Python class (or an always-failing group) matching exactly the bytes in C{members}."""
    members = sorted(members)
    if not members:
        return "(?!)"
    if len(members) == 256:
        return "[\\x00-\\xff]"
    parts = []
    start = prev = members[0]
    for c in members[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        parts.append(byte(start) if start == prev else f"{byte(start)}-{byte(prev)}")
        if c is not None:
            start = prev = c
    return "[" + "".join(parts) + "]"


def fold(members):
    """C{members} with the other case of every ASCII letter in it (before negating a class under i)."""
    return set(members) | {c ^ 0x20 for c in members if 65 <= c <= 90 or 97 <= c <= 122}


def literal(ch):
    return byte(ord(ch))


def posixClassAt(pattern, i, allowNegated):
    """Parse '[:name:]' (or '[=x=]', '[.x.]') at i; return (set, next index) or None."""
    if i + 1 >= len(pattern) or pattern[i] != "[" or pattern[i + 1] not in ":=.":
        return None
    kind = pattern[i + 1]
    end = pattern.find(kind + "]", i + 2)
    if end < 0:
        raise PatternError(f"unterminated '[{kind}' in a bracket expression")
    name = pattern[i + 2:end]
    nxt = end + 2
    if kind == ":":
        negated = False
        if allowNegated and name.startswith("^"):
            negated, name = True, name[1:]
        members = CLASSES.get(name) or (WORD if allowNegated and name == "word" else None)
        if members is None:
            raise PatternError(f"unknown character class [:{name}:]")
        return (ALL - members if negated else set(members)), nxt
    if len(name) != 1:
        raise PatternError(f"unsupported collating element [{kind}{name}{kind}]")
    return {ord(name)}, nxt


# -- POSIX ---------------------------------------------------------------------------------


def _posixBracket(pattern, i, newline, icase=False):
    """Parse a POSIX bracket expression starting after '['; return (python, next index)."""
    negated = False
    if i < len(pattern) and pattern[i] == "^":
        negated, i = True, i + 1
    members = set()
    first = True
    while True:
        if i >= len(pattern):
            raise PatternError("unmatched [ or [^")
        ch = pattern[i]
        if ch == "]" and not first:
            i += 1
            break
        first = False
        cls = posixClassAt(pattern, i, allowNegated=False)
        if cls is not None:
            items, i = cls
            if i >= len(pattern) or pattern[i] != "-" or pattern[i + 1:i + 2] == "]":
                members |= items
                continue
            if pattern[i - 2] == ":":
                raise PatternError("invalid range end (a class cannot start a range)")
            low = next(iter(items))  # [.a.]-z
        else:
            low = ord(ch)
            i += 1
        if i + 1 < len(pattern) and pattern[i] == "-" and pattern[i + 1] != "]":
            if low == ord("]"):  # glibc refuses a range that starts with the leading ']'
                raise PatternError("invalid range end")
            endCls = posixClassAt(pattern, i + 1, allowNegated=False)
            if endCls is not None:
                highSet, i = endCls
                if len(highSet) != 1:
                    raise PatternError("invalid range end")
                high = next(iter(highSet))
            else:
                high = ord(pattern[i + 1])
                i += 2
            if high < low:
                raise PatternError(f"invalid range end {chr(low)}-{chr(high)}")
            members |= set(range(low, high + 1))
        else:
            members.add(low)
    if negated:
        members = set(ALL - (fold(members) if icase else members))
        if newline:
            members.discard(10)
    return charSet(members), i


_POSIX_ESCAPES = {
    "w": charSet(WORD), "W": charSet(ALL - WORD),
    "s": charSet(CLASSES["space"]), "S": charSet(ALL - CLASSES["space"]),
    "b": "\\b", "B": "\\B", "<": "\\b(?=\\w)", ">": "\\b(?<=\\w)", "`": "\\A", "'": "\\Z",
}


class Output:
    """Collects translated pieces and knows where the last atom starts (for quantifiers)."""

    def __init__(self):
        self.parts = []
        self.atom = None  # index in parts where the last quantifiable atom starts
        self.quantified = False
        self.groups = []
        self.pending = [0]  # per open group: scoped option groups to close with it
        self.midOptions = [False]  # per open group: an option group opened after its start
        self.groupStart = True  # nothing yet since the last '(' (or the start)

    def add(self, text, atom=True):
        self.parts.append(text)
        self.atom = len(self.parts) - 1 if atom else None
        self.quantified = False
        self.groupStart = False

    def options(self, flags):
        """PCRE's (?flags) at the start of a group: a scoped group to the end of it (same meaning)."""
        if not self.groupStart:
            self.midOptions[-1] = True  # fine unless an alternative follows in this group
        if "x" in flags:
            raise PatternError("the inline option (?x) is not supported; use the x flag")
        self.parts.append(f"(?{flags}:")
        self.pending[-1] += 1
        self.atom = None

    def alternate(self):
        if self.midOptions[-1]:
            raise PatternError("an option setting like (?i) inside an alternative is not supported")
        self.add("|", atom=False)
        self.groupStart = True

    def quantify(self, text, what):
        if self.atom is None:
            raise PatternError(f"repetition operator {what!r} with nothing before it")
        if self.quantified:  # POSIX a** is (a*)*, never Python's lazy or possessive forms
            self.parts[self.atom:] = ["(?:" + "".join(self.parts[self.atom:]) + ")"]
        self.parts.append(text)
        self.quantified = True
        self.groupStart = False

    def openGroup(self, text="("):
        self.groups.append(len(self.parts))
        self.pending.append(0)
        self.midOptions.append(False)
        self.parts.append(text)
        self.atom = None
        self.quantified = False
        self.groupStart = True

    def closeGroup(self):
        if not self.groups:
            raise PatternError("unmatched ) or \\)")
        start = self.groups.pop()
        self.parts.append(")" * (self.pending.pop() + 1))
        self.midOptions.pop()
        self.atom = start
        self.quantified = False
        self.groupStart = False

    def text(self):
        if self.groups:
            raise PatternError("unmatched ( or \\(")
        return "".join(self.parts) + ")" * self.pending[0]


_INTERVAL = re.compile(r"(\d*)(,?)(\d*)")
_DUP_MAX = 32767  # glibc's RE_DUP_MAX


def _interval(pattern, i, closing):
    """Parse an interval body at i up to C{closing}; return (python quantifier, next index)."""
    m = _INTERVAL.match(pattern, i)
    end = m.end()
    if not pattern.startswith(closing, end):
        raise PatternError("invalid interval (repetition count)")
    low, comma, high = m.groups()
    if not low and not comma:
        raise PatternError("invalid interval (repetition count)")
    lo = int(low) if low else 0
    hi = int(high) if high else None
    if lo > _DUP_MAX or (hi is not None and (hi > _DUP_MAX or hi < lo)):
        raise PatternError("invalid interval (repetition count)")
    if not comma:
        text = "{%d}" % lo
    elif hi is None:
        text = "{%d,}" % lo
    else:
        text = "{%d,%d}" % (lo, hi)
    return text, end + len(closing)


def posixToPython(pattern, extended=True, newline=False, icase=False):
    """
    Translate a POSIX ERE (or BRE when not C{extended}) to Python re syntax
    (bytes as latin-1).  C{icase}: the pattern is compiled with REG_ICASE,
    under which glibc's ``\\n``, ``\\d`` (a backslash before a lower-case
    letter that is no operator) match nothing; the translation keeps that.
    """
    out = Output()
    i = 0
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        atStart = out.atom is None and not out.quantified and (
            not out.parts or out.parts[-1] in ("(", "|", "^"))
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError("trailing backslash")
            c = pattern[i + 1]
            i += 2
            if not extended and c == "(":
                out.openGroup()
            elif not extended and c == ")":
                out.closeGroup()
            elif not extended and c == "{":
                if atStart:
                    raise PatternError("invalid preceding regular expression")
                text, i = _interval(pattern, i, "\\}")
                out.quantify(text, "\\{")
            elif not extended and c in "+?":
                out.quantify(c, "\\" + c)
            elif not extended and c == "|":
                out.add("|", atom=False)
            elif c in "123456789":
                out.add("(?:\\" + c + ")")
            elif c in _POSIX_ESCAPES:
                text = _POSIX_ESCAPES[c]
                out.add(text, atom=c in "wWsS")
            elif icase and "a" <= c <= "z":
                out.add("(?!)")
            else:
                out.add(literal(c))
            continue
        i += 1
        if ch == "[":
            text, i = _posixBracket(pattern, i, newline, icase)
            out.add(text)
        elif ch == ".":
            out.add(".")
        elif ch == "^" and (extended or atStart):
            out.add("^", atom=False)
        elif ch == "$" and (extended or i == n or pattern.startswith("\\)", i) or pattern.startswith("\\|", i)):
            out.add("$" if newline else "\\Z", atom=False)
        elif ch == "*":
            if not extended and atStart:
                out.add(literal(ch))
            else:
                out.quantify("*", "*")
        elif extended and ch in "+?":
            out.quantify(ch, ch)
        elif extended and ch == "{":
            text, i = _interval(pattern, i, "}")
            out.quantify(text, "{")
        elif extended and ch == "(":
            if i < n and pattern[i] in "*+?{":
                raise PatternError(f"repetition operator {pattern[i]!r} at the start of a group")
            out.openGroup()
        elif extended and ch == ")" and out.groups:
            out.closeGroup()
        elif extended and ch == "|":
            out.add("|", atom=False)
        else:
            out.add(literal(ch))
    return out.text()
