"""mta.smtpd.message - the server's entrance into the one cleanup (mta.cleanup).

IncomingTransaction takes the transaction's envelope from the session at
DATA (or the first BDAT), opens the message in the listener's cleanup
(factory.cleanup, an mta.cleanup.Cleanup built from the listener's
settings) with an SMTP origin - the client's name, address and port, the
HELO name, the protocol, the Received: header's protocol name and the
header rewriting context chosen at MAIL FROM - and, at the end of data,
commits it: the queue id comes back only once the file is safe on disk
(mta.queue.store).  The Received: header, the header cleanup and the
envelope are cleanup's work, the same for every entrance; what is the
server's own here is its log lines, as Postfix's smtpd logs them:

    smtpd: QUEUEID: client=NAME[ADDRESS]
    cleanup: QUEUEID: message-id=<...>                  (mta.cleanup)
    smtpd: QUEUEID: from=<SENDER>, size=N, nrcpt=N (queued)   (mta's own)

chooseHeaderRewrite() runs at MAIL FROM: it picks the header rewriting
context of the transaction (mta.rewrite) from local_header_rewrite_clients,
as Postfix's smtpd_check_rewrite() does, and answers 451 4.3.0 "Temporary
lookup error" when a table there cannot answer.  The envelope addresses are
already complete when they get here: the server parses MAIL FROM and RCPT TO
with the cleanup's rewriting (local context, append_at_myorigin).

What it reads of the server (mta.smtpd.protocol.SMTPServer): its
transaction (mta.smtpd.session.Transaction: sender, mailParams, recipients,
hold, headerRewrite, smtputf8), its session (SessionState: clientName,
clientAddress, clientPort, client, helo, protocol, receivedProtocol()),
its factory (.cleanup, .maillog, .rewrite, .headerRewriteClients) and its
transport (the local address, for permit_inet_interfaces).

SECURITY
    The content is untrusted and is only copied (mta.cleanup); the names
    in the Received header are sanitized there.

CONFIGURATION
    The listener's CleanupSettings (mta.cleanup); for the choice of
    context, local_header_rewrite_clients (default permit_inet_interfaces:
    this host) and remote_header_rewrite_domain (RewriteSettings).
"""

from twisted.internet.defer import Deferred

from mta.cleanup import Origin
from mta.maillog import sanitize
from mta.model import Reply
from mta.tables import TableTemporaryError


class IncomingTransaction:
    """
    One message of a session on its way into the queue through its
    listener's cleanup (mta.cleanup), from DATA (or the first BDAT) to the
    250 or the refusal.

    server      the SMTPServer whose transaction this is
    sender, mailParams, recipients, hold
                the envelope, taken from the transaction at DATA (the
                session resets its own state before the commit finishes)
    message     the CleanupMessage being written
    queueId     its queue id (known from the start, as in Postfix)
    size        content bytes received from the client so far

    write(bytes) streams content; finish() ends it (a Reply when the
    message must be refused, e.g. too many hops); commit() makes it
    durable (a Deferred of the queue id); abort() gives it up.
    """

    def __init__(self, server):
        """C{server}: the SMTPServer; its C{session} (SessionState) and C{transaction} (Transaction)."""
        # The envelope is complete at DATA/first BDAT: take it now, the
        # session resets its own state before the commit finishes.
        self.server = server
        session, transaction = server.session, server.transaction
        self.sender = transaction.sender
        self.mailParams = transaction.mailParams
        self.recipients = tuple(transaction.recipients)
        self.hold = transaction.hold
        context = transaction.headerRewrite  # chosen at MAIL FROM (chooseHeaderRewrite); None: headers stay
        origin = Origin.smtp(
            clientName=session.clientName,
            clientAddress=session.clientAddress,
            clientPort=session.clientPort,
            helo=session.helo,
            protocol=session.protocol,
            receivedProtocol=session.receivedProtocol(transaction.smtputf8),
            headerRewrite=context.name if context is not None else None,
            tlsComment=_tlsComment(server),
            prepend=transaction.prepend,
            saslMethod=session.saslMethod,
            saslUsername=session.saslUsername,
            saslSender=saslSender(transaction.mailParams),
            authenticatedHeader=server.factory.saslSettings.authenticatedHeader,
        )
        self.login = loginFields(origin)
        self.message = server.factory.cleanup.open(origin, str(self.sender), self.recipients)
        self.queueId = self.message.queueId
        self.size = 0  # content bytes from the client

    def write(self, data):
        self.size += len(data)
        self.message.write(data)

    def finish(self):
        """End of content: a Reply if the message must be refused, else None."""
        return self.message.finish()

    def commit(self):
        """Write the envelope and make the file durable; a Deferred firing with the queue id."""
        params = self.mailParams
        session = self.server.session
        client = session.client
        # smtpd_client_port_logging: NAME[ADDR]:PORT in the queue-id line (the other lines keep NAME[ADDR])
        shown = f"{client}:{session.clientPort}" if self.server.settings.clientPortLogging else client
        maillog = self.server.factory.maillog
        message = self.message
        sender = str(self.sender)

        login = self.login

        def announce(queueId):  # Postfix's smtpd_sasl_mail_log: client=..., sasl_method=..., sasl_username=...
            maillog.emit(f"client={shown}{login}", queue_id=queueId, client=client)
            if params.requiretls:  # RFC 8689: the sender's request, kept in the queue file
                maillog.emit("sender requested REQUIRETLS", queue_id=queueId, client=client)

        def queued(queueId):
            maillog.fields(
                queueId,
                [("from", f"<{sender}>"), ("size", message.size), ("nrcpt", len(self.recipients))],
                "queued",
                sender=sender,
            )
            return queueId

        d = message.commit(body=params.body, smtputf8=params.smtputf8, ret=params.ret, envid=params.envid,
                           hold=bool(self.hold), announce=announce, requiretls=params.requiretls)
        return d.addCallback(queued)

    def setRecipients(self, recipients):
        """The restrictions' REDIRECT and BCC: the envelope's recipients, before the commit."""
        self.recipients = tuple(recipients)
        self.message.recipients = self.recipients

    def abort(self):
        self.message.abort()


