"""mta.smtpd.redisclient - a small Redis client on a Twisted protocol, for the shared anvil.

    client = RedisClient(reactor, spec, password=None, timeout=1.0)
    d = client.execute("EVAL", script, 1, key, arg)   # -> Deferred[reply]
    client.close()

One connection, opened at the first command (never at load) and again at
the first command after it was lost; a command waits in order for its
reply (RESP2: simple strings and integers as str and int, bulk strings as
bytes, arrays as lists, a nil as None, an error reply as RedisReplyError).
With a password (anvil_store_password_file) AUTH goes first on every new
connection, then SELECT when the spec names a database other than 0.

Every command has a deadline of C{timeout} seconds from execute() to its
reply, waiting for the connection included.  A command that times out
fails with RedisUnavailable and, when it was already sent, the connection
is closed (the stream of replies can no longer be matched to commands);
the others waiting on it fail too.  A connection that cannot be made (or
whose AUTH or SELECT fails) fails its commands, and for RETRY seconds
afterwards commands fail at once without a new attempt, so that a Redis
that is down costs each session nothing but a quick "unavailable".

SECURITY
    The server is the administrator's (anvil_store), yet its replies are
    parsed as untrusted: a reply over MAX_REPLY bytes, an array deeper
    than MAX_DEPTH or longer than MAX_ITEMS, or a malformed line closes the
    connection.  Arguments are sent as RESP bulk strings (length-prefixed),
    so nothing in them is interpreted by Redis as a command.  At most
    MAX_PENDING commands wait; more fail at once.

CONFIGURATION
    None of its own: the caller passes the server (anvil_store), the
    password and the timeout.
"""

import collections

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol

RETRY = 5.0  # seconds after a failed connection during which commands fail at once
MAX_REPLY = 1024 * 1024
MAX_DEPTH = 4
MAX_ITEMS = 100000
MAX_PENDING = 10000


class RedisUnavailable(Exception):
    """The server cannot be reached, did not answer in time, or broke the protocol."""


class RedisReplyError(Exception):
    """The server answered with an error reply (-ERR ...)."""


class _Incomplete(Exception):
    pass


class ProtocolViolation(Exception):
    pass


