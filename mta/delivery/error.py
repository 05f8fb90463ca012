"""mta.delivery.error - error(8) and retry: fail every recipient with the next-hop as the reason.

ErrorTransport answers every recipient of a request with the request's
next-hop as the reason for non-delivery, relay "none", as Postfix's
error(8).  The reason may start with an RFC 3463 detail code
(``error:5.1.1 No such user here``); without one the status is the
transport's default.  The message content is never read.

    error   bounces.  Default status 5.0.0, default text "Address is
            undeliverable" (for an empty next-hop, which Postfix's queue
            manager never sends).  A 4.x.x code defers instead
            (``error:4.7.1 Try again later``); Postfix would bounce with
            5.0.0 and log "ignoring dsn code" (use ``retry`` there).  A
            2.x.x code is ignored with a warning: 5.0.0.
    retry   defers (Postfix 2.4 and later).  Default status 4.0.0, default
            text "Delivery temporarily suspended"; a code of another class
            than 4 is ignored with a warning: 4.0.0.

SECURITY
    No untrusted input is interpreted: the next-hop comes from the
    configuration or the router.

CONFIGURATION
    syslog_name (mta), for warnings: mta.config.settings.delivery.AgentSettings
    (``config.settings.agent``).
"""

from twisted.internet.defer import succeed
from twisted.logger import LogLevel
from zope.interface import implementer

from mta.delivery.status import splitStatus, statusClass
from mta.interfaces import IDeliveryTransport
from mta.maillog import MailLogger, sanitize
from mta.model import RecipientResult

ERROR_DEFAULT = ("5.0.0", "Address is undeliverable")
RETRY_DEFAULT = ("4.0.0", "Delivery temporarily suspended")


@implementer(IDeliveryTransport)
class ErrorTransport:
    """
    Every recipient bounced (C{retry=False}: error(8)) or deferred
    (C{retry=True}: Postfix's retry service) with the next-hop as the reason.
    """

    def __init__(self, *, retry=False, name=None, maillog=None):
        self.retry = retry
        self.name = name or ("retry" if retry else "error")
        self.maillog = maillog if maillog is not None else MailLogger("mta", self.name)

    def deliver(self, request):
        defaultStatus, defaultText = RETRY_DEFAULT if self.retry else ERROR_DEFAULT
        status, reason = splitStatus(request.nexthop, defaultStatus)
        allowed = "4" if self.retry else "45"
        if status[0] not in allowed:
            self.maillog.emit(f"warning: {self.name}: ignoring dsn code \"{status}\" in next-hop "
                              f"\"{sanitize(request.nexthop)}\"", request.queue_id, LogLevel.warn)
            status = defaultStatus
        text = reason or defaultText
        result = statusClass(status)
        return succeed([RecipientResult(r.index, result, status, text, relay="none") for r in request.recipients])

    def stop(self):
        return succeed(None)


def makeErrorTransport(name, settings, context):
    """The plugin's makeTransport for error(8), bounces: C{settings} is an AgentSettings."""
    return ErrorTransport(retry=False, name=name, maillog=MailLogger(settings.syslogName, name))


def makeRetryTransport(name, settings, context):
    """The plugin's makeTransport for retry, defers: C{settings} is an AgentSettings."""
    return ErrorTransport(retry=True, name=name, maillog=MailLogger(settings.syslogName, name))
