"""mta.bounce - delivery status notifications, as Postfix's bounce(8) writes them.

SYNOPSIS
    notice = buildNotice("failure", envelope, [(recipient, result), ...],
                         queueId=..., reportingMTA=..., arrivalTime=..., now=...,
                         original=lambda: readContent(path, offset, length),
                         myhostname=...)
    if notice is not None:
        sender, to, message = notice    # queue with notice.body, notice.smtputf8

DESCRIPTION
    Pure functions; the only I/O is reading the original through the
    C{original} callable, and only as far as needed (its header section,
    or bounce_size_limit + 1 bytes).

    buildNotice(kind, envelope, recipients, ...) -> Notice | None
        kind: "failure" (bounce), "delay" (warning) or "success" (NOTIFY=
        SUCCESS).  recipients: (recipient, result) pairs or (recipient,
        result, action) triples; recipient is a model.Recipient or
        DeliveryRecipient, result a model.RecipientResult.  A Notice is the
        tuple (sender, to, message bytes, CRLF) plus .body ("7BIT" or
        "8BITMIME") and .smtputf8.  None: nothing to send (no recipient's
        NOTIFY asks for it, or the message is itself a postmaster notice).
        The message is Postfix's: From: MAILER-DAEMON@$myorigin (Mail
        Delivery System), its Subjects, Auto-Submitted: auto-replied
        (auto-generated for postmaster copies), multipart/report;
        report-type=delivery-status with (1) text/plain, the bounce(5)
        template text and "<address> (expanded from <orig>): reason" lines
        wrapped at 79 columns (no template text in postmaster copies);
        (2) message/delivery-status: Reporting-MTA, Original-Envelope-Id,
        X-Mta-Queue-ID, X-Mta-Sender, Arrival-Date, then per recipient
        Final-Recipient, Original-Recipient, Action, Status, Remote-MTA,
        Diagnostic-Code (the transport's, or "X-Mta; text"),
        Last-Attempt-Date and, in delay notices, Will-Retry-Until;
        (3) the original after a "Return-Path: <sender>" line, as
        message/rfc822 or text/rfc822-headers.  What is returned, as in
        Postfix's bounce_{notify,warn,trace}_service.c: failure to sender:
        headers if RET=HDRS, else the whole message; delay and success:
        headers; postmaster copy: headers; double bounce (postmaster copy
        of a null-sender message): whole.  A message over bounce_size_limit
        gives headers only, so its MIME structure is never cut
        (bounce_original()); so do BODY=BINARYMIME and a line over 998
        octets.  The returned header section is cut at a field boundary at
        bounce_size_limit.  An unreadable original (OSError,
        CorruptQueueFile) leaves part 3 out: some notice beats none.
    Success Action (RFC 3461 6.2.4, Postfix's smtp_rcpt_done): "relayed"
        when result.remote_mta is set (SMTP, and LMTP with Postfix's
        default lmtp_assume_final=no), else "delivered"; a triple's action
        overrides it ("expanded", "delivered" for a final LMTP).  When the
        next hop announced DSN, NOTIFY travels on and the transport must
        not ask for a success notice.
    SMTPUTF8 (RFC 6533): when an address (sender, recipient) is not
        ASCII, or the envelope had SMTPUTF8 and the returned headers are
        not ASCII, the notice is "global": message/global-delivery-status
        with "utf-8" addresses (utf-8-addr-unitext), message/global or
        message/global-headers, UTF-8 headers (RFC 6532), .smtputf8 true.
        Otherwise it is US-ASCII, and 8bit (.body "8BITMIME", CTE 8bit on
        the part and the multipart, as Postfix) only when the returned
        original holds 8-bit octets.
    shouldNotify(kind, recipient): RFC 3461 NOTIFY; none given means
        FAILURE,DELAY; NEVER means none.  Postmaster copies ignore it
        (Postfix's DSN_NOTIFY_OVERRIDE).
    isBounce(envelope): the null sender.  Never bounce a bounce:
        buildNotice raises ValueError for a notice to the null sender; the
        caller sends a double bounce (postmasterCopy=True) to
        2bounce_notice_recipient if notify_classes says so, or logs and
        drops it.
    isDoubleBounce(envelope, ...), doubleBounceAddress(...): the sender is
        double_bounce_sender@$myorigin, the sender of every postmaster
        notice; one that fails is dropped ("undeliverable postmaster
        notification discarded"), never reported (buildNotice: None).

    ENVID and ORCPT appear xtext-decoded, as RFC 3461 4.2 and 4.4 imply
    ("Due to limitations in the Delivery Status Notification format, the
    value of the ENVID parameter prior to encoding as "xtext" MUST consist
    entirely of printable (graphic and white space) characters") and as
    Postfix does; ORCPT as stored ("rfc822;addr"), except that type utf-8
    is re-encoded as RFC 6533 utf-8-addr-xtext (-unitext in a global
    notice), so a non-ASCII ORCPT alone keeps the notice ASCII.

    Where this differs from Postfix, on purpose: Original-Recipient only
    from ORCPT (RFC 3461 6.3 d, "If no ORCPT parameter was provided for
    this recipient, the Original-Recipient field MUST NOT appear"; Postfix
    adds the pre-rewrite address anyway); Last-Attempt-Date is written
    (#if 0 in Postfix); dates are UTC; the boundary (Postfix's
    queueid.time/myhostname) is made unique against the content; the
    field prefix is X-<Mail_name>- (specials to "-", first letter upper).

SECURITY
    Untrusted: addresses, ENVID, ORCPT (checked by mta.address, but a queue
    file can be damaged), remote reply texts and the whole original.  Each
    header and DSN field value passes _clean(): controls (CR, LF, TAB, NUL,
    DEL, C1), U+2028/2029 become spaces, surrogates and, in an ASCII
    notice, non-ASCII become "?", length is cut at 900 octets; so nothing
    can start a header line or a MIME part and no line passes 998 octets.
    DSN fields are folded at spaces only (the stock policy would make long
    tokens into RFC 2047 encoded-words, which DSN fields may not hold).
    The original is copied byte for byte (line ends made CRLF); the
    boundary cannot occur in it.  Reading is bounded as said above.

CONFIGURATION
    None read here; the caller passes Postfix's parameters:
    bounce_size_limit (50000)              -> bounceSizeLimit (0: none)
    notify_classes (resource, software)    the caller's choice of copies:
        "bounce": copy of each bounce to bounce_notice_recipient;
        "2bounce" (or "bounce"): double bounces to 2bounce_notice_recipient;
        "delay": copy of each delay warning to delay_notice_recipient
    bounce_notice_recipient, 2bounce_notice_recipient,
    delay_notice_recipient (postmaster)   -> postmaster= (with postmasterCopy)
    error_notice_recipient (postmaster)    SMTP session transcripts (mta.transcript);
                                           unused here
    delay_warning_time (0h: no warnings)   when to warn is the caller's;
                                           -> delayWarningTime (the text)
    maximal_queue_lifetime (5d)            -> maximalQueueLifetime
    double_bounce_sender (double-bounce)   -> doubleBounceSender
    myhostname, myorigin ($myhostname), mail_name (mta)
    backwards_bounce_logfile_compatibility: irrelevant (no bounce logs).

STANDARDS
    RFC 3461, 3463, 3464, 6522 (was 3462), 6531-6533, 3834, 5322.
"""

