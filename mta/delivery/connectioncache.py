"""mta.delivery.connectioncache - idle SMTP/LMTP client connections kept for reuse (Postfix's scache(8), in the process).

ConnectionCache keeps idle client sessions by key: cacheKey(destination,
policyKey, *extra), the destination (the next-hop as routed: a connection
is reused only for the destination it was reached for), the TLS policy it
was made under (mta.delivery.tlspolicy's SitePolicy.reuseKey: a connection
made under one policy never serves a destination whose policy differs)
and any further part the caller needs (the SASL identity the connection
logged in as).  Keys are compared whole; the cache never looks inside
them.  Whether a TLS connection is cached at all is the caller's decision
(smtp_tls_connection_reuse, the policy's connection_reuse=; see
mta.delivery.smtp).  put() keeps a session that finished a transaction, unless it has
been used smtp_connection_reuse_count_limit times or is older than
smtp_connection_reuse_time_limit (then it gets QUIT), and closes it
(QUIT) after smtp_connection_cache_time_limit of idleness.  take() gives
the newest idle session of a destination that is still young enough
(older ones get QUIT), or None; the caller sends RSET before using it.
closeAll() sends QUIT on every idle session (a transport's stop()).

SECURITY
    None: nothing is read here; the sessions bound their own input.

CONFIGURATION
    smtp_connection_cache_time_limit (idleLimit), smtp_connection_reuse_time_limit
    (reuseLimit), smtp_connection_reuse_count_limit (countLimit): passed in
    by the smtp transport.
"""

import attrs
from twisted.internet.defer import DeferredList

__all__ = ["ConnectionCache", "cacheKey"]


def cacheKey(destination, policyKey=None, *extra):
    """
    The key of a cached connection: (destination, policy key, extra...).
    C{policyKey} is the TLS policy's reuseKey (None: no TLS policy); each
    of C{extra} (a SASL identity, ...) must be hashable; empty parts are
    left out, so cacheKey(d, k) == cacheKey(d, k, None).
    """
    return (destination, policyKey, *(part for part in extra if part not in (None, "", ())))


@attrs.define
class _Cached:
    """One idle session: its RemoteHost, when it was made, how often used, its expiry timer."""

    session: object
    remote: object
    created: float
    uses: int
    expiry: object  # the DelayedCall that closes it when idle too long


CLOSE_TIMEOUT = 5.0  # seconds closeAll() waits for a QUIT connection to be gone before it aborts it


class ConnectionCache:
    """
    Idle connections by destination, each closed after C{idleLimit} seconds
    (see the module docstring).

    @ivar clock: an IReactorTime.
    @ivar idleLimit: seconds an idle connection is kept.
    @ivar reuseLimit: seconds after it was made that a connection may be reused.
    @ivar countLimit: uses per connection; 0: no limit.
    """

    def __init__(self, clock, idleLimit, reuseLimit, countLimit):
        self.clock = clock
        self.idleLimit = idleLimit
        self.reuseLimit = reuseLimit
        self.countLimit = countLimit
        self._idle = {}  # key (cacheKey()) -> [_Cached]

    def __len__(self):
        return sum(len(entries) for entries in self._idle.values())

    def put(self, destination, session, remote, created, uses):
        """Keep C{session} idle under the key C{destination} (a cacheKey()), or QUIT it (limits)."""
        if self.countLimit and uses >= self.countLimit:
            session.quit()
            return
        if self.clock.seconds() - created >= self.reuseLimit:
            session.quit()
            return
        entry = _Cached(session, remote, created, uses, None)
        entry.expiry = self.clock.callLater(self.idleLimit, self._expire, destination, entry)
        self._idle.setdefault(destination, []).append(entry)

    def take(self, destination):
        """An idle connection cached under exactly the key C{destination} (a cacheKey()), or None."""
        entries = self._idle.get(destination)
        while entries:
            entry = entries.pop()
            if entry.expiry.active():
                entry.expiry.cancel()
            if self.clock.seconds() - entry.created < self.reuseLimit:
                if not entries:
                    del self._idle[destination]
                return entry
            entry.session.quit()
        self._idle.pop(destination, None)
        return None

    def _expire(self, destination, entry):
        entries = self._idle.get(destination, [])
        if entry in entries:
            entries.remove(entry)
            if not entries:
                del self._idle[destination]
            entry.session.quit()

    def closeAll(self, closeTimeout=CLOSE_TIMEOUT):
        """
        QUIT every idle connection; a Deferred that fires when each is gone:
        QUIT (and under TLS the close_notify) written and the socket closed,
        not just queued (a stop would otherwise end the reactor first and
        the server would see a lost connection).  A connection that is not
        gone after C{closeTimeout} seconds is aborted.
        """
        quits = []
        for entries in self._idle.values():
            for entry in entries:
                if entry.expiry.active():
                    entry.expiry.cancel()
                quits.append(self._quitAndWait(entry.session, closeTimeout))
        self._idle.clear()
        return DeferredList(quits, consumeErrors=True)

    def _quitAndWait(self, session, closeTimeout):
        d = session.quit()
        whenClosed = getattr(session, "whenClosed", None)
        if whenClosed is None:
            return d

        def closed(_):
            waiting = whenClosed()
            timer = self.clock.callLater(closeTimeout, session.abortNow)
            waiting.addBoth(lambda result: (timer.cancel() if timer.active() else None, result)[1])
            return waiting

        return d.addBoth(closed)
