"""mta.tables.regexp - regexp:/path and pcre:/path, Postfix's regular expression tables.

The formats of regexp_table(5) and pcre_table(5).  Each logical line (a
line that starts with white space continues the one before; '#' lines and
blank lines are ignored) is one rule, tried in order; the first that matches
gives the answer:

    /pattern/flags result        the key matches pattern
    !/pattern/flags result       the key does not match (no $n in result)
    /pattern/flags!/p2/ result   regexp: only: matches pattern and not p2
    if /pattern/flags            the rules up to the matching endif apply
    if !/pattern/flags           only to keys that (do not) match; nests
    endif

Any non-alphanumeric character may delimit a pattern (``/``, ``#``, ``%``,
...); a backslash escapes it.  In the result, ``$1``..``$9``, ``${n}`` and
``$(n)`` are replaced by the matched substrings (nothing when a substring is
empty or did not take part), ``$$`` is a ``$``.  An empty result is allowed
(with a warning, as Postfix).  ``if`` and ``endif`` are case-insensitive.

Flags, each toggles.  regexp: (POSIX, glibc in the C locale): ``i``
case-insensitive (on by default), ``m`` REG_NEWLINE (``.`` and ``[^...]`` do
not match a newline; ``^``/``$`` match at lines), ``x`` REG_EXTENDED (on by
default: ``x`` gives a basic regular expression, ``\\(..\\)``).  pcre:
``i`` (on), ``s`` dot matches newline (on), ``m`` multiline, ``x`` extended
syntax (white space and # comments ignored), ``A`` anchored at the start, ``E``
``$`` matches only at the very end, ``U`` ungreedy, ``X`` ignored with a
warning (Postfix with PCRE2 does the same).

Patterns are translated (mta.tables.retranslate, pcretranslate) and compiled by Python's re
as bytes patterns; the key is matched as its UTF-8 bytes, as Postfix
matches bytes.  The inline form is ``regexp:{ {/pattern/ result}, ... }``.
The file is read again when it changes (see mta.tables.patternfile).

SECURITY
    Keys come from the network and are matched, never interpreted; a key
    over MAX_KEY bytes is not matched: the lookup fails with
    TableTemporaryError and a warning.  Matching runs in the reactor thread
    and Python's re backtracks: a pattern with nested quantifiers such as
    ``(a+)+$`` can take exponential time on a crafted key and stall the
    whole server.  As Postfix says of PCRE, writing patterns that do not
    backtrack catastrophically is the administrator's responsibility (use
    anchors, possessive quantifiers ``a++`` or atomic groups ``(?>..)``).

CONFIGURATION
    None of its own.  MAX_KEY = 102400 bytes (Postfix's header_size_limit
    default, so every header line that Postfix would pass fits).

DEVIATIONS
    Postfix logs a warning and skips a rule it cannot use; mta refuses the
    whole file with TableError naming file and line (so that mta-config
    --check reports it): a pattern that does not compile, a missing
    delimiter, an unknown flag, a bad ``$`` reference (non-numeric, ``$0``,
    beyond the pattern's groups, in a negative rule), a line that is neither
    rule nor if/endif, an endif without if and an if without endif.
    Postfix matches keys of any length; mta caps them at MAX_KEY.  Python's re
    is not POSIX regcomp nor PCRE2: see mta.tables.retranslate's DEVIATIONS
    (leftmost-first instead of leftmost-longest substrings for regexp:,
    no ``\\K``, recursion, verbs or ``\\p{..}`` for pcre:).  PCRE2 gives up a
    match after its match limit (Postfix logs "backtracking limit exceeded"
    and treats the rule as not matching); Python's re has no such limit and
    runs to the end.  A pcre: table is available whether or not Postfix's
    postfix-pcre is installed.
"""

import re

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError
from mta.tables.patternfile import ENDIF, IF, MATCH, PatternFileTable, firstMatch, nestRules
from mta.tables.pcretranslate import pcreToPython
from mta.tables.retranslate import PatternError, posixToPython

log = Logger()

MAX_KEY = 102400

REGEXP_FLAGS = "imx"
PCRE_FLAGS = "imsxAEUX"


def _isAlnum(ch):
    return ch.isascii() and ch.isalnum()


