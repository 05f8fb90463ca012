"""mta.delivery.tlssessions - the SMTP/LMTP client's TLS session cache (session resumption), in memory.

NAME
    TlsSessionCache(clock, timeout, limit)
    TlsSessionCache.lookup(key)            (a pyOpenSSL Session to offer, whether
                                           its chain verified) or None
    TlsSessionCache.remember(key, connection, trusted)
                                           after a handshake the policy
                                           accepted: the connection whose
                                           session is kept
    TlsSessionCache.settle(connection)     after the first reply inside TLS:
                                           take the session now
    sessionKey(address, port, serverName, policyKey)

DESCRIPTION
    Postfix's smtp(8) keeps client TLS sessions in tlsmgr(8)'s cache
    (smtp_tls_session_cache_database) for smtp_tls_session_cache_timeout;
    mta keeps them in the transport's memory for as long.  A session is
    stored under (server address, port, server name (SNI), TLS policy
    key) and offered (SSL_set_session) only to a new connection with the
    same four: never to another server, another SNI or under another
    policy.

    With TLS 1.3 the server sends its session tickets after the
    handshake, and the client reads them with the first reply inside TLS.
    So remember() keeps the connection (weakly), settle() takes its
    session when that reply has come (the transport calls it after the
    session's first delivery), and a lookup() before that takes the
    session of the still open connection.  An entry expires
    smtp_tls_session_cache_timeout after it was remembered (the injected
    clock); the server's ticket lifetime still applies (OpenSSL does not
    offer an expired ticket).  At most C{limit} entries: the oldest goes.

SECURITY
    A session is a secret of the client: it stays in the process, is
    never logged and never written to disk.  A resumed session is judged
    like a full handshake (the certificate of the original handshake),
    and an original chain that did not verify stays "Untrusted" (OpenSSL
    does not verify again on resumption).  A handshake that the policy
    refused leaves no session.

CONFIGURATION
    smtp_tls_session_cache_timeout (lmtp_tls_session_cache_timeout):
    0 disables; at most 100 days; a value under 2 minutes is 2 minutes
    (Postfix's rules); passed in by mta.delivery.smtp.

DEVIATIONS
    Postfix caches client sessions only when smtp_tls_session_cache_database
    names a database (empty by default); mta always caches them in memory
    while smtp_tls_session_cache_timeout is not 0, and they do not survive
    a restart.
"""

import weakref
from collections import OrderedDict

import attrs

__all__ = ["TlsSessionCache", "sessionKey"]

# Postfix's bounds of smtp_tls_session_cache_timeout (tlsmgr: at least 2 minutes, at most 100 days).
MIN_TIMEOUT = 120.0
MAX_TIMEOUT = 100 * 86400.0


def sessionKey(address, port, serverName, policyKey):
    """The cache key of one server under one TLS policy: (address, port, SNI, policy key)."""
    return (address, port, (serverName or "").lower(), policyKey)


@attrs.define
class _Entry:
    stored: float  # when it was remembered (clock seconds)
    session: object = None  # pyOpenSSL Session once settled
    connection: object = None  # weakref to the Connection until settled
    trusted: bool = False  # the original handshake's chain verified


class TlsSessionCache:
    """
    Client TLS sessions by sessionKey(), for C{timeout} seconds (see the
    module docstring).

    @ivar clock: an IReactorTime.
    @ivar timeout: seconds a session is kept (already bounded: see effectiveTimeout()).
    @ivar limit: the most entries kept.
    """

    def __init__(self, clock, timeout, limit=1000):
        self.clock = clock
        self.timeout = timeout
        self.limit = limit
        self._entries = OrderedDict()  # key -> _Entry, oldest first
        self._keys = weakref.WeakKeyDictionary()  # Connection -> key (until settled)

    @staticmethod
    def effectiveTimeout(value):
        """Postfix's reading of the parameter: 0 (or less) disables; under 2 minutes is 2 minutes."""
        if value <= 0:
            return 0.0
        return min(max(value, MIN_TIMEOUT), MAX_TIMEOUT)

    def __len__(self):
        return len(self._entries)

    def lookup(self, key):
        """(pyOpenSSL Session, trusted) to offer to a new connection for C{key}, or None (expired: dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock.seconds() - entry.stored >= self.timeout:
            del self._entries[key]
            return None
        if entry.session is not None:
            return entry.session, entry.trusted
        connection = entry.connection() if entry.connection is not None else None
        if connection is None:
            del self._entries[key]
            return None
        session = connection.get_session()
        return (session, entry.trusted) if session is not None else None

    def remember(self, key, connection, trusted):
        """A handshake for C{key} finished on C{connection}: keep its session (taken by settle())."""
        if key is None:
            return
        self._entries.pop(key, None)
        self._entries[key] = _Entry(self.clock.seconds(), None, weakref.ref(connection), bool(trusted))
        self._keys[connection] = key
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def settle(self, connection):
        """Take C{connection}'s session now (its first reply inside TLS has come: TLS 1.3 tickets are in)."""
        key = self._keys.pop(connection, None)
        entry = self._entries.get(key) if key is not None else None
        if entry is None or entry.connection is None or entry.connection() is not connection:
            return
        session = connection.get_session()
        if session is None:
            del self._entries[key]
            return
        entry.session, entry.connection = session, None

    def forget(self, key):
        """Drop C{key}'s session (a resumed handshake that failed, a policy that changed)."""
        self._entries.pop(key, None)
