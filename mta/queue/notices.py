"""mta.queue.notices - send the queue manager's delivery status notices.

The queue manager decides that a notice is due (bounced recipients, or
NOTIFY=SUCCESS deliveries); this module builds it with mta.bounce and
queues it as a new message from the null sender through the one cleanup
(mta.cleanup, an internal origin, as Postfix's bounce(8) posts to its
cleanup: cleanup logs ``NEWID: message-id=<...>``), then logs Postfix's line
(``ID: sender non-delivery notification: NEWID``, program bounce).  It never
bounces a bounce: a failed message from <> goes to the postmaster
(2bounce_notice_recipient, the whole message) only when notify_classes has
2bounce or bounce ("bounce (also implies 2bounce)", as Postfix's
bounce_notify_service.c tests either), else it is dropped with a log line;
a failed postmaster notice (from $double_bounce_sender) is always dropped
(``warning: ID: undeliverable postmaster notification discarded``).
With notify_classes containing bounce, the postmaster
(bounce_notice_recipient) gets a copy, headers only, of every bounce
(``postmaster non-delivery notification: NEWID``); with delay, the
postmaster (delay_notice_recipient) gets a copy, headers only, of every
delay warning (``postmaster delay notification: NEWID``), as Postfix's
bounce_warn_service.c sends it.  Mail from <> gets no delay warning at all
(Postfix's cleanup gives it no warning time), so neither does the
postmaster.

A notice that cannot be queued (disk full, an I/O error) is logged as
bounce(8) does (``warning: ID: sender notification failed to ADDR: ...``)
and the QueueWriteError goes back to the queue manager, which keeps the
message (and its unrecorded "notified" state) and tries again later: a
notice is owed until a state record says it was queued.  A postmaster copy
that cannot be queued after the sender's notice was is only logged
(``warning: ID: postmaster notification failed: ...``), as in Postfix, so
the sender never gets the notice twice.  send() says
whether a notice was queued, so the manager records "notified" only then.

SECURITY
    The original content is read (at most bounce_size_limit bytes) and
    quoted; mta.bounce keeps untrusted text out of header lines.

CONFIGURATION
    NoticeSettings (mta.config.settings.notices): bounce_size_limit,
    notify_classes (bounce, 2bounce and delay are acted on here; the other
    classes are the SMTP server's and client's, mta.transcript),
    bounce_notice_recipient, delay_notice_recipient, delay_warning_time,
    2bounce_notice_recipient, double_bounce_sender, myhostname, myorigin,
    mail_name, maximal_queue_lifetime.  The header cleanup of the notice
    is [main]'s CleanupSettings (mta.cleanup).
"""

from mta.bounce import buildNotice, isDoubleBounce
from mta.cleanup import Origin
from mta.maillog import sanitize
from mta.model import Recipient
from mta.queue.fileformat import readContent
from mta.queue.files import QueueWriteError

PROGRAM = "bounce"
WHAT = {"failure": "non-delivery", "delay": "delay", "success": "delivery status"}
# Postfix's ANY_BOUNCE: either class sends a failed bounce to the postmaster.
ANY_BOUNCE = frozenset({"bounce", "2bounce"})


