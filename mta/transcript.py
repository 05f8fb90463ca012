"""mta.transcript - session transcripts and the postmaster notices made of them.

SYNOPSIS
    transcript = Transcript()               # or Transcript(maxLines=200)
    transcript.received(b"EHLO client")     # "In:  EHLO client"
    transcript.sent("250-mx.example.org")   # "Out: 250-mx.example.org"
    transcript.error("protocol")            # an error class (notify_classes)

    notices = TranscriptNotices(settings, cleanup, clock, maillog)   # NoticeSettings, mta.cleanup.Cleanup
    if notices.due(transcript):
        notices.send("SMTP server", "unknown[192.0.2.7]", transcript, reason="timeout")

DESCRIPTION
    Postfix's smtpd_chat.c and smtp_chat.c keep a history of a session (the
    command lines and replies, "In:  " and "Out: ", never message content)
    and an error mask; when the mask meets notify_classes, the history goes
    to the postmaster (smtpd_chat_notify, smtp_chat_notify).  This module is
    both halves for mta's SMTP server and client:

    Transcript keeps the lines (each cut at LINE_LIMIT characters) and the
    error classes met (a set of notify_classes names: bounce, data,
    policy, protocol, resource, software).  With maxLines it keeps the
    first maxLines/2 and the last maxLines/2 lines and says how many were
    left out between them; the server bounds its transcript as Postfix
    does instead (smtpd_history_flush_threshold, mta.smtpd.protocol).

    TranscriptNotices.send() builds the notice and queues it through the
    one cleanup (mta.cleanup, an internal origin: no Received: header, the
    header cleanup as for every message) as smtpd_chat_notify does: envelope from $double_bounce_sender
    (qualified with @$myorigin, so the notice is never bounced: the queue
    manager drops one that fails), to $bounce_notice_recipient when the
    transcript has the bounce class, else $error_notice_recipient
    (qualified with @$myorigin when bare), with

        From: Mail Delivery System <MAILER-DAEMON@$myorigin>
        To: Postmaster <RECIPIENT>
        Subject: $mail_name SMTP server: errors from CLIENT
        (SMTP client / LMTP client: errors from HOST[ADDR]:PORT)

    and a body of "Transcript of session follows.", each transcript line
    wrapped at 78 columns (continuation lines indented by 4) with every
    character outside printable ASCII made "?" and one space in front of
    every line that comes from the peer, "Session aborted, reason: ..."
    when the session ended abnormally, and "For other details, see the
    local mail logfile".  The client's notice starts with "Unexpected
    response from HOST[ADDR]:PORT.", as smtp_chat_notify's does.

    The log has cleanup's line for the new message ("NEWID:
    message-id=<...>"; the queue manager then logs "NEWID:
    from=<double-bounce@...>, size=..., nrcpt=1 (queue active)"); a notice
    that cannot be queued gives "warning: postmaster notify: REASON" under
    the caller's program, and nothing else: send() never fails, so a lost
    notice never touches the session that made it.

SECURITY
    The transcript is the peer's text: it never reaches a header line
    (the Subject carries only the peer's name and address, cleaned like
    the rest), every line of the body from it starts with a space (so it
    cannot be a header, a "From " line or a lone "."), CR, LF, NUL, TAB,
    DEL and 8-bit octets become "?", and no body line is longer than 79
    octets.  Its size is bounded: LINE_LIMIT characters a line, and a line
    count bounded by the caller (maxLines, or the server's flush
    threshold).

CONFIGURATION
    NoticeSettings (mta.config.settings.notices): notify_classes
    (resource, software), error_notice_recipient (postmaster),
    bounce_notice_recipient (postmaster), double_bounce_sender
    (double-bounce), myorigin, myhostname, mail_name.

DEVIATIONS
    The To: header names the envelope recipient (Postfix's always names
    $error_notice_recipient, also when the notice goes to
    $bounce_notice_recipient).  The notice has Date, Message-Id and
    "Auto-Submitted: auto-generated" (RFC 3834) from the start (Postfix's
    cleanup adds the first two; it has no Auto-Submitted).  Non-ASCII text
    is "?" even when it is valid UTF-8 (Postfix keeps valid UTF-8 with
    smtputf8_enable), so the notice is always 7-bit.  A word longer than a
    line is split, so no body line of the notice passes 79 octets (Postfix's
    line_wrap never splits a word).  Postfix posts a notice only when its
    cleanup service answers at once; mta's store always takes it unless
    it fails (disk full), which is logged.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections import deque

from twisted.internet.defer import succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from mta.cleanup import Origin
from mta.maillog import sanitize
from mta.model import QueueWriteError, Recipient

__all__ = ["LINE_LIMIT", "Transcript", "TranscriptNotices", "buildTranscriptNotice", "printable"]

log = Logger()

# A transcript line is cut here (Postfix's line_length_limit default: a line never holds more).
LINE_LIMIT = 2048
# smtpd_chat_notify's and smtp_chat_notify's line_wrap(): LENGTH 78, INDENT 4.
WRAP_LENGTH = 78
WRAP_INDENT = 4
MAIL_DAEMON = "MAILER-DAEMON"

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def printable(text):
    """Postfix's printable(text, '?'): every character outside printable ASCII becomes "?"."""
    return _UNPRINTABLE.sub("?", text)


