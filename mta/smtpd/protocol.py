"""mta.smtpd.protocol - the ESMTP server state machine (smtpd(8)).

A byte-stream protocol: input is split into CRLF-terminated commands, or
handed to the DATA reader (mta.smtpd.data) or to a BDAT chunk counter.
Commands run one at a time; a command whose check is slow (a table lookup,
the queue's fsync, a tarpit delay) holds back the commands pipelined behind
it, so replies always go out in command order (RFC 2920).  Replies are
written when the input runs dry, so a pipelined group gets one write back.

Policy lives in mta.smtpd.policy, content cleanup in mta.smtpd.cleanup;
this module parses, keeps state and applies smtpd(8)'s own limits.

SECURITY
    Everything read is untrusted.  A bare LF or CR (in a command or in
    DATA) gets the smtpd_forbid_bare_newline_reject_code and a close; an
    over-long line never leaves DATA; content sent before the 354 reply
    (forbidden pipelining) gets 554 5.5.0 and a close; forbidden commands
    get 221 and a close; a client that keeps making errors is slowed down,
    then disconnected; a failure inside a check answers 451 4.3.0, it never
    hangs the session or stops the reactor.

CONFIGURATION
    smtpd_banner, myhostname, mail_name, message_size_limit,
    smtpd_recipient_limit, smtpd_recipient_overshoot_limit, smtpd_timeout,
    line_length_limit, smtpd_helo_required, strict_rfc821_envelopes,
    disable_vrfy_command, smtpd_noop_commands, smtpd_forbidden_commands,
    smtpd_discard_ehlo_keywords, smtpd_reject_footer, queue_minfree,
    smtpd_client_connection_count_limit, smtpd_client_event_limit_exceptions,
    smtpd_error_sleep_time, smtpd_soft_error_limit, smtpd_hard_error_limit,
    smtpd_junk_command_limit, smtpd_forbid_unauth_pipelining,
    smtpd_forbid_bare_newline (+ _exclusions, _reject_code), hopcount_limit,
    postscreen_greet_wait, postscreen_greet_action; see mta.smtpd.factory.
"""

from collections.abc import Coroutine

from twisted.internet.defer import Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
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
from mta.model import Recipient, Reply
from mta.smtpd import data as D
from mta.smtpd.message import IncomingTransaction, chooseHeaderRewrite

log = Logger()

# RFC 2920 3.1: these end a pipelined group; more input behind them is a violation.
GROUP_ENDERS = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP", "QUIT"})
# Postfix's junk commands: past smtpd_junk_command_limit each one is an error.
JUNK = frozenset({"NOOP", "VRFY", "ETRN", "RSET"})
# A command line is at most 512 octets (RFC 5321 4.5.3.1.4), more with extensions.
COMMAND_LIMIT = 2048
# Input held while a command is pending before the socket stops being read.
PAUSE_THRESHOLD = 65536

R_OK = Reply(250, "2.0.0", "Ok")


