"""mta.smtpd.protocol - the ESMTP server session (smtpd(8)).

A byte-stream protocol: input is split into command lines, or handed to the
DATA reader or a BDAT chunk (mta.smtpd.data).  The commands themselves are
in mta.smtpd.commands; this module is the session around them: input and
output, pipelining, limits on lines and time, and the end of a connection.
What the session knows of its client and of the mail transaction lives in
two small objects of their own, SessionState and Transaction
(mta.smtpd.session, which also says what each reset keeps).

Commands run one at a time; a command whose check is slow (a table lookup,
the queue's fsync, a tarpit delay) holds back the commands pipelined behind
it, so replies always go out in command order (RFC 2920).  Replies are
written when the input runs dry, so a pipelined group gets one write back.
On a plain TCP connection that write is a send() on the socket itself
(directSocket(), _sendDirect): Twisted's transport.write() would buffer it,
register the socket for writing and unregister it once written, two
epoll_ctl calls and a reactor pass per reply (measured: 16 epoll_ctl per
held message before, 4 after).  When the socket does not take a reply
whole (its buffer is full, an error), the rest goes to transport.write(),
and so does everything after it on that connection, in order; TLS
(STARTTLS, wrapper mode) also ends direct sending.  The session is the
transport's producer: when the client stops reading our replies, it stops
reading and working until the client catches up.

A client that half-closes (shutdown(SHUT_WR), as Exim does after a
pipelined "." and QUIT) still gets every reply: end of input means "no more
requests", the ones received in full are finished (a commit in progress
too) and answered, then the connection is closed.  An incomplete request
left at the end of input is dropped and logged as a lost connection.
Twisted tells only an IHalfCloseableProtocol of a half-close, and only
from transports that support it: TCP and UNIX listeners (twisted.internet.
tcp, which serverFromString's endpoints use unwrapped) and standard I/O
(mta-sendmail -bs) do; Twisted's TLS wrapper (TLSMemoryBIOProtocol, for
STARTTLS) does not pass it on and reports connectionLost instead.

Time: with smtpd_per_request_deadline = yes (mta's default) each request
has smtpd_timeout in all to arrive and be answered, message content earns
time at smtpd_min_data_rate (mta.smtpd.deadline), and time the server
spends working is not counted; with no, smtpd_timeout is an idle timer
renewed by every read, as in Postfix by default.  Either way a timeout
answers "421 4.4.2 <myhostname> Error: timeout exceeded", closes, and logs
Postfix's "timeout after DATA (N bytes) from ..." line.

Postmaster notices: the session keeps Postfix's transcript and error
classes (mta.smtpd.chat, which says which reply is which class) and sends
them to the postmaster when notify_classes says so (mta.transcript).

SIZE
    About 690 lines, and one job: the session's mechanics (input, output,
    pipelining, time, flow control, the end of a connection).  What is
    done at connect before the banner is mta.smtpd.connect's.

SECURITY
    Everything read is untrusted.  A command line of line_length_limit
    octets or more (CRLF not counted) is refused with 500 5.5.2 however it
    arrives, and the rest of it skipped.  smtpd_forbid_bare_newline (see
    below and mta.smtpd.data) decides about bare LF and CR; under reject
    they get the reject code and a close, in commands, DATA and BDAT.  Only
    CRLF "." CRLF ends DATA, whatever errors came before.  Content sent
    before the 354 reply (forbidden pipelining) gets 554 5.5.0 and a close;
    forbidden commands get 221 and a close; a client that keeps making
    errors is slowed down, then disconnected; a trickling client meets the
    per-request deadline; a failure inside a check answers 451 4.3.0, it
    never hangs the session or stops the reactor.  The postmaster's
    transcript is bounded and made harmless (mta.smtpd.chat,
    mta.transcript); a notice that cannot be queued is only logged.

    smtpd_forbid_bare_newline, for command lines: reject and yes answer a
    line with a bare LF or bare CR with the reject code and disconnect;
    normalize and no take a bare LF as the end of the command line (as
    Postfix does: "NOOP<LF>RSET<CR><LF>" is two commands) and drop bare
    CRs.  For message content see mta.smtpd.data.

CONFIGURATION
    smtpd_banner, myhostname, mail_name, message_size_limit,
    smtpd_recipient_limit, smtpd_recipient_overshoot_limit, smtpd_timeout,
    smtpd_per_request_deadline (yes), smtpd_min_data_rate (500),
    line_length_limit, smtpd_helo_required, strict_rfc821_envelopes,
    disable_vrfy_command, smtpd_noop_commands, smtpd_forbidden_commands,
    smtpd_discard_ehlo_keywords, smtpd_reject_footer, queue_minfree,
    smtpd_client_connection_count_limit, smtpd_client_event_limit_exceptions,
    smtpd_error_sleep_time, smtpd_soft_error_limit, smtpd_hard_error_limit,
    smtpd_junk_command_limit, smtpd_forbid_unauth_pipelining,
    smtpd_forbid_bare_newline (+ _exclusions, _reject_code), hopcount_limit,
    smtpd_etrn_restrictions, fast_flush_domains, postscreen_greet_wait,
    postscreen_greet_action (ignore, enforce, drop); notify_classes and
    the *_notice_recipient parameters (mta.smtpd.chat).  The smtpd
    parameters are read once, at load, into the listener's SmtpdSettings
    (mta.config.settings.smtpd); see mta.smtpd.factory.

DEVIATIONS
    smtpd_per_request_deadline defaults to yes (Postfix: no, yes only under
    overload): an Internet-facing server should not let a client that sends
    a byte a second hold a session for hours.  A command line that is too
    long counts as an error for the tarpit and the hard error limit (Postfix
    does not count it).  Postfix disables input after skipping another
    line_length_limit octets of an over-long line; mta keeps skipping, under
    the per-request deadline.  Postfix's deadline also covers time the
    kernel holds our unsent replies; mta counts the time its own write
    buffer is full (the client does not read).  For the error classes of
    postmaster notices see mta.smtpd.chat.
"""

