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
    or bounce_size_limit + 1 bytes).  The package, one module a part of
    the notice (this module assembles them: buildNotice):
        common.py    the kinds, the DSN actions, dates, isBounce()
        fields.py    values made safe for header and DSN field lines; the
                     email policy that folds them
        text.py      the notice texts: Subjects, the human-readable part
                     (Postfix's bounce(5) templates)
        report.py    the RFC 3464 delivery-status fields
        original.py  what is returned of the original message

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
    REQUIRETLS (RFC 8689 5, Postfix's requiretls_redact_dsn = yes): a
        notice about a message received with REQUIRETLS returns its headers
        only (as RET=HDRS) and is queued without REQUIRETLS, because the
        reverse path may lack it; with requiretls_redact_dsn = no it returns
        what RET asks and is queued with REQUIRETLS (Notice.requiretls).
        A "TLS-Required: No" original (without REQUIRETLS) gives the notice
        a "TLS-Required: No" header too (tls_required_enable).
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

import email.utils
import io
import re
from email.message import EmailMessage, MIMEPart
from operator import itemgetter

from mta.bounce.common import ACTIONS, DELAY, FAILURE, KINDS, MAIL_DAEMON, SUCCESS, isBounce, utc
from mta.bounce.fields import NoticeGenerator, NoticePolicy, Raw, clean
from mta.bounce.original import headerBytes, readOriginal, returnPath
from mta.bounce.report import mailNameToken, perMessageBlock, recipientBlock
from mta.bounce.text import SUBJECTS, humanText

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

_utc = utc  # the dates of a notice are UTC (tests compare with it)


# -- the notice --------------------------------------------------------------


class Notice(tuple):
    """
    (sender, to, message): the envelope sender of the notice, its one
    recipient and the message bytes (CRLF line ends).  Also C{body}
    ("7BIT" or "8BITMIME", for the queue's envelope) and C{smtputf8}
    (the notice needs SMTPUTF8 on its way out).
    """

    def __new__(cls, sender, to, message, *, body="7BIT", smtputf8=False, requiretls=False):
        self = super().__new__(cls, (sender, to, message))
        self.body = body
        self.smtputf8 = smtputf8
        self.requiretls = requiretls  # RFC 8689: queue the notice with REQUIRETLS (not redacted)
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
    requiretlsRedact=True,
    tlsRequiredEnable=True,
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
    # RFC 8689 5 (requiretls_redact_dsn): a REQUIRETLS original comes back as headers only, and the
    # notice goes without REQUIRETLS (the reverse path may not have it); unredacted, it keeps it.
    requiretls = bool(getattr(envelope, "requiretls", False))
    if requiretls and requiretlsRedact:
        full = False
    returned = readOriginal(original, full, bounceSizeLimit)

    # A non-ASCII ORCPT alone does not make the notice global: it travels
    # as utf-8-addr-xtext, so the notice still reaches a non-SMTPUTF8 sender.
    addresses = [envelope.sender, to]
    for recipient, _, _ in items:
        addresses.append(recipient.address)
        addresses.append(getattr(recipient, "original", None) or "")
    utf8 = not all(a.isascii() for a in addresses)
    if envelope.smtputf8 and returned is not None and not headerBytes(returned[0]).isascii():
        utf8 = True

    policy = NoticePolicy(linesep="\r\n", max_line_length=78, cte_type="8bit", utf8=utf8)
    token = mailNameToken(mailName)
    subject = SUBJECTS[kind][1 if postmasterCopy else 0]

    msg = EmailMessage(policy=policy)
    msg["From"] = Raw(f"{MAIL_DAEMON}@{clean(myorigin, utf8)} (Mail Delivery System)")
    msg["Subject"] = subject
    msg["To"] = Raw(clean(to, utf8))
    msg["Auto-Submitted"] = "auto-generated" if postmasterCopy else "auto-replied"
    msg["Date"] = email.utils.format_datetime(utc(now))
    msg["Message-Id"] = messageId or _messageId(now, queueId, kind, postmasterCopy, myhostname)
    msg["MIME-Version"] = "1.0"
    if getattr(envelope, "tls_required_no", False) and not requiretls and tlsRequiredEnable:
        msg["TLS-Required"] = "No"  # RFC 8689 5, Postfix's tls_required_enable: the notice is as lax
    msg.preamble = "This is a MIME-encapsulated message."

    texts = humanText(kind, items, postmasterCopy, myhostname, utf8, now, arrivalTime,
                       delayWarningTime, maximalQueueLifetime)
    textPart = MIMEPart(policy=policy)
    textPart.set_content(texts, subtype="plain", charset="us-ascii" if texts.isascii() else "utf-8",
                         cte="7bit" if texts.isascii() else "8bit")
    textPart["Content-Description"] = "Notification"  # after set_content, which clears Content-*

    blocks = [perMessageBlock(policy, envelope, queueId, reportingMTA, arrivalTime, token, utf8)]
    for recipient, result, action in items:
        blocks.append(recipientBlock(policy, kind, recipient, result, action, now, arrivalTime,
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
        data = returnPath(envelope.sender, utf8) + data
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
    NoticeGenerator(out, policy=policy).flatten(msg)
    message = out.getvalue()
    return Notice(sender, to, message, body="7BIT" if message.isascii() else "8BITMIME", smtputf8=utf8,
                  requiretls=requiretls and not requiretlsRedact)


def _item(entry):
    if len(entry) == 2:
        recipient, result = entry
        action = None
    elif len(entry) == 3:
        recipient, result, action = entry
        if action is not None and action not in ACTIONS:
            raise ValueError(f"unknown DSN action {action!r}")
    else:
        raise ValueError("a recipient entry is (recipient, result) or (recipient, result, action)")
    return recipient, result, action


def _messageId(now, queueId, kind, postmasterCopy, myhostname):
    stamp = utc(now).strftime("%Y%m%d%H%M%S")
    qid = re.sub(r"[^A-Za-z0-9]", "", queueId) or "0"
    tag = kind[0].upper() + ("P" if postmasterCopy else "")
    host = re.sub(r"[^A-Za-z0-9.-]", "", myhostname) or "localhost"
    return f"<{stamp}.{qid}.{tag}@{host}>"


def _boundary(queueId, now, myhostname, text, parts):
    """Postfix's boundary, queueid.time/myhostname, made unique against every body."""
    base = re.sub(r"[^A-Za-z0-9]", "", queueId) + f".{int(now)}/" + re.sub(r"[^A-Za-z0-9.-]", "", myhostname)
    bodies = [text.encode("utf-8")] + [part[1] for part in parts if isinstance(part, tuple)]
    boundary, n = base, 0
    while any(boundary.encode("ascii") in body for body in bodies):
        boundary = f"{base}.{n}"
        n += 1
    return boundary
