"""mta.verify.cache - the verify cache (address_verify_map): address -> (status, probed, updated, text).

An entry is Postfix's: the address status (OK 0, DEFER 1, BOUNCE 2, TODO
3), when a probe was last sent for it (0: none outstanding), when a probe's
result last arrived (0: never), and the result's text.  In a file it is
stored as Postfix's text "status:probed:updated:text".

    VerifyCache(clock, path=None, pool=None)
        get(address) -> Entry or None
        put(address, entry), delete(address)
        entries()                    (address, Entry) pairs
        load(), flush(), close()

In memory the entries live as long as the process.  With a file (sqlite3)
they are read once by load() (the daemon's start), served from memory, and the
changes are written back in one transaction FLUSH_DELAY seconds after the
first of them, in the thread pool C{pool} ((reactor, threadpool)) when
there is one, and at close().

SECURITY
    Keys are addresses from SMTP clients (bounded by the SMTP line limit);
    a damaged entry in the file is skipped with a warning (that address is
    probed again), a damaged or unreadable file is a warning and an empty
    cache.

CONFIGURATION
    address_verify_map, through mta.verify.VerifyService.
"""

import sqlite3
import threading

import attrs
from twisted.logger import Logger

log = Logger()

OK, DEFER, BOUNCE, TODO = 0, 1, 2, 3  # Postfix's DEL_RCPT_STAT_*
STATUS_NAMES = {OK: "deliverable", DEFER: "undeliverable", BOUNCE: "undeliverable", TODO: "in progress"}
FLUSH_DELAY = 1.0  # seconds from a change to its write to the file
MAX_TEXT = 1000  # characters of a result text kept


@attrs.frozen
class Entry:
    status: int
    probed: float  # when the outstanding probe was sent; 0: none
    updated: float  # when the last result arrived; 0: never
    text: str

    def dump(self):
        return f"{self.status}:{int(self.probed)}:{int(self.updated)}:{self.text}"

    @classmethod
    def parse(cls, raw):
        """Postfix's verify_parse_entry: an Entry, or None for a damaged one."""
        parts = raw.split(":", 3)
        if len(parts) != 4 or not all(p.isdigit() for p in parts[:3]):
            return None
        status, probed, updated = int(parts[0]), int(parts[1]), int(parts[2])
        if status not in (OK, DEFER, BOUNCE, TODO) or not (probed or updated):
            return None
        return cls(status, probed, updated, parts[3])


def printable(text):
    """Postfix's printable(text, '?'), bounded: no control characters in a stored text."""
    return "".join(c if c.isprintable() else "?" for c in text[:MAX_TEXT])


class VerifyCache:
    """See the module docstring."""

    def __init__(self, clock, path=None, pool=None):
        self.clock = clock
        self.path = path
        self._entries = {}
        self._dirty = {}  # address -> Entry, or None: deleted; not yet in the file
        self._flushCall = None
        self._lock = threading.Lock()
        self._pool = pool

    def load(self):
        """Read the file (the daemon's start, once the queue directory exists); a damaged one is a warning."""
        if self.path is not None:
            self._load()

    def get(self, address):
        return self._entries.get(address)

    def put(self, address, entry):
        self._entries[address] = entry
        self._changed(address, entry)

    def delete(self, address):
        if self._entries.pop(address, None) is not None:
            self._changed(address, None)

    def entries(self):
        return list(self._entries.items())

    def __len__(self):
        return len(self._entries)

    def close(self):
        if self._flushCall is not None:
            if self._flushCall.active():
                self._flushCall.cancel()
            self._flushCall = None
        self._write(self._takeDirty())

    # -- the file -----------------------------------------------------------------

    def _changed(self, address, entry):
        if self.path is None:
            return
        self._dirty[address] = entry
        if self._flushCall is None:
            self._flushCall = self.clock.callLater(FLUSH_DELAY, self.flush)

    def _takeDirty(self):
        dirty, self._dirty = self._dirty, {}
        return dirty

    def flush(self):
        """Write the pending changes (in the thread pool when there is one); a Deferred or None."""
        self._flushCall = None
        dirty = self._takeDirty()
        if not dirty:
            return None
        if self._pool is None:
            self._write(dirty)
            return None
        from twisted.internet.threads import deferToThreadPool

        reactor, pool = self._pool
        d = deferToThreadPool(reactor, pool, self._write, dirty)
        d.addErrback(lambda f: log.failure("verify: cache write failed", f))
        return d

    def _connect(self):
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
        db.execute("CREATE TABLE IF NOT EXISTS verify (address TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        return db

    def _load(self):
        try:
            with self._lock:
                db = self._connect()
                try:
                    rows = db.execute("SELECT address, entry FROM verify").fetchall()
                finally:
                    db.close()
        except sqlite3.Error as e:
            log.warn("warning: address_verify_map {path}: {error}; starting with an empty cache",
                     path=self.path, error=str(e))
            return
        for address, raw in rows:
            entry = Entry.parse(raw) if isinstance(raw, str) and isinstance(address, str) else None
            if entry is None:
                log.warn("warning: bad address verify table entry: {entry}", entry=repr(raw)[:100])
                continue
            self._entries[address] = entry

    def _write(self, dirty):
        if not dirty or self.path is None:
            return
        try:
            with self._lock:
                db = self._connect()
                try:
                    with db:
                        for address, entry in dirty.items():
                            if entry is None:
                                db.execute("DELETE FROM verify WHERE address = ?", (address,))
                            else:
                                db.execute("INSERT OR REPLACE INTO verify VALUES (?, ?)", (address, entry.dump()))
                finally:
                    db.close()
        except sqlite3.Error as e:
            log.warn("warning: address_verify_map {path}: {error}", path=self.path, error=str(e))
