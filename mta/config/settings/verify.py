"""mta.config.settings.verify - VerifySettings, UnverifiedCheckSettings: address verification (mta.verify).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it:

    address_verify_map, address_verify_sender, address_verify_sender_ttl,
    address_verify_positive_expire_time, address_verify_positive_refresh_time,
    address_verify_negative_cache, address_verify_negative_expire_time,
    address_verify_negative_refresh_time,
    address_verify_cache_cleanup_interval (VerifySettings, the verify
    service of the master process, from [main] as Postfix's verify(8) reads
    main.cf); address_verify_poll_count, address_verify_poll_delay,
    unverified_recipient_reject_code, unverified_sender_reject_code,
    unverified_recipient_defer_code, unverified_sender_defer_code,
    unverified_recipient_tempfail_action, unverified_sender_tempfail_action,
    unverified_recipient_reject_reason, unverified_sender_reject_reason
    (UnverifiedCheckSettings: what smtpd's reject_unverified_* read, per
    listener, as smtpd -o may override them).

address_verify_map becomes (kind, path): ("memory", None) when empty,
("sqlite", path) for sqlite:path or btree:path.  address_verify_sender "<>"
becomes "".

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass

__all__ = ["VerifySettings", "UnverifiedCheckSettings"]


def _verifyMap(text):
    text = text.strip()
    if not text:
        return ("memory", None)
    kind, colon, path = text.partition(":")
    if not colon or kind.lower() not in ("sqlite", "btree") or not path.strip():
        raise ValueError(f"{text!r}: expected empty (in memory), sqlite:/path or btree:/path")
    return ("sqlite", path.strip())


def _sender(text):
    text = text.strip()
    if text == "<>":
        return ""
    if text.startswith("@") or text.endswith("@"):
        raise ValueError(f"{text!r}: must not start or end with '@'")  # Postfix's fatal error, at load
    if any(c in text for c in "\r\n\0<> "):
        raise ValueError(f"{text!r}: not an address")
    return text


@settingsClass
class VerifySettings(Settings):
    """What the verify service (mta.verify.VerifyService) reads of [main]; times are seconds."""

    verifyMap: tuple = setting("address_verify_map", _verifyMap)  # ("memory", None) or ("sqlite", path)
    sender: str = setting("address_verify_sender", _sender)  # "" for the null sender
    senderTtl: float = setting("address_verify_sender_ttl")
    positiveExpire: float = setting("address_verify_positive_expire_time")
    positiveRefresh: float = setting("address_verify_positive_refresh_time")
    negativeCache: bool = setting("address_verify_negative_cache")
    negativeExpire: float = setting("address_verify_negative_expire_time")
    negativeRefresh: float = setting("address_verify_negative_refresh_time")
    cleanupInterval: float = setting("address_verify_cache_cleanup_interval")


@settingsClass
class UnverifiedCheckSettings(Settings):
    """What reject_unverified_recipient and reject_unverified_sender read (mta.smtpd.verifycheck), per listener."""

    @classmethod
    def extraParameters(cls):
        return ("reject_tempfail_action",)  # the default of the tempfail actions

    pollCount: int = setting("address_verify_poll_count")
    pollDelay: float = setting("address_verify_poll_delay")
    recipientRejectCode: int = setting("unverified_recipient_reject_code")
    senderRejectCode: int = setting("unverified_sender_reject_code")
    recipientDeferCode: int = setting("unverified_recipient_defer_code")
    senderDeferCode: int = setting("unverified_sender_defer_code")
    recipientTempfail: str = setting("unverified_recipient_tempfail_action")
    senderTempfail: str = setting("unverified_sender_tempfail_action")
    recipientReason: str = setting("unverified_recipient_reject_reason")
    senderReason: str = setting("unverified_sender_reject_reason")


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"verify": VerifySettings}
LISTENER = {"unverified": UnverifiedCheckSettings}
