"""mta.smtpd.commands - the SMTP commands and the message transaction of smtpd(8).

SMTPCommands is the half of the session (mta.smtpd.protocol.SMTPServer)
that knows the commands: HELO, EHLO, MAIL, RCPT, DATA, BDAT, RSET, NOOP,
QUIT, HELP, VRFY and ETRN, the envelope they build and the message content
they hand to the queue.  Each smtp_VERB(arg) returns a Reply, a coroutine
of one, or None when it answered itself (354, BDAT chunks); the session
sends the replies in order and keeps time.

Message content goes through mta.smtpd.data: DATA through a DataReader
(end of data, dot-unstuffing), BDAT through a ContentReader that lives
across the chunks of a transaction, so both get the same line-end,
line-length and size checks.  DATA returns to command mode at its real end
(CRLF "." CRLF) only; a fatal content error (a bare newline under reject)
replies and disconnects.

Each refusal marks its notify_classes error class as Postfix's smtpd does
(self._fault("protocol", reply); mta.smtpd.chat lists which is which), for
the postmaster's transcript notices.

SECURITY
    Everything a client sends is untrusted: paths and parameters are
    parsed strictly (mta.address), a HELO name longer than a domain may be
    (255 octets) is refused, table failures answer 4xx.

CONFIGURATION
    See mta.smtpd.protocol and mta.smtpd.factory.

DEVIATIONS
    A HELO/EHLO name over 255 octets is refused at once with the reply of
    Postfix's reject_invalid_helo_hostname ("501 5.5.2 <name...>: Helo
    command rejected: Invalid name", the name cut to 64 characters so the
    reply stays short); Postfix's helo_cmd takes any name that fits the
    line and refuses it only with that restriction, at RCPT time under
    smtpd_delay_reject.  A bare-newline reject in BDAT content closes the
    session, as in DATA (Postfix answers at the end of the chunk).  A
    non-final BDAT chunk is answered with the transaction's bytes so far
    (Postfix: the chunk's own size); BDAT LAST with "Ok: queued as ID"
    (Postfix adds the size).  BINARYMIME exists (Postfix has none).
"""

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

from mta.address import (
    MAX_DOMAIN,
    NonAsciiPathError,
    ParameterError,
    PathError,
    SizeExceeded,
    parseDomain,
    parseMailParameters,
    parsePath,
    parseRcptParameters,
    splitPathAndParameters,
)
from mta.maillog import sanitize
from mta.model import Recipient, Reply
from mta.smtpd import data as D
from mta.smtpd.message import IncomingTransaction, chooseHeaderRewrite
from mta.tables import TableTemporaryError

log = Logger()

R_OK = Reply(250, "2.0.0", "Ok")


