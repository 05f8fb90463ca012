"""mta.delivery.status - enhanced status codes (RFC 3463) for delivery results.

splitStatus() is Postfix's dsn_split(): an optional "X.Y.Z" detail code in
front of a reason text ("4.7.1 Try again later"), else a default code.
errnoStatus() is Postfix's mbox_dsn(): how a system error on a mailbox
turns into a status (a full disk waits, a full mailbox bounces).

SECURITY
    The texts come from configuration (transport next-hops) or from the
    operating system; they are only split, never interpreted.

CONFIGURATION
    None.
"""

import errno
import re

# RFC 3463: class 2, 4 or 5; subject 1-3 digits; detail 1-3 digits; then
# the end of the text or white space (as Postfix's dsn_valid()).
_STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?=\s|$)")


def validStatus(text):
    """True if C{text} is exactly an enhanced status code such as 4.2.0."""
    return _STATUS.fullmatch(text) is not None


def splitStatus(text, default):
    """
    Split C{text} into (status, reason): a leading enhanced status code,
    if there is one, and the rest with white space stripped; otherwise
    (C{default}, the stripped text).
    """
    text = (text or "").strip()
    match = _STATUS.match(text)
    if match is None:
        return default, text
    return match.group(0), text[match.end():].strip()


def statusClass(status):
    """'sent', 'deferred' or 'bounced' for a 2.x.x, 4.x.x or 5.x.x status."""
    return {"2": "sent", "4": "deferred", "5": "bounced"}[status[0]]


def errnoStatus(err, default):
    """
    The status for a mailbox operation that failed with errno C{err}, as
    Postfix's mbox_dsn(): a full file system waits (4.3.1), a full mailbox
    or quota bounces (5.2.2), a transient condition waits (4.2.0); any
    other error gets C{default}.
    """
    if err == errno.ENOSPC:
        return "4.3.1"
    if err in (errno.EDQUOT, errno.EFBIG):
        return "5.2.2"
    if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ESTALE):
        return "4.2.0"
    return default
