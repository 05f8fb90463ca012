"""mta.verify - address verification (Postfix's verify(8)): the verify cache and its probes.

reject_unverified_recipient and reject_unverified_sender (mta.smtpd.verifycheck)
ask the verify service for an address's status; the service answers from
its cache (mta.verify.cache) and, when the entry is missing, expired or due
for a refresh, sends a probe: a message from address_verify_sender to that
one address, queued through the one cleanup (mta.cleanup) with the
envelope's "probe" flag (mta.queue.fileformat).  The queue manager routes
it like any message; the transports deliver it up to the recipient's
verdict only (the SMTP client stops after RCPT TO, virtual and discard
report without delivering), and the manager hands each result to
VerifyService.update instead of delivering or bouncing: a probe never
makes a bounce, a delay warning or a delivery, and is removed when its
results are recorded.  A deferred probe is retried as any message, until
its queue lifetime ends (maximal_queue_lifetime, or bounce_queue_lifetime
for a probe from <>, as Postfix's qmgr); it then counts as undeliverable.

    VerifyService(settings, clock, post, maillogs, pool=None, qualify=None)
        query(address) -> Deferred[(status, text)]
        update(address, status, text)
        start(), stop(), reconfigure(settings, qualify)

status is one of OK, DEFER, BOUNCE, TODO (Postfix's DEL_RCPT_STAT_*: 0, 1,
2, 3).  The service belongs to the master process (the daemon's queue
manager feeds it); an SMTP server in a worker process asks it over the
worker's AMP channel (mta.workers.commands.VerifyQuery).

SECURITY
    Addresses come from SMTP clients (RCPT TO, MAIL FROM); they are cache
    keys and probe recipients only, already parsed by mta.address.  Result
    texts come from remote servers: made printable and bounded before they
    are stored.  A damaged cache file is a warning and an empty cache.

CONFIGURATION
    VerifySettings (mta.config.settings.verify): address_verify_map,
    address_verify_sender, address_verify_sender_ttl,
    address_verify_positive_expire_time (31d),
    address_verify_positive_refresh_time (7d),
    address_verify_negative_cache (yes),
    address_verify_negative_expire_time (3d),
    address_verify_negative_refresh_time (3h),
    address_verify_cache_cleanup_interval (12h).

DEVIATIONS
    Postfix's default address_verify_map is btree:$data_directory/verify_cache
    (Berkeley DB); mta's is sqlite:$queue_directory/verify_cache, an sqlite3
    file (btree:path is taken as sqlite:path; empty: memory only), whose
    values are Postfix's entries ("status:probed:updated:text").  The cache
    is served from memory and written back in the background, so a
    lookup never waits for the disk; it is held whole in memory, so a
    dictionary attack on reject_unverified_recipient grows it by an entry
    per address probed, until the cleanup after
    address_verify_negative_expire_time (Postfix's file grows the same
    way, on disk).  The probe has no content beyond the
    headers cleanup adds.  address_verify_service_name,
    address_verify_transport_maps and the other address_verify_* routing
    overrides are not implemented: probes are routed as mail is.
"""

from mta.verify.cache import BOUNCE, DEFER, OK, STATUS_NAMES, TODO, VerifyCache
from mta.verify.service import VerifyService, probeSender

__all__ = ["OK", "DEFER", "BOUNCE", "TODO", "STATUS_NAMES", "VerifyCache", "VerifyService", "probeSender"]