class Notices:
    """
    The queue manager's notices (bounce(8)): failure notices, delay
    warnings and success notices to the sender, and the postmaster copies
    and double bounces notify_classes asks for.

    settings    the NoticeSettings ([main]'s): classes, recipients, limits
    cleanup     the mta.cleanup.Cleanup every notice is queued through
    clock       seconds(), for Date: and the delays in the texts
    maillog     the bounce program's MailLogger (maillogs("bounce"))

    send(kind, message, items) queues the notice of C{kind} ("failure",
    "delay", "success") for (key, target, result) items of an
    ActiveMessage and says whether the queue file should record it as
    notified; a notice that cannot be queued raises QueueWriteError (the
    manager keeps the message, which owes the notice).
    """

    def __init__(self, settings, cleanup, clock, maillogs):
        self.settings = settings
        self.cleanup = cleanup
        self.clock = clock
        self.maillog = maillogs(PROGRAM)
        self.classes = settings.classes

    async def send(self, kind, message, items):
        """
        Queue the notice of C{kind} for C{items} ((key, target, result)
        triples).  True when something was done that the queue file should
        record as notified: a notice queued, or one dropped on purpose with
        its log line (a failed bounce); False when there was nothing to send
        (no recipient's NOTIFY asks for it).  QueueWriteError when a notice
        could not be queued (logged here): the caller keeps the message and
        tries again later.
        """
        s = self.settings
        envelope = message.envelope
        if kind == "success":
            # A next hop that took NOTIFY sends its own notice (Postfix clears NOTIFY=SUCCESS then).
            items = [item for item in items if item[2].success_action != "none"]
            if not items:
                return False
        pairs = [(target, result, result.success_action) if result.success_action else (target, result)
                 for _, target, result in items]
        queueId = message.queueId
        if isDoubleBounce(envelope, s.doubleBounceSender, s.myorigin):
            if kind != "failure":
                return False
            self.maillog.warning("undeliverable postmaster notification discarded", queueId)
            return True
        if not envelope.sender:
            if kind != "failure":
                return False
            if not self.classes & ANY_BOUNCE:
                self.maillog.emit("undeliverable bounce discarded (notify_classes has neither 2bounce nor bounce)",
                                  queueId)
                return True
            newId = await self._queue(kind, message, pairs, postmasterCopy=True, postmaster=s.doubleBounceRecipient,
                                      what="postmaster non-delivery")
            return newId is not None
        newId = await self._queue(kind, message, pairs, what=f"sender {WHAT[kind]}")
        queued = newId is not None
        if kind == "failure" and "bounce" in self.classes:
            copy = dict(postmaster=s.bounceRecipient, what="postmaster non-delivery")
        elif kind == "delay" and "delay" in self.classes:
            copy = dict(postmaster=s.delayRecipient, what="postmaster delay")
        else:
            return queued
        try:
            copyId = await self._queue(kind, message, pairs, postmasterCopy=True, **copy)
        except QueueWriteError:
            if not queued:
                raise
            # Postfix: "This postmaster notice is not critical, so if it fails don't retransmit
            # the bounce that we just generated, just log a warning" (logged by _queue).
            return True
        return queued or copyId is not None

    async def _queue(self, kind, message, pairs, what, postmasterCopy=False, postmaster="postmaster"):
        """Build and queue one notice; its queue id, or None when nobody asked for it.  QueueWriteError."""
        s = self.settings
        queueFile = message.queueFile
        now = self.clock.seconds()

        def original():
            return readContent(message.path, queueFile.contentOffset, queueFile.contentLength)

        notice = buildNotice(
            kind, message.envelope, pairs,
            queueId=message.queueId, reportingMTA=s.hostname, arrivalTime=message.envelope.arrival_time,
            now=now, original=original, myhostname=s.hostname, postmasterCopy=postmasterCopy,
            postmaster=postmaster, bounceSizeLimit=s.bounceSizeLimit, myorigin=s.myorigin, mailName=s.mailName,
            maximalQueueLifetime=s.maximalQueueLifetime, doubleBounceSender=s.doubleBounceSender,
            delayWarningTime=s.delayWarningTime, requiretlsRedact=s.requiretlsRedactDsn,
            tlsRequiredEnable=s.tlsRequiredEnable,
        )
        if notice is None:  # no recipient's NOTIFY asks for it
            return None
        sender, to, content = notice
        to = s.qualified(to)
        try:
            newId = await self.cleanup.submit(Origin.internal(), sender, (Recipient(to),), content,
                                              body=notice.body, smtputf8=notice.smtputf8, arrival=now,
                                              requiretls=notice.requiretls)
        except QueueWriteError as e:
            # Postfix's bounce(8) lines: "sender notification failed to ADDR", "postmaster notification failed".
            whom = "postmaster notification failed" if postmasterCopy else f"sender notification failed to {sanitize(to)}"
            self.maillog.warning(f"{whom}: {sanitize(str(e))}", message.queueId)
            raise
        self.maillog.emit(f"{what} notification: {newId}", message.queueId)
        return newId
