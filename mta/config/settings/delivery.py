"""mta.config.settings.delivery - VirtualSettings, AgentSettings: the final-delivery transports virtual(8), error, retry and discard (mta.delivery).

NAME
    VirtualSettings  registered as ``virtual``: what virtual(8) reads
                     (mta.delivery.virtual)
    AgentSettings    registered as ``agent``: what the agents without
                     settings of their own read (discard, error, retry):
                     the mail-log name

DESCRIPTION
    Checked here, so that load() and mta-config --check fail on them
    (Postfix's virtual(8) refuses to start on each):

      * virtual_mailbox_limit, when not 0, may not be smaller than
        message_size_limit, nor limited when message_size_limit is not
        ("virtual_mailbox_limit (1000) is smaller than message_size_limit
        (2000)"), when the configuration sends mail to virtual (see
        DEVIATIONS);
      * virtual_mailbox_base may not be a relative path ("do not specify a
        relative path"); an empty one is allowed (Postfix's default: the
        transport may go unused, and then each delivery defers);
      * virtual_mailbox_lock: the lock styles fcntl, flock and dotlock
        (the schema's type refuses any other);
      * deliver_lock_attempts at least 1 (the schema's type).

    The error names the line of virtual_mailbox_limit when the file sets
    it, else that of message_size_limit.

    The tables (virtual_mailbox_maps, virtual_uid_maps, virtual_gid_maps)
    stay TableSpec values; the plugin opens them with the Tables registry.

DEVIATIONS FROM POSTFIX
    The base check fails the whole configuration at load, and so does the
    mailbox-limit rule when the configuration routes mail to virtual by
    itself (virtual_mailbox_domains with a virtual_transport of type
    virtual, or a local, relay or default transport of that type); where
    only transport_maps could reach it, the virtual transport refuses to
    start and its mail is deferred, with the error logged.  Postfix's
    virtual(8) stops with a fatal error when it starts, at its first
    delivery.

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    virtual_mailbox_base, virtual_uid_maps, virtual_gid_maps,
    virtual_minimum_uid, virtual_mailbox_limit, virtual_mailbox_lock,
    deliver_lock_attempts, deliver_lock_delay, stale_lock_time,
    strict_mailbox_ownership, virtual_mailbox_follow_symlinks,
    virtual_mailbox_maps, recipient_delimiter, message_size_limit,
    syslog_name.
"""

from mta.config.errors import ConfigError
from mta.config.settings import Settings, setting, settingsClass

__all__ = ["AgentSettings", "VirtualSettings"]


def mailboxBase(value):
    """virtual_mailbox_base: absolute, or empty (unused)."""
    if value and not value.startswith("/"):
        raise ValueError(f"do not specify a relative path: {value!r}")
    return value


@settingsClass
class VirtualSettings(Settings):
    """virtual(8)'s settings (see the module docstring)."""

    base: str = setting("virtual_mailbox_base", mailboxBase)  # every mailbox path is below it; "": defer
    mailboxMaps: tuple = setting("virtual_mailbox_maps")  # TableSpecs: recipient -> mailbox path
    uidMaps: tuple = setting("virtual_uid_maps")  # TableSpecs: recipient -> owner uid; (): mta's own
    gidMaps: tuple = setting("virtual_gid_maps")  # TableSpecs: recipient -> owner gid; (): mta's own
    minimumUid: int = setting("virtual_minimum_uid")  # a smaller uid from the maps defers (4.3.5)
    mailboxLimit: int = setting("virtual_mailbox_limit")  # bytes an mbox file or a message may reach; 0: none
    lockStyles: tuple = setting("virtual_mailbox_lock")  # mbox locks, in order: fcntl, flock, dotlock
    lockAttempts: int = setting("deliver_lock_attempts")  # tries of a busy lock
    lockDelay: float = setting("deliver_lock_delay")  # seconds between the tries
    staleLockTime: float = setting("stale_lock_time")  # a dot-lock older than this is removed
    strictOwnership: bool = setting("strict_mailbox_ownership")  # an mbox of another owner defers
    followSymlinks: bool = setting("virtual_mailbox_follow_symlinks")  # symbolic links below the base
    delimiter: str = setting("recipient_delimiter")  # user+extension: the extension's separators
    syslogName: str = setting("syslog_name")  # mail-log program names: $syslog_name/virtual

    messageSizeLimit: int = setting("message_size_limit")  # for the mailbox-limit rule below

    @classmethod
    def extraParameters(cls):
        return USED_BY

    def mailboxLimitProblem(self):
        """Postfix's rule: a limited mailbox may not be smaller than the largest message; the problem, or None."""
        limit, messageLimit = self.mailboxLimit, self.messageSizeLimit
        if not limit:
            return None
        if not messageLimit:
            return "virtual_mailbox_limit is limited but message_size_limit is unlimited"
        if limit < messageLimit:
            return f"virtual_mailbox_limit ({limit}) is smaller than message_size_limit ({messageLimit})"
        return None

    def check(self, scope):
        problem = self.mailboxLimitProblem()
        if problem is not None and virtualIsUsed(scope):
            # Name the line that made the conflict: the mailbox limit if the file sets it, else the size limit.
            name = "virtual_mailbox_limit" if scope.entry("virtual_mailbox_limit") is not None else "message_size_limit"
            raise ConfigError(f"{scope.where(name)}: {problem}")


# What decides whether the configuration sends mail to virtual(8) at all.
USED_BY = ("virtual_mailbox_domains", "virtual_transport", "local_transport", "relay_transport", "default_transport")


def virtualIsUsed(scope):
    """
    Does the configuration route mail to virtual(8) by itself: virtual
    mailbox domains delivered by a virtual_transport of type virtual, or a
    local, relay or default transport of that type?  (transport_maps may
    name it too; then the transport refuses to start, as virtual(8) does.)
    """
    def kind(name):
        return scope[name].split(":", 1)[0].strip()

    if scope["virtual_mailbox_domains"] and kind("virtual_transport") == "virtual":
        return True
    return any(kind(name) == "virtual" for name in ("local_transport", "relay_transport", "default_transport"))


@settingsClass
class AgentSettings(Settings):
    """What discard(8), error(8) and retry read."""

    syslogName: str = setting("syslog_name")  # mail-log program names: $syslog_name/error, ...


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"virtual": VirtualSettings, "agent": AgentSettings}