from __future__ import annotations

import datetime
import email.generator
import email.policy
import email.utils
import io
import re
import unicodedata
from email.message import EmailMessage, Message, MIMEPart
from operator import itemgetter

from mta.queue.fileformat import CorruptQueueFile

__all__ = [
    "DELAY",
    "FAILURE",
    "KINDS",
    "SUCCESS",
    "Notice",
    "buildNotice",
    "doubleBounceAddress",
    "isBounce",
    "isDoubleBounce",
    "shouldNotify",
]

FAILURE = "failure"
DELAY = "delay"
SUCCESS = "success"
KINDS = (FAILURE, DELAY, SUCCESS)

MAIL_DAEMON = "MAILER-DAEMON"

# Postfix's built-in templates (bounce_templates.c), Subject and
# Postmaster-Subject.
_SUBJECTS = {
    FAILURE: ("Undelivered Mail Returned to Sender", "Postmaster Copy: Undelivered Mail"),
    DELAY: ("Delayed Mail (still being retried)", "Postmaster Warning: Delayed Mail"),
    SUCCESS: ("Successful Mail Delivery Report", "Successful Mail Delivery Report"),
}

_ACTIONS = frozenset(("failed", "delayed", "delivered", "relayed", "expanded"))
_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")
_DEFAULT_STATUS = {FAILURE: "5.0.0", DELAY: "4.0.0", SUCCESS: "2.0.0"}

