"""mta.smtpd.protocol - the ESMTP server state machine (smtpd(8)).

A byte-stream protocol: input is split into CRLF-terminated commands, or
handed to the DATA reader (mta.smtpd.data) or to a BDAT chunk counter.
Commands run one at a time; a command whose check is slow (a table lookup,
the queue's fsync) holds back the commands pipelined behind it, so replies
always go out in command order (RFC 2920).  Replies are written when the
input runs dry, so a pipelined group gets one write back.

Policy lives in mta.smtpd.policy; this module only parses and keeps state.

SECURITY
    Everything read is untrusted.  A bare LF or CR (in a command or in
    DATA) gets 521 and the connection is closed (Postfix's
    smtpd_forbid_bare_newline = yes); an over-long line never leaves DATA;
    content sent before the 354 reply (forbidden pipelining) gets 554 5.5.0
    and a close; forbidden commands (CONNECT, GET, POST) get 221 and a
    close; a failure inside a check answers 451 4.3.0, it never hangs the
    session or stops the reactor.

CONFIGURATION
    smtpd_banner, myhostname, mail_name, message_size_limit,
    smtpd_recipient_limit, smtpd_timeout, line_length_limit; see
    mta.smtpd.policy for relay control.
"""

import email.utils

from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin

from mta.address import (
    NonAsciiPathError,
    ParameterError,
    PathError,
    SizeExceeded,
    parseMailParameters,
    parsePath,
    parseRcptParameters,
    splitPathAndParameters,
)
from mta.maillog import sanitize
from mta.model import Envelope, Recipient, Reply
from mta.smtpd import data as D

log = Logger()

FORBIDDEN = frozenset({b"CONNECT", b"GET", b"POST"})
# RFC 2920 3.1: these end a pipelined group; more input behind them is a violation.
GROUP_ENDERS = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP", "QUIT"})
# A command line is at most 512 octets (RFC 5321 4.5.3.1.4), more with extensions.
COMMAND_LIMIT = 2048

R_OK = Reply(250, "2.0.0", "Ok")


