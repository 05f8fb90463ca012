"""mta.smtpd.message - one message on its way into the queue.

IncomingTransaction opens the queue file, writes our Received header
(RFC 5321 4.4), passes the content through the header cleanup and, at the
end, builds the envelope and commits: the queue id comes back only once the
file is safe on disk (see mta.queue.store).

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
    Missing headers are added for clients on this host (Postfix's
    local_header_rewrite_clients = permit_inet_interfaces) or for all with
    always_add_missing_headers = yes.
"""

import ipaddress

from mta.model import Envelope, Reply
from mta.smtpd.cleanup import TOO_MANY_HOPS, HeaderCleanup, mailDate


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
        self.cleanup = HeaderCleanup(
            self.message.write,
            hopLimit=factory.hopLimit,
            dropHeaders=factory.dropHeaders,
            addMissing=factory.alwaysAddMissing or _isOwnAddress(session),
            hostname=factory.hostname,
            queueId=self.queueId,
            now=factory.clock.seconds(),
            headerSizeLimit=factory.headerSizeLimit,
            sender=str(self.sender),
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

        messageId = self.cleanup.messageId

        def committed(queueId):
            maillog.emit(f"client={client}", queue_id=queueId, client=client)
            if messageId:
                maillog.emit(f"message-id={messageId}", queue_id=queueId)
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


def _isOwnAddress(session):
    """local_header_rewrite_clients = permit_inet_interfaces: the client is this host."""
    try:
        client = ipaddress.ip_address(session.clientAddress)
    except ValueError:
        return False
    if client.is_loopback:
        return True
    host = getattr(session.transport.getHost(), "host", None)
    return host == session.clientAddress
