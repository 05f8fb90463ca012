"""mta.cleanup - cleanup(8): the one way into the queue, for the SMTP server, pickup and the notices.

NAME
    Cleanup, CleanupMessage, Origin - every new message passes through
    here, whichever way it came in

SYNOPSIS
    cleanup = Cleanup(settings, store, clock, maillogs)   # a CleanupSettings; maillogs: program -> MailLogger
    message = cleanup.open(origin, sender, recipients)    # QueueWriteError if no file can be made
    message.queueId
    message.write(block) ...        # the content, as the entrance read it
    refusal = message.finish()      # None, or the Reply to refuse it with (554 5.4.0 too many hops)
    d = message.commit(body="8BITMIME", smtputf8=False, ret=None, envid=None, hold=False,
                       announce=lambda queueId: ...)      # a Deferred of the queue id
    message.abort()                 # on any other outcome; always safe
    d = cleanup.submit(origin, sender, recipients, content, body="7BIT")   # a notice, whole

    Origin.smtp(clientName=, clientAddress=, clientPort=, helo=, protocol="ESMTP",
                receivedProtocol="ESMTPS", headerRewrite="local" | "remote" | None)
    Origin.localSubmission(uid, submitted)   # pickup: a file mta-sendmail left in maildrop/
    Origin.internal()                        # bounces, delay warnings, postmaster notices

DESCRIPTION
    As Postfix's cleanup(8), one service that every entrance goes through
    (src/cleanup/: smtpd(8), pickup(8) and bounce(8) all talk to it): the
    SMTP server (mta.smtpd.message, per listener, with the listener's
    settings), pickup (mta.queue.pickup), the queue manager's delivery
    status notices (mta.queue.notices) and the postmaster's transcripts
    (mta.transcript).  It sits below all of them: it imports neither
    mta.smtpd nor the queue manager, and uses the store only through
    newMessage() and the message's write()/commit()/abort()
    (mta.queue.store, or mta-sendmail's MaildropStore for -bs).

    open(origin, sender, recipients) takes the envelope's sender and
    recipients first, as Postfix's cleanup gets them before the content,
    opens a queue file (store.newMessage()) and writes the Received:
    header the origin calls for:
        smtp      Received: from HELO (NAME [ADDRESS])
                          by $myhostname ($mail_name) with PROTOCOL id QUEUEID
                          for <RECIPIENT>;             (only with one recipient)
                          DATE                         (Postfix's smtpd's header)
        local     Received: by $myhostname ($mail_name, from userid UID)
                          id QUEUEID; DATE             (pickup's; DATE: when the file
                                                        was submitted, its mtime)
        internal  none (see DEVIATIONS)
    and passes the content through the header cleanup
    (mta.cleanup.headers.HeaderCleanup): the hop count (hopcount_limit,
    counting our own Received:), message_drop_headers, header_size_limit,
    a missing Message-Id:, Date: and From: added, and the header
    addresses rewritten (mta.rewrite) in the origin's context: an SMTP
    client's is the one the server chose at MAIL FROM
    (local_header_rewrite_clients, remote_header_rewrite_domain: "local",
    "remote" or None for none), a local submission's and a notice's is the
    local one, as Postfix's cleanup rewrites local mail.  Missing headers
    are added when there is a context or always_add_missing_headers is
    set.  The arrival time is the open's (or the caller's C{arrival}): the
    Date: header added says it; the envelope's arrival time is the same,
    or, without C{arrival}, the time of the commit (the server's end of
    data).

    finish() ends the content: a message with too many hops gets the
    Reply "554 5.4.0 Error: too many hops" (Postfix's cleanup_strerror for
    CLEANUP_STAT_HOPS); the entrance refuses it (the server answers it,
    pickup sets the file aside).  commit() builds the envelope (the
    origin's client name, address, port, HELO and protocol; the caller's
    body type, SMTPUTF8, RET, ENVID) and commits the file into incoming/
    (hold/ with C{hold}); the Deferred fires with the queue id once the
    file is durable (mta.queue.store) and fails with QueueWriteError
    otherwise, so an entrance says 250 (or removes a maildrop file) only
    then.  Once it is durable the mail log gets, in this order: the
    entrance's own line (C{announce}: smtpd's "client=...", pickup's
    "uid=... from=<...>"), then cleanup's
        QUEUEID: message-id=<...>            (the first Message-Id:, or
                                              the one added; control
                                              characters escaped)
        QUEUEID: warning: N address headers not rewritten: ...
    and then whatever the entrance logs after its commit (smtpd's
    "from=<...>, size=..., nrcpt=... (queued)", bounce's "sender
    non-delivery notification: NEWID").

    submit() is open(), write(), finish() and commit() for a notice made
    whole in memory; C{content} may be a callable that gets the new queue
    id (a transcript's Message-Id: names it).

SECURITY
    The content is untrusted and is only copied, through the header
    cleanup (see mta.cleanup.headers for its bounds).  The names in the
    Received: header (HELO, client name and address) have control
    characters escaped (mta.maillog.sanitize) whatever the entrance
    checked, so no entrance can start a header line there.

CONFIGURATION
    CleanupSettings (mta.config.settings.cleanup): myhostname, mail_name,
    hopcount_limit, message_drop_headers, always_add_missing_headers,
    header_size_limit, and its RewriteSettings (append_at_myorigin,
    append_dot_mydomain, myorigin, mydomain, remote_header_rewrite_domain,
    local_header_rewrite_clients).  The server's listeners build their own
    from the listener's scope; pickup and the notices share the [main] one.

DEVIATIONS
    Postfix's post_mail(), with which its bounce(8) and smtpd's
    transcripts reach cleanup, writes "Received: by $myhostname
    ($mail_name) id QUEUEID; DATE" into every notice; mta's notices have
    no Received: header, as they never had (their header section is a
    test's subject: From, To, Subject, Date, Message-Id,
    Auto-Submitted).  Mail from a local submission that has too many hops
    is set aside by pickup, not returned to its sender.
"""

