"""mta.tables.patternfile - what regexp:, pcre: and cidr: tables share.

Reading: logicalLines() joins lines as Postfix's readllines() does (a line
that starts with white space continues the one before; lines that are empty,
white space only or start with '#' are dropped, also between a line and its
continuation), and numbers each logical line by its first physical line.  A
spec that starts with '{' is the inline form, ``type:{ {rule one}, {rule
two} }`` (Postfix 3.7): each braced item is one line, numbered from 1.

Rules: the rules of a table are a flat list of MATCH, IF and ENDIF steps
(Postfix's DICT_*_OP_*); firstMatch() walks them: a failed IF jumps past its
ENDIF, the first MATCH that answers wins.  nestRules() pairs each IF with its
ENDIF.

Reloading: PatternFileTable reads its file at open and again when its
modification time, size or inode change, checked at most once a second on
lookup (texthash's approach and signature); a file that became unreadable or
wrong keeps the old rules in force and logs the error.

SECURITY
    Table files are configuration; a syntax error is a TableError naming the
    file and line.  Keys are untrusted: each table type checks them.

CONFIGURATION
    None.
"""

import os

from twisted.logger import Logger

from mta.config.types import splitList
from mta.tables import TableError
from mta.tables.texthash import CHECK_INTERVAL, _signature

log = Logger()

MATCH, IF, ENDIF = "match", "if", "endif"


def logicalLines(text, where="table"):
    """Postfix's readllines(): [(first line number, logical line without trailing blanks)]."""
    result = []
    current = None
    for number, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            if current is None:
                log.warn("{where}, line {line}: logical line must not start with white space; ignored",
                         where=where, line=number)
                continue
            current[1] += line
        else:
            current = [number, line]
            result.append(current)
    return [(number, line.rstrip()) for number, line in result]


def inlineLines(spec, text):
    """The lines of an inline table C{type:{ {rule}, ... }}; TableError if malformed."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise TableError(f"{spec}: expected {{ {{rule}}, ... }}")
    try:
        items = splitList(text[1:-1])
    except ValueError as e:
        raise TableError(f"{spec}: {e}") from None
    lines = []
    for number, item in enumerate(items, 1):
        item = item.strip()
        if item.startswith("{") and item.endswith("}"):
            item = item[1:-1].strip()
        lines.append((number, item))
    return lines


def nestRules(where, rules):
    """Pair each IF rule with its ENDIF (rule.end = the ENDIF's index); TableError when unbalanced."""
    stack = []
    for index, rule in enumerate(rules):
        if rule.op == IF:
            stack.append(rule)
        elif rule.op == ENDIF:
            if not stack:
                raise TableError(f"{where}:{rule.line}: ENDIF without matching IF")
            stack.pop().end = index
    if stack:
        raise TableError(f"{where}:{stack[-1].line}: IF has no matching ENDIF")
    return rules


def firstMatch(rules, subject):
    """Walk the rules for C{subject}; the first MATCH rule's answer (not None) wins."""
    i = 0
    count = len(rules)
    while i < count:
        rule = rules[i]
        if rule.op == MATCH:
            answer = rule.answer(subject)
            if answer is not None:
                return answer
        elif rule.op == IF and not rule.test(subject):
            i = rule.end
        i += 1
    return None


class PatternFileTable:
    """
    A table compiled from a file (or an inline spec) by C{parse(where, lines)}
    into a rule list; the file is read again when it changes.
    """

    pattern = True

    def __init__(self, tableType, name, clock, parse):
        self.spec = f"{tableType}:{name}"
        self._parse = parse
        self._clock = clock
        if name.lstrip().startswith("{"):
            self.path = None
            self._rules = parse(self.spec, inlineLines(self.spec, name))
        else:
            self.path = name
            self._rules, self._signature = self._read()
        self._checked = clock.seconds()

    def _read(self):
        try:
            with open(self.path, "rb") as f:
                signature = _signature(os.fstat(f.fileno()))
                data = f.read()
        except OSError as e:
            raise TableError(f"{self.path}: cannot open table: {e.strerror}") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise TableError(f"{self.path}: not UTF-8 text (byte {e.start})") from None
        if "\0" in text:
            raise TableError(f"{self.path}: holds a NUL byte")
        return self._parse(self.path, logicalLines(text.replace("\r\n", "\n"), self.path)), signature

    def currentRules(self):
        """The rules in force, after reading the file again if it changed."""
        if self.path is None:
            return self._rules
        now = self._clock.seconds()
        if now - self._checked < CHECK_INTERVAL:
            return self._rules
        self._checked = now
        try:
            current = _signature(os.stat(self.path))
        except OSError as e:
            log.error("{path}: cannot stat table, keeping the old contents: {reason}", path=self.path, reason=e.strerror)
            return self._rules
        if current == self._signature:
            return self._rules
        try:
            self._rules, self._signature = self._read()
        except TableError as e:
            log.error("{error}; keeping the old contents", error=str(e))
            self._signature = current
        else:
            log.info("{path}: table reloaded, {count} rules", path=self.path, count=len(self._rules))
        return self._rules