from collections.abc import Coroutine

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mta.maillog import sanitize
from mta.model import Reply
from mta.smtpd.auth import SMTPAuth
from mta.smtpd.chat import SessionChat
from mta.smtpd.commands import R_OK, SMTPCommands
from mta.smtpd.connect import ConnectSteps
from mta.smtpd.deadline import RequestDeadline
from mta.smtpd.session import SessionState, Transaction
from mta.smtpd.starttls import StartTLSCommands
from mta.tables import TableTemporaryError

log = Logger()

# RFC 2920 3.1: these end a pipelined group; more input behind them is a violation.
GROUP_ENDERS = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP", "QUIT"})
# Postfix's junk commands: past smtpd_junk_command_limit each one is an error.
JUNK = frozenset({"NOOP", "VRFY", "ETRN", "RSET"})
# Input held while a command is pending before the socket stops being read.
PAUSE_THRESHOLD = 65536


def directSocket(transport):
    """
    The socket a reply may be sent on directly: a plain TCP transport's
    (getHandle() is a socket.socket, no TLS), else None (TLS, UNIX
    standard I/O, test transports).
    """
    import socket

    from twisted.internet.interfaces import ISSLTransport, ITCPTransport

    if not ITCPTransport.providedBy(transport) or ISSLTransport.providedBy(transport):
        return None
    try:
        handle = transport.getHandle()
    except Exception:
        return None
    if type(handle) is not socket.socket or handle.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return handle