import attrs
from twisted.internet.defer import fail

from mta.cleanup.headers import TOO_MANY_HOPS, HeaderCleanup, mailDate, notRewrittenWarning
from mta.maillog import sanitize
from mta.model import Envelope, QueueWriteError, Reply
from mta.rewrite import AddressRewriting

__all__ = ["Cleanup", "CleanupMessage", "Origin", "TOO_MANY_HOPS"]

SMTP, LOCAL, INTERNAL = "smtp", "local", "internal"
TOO_MANY_HOPS_REPLY = Reply(554, "5.4.0", "Error: too many hops")


@attrs.frozen(kw_only=True)
class Origin:
    """
    Where a message comes from: what its Received: header and envelope say,
    and how its headers are rewritten.  C{kind} is "smtp", "local" (a
    local submission picked up from maildrop/) or "internal" (a notice);
    C{clientName}, C{clientAddress}, C{clientPort}, C{helo} and
    C{protocol} go to the envelope (protocol: SMTP, ESMTP or local);
    C{receivedProtocol} is the Received: header's (RFC 3848: ESMTPS,
    UTF8SMTP, ...); C{uid} and C{submitted} name the submitter and the
    submission time of a local submission; C{headerRewrite} is the
    rewriting context, "local", "remote" or None (headers left alone).
    """

    kind: str
    clientName: str = "localhost"
    clientAddress: str = ""
    clientPort: int = 0
    helo: str = ""
    protocol: str = "local"
    receivedProtocol: str = ""
    uid: int | None = None
    submitted: float | None = None
    headerRewrite: str | None = "local"
    tlsComment: tuple = ()  # the Received: header's TLS lines (smtpd_tls_received_header; mta.tls.info)
    prepend: tuple = ()  # headers written before the Received: header (smtpd's PREPEND actions)
    # The SMTP AUTH login (mta.smtpd.auth): to the envelope; authenticatedHeader puts Postfix's
    # "(Authenticated sender: USER)" comment in the Received: header (smtpd_sasl_authenticated_header).
    saslMethod: str | None = None
    saslUsername: str | None = None
    saslSender: str | None = None
    authenticatedHeader: bool = False

    @classmethod
    def smtp(cls, *, clientName, clientAddress, clientPort, helo, protocol, receivedProtocol=None,
             headerRewrite=None, tlsComment=(), prepend=(), **sasl):
        """An SMTP client's message (C{helo} None or empty when it sent none); C{sasl}: the sasl* fields."""
        return cls(kind=SMTP, clientName=clientName, clientAddress=clientAddress, clientPort=clientPort,
                   helo=helo or "", protocol=protocol, receivedProtocol=receivedProtocol or protocol,
                   headerRewrite=headerRewrite, tlsComment=tuple(tlsComment), prepend=tuple(prepend), **sasl)

    @classmethod
    def localSubmission(cls, uid, submitted):
        """A file that user C{uid} submitted (at C{submitted}: its mtime) with mta-sendmail."""
        return cls(kind=LOCAL, uid=uid, submitted=submitted)

    @classmethod
    def internal(cls):
        """A notice the mail system makes itself (Postfix's post_mail)."""
        return cls(kind=INTERNAL, clientAddress="127.0.0.1")


