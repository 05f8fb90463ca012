"""mta.tables.stream - the connection under the request/reply network tables.

RequestStream carries the lookups of one socketmap: or tcp: table over one
persistent stream connection.  The table supplies the codec (a decoder that
cuts the byte stream into replies, the encoded request) and the meaning of
each reply; the stream supplies the rules that the tables share:

- the connection is opened at the first request (never at load, so
  ``mta-config --check`` only parses the spec), within the timeout;
- one request is on the wire at a time; further requests wait in order in a
  queue of at most maxQueue (beyond it a request is refused, not queued);
- each request has one timeout, from lookup() to its reply, waiting in the
  queue included; a request that times out on the wire closes the
  connection, since its late reply would put the stream out of step;
- a connection that breaks while a request is out is reopened and the
  request sent once more (to hide server restarts); a second loss fails
  it; a connection lost between requests is reopened by the next request;
- a connection that cannot be opened fails every waiting request;
- a reply that breaks the framing, or one with no request, closes the
  connection and fails the request on the wire (the stream can no longer be
  trusted);
- optionally (maxIdle, maxTtl) an idle connection is closed after maxIdle
  seconds, and a connection older than maxTtl once it is idle;
- close() closes the connection and fails what waits.

Every failure is a TableTemporaryError (the caller answers 4xx), never a
"not found", and is logged as a warning with the table's spec.

SECURITY
    Replies are untrusted: the decoder bounds what it buffers and raises
    FrameError for anything outside its framing; logged text goes through
    printable().  Keys are never interpreted here: the table encodes them
    (and refuses what it cannot encode) before they reach the stream.

CONFIGURATION
    None: each table passes its own compiled-in limits.
"""

import collections
import ipaddress
import re

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from mta.tables import TableError, TableTemporaryError, printable

log = Logger()


class FrameError(Exception):
    """The peer sent something outside the framing or its limits; the stream is lost."""


class ProtocolError(Exception):
    """A reply that puts the stream in doubt: fail the request and close the connection."""


class ReplyError(Exception):
    """
    A well-framed reply that fails its request (temporary error); with
    C{close}, the connection is closed too.
    """

    def __init__(self, why, close=False):
        super().__init__(why)
        self.close = close


class LineDecoder:
    """Newline-terminated lines of at most C{maxLength} bytes (newline included)."""

    def __init__(self, maxLength):
        self.maxLength = maxLength
        self._buffer = b""

    def feed(self, data):
        self._buffer += data
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= self.maxLength:
                    raise FrameError(f"reply longer than {self.maxLength}")
                return lines
            if end + 1 > self.maxLength:
                raise FrameError(f"reply longer than {self.maxLength}")
            lines.append(self._buffer[:end])
            self._buffer = self._buffer[end + 1:]