def _tlsComment(server):
    """smtpd_tls_received_header: the TLS lines of the Received: header (mta.tls.info), or none."""
    settings, info = server.factory.tlsSettings, server.session.tls
    if info is None or not settings.receivedHeader:
        return ()
    return info.receivedComment(settings.askClientCertificate)


def saslSender(mailParams):
    """MAIL FROM's AUTH= value as Postfix keeps it (printable, "<>" dropped), or None."""
    value = mailParams.auth if mailParams is not None else None
    if value is None or value == "<>":
        return None
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in value)


def loginFields(origin):
    """", sasl_method=PLAIN, sasl_username=alice, sasl_sender=..." for the client= line ("" without AUTH)."""
    fields = [("sasl_method", origin.saslMethod), ("sasl_username", origin.saslUsername),
              ("sasl_sender", origin.saslSender)]
    return "".join(f", {name}={sanitize(value)}" for name, value in fields if value)


def chooseHeaderRewrite(server, ok):
    """
    At MAIL FROM, as Postfix's smtpd_check_rewrite(): set the
    transaction's C{headerRewrite} to the local context when the client matches
    local_header_rewrite_clients, else to the remote one (None when
    remote_header_rewrite_domain is empty).  Returns C{ok}, or, when a table
    must be asked, a Deferred of C{ok} or of "451 4.3.0 Temporary lookup
    error" (the transaction is then reset and the rejection logged).
    """
    factory = server.factory
    transaction = server.transaction
    clients = factory.headerRewriteClients
    client = server.session.clientAddress
    local = getattr(server.transport.getHost(), "host", None)
    tls = server.session.tls  # permit_tls_clientcerts, permit_tls_all_clientcerts (mta.tls.info.TlsInfo)
    login = server.session.saslUsername  # permit_sasl_authenticated
    if clients.static:
        transaction.headerRewrite = factory.rewrite.headerContext(clients.staticMatch(client, local, tls, login))
        return ok

    async def lookup():
        try:
            matched = await clients.matches(client, local, tls, login)
        except TableTemporaryError:
            reply = Reply(451, "4.3.0", "Temporary lookup error")
            server._resetTransaction()  # no sender yet, as in Postfix's log line
            server._logReject("MAIL", reply)
            return server._fault("resource", reply)  # Postfix's smtpd_check_rewrite: the resource class
        transaction.headerRewrite = factory.rewrite.headerContext(matched)
        return ok

    return Deferred.fromCoroutine(lookup())