def parseReplacement(text):
    """
    Postfix's mac_parse() as the regexp tables use it: a list of literal
    strings and group numbers; ValueError for a bad $ reference.
    """
    pieces = []
    literal = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            literal.append(ch)
            i += 1
            continue
        if text.startswith("$", i + 1):
            literal.append("$")
            i += 2
            continue
        if literal:
            pieces.append("".join(literal))
            literal = []
        i += 1
        if i < n and text[i] in "({":
            opening, closing = text[i], ")}"["({".index(text[i])]
            level, j = 1, i + 1
            while level:
                if j >= n:
                    raise ValueError(f"truncated reference in {text!r}")
                if text[j] == opening:
                    level += 1
                elif text[j] == closing:
                    level -= 1
                j += 1
            name, i = text[i + 1:j - 1], j
        else:
            j = i
            while j < n and (_isAlnum(text[j]) or text[j] == "_"):
                j += 1
            name, i = text[i:j], j
        if not name:
            raise ValueError(f"empty $ reference in {text!r}")
        if not (name.isascii() and name.isdigit()):
            raise ValueError(f'non-numeric replacement index "{name}"')
        if int(name) < 1:
            raise ValueError(f'out of range replacement index "{name}"')
        pieces.append(int(name))
    if literal:
        pieces.append("".join(literal))
    return pieces


class _Expression:
    """One compiled pattern and whether a rule wants it to match or not."""

    def __init__(self, regex, positive, anchored):
        self.regex = regex
        self.positive = positive
        self._find = regex.match if anchored else regex.search

    def find(self, subject):
        return self._find(subject)

    def test(self, subject):
        return (self._find(subject) is not None) == self.positive


class _MatchRule:
    op = MATCH

    def __init__(self, line, first, second, pieces):
        self.line = line
        self.first = first
        self.second = second
        self.pieces = pieces
        self.literal = "".join(pieces) if all(isinstance(p, str) for p in pieces) else None

    def answer(self, subject):
        found = self.first.find(subject)
        if (found is not None) != self.first.positive:
            return None
        if self.second is not None and not self.second.test(subject):
            return None
        if self.literal is not None:
            return self.literal
        out = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.append(piece)
            else:
                value = found.group(piece)
                if value:
                    out.append(value.decode("utf-8", "surrogateescape"))
        return "".join(out)


class _IfRule:
    op = IF

    def __init__(self, line, expression):
        self.line = line
        self.expression = expression
        self.end = None

    def test(self, subject):
        return self.expression.test(subject)


class _EndifRule:
    op = ENDIF

    def __init__(self, line):
        self.line = line