@implementer(IHalfCloseableProtocol, IPushProducer, IHandshakeListener)
class SMTPServer(ConnectSteps, SMTPAuth, SMTPCommands, StartTLSCommands, SessionChat, Protocol, TimeoutMixin):
    """
    One SMTP session: the protocol mechanics.  Its state lives in

    session      SessionState: the client, HELO/EHLO, protocol, TLS, SASL,
                 error counters (mta.smtpd.session)
    transaction  Transaction: the mail transaction in progress, a fresh one
                 after every reset
    factory, settings
                 the listener's SMTPServerFactory and its SmtpdSettings

    and the rest is input and output: the input buffer and its mode
    (command, data, bdat), the BDAT chunk being read, the deadline or idle
    timer, replies waiting to be written, flow control, the transcript
    (mta.smtpd.chat).
    """

    def __init__(self, factory):
        self.factory = factory
        self.settings = settings = factory.settings
        self.hostname = settings.hostname
        self.callLater = factory.clock.callLater  # TimeoutMixin's clock
        self._buffer = b""
        self._mode = "command"
        self._waiting = True  # until the greeting is out
        self._closing = False
        self._paused = False  # the transport is not read (see _updateReading)
        self._inputEnded = False  # the client shut down its sending side
        self._writeBlocked = False  # the client does not read our replies (pauseProducing)
        self._skipLine = False  # discarding the rest of an over-long command line
        self._deadline = None  # a RequestDeadline with smtpd_per_request_deadline
        self._producing = False  # registered as the transport's producer
        self._out = []
        self._directSocket = None  # set at connect (directSocket()); None: transport.write
        self._counted = False  # in the factory's per-client connection count
        self._connectLogged = False  # "connect from": after the client's name is known
        self._uncountedError = False  # set by a reply that is not a session error
        self._chunk = None  # the BDAT chunk being read, or the last one (mta.smtpd.commands.Chunk)
        self._lastCommand = None
        self.screened = False  # handed over by the screen (mta.smtpd.postscreen): no greet delay here
        self.session = SessionState(bareNewline=settings.bareNewline)
        self.transaction = Transaction()
        self._startChat()  # Postfix's session history and error_mask (mta.smtpd.chat)

    # -- connection -----------------------------------------------------------

    def connectionMade(self):
        peer = self.transport.getPeer()
        session = self.session
        session.clientAddress = getattr(peer, "host", "") or ""
        session.clientPort = getattr(peer, "port", 0) or 0
        session.clientName = "unknown"
        lookup = self._lookUpName()  # the client's name (mta.smtpd.peername): None when known now
        if lookup is None:
            self._logConnect()
        # Replies go straight to a plain TCP socket (_sendDirect) until TLS or a short send.
        self._directSocket = directSocket(self.transport)
        self._startWrapperMode()  # smtpd_tls_wrappermode: TLS first (mta.smtpd.starttls)
        # As a producer we hear when the client stops reading our replies.
        self.transport.registerProducer(self, True)
        self._producing = True
        settings = self.settings
        if settings.perRequestDeadline:
            self._deadline = RequestDeadline(
                self.factory.clock, settings.timeout, settings.minDataRate, self.timeoutConnection
            )
        else:
            self.setTimeout(settings.timeout)
        if lookup is not None or self._greetWait() > 0 or not self._connectChecksAreStatic():
            d = Deferred.fromCoroutine(self._connect(lookup))
            d.addErrback(self._internalError)
            return
        # Fast path: nothing to look up in a table, nothing to wait for.
        factory = self.factory
        if self._connectLimited() and not factory.eventLimitExceptions.staticMatch(session.clientAddress):
            if not self._checkConnectionCount():
                return
        session.debugPeer = factory.debugPeers.staticMatch(session.clientAddress)
        if session.bareNewline == "reject" and factory.bareNewlineExclusions.staticMatch(session.clientAddress):
            session.bareNewline = "normalize"
        self._greet()

    def readConnectionLost(self):
        """
        The client shut down its sending side (shutdown(SHUT_WR), as Exim
        does after a pipelined end of data and QUIT): no more input, but
        every request already received is finished (a commit in progress
        too) and answered before the connection is closed.
        """
        self._inputEnded = True
        if not self._closing:
            self._process()

    def writeConnectionLost(self):
        """Our sending side is shut down; we never do that before closing."""

    def connectionLost(self, reason):
        if not self._connectLogged:  # the client left while its name was looked up
            self._logConnect()
        self._tlsConnectionLost(reason)  # a handshake in progress failed (mta.smtpd.starttls)
        if not self._closing:
            if self._mode in ("data", "bdat"):
                self._count(self._mode, False)
            self._logAbort("lost connection")
        self._closing = True
        self.setTimeout(None)
        if self._deadline is not None:
            self._deadline.stop()
        self._abortMessage()
        self._authEnd()
        if self._counted:
            self.factory.clientDisconnect(self.session.clientAddress)
        self._chatReset(0)  # the postmaster's transcript, if the session met a notify class
        self.factory.maillog.emit(
            f"disconnect from {self.session.client} {self.session.commandSummary()}", client=self.session.client
        )
        self.factory.connectionClosed(self)

    def _logAbort(self, reason):
        """
        Postfix's line for a session that ends abnormally (timeout, lost
        connection, too many errors), with the queue id or NOQUEUE and, in
        message content, the bytes received (Postfix 3.10).
        """
        self._abortReason = reason
        where = self._lastCommand or "CONNECT"
        transaction = self.transaction
        if self._mode in ("data", "bdat") or (where == "BDAT" and transaction.message is not None):
            text = f"{reason} after {where} ({transaction.contentBytes} bytes) from {self.session.client}"
        elif reason == "lost connection" and where == "END-OF-MESSAGE":
            return  # Postfix does not complain about a client that leaves without QUIT
        else:
            text = f"{reason} after {where} from {self.session.client}"
        queueId = transaction.queueId
        self.factory.maillog.emit(text if queueId else f"NOQUEUE: {text}", queue_id=queueId, client=self.session.client)

    def timeoutConnection(self):
        """smtpd_timeout passed: while idle, or past the request's deadline."""
        if self._closing:
            return
        if self._mode in ("data", "bdat"):
            self._count(self._mode, False)
        self._logAbort("timeout")
        self._reply(Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded"))
        if self._writeBlocked:
            # The client does not read: a graceful close would wait for it forever.
            self._closing = True
            self._flush()
            self._unregister()
            self.transport.abortConnection()
            return
        self._close()

    def _close(self):
        self._closing = True
        self._flush()
        if self._deadline is not None:
            self._deadline.stop()
        self._unregister()
        self.transport.loseConnection()

    def _unregister(self):
        # A registered producer would hold the connection open.
        if self._producing:
            self._producing = False
            self.transport.unregisterProducer()

    def _internalError(self, failure):
        log.failure("smtpd: internal error in session with {client}", failure, client=self.session.client)
        self._fault("software")
        if not self._closing:
            self._reply(Reply(421, "4.3.0", f"{self.hostname} Error: internal error"))
            self._close()

    # -- the client's reading side (IPushProducer) ----------------------------------

    def pauseProducing(self):
        """The transport's write buffer is full: the client does not read our replies."""
        if self._handshaking:
            return  # only the TLS layer holding our replies until its handshake ends (mta.smtpd.starttls)
        self._writeBlocked = True
        self._updateReading()
        self._clientsTurn()

    def resumeProducing(self):
        self._writeBlocked = False
        if not self._closing:
            self._process()

    def stopProducing(self):
        """The connection is going away; connectionLost follows."""

    # -- input ------------------------------------------------------------------

    def dataReceived(self, data):
        if self._closing:
            return
        if self._deadline is not None:
            self._deadline.waiting(False)  # the wait is over; _process says whether another begins
            self._deadline.received(len(data))
        else:
            self.resetTimeout()
        self._buffer += data
        self._process()

    def _process(self):
        try:
            while self._buffer and not self._waiting and not self._closing and not self._writeBlocked:
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
        self._flush()
        if self._inputEnded and not (self._waiting or self._closing or self._writeBlocked):
            self._endOfInput()
            return
        self._updateReading()
        self._clientsTurn()

    def _updateReading(self):
        """Read the socket unless input piles up behind a slow command, or the client does not read."""
        pause = self._writeBlocked or (self._waiting and len(self._buffer) > PAUSE_THRESHOLD)
        if pause != self._paused and not self._closing:
            self._paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    def _clientsTurn(self):
        """Tell the deadline whether the session waits for the client or works itself."""
        if self._deadline is not None:
            self._deadline.waiting(not self._closing and (self._writeBlocked or not self._waiting))

    def _newRequest(self, content=False):
        """A request (command line, DATA content, a BDAT chunk's content) begins: a fresh deadline."""
        if self._deadline is not None:
            self._deadline.start(content)

    def _endOfInput(self):
        """The client half-closed and everything it sent in full is answered: close."""
        if self._mode in ("data", "bdat"):
            self._count(self._mode, False)
        self._logAbort("lost connection")
        self._close()

    def _commandStep(self):
        """Handle one command line if a whole one is buffered; False if not."""
        buf = self._buffer
        end = buf.find(b"\n")
        if self._skipLine:
            # The rest of an over-long line, up to its LF, is dropped (smtp_get's SKIP).
            if end < 0:
                self._buffer = b""
                return False
            self._buffer = buf[end + 1 :]
            self._skipLine = False
            self._authTooLong() if self._auth is not None else self._commandTooLong()
            return True
        limit = self._lineLimit()  # smtpd_sasl_response_limit in an AUTH exchange (mta.smtpd.auth)
        if end < 0:
            if len(buf) - buf.endswith(b"\r") >= limit:
                self._warnTooLong(buf)
                self._heard(self._redact(buf[:limit]))
                self._skipLine = True
                self._buffer = b""
            return False
        line, self._buffer = buf[: end + 1], buf[end + 1 :]
        if end - (buf[end - 1 : end] == b"\r") >= limit:
            self._warnTooLong(line)
            self._heard(self._redact(line[:limit]))
            self._authTooLong() if self._auth is not None else self._commandTooLong()
            return True
        self._heard(self._redact(line[:-2] if line.endswith(b"\r\n") else line[:-1]))
        self._newRequest()
        if not line.endswith(b"\r\n") or b"\r" in line[:-2]:
            if self.session.bareNewline == "reject":
                self._bareNewlineReject("command")
                return False
            # normalize, no: a bare LF ends the command line (as in Postfix), a bare CR is dropped.
            line = line.rstrip(b"\r\n").replace(b"\r", b"") + b"\r\n"
        if self._auth is not None:  # a SASL response, never a command (mta.smtpd.auth)
            self._respond("auth", self._authResponse(line[:-2]))
            return True
        if self.factory.commandFilter:  # smtpd_command_filter: the line may be replaced first
            self._filterCommand(line[:-2])
            return True
        self._command(line[:-2])
        return True

    def _filterCommand(self, line):
        """
        smtpd_command_filter: look the line up (without leading white space),
        run the value instead when a table has one, as Postfix's
        smtpd_chat_query; a table that cannot answer leaves the line as it is
        (with a warning).  Input waits meanwhile.
        """
        self._waiting = True
        state = {"inline": True}  # answered at once: the caller's loop goes on, no recursion

        async def run():
            key = line.lstrip(b" \t").decode("latin-1")
            replacement = None
            for table in self.factory.commandFilter:
                try:
                    replacement = await table.lookup(key)
                except TableTemporaryError:
                    self.factory.maillog.emit(f"warning: {table.spec}: smtpd_command_filter lookup error; "
                                              f"the command is used as it is")
                    break
                if replacement is not None:
                    break
            self._waiting = False
            if self._closing:
                return
            command = line
            if replacement is not None:
                command = replacement.encode("latin-1", "replace")
                self.factory.maillog.emit(f"{self.session.client}: replacing command "
                                          f"\"{sanitize(key[:100])}\" with \"{sanitize(replacement[:100])}\"")
            self._command(command)
            if not state["inline"] and not self._waiting and not self._closing:
                self._process()

        d = Deferred.fromCoroutine(run())
        d.addErrback(self._internalError)
        state["inline"] = False

    def _warnTooLong(self, text):
        shown, client = sanitize(self._redact(text[:30]).decode("latin-1")), self.session.client
        self.factory.maillog.emit(
            f"warning: {client}: request longer than {self.settings.lineLimit}: {shown}...", client=client
        )

    def _commandTooLong(self):
        """Postfix's answer to a command line of line_length_limit octets or more (smtpd_chat_query)."""
        self._newRequest()
        self._fault("protocol")
        self._respond("unknown", Reply(500, "5.5.2", f"{self.hostname} Error: command too long"))

    def _bareNewlineReject(self, where):
        self.factory.maillog.emit(f"reject: bare <LF> received in {where} from {self.session.client}; disconnecting")
        self._fault("protocol")
        self._reply(Reply(self.settings.bareNewlineCode, "5.5.2", f"{self.hostname} Error: bare <LF> received"))
        self._close()

    # -- replies ------------------------------------------------------------------

    def _command(self, line):
        factory, settings = self.factory, self.settings
        verb, _, arg = line.partition(b" ")
        verb = verb.upper()
        if verb in settings.forbiddenCommands or (verb and not verb[:1].isalpha()):
            shown = sanitize(line[:60].decode("latin-1"))
            factory.maillog.emit(f"warning: non-SMTP command from {self.session.client}: {shown}")
            self._reply(Reply(221, "2.7.0", "Error: I can break rules, too. Goodbye."))
            self._close()
            return
        try:
            verb = verb.decode("ascii")
            arg = arg.decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            self._fault("protocol")
            self._respond("unknown", Reply(500, "5.5.2", "Error: invalid characters in command"))
            return
        self._lastCommand = verb
        session = self.session
        if self._buffer and not session.illegalPipelining and (not session.extended or verb in GROUP_ENDERS):
            session.illegalPipelining = True  # reject_unauth_pipelining (Postfix's smtpd_flag_ill_pipelining)
        if session.accessDenied is not None and verb != "QUIT":  # smtpd_client_restrictions refused at connect
            denied = session.accessDenied
            self._fault("policy")
            self._respond(verb, denied if denied.code % 100 == 21 else
                          Reply(503, "5.7.0", f"Error: access denied for {session.client}"))
            return
        if verb in settings.noopCommands:
            self._respond(verb, R_OK)
            return
        handler = getattr(self, f"smtp_{verb}", None)
        if handler is None:
            self._fault("protocol")
            self._respond("unknown", Reply(502, "5.5.2", "Error: command not recognized"))
            return
        if verb in GROUP_ENDERS and self._buffer and settings.forbidUnauthPipelining:
            factory.maillog.emit(f"improper command pipelining after {verb} from {self.session.client}")
            self._fault("protocol")
            self._count(verb, False)
            self._reply(Reply(554, "5.5.0", "Error: SMTP protocol synchronization"))
            self._close()
            return
        if verb in JUNK:
            self.session.junk += 1
        gate = self._tlsGate(verb)  # 530 under smtpd_tls_security_level = encrypt (mta.smtpd.starttls)
        if gate is not None:
            self._respond(verb, gate)
            return
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
        session, settings = self.session, self.settings
        if (not ok and not self._uncountedError) or (verb in JUNK and session.junk > settings.junkLimit):
            session.errors += 1
        self._uncountedError = False
        delay = settings.errorSleep if session.errors > settings.softErrorLimit else 0
        if delay > 0:
            return deferLater(self.factory.clock, delay, self._send, reply)
        self._send(reply)
        return None

    def _send(self, reply):
        if self._closing:
            return
        self._reply(reply)
        if self._resetAfterReply:  # the end-of-data reply is out (Postfix's chat_reset in data_cmd)
            self._resetAfterReply = False
            self._chatReset()
        if reply.code in (221, 421):
            self._close()
        elif self.session.errors >= self.settings.hardErrorLimit:
            self._fault("protocol")
            self._logAbort("too many errors")
            self._reply(Reply(421, "4.7.0", f"{self.hostname} Error: too many errors"))
            self._close()

    def _failed(self, verb, failure):
        log.failure("smtpd: {verb} failed for {client}", failure, verb=verb, client=self.session.client)
        self._fault("software")
        return self._finish(verb, Reply(451, "4.3.0", "Error: internal error, try again later"))

    def _resume(self, _):
        self._waiting = False
        if not self._closing:
            self._process()

    def _count(self, verb, ok):
        self.session.count(verb, ok)

    def _reply(self, reply):
        footer = self.settings.rejectFooter  # the text to append (mta.config.settings.smtpd)
        if reply.code >= 400 and footer:
            reply = Reply(reply.code, reply.status, reply.text + footer)
        wire = reply.lines()
        if self.session.debugPeer:  # debug_peer_list: Postfix's verbose "> client: line"
            for line in wire.split(b"\r\n")[:-1]:
                self._debugLine(">", line)
        if self.transcript is not None:
            self.transcript.sentLines(wire)
        self._out.append(wire)

    def _flush(self):
        if self._out:
            data = b"".join(self._out)
            self._out = []
            if self._directSocket is not None:
                self._sendDirect(data)
            else:
                self.transport.write(data)

    def _sendDirect(self, data):
        """
        A reply straight to the socket (plain TCP, nothing queued in the
        transport): no write buffer, no epoll registration and removal per
        reply.  What the socket does not take at once (a full send buffer, an
        error) goes to transport.write(), which also reports the error, and
        from then on every write does, so that nothing overtakes what waits
        there.
        """
        try:
            sent = self._directSocket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = 0  # the transport's own write finds the error and closes the connection
        if sent < len(data):
            self._directSocket = None
            self.transport.write(data[sent:])