# A DSN field value or header value is cut at this many octets, so that no
# line of the notice can exceed RFC 5322's 998 (name + value + folding).
_VALUE_LIMIT = 900
# RFC 5322 2.1.1: a line is at most 998 octets without its CRLF.
_MAX_LINE = 998
# Text lines: Postfix's bounce_print_wrap() (LENGTH 79, INDENT 4).
_WRAP_WIDTH = 79
_WRAP_INDENT = 4

# RFC 822 field name followed by a colon (Postfix's is_header()).
_HEADER_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")
# RFC 3461 / RFC 6533 QCHAR: printable ASCII except "+", "=" and "\".
_QCHAR = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("+=\\")
_ATOM_JUNK = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~-]")


# -- the notice --------------------------------------------------------------


class Notice(tuple):
    """
    (sender, to, message): the envelope sender of the notice, its one
    recipient and the message bytes (CRLF line ends).  Also C{body}
    ("7BIT" or "8BITMIME", for the queue's envelope) and C{smtputf8}
    (the notice needs SMTPUTF8 on its way out).
    """

    def __new__(cls, sender, to, message, *, body="7BIT", smtputf8=False):
        self = super().__new__(cls, (sender, to, message))
        self.body = body
        self.smtputf8 = smtputf8
        return self

    sender = property(itemgetter(0))
    to = property(itemgetter(1))
    message = property(itemgetter(2))


# -- NOTIFY and double bounces ---------------------------------------------------


def shouldNotify(kind, recipient):
    """
    Whether C{recipient} (with a C{notify} tuple, as in mta.model) wants a
    notice of this C{kind} (RFC 3461 section 4.1): no NOTIFY means FAILURE
    and DELAY; NEVER means none; otherwise the kind must be listed.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    notify = tuple(str(v).upper() for v in (getattr(recipient, "notify", None) or ()))
    if not notify:
        return kind in (FAILURE, DELAY)
    if "NEVER" in notify:
        return False
    return kind.upper() in notify


def isBounce(envelope):
    """True when C{envelope} has the null sender: its failures are never
    reported to the sender (never bounce a bounce)."""
    return envelope.sender in ("", "<>")


def doubleBounceAddress(doubleBounceSender="double-bounce", myorigin="localhost"):
    """Postfix's double_bounce_sender, qualified with @$myorigin."""
    return _qualify(doubleBounceSender, myorigin)


def isDoubleBounce(envelope, doubleBounceSender="double-bounce", myorigin="localhost"):
    """True when C{envelope} is a postmaster notice (its sender is the
    double-bounce address): if it fails, drop it and log, never notify."""
    return envelope.sender.lower() == doubleBounceAddress(doubleBounceSender, myorigin).lower()


def _qualify(address, domain):
    return address if "@" in address else f"{address}@{domain}"


# -- building ------------------------------------------------------------------


