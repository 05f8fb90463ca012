"""mta.tables.texthash - texthash:/path, a flat 'key value' file (Postfix).

The format is postmap(1)'s: one entry per logical line, the key up to the
first white space, the value after it; a line that starts with white space
continues the previous one (joined as Postfix joins it: the line break
removed, the continuation's leading white space kept); blank lines and
lines starting with # are ignored.  Keys are case-insensitive.  The first of duplicate keys wins, with
a warning.  No postmap step: the file is read at open and read again when
its modification time, size or inode change (checked at most once a second,
on lookup).  A file that became unreadable or wrong keeps the old contents
in force and logs the error.

SECURITY
    The file is configuration; lookup keys are untrusted and only compared.

CONFIGURATION
    None of its own.
"""

import os

from twisted.internet.defer import succeed
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError

log = Logger()

CHECK_INTERVAL = 1.0


SPACE = " \t\n\v\f\r"  # C's isspace(), as Postfix's ISSPACE


def parseTextEntries(path, lines):
    """
    Parse postmap-format lines into [(line number, key, value)], keys as
    written (not folded), duplicates kept; raise TableError on bad syntax.
    Continuation lines join as in Postfix's readllines(): the line break
    goes, the continuation's leading white space stays.
    """
    logical = []  # [first line number, text]
    for number, line in enumerate(lines, 1):
        stripped = line.strip(SPACE)
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in SPACE:
            if not logical:
                raise TableError(f"{path}:{number}: continuation line with no entry before it")
            logical[-1][1] += line
        else:
            logical.append([number, line])
    entries = []
    for number, text in logical:
        key, _, value = _splitKey(text.strip(SPACE))
        if not value:
            raise TableError(f"{path}:{number}: expected 'key value', found only {key!r}")
        entries.append((number, key, value))
    return entries


def _splitKey(text):
    """Postfix's split of a logical line: the key up to the first white space, the value after it."""
    for position, ch in enumerate(text):
        if ch in SPACE:
            return text[:position], "", text[position:].strip(SPACE)
    return text, "", ""


def parseTextTable(path, lines):
    """Parse postmap-format lines into a dict; raise TableError on bad syntax."""
    entries = {}
    for number, key, value in parseTextEntries(path, lines):
        key = key.lower()
        if key in entries:
            log.warn("{path}:{line}: duplicate entry {key!r}; the first one is used", path=path, line=number, key=key)
            continue
        entries[key] = value
    return entries


def _signature(st):
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


@implementer(ILookupTable)
class TextHashTable:
    pattern = False

    def __init__(self, path, clock):
        self.spec = f"texthash:{path}"
        self.path = path
        self._clock = clock
        self._entries, self._signature = self._read()
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
        return parseTextTable(self.path, text.replace("\r\n", "\n").split("\n")), signature

    def _maybeReload(self):
        now = self._clock.seconds()
        if now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        try:
            current = _signature(os.stat(self.path))
        except OSError as e:
            log.error("{path}: cannot stat table, keeping the old contents: {reason}", path=self.path, reason=e.strerror)
            return
        if current == self._signature:
            return
        try:
            self._entries, self._signature = self._read()
        except TableError as e:
            log.error("{error}; keeping the old contents", error=str(e))
            self._signature = current
        else:
            log.info("{path}: table reloaded, {count} entries", path=self.path, count=len(self._entries))

    def lookup(self, key):
        self._maybeReload()
        return succeed(self._entries.get(key.lower()))

    def items(self):
        """Every (key, value), keys folded, in the file's order (mta-postmap -s)."""
        self._maybeReload()
        return list(self._entries.items())
