"""mta.delivery.dnscache - the DNS client's memory: answers kept for their TTL, and queries in flight shared.

NAME
    DNSCache(clock, maxSize, maxTTL, maxNegativeTTL)
        .get(key), .put(key, value, ttl), len(), .clear()
    NXDOMAIN, NODATA    the negative answers a DNSCache keeps
    Flight              the callers waiting for one query in flight

DESCRIPTION
    mta.delivery.dns.Resolver keeps positive answers (a tuple of records)
    for the smallest TTL of the records used (CNAMEs included) and
    negative answers (NXDOMAIN, NODATA) for the SOA's min(TTL, MINIMUM)
    (RFC 2308; not cached without an SOA).  The cache bounds each TTL by
    maxTTL (maxNegativeTTL for a negative answer) and holds at most
    maxSize entries, the least recently used going first; an entry whose
    time has come is dropped when asked for.  Time is the clock's
    (IReactorTime.seconds()).  Temporary failures are never put here.

    Identical queries in flight at the same time share one exchange: the
    first caller makes a Flight, later ones wait() on it, and fire() gives
    each a copy of the records (or the failure).

SECURITY
    Memory is bounded (maxSize entries of records the resolver accepted);
    what goes in was checked by the resolver (answer records of the
    question's chain only).

CONFIGURATION
    None: the Resolver's constructor arguments (cacheSize 10000, maxTTL
    one day, maxNegativeTTL one hour).
"""

from collections import OrderedDict

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["NODATA", "NXDOMAIN", "DNSCache", "Flight"]


class _Negative:
    """A negative answer in the cache (see NXDOMAIN and NODATA)."""

    def __init__(self, what):
        self.what = what

    def __repr__(self):
        return f"<{self.what}>"


NXDOMAIN = _Negative("NXDOMAIN")  # the name does not exist
NODATA = _Negative("NODATA")  # the name exists without records of the type


class DNSCache:
    """A TTL cache with an upper bound on TTL and on entries (LRU)."""

    def __init__(self, clock, maxSize, maxTTL, maxNegativeTTL):
        self.clock = clock
        self.maxSize = maxSize
        self.maxTTL = maxTTL
        self.maxNegativeTTL = maxNegativeTTL
        self.entries = OrderedDict()

    def get(self, key):
        entry = self.entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self.clock.seconds() >= expires:
            del self.entries[key]
            return None
        self.entries.move_to_end(key)
        return value

    def remaining(self, key):
        """Seconds left before the entry for C{key} expires, or None when there is none."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        left = entry[0] - self.clock.seconds()
        return left if left > 0 else None

    def put(self, key, value, ttl):
        limit = self.maxNegativeTTL if isinstance(value, _Negative) else self.maxTTL
        ttl = min(ttl, limit)
        if ttl <= 0 or self.maxSize <= 0:
            return
        self.entries[key] = (self.clock.seconds() + ttl, value)
        self.entries.move_to_end(key)
        while len(self.entries) > self.maxSize:
            self.entries.popitem(last=False)

    def __len__(self):
        return len(self.entries)

    def clear(self):
        self.entries.clear()


class Flight:
    """Callers waiting for the same query."""

    def __init__(self):
        self.waiters = []

    def wait(self):
        d = Deferred()
        self.waiters.append(d)
        return d

    def fire(self, result):
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if isinstance(result, Failure):
                d.errback(result)
            elif isinstance(result, tuple):
                d.callback(result)  # immutable (mta.delivery.dns.Records): shared as it is
            else:
                d.callback(list(result))
