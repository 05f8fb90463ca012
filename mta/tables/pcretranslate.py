"""mta.tables.pcretranslate - PCRE syntax as Python re patterns (for pcre: tables).

pcreToPython(pattern, extended, ungreedy, dollarEndOnly, multiline, icase)
translates a PCRE2 pattern (as Postfix compiles it: no UTF mode, bytes) into
Python re syntax, a str whose characters are bytes (latin-1), to compile as
a bytes pattern; the shared pieces (byte-set classes, POSIX classes, the
output and its quantifier rules) are mta.tables.retranslate's.  What Python
cannot express raises PatternError with the reason.

SECURITY
    Patterns come from table files (configuration).  The translation is
    linear in the pattern; what Python rejects is an error at open.

CONFIGURATION
    None.

DEVIATIONS
    See mta.tables.retranslate: the PCRE constructs that are translated and
    those refused.
"""

import re

from mta.tables.retranslate import ALL, CLASSES, WORD, Output, PatternError, byte, charSet, fold, literal, posixClassAt

_PCRE_SPACE = {9, 10, 11, 12, 13, 32}
_HSPACE = {9, 32, 0xA0}
_VSPACE = {10, 11, 12, 13, 0x85}
_PCRE_ESCAPE_SETS = {
    "d": CLASSES["digit"], "w": WORD, "s": _PCRE_SPACE, "h": _HSPACE, "v": _VSPACE,
}

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
        cls = posixClassAt(pattern, j, allowNegated=True)
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
        members = set(ALL - (fold(members) if icase else members))
    return charSet(members), i


def pcreToPython(pattern, extended=False, ungreedy=False, dollarEndOnly=False, multiline=False, icase=False):
    """Translate PCRE syntax to Python re syntax (bytes as latin-1); see the module's DEVIATIONS."""
    out = Output()
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
                    out.add(literal(t))
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
                number = int(pattern[i + 1:j])
                if number >= 10 and number > captures and c not in "89":
                    # PCRE: not that many groups before it, so up to three octal digits
                    j = i + 1
                    while j < n and j - i <= 3 and pattern[j] in "01234567":
                        j += 1
                    out.add(byte(int(pattern[i + 1:j], 8) & 0xFF))
                else:
                    out.add(f"(?:\\{number})")
                i = j
                continue
            code = _pcreEscapeCode(pattern, i + 1)
            if code is None:
                raise PatternError(f"unrecognized escape \\{c}")
            out.add(byte(code[0]))
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
                    out.add(literal(ch))
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
            out.add(literal(ch))
        i += 1
    return out.text()
