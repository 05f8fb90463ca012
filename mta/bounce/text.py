"""mta.bounce.text - the notice texts: Subjects and the human-readable part, as Postfix's bounce(5) templates.

humanText() is the text/plain part: for the sender, Postfix's built-in
templates (bounce_templates.c: failure, delay, success), then one
"<address> (expanded from <orig>): reason" paragraph per recipient,
wrapped as bounce_print_wrap() does (79 columns, continuation lines
indented by 4); a postmaster copy has the paragraphs only.  SUBJECTS are
the templates' Subject and Postmaster-Subject.

SECURITY
    Addresses and reasons (remote reply texts) are untrusted: they pass
    textClean() (mta.bounce.fields).

CONFIGURATION
    None: delay_warning_time and maximal_queue_lifetime come as arguments.
"""

from mta.bounce.common import DELAY, FAILURE, SUCCESS
from mta.bounce.fields import clean, textClean


# Postfix's built-in templates (bounce_templates.c), Subject and
# Postmaster-Subject.
SUBJECTS = {
    FAILURE: ("Undelivered Mail Returned to Sender", "Postmaster Copy: Undelivered Mail"),
    DELAY: ("Delayed Mail (still being retried)", "Postmaster Warning: Delayed Mail"),
    SUCCESS: ("Successful Mail Delivery Report", "Successful Mail Delivery Report"),
}


# Text lines: Postfix's bounce_print_wrap() (LENGTH 79, INDENT 4).
WRAP_WIDTH = 79
WRAP_INDENT = 4


def wrap(text, width=WRAP_WIDTH, indent=WRAP_INDENT):
    """Postfix's line_wrap(): break at spaces, continuation lines indented."""
    words = text.split(" ")
    lines, line = [], ""
    for word in words:
        if not word:
            continue
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = " " * indent + word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return lines


def reason(kind, result, utf8):
    text = result.text or ""
    if kind == SUCCESS and result.relay and result.relay != "none":
        text = f"delivery via {result.relay}: {text}"
    return textClean(text, utf8) or "no reason given"


def humanText(kind, items, postmasterCopy, myhostname, utf8, now, arrivalTime,
               delayWarningTime, maximalQueueLifetime):
    lines = []
    if not postmasterCopy:
        lines += [f"This is the mail system at host {clean(myhostname, utf8)}.", ""]
        if kind == FAILURE:
            lines += [
                "I'm sorry to have to inform you that your message could not",
                "be delivered to one or more recipients. It's attached below.",
            ]
        elif kind == DELAY:
            if delayWarningTime is None:
                delayWarningTime = max(now - arrivalTime, 0)
            hours = int(delayWarningTime // 3600)
            days = int(maximalQueueLifetime // 86400)
            lines += [
                "####################################################################",
                "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
                "####################################################################",
                "",
                f"Your message could not be delivered for more than {hours} hour(s).",
                f"It will be retried until it is {days} day(s) old.",
            ]
        else:
            lines += [
                "Your message was successfully delivered to the destination(s)",
                "listed below. If the message was delivered to mailbox you will",
                "receive no further notifications. Otherwise you may still receive",
                "notifications of mail delivery errors from other systems.",
            ]
        if kind != SUCCESS:
            lines += [
                "",
                "For further assistance, please send mail to postmaster.",
                "",
                "If you do so, please include this problem report. You can",
                "delete your own text from the attached returned message.",
            ]
        lines += ["", "                   The mail system"]
    for recipient, result, _ in items:
        address = textClean(recipient.address, utf8)
        originalAddress = getattr(recipient, "original", None)
        if originalAddress and originalAddress != recipient.address:
            head = f"<{address}> (expanded from <{textClean(originalAddress, utf8)}>)"
        else:
            head = f"<{address}>"
        lines.append("")
        lines += wrap(f"{head}: {reason(kind, result, utf8)}")
    return "\n".join(lines) + "\n"
