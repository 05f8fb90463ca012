"""mta.smtpd.decision - what one restriction answers (mta.smtpd.restrictions and the checks beside it).

    Decision(action, reply=None, hold=None, errorClass="policy")

action is permit, reject, defer, dunno, hold, or Postfix's deferred forms
defer_if_reject and defer_if_permit (RestrictionList.evaluate turns those
into a defer when a reject, or a permit, follows), or one that only has
an effect and goes on: prepend (a header for the message), warn and info
(a log line), warn_if_reject, redirect and bcc (the message's recipients
change at the end of data); discard (accept the message and drop it:
nothing else is evaluated); restrictions (an access value that names a
restriction class or is a restriction list, evaluated in its place).

SECURITY
    None: a value type.

CONFIGURATION
    None.
"""

import attrs

from mta.model import Reply


@attrs.frozen
class Decision:
    action: str  # permit, reject, defer, dunno, hold, defer_if_reject, defer_if_permit
    reply: Reply | None = None
    hold: str | None = None  # set on the final decision when a HOLD action was met on the way
    # The notify_classes class of a reject or defer (Postfix's smtpd_check_reject error_class):
    # policy, bounce (an unknown recipient), data (a table lookup failure), software.
    errorClass: str = "policy"
    text: str | None = None  # prepend: the header; warn, info: what to log; discard: the reason;
    # redirect, bcc: the address; restrictions: the access value (a class name or a restriction list)
    subject: tuple | None = None  # restrictions: (name, class) of the table lookup that gave the value


PERMIT = Decision("permit")
DUNNO = Decision("dunno")

__all__ = ["DUNNO", "PERMIT", "Decision"]