def buildNotice(
    kind,
    envelope,
    recipients,
    *,
    queueId,
    reportingMTA,
    arrivalTime,
    now,
    original,
    myhostname,
    postmasterCopy=False,
    postmaster="postmaster",
    bounceSizeLimit=50000,
    myorigin=None,
    mailName="mta",
    delayWarningTime=None,
    maximalQueueLifetime=5 * 86400,
    doubleBounceSender="double-bounce",
    messageId=None,
):
    """
    Build a delivery status notification; see the module docstring.

    @param kind: "failure", "delay" or "success".
    @param envelope: the original message's mta.model.Envelope (sender,
        ret, envid, smtputf8, body).
    @param recipients: (recipient, result) pairs or (recipient, result,
        action) triples, one per recipient to report.
    @param queueId: the original's queue id (X-Mta-Queue-ID, Message-Id).
    @param reportingMTA: the name for Reporting-MTA (usually $myhostname).
    @param arrivalTime, now: POSIX times (Arrival-Date; Date,
        Last-Attempt-Date).
    @param original: a callable returning an iterable of the original
        content's bytes chunks, or None when it is not available.
    @param postmasterCopy: a copy for C{postmaster} (a postmaster notice,
        or a double bounce when the envelope's sender is null) instead of
        the notice to the sender.
    @param postmaster: bounce_notice_recipient, 2bounce_notice_recipient
        or delay_notice_recipient; qualified with @$myorigin if bare.
    @return: a L{Notice}, or None when there is nothing to send.
    @raise ValueError: unknown kind, or a notice to the null sender.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notice kind {kind!r}")
    myorigin = myorigin or myhostname
    doubleBounce = doubleBounceAddress(doubleBounceSender, myorigin)
    items = [_item(entry) for entry in recipients]

    if postmasterCopy:
        if envelope.sender.lower() == doubleBounce.lower():
            return None  # a postmaster notice failed: never a triple bounce
        sender, to = doubleBounce, _qualify(postmaster, myorigin)
    else:
        if isBounce(envelope):
            raise ValueError("never bounce a bounce: use postmasterCopy=True or drop it")
        sender, to = "", envelope.sender
        items = [item for item in items if shouldNotify(kind, item[0])]
    if not items:
        return None

    # What to return of the original (module docstring).
    if kind != FAILURE and not (postmasterCopy and isBounce(envelope)):
        full = False
    elif postmasterCopy:
        full = isBounce(envelope)
    else:
        full = (envelope.ret or "FULL").upper() != "HDRS"
    if envelope.body == "BINARYMIME":
        full = False
    returned = _readOriginal(original, full, bounceSizeLimit)

    # A non-ASCII ORCPT alone does not make the notice global: it travels
    # as utf-8-addr-xtext, so the notice still reaches a non-SMTPUTF8 sender.
    addresses = [envelope.sender, to]
    for recipient, _, _ in items:
        addresses.append(recipient.address)
        addresses.append(getattr(recipient, "original", None) or "")
    utf8 = not all(a.isascii() for a in addresses)
    if envelope.smtputf8 and returned is not None and not _headerBytes(returned[0]).isascii():
        utf8 = True

    policy = _NoticePolicy(linesep="\r\n", max_line_length=78, cte_type="8bit", utf8=utf8)
    token = _mailNameToken(mailName)
    subject = _SUBJECTS[kind][1 if postmasterCopy else 0]

    msg = EmailMessage(policy=policy)
    msg["From"] = _Raw(f"{MAIL_DAEMON}@{_clean(myorigin, utf8)} (Mail Delivery System)")
    msg["Subject"] = subject
    msg["To"] = _Raw(_clean(to, utf8))
    msg["Auto-Submitted"] = "auto-generated" if postmasterCopy else "auto-replied"
    msg["Date"] = email.utils.format_datetime(_utc(now))
    msg["Message-Id"] = messageId or _messageId(now, queueId, kind, postmasterCopy, myhostname)
    msg["MIME-Version"] = "1.0"
    msg.preamble = "This is a MIME-encapsulated message."

    texts = _humanText(kind, items, postmasterCopy, myhostname, utf8, now, arrivalTime,
                       delayWarningTime, maximalQueueLifetime)
    textPart = MIMEPart(policy=policy)
    textPart.set_content(texts, subtype="plain", charset="us-ascii" if texts.isascii() else "utf-8",
                         cte="7bit" if texts.isascii() else "8bit")
    textPart["Content-Description"] = "Notification"  # after set_content, which clears Content-*

    blocks = [_perMessageBlock(policy, envelope, queueId, reportingMTA, arrivalTime, token, utf8)]
    for recipient, result, action in items:
        blocks.append(_recipientBlock(policy, kind, recipient, result, action, now, arrivalTime,
                                      maximalQueueLifetime, token, utf8))
    dsnPart = MIMEPart(policy=policy)
    dsnPart["Content-Description"] = "Delivery report"
    dsnPart["Content-Type"] = "message/global-delivery-status" if utf8 else "message/delivery-status"
    dsnPart.set_payload(blocks)
    if utf8:
        dsnPart["Content-Transfer-Encoding"] = "8bit"

    parts = [textPart, dsnPart]
    eightBit = False
    if returned is not None:
        data, isFull = returned
        data = _returnPath(envelope.sender, utf8) + data
        eightBit = not data.isascii()
        undelivered = "Undelivered " if kind != SUCCESS else ""
        origPart = MIMEPart(policy=policy)
        origPart["Content-Description"] = undelivered + ("Message" if isFull else "Message Headers")
        if utf8:
            origPart["Content-Type"] = "message/global" if isFull else "message/global-headers"
        else:
            origPart["Content-Type"] = "message/rfc822" if isFull else "text/rfc822-headers"
        if eightBit:
            origPart["Content-Transfer-Encoding"] = "8bit"
        origPart.set_payload(data.decode("ascii", "surrogateescape"))
        parts.append((origPart, data))

    msg["Content-Type"] = "multipart/report"
    msg.set_param("report-type", "delivery-status")
    msg.set_param("boundary", _boundary(queueId, now, myhostname, texts, parts))
    if eightBit or utf8:
        msg["Content-Transfer-Encoding"] = "8bit"
    for part in parts:
        msg.attach(part[0] if isinstance(part, tuple) else part)

    out = io.BytesIO()
    _NoticeGenerator(out, policy=policy).flatten(msg)
    message = out.getvalue()
    return Notice(sender, to, message, body="7BIT" if message.isascii() else "8BITMIME", smtputf8=utf8)


def _item(entry):
    if len(entry) == 2:
        recipient, result = entry
        action = None
    elif len(entry) == 3:
        recipient, result, action = entry
        if action is not None and action not in _ACTIONS:
            raise ValueError(f"unknown DSN action {action!r}")
    else:
        raise ValueError("a recipient entry is (recipient, result) or (recipient, result, action)")
    return recipient, result, action


def _utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc)


def _date(t):
    return email.utils.format_datetime(_utc(t))


def _messageId(now, queueId, kind, postmasterCopy, myhostname):
    stamp = _utc(now).strftime("%Y%m%d%H%M%S")
    qid = re.sub(r"[^A-Za-z0-9]", "", queueId) or "0"
    tag = kind[0].upper() + ("P" if postmasterCopy else "")
    host = re.sub(r"[^A-Za-z0-9.-]", "", myhostname) or "localhost"
    return f"<{stamp}.{qid}.{tag}@{host}>"


def _mailNameToken(mailName):
    """mail_name as an RFC 822 atom (Postfix transliterates specials to "-")."""
    token = re.sub(r"[^A-Za-z0-9-]", "-", mailName.strip())[:40] or "mta"
    return token[0].upper() + token[1:]


def _boundary(queueId, now, myhostname, text, parts):
    """Postfix's boundary, queueid.time/myhostname, made unique against every body."""
    base = re.sub(r"[^A-Za-z0-9]", "", queueId) + f".{int(now)}/" + re.sub(r"[^A-Za-z0-9.-]", "", myhostname)
    bodies = [text.encode("utf-8")] + [part[1] for part in parts if isinstance(part, tuple)]
    boundary, n = base, 0
    while any(boundary.encode("ascii") in body for body in bodies):
        boundary = f"{base}.{n}"
        n += 1
    return boundary