def encodeCommand(args):
    """RESP: an array of bulk strings (str as UTF-8, int as its digits)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, int):
            arg = b"%d" % arg
        elif isinstance(arg, str):
            arg = arg.encode("utf-8")
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def parseReply(buffer, offset=0, depth=0):
    """One reply at C{offset}: (value, next offset); _Incomplete or ProtocolViolation."""
    end = buffer.find(b"\r\n", offset)
    if end < 0:
        if len(buffer) - offset > MAX_REPLY:
            raise ProtocolViolation("reply line too long")
        raise _Incomplete()
    kind, line = buffer[offset:offset + 1], buffer[offset + 1:end]
    following = end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), following
    if kind == b"-":
        return RedisReplyError(line.decode("utf-8", "replace")[:200]), following
    if kind in (b":", b"$", b"*"):
        try:
            number = int(line)
        except ValueError:
            raise ProtocolViolation(f"bad number in reply: {line[:40]!r}") from None
        if kind == b":":
            return number, following
        if number < 0:
            return None, following
        if kind == b"$":
            if number > MAX_REPLY:
                raise ProtocolViolation("bulk reply over the limit")
            if len(buffer) < following + number + 2:
                raise _Incomplete()
            if buffer[following + number:following + number + 2] != b"\r\n":
                raise ProtocolViolation("bulk reply without its CRLF")
            return buffer[following:following + number], following + number + 2
        if number > MAX_ITEMS or depth >= MAX_DEPTH:
            raise ProtocolViolation("array reply over the limits")
        items = []
        for _ in range(number):
            item, following = parseReply(buffer, following, depth + 1)
            items.append(item)
        return items, following
    raise ProtocolViolation(f"unknown reply type {kind!r}")


class _Command:
    def __init__(self, payload):
        self.payload = payload
        self.deferred = Deferred()
        self.timer = None
        self.sent = False

    def finish(self, result):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if not self.deferred.called:
            if isinstance(result, Exception):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)


class RedisProtocol(Protocol):
    """One connection: commands out in order, replies matched to them in order."""

    def __init__(self, client):
        self.client = client
        self.buffer = b""
        self.waiting = collections.deque()  # _Command sent, reply not read yet

    def send(self, command):
        command.sent = True
        self.waiting.append(command)
        self.transport.write(command.payload)

    def dataReceived(self, data):
        self.buffer += data
        while self.buffer:
            try:
                value, used = parseReply(self.buffer)
            except _Incomplete:
                if len(self.buffer) > MAX_REPLY + 64:
                    self.client._broken(self, "reply over the size limit")
                return
            except ProtocolViolation as e:
                self.client._broken(self, str(e))
                return
            self.buffer = self.buffer[used:]
            if not self.waiting:
                self.client._broken(self, "a reply to no command")
                return
            self.waiting.popleft().finish(value)

    def connectionLost(self, reason):
        self.client._lost(self, reason.getErrorMessage())


class RedisClient:
    """See the module docstring.  C{spec}: a mta.config.types.AnvilStoreSpec."""

    def __init__(self, reactor, spec, password=None, timeout=1.0):
        self.reactor = reactor
        self.spec = spec
        self.password = password
        self.timeout = timeout
        self.protocol = None  # RedisProtocol, once connected
        self._connecting = None  # the endpoint's Deferred while connecting
        self._queue = collections.deque()  # _Command waiting for the connection
        self._downUntil = 0.0
        self._closed = False
        self.lastError = None

    def __str__(self):
        return str(self.spec)

    def _endpoint(self):
        spec = self.spec
        if spec.kind == "unix":
            return UNIXClientEndpoint(self.reactor, spec.address, timeout=self.timeout)
        endpoint = TCP6ClientEndpoint if ":" in spec.address else TCP4ClientEndpoint
        return endpoint(self.reactor, spec.address, spec.port, timeout=self.timeout)

    def execute(self, *args):
        """Send one command; a Deferred of its reply (RedisUnavailable, RedisReplyError)."""
        command = _Command(encodeCommand(args))
        d = command.deferred
        if self._closed:
            command.finish(RedisUnavailable("the client is closed"))
            return d
        if self.protocol is None and self.reactor.seconds() < self._downUntil:
            command.finish(RedisUnavailable(self.lastError or "unavailable"))
            return d
        if len(self._queue) + (len(self.protocol.waiting) if self.protocol else 0) >= MAX_PENDING:
            command.finish(RedisUnavailable("too many commands waiting"))
            return d
        command.timer = self.reactor.callLater(self.timeout, self._timedOut, command)
        if self.protocol is not None:
            self.protocol.send(command)
        else:
            self._queue.append(command)
            self._connect()
        return d

    def _prelude(self):
        commands = []
        if self.password is not None:
            commands.append(("AUTH", self.password))
        if self.spec.db:
            commands.append(("SELECT", self.spec.db))
        return commands

    def _connect(self):
        if self._connecting is not None:
            return
        factory = Factory.forProtocol(lambda: RedisProtocol(self))
        self._connecting = self._endpoint().connect(factory)
        self._connecting.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, protocol):
        self._connecting = None
        if self._closed:
            protocol.transport.loseConnection()
            return
        prelude = [_Command(encodeCommand(args)) for args in self._prelude()]
        self.protocol = protocol
        for command in prelude:
            command.deferred.addErrback(self._preludeRefused, protocol)
            protocol.send(command)
        queue, self._queue = self._queue, collections.deque()
        for command in queue:
            if not command.deferred.called:
                protocol.send(command)

    def _preludeRefused(self, failure, protocol):
        if failure.check(RedisReplyError) and self.protocol is protocol:
            self._broken(protocol, f"AUTH or SELECT refused: {failure.getErrorMessage()}")

    def _connectFailed(self, failure):
        self._connecting = None
        self._down(f"cannot connect: {failure.getErrorMessage()}")
        queue, self._queue = self._queue, collections.deque()
        for command in queue:
            command.finish(RedisUnavailable(self.lastError))

    def _down(self, reason):
        self.lastError = reason
        self._downUntil = self.reactor.seconds() + RETRY

    def _timedOut(self, command):
        command.timer = None
        if command.sent and self.protocol is not None and command in self.protocol.waiting:
            self._broken(self.protocol, f"no reply in {self.timeout:g}s")
        else:
            try:
                self._queue.remove(command)
            except ValueError:
                pass
            command.finish(RedisUnavailable(f"no connection in {self.timeout:g}s"))
            if self._connecting is not None and not self._queue:
                self._connecting.cancel()  # its errback marks the server down

    def _broken(self, protocol, reason):
        """The connection can no longer be trusted: close it and fail what waits on it."""
        self._down(reason)
        self._failWaiting(protocol, reason)
        protocol.transport.abortConnection()

    def _failWaiting(self, protocol, reason):
        if self.protocol is protocol:
            self.protocol = None
        waiting, protocol.waiting = protocol.waiting, collections.deque()
        for command in waiting:
            command.finish(RedisUnavailable(reason))

    def _lost(self, protocol, reason):
        if protocol.waiting:
            self._down(f"connection lost: {reason}")
        self._failWaiting(protocol, f"connection lost: {reason}")

    def close(self):
        """Close the connection; waiting commands fail."""
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        for command in list(self._queue):
            command.finish(RedisUnavailable("the client is closed"))
        self._queue.clear()
        if self.protocol is not None:
            protocol = self.protocol
            self._failWaiting(protocol, "the client is closed")
            protocol.transport.loseConnection()


__all__ = ["RedisClient", "RedisReplyError", "RedisUnavailable", "encodeCommand", "parseReply"]
