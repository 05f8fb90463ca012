"""mta.config.settings.qmgr - QmgrSettings: The queue manager (mta.queue.manager) and its scanner.

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    qmgr_message_active_limit, default_destination_concurrency_limit,
    default_destination_recipient_limit, minimal_backoff_time,
    maximal_backoff_time, queue_run_delay, maximal_queue_lifetime,
    bounce_queue_lifetime, defer_transports, soft_bounce,
    delay_warning_time, address_verify_pending_request_limit; and the families TRANSPORT_destination_concurrency_limit
    and TRANSPORT_destination_recipient_limit (setting(pattern=...)).

QmgrSettings (``config.settings.qmgr``) is built from [main] only, as
Postfix's qmgr(8) reads main.cf.  concurrencyLimit(transport) and
recipientLimit(transport) give a transport's limits: its own parameter
when set, else the default_destination_* value.

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.schema import PATTERNS
from mta.config.settings import Settings, setting, settingsClass

__all__ = ["QmgrSettings"]

_CONCURRENCY, _RECIPIENTS = (pattern for pattern, _, _, _ in PATTERNS)


@settingsClass
class QmgrSettings(Settings):
    """What the queue manager and its scanner read of [main]; times are seconds (floats)."""

    activeLimit: int = setting("qmgr_message_active_limit")  # messages in active/ (memory) at once
    minBackoff: float = setting("minimal_backoff_time")  # the shortest retry interval
    maxBackoff: float = setting("maximal_backoff_time")  # the longest retry interval
    runDelay: float = setting("queue_run_delay")  # between two scans of deferred/
    lifetime: float = setting("maximal_queue_lifetime")  # then deferred recipients bounce
    bounceLifetime: float = setting("bounce_queue_lifetime")  # the same for mail from <>
    deferTransports: frozenset = setting("defer_transports", frozenset)  # deferred without an attempt
    softBounce: bool = setting("soft_bounce")  # a bounce becomes a deferral (4.x.x)
    delayWarning: float = setting("delay_warning_time")  # warn the sender once after this; 0: never
    probeLimit: int = setting("address_verify_pending_request_limit")  # active probes (mta.verify) at once
    defaultConcurrency: int = setting("default_destination_concurrency_limit")  # per (transport, nexthop)
    defaultRecipientLimit: int = setting("default_destination_recipient_limit")  # recipients per delivery
    concurrency: dict = setting(pattern=_CONCURRENCY)  # transport -> its own concurrency limit, if set
    recipientLimits: dict = setting(pattern=_RECIPIENTS)  # transport -> its own recipient limit, if set

    def concurrencyLimit(self, transport):
        """Parallel deliveries to one destination of C{transport} (TRANSPORT_destination_concurrency_limit)."""
        return self.concurrency.get(transport, self.defaultConcurrency)

    def recipientLimit(self, transport):
        """Recipients per delivery by C{transport} (TRANSPORT_destination_recipient_limit)."""
        return self.recipientLimits.get(transport, self.defaultRecipientLimit)


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"qmgr": QmgrSettings}
