"""mta.smtpd.pscache - postscreen's cache of clients that passed its tests (postscreen_cache_map).

Each entry is a client address and, per test ("pregreet", "dnsbl"), the
time (seconds since the epoch, the injected clock's) until which its pass
counts.  A client whose every enabled test has an unexpired pass is
``PASS OLD`` (mta.smtpd.postscreen).

    PostscreenCache(clock, retention, cleanupInterval, path=None, pool=None)
        get(address) -> {test: expires} or None
        update(address, {test: expires})
        cleanup()            remove entries expired for longer than retention
        close()

In memory (postscreen_cache_map empty, the default) the cache belongs to
the listener and its process: each worker process (mta.workers) keeps its
own, and a reload keeps it (mta.listeners.shareConnectionCounts).  With a
file (sqlite:/path or btree:/path) the entries are read once when the
cache is opened (start and reload), served from memory, and written back
in one transaction a second after a change, in the reactor's thread pool
(never in the reactor thread, when the clock has one), so lookups never
wait for the disk, and at close() (the listener's stop: one short
transaction in the reactor thread); a file shared by worker processes gets every process's
passes, each process seeing the others' at its next start or reload.

SECURITY
    Keys are client addresses (checked by the caller, text from the
    socket's peer); a damaged or unreadable file is a warning and an empty
    cache, never a refused connection.

CONFIGURATION
    postscreen_cache_map, postscreen_cache_retention_time (7d),
    postscreen_cache_cleanup_interval (12h; 0: never), through
    mta.config.settings.postscreen.

DEVIATIONS
    Postfix keeps the cache in a Berkeley DB file (btree:, shared through
    proxymap by several postscreen processes) by default; mta keeps it in
    memory by default and stores a file with sqlite3 (btree:path is taken as
    sqlite:path).  Entries are JSON objects of test name and expiry time,
    not Postfix's list of time stamps; a file is not compatible with
    Postfix's.
"""

import json
import sqlite3
import threading

from twisted.logger import Logger

log = Logger()

FLUSH_DELAY = 1.0  # seconds from a change to its write to the file


class PostscreenCache:
    """See the module docstring."""

    def __init__(self, clock, retention, cleanupInterval, path=None, pool=None):
        self.clock = clock
        self.retention = retention
        self.path = path
        self.entries = {}
        self._dirty = {}  # address -> entry (None: deleted), not yet in the file
        self._flushCall = None
        self._cleanupCall = None
        self._lock = threading.Lock()
        self._pool = pool  # (reactor, threadpool) for the file's writes; None: in the caller's thread
        if path is not None:
            self._load()
        if cleanupInterval > 0:
            self._interval = cleanupInterval
            self._cleanupCall = clock.callLater(cleanupInterval, self._periodicCleanup)

    # -- lookups and updates ---------------------------------------------------

    def get(self, address):
        entry = self.entries.get(address)
        return dict(entry) if entry is not None else None

    def update(self, address, expires):
        """Merge C{expires} ({test: time}) into the entry of C{address}, keeping the later time of each test."""
        entry = dict(self.entries.get(address) or {})
        for test, when in expires.items():
            entry[test] = max(entry.get(test, 0), when)
        self.entries[address] = entry
        self._changed(address, entry)

    def cleanup(self):
        """Remove the entries whose every pass expired more than postscreen_cache_retention_time ago."""
        limit = self.clock.seconds() - self.retention
        gone = [address for address, entry in self.entries.items() if max(entry.values(), default=0) < limit]
        for address in gone:
            del self.entries[address]
            self._changed(address, None)
        return len(gone)

    def close(self):
        for call in (self._cleanupCall, self._flushCall):
            if call is not None and call.active():
                call.cancel()
        self._cleanupCall = None
        if self._flushCall is not None:
            self._flushCall = None
            self._write(self._takeDirty())

    def _periodicCleanup(self):
        removed = self.cleanup()
        if removed:
            log.info("postscreen: cache cleanup removed {count} entries", count=removed)
        self._cleanupCall = self.clock.callLater(self._interval, self._periodicCleanup)

    # -- the file ---------------------------------------------------------------

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
        d.addErrback(lambda f: log.failure("postscreen: cache write failed", f))
        return d

    def _connect(self):
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
        db.execute("CREATE TABLE IF NOT EXISTS postscreen (address TEXT PRIMARY KEY, entry TEXT NOT NULL)")
        return db

    def _load(self):
        try:
            with self._lock:
                db = self._connect()
                try:
                    rows = db.execute("SELECT address, entry FROM postscreen").fetchall()
                finally:
                    db.close()
        except sqlite3.Error as e:
            log.warn("warning: postscreen_cache_map {path}: {error}; starting with an empty cache",
                     path=self.path, error=str(e))
            return
        for address, text in rows:
            try:
                entry = json.loads(text)
                if isinstance(entry, dict) and all(isinstance(v, (int, float)) for v in entry.values()):
                    self.entries[str(address)] = {str(k): float(v) for k, v in entry.items()}
            except ValueError:
                continue  # a damaged entry: that client is tested again

    def _write(self, dirty):
        if not dirty:
            return
        try:
            with self._lock:
                db = self._connect()
                try:
                    with db:
                        for address, entry in dirty.items():
                            if entry is None:
                                db.execute("DELETE FROM postscreen WHERE address = ?", (address,))
                            else:
                                db.execute("INSERT OR REPLACE INTO postscreen VALUES (?, ?)",
                                           (address, json.dumps(entry, sort_keys=True)))
                finally:
                    db.close()
        except sqlite3.Error as e:
            log.warn("warning: postscreen_cache_map {path}: {error}", path=self.path, error=str(e))