class SMTPCommands:
    """The commands of an SMTP session; mixed into mta.smtpd.protocol.SMTPServer."""

    # -- transaction state --------------------------------------------------------

    def _resetTransaction(self):
        self._abortMessage()
        self.sender = None
        self.mailParams = None
        self.recipients = []
        self.hold = None  # a HOLD action's reason: the message goes to the hold queue
        self.headerRewrite = None  # the header rewriting context (mta.rewrite), chosen at MAIL
        self._rcptTried = False
        self._overshoot = 0  # recipients refused over smtpd_recipient_limit
        self._reader = None  # DATA's DataReader
        self._content = None  # BDAT's ContentReader, across the chunks of a transaction
        self._bdatBytes = 0  # BDAT content bytes received in this transaction
        self._bdatFailure = None  # why the BDAT transaction failed; later chunks are discarded

    def _abortMessage(self):
        if self.transaction is not None:
            self.transaction.abort()
            self.transaction = None

    def _logReject(self, stage, reply, recipient=None, action="reject", text=None):
        """Postfix's 'NOQUEUE: reject: RCPT from ...' line (or hold:, with C{text})."""
        sender = f" from=<{sanitize(self.sender)}>" if self.sender is not None else ""
        to = f" to=<{recipient}>" if recipient is not None else ""
        self.factory.maillog.emit(
            f"NOQUEUE: {action}: {stage} from {self.client}: {sanitize(text or str(reply))};"
            f"{sender}{to} proto={self.protocolName} helo=<{self.helo or ''}>",
            client=self.client,
            status=action,
        )

    # -- commands -----------------------------------------------------------------

    def _hello(self, verb, arg, protocolName, lines):
        if not arg:
            return self._fault("protocol", Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        if len(arg.encode("utf-8")) > MAX_DOMAIN:
            # No domain is longer (RFC 5321 4.5.3.1.2); Postfix's reject_invalid_helo_hostname reply.
            reply = Reply(501, "5.5.2", f"<{sanitize(arg[:64])}...>: Helo command rejected: Invalid name")
            self._logReject(verb, reply)
            return self._fault("policy", reply)
        self._chatReset()
        self._resetTransaction()
        self.helo = sanitize(arg)
        self.protocolName = protocolName
        return Reply(250, "", "\n".join([self.hostname, *lines]))

    def smtp_HELO(self, arg):
        return self._hello("HELO", arg, "SMTP", ())

    def smtp_EHLO(self, arg):
        reply = self._hello("EHLO", arg, "ESMTP", self.factory.ehloLines)
        if reply.code == 250 and self.factory.ehloDiscardLog:
            self.factory.maillog.emit(f"discarding EHLO keywords: {self.factory.ehloDiscardLog}")
        return reply

    def receivedProtocol(self):
        """
        The protocol our Received header names (RFC 3848, RFC 6531): SMTP,
        ESMTP, or UTF8SMTP for a transaction with SMTPUTF8; S with TLS and
        A with AUTH are added for ESMTP, as Postfix does.
        """
        if self.protocolName != "ESMTP":
            return self.protocolName
        name = "UTF8SMTP" if self.mailParams is not None and self.mailParams.smtputf8 else "ESMTP"
        return name + ("S" if self.tlsActive else "") + ("A" if self.saslUsername else "")

    def smtp_NOOP(self, arg):
        return R_OK

    def smtp_RSET(self, arg):
        if arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: RSET"))
        self._chatReset()
        self._resetTransaction()
        return R_OK

    def smtp_QUIT(self, arg):
        return Reply(221, "2.0.0", "Bye")

    def smtp_HELP(self, arg):
        return Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY ETRN HELP")

    def smtp_VRFY(self, arg):
        if self.factory.disableVrfy:
            return self._fault("policy", Reply(502, "5.5.1", "VRFY command is disabled"))
        if not arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: VRFY address"))
        try:
            address = parsePath(arg if arg.startswith("<") else f"<{arg}>", allowNull=False)
        except PathError as e:
            return self._fault("protocol", Reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
        return Reply(252, "2.0.0", f"<{address}>")

    async def smtp_ETRN(self, arg):
        """RFC 1985, with Postfix's replies and checks (smtpd.c etrn_cmd)."""
        factory = self.factory
        if factory.heloRequired and self.helo is None:
            return self._fault("policy", Reply(503, "", "Error: send HELO/EHLO first"))
        if self.sender is not None:
            return self._fault("protocol", Reply(503, "", "Error: MAIL transaction in progress"))
        words = arg.split()
        if len(words) != 1:
            return self._fault("protocol", Reply(500, "", "Syntax: ETRN domain"))
        site = words[0]
        if site[:1] in ("@", "#"):
            site = site[1:]  # RFC 1985's subdomain and queue forms are taken as the domain, as Postfix does
        try:
            site = parseDomain(site)
        except PathError:
            return self._fault("protocol", Reply(501, "", "Error: invalid parameter syntax"))
        reply, errorClass = await factory.policy.checkEtrn(self.clientAddress, self.clientName, self.helo, site)
        if reply is not None:
            self._logReject("ETRN", reply)
            return self._fault(errorClass, reply)
        try:
            eligible = await factory.policy.fastFlushDomains.matches(site)
        except TableTemporaryError:
            eligible = None
        if eligible is False:
            factory.maillog.emit(f"warning: reject: ETRN {sanitize(site[:100])}... from {self.client}")
            return Reply(459, "", f"<{site}>: service unavailable")
        if eligible is None or factory.flushSite is None:
            factory.maillog.emit("warning: unable to talk to fast flush service")
            return Reply(458, "", "Unable to queue messages")
        try:
            await maybeDeferred(factory.flushSite, site)
        except Exception:
            log.failure("smtpd: the flush of {site} failed", site=site)
            factory.maillog.emit("warning: unable to talk to fast flush service")
            return Reply(458, "", "Unable to queue messages")
        return Reply(250, "", "Queuing started")

    def _offered(self):
        return self.factory.offered if self.protocolName != "SMTP" else frozenset()

    def smtp_MAIL(self, arg):
        factory = self.factory
        if self.sender is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: nested MAIL command"))
        if factory.heloRequired and self.helo is None:
            return self._fault("policy", Reply(503, "5.5.1", "Error: send HELO/EHLO first"))
        if arg[:5].upper() != "FROM:":
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        try:
            path, params = splitPathAndParameters(arg[5:], strict=factory.strictEnvelopes)
            mailParams = parseMailParameters(params, sizeLimit=factory.sizeLimit, offered=self._offered())
            sender = factory.rewrite.parsePath(path, allowNull=True, smtputf8=mailParams.smtputf8)
        except SizeExceeded:
            reply = Reply(552, "5.3.4", "Message size exceeds fixed limit")
            self._logReject("MAIL", reply)
            return self._fault("policy", reply)
        except ParameterError as e:
            return self._fault("protocol", Reply(555, "5.5.4", f"Unsupported option: {e}"))
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad sender address syntax: {e}")  # no class, as in Postfix
        except PathError as e:
            return self._fault("protocol", Reply(501, "5.1.7", f"Bad sender address syntax: {e}"))
        if not factory.enoughSpace(mailParams.size or 0):
            reply = Reply(452, "4.3.1", "Insufficient system storage")
            self._logReject("MAIL", reply)
            return self._fault("resource", reply)
        self.sender = sender
        self.mailParams = mailParams
        return chooseHeaderRewrite(self, Reply(250, "2.1.0", "Ok"))  # local_header_rewrite_clients

    async def smtp_RCPT(self, arg):
        factory = self.factory
        if self.sender is None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: need MAIL command"))
        if arg[:3].upper() != "TO:":
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        self._rcptTried = True
        try:
            path, params = splitPathAndParameters(
                arg[3:], strict=factory.strictEnvelopes, smtputf8=self.mailParams.smtputf8
            )
            rcptParams = parseRcptParameters(params, offered=self._offered(), smtputf8=self.mailParams.smtputf8)
            address = factory.rewrite.parsePath(path, allowNull=False, smtputf8=self.mailParams.smtputf8)
        except ParameterError as e:
            return self._fault("protocol", Reply(555, "5.5.4", f"Unsupported option: {e}"))
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad recipient address syntax: {e}")  # no class, as in Postfix
        except PathError as e:
            return self._fault("protocol", Reply(501, "5.1.3", f"Bad recipient address syntax: {e}"))
        if len(self.recipients) >= factory.recipientLimit:
            self._overshoot += 1
            self._uncountedError = self._overshoot <= factory.overshootLimit
            if not self._uncountedError:  # past the overshoot limit: an error, and Postfix's policy class
                self._fault("policy")
            return Reply(452, "4.5.3", "Error: too many recipients")
        errorClass = "policy"
        if self._earlyTalker:
            reply, hold, errorClass = Reply(550, "5.5.1", "Protocol error"), None, "protocol"
        elif path[1:-1].lower() == "postmaster":  # bare: always accepted (RFC 5321 4.5.1), as in Postfix
            reply, hold = None, None
        else:
            reply, hold, errorClass = await factory.policy.checkRecipient(
                self.clientAddress, address, self.helo, self.sender)
        if reply is not None:
            self._logReject("RCPT", reply, address)
            return self._fault(errorClass, reply)
        if hold is not None and self.hold is None:
            self.hold = hold
            self._logReject("RCPT", None, address, action="hold", text=hold)
        self.recipients.append(Recipient(str(address), rcptParams.orcpt, rcptParams.notify))
        return Reply(250, "2.1.5", "Ok")

    def _startMessage(self):
        """Open the queue file (with our Received header); a Reply on failure."""
        if not self.recipients:
            if self._rcptTried:
                return Reply(554, "5.5.1", "Error: no valid recipients")  # no class: pipelining makes it normal
            return self._fault("protocol", Reply(503, "5.5.1", "Error: need RCPT command"))
        try:
            self.transaction = IncomingTransaction(self)
        except Exception as e:
            log.error("smtpd: cannot create a queue file: {error}", error=str(e))
            return self._fault("resource", Reply(451, "4.3.0", "Error: queue file write error"))
        return None

    def smtp_DATA(self, arg):
        if arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: DATA"))
        if self.sender is None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: need MAIL command"))
        if self.transaction is not None or self._bdatFailure is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: DATA after BDAT"))
        if self.mailParams.body == "BINARYMIME":
            return self._fault("protocol", Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT"))
        failure = self._startMessage()
        if failure is not None:
            return failure
        self._reader = D.DataReader(
            self.transaction.write, self.factory.lineLimit, self.factory.sizeLimit, self.bareNewline
        )
        self._mode = "data"
        self._newRequest(content=True)
        self._reply(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        return None

    def _dataStep(self):
        reader = self._reader
        consumed = reader.feed(self._buffer)
        if reader.fatal is not None:
            # A bare newline under reject: reply and disconnect, whatever came before.
            self._buffer = b""
            self._contentFatal("data", "DATA")
            return
        if consumed is None:
            self._buffer = b""
            return
        self._buffer = self._buffer[consumed:]
        self._endData()

    def _contentFatal(self, verb, where):
        self._abortMessage()
        self._count(verb, False)
        self._bareNewlineReject(where)

    def _contentReply(self, error, verb="data"):
        if error == D.TOO_BIG:
            # Postfix: cleanup's "message file too big" is the bounce class; BDAT's size check, policy.
            reply = Reply(552, "5.3.4", "Error: message file too big")
            return self._fault("bounce" if verb == "data" else "policy", reply)
        # Postfix has no such limit (it splits long lines): mta counts it a protocol error.
        reply = Reply(552, "5.3.4", f"Error: message line longer than {self.factory.lineLimit} bytes")
        return self._fault("protocol", reply)

    def _endData(self):
        """The real end of data (CRLF.CRLF): only here does DATA return to command mode."""
        reader, self._reader = self._reader, None
        assert reader.done
        self._mode = "command"
        self._newRequest()
        self._lastCommand = "END-OF-MESSAGE"
        self._resetAfterReply = True
        if reader.error is not None:
            reply = self._contentReply(reader.error)
            self._logReject("END-OF-MESSAGE", reply)
            self._resetTransaction()
            self._respond("data", reply)
            return
        self._endMessage("data")

    def _endMessage(self, verb):
        """Commit the message; the reply goes out when the queue file is safe."""
        transaction, self.transaction = self.transaction, None
        reply = transaction.finish()
        if reply is not None:
            self._logReject("END-OF-MESSAGE", reply)
            self._resetTransaction()
            self._respond(verb, self._fault("bounce", reply))  # too many hops: Postfix's bounce class
            return
        self._resetTransaction()
        d = transaction.commit()

        def committed(queueId):
            self._errors = self._junk = 0  # Postfix forgives a client that delivers mail
            return Reply(250, "2.0.0", f"Ok: queued as {queueId}")

        def failed(failure):
            log.error("smtpd: queue file write error: {error}", error=failure.getErrorMessage())
            return self._fault("resource", Reply(451, "4.3.0", "Error: queue file write error"))

        self._respond(verb, d.addCallbacks(committed, failed))

    # -- BDAT (RFC 3030) -------------------------------------------------------

    def smtp_BDAT(self, arg):
        parts = arg.split()
        if not (1 <= len(parts) <= 2 and parts[0].isdigit() and len(parts[0]) <= 18) or (
            len(parts) == 2 and parts[1].upper() != "LAST"
        ):
            # The chunk's length is unknown, so the stream cannot be followed.
            self._count("bdat", False)
            self._fault("protocol")
            self._reply(Reply(501, "5.5.4", "Syntax: BDAT count [LAST]"))
            self._close()
            return None
        size = int(parts[0])
        self._chunkRemaining = size
        self._chunkLast = len(parts) == 2
        self._chunkError = None
        if self.protocolName == "SMTP":
            self._chunkError = self._fault("protocol", Reply(503, "5.5.1", "Error: send EHLO first"))
        elif self.sender is None:
            self._chunkError = self._fault("protocol", Reply(503, "5.5.1", "Error: need MAIL command"))
        elif size == 0 and not self._chunkLast:
            # Postfix blocks empty chunks rather than count them as junk (smtpd.c bdat_cmd).
            queueId = self.transaction.queueId if self.transaction is not None else "NOQUEUE"
            self.factory.maillog.emit(f"warning: {queueId}: null BDAT request from {self.client}")
            self._failBdat(Reply(551, "5.7.1", "Null BDAT request"))
        elif self._bdatFailure is not None:
            self._chunkError = Reply(551, "5.0.0", f"Discarded {size} bytes after earlier error")
        elif self.transaction is None:
            failure = self._startMessage()
            if failure is not None:
                self._failBdat(failure)
            else:
                binary = self.mailParams.body == "BINARYMIME"  # no lines, no line-end checks
                self._content = D.ContentReader(
                    self.transaction.write, self.factory.lineLimit, self.factory.sizeLimit, self.bareNewline,
                    binary=binary,
                )
        self._mode = "bdat"
        if size:
            self._newRequest(content=True)
        else:
            self._endChunk()
        return None

    def _failBdat(self, reply):
        """The transaction failed: this chunk gets C{reply}, later ones are discarded until LAST."""
        self._chunkError = self._bdatFailure = reply
        self._abortMessage()
        self._content = None

    def _bdatStep(self):
        take = min(self._chunkRemaining, len(self._buffer))
        if take == len(self._buffer):
            chunk, self._buffer = self._buffer, b""
        else:
            chunk, self._buffer = self._buffer[:take], self._buffer[take:]
        self._chunkRemaining -= take
        self._bdatBytes += take
        if self._chunkError is None:
            self._content.write(chunk)
            if self._content.fatal is not None:
                self._contentFatal("bdat", "BDAT")
                return
        if self._chunkRemaining == 0:
            self._endChunk()

    def _endChunk(self):
        self._mode = "command"
        self._newRequest()
        if self._chunkLast:
            self._lastCommand = "END-OF-MESSAGE"
            self._resetAfterReply = True
        content = self._content
        if self._chunkError is None:
            if self._chunkLast:
                content.close()  # the last line may have no line end; a CR at the end is bare
                if content.fatal is not None:
                    self._contentFatal("bdat", "BDAT")
                    return
            if content.error is not None:
                self._failBdat(self._contentReply(content.error, "bdat"))
        if self._chunkError is not None:
            if self._chunkLast and self._bdatFailure is not None:
                if self._bdatFailure.code >= 500:
                    self._logReject("END-OF-MESSAGE", self._bdatFailure)
                self._resetTransaction()
            self._respond("bdat", self._chunkError)
            return
        if not self._chunkLast:
            self._respond("bdat", Reply(250, "2.0.0", f"Ok: {self._bdatBytes} bytes"))
            return
        self._endMessage("bdat")
