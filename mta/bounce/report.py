"""mta.bounce.report - the RFC 3464 delivery-status part: per-message and per-recipient fields.

perMessageBlock() gives Reporting-MTA, Original-Envelope-Id,
X-Mail_name-Queue-ID, X-Mail_name-Sender and Arrival-Date;
recipientBlock() Final-Recipient, Original-Recipient (from ORCPT only),
Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date and, in a
delay notice, Will-Retry-Until.  Addresses that are not ASCII are RFC
6533's utf-8 type (utf-8-addr-xtext, or -unitext in a global notice); an
ORCPT of type utf-8 is re-encoded the same way.

SECURITY
    Addresses, ENVID, ORCPT and remote texts are untrusted: every value
    passes clean() (mta.bounce.fields); a type ("dns", "smtp", an ORCPT's)
    that is not an atom is replaced.

CONFIGURATION
    None: mail_name comes as the field prefix (mailNameToken()).
"""

import re
from email.message import Message

from mta.bounce.common import DELAY, FAILURE, MAIL_DAEMON, SUCCESS, date, isBounce
from mta.bounce.fields import Raw, clean

STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
DEFAULT_STATUS = {FAILURE: "5.0.0", DELAY: "4.0.0", SUCCESS: "2.0.0"}
# RFC 3461 / RFC 6533 QCHAR: printable ASCII except "+", "=" and "\".
QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("+=\\")
ATOM_JUNK = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]")


def mailNameToken(mailName):
    """mail_name as an RFC 822 atom (Postfix transliterates specials to "-")."""
    token = re.sub(r"[^A-Za-z0-9-]", "-", mailName.strip())[:40] or "mta"
    return token[0].upper() + token[1:]


def block(policy, fields):
    message = Message(policy=policy)
    for name, value in fields:
        message[name] = Raw(value)
    return message


def utf8Addr(address, unitext):
    """RFC 6533 utf-8-addr-xtext (or -unitext: non-ASCII left raw)."""
    out = []
    for c in address:
        if c in QCHAR or (unitext and not c.isascii()):
            out.append(c)
        else:
            out.append(f"\\x{{{ord(c):X}}}")
    return "".join(out)


def addressField(address, utf8):
    """address-type "; " generic-address for Final-Recipient and X-Mta-Sender."""
    address = clean(address, True)
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {utf8Addr(address, unitext=utf8)}"


def orcptField(orcpt, utf8):
    addrType, semi, address = orcpt.partition(";")
    addrType = ATOM_JUNK.sub("", addrType) or "unknown"
    if not semi:
        addrType, address = "unknown", orcpt
    address = clean(address, True)
    if addrType.lower() == "utf-8" or not address.isascii():
        return f"utf-8;{utf8Addr(address, unitext=utf8)}"
    return f"{addrType};{address}"


def typedField(value, defaultType, utf8):
    """'type; text' with a clean atom type (Remote-MTA, Diagnostic-Code)."""
    value = clean(value, utf8)
    dtype, semi, text = value.partition(";")
    dtype = dtype.strip(" ")
    if not semi or not dtype or ATOM_JUNK.search(dtype):
        return f"{defaultType}; {value}"
    return f"{dtype}; {text.strip(' ')}"


def perMessageBlock(policy, envelope, queueId, reportingMTA, arrivalTime, token, utf8):
    fields = [("Reporting-MTA", f"dns; {clean(reportingMTA, utf8)}")]
    if envelope.envid:
        fields.append(("Original-Envelope-Id", clean(envelope.envid, utf8)))
    fields.append((f"X-{token}-Queue-ID", clean(queueId, utf8)))
    sender = envelope.sender if not isBounce(envelope) else MAIL_DAEMON
    fields.append((f"X-{token}-Sender", addressField(sender, utf8)))
    if arrivalTime and arrivalTime > 0:
        fields.append(("Arrival-Date", date(arrivalTime)))
    return block(policy, fields)


def recipientBlock(policy, kind, recipient, result, action, now, arrivalTime, maximalQueueLifetime, token, utf8):
    fields = [("Final-Recipient", addressField(recipient.address, utf8))]
    if recipient.orcpt:
        fields.append(("Original-Recipient", orcptField(recipient.orcpt, utf8)))
    if kind == FAILURE:
        action = "failed"
    elif kind == DELAY:
        action = "delayed"
    elif action is None:
        action = "relayed" if result.remote_mta else "delivered"
    fields.append(("Action", action))
    status = result.dsn if isinstance(result.dsn, str) and STATUS.fullmatch(result.dsn) else DEFAULT_STATUS[kind]
    fields.append(("Status", status))
    if result.remote_mta:
        fields.append(("Remote-MTA", typedField(result.remote_mta, "dns", utf8)))
    if result.diagnostic:
        fields.append(("Diagnostic-Code", typedField(result.diagnostic, f"X-{token}", utf8)))
    else:
        fields.append(("Diagnostic-Code", f"X-{token}; {clean(result.text or '', utf8)}".rstrip(" ")))
    fields.append(("Last-Attempt-Date", date(now)))
    if kind == DELAY:
        fields.append(("Will-Retry-Until", date(arrivalTime + maximalQueueLifetime)))
    return block(policy, fields)
