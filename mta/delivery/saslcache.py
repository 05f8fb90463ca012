"""mta.delivery.saslcache - AuthCache: the SMTP/LMTP client's cache of refused SASL logins (Postfix's smtp_sasl_auth_cache.c).

NAME
    AuthCache(path, ttl, clock)     opened at the transport's start
    cache.find(host, user, password) -> (dsn, text) or None
    cache.store(host, user, password, dsn, text)

DESCRIPTION
    When a server refuses a login with 535, the session stores the remote
    host name, the user name, a hash of the password, the time, and the
    server's reply.  While such an entry is younger than
    smtp_sasl_auth_cache_time and the password map still gives the same
    password, the session does not try that login again: the mail is
    deferred (or bounced, smtp_sasl_auth_soft_bounce = no) with "SASL
    [CACHED] authentication failed; server HOST said: REPLY".  An entry
    that has expired, or whose password no longer matches, is removed
    when it is found.

    The store is an SQLite database (one table, key "host;user", value as
    Postfix's "time;hash;dsn;text"), created with mode 0600, so that the
    worker processes of one mta and its restarts share it; each find and
    store is one small statement in the reactor thread.

SECURITY
    The password is never stored: its HMAC-SHA256 under a random salt
    kept in the same database (Postfix stores an unsalted SHA-1).  The
    server's reply text was made printable by the reply parser.  A
    database that cannot be opened or read is logged and the cache is
    then not used: it can only save a server some failed logins, never
    stop a delivery.  A malformed entry is logged and removed.

CONFIGURATION
    smtp_sasl_auth_cache_name (compiled into the path, see
    mta.config.settings.clientsasl), smtp_sasl_auth_cache_time; lmtp_ twins.

DEVIATIONS
    Postfix needs a proxy:btree/lmdb table through proxywrite(8); mta
    accepts that spelling and keeps its own SQLite file at PATH.sqlite.
"""

import base64
import hashlib
import hmac
import os
import re
import sqlite3

from twisted.logger import Logger

__all__ = ["AuthCache"]

log = Logger()

_DSN = re.compile(r"[45]\.\d{1,3}\.\d{1,3}\Z")


class AuthCache:
    """The 535 cache in the SQLite file C{path}; entries live C{ttl} seconds by C{clock}."""

    def __init__(self, path, ttl, clock):
        self.path = path
        self.ttl = ttl
        self.clock = clock
        self._db = None
        self._salt = None
        try:
            self._open()
        except (sqlite3.Error, OSError) as e:
            log.warn("SASL authentication cache {path}: cannot open: {error}; not used", path=path, error=e)
            self._db = None

    def _open(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB)")
        db.execute("CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value TEXT)")
        row = db.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()
        if row is None:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('salt', ?)", (os.urandom(16),))
            row = db.execute("SELECT value FROM meta WHERE name = 'salt'").fetchone()
        self._salt = bytes(row[0])
        self._db = db

    def _hash(self, password):
        digest = hmac.new(self._salt, password.encode("utf-8"), hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    @staticmethod
    def _key(host, user):
        return f"{host.lower()};{user}"

    def find(self, host, user, password):
        """(dsn, text) of a valid entry for this login, or None (an invalid one is removed)."""
        if self._db is None:
            return None
        key = self._key(host, user)
        try:
            row = self._db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
            if row is None:
                return None
            parts = row[0].split(";", 3)
            valid = None
            if len(parts) != 4 or not parts[0].isdigit() or not _DSN.match(parts[2]):
                log.warn("bad smtp_sasl_auth_cache entry: {entry}", entry=row[0][:100])
            elif int(parts[0]) + self.ttl >= self.clock.seconds() and hmac.compare_digest(
                    parts[1], self._hash(password)):
                valid = (parts[2], parts[3])
            if valid is None:
                self._db.execute("DELETE FROM cache WHERE key = ?", (key,))
            return valid
        except sqlite3.Error as e:
            log.warn("SASL auth failure map {path}: lookup failed for {key}: {error}", path=self.path, key=key,
                     error=e)
            return None

    def store(self, host, user, password, dsn, text):
        if self._db is None:
            return
        value = f"{int(self.clock.seconds())};{self._hash(password)};{dsn};{text}"
        try:
            self._db.execute("INSERT OR REPLACE INTO cache VALUES (?, ?)", (self._key(host, user), value))
        except sqlite3.Error as e:
            log.warn("SASL auth failure map {path}: update failed: {error}", path=self.path, error=e)

    def close(self):
        if self._db is not None:
            self._db.close()
            self._db = None
