"""mta.tables.retranslate - POSIX and PCRE regular expressions as Python re patterns.

Postfix's regexp: tables use POSIX regcomp(3) (glibc, C locale) and its
pcre: tables PCRE2 without UTF mode; both match bytes.  Python's re module
has its own dialect, so a pattern is translated before it is compiled, and
compiled as a bytes pattern: the key is matched as its UTF-8 bytes, byte for
byte as Postfix does (``.`` is one byte, case folding is ASCII only, ``\\w``
is ``[0-9A-Za-z_]``).

posixToPython(pattern, extended) translates an ERE (REG_EXTENDED, the
regexp_table default) or a BRE (the ``x`` flag); pcreToPython(pattern,
extended, ungreedy, dollarEndOnly) translates PCRE syntax.  Both return a
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


_CLASSES = {
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
_WORD = _CLASSES["alnum"] | {ord("_")}
_PCRE_SPACE = {9, 10, 11, 12, 13, 32}
_HSPACE = {9, 32, 0xA0}
_VSPACE = {10, 11, 12, 13, 0x85}
_PCRE_ESCAPE_SETS = {
    "d": _CLASSES["digit"], "w": _WORD, "s": _PCRE_SPACE, "h": _HSPACE, "v": _VSPACE,
}


class PatternError(Exception):
    """The pattern cannot be translated; the message says why."""


def _byte(c):
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
        parts.append(_byte(start) if start == prev else f"{_byte(start)}-{_byte(prev)}")
        if c is not None:
            start = prev = c
    return "[" + "".join(parts) + "]"


def _fold(members):
    """C{members} with the other case of every ASCII letter in it (before negating a class under i)."""
    return set(members) | {c ^ 0x20 for c in members if 65 <= c <= 90 or 97 <= c <= 122}


def _literal(ch):
    return _byte(ord(ch))


def _posixClassAt(pattern, i, allowNegated):
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
        members = _CLASSES.get(name) or (_WORD if allowNegated and name == "word" else None)
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
        cls = _posixClassAt(pattern, i, allowNegated=False)
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
            endCls = _posixClassAt(pattern, i + 1, allowNegated=False)
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
        members = set(ALL - (_fold(members) if icase else members))
        if newline:
            members.discard(10)
    return charSet(members), i


_POSIX_ESCAPES = {
    "w": charSet(_WORD), "W": charSet(ALL - _WORD),
    "s": charSet(_CLASSES["space"]), "S": charSet(ALL - _CLASSES["space"]),
    "b": "\\b", "B": "\\B", "<": "\\b(?=\\w)", ">": "\\b(?<=\\w)", "`": "\\A", "'": "\\Z",
}


class _Output:
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
    out = _Output()
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
                out.add(_literal(c))
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
                out.add(_literal(ch))
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
            out.add(_literal(ch))
    return out.text()


# -- PCRE ----------------------------------------------------------------------------------


_UNSUPPORTED_ESCAPES = {
    "K": "\\K (reset match start)", "p": "\\p{..} (Unicode properties)", "P": "\\P{..} (Unicode properties)",
    "X": "\\X (extended grapheme cluster)", "C": "\\C (one code unit)",
}


def _hexDigits(pattern, i, most):
    j = i
    while j < len(pattern) and j - i < most and pattern[j] in "0123456789abcdefABCDEF":
        j += 1
    return pattern[i:j], j


def _pcreEscapeCode(pattern, i):
    """
    The byte a PCRE escape at i (after the backslash) stands for, as (int, next index),
    or None when it is not a single-byte escape we translate.
    """
    c = pattern[i]
    if c == "x":
        if pattern.startswith("{", i + 1):
            end = pattern.find("}", i + 2)
            digits = pattern[i + 2:end] if end > 0 else ""
            if not digits or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise PatternError("bad \\x{...} escape")
            value, nxt = int(digits, 16), end + 1
        else:
            digits, nxt = _hexDigits(pattern, i + 1, 2)
            value = int(digits, 16) if digits else 0
        if value > 0xFF:
            raise PatternError("character code point value in \\x{} is too large (no UTF mode)")
        return value, nxt
    if c == "o" and pattern.startswith("{", i + 1):
        end = pattern.find("}", i + 2)
        digits = pattern[i + 2:end] if end > 0 else ""
        if not digits or any(d not in "01234567" for d in digits) or int(digits, 8) > 0xFF:
            raise PatternError("bad \\o{...} escape")
        return int(digits, 8), end + 1
    if c == "e":
        return 0x1B, i + 1
    if c == "c":
        if i + 1 >= len(pattern) or not 32 <= ord(pattern[i + 1]) < 127:
            raise PatternError("\\c must be followed by a printable ASCII character")
        return ord(pattern[i + 1].upper()) ^ 0x40, i + 2
    simple = {"a": 7, "f": 12, "n": 10, "r": 13, "t": 9}
    if c in simple:
        return simple[c], i + 1
    if c == "0":
        j = i + 1
        while j < len(pattern) and j - i < 3 and pattern[j] in "01234567":
            j += 1
        return int(pattern[i:j], 8) & 0xFF, j
    if not c.isalnum():
        return ord(c), i + 1
    return None


def _pcreBracket(pattern, i, icase=False):
    """Parse a PCRE class starting after '['; return (python, next index)."""
    negated = False
    if i < len(pattern) and pattern[i] == "^":
        negated, i = True, i + 1
    members = set()
    first = True
    n = len(pattern)

    def item(j):
        """One class item at j: (set, single byte or None, next index)."""
        ch = pattern[j]
        cls = _posixClassAt(pattern, j, allowNegated=True)
        if cls is not None and pattern[j + 1] == ":":
            return cls[0], None, cls[1]
        if ch == "\\":
            if j + 1 >= n:
                raise PatternError("trailing backslash")
            c = pattern[j + 1]
            if c.lower() in _PCRE_ESCAPE_SETS:
                s = _PCRE_ESCAPE_SETS[c.lower()]
                return (set(s) if c.islower() else ALL - s), None, j + 2
            if c == "b":
                return {8}, 8, j + 2
            if c in _UNSUPPORTED_ESCAPES:
                raise PatternError(f"{_UNSUPPORTED_ESCAPES[c]} is not supported")
            code = _pcreEscapeCode(pattern, j + 1)
            if code is None:
                if c in "01234567":  # octal
                    k = j + 1
                    while k < n and k - j <= 3 and pattern[k] in "01234567":
                        k += 1
                    value = int(pattern[j + 1:k], 8) & 0xFF
                    return {value}, value, k
                raise PatternError(f"unrecognized escape \\{c} in a character class")
            return {code[0]}, code[0], code[1]
        return {ord(ch)}, ord(ch), j + 1

    while True:
        if i >= n:
            raise PatternError("missing terminating ] for character class")
        if pattern.startswith("\\Q", i):
            end = pattern.find("\\E", i + 2)
            text = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
            i = n if end < 0 else end + 2
            members |= {ord(c) for c in text}
            first = False
            continue
        if pattern.startswith("\\E", i):
            i += 2
            continue
        if pattern[i] == "]" and not first:
            i += 1
            break
        first = False
        items, single, i = item(i)
        if single is None and i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            raise PatternError("invalid range in character class")
        if single is not None and i + 1 < n and pattern[i] == "-" and pattern[i + 1] != "]":
            highItems, high, j = item(i + 1)
            if high is None:
                raise PatternError("invalid range in character class")
            if high < single:
                raise PatternError("range out of order in character class")
            members |= set(range(single, high + 1))
            i = j
        else:
            members |= items
    if negated:
        members = set(ALL - (_fold(members) if icase else members))
    return charSet(members), i


_GROUP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def pcreToPython(pattern, extended=False, ungreedy=False, dollarEndOnly=False, multiline=False, icase=False):
    """Translate PCRE syntax to Python re syntax (bytes as latin-1); see the module's DEVIATIONS."""
    out = _Output()
    i = 0
    n = len(pattern)
    captures = 0
    while i < n:
        ch = pattern[i]
        if extended and ch in " \t\n\r\f\v":
            i += 1
            continue
        if extended and ch == "#":
            end = pattern.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if ch == "\\":
            if i + 1 >= n:
                raise PatternError("\\ at end of pattern")
            c = pattern[i + 1]
            if c == "Q":
                end = pattern.find("\\E", i + 2)
                text = pattern[i + 2:] if end < 0 else pattern[i + 2:end]
                i = n if end < 0 else end + 2
                for t in text:
                    out.add(_literal(t))
                continue
            if c == "E":
                i += 2
                continue
            if c in _UNSUPPORTED_ESCAPES:
                raise PatternError(f"{_UNSUPPORTED_ESCAPES[c]} is not supported")
            if c.lower() in _PCRE_ESCAPE_SETS:
                s = _PCRE_ESCAPE_SETS[c.lower()]
                out.add(charSet(s if c.islower() else ALL - s))
                i += 2
                continue
            if c == "R":
                out.add("(?:\\r\\n|" + charSet(_VSPACE) + ")")
                i += 2
                continue
            if c == "N" and not pattern.startswith("{", i + 2):
                out.add("[^\\n]")
                i += 2
                continue
            if c in "zZAGbB":
                out.add({"z": "\\Z", "Z": "(?=\\n?\\Z)", "A": "\\A", "G": "\\A", "b": "\\b", "B": "\\B"}[c],
                        atom=False)
                i += 2
                continue
            if c == "g":
                m = re.match(r"\{(-?\d+)\}|(-?\d+)|\{([A-Za-z_]\w*)\}", pattern[i + 2:])
                if not m:
                    raise PatternError("bad \\g reference (subroutine calls \\g<..> are not supported)")
                number, name = m.group(1) or m.group(2), m.group(3)
                if name:
                    out.add(f"(?P={name})")
                else:
                    ref = int(number)
                    if ref < 0:
                        ref = captures + 1 + ref
                    if ref <= 0:
                        raise PatternError("bad relative back reference")
                    out.add(f"(?:\\{ref})")
                i += 2 + m.end()
                continue
            if c == "k":
                m = re.match(r"<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)'|\{([A-Za-z_]\w*)\}", pattern[i + 2:])
                if not m:
                    raise PatternError("bad \\k reference")
                out.add(f"(?P={m.group(1) or m.group(2) or m.group(3)})")
                i += 2 + m.end()
                continue
            if c in "123456789":
                j = i + 1
                while j < n and pattern[j].isdigit():
                    j += 1
                out.add(f"(?:\\{int(pattern[i + 1:j])})")
                i = j
                continue
            code = _pcreEscapeCode(pattern, i + 1)
            if code is None:
                raise PatternError(f"unrecognized escape \\{c}")
            out.add(_byte(code[0]))
            i = code[1]
            continue
        if ch == "[":
            text, i = _pcreBracket(pattern, i + 1, icase)
            out.add(text)
            continue
        if ch in "*+?{":
            if ch == "{":
                m = re.match(r"\{(\d+)(,(\d*))?\}", pattern[i:])
                if not m:  # PCRE: a '{' that does not start a quantifier is literal
                    out.add(_literal(ch))
                    i += 1
                    continue
                low, comma, high = m.group(1), m.group(2), m.group(3)
                if comma and high and int(high) < int(low):
                    raise PatternError("numbers out of order in {} quantifier")
                text = "{%s%s}" % (low, comma or "")
                i += m.end()
            else:
                text = ch
                i += 1
            suffix = ""
            if i < n and pattern[i] in "?+":
                suffix = pattern[i]
                i += 1
            if ungreedy and suffix != "+":
                suffix = "" if suffix == "?" else "?"
            if out.atom is None:
                raise PatternError(f"quantifier {ch!r} does not follow a repeatable item")
            if out.quantified:
                raise PatternError("quantifier does not follow a repeatable item")
            out.parts.append(text + suffix)
            out.quantified = True
            continue
        if ch == "(":
            if pattern.startswith("(*", i):
                raise PatternError("backtracking control verbs (*...) are not supported")
            if pattern.startswith("(?", i):
                rest = pattern[i + 2:]
                m = re.match(r"<([A-Za-z_]\w*)>|'([A-Za-z_]\w*)'|P<([A-Za-z_]\w*)>", rest)
                if m:
                    captures += 1
                    out.openGroup(f"(?P<{m.group(1) or m.group(2) or m.group(3)}>")
                    i += 2 + m.end()
                    continue
                if rest.startswith("#"):
                    end = pattern.find(")", i)
                    if end < 0:
                        raise PatternError("missing ) after (?# comment")
                    i = end + 1
                    continue
                if re.match(r"[R&|]|P>|[+-]?\d|C", rest):
                    raise PatternError("recursion, subroutine calls, branch reset and callouts are not supported")
                if rest.startswith("P="):
                    end = pattern.find(")", i)
                    out.add(pattern[i:end + 1])
                    i = end + 1
                    continue
                m = re.match(r"[:=!>]|<[=!]|\(|[a-zA-Z^-]*[:)]", rest)
                if not m:
                    raise PatternError(f"unsupported group syntax (?{rest[:3]}")
                head = m.group(0)
                if head.endswith(")") and head != "(":
                    out.options(head[:-1])
                    i += 2 + len(head)
                    continue
                if head == "(":  # a conditional: (?(1)yes|no), (?(<name>)yes|no)
                    m = re.match(r"\((\d+|<[A-Za-z_]\w*>|'[A-Za-z_]\w*'|[A-Za-z_]\w*)\)", rest)
                    if not m:
                        raise PatternError("unsupported condition in (?(...)...)")
                    out.openGroup("(?(" + m.group(1).strip("<>'") + ")")
                    i += 2 + m.end()
                    continue
                out.openGroup("(?" + head)
                i += 2 + len(head)
                continue
            captures += 1
            out.openGroup()
            i += 1
            continue
        if ch == ")":
            out.closeGroup()
            i += 1
            continue
        if ch == "|":
            out.alternate()
        elif ch == "^":
            out.add("^", atom=False)
        elif ch == "$":
            out.add("\\Z" if dollarEndOnly and not multiline else "$", atom=False)
        elif ch == ".":
            out.add(".")
        else:
            out.add(_literal(ch))
        i += 1
    return out.text()