def _text(data):
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)[:LINE_LIMIT].decode("latin-1")  # one character an octet: 8-bit octets become "?"
    return data[:LINE_LIMIT]


class Transcript:
    """The "In:  " and "Out: " lines of a session, bounded, and the error classes it met."""

    def __init__(self, maxLines=None):
        self.maxLines = maxLines
        self.errors = set()
        self.clear()

    def clear(self):
        """Forget the lines and the error classes (Postfix's chat_reset)."""
        self._head = []
        self._tail = deque(maxlen=self.maxLines - self.maxLines // 2) if self.maxLines else None
        self._omitted = 0
        self.errors = set()

    def __len__(self):
        """The lines kept."""
        return len(self._head) + (len(self._tail) if self._tail is not None else 0)

    def _add(self, line):
        if self.maxLines is None or len(self._head) < self.maxLines // 2:
            self._head.append(line)
            return
        if len(self._tail) == self._tail.maxlen:
            self._omitted += 1
        self._tail.append(line)

    def received(self, data):
        """A line from the peer (bytes or str, without its line end)."""
        self._add("In:  " + _text(data))

    def sent(self, data):
        """A line to the peer (bytes or str, without its line end)."""
        self._add("Out: " + _text(data))

    def sentLines(self, wire):
        """Each line of C{wire} (bytes, CRLF line ends) as sent."""
        for line in bytes(wire).split(b"\r\n"):
            if line:
                self.sent(line)

    def error(self, errorClass):
        """The session met an error of C{errorClass} (a notify_classes name)."""
        self.errors.add(errorClass)

    def lines(self):
        """The lines kept, with a line saying how many were left out in the middle."""
        if self._tail is None:
            return list(self._head)
        gap = [f"(... {self._omitted} more lines not shown ...)"] if self._omitted else []
        return self._head + gap + list(self._tail)


# -- the notice --------------------------------------------------------------------


def _wrap(text, length=WRAP_LENGTH, indent=WRAP_INDENT):
    """
    Postfix's line_wrap(): a line is broken before a word that would take
    it past C{length} columns (blanks at the break dropped), continuation
    lines are indented by C{indent}; a word longer than a line is then
    split (see DEVIATIONS).
    """
    pieces = []
    start = word = 0
    width = length
    end = len(text)
    while True:
        space = text.find(" ", word)
        if space < 0:
            space = end
        if word > start and space - start > width:
            pieces.append(text[start:word].rstrip(" "))
            while word < end and text[word] == " ":
                word += 1
            width = length - indent
            start = word
        if space >= end:
            break
        word = space + 1
    pieces.append(text[start:].rstrip(" "))
    out = []
    for piece in pieces:
        width = length - indent if out else length
        while len(piece) > width:
            out.append(piece[:width])
            piece = piece[width:]
            width = length - indent
        out.append(piece)
    return [(" " * indent if i else "") + piece for i, piece in enumerate(out)]


def _header(text, limit=200):
    """A header value from C{text}: printable ASCII only, at most C{limit} characters."""
    return printable(str(text))[:limit]


def _utc(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc)


def _messageId(now, queueId, myhostname):
    """cleanup's form: <YYYYMMDDHHMMSS.QUEUEID@myhostname>."""
    host = re.sub(r"[^A-Za-z0-9.-]", "", myhostname) or "localhost"
    qid = re.sub(r"[^A-Za-z0-9]", "", queueId) or "0"
    return f"<{_utc(now).strftime('%Y%m%d%H%M%S')}.{qid}@{host}>"


def buildTranscriptNotice(role, peer, recipient, lines, *, reason=None, preface=None, mailName="mta",
                          myorigin="localhost", myhostname="localhost", now=0.0, queueId="0"):
    """
    The postmaster notice (bytes, CRLF line ends) for a transcript's
    C{lines}: C{role} "SMTP server", "SMTP client" or "LMTP client", C{peer}
    the client's or server's name[address], C{recipient} its To: address,
    C{reason} the "Session aborted, reason:" text, C{preface} a paragraph
    before the transcript (the client's "Unexpected response from ...").
    """
    head = [
        f"From: Mail Delivery System <{MAIL_DAEMON}@{_header(myorigin)}>",
        f"To: Postmaster <{_header(recipient)}>",
        f"Subject: {_header(mailName, 60)} {_header(role, 20)}: errors from {_header(peer)}",
        f"Date: {email.utils.format_datetime(_utc(now))}",
        f"Message-Id: {_messageId(now, queueId, myhostname)}",
        "Auto-Submitted: auto-generated",
    ]
    body = [""]
    if preface:
        body += [_header(preface, 400), ""]
    body += ["Transcript of session follows.", ""]
    for line in lines:
        body += [" " + piece for piece in _wrap(printable(line))]
    body.append("")
    if reason:
        body.append(f"Session aborted, reason: {_header(reason)}")
    body += ["", "For other details, see the local mail logfile"]
    return ("\r\n".join(head + body) + "\r\n").encode("ascii")


class TranscriptNotices:
    """
    Queues the postmaster notices of transcripts (see the module
    docstring) through C{cleanup} (an mta.cleanup.Cleanup: the one way
    into the queue), from C{settings} (a NoticeSettings); C{maillog}: the
    caller's MailLogger (smtpd, smtp, lmtp), for the warning.  C{sender} is
    $double_bounce_sender@$myorigin.
    """

    def __init__(self, settings, cleanup, clock, maillog=None):
        self.settings = settings
        self.cleanup = cleanup
        self.clock = clock
        self.classes = settings.classes
        self.sender = settings.doubleBounceAddress
        self.maillog = maillog

    def wants(self, classes):
        """Whether any of C{classes} is reported: then a transcript is worth keeping."""
        return bool(self.classes & frozenset(classes))

    def due(self, transcript):
        """Whether C{transcript} met an error class that notify_classes lists."""
        return transcript is not None and len(transcript) > 0 and bool(self.classes & transcript.errors)

    def recipient(self, transcript):
        """$bounce_notice_recipient if the session had the bounce class (as Postfix), else $error_notice_recipient."""
        s = self.settings
        return s.qualified(s.bounceRecipient if "bounce" in transcript.errors else s.errorRecipient)

    def send(self, role, peer, transcript, reason=None, preface=None):
        """
        Queue the notice of C{transcript} (built now, so the caller may
        clear the transcript at once).  A Deferred that fires with the new
        queue id, or None when the notice could not be queued (logged);
        it never fails.
        """
        s = self.settings
        to = self.recipient(transcript)
        now = self.clock.seconds()
        lines = transcript.lines()

        def content(queueId):
            return buildTranscriptNotice(
                role, peer, to, lines, reason=reason, preface=preface, mailName=s.mailName,
                myorigin=s.myorigin, myhostname=s.hostname, now=now, queueId=queueId,
            )

        try:
            d = self.cleanup.submit(Origin.internal(), self.sender, (Recipient(to),), content, body="7BIT",
                                    arrival=now)
        except Exception as e:
            self._failed(e, Failure())
            return succeed(None)

        def failed(failure):
            self._failed(failure.value, failure)
            return None

        return d.addErrback(failed)

    def _failed(self, error, failure):
        if not isinstance(error, (QueueWriteError, OSError)):  # a bug: its traceback too
            log.failure("postmaster notify failed", failure)
        text = f"postmaster notify: {sanitize(str(error) or type(error).__name__)}"
        if self.maillog is not None:
            self.maillog.warning(text)
        else:
            log.warn("{text}", text=text)
