"""mta.smtpd.verifycheck - reject_unverified_recipient and reject_unverified_sender (Postfix's reject_unverified_address).

The restriction asks the verify service (mta.verify, in the master
process; from a worker process over its AMP channel) for the address's
status, again every address_verify_poll_delay while a probe is in progress,
at most address_verify_poll_count times in all, and answers as Postfix's
smtpd_check.c:

    deliverable       DUNNO
    in progress, or   unverified_*_defer_code (450) "4.1.1 <ADDR>: Recipient
    a 4xx result      address rejected: unverified address: TEXT" (4.1.7 and
                      "Sender address" for the sender), as DEFER_IF_PERMIT
                      (or a plain defer: unverified_*_tempfail_action = defer)
    undeliverable     unverified_*_reject_code (450): a 4xx as above, a 5xx
                      "5.1.1 <ADDR>: Recipient address rejected: undeliverable
                      address: TEXT", a reject
    service failure   450 "<ADDR>: Recipient address rejected: address
                      verification problem", per the tempfail action

TEXT is the probe's result ("Address verification in progress" while it
runs), or unverified_*_reject_reason when that is set.  The null sender
and a missing address are not checked (DUNNO).

SECURITY
    The address is the client's, already parsed (mta.address); it is a
    cache key and a probe's recipient, never a command.  A verify service
    that fails or does not answer gives a 4xx, never a 5xx.

CONFIGURATION
    UnverifiedCheckSettings (mta.config.settings.verify, per listener):
    address_verify_poll_count (3), address_verify_poll_delay (3s),
    unverified_recipient_reject_code (450), unverified_sender_reject_code
    (450), unverified_recipient_defer_code (450), unverified_sender_defer_code
    (450), unverified_recipient_tempfail_action and
    unverified_sender_tempfail_action ($reject_tempfail_action:
    defer_if_permit), unverified_recipient_reject_reason and
    unverified_sender_reject_reason (empty).

DEVIATIONS
    Stand-alone mode (mta-sendmail -bs) has no verify service: these
    restrictions answer "address verification problem" there.  Under
    warn_if_reject, a 4xx answer is a defer_if_permit all the same
    (Postfix makes it a plain reject, logged as a warning).
"""

from twisted.logger import Logger

from mta.model import Reply
from mta.smtpd.decision import DUNNO, Decision

log = Logger()

OK, DEFER, BOUNCE, TODO = 0, 1, 2, 3  # mta.verify's statuses (Postfix's DEL_RCPT_STAT_*)
SND_DSN = "4.1.7"
RCPT_DSN = "4.1.1"


def unverified(which):
    """The maker of reject_unverified_C{which} (recipient or sender)."""

    def make(policy, argument):
        async def check(request):
            address = getattr(request, which)
            if address is None or address.isNull:
                return DUNNO
            settings = policy.unverified
            given = getattr(request, f"{which}_given")
            shown = given if given is not None else address
            if which == "recipient":
                what, dsn = "Recipient address", RCPT_DSN
                deferCode, rejectCode = settings.recipientDeferCode, settings.recipientRejectCode
                tempfail, reason = settings.recipientTempfail, settings.recipientReason
            else:
                what, dsn = "Sender address", SND_DSN
                deferCode, rejectCode = settings.senderDeferCode, settings.senderRejectCode
                tempfail, reason = settings.senderTempfail, settings.senderReason

            def deferred(code, text):
                reply = Reply(code, dsn, text)
                return Decision("defer" if tempfail == "defer" else "defer_if_permit", reply)

            status, text = await _ask(policy, str(address), settings)
            if status is None:
                _warn(policy, "verify service failure")
                return deferred(450, f"<{shown}>: {what} rejected: address verification problem")
            if status == OK:
                return DUNNO
            code = deferCode if status in (TODO, DEFER) else rejectCode if status == BOUNCE else 0
            if code == 0:
                _warn(policy, f"unknown address verification status {status}")
                return DUNNO
            if reason:
                text = reason
            if code < 500:
                return deferred(code, f"<{shown}>: {what} rejected: unverified address: {text[:250]}")
            return Decision("reject", Reply(code, f"5{dsn[1:]}", f"<{shown}>: {what} rejected: undeliverable "
                                                                f"address: {text}"))

        return check

    return make


def _warn(policy, text):
    """Postfix's msg_warn, in the mail log (smtpd's), else in the daemon's log."""
    maillog = getattr(policy, "maillog", None)
    if maillog is not None:
        maillog.warning(text)
    else:
        log.warn("warning: {text}", text=text)


async def _ask(policy, address, settings):
    """The verify service's (status, text), polling while a probe runs; (None, None) when it fails."""
    verifier = getattr(policy, "verifier", None)
    if verifier is None:
        return None, None
    count = 0
    while True:
        try:
            status, text = await verifier(address)
        except Exception as e:
            _warn(policy, f"verify query failed: {e!r}"[:300])
            return None, None
        if status != TODO:
            return status, text
        count += 1
        if count >= settings.pollCount or policy.clock is None:
            return status, text
        from twisted.internet.task import deferLater

        await deferLater(policy.clock, settings.pollDelay, lambda: None)
