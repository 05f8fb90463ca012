"""mta.smtpd.message - one message on its way into the queue.

IncomingTransaction opens the queue file, writes our Received header
(RFC 5321 4.4), passes the content through the header cleanup and, at the
end, builds the envelope and commits: the queue id comes back only once the
file is safe on disk (see mta.queue.store).

chooseHeaderRewrite() runs at MAIL FROM: it picks the header rewriting
context of the transaction (mta.rewrite) from local_header_rewrite_clients,
as Postfix's smtpd_check_rewrite() does, and answers 451 4.3.0 "Temporary
lookup error" when a table there cannot answer.  The envelope addresses are
already complete when they get here: the server parses MAIL FROM and RCPT TO
with mta.rewrite (local context, append_at_myorigin).

SECURITY
    The content is untrusted and is only copied; the HELO name and client
    name in the Received header are sanitized (no control characters).

The Received header names the protocol as RFC 3848 and RFC 6531 register
it (SMTP, ESMTP, UTF8SMTP for a transaction with SMTPUTF8, S and A added
for TLS and AUTH: the session's receivedProtocol()), as Postfix's smtpd
does; the envelope's protocol and the log's proto= stay the session's
SMTP or ESMTP, as Postfix's do.

CONFIGURATION
    myhostname, mail_name; hopcount_limit, message_drop_headers,
    always_add_missing_headers, header_size_limit (via mta.smtpd.cleanup).
    Header addresses are completed, and missing headers added, for clients
    that match local_header_rewrite_clients (default permit_inet_interfaces:
    this host), for others only when remote_header_rewrite_domain is set;
    missing headers are added for all with always_add_missing_headers = yes.
"""

from twisted.internet.defer import Deferred

from mta.maillog import MailLogger
from mta.model import Envelope, Reply
from mta.smtpd.cleanup import TOO_MANY_HOPS, HeaderCleanup, mailDate, notRewrittenWarning
from mta.tables import TableTemporaryError


class IncomingTransaction:
    def __init__(self, session):
        # The envelope is complete at DATA/first BDAT: take it now, the
        # session resets its own state before the commit finishes.
        self.session = session
        self.sender = session.sender
        self.mailParams = session.mailParams
        self.recipients = tuple(session.recipients)
        self.hold = session.hold
        factory = session.factory
        self.message = factory.store.newMessage()
        self.queueId = self.message.queueId
        self.size = 0  # content bytes from the client
        self.message.write(self._receivedHeader())
        # The header rewriting context chosen at MAIL FROM (chooseHeaderRewrite); None: the
        # client is not local and remote_header_rewrite_domain is empty, headers stay as
        # they are and nothing is added (cleanup_envelope.c, cleanup_message.c).
        context = session.headerRewrite
        self.cleanup = HeaderCleanup(
            self.message.write,
            hopLimit=factory.hopLimit,
            dropHeaders=factory.dropHeaders,
            addMissing=factory.alwaysAddMissing or context is not None,
            hostname=factory.hostname,
            queueId=self.queueId,
            now=factory.clock.seconds(),
            headerSizeLimit=factory.headerSizeLimit,
            sender=str(self.sender),
            rewrite=context,
        )

    def _receivedHeader(self):
        """Our Received header, folded as Postfix folds it."""
        s = self.session
        factory = s.factory
        forClause = f"\r\n\tfor <{self.recipients[0].address}>" if len(self.recipients) == 1 else ""
        date = mailDate(factory.clock.seconds())
        helo = s.helo or s.clientName
        text = (
            f"Received: from {helo} ({s.clientName} [{s.clientAddress}])\r\n"
            f"\tby {factory.hostname} ({factory.mailName}) with {s.receivedProtocol()} id {self.queueId}"
            f"{forClause};\r\n\t{date}\r\n"
        )
        return text.encode("utf-8", "replace")

    def write(self, data):
        self.size += len(data)
        self.cleanup.write(data)

    def finish(self):
        """End of content: a Reply if the message must be refused, else None."""
        self.cleanup.close()
        if self.cleanup.error == TOO_MANY_HOPS:
            return Reply(554, "5.4.0", "Error: too many hops")
        return None

    def commit(self):
        """Write the envelope and make the file durable; a Deferred firing with the queue id."""
        s = self.session
        params = self.mailParams
        envelope = Envelope(
            sender=str(self.sender),
            recipients=self.recipients,
            arrival_time=s.factory.clock.seconds(),
            client_name=s.clientName,
            client_address=s.clientAddress,
            client_port=s.clientPort,
            helo=s.helo or "",
            protocol=s.protocolName,
            body=params.body,
            smtputf8=params.smtputf8,
            ret=params.ret,
            envid=params.envid,
            size=self.message.size,
        )
        client = s.client
        maillog = s.factory.maillog
        cleanupLog = MailLogger(s.factory.params["syslog_name"], "cleanup")  # Postfix's cleanup logs message-id=

        messageId = self.cleanup.messageId

        notRewritten = self.cleanup.notRewritten

        def committed(queueId):
            maillog.emit(f"client={client}", queue_id=queueId, client=client)
            if messageId:
                cleanupLog.emit(f"message-id={messageId}", queue_id=queueId)
            if notRewritten:
                cleanupLog.emit(notRewrittenWarning(notRewritten), queue_id=queueId)
            maillog.fields(
                queueId,
                [("from", f"<{envelope.sender}>"), ("size", self.message.size), ("nrcpt", len(envelope.recipients))],
                "queued",
                sender=envelope.sender,
            )
            return queueId

        return self.message.commit(envelope, queue="hold" if self.hold else "incoming").addCallback(committed)

    def abort(self):
        self.message.abort()


def chooseHeaderRewrite(session, ok):
    """
    At MAIL FROM, as Postfix's smtpd_check_rewrite(): set
    C{session.headerRewrite} to the local context when the client matches
    local_header_rewrite_clients, else to the remote one (None when
    remote_header_rewrite_domain is empty).  Returns C{ok}, or, when a table
    must be asked, a Deferred of C{ok} or of "451 4.3.0 Temporary lookup
    error" (the transaction is then reset and the rejection logged).
    """
    factory = session.factory
    clients = factory.headerRewriteClients
    client = session.clientAddress
    server = getattr(session.transport.getHost(), "host", None)
    if clients.static:
        session.headerRewrite = factory.rewrite.headerContext(clients.staticMatch(client, server))
        return ok

    async def lookup():
        try:
            local = await clients.matches(client, server)
        except TableTemporaryError:
            reply = Reply(451, "4.3.0", "Temporary lookup error")
            session._resetTransaction()  # no sender yet, as in Postfix's log line
            session._logReject("MAIL", reply)
            return session._fault("resource", reply)  # Postfix's smtpd_check_rewrite: the resource class
        session.headerRewrite = factory.rewrite.headerContext(local)
        return ok

    return Deferred.fromCoroutine(lookup())