# -- sanitising and folding -------------------------------------------------------


def _clean(text, utf8, limit=_VALUE_LIMIT):
    """
    C{text} made safe for one header or DSN field line: controls, line and
    paragraph separators become spaces, surrogates (and non-ASCII in an
    ASCII notice) "?", leading/trailing space stripped, at most C{limit}
    octets.
    """
    out = []
    for c in str(text):
        if c.isascii():
            out.append(" " if (c < " " or c == "\x7f") else c)
            continue
        cat = unicodedata.category(c)
        if cat in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif cat == "Cs" or not utf8:
            out.append("?")
        else:
            out.append(c)
    cleaned = "".join(out).strip(" ")
    if len(cleaned.encode("utf-8")) > limit:
        cleaned = cleaned.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip(" ")
    return cleaned


def _textClean(text, utf8):
    """Like _clean, for the human-readable text (white space collapsed)."""
    return " ".join(_clean(text, utf8, limit=4 * _VALUE_LIMIT).split())


class _Raw(str):
    """A header value already made safe by _clean(); folded at spaces only."""


def _foldRaw(name, value, maxlen, linesep):
    """C{name}: C{value} folded before spaces; a longer word is never split."""
    line = f"{name}: {value}"
    lines = []
    start = len(name) + 2
    while len(line) > maxlen:
        cut = line.rfind(" ", start, maxlen + 1)
        if cut == -1:
            cut = line.find(" ", maxlen + 1)
        # Never leave a line (or the rest) that is nothing but white space.
        while cut != -1 and not line[cut:].strip(" "):
            cut = -1
        if cut == -1 or not line[:cut].strip(" "):
            break
        lines.append(line[:cut])
        line = line[cut:]
        start = 1
    lines.append(line)
    return linesep.join(lines) + linesep


