"""The delivery transports that ship with mta: virtual, discard, error, retry, smtp, relay and lmtp.

Each factory's makeTransport(name, settings, context) takes the settings
compiled from [main] (mta.config.Config.settings) and picks its own object:
virtual ``settings.virtual``, discard/error/retry ``settings.agent``, smtp
and relay ``settings.smtpClient``, lmtp ``settings.lmtpClient``
(mta.config.settings.delivery and .client).  Every value was checked when
the configuration was loaded; only the tables are opened here.

SECURITY
    None: the settings come from the configuration, checked at load.

CONFIGURATION
    What each transport's settings class reads (see those modules).
"""

from twisted.plugin import IPlugin
from zope.interface import implementer

from mta.interfaces import IDeliveryTransportFactory


@implementer(IPlugin, IDeliveryTransportFactory)
class _Factory:
    def __init__(self, transportType, description, maker):
        self.transportType = transportType
        self.description = description
        self._maker = maker

    def makeTransport(self, name, settings, context):
        return self._maker(name, settings, context)


def _virtual(name, settings, context):
    from mta.delivery.virtual import makeVirtualTransport

    return makeVirtualTransport(name, settings.virtual, context)


def _discard(name, settings, context):
    from mta.delivery.discard import makeDiscardTransport

    return makeDiscardTransport(name, settings.agent, context)


def _error(name, settings, context):
    from mta.delivery.error import makeErrorTransport

    return makeErrorTransport(name, settings.agent, context)


def _retry(name, settings, context):
    from mta.delivery.error import makeRetryTransport

    return makeRetryTransport(name, settings.agent, context)


virtual = _Factory("virtual", "Final delivery to Maildirs and mbox files named by virtual_mailbox_maps (virtual(8)).",
                   _virtual)
discard = _Factory("discard", "Pretend delivery: every recipient sent, the next-hop is the reason (discard(8)).",
                   _discard)
error = _Factory("error", "Bounce every recipient with the next-hop as the reason (error(8)).", _error)
retry = _Factory("retry", "Defer every recipient with the next-hop as the reason (error(8) as retry).", _retry)


def _smtp(name, settings, context):
    from mta.delivery.smtp import SMTPTransport

    return SMTPTransport(name, settings.smtpClient, context, settings.notices)


def _lmtp(name, settings, context):
    from mta.delivery.smtp import SMTPTransport

    return SMTPTransport(name, settings.lmtpClient, context, settings.notices)


smtp = _Factory("smtp", "Delivery over SMTP by MX lookup or to a given host (smtp(8)).", _smtp)
relay = _Factory("relay", "smtp(8) for $relay_domains (relay_transport).", _smtp)
lmtp = _Factory("lmtp", "Delivery over LMTP to a UNIX socket or a host (lmtp(8)).", _lmtp)
