"""mta.delivery.smtpconnection - the connection half of an SMTP/LMTP client session: replies in, commands and content out, deadlines.

NAME
    ClientConnection - the Protocol under mta.delivery.smtpclient's
    SMTPClientSession: it reads replies, writes commands and content, and
    keeps one deadline per awaited reply; the session decides what to say.

DESCRIPTION
    Replies are parsed by mta.delivery.smtpreply as they arrive and queued
    in order; _read(timeout) gives the next one (a Deferred), waiting at
    most C{timeout} seconds, a deadline not renewed by partial input (as
    Postfix's smtp_per_record_deadline = yes).  The connection counts the
    replies the server owes (the greeting, one per command written, the
    end-of-data replies the session announces): a reply beyond those is
    "unexpected response", a protocol error.  A 421 reply means the server
    is going away: it is queued, and the connection is then closed and
    counted as lost.

    TLS: _expectTLS() before STARTTLS goes out makes the connection drop
    whatever follows the STARTTLS reply in the same read, and everything
    after it until _beginTLS(creator, timeout) has put TLS under it
    (nothing read in plaintext before the handshake is trusted after it);
    _beginTLS() returns a Deferred that fires when the handshake is done
    (IHandshakeListener) or fails with _Broken when the connection is lost
    (a handshake failure: the TLS error is kept in C{lostReason}) or the
    handshake takes longer than the timeout.

    _send(data, replies) writes commands (refusing a CR, LF or NUL inside
    a line); _write(data) writes content in pieces of at most WRITE_SIZE
    (64 KiB), each when the transport wants more: the connection is the
    transport's streaming producer (IPushProducer) while the content goes
    out, and waits whenever it is paused; each piece, and each resume,
    renews the deadline (smtp_data_xfer_timeout limits a lack of
    progress, not the whole transfer).

    Once the connection cannot be used any more (lost, a deadline passed,
    a protocol error) every pending and later read or write fails with
    _Broken(kind, detail), kind "lost", "timeout" or "protocol".

    The transcript glue: with a transcript (mta.transcript.Transcript),
    each command written is recorded ("Out: ", never the content) and each
    reply line read ("In:  ", the offending line of a malformed reply
    too), and a protocol error is noted as the protocol class.  Warnings
    (an over-long reply line or reply, a malformed reply) go to the mail
    log as "warning: ..." under the session's queue id, with Postfix's
    texts ("mx[192.0.2.1]:25: response longer than 2048: ...",
    "multi-line response longer than 2048 ...").

SECURITY
    Everything read is untrusted: memory is bounded by the reply parser
    (about 2 x line_length_limit per reply), every wait has a deadline
    that partial input does not renew, and every write waits for the
    transport, so a server that reads nothing or trickles a byte at a
    time costs a bounded buffer and the phase's deadline.  A command with
    a line end or NUL inside raises ValueError instead of going out.

CONFIGURATION
    line_length_limit (the reply bound) and the greeting deadline
    (smtp_helo_timeout), passed in by the session.
"""

from collections import deque

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IHandshakeListener, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mta.delivery.smtpreply import DEFAULT_LIMIT, MalformedReply, ReplyParser

__all__ = ["REPLY_LINE_LIMIT", "WRITE_SIZE", "ClientConnection"]

log = Logger()

REPLY_LINE_LIMIT = DEFAULT_LIMIT  # the default of line_length_limit: bytes kept of a reply line and of a reply
WRITE_SIZE = 65536  # largest single write of message content


class _Broken(Exception):
    """The connection cannot be used any more: lost, timeout or protocol."""

    def __init__(self, kind, detail=None):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


