"""mta.delivery.discard - discard(8): pretend to deliver, and say why not.

DiscardTransport answers every recipient of a request "sent", relay
"none", as Postfix's discard(8): the request's next-hop is the reason for
discarding the mail and becomes the result's text (so a transport_maps
entry ``example.com discard:no mail wanted here`` logs ``status=sent (no
mail wanted here)``).  The reason may start with an RFC 3463 detail code
(``2.7.0 blocked sender``); without one the status is 2.0.0.  A code of
another class than 2 is ignored with a warning (a discard is a success),
as Postfix's sent() does.  An empty next-hop gives the text "discarded"
(Postfix's queue manager never sends one: it puts the recipient's domain
there).  The message content is never read.

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

from mta.delivery.status import splitStatus
from mta.interfaces import IDeliveryTransport
from mta.maillog import MailLogger, sanitize
from mta.model import RecipientResult


@implementer(IDeliveryTransport)
class DiscardTransport:
    """Every recipient "sent" with the next-hop as the reason."""

    def __init__(self, *, name="discard", maillog=None):
        self.name = name
        self.maillog = maillog if maillog is not None else MailLogger("mta", name)

    def deliver(self, request):
        status, reason = splitStatus(request.nexthop, "2.0.0")
        if status[0] != "2":
            self.maillog.emit(f"warning: {self.name}: ignoring dsn code \"{status}\" in next-hop "
                              f"\"{sanitize(request.nexthop)}\"", request.queue_id, LogLevel.warn)
            status = "2.0.0"
        text = reason or "discarded"
        return succeed([RecipientResult(r.index, "sent", status, text, relay="none") for r in request.recipients])

    def stop(self):
        return succeed(None)


def makeDiscardTransport(name, settings, context):
    """The plugin's makeTransport: a DiscardTransport called C{name}; C{settings} is an AgentSettings."""
    return DiscardTransport(name=name, maillog=MailLogger(settings.syslogName, name))
