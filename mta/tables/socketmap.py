"""mta.tables.socketmap - socketmap:inet:host:port:name, socketmap:unix:/path:name.

Postfix's socketmap_table(5) client (dict_sockmap), speaking Sendmail's
socketmap protocol: each request is one netstring ``name key`` and each
reply one netstring, ``OK value``, ``NOTFOUND``, ``TEMP reason``,
``TIMEOUT reason`` or ``PERM reason``.  The name is everything after the
last colon; the rest is the server, ``inet:host:port`` (host an IPv4
address, ``[IPv6]`` or a name) or ``unix:/absolute/path``.  Servers such as
postfix-mta-sts-resolver answer smtp_tls_policy_maps lookups this way.

One persistent connection per table, opened at the first lookup (never at
load, so ``mta-config --check`` only parses the spec), carries one request
at a time; further lookups wait in order in a queue.  A connection that
breaks while a request is out is reopened and the request sent once more
(Postfix retries a broken connection once, to hide server restarts); a
connection lost between requests is reopened by the next lookup.

Answers: ``OK value`` gives the value, ``NOTFOUND`` gives None; ``TEMP``,
``TIMEOUT`` and ``PERM`` log a warning in Postfix's words ("socketmap
server temporary|timeout|permanent error: reason") and fail with
TableTemporaryError - PERM too, since Postfix's DICT_ERR_CONFIG is a lookup
error that its callers turn into a temporary failure.  An unknown status
word, a malformed netstring, a reply over MAX_REPLY bytes, a value that is
not UTF-8 or holds NUL, CR or LF, a timeout, a refused or failed connection:
a warning and TableTemporaryError; after a protocol error the connection is
closed, since the reply stream can no longer be trusted.

SECURITY
    The server and the connection are not authenticated (Postfix says: do
    not use it for security-sensitive data); every reply is untrusted.
    Lengths are checked before any payload is buffered (at most MAX_REPLY
    bytes, a length prefix of at most 6 digits), replies outside a request close the
    connection, logged reasons are cut to 200 characters with everything
    outside printable ASCII as '?'.  Keys are untrusted too: a key longer
    than MAX_KEY bytes (UTF-8) or holding a control character (below
    U+0020, U+007F-U+009F) is never sent; the lookup fails with
    TableTemporaryError and a warning.  Values are returned as str, decoded
    as strict UTF-8: a value that does not decode is refused (temporary
    error), never silently altered.

CONFIGURATION
    None of its own: Postfix has no parameters for socketmap tables either
    (dict_sockmap's limits are compiled in).  The fixed limits, Postfix's:
    TIMEOUT = 100 s (connect, and each request from lookup() to its reply,
    waiting in the queue included), MAX_IDLE = 10 s (an idle connection is
    closed), MAX_TTL = 100 s (an older connection is closed once idle),
    MAX_REPLY = 100000 bytes (without the netstring framing).  Our own:
    MAX_KEY = 1000 bytes, MAX_QUEUE = 1000 waiting lookups.

DEVIATIONS
    Postfix's socketmap_max_reply_size parameter is not implemented; the
    limit is its default, 100000.  Keys are sent as the caller gives them
    (Postfix folds case only for pattern-table flags that its fixed-string
    callers do not set), so the same.  Port must be numeric; a unix: path
    must be absolute (Postfix resolves relative paths in its queue
    directory).  Postfix shares one connection between socketmap tables of
    the same server; mta opens one per table spec.  "OK" without a space
    (no value) is "not found", as in Postfix.  Postfix sends requests
    synchronously; mta queues them and sends the next when the reply comes.
    Keys with control characters or over MAX_KEY are refused (Postfix sends
    them).  Postfix refuses socketmap (an unauthenticated table) where its
    caller opens a table with DICT_FLAG_NO_UNAUTH; mta has no such flag yet,
    so socketmap is accepted wherever a table is.
"""

import collections
import ipaddress
import re

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError

log = Logger()

TIMEOUT = 100.0
MAX_IDLE = 10.0
MAX_TTL = 100.0
MAX_REPLY = 100000
MAX_KEY = 1000
MAX_QUEUE = 1000

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_BAD_VALUE = re.compile(r"[\x00\r\n]")
_NAME = re.compile(r"[!-~]+")


class NetstringError(Exception):
    """The peer sent something that is not a netstring within the limits."""


