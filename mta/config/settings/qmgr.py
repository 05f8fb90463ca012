"""mta.config.settings.qmgr - QmgrSettings: The queue manager (mta.queue.manager) and its scanner.

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    qmgr_message_active_limit, default_destination_concurrency_limit,
    default_destination_recipient_limit, minimal_backoff_time,
    maximal_backoff_time, queue_run_delay, maximal_queue_lifetime,
    bounce_queue_lifetime, defer_transports, soft_bounce,
    delay_warning_time; and the families TRANSPORT_destination_concurrency_limit
    and TRANSPORT_destination_recipient_limit (setting(pattern=...)).

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {}
