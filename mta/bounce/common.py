"""mta.bounce.common - what the parts of a notice share: the kinds, the actions, the dates.

SECURITY
    None.

CONFIGURATION
    None.
"""

import datetime
import email.utils

FAILURE = "failure"
DELAY = "delay"
SUCCESS = "success"
KINDS = (FAILURE, DELAY, SUCCESS)

MAIL_DAEMON = "MAILER-DAEMON"

ACTIONS = frozenset(("failed", "delayed", "delivered", "relayed", "expanded"))


def isBounce(envelope):
    """True when C{envelope} has the null sender: its failures are never
    reported to the sender (never bounce a bounce)."""
    return envelope.sender in ("", "<>")


def utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc)


def date(t):
    return email.utils.format_datetime(utc(t))