class _Parser:
    """Compiles the lines of one regexp: or pcre: table."""

    def __init__(self, dialect, where):
        self.dialect = dialect  # "regexp" or "pcre"
        self.where = where

    def error(self, line, message):
        return TableError(f"{self.where}:{line}: {message}")

    def getPattern(self, line, text, pos):
        """Parse [!...]/pattern/flags at pos: (source, flags, positive, next pos)."""
        positive = True
        n = len(text)
        while pos < n and (text[pos] == "!" or text[pos].isspace()):
            if text[pos] == "!":
                positive = not positive
            pos += 1
        if pos >= n:
            raise self.error(line, "no regexp")
        delimiter = text[pos]
        start = pos = pos + 1
        while pos < n:
            if text[pos] == "\\":
                if pos + 1 >= n:
                    break
                pos += 1
            elif text[pos] == delimiter:
                break
            pos += 1
        if pos >= n:
            raise self.error(line, f'no closing regexp delimiter "{delimiter}"')
        source = text[start:pos]
        pos += 1
        flags = []
        allowed = REGEXP_FLAGS if self.dialect == "regexp" else PCRE_FLAGS
        while pos < n and not text[pos].isspace() and not (self.dialect == "regexp" and text[pos] == "!"):
            if text[pos] not in allowed:
                raise self.error(line, f'unknown regexp option "{text[pos]}"')
            flags.append(text[pos])
            pos += 1
        return source, flags, positive, pos

    def compile(self, line, source, flags, positive):
        def toggled(flag, default):
            return default ^ (flags.count(flag) % 2 == 1)

        latin = source.encode("utf-8").decode("latin-1")
        anchored = False
        try:
            if self.dialect == "regexp":
                newline, icase = toggled("m", False), toggled("i", True)
                translated = posixToPython(latin, extended=toggled("x", True), newline=newline, icase=icase)
                reFlags = (re.I if icase else 0) | (re.M if newline else re.S)
            else:
                if "X" in flags:
                    log.warn('{where}:{line}: ignoring obsolete regexp option "X"', where=self.where, line=line)
                multiline, icase = toggled("m", False), toggled("i", True)
                translated = pcreToPython(latin, extended=toggled("x", False), ungreedy=toggled("U", False),
                                          dollarEndOnly=toggled("E", False), multiline=multiline, icase=icase)
                reFlags = ((re.I if icase else 0) | (re.S if toggled("s", True) else 0)
                           | (re.M if multiline else 0))
                anchored = toggled("A", False)
            regex = re.compile(translated.encode("latin-1"), reFlags)
        except (PatternError, re.error, OverflowError, RecursionError) as e:
            raise self.error(line, f"error in regex /{source}/: {e}") from None
        return _Expression(regex, positive, anchored)

    def parseLine(self, line, text):
        if not _isAlnum(text[0]):
            source, flags, positive, pos = self.getPattern(line, text, 0)
            second = None
            if self.dialect == "regexp" and text.startswith("!", pos):
                second = self.getPattern(line, text, pos)
                pos = second[3]
            replacement = text[pos:].strip()
            if not replacement:
                log.warn("{where}:{line}: no replacement text: using empty string", where=self.where, line=line)
            try:
                pieces = parseReplacement(replacement)
            except ValueError as e:
                raise self.error(line, f"bad replacement syntax: {e}") from None
            maxSub = max((p for p in pieces if isinstance(p, int)), default=0)
            if maxSub and not positive:
                raise self.error(line, "$number found in negative match replacement text")
            first = self.compile(line, source, flags, positive)
            if maxSub > first.regex.groups:
                raise self.error(line, f'out of range replacement index "{maxSub}"')
            if second is not None:
                second = self.compile(line, second[0], second[1], second[2])
            return _MatchRule(line, first, second, pieces)
        word = text.split(None, 1)[0] if text else ""
        if text[:2].lower() == "if" and not (len(text) > 2 and _isAlnum(text[2])):
            source, flags, positive, pos = self.getPattern(line, text, 2)
            if text[pos:].strip():
                log.warn("{where}:{line}: ignoring extra text after IF statement: {text!r}",
                         where=self.where, line=line, text=text[pos:].strip())
            return _IfRule(line, self.compile(line, source, flags, positive))
        if text[:5].lower() == "endif" and not (len(text) > 5 and _isAlnum(text[5])):
            if text[5:].strip():
                log.warn("{where}:{line}: ignoring extra text after ENDIF", where=self.where, line=line)
            return _EndifRule(line)
        raise self.error(line, f"unrecognized request {word!r} (expected /pattern/ result, if or endif)")

    def parse(self, lines):
        return nestRules(self.where, [self.parseLine(number, text) for number, text in lines if text])


def parseRegexpTable(where, lines):
    return _Parser("regexp", where).parse(lines)


def parsePcreTable(where, lines):
    return _Parser("pcre", where).parse(lines)


def subjectBytes(key):
    """The key as the bytes its rules match (UTF-8; lone surrogates as they came)."""
    try:
        return key.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return key.encode("utf-8", "surrogatepass")


@implementer(ILookupTable)
class RegexpTable(PatternFileTable):
    """regexp:/path or pcre:/path (C{dialect}), and their inline forms."""

    def __init__(self, dialect, name, clock):
        parse = parseRegexpTable if dialect == "regexp" else parsePcreTable
        super().__init__(dialect, name, clock, parse)

    def lookup(self, key):
        rules = self.currentRules()
        subject = subjectBytes(key)
        if len(subject) > MAX_KEY:
            log.warn("{spec}: key of {length} bytes is over the limit of {limit}; not matched",
                     spec=self.spec, length=len(subject), limit=MAX_KEY)
            return fail(TableTemporaryError(f"{self.spec}: key over {MAX_KEY} bytes"))
        return succeed(firstMatch(rules, subject))