def encodeNetstring(payload):
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """
    Incremental netstring reader: feed() bytes as they arrive, get every
    complete payload; NetstringError for a bad one (then the stream is lost).
    """

    def __init__(self, maxLength=MAX_REPLY):
        self.maxLength = maxLength
        self._digits = len(str(maxLength))
        self._buffer = b""
        self._length = None  # the payload length once the prefix is read

    def feed(self, data):
        self._buffer += data
        payloads = []
        while True:
            if self._length is None:
                colon = self._buffer.find(b":")
                head = self._buffer if colon < 0 else self._buffer[:colon]
                if not head.isdigit() and head:
                    raise NetstringError(f"bad netstring length prefix {printable(head.decode('latin-1'))!r}")
                if len(head) > self._digits:
                    raise NetstringError(f"netstring length prefix over {self._digits} digits")
                if colon < 0:
                    return payloads
                if not head:
                    raise NetstringError("netstring length prefix missing")
                length = int(head)
                if length > self.maxLength:
                    raise NetstringError(f"netstring length {length} over the limit of {self.maxLength}")
                self._length = length
                self._buffer = self._buffer[colon + 1:]
            if len(self._buffer) < self._length + 1:
                return payloads
            payload, end = self._buffer[:self._length], self._buffer[self._length:self._length + 1]
            if end != b",":
                raise NetstringError("netstring without its terminating comma")
            payloads.append(payload)
            self._buffer = self._buffer[self._length + 1:]
            self._length = None