class Cleanup:
    """
    The cleanup service of one settings scope: C{settings} (a
    CleanupSettings), C{store} (newMessage()), C{clock} (seconds()),
    C{maillogs} (program -> MailLogger).  C{rewriting} is its
    mta.rewrite.AddressRewriting (the server completes envelope addresses
    with it, pickup those of maildrop files).
    """

    def __init__(self, settings, store, clock, maillogs):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.maillog = maillogs("cleanup")
        self.rewriting = AddressRewriting(settings.rewrite)

    def _context(self, name):
        if name is None:
            return None
        if name == "local":
            return self.rewriting.local
        if name == "remote":
            return self.rewriting.remote
        raise ValueError(f"no rewriting context {name!r}")

    def open(self, origin, sender, recipients, *, arrival=None):
        """
        A CleanupMessage from C{origin} (an Origin), for C{sender} (str,
        "" for the null sender) and C{recipients} (mta.model.Recipient),
        with its Received: header written.  C{arrival}: the arrival time
        (default: now for the Date: header, the commit's time for the
        envelope).  QueueWriteError (or the store's OSError) when no queue
        file can be made.
        """
        return CleanupMessage(self, origin, sender, tuple(recipients), arrival)

    def submit(self, origin, sender, recipients, content, *, body="7BIT", smtputf8=False, arrival=None,
               requiretls=False, probe=False):
        """
        A message made whole in memory (C{content}: bytes, or a callable
        that gets the queue id and returns them): open, write, finish and
        commit; a Deferred of the queue id (QueueWriteError).  What open()
        raises is raised.  C{probe}: an address verification probe
        (mta.verify), flagged so in its envelope.
        """
        message = self.open(origin, sender, recipients, arrival=arrival)
        try:
            message.write(content(message.queueId) if callable(content) else content)
            refusal = message.finish()
        except BaseException:
            message.abort()
            raise
        if refusal is not None:
            message.abort()
            return fail(QueueWriteError(f"cannot queue message {message.queueId}: {refusal}"))
        return message.commit(body=body, smtputf8=smtputf8, requiretls=requiretls, probe=probe)

    def received(self, origin, queueId, recipients, now):
        """The Received: header (bytes) of a message from C{origin}, or b"" (see the module docstring)."""
        s = self.settings
        if origin.kind == SMTP:
            name = sanitize(origin.clientName)
            helo = sanitize(origin.helo) if origin.helo else name
            forClause = f"\r\n\tfor <{sanitize(recipients[0].address)}>" if len(recipients) == 1 else ""
            tls = "".join(f"\t{sanitize(line)}\r\n" for line in origin.tlsComment)
            comment = ""
            if origin.authenticatedHeader and origin.saslUsername:
                user = sanitize(origin.saslUsername).translate({ord("("): "?", ord(")"): "?", ord("\\"): "?"})
                comment = f"\t(Authenticated sender: {user})\r\n"
            first = "".join(f"{sanitize(header)}\r\n" for header in origin.prepend)
            text = (f"{first}Received: from {helo} ({name} [{sanitize(origin.clientAddress)}])\r\n{tls}{comment}"
                    f"\tby {s.hostname} ({s.mailName}) with {sanitize(origin.receivedProtocol)} id {queueId}"
                    f"{forClause};\r\n\t{mailDate(now)}\r\n")
        elif origin.kind == LOCAL:
            text = (f"Received: by {s.hostname} ({s.mailName}, from userid {origin.uid})\r\n"
                    f"\tid {queueId}; {mailDate(origin.submitted)}\r\n")
        else:
            return b""
        return text.encode("utf-8", "replace")