def parseHostPort(spec, text, missing):
    """host:port (host a name, IPv4 or [IPv6]) to (host, port); TableError C{missing} without a colon."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise TableError(f"{spec}: {missing}")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TableError(f"{spec}: bad port {printable(port)!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise TableError(f"{spec}: bad host {printable(host)!r}")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise TableError(f"{spec}: bad IPv6 address {printable(host)!r}") from None
    elif not re.fullmatch(r"[A-Za-z0-9._-]+", host):
        raise TableError(f"{spec}: bad host {printable(host)!r}")
    return host, int(port)


def clientEndpoint(reactor, kind, address, timeout):
    """The endpoint for ("inet", (host, port)) or ("unix", path)."""
    from twisted.internet import endpoints

    if kind == "unix":
        return endpoints.UNIXClientEndpoint(reactor, address, timeout=timeout)
    host, port = address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return endpoints.HostnameEndpoint(reactor, host, port, timeout=timeout)
    if ip.version == 4:
        return endpoints.TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    return endpoints.TCP6ClientEndpoint(reactor, host, port, timeout=timeout)


class _Request:
    def __init__(self, key, payload):
        self.key = key
        self.payload = payload
        self.deferred = Deferred()
        self.timer = None
        self.tries = 0


class StreamProtocol(Protocol):
    """One connection: bytes in through the decoder, each reply to the stream."""

    def __init__(self, stream, decoder):
        self._stream = stream
        self._decoder = decoder
        self.lost = False

    def dataReceived(self, data):
        if self.lost:
            return
        try:
            replies = self._decoder.feed(data)
        except FrameError as e:
            self._stream._protocolError(str(e))
            return
        for reply in replies:
            if self.lost:
                return
            self._stream._replyReceived(reply)

    def connectionLost(self, reason):
        self.lost = True
        self._stream._connectionLost(self)

    def abort(self):
        self.lost = True
        self.transport.abortConnection()


class RequestStream:
    """
    The request queue and connection of one table; see the module docstring.

    C{decoder} makes a fresh decoder per connection; C{parseReply(reply)}
    gives the value (str or None) or raises ReplyError or ProtocolError.
    C{readError}, C{connectError} and C{lostTwice} are the table's words
    for a bad reply, a failed connect and a request lost twice.
    """

    def __init__(self, spec, reactor, kind, address, *, decoder, parseReply, timeout, maxQueue,
                 maxIdle=None, maxTtl=None, readError="lookup error", connectError="lookup error: cannot connect",
                 lostTwice="lookup error: connection lost twice"):
        self.spec = spec
        self._reactor = reactor
        self._kind, self._address = kind, address
        self._decoder = decoder
        self._parseReply = parseReply
        self.timeout = timeout
        self.maxQueue = maxQueue
        self.maxIdle, self.maxTtl = maxIdle, maxTtl
        self._readError, self._connectError, self._lostTwice = readError, connectError, lostTwice
        self._queue = collections.deque()
        self._current = None  # the request on the wire
        self._protocol = None
        self._connecting = None  # the connect Deferred
        self._connectTimer = None
        self._idleTimer = None
        self._connectedAt = None

    # -- requests ------------------------------------------------------------------

    def request(self, key, payload):
        """Send C{payload} (the encoded request for C{key}); a Deferred of the reply's value."""
        if len(self._queue) >= self.maxQueue:
            return self.refuse(key, f"more than {self.maxQueue} lookups waiting")
        request = _Request(key, payload)
        request.timer = self._reactor.callLater(self.timeout, self._timedOut, request)
        self._queue.append(request)
        self._pump()
        return request.deferred

    def refuse(self, key, why):
        """A failed Deferred for a request that is not sent, with a warning."""
        log.warn("{spec}: lookup refused, not sent: {why}: {key}", spec=self.spec, why=why, key=printable(key, 100))
        d = Deferred()
        d.errback(TableTemporaryError(f"{self.spec}: {why}"))
        return d

    def _pump(self):
        if self._current is not None or not self._queue:
            return
        if self._protocol is None:
            self._connect()
            return
        self._cancelIdle()
        self._current = self._queue.popleft()
        self._current.tries += 1
        self._protocol.transport.write(self._current.payload)

    def _finish(self, request, result=None, error=None):
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        request.timer = None
        if error is not None:
            request.deferred.errback(TableTemporaryError(f"{self.spec}: {error}"))
        else:
            request.deferred.callback(result)

    def _timedOut(self, request):
        request.timer = None
        log.warn("{spec}: lookup error: timeout after {timeout:g}s for key {key}",
                 spec=self.spec, timeout=self.timeout, key=printable(request.key, 100))
        if request is self._current:
            # The reply may still come: this connection's stream is out of step.
            self._current = None
            self._dropConnection()
        else:
            self._queue.remove(request)
        self._finish(request, error="timeout")
        self._pump()

    # -- replies -------------------------------------------------------------------

    def _replyReceived(self, reply):
        request = self._current
        if request is None:
            self._protocolError("reply without a request")
            return
        try:
            value = self._parseReply(reply)
        except ProtocolError as e:
            self._protocolError(str(e))
            return
        except ReplyError as e:
            self._current = None
            if e.close:
                self._dropConnection()
            else:
                self._startIdle()
            self._finish(request, error=str(e))
        else:
            self._current = None
            self._startIdle()
            self._finish(request, result=value)
        self._pump()

    def _protocolError(self, why):
        log.warn("{spec}: {prefix}: {why}; closing the connection", spec=self.spec, prefix=self._readError, why=why)
        request, self._current = self._current, None
        self._dropConnection()
        if request is not None:
            self._finish(request, error=why)
        self._pump()

    # -- the connection ------------------------------------------------------------

    def _connect(self):
        if self._connecting is not None:
            return
        factory = Factory.forProtocol(lambda: StreamProtocol(self, self._decoder()))
        endpoint = clientEndpoint(self._reactor, self._kind, self._address, self.timeout)
        d = self._connecting = endpoint.connect(factory)
        self._connectTimer = self._reactor.callLater(self.timeout, d.cancel)
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, protocol):
        self._stopConnectTimer()
        self._connecting = None
        self._protocol = protocol
        self._connectedAt = self._reactor.seconds()
        log.debug("{spec}: connected", spec=self.spec)
        self._pump()

    def _connectFailed(self, failure):
        self._stopConnectTimer()
        self._connecting = None
        if failure.check(CancelledError, ConnectingCancelledError):
            reason = f"connect timeout after {self.timeout:g}s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        log.warn("{spec}: {prefix}: {reason}", spec=self.spec, prefix=self._connectError, reason=reason)
        waiting, self._queue = list(self._queue), collections.deque()
        for request in waiting:
            self._finish(request, error=f"cannot connect: {reason}")

    def _stopConnectTimer(self):
        if self._connectTimer is not None and self._connectTimer.active():
            self._connectTimer.cancel()
        self._connectTimer = None

    def _connectionLost(self, protocol):
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._cancelIdle()
        request, self._current = self._current, None
        if request is not None:
            if request.tries < 2:
                log.info("{spec}: connection lost during a lookup; reconnecting to send it again", spec=self.spec)
                self._queue.appendleft(request)
            else:
                log.warn("{spec}: {lost} for key {key}", spec=self.spec, lost=self._lostTwice,
                         key=printable(request.key, 100))
                self._finish(request, error="connection lost")
        self._pump()

    def _dropConnection(self):
        protocol, self._protocol = self._protocol, None
        self._cancelIdle()
        if protocol is not None:
            protocol.abort()

    def _startIdle(self):
        self._cancelIdle()
        if self.maxIdle is None or self._protocol is None:
            return
        if self.maxTtl is not None and self._reactor.seconds() - self._connectedAt >= self.maxTtl:
            if not self._queue:
                log.debug("{spec}: connection older than {ttl:g}s, closing", spec=self.spec, ttl=self.maxTtl)
                self._dropConnection()
            return
        self._idleTimer = self._reactor.callLater(self.maxIdle, self._idle)

    def _cancelIdle(self):
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None

    def _idle(self):
        self._idleTimer = None
        if self._current is None and self._protocol is not None:
            log.debug("{spec}: idle for {idle:g}s, closing the connection", spec=self.spec, idle=self.maxIdle)
            self._dropConnection()

    def close(self):
        """Close the connection and fail what waits (for tests and shutdown)."""
        request, self._current = self._current, None
        waiting, self._queue = list(self._queue), collections.deque()
        self._dropConnection()
        if self._connecting is not None:
            self._connecting.cancel()
        for r in ([request] if request else []) + waiting:
            self._finish(r, error="table closed")