class SMTPServer(Protocol, TimeoutMixin):
    def __init__(self, factory):
        self.factory = factory
        self.params = factory.params
        self.hostname = factory.hostname
        self.callLater = factory.clock.callLater  # TimeoutMixin's clock
        self._buffer = b""
        self._mode = "command"
        self._waiting = False
        self._closing = False
        self._skipLine = False  # discarding the rest of an over-long command line
        self._out = []
        self._counts = {}
        self.helo = None
        self.protocolName = "SMTP"
        self.message = None
        self._lastCommand = None
        self._resetTransaction()

    # -- connection -----------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        self.clientAddress = getattr(peer, "host", "") or ""
        self.clientPort = getattr(peer, "port", 0) or 0
        self.clientName = "unknown"
        self.client = f"{self.clientName}[{self.clientAddress}]"
        self.factory.maillog.emit(f"connect from {self.client}", client=self.client)
        self.setTimeout(self.params["smtpd_timeout"])
        self._reply(Reply(220, "", self.factory.banner))
        self._flush()

    def connectionLost(self, reason):
        self.setTimeout(None)
        self._abortMessage()
        counts = " ".join(
            f"{verb}={ok}" if ok == total else f"{verb}={ok}/{total}" for verb, (ok, total) in self._counts.items()
        )
        total = sum(t for _, t in self._counts.values())
        okTotal = sum(o for o, _ in self._counts.values())
        commands = f"commands={okTotal}" if okTotal == total else f"commands={okTotal}/{total}"
        self.factory.maillog.emit(
            f"disconnect from {self.client} {counts + ' ' if counts else ''}{commands}", client=self.client
        )
        self.factory.connectionClosed(self)

    def timeoutConnection(self):
        self.factory.maillog.emit(f"timeout after {self._lastCommand or 'CONNECT'} from {self.client}")
        self._reply(Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded"))
        self._close()

    def _close(self):
        self._closing = True
        self._flush()
        self.transport.loseConnection()

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data):
        if self._closing:
            return
        self.resetTimeout()
        self._buffer += data
        self._process()

    def _process(self):
        try:
            while self._buffer and not self._waiting and not self._closing:
                if self._mode == "command":
                    if not self._commandStep():
                        break
                elif self._mode == "data":
                    self._dataStep()
                else:
                    self._bdatStep()
        except Exception:
            log.failure("smtpd: internal error in session with {client}", client=self.client)
            self._reply(Reply(421, "4.3.0", f"{self.hostname} Error: internal error"))
            self._close()
        if self._waiting and len(self._buffer) > 65536:
            self.transport.pauseProducing()
        self._flush()

    def _commandStep(self):
        """Handle one command line if a whole one is buffered; False if not."""
        end = self._buffer.find(b"\n")
        if end < 0:
            if len(self._buffer) > COMMAND_LIMIT:
                self._buffer = b""
                if not self._skipLine:
                    self._skipLine = True
                    self._reply(Reply(500, "5.5.2", "Error: line too long"))
            return False
        line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1 :]
        if self._skipLine:
            self._skipLine = False
            return True
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            self.factory.maillog.emit(f"bare <LF> received from {self.client}; disconnecting")
            self._reply(Reply(521, "5.5.2", f"{self.hostname} Error: bare <LF> received"))
            self._close()
            return False
        self._command(line[:-2])
        return True

    # -- commands -----------------------------------------------------------------

    def _command(self, line):
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb in FORBIDDEN or (verb and not verb[:1].isalpha()):
            self.factory.maillog.emit(f"reject: {sanitize(line[:40].decode('latin-1'))} from {self.client}")
            self._reply(Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
            self._close()
            return
        try:
            verb = verb.decode("ascii")
            arg = arg.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self._count("unknown", False)
            self._reply(Reply(500, "5.5.2", "Error: invalid characters in command"))
            return
        self._lastCommand = verb
        handler = getattr(self, f"smtp_{verb}", None)
        if handler is None:
            self._count("unknown", False)
            self._reply(Reply(502, "5.5.2", "Error: command not recognized"))
            return
        if verb in GROUP_ENDERS and self._buffer and self.factory.forbidUnauthPipelining:
            self.factory.maillog.emit(f"improper command pipelining after {verb} from {self.client}")
            self._count(verb.lower(), False)
            self._reply(Reply(554, "5.5.0", "Error: SMTP protocol synchronization"))
            self._close()
            return
        result = maybeDeferred(handler, arg)
        if result.called:
            result.addCallbacks(lambda r: self._done(verb, r), lambda f: self._failed(verb, f))
            return
        self._waiting = True
        result.addCallbacks(lambda r: self._done(verb, r), lambda f: self._failed(verb, f))
        result.addBoth(self._resume)

    def _done(self, verb, reply):
        if reply is None:  # the handler switched mode and replied itself
            return
        self._count(verb.lower(), reply.code < 400)
        self._reply(reply)
        if reply.code in (221, 421):
            self._close()

    def _failed(self, verb, failure):
        log.failure("smtpd: {verb} failed for {client}", failure, verb=verb, client=self.client)
        self._count(verb.lower(), False)
        self._reply(Reply(451, "4.3.0", "Error: internal error, try again later"))

    def _resume(self, _):
        self._waiting = False
        if not self._closing:
            self.transport.resumeProducing()
            self._process()

    def _count(self, verb, ok):
        good, total = self._counts.get(verb, (0, 0))
        self._counts[verb] = (good + bool(ok), total + 1)

    def _reply(self, reply):
        self._out.append(reply.lines())

    def _flush(self):
        if self._out:
            self.transport.write(b"".join(self._out))
            self._out = []

    def _resetTransaction(self):
        self._abortMessage()
        self.sender = None
        self.mailParams = None
        self.recipients = []
        self._rcptTried = False
        self._reader = None
        self._bdatSize = 0  # content bytes received by BDAT in this transaction
        self._bdatFailure = None  # a BDAT transaction that failed answers this until LAST

    def _abortMessage(self):
        if self.message is not None:
            self.message.abort()
            self.message = None

    def smtp_HELO(self, arg):
        if not arg:
            return Reply(501, "5.5.4", "Syntax: HELO hostname")
        self._resetTransaction()
        self.helo = sanitize(arg)[:255]
        self.protocolName = "SMTP"
        return Reply(250, "", self.hostname)

    def smtp_EHLO(self, arg):
        if not arg:
            return Reply(501, "5.5.4", "Syntax: EHLO hostname")
        self._resetTransaction()
        self.helo = sanitize(arg)[:255]
        self.protocolName = "ESMTP"
        return Reply(250, "", "\n".join([self.hostname, *self.factory.ehloLines]))

    def smtp_NOOP(self, arg):
        return R_OK

    def smtp_RSET(self, arg):
        if arg:
            return Reply(501, "5.5.4", "Syntax: RSET")
        self._resetTransaction()
        return R_OK

    def smtp_QUIT(self, arg):
        return Reply(221, "2.0.0", "Bye")

    def smtp_HELP(self, arg):
        return Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP")

    def smtp_VRFY(self, arg):
        if not arg:
            return Reply(501, "5.5.4", "Syntax: VRFY address")
        try:
            address = parsePath(arg if arg.startswith("<") else f"<{arg}>", allowNull=False)
        except PathError as e:
            return Reply(501, "5.1.3", f"Bad recipient address syntax: {e}")
        return Reply(252, "2.0.0", f"<{address}>")

    def _offered(self):
        return self.factory.offered if self.protocolName != "SMTP" else frozenset()

    def smtp_MAIL(self, arg):
        if self.sender is not None:
            return Reply(503, "5.5.1", "Error: nested MAIL command")
        if self.factory.heloRequired and self.helo is None:
            return Reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if arg[:5].upper() != "FROM:":
            return Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        try:
            path, params = splitPathAndParameters(arg[5:], strict=self.factory.strictEnvelopes)
            mailParams = parseMailParameters(params, sizeLimit=self.factory.sizeLimit, offered=self._offered())
            sender = parsePath(path, allowNull=True, smtputf8=mailParams.smtputf8)
        except SizeExceeded:
            return Reply(552, "5.3.4", "Message size exceeds fixed limit")
        except ParameterError as e:
            return Reply(555, "5.5.4", f"Unsupported option: {e}")
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad sender address syntax: {e}")
        except PathError as e:
            return Reply(501, "5.1.7", f"Bad sender address syntax: {e}")
        self.sender = sender
        self.mailParams = mailParams
        return Reply(250, "2.1.0", "Ok")

    async def smtp_RCPT(self, arg):
        if self.sender is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if arg[:3].upper() != "TO:":
            return Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
        self._rcptTried = True
        try:
            path, params = splitPathAndParameters(
                arg[3:], strict=self.factory.strictEnvelopes, smtputf8=self.mailParams.smtputf8
            )
            rcptParams = parseRcptParameters(params, offered=self._offered(), smtputf8=self.mailParams.smtputf8)
            address = parsePath(path, allowNull=False, smtputf8=self.mailParams.smtputf8)
        except ParameterError as e:
            return Reply(555, "5.5.4", f"Unsupported option: {e}")
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad recipient address syntax: {e}")
        except PathError as e:
            return Reply(501, "5.1.3", f"Bad recipient address syntax: {e}")
        if len(self.recipients) >= self.factory.recipientLimit:
            return Reply(452, "4.5.3", "Error: too many recipients")
        reply = await self.factory.policy.checkRecipient(self.clientAddress, address)
        if reply is not None:
            self._logReject("RCPT", reply, address)
            return reply
        self.recipients.append(Recipient(str(address), rcptParams.orcpt, rcptParams.notify))
        return Reply(250, "2.1.5", "Ok")

    def _logReject(self, stage, reply, recipient=None):
        to = f" to=<{recipient}>" if recipient is not None else ""
        self.factory.maillog.emit(
            f"NOQUEUE: reject: {stage} from {self.client}: {sanitize(str(reply))}; "
            f"from=<{sanitize(self.sender)}>{to} proto={self.protocolName} helo=<{self.helo or ''}>",
            client=self.client,
            status="reject",
        )

    def _startMessage(self):
        """Open the queue file and write our Received header; a Reply on failure."""
        if not self.recipients:
            if self._rcptTried:
                return Reply(554, "5.5.1", "Error: no valid recipients")
            return Reply(503, "5.5.1", "Error: need RCPT command")
        try:
            self.message = self.factory.store.newMessage()
        except Exception as e:
            log.error("smtpd: cannot create a queue file: {error}", error=str(e))
            return Reply(451, "4.3.0", "Error: queue file write error")
        self.message.write(self._receivedHeader())
        return None

    def smtp_DATA(self, arg):
        if arg:
            return Reply(501, "5.5.4", "Syntax: DATA")
        if self.sender is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if self.message is not None or self._bdatFailure is not None:
            return Reply(503, "5.5.1", "Error: DATA after BDAT")
        failure = self._startMessage()
        if failure is not None:
            return failure
        allow8bit = True  # strict_8bitmime comes with the cleanup work; Postfix's default accepts
        self._reader = D.DataReader(
            self.message.write, self.factory.lineLimit, self.factory.sizeLimit, allow8bit
        )
        self._mode = "data"
        self._count("data", True)
        self._reply(Reply(354, "", "End data with <CR><LF>.<CR><LF>"))
        return None

    def _dataStep(self):
        consumed = self._reader.feed(self._buffer)
        if consumed is None:
            self._buffer = b""
            if self._reader.done:  # fatal error before the end: bare newline
                self._endData()
            return
        self._buffer = self._buffer[consumed:]
        self._endData()

    def _endData(self):
        reader, self._reader = self._reader, None
        self._mode = "command"
        error = reader.error
        if error == D.BARE_NEWLINE:
            self._abortMessage()
            self.factory.maillog.emit(f"bare <LF> received from {self.client} in DATA; message rejected")
            self._reply(Reply(521, "5.5.2", f"{self.hostname} Error: bare <LF> received"))
            self._close()
            return
        if error is not None:
            reply = {
                D.TOO_BIG: Reply(552, "5.3.4", "Error: message file too big"),
                D.LINE_TOO_LONG: Reply(552, "5.3.4", f"Error: message line longer than {self.factory.lineLimit} bytes"),
                D.EIGHT_BIT: Reply(554, "5.6.0", "Error: 8-bit data without BODY=8BITMIME"),
            }[error]
            self._logReject("END-OF-MESSAGE", reply)
            self._resetTransaction()
            self._reply(reply)
            return
        self._commit()

    def _commit(self):
        message, self.message = self.message, None
        envelope = Envelope(
            sender=str(self.sender),
            recipients=tuple(self.recipients),
            arrival_time=self.factory.clock.seconds(),
            client_name=self.clientName,
            client_address=self.clientAddress,
            client_port=self.clientPort,
            helo=self.helo or "",
            protocol=self.protocolName,
            body=self.mailParams.body,
            smtputf8=self.mailParams.smtputf8,
            ret=self.mailParams.ret,
            envid=self.mailParams.envid,
            size=message.size,
        )
        self._resetTransaction()
        self._waiting = True
        d = message.commit(envelope)

        def committed(queueId):
            ml = self.factory.maillog
            ml.emit(f"client={self.client}", queue_id=queueId, client=self.client)
            ml.fields(
                queueId,
                [("from", f"<{envelope.sender}>"), ("size", envelope.size), ("nrcpt", len(envelope.recipients))],
                "queued",
                sender=envelope.sender,
            )
            self._reply(Reply(250, "2.0.0", f"Ok: queued as {queueId}"))

        def failed(failure):
            message.abort()
            log.error("smtpd: queue file write error: {error}", error=failure.getErrorMessage())
            self._reply(Reply(451, "4.3.0", "Error: queue file write error"))

        d.addCallbacks(committed, failed)
        d.addErrback(lambda f: log.failure("smtpd: after commit", f))
        d.addBoth(self._resume)

    # -- BDAT (RFC 3030) -------------------------------------------------------

    def smtp_BDAT(self, arg):
        parts = arg.split()
        if not (1 <= len(parts) <= 2 and parts[0].isdigit() and len(parts[0]) <= 18) or (
            len(parts) == 2 and parts[1].upper() != "LAST"
        ):
            # The chunk's length is unknown, so the stream cannot be followed.
            self._count("bdat", False)
            self._reply(Reply(501, "5.5.4", "Syntax: BDAT count [LAST]"))
            self._close()
            return None
        self._chunkRemaining = int(parts[0])
        self._chunkLast = len(parts) == 2
        self._chunkError = None
        if self.protocolName == "SMTP":
            self._chunkError = Reply(503, "5.5.1", "Error: send EHLO first")
        elif self.sender is None:
            self._chunkError = Reply(503, "5.5.1", "Error: need MAIL command")
        elif self._bdatFailure is not None:
            self._chunkError = self._bdatFailure
        elif self.message is None:
            failure = self._startMessage()
            if failure is not None:
                self._chunkError = self._bdatFailure = failure
        self._mode = "bdat"
        if self._chunkRemaining == 0:
            self._endChunk()
        return None

    def _bdatStep(self):
        take = min(self._chunkRemaining, len(self._buffer))
        if take == len(self._buffer):
            chunk, self._buffer = self._buffer, b""
        else:
            chunk, self._buffer = self._buffer[:take], self._buffer[take:]
        self._chunkRemaining -= take
        if self._chunkError is None:
            self._bdatSize += take
            if self.factory.sizeLimit and self._bdatSize > self.factory.sizeLimit:
                self._chunkError = self._bdatFailure = Reply(552, "5.3.4", "Error: message file too big")
                self._abortMessage()
            else:
                self.message.write(chunk)
        if self._chunkRemaining == 0:
            self._endChunk()

    def _endChunk(self):
        self._mode = "command"
        if self._chunkError is not None:
            self._count("bdat", False)
            if self._chunkLast and self._bdatFailure is not None:
                if self._bdatFailure.code >= 500:
                    self._logReject("END-OF-MESSAGE", self._bdatFailure)
                self._resetTransaction()
            self._reply(self._chunkError)
            return
        self._count("bdat", True)
        if not self._chunkLast:
            self._reply(Reply(250, "2.0.0", f"Ok: {self._bdatSize} bytes"))
            return
        self._commit()

    # -- trace header -----------------------------------------------------------

    def _receivedHeader(self):
        """Our Received header (RFC 5321 4.4), folded as Postfix folds it."""
        protocol = self.protocolName
        forClause = f"\r\n\tfor <{self.recipients[0].address}>" if len(self.recipients) == 1 else ""
        date = email.utils.formatdate(self.factory.clock.seconds(), localtime=True)
        helo = self.helo or self.clientName
        text = (
            f"Received: from {helo} ({self.clientName} [{self.clientAddress}])\r\n"
            f"\tby {self.hostname} ({self.factory.mailName}) with {protocol} id {self.message.queueId}"
            f"{forClause};\r\n\t{date}\r\n"
        )
        return text.encode("utf-8", "replace")