class CleanupMessage:
    """
    One message on its way through cleanup (see the module docstring).
    C{queueId} names it; C{size} is the bytes written to its queue file so
    far (our Received: header included); after finish(), C{messageId}, the
    C{added} headers, C{hops} and C{notRewritten} are the header cleanup's.
    """

    def __init__(self, cleanup, origin, sender, recipients, arrival):
        self._cleanup = cleanup
        self.origin = origin
        self.sender = sender
        self.recipients = recipients
        self.arrival = arrival
        settings = cleanup.settings
        context = cleanup._context(origin.headerRewrite)
        now = arrival if arrival is not None else cleanup.clock.seconds()
        self._message = cleanup.store.newMessage()
        self.queueId = self._message.queueId
        try:
            received = cleanup.received(origin, self.queueId, recipients, now)
            if received:
                self._message.write(received)
            self._headers = HeaderCleanup(
                self._message.write,
                hopLimit=settings.hopLimit,
                dropHeaders=settings.dropHeaders,
                addMissing=settings.alwaysAddMissing or context is not None,
                hostname=settings.hostname,
                queueId=self.queueId,
                now=now,
                headerSizeLimit=settings.headerSizeLimit,
                priorHops=1 if received else 0,
                sender=sender,
                rewrite=context,
            )
        except BaseException:
            self._message.abort()
            raise
        self._finished = False

    @property
    def size(self):
        return self._message.size

    @property
    def messageId(self):
        return self._headers.messageId

    @property
    def added(self):
        return self._headers.added

    @property
    def hops(self):
        return self._headers.hops

    @property
    def notRewritten(self):
        return self._headers.notRewritten

    def write(self, data):
        """Content (bytes), in any blocks."""
        self._headers.write(data)

    def finish(self):
        """End of content: None, or the Reply to refuse the message with."""
        if not self._finished:
            self._finished = True
            self._headers.close()
        if self._headers.error == TOO_MANY_HOPS:
            return TOO_MANY_HOPS_REPLY
        return None

    def commit(self, *, body="7BIT", smtputf8=False, ret=None, envid=None, hold=False, announce=None,
               requiretls=False, probe=False):
        """
        Build the envelope and make the file durable (into hold/ with
        C{hold}); a Deferred of the queue id, or of a QueueWriteError.
        C{announce(queueId)}: the entrance's log line, made before cleanup's.
        """
        refusal = self.finish()
        if refusal is not None:
            self.abort()
            return fail(QueueWriteError(f"cannot queue message {self.queueId}: {refusal}"))
        origin = self.origin
        cleanup = self._cleanup
        envelope = Envelope(
            sender=self.sender,
            recipients=self.recipients,
            arrival_time=self.arrival if self.arrival is not None else cleanup.clock.seconds(),
            client_name=origin.clientName,
            client_address=origin.clientAddress,
            client_port=origin.clientPort,
            helo=origin.helo,
            protocol=origin.protocol,
            body=body,
            smtputf8=smtputf8,
            ret=ret,
            envid=envid,
            size=self.size,  # the store sets it again from what it wrote
            sasl_method=origin.saslMethod,
            sasl_username=origin.saslUsername,
            sasl_sender=origin.saslSender,
            requiretls=bool(requiretls),  # RFC 8689 MAIL FROM ... REQUIRETLS (smtpd, inside TLS only)
            tls_required_no=self._headers.tlsRequiredNo,  # a "TLS-Required: No" header
            probe=bool(probe),  # an address verification probe (mta.verify)
        )
        messageId, notRewritten = self.messageId, self.notRewritten
        maillog = cleanup.maillog

        def committed(queueId):
            if announce is not None:
                announce(queueId)
            if messageId:
                maillog.emit(f"message-id={sanitize(messageId)}", queue_id=queueId)
            if notRewritten:
                maillog.emit(notRewrittenWarning(notRewritten), queue_id=queueId)
            return queueId

        return self._message.commit(envelope, queue="hold" if hold else "incoming").addCallback(committed)

    def abort(self):
        """Forget the message (its queue file is removed); safe at any time."""
        self._message.abort()