class _NoticePolicy(email.policy.EmailPolicy):
    """
    The email package's SMTP policy, except that _Raw values (DSN fields,
    addresses) are stored as they are and folded at spaces only.
    """

    def header_store_parse(self, name, value):
        if isinstance(value, _Raw):
            return (name, value)
        return super().header_store_parse(name, value)

    def fold(self, name, value):
        if isinstance(value, _Raw):
            return _foldRaw(name, value, self.max_line_length or _MAX_LINE, self.linesep)
        return super().fold(name, value)

    def fold_binary(self, name, value):
        if isinstance(value, _Raw):
            return self.fold(name, value).encode("utf-8" if self.utf8 else "ascii")
        return super().fold_binary(name, value)


class _NoticeGenerator(email.generator.BytesGenerator):
    """BytesGenerator that copies a message/* part's text payload byte for
    byte (surrogate-escaped 8-bit octets included) and writes
    message/global-delivery-status blocks like message/delivery-status."""

    def _encode(self, s):
        return s.encode("ascii", "surrogateescape")

    _handle_message_global_delivery_status = email.generator.BytesGenerator._handle_message_delivery_status


# -- the human-readable part ------------------------------------------------------


def _wrap(text, width=_WRAP_WIDTH, indent=_WRAP_INDENT):
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


def _reason(kind, result, utf8):
    text = result.text or ""
    if kind == SUCCESS and result.relay and result.relay != "none":
        text = f"delivery via {result.relay}: {text}"
    return _textClean(text, utf8) or "no reason given"


def _humanText(kind, items, postmasterCopy, myhostname, utf8, now, arrivalTime,
               delayWarningTime, maximalQueueLifetime):
    lines = []
    if not postmasterCopy:
        lines += [f"This is the mail system at host {_clean(myhostname, utf8)}.", ""]
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
        address = _textClean(recipient.address, utf8)
        originalAddress = getattr(recipient, "original", None)
        if originalAddress and originalAddress != recipient.address:
            head = f"<{address}> (expanded from <{_textClean(originalAddress, utf8)}>)"
        else:
            head = f"<{address}>"
        lines.append("")
        lines += _wrap(f"{head}: {_reason(kind, result, utf8)}")
    return "\n".join(lines) + "\n"


# -- the delivery-status part -------------------------------------------------------


def _block(policy, fields):
    block = Message(policy=policy)
    for name, value in fields:
        block[name] = _Raw(value)
    return block


def _utf8Addr(address, unitext):
    """RFC 6533 utf-8-addr-xtext (or -unitext: non-ASCII left raw)."""
    out = []
    for c in address:
        if c in _QCHAR or (unitext and not c.isascii()):
            out.append(c)
        else:
            out.append(f"\\x{{{ord(c):X}}}")
    return "".join(out)


def _addressField(address, utf8):
    """address-type "; " generic-address for Final-Recipient and X-Mta-Sender."""
    address = _clean(address, True)
    if address.isascii():
        return f"rfc822; {address}"
    return f"utf-8; {_utf8Addr(address, unitext=utf8)}"


def _orcptField(orcpt, utf8):
    addrType, semi, address = orcpt.partition(";")
    addrType = _ATOM_JUNK.sub("", addrType) or "unknown"
    if not semi:
        addrType, address = "unknown", orcpt
    address = _clean(address, True)
    if addrType.lower() == "utf-8" or not address.isascii():
        return f"utf-8;{_utf8Addr(address, unitext=utf8)}"
    return f"{addrType};{address}"


def _typedField(value, defaultType, utf8):
    """'type; text' with a clean atom type (Remote-MTA, Diagnostic-Code)."""
    value = _clean(value, utf8)
    dtype, semi, text = value.partition(";")
    dtype = dtype.strip(" ")
    if not semi or not dtype or _ATOM_JUNK.search(dtype):
        return f"{defaultType}; {value}"
    return f"{dtype}; {text.strip(' ')}"