class SMTPServer(Protocol, TimeoutMixin):
    def __init__(self, factory):
        self.factory = factory
        self.hostname = factory.hostname
        self.callLater = factory.clock.callLater  # TimeoutMixin's clock
        self._buffer = b""
        self._mode = "command"
        self._waiting = True  # until the greeting is out
        self._closing = False
        self._paused = False
        self._skipLine = False  # discarding the rest of an over-long command line
        self._out = []
        self._counts = {}
        self._errors = 0
        self._junk = 0
        self._earlyTalker = False
        self._counted = False  # in the factory's per-client connection count
        self._uncountedError = False  # set by a reply that is not a session error
        self.bareNewline = factory.bareNewline
        self.helo = None
        self.protocolName = "SMTP"
        self.transaction = None
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
        self.setTimeout(self.factory.timeout)
        if self.factory.greetWait > 0 or not self._connectChecksAreStatic():
            d = Deferred.fromCoroutine(self._connect())
            d.addErrback(self._internalError)
            return
        # Fast path: nothing to look up in a table, nothing to wait for.
        factory = self.factory
        if factory.connectionLimit and not factory.eventLimitExceptions.staticMatch(self.clientAddress):
            if not self._checkConnectionCount():
                return
        if self.bareNewline in ("reject", "yes") and factory.bareNewlineExclusions.staticMatch(self.clientAddress):
            self.bareNewline = "normalize"
        self._greet()

    def _connectChecksAreStatic(self):
        factory = self.factory
        return factory.eventLimitExceptions.static and factory.bareNewlineExclusions.static

    def _checkConnectionCount(self):
        """Count this session; refuse it (False) past the per-client limit."""
        factory = self.factory
        count = factory.countConnection(self.clientAddress)
        self._counted = True
        if count > factory.connectionLimit:
            factory.maillog.emit(
                f"warning: Connection concurrency limit exceeded: {count} from {self.client}", client=self.client
            )
            self._reply(Reply(421, "4.7.0", f"{self.hostname} Error: too many connections from {self.clientAddress}"))
            self._close()
            return False
        return True

    def _greet(self):
        self._reply(Reply(220, "", self.factory.banner))
        self._waiting = False
        self._process()

    async def _connect(self):
        factory = self.factory
        if factory.connectionLimit and not await factory.eventLimitExceptions.matches(self.clientAddress):
            if not self._checkConnectionCount():
                return
        if self.bareNewline in ("reject", "yes") and await factory.bareNewlineExclusions.matches(self.clientAddress):
            self.bareNewline = "normalize"
        if factory.greetWait > 0:
            await deferLater(factory.clock, factory.greetWait)
            if self._closing:
                return
            if self._buffer:
                first = sanitize(self._buffer[:60].decode("latin-1"))
                factory.maillog.emit(
                    f"PREGREET {len(self._buffer)} after {factory.greetWait:g} from "
                    f"[{self.clientAddress}]:{self.clientPort}: {first}",
                    client=self.client,
                )
                if factory.greetAction == "drop":
                    self._reply(Reply(521, "5.5.1", "Protocol error"))
                    self._close()
                    return
                self._earlyTalker = factory.greetAction == "enforce"
        self._greet()

    def connectionLost(self, reason):
        if not self._closing and self._mode in ("data", "bdat"):
            size = self.transaction.size if self.transaction is not None else 0
            self.factory.maillog.emit(f"lost connection after {self._lastCommand} ({size} bytes) from {self.client}")
            self._count(self._mode, False)
        elif not self._closing:
            self.factory.maillog.emit(f"lost connection after {self._lastCommand or 'CONNECT'} from {self.client}")
        self._closing = True
        self.setTimeout(None)
        self._abortMessage()
        if self._counted:
            self.factory.releaseConnection(self.clientAddress)
        counts = " ".join(
            f"{verb}={ok}" if ok == total else f"{verb}={ok}/{total}" for verb, (ok, total) in self._counts.items()
        )
        total = sum(t for _, t in self._counts.values())
        okTotal = sum(o for o, _ in self._counts.values())
        commands = f"commands={okTotal}" if okTotal == total and total else f"commands={okTotal}/{total}"
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

    def _internalError(self, failure):
        log.failure("smtpd: internal error in session with {client}", failure, client=self.client)
        if not self._closing:
            self._reply(Reply(421, "4.3.0", f"{self.hostname} Error: internal error"))
            self._close()

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
            self._internalError(None)
            return
        if self._waiting and len(self._buffer) > PAUSE_THRESHOLD and not self._paused:
            self._paused = True
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
                    self._respond("unknown", Reply(500, "5.5.2", "Error: line too long"))
            return False
        line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1 :]
        if self._skipLine:
            self._skipLine = False
            return True
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            if self.bareNewline in ("reject", "yes"):
                self._bareNewlineReject("command")
                return False
            line = line.rstrip(b"\r\n").replace(b"\r", b"") + b"\r\n"
        self._command(line[:-2])
        return True

    def _bareNewlineReject(self, where):
        self.factory.maillog.emit(f"reject: bare <LF> received in {where} from {self.client}; disconnecting")
        self._reply(Reply(self.factory.bareNewlineCode, "5.5.2", f"{self.hostname} Error: bare <LF> received"))
        self._close()

    # -- replies ------------------------------------------------------------------

    def _command(self, line):
        factory = self.factory
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb in factory.forbiddenCommands or (verb and not verb[:1].isalpha()):
            factory.maillog.emit(f"warning: non-SMTP command from {self.client}: {sanitize(line[:60].decode('latin-1'))}")
            self._reply(Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
            self._close()
            return
        try:
            verb = verb.decode("ascii")
            arg = arg.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self._respond("unknown", Reply(500, "5.5.2", "Error: invalid characters in command"))
            return
        self._lastCommand = verb
        if verb in factory.noopCommands:
            self._respond(verb, R_OK)
            return
        handler = getattr(self, f"smtp_{verb}", None)
        if handler is None:
            self._respond("unknown", Reply(502, "5.5.2", "Error: command not recognized"))
            return
        if verb in GROUP_ENDERS and self._buffer and factory.forbidUnauthPipelining:
            factory.maillog.emit(f"improper command pipelining after {verb} from {self.client}")
            self._count(verb, False)
            self._reply(Reply(554, "5.5.0", "Error: SMTP protocol synchronization"))
            self._close()
            return
        if verb in JUNK:
            self._junk += 1
        try:
            result = handler(arg)
        except Exception:
            result = fail()
        if isinstance(result, Coroutine):
            result = Deferred.fromCoroutine(result)
        self._respond(verb, result)

    def _respond(self, verb, result):
        """Send C{result} (a Reply, None, or a Deferred of one) when it is ready, in order."""
        if not isinstance(result, Deferred):
            # The common case: an immediate reply, no Deferred machinery.
            try:
                result = self._finish(verb, result)
            except Exception:
                self._internalError(None)
                return
            if result is None:
                return
        else:
            result.addCallbacks(lambda reply: self._finish(verb, reply), lambda f: self._failed(verb, f))
        result.addErrback(self._internalError)
        pending = [True]  # d.called says nothing of a chain paused on a tarpit delay

        def settled(value):
            pending[0] = False

        result.addBoth(settled)
        if pending[0]:
            self._waiting = True
            result.addBoth(self._resume)

    def _finish(self, verb, reply):
        """Count, tarpit and send one reply; a Deferred while the tarpit delays it."""
        if reply is None or self._closing:  # the handler replied itself (354, BDAT)
            return None
        ok = reply.code < 400
        self._count(verb, ok)
        if (not ok and not self._uncountedError) or (verb in JUNK and self._junk > self.factory.junkLimit):
            self._errors += 1
        self._uncountedError = False
        delay = self.factory.errorSleep if self._errors > self.factory.softErrorLimit else 0
        if delay > 0:
            return deferLater(self.factory.clock, delay, self._send, reply)
        self._send(reply)
        return None

    def _send(self, reply):
        if self._closing:
            return
        self._reply(reply)
        if reply.code in (221, 421):
            self._close()
        elif self._errors >= self.factory.hardErrorLimit:
            self.factory.maillog.emit(f"too many errors after {self._lastCommand} from {self.client}")
            self._reply(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors"))
            self._close()

    def _failed(self, verb, failure):
        log.failure("smtpd: {verb} failed for {client}", failure, verb=verb, client=self.client)
        return self._finish(verb, Reply(451, "4.3.0", "Error: internal error, try again later"))

    def _resume(self, _):
        self._waiting = False
        if not self._closing:
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            self._process()

    def _count(self, verb, ok):
        verb = verb.lower()
        good, total = self._counts.get(verb, (0, 0))
        self._counts[verb] = (good + bool(ok), total + 1)

    def _reply(self, reply):
        if reply.code >= 400 and self.factory.rejectFooter:
            footer = self.factory.rejectFooter
            if footer.startswith("\\c"):
                reply = Reply(reply.code, reply.status, reply.text + footer[2:])
            else:
                reply = Reply(reply.code, reply.status, reply.text + "\n" + footer.replace("\\n", "\n"))
        self._out.append(reply.lines())

    def _flush(self):
        if self._out:
            self.transport.write(b"".join(self._out))
            self._out = []

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
        self._reader = None
        self._bdatFailure = None  # a BDAT transaction that failed answers this until LAST

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
            return Reply(501, "5.5.4", f"Syntax: {verb} hostname")
        self._resetTransaction()
        self.helo = sanitize(arg)[:255]
        self.protocolName = protocolName
        return Reply(250, "", "\n".join([self.hostname, *lines]))

    def smtp_HELO(self, arg):
        return self._hello("HELO", arg, "SMTP", ())

    def smtp_EHLO(self, arg):
        return self._hello("EHLO", arg, "ESMTP", self.factory.ehloLines)

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
        return Reply(214, "2.0.0", "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY ETRN HELP")

    def smtp_VRFY(self, arg):
        if self.factory.disableVrfy:
            return Reply(502, "5.5.1", "VRFY command is disabled")
        if not arg:
            return Reply(501, "5.5.4", "Syntax: VRFY address")
        try:
            address = parsePath(arg if arg.startswith("<") else f"<{arg}>", allowNull=False)
        except PathError as e:
            return Reply(501, "5.1.3", f"Bad recipient address syntax: {e}")
        return Reply(252, "2.0.0", f"<{address}>")

    def smtp_ETRN(self, arg):
        if self.helo is None:
            return Reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if not arg:
            return Reply(500, "5.5.4", "Syntax: ETRN domain")
        if self.sender is not None:
            return Reply(503, "5.5.1", "Error: MAIL transaction in progress")
        # Deferred mail is flushed by the queue manager, which is not there yet.
        return Reply(458, "4.3.0", f"Unable to queue messages for node {sanitize(arg)[:255]}")

    def _offered(self):
        return self.factory.offered if self.protocolName != "SMTP" else frozenset()

    def smtp_MAIL(self, arg):
        factory = self.factory
        if self.sender is not None:
            return Reply(503, "5.5.1", "Error: nested MAIL command")
        if factory.heloRequired and self.helo is None:
            return Reply(503, "5.5.1", "Error: send HELO/EHLO first")
        if arg[:5].upper() != "FROM:":
            return Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
        try:
            path, params = splitPathAndParameters(arg[5:], strict=factory.strictEnvelopes)
            mailParams = parseMailParameters(params, sizeLimit=factory.sizeLimit, offered=self._offered())
            sender = factory.rewrite.parsePath(path, allowNull=True, smtputf8=mailParams.smtputf8)
        except SizeExceeded:
            reply = Reply(552, "5.3.4", "Message size exceeds fixed limit")
            self._logReject("MAIL", reply)
            return reply
        except ParameterError as e:
            return Reply(555, "5.5.4", f"Unsupported option: {e}")
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad sender address syntax: {e}")
        except PathError as e:
            return Reply(501, "5.1.7", f"Bad sender address syntax: {e}")
        if not factory.enoughSpace(mailParams.size or 0):
            reply = Reply(452, "4.3.1", "Insufficient system storage")
            self._logReject("MAIL", reply)
            return reply
        self.sender = sender
        self.mailParams = mailParams
        return chooseHeaderRewrite(self, Reply(250, "2.1.0", "Ok"))  # local_header_rewrite_clients

    async def smtp_RCPT(self, arg):
        factory = self.factory
        if self.sender is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if arg[:3].upper() != "TO:":
            return Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
        self._rcptTried = True
        try:
            path, params = splitPathAndParameters(
                arg[3:], strict=factory.strictEnvelopes, smtputf8=self.mailParams.smtputf8
            )
            rcptParams = parseRcptParameters(params, offered=self._offered(), smtputf8=self.mailParams.smtputf8)
            address = factory.rewrite.parsePath(path, allowNull=False, smtputf8=self.mailParams.smtputf8)
        except ParameterError as e:
            return Reply(555, "5.5.4", f"Unsupported option: {e}")
        except NonAsciiPathError as e:
            return Reply(553, "5.6.7", f"Bad recipient address syntax: {e}")
        except PathError as e:
            return Reply(501, "5.1.3", f"Bad recipient address syntax: {e}")
        if len(self.recipients) >= factory.recipientLimit:
            self._overshoot += 1
            self._uncountedError = self._overshoot <= factory.overshootLimit
            return Reply(452, "4.5.3", "Error: too many recipients")
        if self._earlyTalker:
            reply, hold = Reply(550, "5.5.1", "Protocol error"), None
        elif path[1:-1].lower() == "postmaster":  # bare: always accepted (RFC 5321 4.5.1), as in Postfix
            reply, hold = None, None
        else:
            reply, hold = await factory.policy.checkRecipient(self.clientAddress, address, self.helo, self.sender)
        if reply is not None:
            self._logReject("RCPT", reply, address)
            return reply
        if hold is not None and self.hold is None:
            self.hold = hold
            self._logReject("RCPT", None, address, action="hold", text=hold)
        self.recipients.append(Recipient(str(address), rcptParams.orcpt, rcptParams.notify))
        return Reply(250, "2.1.5", "Ok")

    def _startMessage(self):
        """Open the queue file (with our Received header); a Reply on failure."""
        if not self.recipients:
            if self._rcptTried:
                return Reply(554, "5.5.1", "Error: no valid recipients")
            return Reply(503, "5.5.1", "Error: need RCPT command")
        try:
            self.transaction = IncomingTransaction(self)
        except Exception as e:
            log.error("smtpd: cannot create a queue file: {error}", error=str(e))
            return Reply(451, "4.3.0", "Error: queue file write error")
        return None

    def smtp_DATA(self, arg):
        if arg:
            return Reply(501, "5.5.4", "Syntax: DATA")
        if self.sender is None:
            return Reply(503, "5.5.1", "Error: need MAIL command")
        if self.transaction is not None or self._bdatFailure is not None:
            return Reply(503, "5.5.1", "Error: DATA after BDAT")
        if self.mailParams.body == "BINARYMIME":
            return Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT")
        failure = self._startMessage()
        if failure is not None:
            return failure
        self._reader = D.DataReader(
            self.transaction.write, self.factory.lineLimit, self.factory.sizeLimit, self.bareNewline
        )
        self._mode = "data"
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
        self._lastCommand = "END-OF-MESSAGE"
        if reader.error == D.BARE_NEWLINE:
            self._abortMessage()
            self._count("data", False)
            self._bareNewlineReject("DATA")
            return
        if reader.error is not None:
            reply = {
                D.TOO_BIG: Reply(552, "5.3.4", "Error: message file too big"),
                D.LINE_TOO_LONG: Reply(552, "5.3.4", f"Error: message line longer than {self.factory.lineLimit} bytes"),
            }[reader.error]
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
            self._respond(verb, reply)
            return
        self._resetTransaction()
        d = transaction.commit()

        def committed(queueId):
            self._errors = self._junk = 0  # Postfix forgives a client that delivers mail
            return Reply(250, "2.0.0", f"Ok: queued as {queueId}")

        def failed(failure):
            log.error("smtpd: queue file write error: {error}", error=failure.getErrorMessage())
            return Reply(451, "4.3.0", "Error: queue file write error")

        self._respond(verb, d.addCallbacks(committed, failed))

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
        elif self.transaction is None:
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
            if self.factory.sizeLimit and self.transaction.size + take > self.factory.sizeLimit:
                self._chunkError = self._bdatFailure = Reply(552, "5.3.4", "Error: message file too big")
                self._abortMessage()
            else:
                self.transaction.write(chunk)
        if self._chunkRemaining == 0:
            self._endChunk()

    def _endChunk(self):
        self._mode = "command"
        if self._chunkLast:
            self._lastCommand = "END-OF-MESSAGE"
        if self._chunkError is not None:
            if self._chunkLast and self._bdatFailure is not None:
                if self._bdatFailure.code >= 500:
                    self._logReject("END-OF-MESSAGE", self._bdatFailure)
                self._resetTransaction()
            self._respond("bdat", self._chunkError)
            return
        if not self._chunkLast:
            self._respond("bdat", Reply(250, "2.0.0", f"Ok: {self.transaction.size} bytes"))
            return
        self._endMessage("bdat")
