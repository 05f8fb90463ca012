"""mta.verify.service - the verify service: answers status queries and sends probes (Postfix's verify.c).

query(address) follows verify_query_service: an address without a usable
entry, or whose entry expired (address_verify_positive_expire_time for a
deliverable one, address_verify_negative_expire_time for the others) while
no probe is outstanding, is TODO, "Address verification in progress"; a
probe is sent when none was sent in the last PROBE_TTL seconds and the
entry is due for a refresh (address_verify_positive_refresh_time,
address_verify_negative_refresh_time; an unknown address always is), and
the entry records when.  Without address_verify_negative_cache a new
address is not stored until its probe's result is, and an expired
negative entry is removed.  A probe that is lost (no result within
PROBE_TTL) is simply sent again by a later query.

update(address, status, text) follows verify_update_service and
verify_append: a failed probe never overwrites a deliverable entry (the
address is probed again at its next query, and stays deliverable while
some probe succeeds); without address_verify_negative_cache only
deliverable results are stored.  It returns the status the probe's
mail-log line shows (Postfix's: deliverable, undeliverable, or
undeliverable-but-not-cached).

Every address_verify_cache_cleanup_interval the entries that expired with
no probe outstanding are removed, with Postfix's line
"cache NAME full cleanup: retained=N dropped=M entries".

SECURITY
    See mta.verify.

CONFIGURATION
    See mta.verify.
"""

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from mta.verify.cache import OK, TODO, Entry, VerifyCache, printable

log = Logger()

PROBE_TTL = 1000  # seconds: a probe without a result after this is taken as lost (Postfix's PROBE_TTL)
_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
VERIFY_BASE = 31


def probeSender(settings, now, qualify=None):
    """
    The sender of a probe sent at C{now} (Postfix's make_verify_sender_addr):
    "" for the null sender; with address_verify_sender_ttl, the local part
    gets the time divided by the ttl, in base 31; C{qualify} completes a
    bare name (@$myorigin).
    """
    sender = settings.sender
    if not sender:
        return ""
    if settings.senderTtl > 0:
        epoch = int(now // settings.senderTtl)
        digits = ""
        while True:
            epoch, digit = divmod(epoch, VERIFY_BASE)
            digits = _DIGITS[digit] + digits
            if not epoch:
                break
        local, at, domain = sender.partition("@")
        sender = local + digits + at + domain
    return qualify(sender) if qualify is not None else sender


def cacheKey(address):
    """Postfix's key: ":" (IPv6 address literals) becomes "_"."""
    return address.replace(":", "_")


class VerifyService:
    """
    See the module docstring.  C{settings}: VerifySettings; C{clock}: the
    reactor (seconds, callLater); C{post(sender, address)}: queue a probe
    (a Deferred of its queue id; Cleanup.submit with probe=True, made by
    mta.service); C{maillogs}: program -> MailLogger (its "verify" logger is used); C{pool}: (reactor,
    threadpool) for the cache file's writes; C{qualify}: completes the
    probe sender.
    """

    def __init__(self, settings, clock, post, maillogs=None, pool=None, qualify=None):
        self.settings = settings
        self.clock = clock
        self.post = post
        self.maillogs = maillogs
        self.qualify = qualify
        kind, path = settings.verifyMap
        self.cache = VerifyCache(clock, path if kind == "sqlite" else None, pool)
        self._cleanupCall = None
        self.probes = 0  # probes sent (for tests and status)

    def reconfigure(self, settings, qualify=None):
        """A reload: the new times, sender and negative caching (address_verify_map needs a restart)."""
        self.settings = attrs.evolve(settings, verifyMap=self.settings.verifyMap)
        self.qualify = qualify

    def start(self):
        self.cache.load()
        if self.settings.cleanupInterval > 0 and self._cleanupCall is None:
            self._cleanupCall = self.clock.callLater(self.settings.cleanupInterval, self._periodicCleanup)

    def stop(self):
        if self._cleanupCall is not None and self._cleanupCall.active():
            self._cleanupCall.cancel()
        self._cleanupCall = None
        self.cache.close()

    # -- the rules --------------------------------------------------------------------

    def _expired(self, entry, now):
        s = self.settings
        if entry.status == OK:
            return entry.updated + s.positiveExpire < now
        return entry.updated + s.negativeExpire < now

    def _refreshNeeded(self, status, updated, now):
        s = self.settings
        if status == OK:
            return updated + s.positiveRefresh < now
        return updated + s.negativeRefresh < now

    def query(self, address):
        """The (status, text) of C{address} (a str); a probe is sent when one is due.  A Deferred."""
        now = self.clock.seconds()
        key = cacheKey(address)
        entry = self.cache.get(key)
        if entry is None or (now - entry.probed > PROBE_TTL and self._expired(entry, now)):
            status, probed, updated, text = TODO, 0, 0, "Address verification in progress"
            if entry is not None and not self.settings.negativeCache:
                self.cache.delete(key)
        else:
            status, probed, updated, text = entry.status, entry.probed, entry.updated, entry.text
        if now - probed > PROBE_TTL and self._refreshNeeded(status, updated, now):
            self._probe(address, now)
            if updated != 0 or self.settings.negativeCache:
                self.cache.put(key, Entry(status, now, updated, text))
        return succeed((status, text))

    def update(self, address, status, text):
        """Record a probe's result for C{address}; the status its log line shows."""
        if status != OK and not self.settings.negativeCache:
            return "undeliverable-but-not-cached"
        key = cacheKey(address)
        entry = self.cache.get(key)
        if status == OK or entry is None or entry.status != OK:
            self.cache.put(key, Entry(status, 0, self.clock.seconds(), printable(text)))
        return "deliverable" if status == OK else "undeliverable"

    def _probe(self, address, now):
        sender = probeSender(self.settings, now, self.qualify)
        self.probes += 1
        try:
            d = self.post(sender, address)
        except Exception as e:  # the queue cannot take it now: the next query after PROBE_TTL tries again
            log.error("verify: cannot queue a probe for {address}: {error}", address=address, error=str(e))
            return
        if isinstance(d, Deferred):
            d.addErrback(lambda f: log.error("verify: cannot queue a probe for {address}: {error}",
                                             address=address, error=f.getErrorMessage()))

    # -- cleanup ----------------------------------------------------------------------

    def cleanup(self):
        """Remove the entries that expired with no probe outstanding (Postfix's verify_cache_validator)."""
        now = self.clock.seconds()
        dropped = 0
        for key, entry in self.cache.entries():
            if not (now - entry.probed < PROBE_TTL or not self._expired(entry, now)):
                self.cache.delete(key)
                dropped += 1
        if self.maillogs is not None:
            name = self.cache.path or "memory"
            self.maillogs("verify").emit(f"cache {name} full cleanup: retained={len(self.cache)} dropped={dropped} entries")
        return dropped

    def _periodicCleanup(self):
        self._cleanupCall = None
        try:
            self.cleanup()
        finally:
            self._cleanupCall = self.clock.callLater(self.settings.cleanupInterval, self._periodicCleanup)