def _perMessageBlock(policy, envelope, queueId, reportingMTA, arrivalTime, token, utf8):
    fields = [("Reporting-MTA", f"dns; {_clean(reportingMTA, utf8)}")]
    if envelope.envid:
        fields.append(("Original-Envelope-Id", _clean(envelope.envid, utf8)))
    fields.append((f"X-{token}-Queue-ID", _clean(queueId, utf8)))
    sender = envelope.sender if not isBounce(envelope) else MAIL_DAEMON
    fields.append((f"X-{token}-Sender", _addressField(sender, utf8)))
    if arrivalTime and arrivalTime > 0:
        fields.append(("Arrival-Date", _date(arrivalTime)))
    return _block(policy, fields)


def _recipientBlock(policy, kind, recipient, result, action, now, arrivalTime, maximalQueueLifetime, token, utf8):
    fields = [("Final-Recipient", _addressField(recipient.address, utf8))]
    if recipient.orcpt:
        fields.append(("Original-Recipient", _orcptField(recipient.orcpt, utf8)))
    if kind == FAILURE:
        action = "failed"
    elif kind == DELAY:
        action = "delayed"
    elif action is None:
        action = "relayed" if result.remote_mta else "delivered"
    fields.append(("Action", action))
    status = result.dsn if isinstance(result.dsn, str) and _STATUS.fullmatch(result.dsn) else _DEFAULT_STATUS[kind]
    fields.append(("Status", status))
    if result.remote_mta:
        fields.append(("Remote-MTA", _typedField(result.remote_mta, "dns", utf8)))
    if result.diagnostic:
        fields.append(("Diagnostic-Code", _typedField(result.diagnostic, f"X-{token}", utf8)))
    else:
        fields.append(("Diagnostic-Code", f"X-{token}; {_clean(result.text or '', utf8)}".rstrip(" ")))
    fields.append(("Last-Attempt-Date", _date(now)))
    if kind == DELAY:
        fields.append(("Will-Retry-Until", _date(arrivalTime + maximalQueueLifetime)))
    return _block(policy, fields)


# -- the original message ------------------------------------------------------------


def _readOriginal(original, full, limit):
    """
    Read what is needed of the original: (bytes with CRLF line ends, full)
    where full says whether it is the whole message or only its header
    section; None when there is no original or it cannot be read.
    """
    if original is None:
        return None
    buf = bytearray()
    complete = True
    try:
        chunks = iter(original())
        try:
            for chunk in chunks:
                scanFrom = max(len(buf) - 2, 0)
                buf += chunk
                if full:
                    if limit > 0 and len(buf) > limit:
                        full = False  # too big: headers only (bounce_original)
                        scanFrom = 0
                    else:
                        continue
                if _endOfHeaders(buf, scanFrom) or (limit > 0 and len(buf) > limit):
                    complete = False
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except (OSError, CorruptQueueFile):
        return None
    data = bytes(buf)
    if not complete:
        # Drop a partial last line (we stopped reading in the middle).
        data = data[: data.rfind(b"\n") + 1]
    data = _ANY_NEWLINE.sub(b"\r\n", data)
    if full:
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        if any(len(line) > _MAX_LINE for line in data.split(b"\r\n")):
            full = False
        else:
            return data, True
    return _headerSection(data, limit), False


def _endOfHeaders(buf, start=0):
    """Whether C{buf} holds the empty line that ends the header section
    (looking only from C{start}: reading is linear, not quadratic)."""
    if buf.startswith(b"\r\n") or buf.startswith(b"\n"):
        return True
    return buf.find(b"\n\r\n", start) != -1 or buf.find(b"\n\n", start) != -1


def _headerSection(data, limit):
    """The header fields at the start of C{data} (Postfix's IS_HEADER test),
    whole fields only, at most C{limit} octets when C{limit} > 0."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    fields = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif _HEADER_START.match(line):
            fields.append([line])
        else:
            break
    out, total = [], 0
    for field in fields:
        if any(len(line) > _MAX_LINE for line in field):
            continue
        text = b"".join(line + b"\r\n" for line in field)
        if limit > 0 and total + len(text) > limit:
            break
        out.append(text)
        total += len(text)
    return b"".join(out)


def _headerBytes(data):
    end = data.find(b"\r\n\r\n")
    return data if end == -1 else data[:end]


def _returnPath(sender, utf8):
    return b"Return-Path: <" + _clean(sender, utf8).encode("utf-8") + b">\r\n"