@implementer(IPushProducer, IHandshakeListener)
class ClientConnection(Protocol, TimeoutMixin):
    """
    Replies in, commands and content out (see the module docstring).

    @ivar maillog: a mta.maillog.MailLogger for warnings, or None
        (twisted.logger).
    @ivar transcript: a mta.transcript.Transcript, or None.
    @ivar host: the mta.delivery.smtpresults.RemoteHost being talked to
        (set by the session; names the peer in warnings).
    """

    def __init__(self, clock, replyLimit, greetingTimeout, maillog=None, transcript=None):
        self.callLater = clock.callLater  # TimeoutMixin's clock
        self.maillog = maillog
        self.transcript = transcript
        self.host = None
        self._greetingTimeout = greetingTimeout
        self._parser = ReplyParser(replyLimit)
        self._replies = deque()
        self._expected = 1  # replies owed by the server: the greeting so far
        self._waiter = None
        self._greetingTimer = False
        self._failure = None  # (kind, detail) once the connection is unusable
        self._closing = False
        self._connected = False
        self._paused = False
        self._drain = None
        self._queueId = None
        self._dropAfterReply = False  # STARTTLS sent: drop what follows its reply
        self._dropPlaintext = False  # its reply came: drop everything until TLS starts
        self._tlsWaiter = None
        self.tlsActive = False  # TLS is under the session (after a finished handshake)
        self.lostReason = None  # the Failure of connectionLost
        self._closedWaiters = []  # Deferreds of whenClosed()

    # -- connection -----------------------------------------------------------------

    def connectionMade(self):
        self._connected = True
        self._greetingTimer = True
        self.setTimeout(self._greetingTimeout)

    def connectionLost(self, reason):
        self._connected = False
        self.lostReason = reason
        self._fail("lost")
        waiters, self._closedWaiters = self._closedWaiters, []
        for waiter in waiters:
            waiter.callback(None)

    def whenClosed(self):
        """A Deferred that fires when the connection is gone (at once when it is not connected)."""
        from twisted.internet.defer import Deferred, succeed

        if not self._connected:
            return succeed(None)
        waiter = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def abortNow(self):
        """Drop the connection without waiting for buffered output (a close that did not finish)."""
        if self._connected and self.transport is not None:
            self.transport.abortConnection()

    def handshakeCompleted(self):
        """IHandshakeListener: the TLS handshake is done."""
        self.tlsActive = True
        waiter, self._tlsWaiter = self._tlsWaiter, None
        if waiter is not None:
            self.setTimeout(None)
            waiter.callback(None)

    def timeoutConnection(self):
        self._abort()
        self._fail("timeout")

    def dataReceived(self, data):
        # The parser keeps at most line_length_limit bytes of a line and
        # about twice that of a reply, whatever arrives; the deadline of the
        # reply being waited for (not renewed here) ends an endless one.
        if self._failure is not None or self._closing or self._dropPlaintext:
            return
        for event in self._parser.feed(data):
            if isinstance(event, MalformedReply):
                self._protocolError(event)
                break
            self._reply(event)
            if self._failure is not None:
                break
            if self._dropAfterReply and self._expected <= 0:
                # The STARTTLS reply: whatever came with it or comes next in plaintext is dropped.
                self._dropAfterReply = False
                self._dropPlaintext = True
                self._parser.reset()
                break
        self._wake()

    def _reply(self, reply):
        if self.transcript is not None:
            for line in reply.lines:
                self.transcript.received(line)
        if reply.longLines:
            self._warn(f"{self._peer()}: response longer than {reply.limit}: {reply.longSample}...")
        if reply.skippedLines:
            self._warn(f"{self._peer()}: multi-line response longer than {reply.limit} {reply.lines[0][:30]}...")
        if self._expected <= 0:
            self._protocolError(MalformedReply("unexpected response", reply.lines[-1][:100]))
            return
        self._expected -= 1
        self._replies.append(reply)
        if self._greetingTimer:
            self._greetingTimer = False
            if self._waiter is None:
                self.setTimeout(None)
        if reply.code == 421:
            # The server is going away: nothing after this reply counts.
            self._fail("lost")
            self._close()

    def _peer(self):
        return self.host.relay if self.host is not None else "server"

    def _warn(self, text):
        if self.maillog is not None:
            self.maillog.emit(f"warning: {text}", self._queueId, LogLevel.warn)
        else:
            log.warn("{text}", text=text)

    def _protocolError(self, error):
        if self.transcript is not None:
            if isinstance(error, MalformedReply) and error.what != "unexpected response":
                self.transcript.received(error.line)  # an unexpected reply is in the transcript already
            self.transcript.error("protocol")
        detail = f"{error.detail}: " if error.detail else ""
        self._warn(f"{error.what} from {self._peer()}: {detail}{error.line}")
        self._abort()
        self._fail("protocol", error.what)

    def _fail(self, kind, detail=None):
        if self._failure is None:
            self._failure = (kind, detail)
        self._greetingTimer = False
        self.setTimeout(None)
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.errback(_Broken(kind, detail))
        waiter, self._tlsWaiter = self._tlsWaiter, None
        if waiter is not None:
            waiter.errback(_Broken(kind, detail))
        self._wake()

    def _wake(self):
        """Give the waiting reader its reply, or its failure once the replies are used up."""
        waiter = self._waiter
        if waiter is None:
            return
        if self._replies:
            self._waiter = None
            self.setTimeout(None)
            waiter.callback(self._replies.popleft())
        elif self._failure is not None:
            self._waiter = None
            self.setTimeout(None)
            waiter.errback(_Broken(*self._failure))

    def _close(self):
        self._closing = True
        self.setTimeout(None)
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self):
        self._closing = True
        self.setTimeout(None)
        if self.transport is not None:
            self.transport.abortConnection()

    def _discardReplies(self):
        """Forget every reply read and not yet used (before a TLS handshake)."""
        self._parser.reset()
        self._replies.clear()

    def _expectTLS(self):
        """STARTTLS is about to go out: drop everything after its reply until _startTLS()."""
        self._dropAfterReply = True

    def _beginTLS(self, creator, timeout):
        """Put TLS under the session (discarding unread plaintext); a Deferred for the handshake."""
        self._discardReplies()
        self._dropAfterReply = self._dropPlaintext = False
        if self._failure is not None or self._closing:
            return fail(_Broken(*(self._failure or ("lost", None))))
        waiter = self._tlsWaiter = Deferred()
        self.setTimeout(timeout)
        self.transport.startTLS(creator)
        return waiter

    # -- IPushProducer (for the message content) ------------------------------------------

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self.resetTimeout()
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.callback(None)

    def stopProducing(self):
        self._fail("lost")

    # -- commands, replies, content ---------------------------------------------------------

    def _send(self, data, replies):
        """Write commands owing C{replies} replies; raise _Broken if the connection is gone."""
        if self._failure is not None or self._closing:
            raise _Broken(*(self._failure or ("lost", None)))
        bare = data.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare or b"\0" in bare:
            raise ValueError("line end or NUL inside a command")
        self._expected += replies
        if self.transcript is not None:
            self.transcript.sentLines(data)
        self.transport.write(data)

    def _read(self, timeout):
        """A Deferred for the next reply, waiting at most C{timeout} (None: the running timer)."""
        if self._replies:
            return succeed(self._replies.popleft())
        if self._failure is not None or self._closing:
            return fail(_Broken(*(self._failure or ("lost", None))))
        self._waiter = Deferred()
        if timeout is not None:
            self.setTimeout(timeout)
        return self._waiter

    async def _command(self, line, timeout):
        self._send(line.encode("utf-8") + b"\r\n", 1)
        return await self._read(timeout)

    async def _write(self, data):
        """Write content in bounded pieces, each when the transport wants more."""
        pos = 0
        while True:
            if self._failure is not None:
                raise _Broken(*self._failure)
            if self._paused:
                self._drain = Deferred()
                await self._drain
                continue
            if pos >= len(data):
                return
            self.transport.write(data[pos : pos + WRITE_SIZE])
            pos += WRITE_SIZE
            self.resetTimeout()