def printable(text, limit=200):
    """Postfix's printable(): everything outside printable ASCII as '?', cut to C{limit}."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def parseServer(spec, name):
    """
    Split C{name} (after "socketmap:") into (kind, address, mapname):
    ("inet", (host, port), mapname) or ("unix", path, mapname).
    """
    server, colon, mapname = name.rpartition(":")
    if not colon or not server:
        raise TableError(f"{spec}: socketmap requires server:socketmap-name (inet:host:port:name or unix:/path:name)")
    if not _NAME.fullmatch(mapname):
        raise TableError(f"{spec}: bad socketmap name {printable(mapname)!r} (printable, no spaces)")
    kind, _, rest = server.partition(":")
    if kind == "unix":
        if not rest.startswith("/") or _CONTROL.search(rest):
            raise TableError(f"{spec}: unix: needs an absolute socket path")
        return "unix", rest, mapname
    if kind != "inet":
        raise TableError(f"{spec}: unknown socketmap transport {printable(kind)!r} (inet or unix)")
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise TableError(f"{spec}: inet: needs host:port")
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
    return "inet", (host, int(port)), mapname


class _Request:
    def __init__(self, key, payload):
        self.key = key
        self.payload = payload
        self.deferred = Deferred()
        self.timer = None
        self.tries = 0


class SocketmapProtocol(Protocol):
    """One connection: netstrings in, replies to the table."""

    def __init__(self, table):
        self._table = table
        self._decoder = NetstringDecoder(MAX_REPLY)
        self.lost = False

    def dataReceived(self, data):
        if self.lost:
            return
        try:
            payloads = self._decoder.feed(data)
        except NetstringError as e:
            self._table._protocolError(self, str(e))
            return
        for payload in payloads:
            if self.lost:
                return
            self._table._replyReceived(self, payload)

    def connectionLost(self, reason):
        self.lost = True
        self._table._connectionLost(self, reason)

    def abort(self):
        self.lost = True
        self.transport.abortConnection()


@implementer(ILookupTable)
class SocketmapTable:
    """socketmap:inet:host:port:name or socketmap:unix:/path:name; see the module docstring."""

    pattern = False

    def __init__(self, name, reactor):
        self.spec = f"socketmap:{name}"
        self._kind, self._address, self.mapname = parseServer(self.spec, name)
        self._reactor = reactor
        self._queue = collections.deque()
        self._current = None  # the request on the wire
        self._protocol = None
        self._connecting = None  # the connect Deferred
        self._connectTimer = None
        self._idleTimer = None
        self._connectedAt = None

    # -- lookups -----------------------------------------------------------------

    def lookup(self, key):
        encoded = key.encode("utf-8", "surrogatepass")
        if len(encoded) > MAX_KEY:
            return self._refuse(key, f"key over {MAX_KEY} bytes")
        if _CONTROL.search(key) or not _validUtf8(encoded):
            return self._refuse(key, "key with a control character or not UTF-8")
        if len(self._queue) >= MAX_QUEUE:
            return self._refuse(key, f"more than {MAX_QUEUE} lookups waiting")
        request = _Request(key, encodeNetstring(self.mapname.encode("ascii") + b" " + encoded))
        request.timer = self._reactor.callLater(TIMEOUT, self._timedOut, request)
        self._queue.append(request)
        self._pump()
        return request.deferred

    def _refuse(self, key, why):
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
                 spec=self.spec, timeout=TIMEOUT, key=printable(request.key, 100))
        if request is self._current:
            # The reply may still come: this connection's stream is out of step.
            self._current = None
            self._dropConnection()
        else:
            self._queue.remove(request)
        self._finish(request, error="timeout")
        self._pump()

    # -- replies -----------------------------------------------------------------

    def _replyReceived(self, protocol, payload):
        request = self._current
        if request is None:
            self._protocolError(protocol, "reply without a request")
            return
        self._current = None
        self._startIdle()
        try:
            value = self._parseReply(payload)
        except TableTemporaryError as e:
            self._finish(request, error=str(e))
        else:
            self._finish(request, result=value)
        self._pump()

    def _parseReply(self, payload):
        status, space, rest = payload.partition(b" ")
        if status == b"OK":
            if not space:
                log.warn("{spec}: socketmap server reply OK without a value: not found", spec=self.spec)
                return None
            try:
                value = rest.decode("utf-8")
            except UnicodeDecodeError:
                log.warn("{spec}: socketmap server reply is not UTF-8: {reply}", spec=self.spec,
                         reply=printable(rest.decode("latin-1")))
                raise TableTemporaryError("reply not UTF-8") from None
            if _BAD_VALUE.search(value):
                log.warn("{spec}: socketmap server reply holds NUL, CR or LF: {reply}", spec=self.spec,
                         reply=printable(value))
                raise TableTemporaryError("reply with NUL, CR or LF")
            return value
        if status == b"NOTFOUND":
            return None
        errorClass = {b"TEMP": "temporary", b"TIMEOUT": "timeout", b"PERM": "permanent"}.get(status, "unknown")
        reason = printable(rest.decode("latin-1").lstrip()) if errorClass != "unknown" else printable(
            payload.decode("latin-1"))
        log.warn("{spec} socketmap server {error_class} error{sep}{reason}", spec=self.spec,
                 error_class=errorClass, sep=": " if reason else "", reason=reason)
        raise TableTemporaryError(f"socketmap server {errorClass} error")

    def _protocolError(self, protocol, why):
        log.warn("{spec}: lookup error: {why}; closing the connection", spec=self.spec, why=why)
        request, self._current = self._current, None
        self._dropConnection()
        if request is not None:
            self._finish(request, error=why)
        self._pump()

    # -- the connection ----------------------------------------------------------

    def _endpoint(self):
        from twisted.internet import endpoints

        if self._kind == "unix":
            return endpoints.UNIXClientEndpoint(self._reactor, self._address, timeout=TIMEOUT)
        host, port = self._address
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return endpoints.HostnameEndpoint(self._reactor, host, port, timeout=TIMEOUT)
        if address.version == 4:
            return endpoints.TCP4ClientEndpoint(self._reactor, host, port, timeout=TIMEOUT)
        return endpoints.TCP6ClientEndpoint(self._reactor, host, port, timeout=TIMEOUT)

    def _connect(self):
        if self._connecting is not None:
            return
        factory = Factory.forProtocol(lambda: SocketmapProtocol(self))
        d = self._connecting = self._endpoint().connect(factory)
        self._connectTimer = self._reactor.callLater(TIMEOUT, d.cancel)
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
            reason = f"connect timeout after {TIMEOUT:g}s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        log.warn("{spec}: lookup error: cannot connect: {reason}", spec=self.spec, reason=reason)
        waiting, self._queue = list(self._queue), collections.deque()
        for request in waiting:
            self._finish(request, error=f"cannot connect: {reason}")

    def _stopConnectTimer(self):
        if self._connectTimer is not None and self._connectTimer.active():
            self._connectTimer.cancel()
        self._connectTimer = None

    def _connectionLost(self, protocol, reason):
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
                log.warn("{spec}: lookup error: connection lost twice for key {key}", spec=self.spec,
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
        if self._connectedAt is not None and self._reactor.seconds() - self._connectedAt >= MAX_TTL:
            if not self._queue:
                log.debug("{spec}: connection older than {ttl:g}s, closing", spec=self.spec, ttl=MAX_TTL)
                self._dropConnection()
            return
        self._idleTimer = self._reactor.callLater(MAX_IDLE, self._idle)

    def _cancelIdle(self):
        if self._idleTimer is not None and self._idleTimer.active():
            self._idleTimer.cancel()
        self._idleTimer = None

    def _idle(self):
        self._idleTimer = None
        if self._current is None and self._protocol is not None:
            log.debug("{spec}: idle for {idle:g}s, closing the connection", spec=self.spec, idle=MAX_IDLE)
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


def _validUtf8(encoded):
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
