"""mta.config.settings.delivery - VirtualSettings and the settings of the other final-delivery transports: virtual(8), error, discard, retry (mta.delivery).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    virtual_mailbox_base, virtual_uid_maps, virtual_gid_maps,
    virtual_minimum_uid, virtual_mailbox_limit, virtual_mailbox_lock,
    deliver_lock_attempts, deliver_lock_delay, stale_lock_time,
    strict_mailbox_ownership, virtual_mailbox_follow_symlinks,
    virtual_mailbox_maps, recipient_delimiter, message_size_limit

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {}
