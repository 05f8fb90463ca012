"""mta.tables.tcp - tcp:host:port, Postfix's tcp_table(5) client/server lookups.

Each lookup sends one request line ``get SP key LF`` and reads one reply
line: ``200 SP value LF`` (found), ``500 SP text LF`` (not found) or
``400 SP text LF`` (try again later).  Key and value are %XX-encoded as
dict_tcp's hex_quote() does: every byte of the UTF-8 key that is ``%``,
white space or not printable ASCII (0x21-0x7e) becomes ``%XX`` (upper case
hex); a reply may use either case and may leave characters unencoded.  The
host is an IPv4 address, ``[IPv6]`` or a name; the port is numeric.

Like Postfix's dict_tcp, this is a pattern table (DICT_FLAG_PATTERN): the
server gets only whole strings, never the partial keys (parent domains,
user@, @domain, networks) that callers try on ordinary tables.

One persistent connection per table, opened at the first lookup (never at
load, so ``mta-config --check`` only parses the spec), carries one request
at a time; further lookups wait in order.  A connection that breaks while a
request is out is reopened and the request sent once more; a connection lost
between requests is reopened by the next lookup.  A ``400`` reply, a
malformed reply (no three digits and a space, a bad %XX, a status other than
2, 4 or 5), a reply line over MAX_REPLY bytes, a value that is not UTF-8 or
decodes to NUL, CR or LF, a timeout or a failed connection: a warning and
TableTemporaryError; after a ``400`` or a protocol error the connection is
closed, as dict_tcp does.

SECURITY
    The server and the connection are not authenticated (tcp_table(5): do
    not use it for security critical purposes); every reply is untrusted
    and bounded (MAX_REPLY bytes a line, checked before buffering more).
    Keys are untrusted: they are always %XX-encoded, so no key can end the
    request line or start another; a key that is not valid UTF-8 or longer
    than MAX_KEY bytes is refused (temporary error) without being sent.
    Logged text is cut and made printable.

CONFIGURATION
    None of its own; the limits are dict_tcp's compiled-in ones:
    TIMEOUT = 100 s (connect, and each request from lookup() to its reply,
    waiting in the queue included), MAX_REPLY = 4096 bytes (the reply line
    with its newline).  Our own: MAX_KEY = 4096 bytes, MAX_QUEUE = 1000
    waiting lookups.

DEVIATIONS
    Postfix tries up to 10 times, a second apart, when it cannot connect or
    the reply is cut off; mta fails a lookup that cannot connect at once
    (the caller answers 4xx) and resends a request once after a lost
    connection.  Postfix writes a request synchronously; mta queues lookups
    and sends the next when the reply comes.  A CR just before the reply's
    newline is dropped (Postfix would keep it in the value, then refuse the
    value here anyway).  Decoded values holding NUL, CR or LF are refused.
    Postfix refuses tcp: where its caller opens a table with
    DICT_FLAG_NO_UNAUTH; mta has no such flag yet.
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
from mta.tables.socketmap import printable

log = Logger()

TIMEOUT = 100.0
MAX_REPLY = 4096
MAX_KEY = 4096
MAX_QUEUE = 1000

_BAD_VALUE = re.compile(r"[\x00\r\n]")
_HEX = b"0123456789abcdefABCDEF"


class TcpReplyError(Exception):
    """A reply line that is not tcp_table(5) syntax."""


def hexQuote(raw):
    """dict_tcp's hex_quote(): bytes to the wire form."""
    out = bytearray()
    for byte in raw:
        if byte != 0x25 and 0x21 <= byte <= 0x7E:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def hexUnquote(text):
    """dict_tcp's hex_unquote(): the wire form to bytes; TcpReplyError for a bad %XX."""
    out = bytearray()
    i = 0
    while i < len(text):
        byte = text[i]
        if byte == 0x25:
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise TcpReplyError("bad %XX encoding")
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def encodeRequest(key):
    """The request line for C{key} (a str)."""
    return b"get " + hexQuote(key.encode("utf-8")) + b"\n"


def parseReply(line):
    """
    One reply line (without its newline) to (status digit, decoded bytes);
    TcpReplyError when dict_tcp would call it malformed.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    if len(line) < 4 or not line[:3].isdigit() or line[3:4] not in b" \t\v\f\r":
        raise TcpReplyError("malformed reply")
    text = hexUnquote(line[4:])
    status = chr(line[0])
    if status not in "245":
        raise TcpReplyError("bad status code")
    return status, text


def parseAddress(spec, name):
    """host:port (host a name, IPv4 or [IPv6]) to (host, port); TableError if bad."""
    host, colon, port = name.rpartition(":")
    if not colon or not host:
        raise TableError(f"{spec}: tcp requires host:port")
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


class _Request:
    def __init__(self, key, payload):
        self.key = key
        self.payload = payload
        self.deferred = Deferred()
        self.timer = None
        self.tries = 0


class TcpTableProtocol(Protocol):
    """One connection: reply lines in, to the table; bounded buffer."""

    def __init__(self, table):
        self._table = table
        self._buffer = b""
        self.lost = False

    def dataReceived(self, data):
        if self.lost:
            return
        self._buffer += data
        while not self.lost:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) >= MAX_REPLY:
                    self._table._protocolError(self, f"reply longer than {MAX_REPLY}")
                return
            if end + 1 > MAX_REPLY:
                self._table._protocolError(self, f"reply longer than {MAX_REPLY}")
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            self._table._replyReceived(self, line)

    def connectionLost(self, reason):
        self.lost = True
        self._table._connectionLost(self, reason)

    def abort(self):
        self.lost = True
        self.transport.abortConnection()


@implementer(ILookupTable)
class TcpTable:
    """tcp:host:port; see the module docstring."""

    pattern = True

    def __init__(self, name, reactor):
        self.spec = f"tcp:{name}"
        self._address = parseAddress(self.spec, name)
        self._reactor = reactor
        self._queue = collections.deque()
        self._current = None
        self._protocol = None
        self._connecting = None
        self._connectTimer = None

    def lookup(self, key):
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            return self._refuse(key, "key not UTF-8")
        if len(encoded) > MAX_KEY:
            return self._refuse(key, f"key over {MAX_KEY} bytes")
        if len(self._queue) >= MAX_QUEUE:
            return self._refuse(key, f"more than {MAX_QUEUE} lookups waiting")
        request = _Request(key, encodeRequest(key))
        request.timer = self._reactor.callLater(TIMEOUT, self._timedOut, request)
        self._queue.append(request)
        self._pump()
        return request.deferred

    def _refuse(self, key, why):
        log.warn("{spec}: lookup refused, not sent: {why}: {key}", spec=self.spec, why=why,
                 key=printable(key.encode("utf-8", "replace").decode("latin-1"), 100))
        d = Deferred()
        d.errback(TableTemporaryError(f"{self.spec}: {why}"))
        return d

    def _pump(self):
        if self._current is not None or not self._queue:
            return
        if self._protocol is None:
            self._connect()
            return
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
            self._current = None
            self._dropConnection()
        else:
            self._queue.remove(request)
        self._finish(request, error="timeout")
        self._pump()

    def _replyReceived(self, protocol, line):
        request = self._current
        if request is None:
            self._protocolError(protocol, "reply without a request")
            return
        try:
            status, raw = parseReply(line)
        except TcpReplyError as e:
            self._protocolError(protocol, f"{e}: {printable(line.decode('latin-1'), 100)}")
            return
        self._current = None
        if status == "4":
            log.warn("{spec}: server temporary error: {reply}", spec=self.spec,
                     reply=printable(line.decode("latin-1")))
            self._dropConnection()
            self._finish(request, error="server temporary error")
        elif status == "5":
            self._finish(request, result=None)
        else:
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = None
            if value is None or _BAD_VALUE.search(value):
                log.warn("{spec}: reply value not UTF-8 or with NUL, CR or LF: {reply}", spec=self.spec,
                         reply=printable(raw.decode("latin-1")))
                self._finish(request, error="bad reply value")
            else:
                self._finish(request, result=value)
        self._pump()

    def _protocolError(self, protocol, why):
        log.warn("{spec}: read TCP map reply: {why}; closing the connection", spec=self.spec, why=why)
        request, self._current = self._current, None
        self._dropConnection()
        if request is not None:
            self._finish(request, error=why)
        self._pump()

    def _endpoint(self):
        from twisted.internet import endpoints

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
        factory = Factory.forProtocol(lambda: TcpTableProtocol(self))
        d = self._connecting = self._endpoint().connect(factory)
        self._connectTimer = self._reactor.callLater(TIMEOUT, d.cancel)
        d.addCallbacks(self._connected, self._connectFailed)

    def _connected(self, protocol):
        self._stopConnectTimer()
        self._connecting = None
        self._protocol = protocol
        self._pump()

    def _connectFailed(self, failure):
        self._stopConnectTimer()
        self._connecting = None
        if failure.check(CancelledError, ConnectingCancelledError):
            reason = f"connect timeout after {TIMEOUT:g}s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        log.warn("{spec}: connect to TCP map: {reason}", spec=self.spec, reason=reason)
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
        request, self._current = self._current, None
        if request is not None:
            if request.tries < 2:
                log.info("{spec}: connection lost during a lookup; reconnecting to send it again", spec=self.spec)
                self._queue.appendleft(request)
            else:
                log.warn("{spec}: read TCP map reply: unexpected EOF, twice, for key {key}", spec=self.spec,
                         key=printable(request.key, 100))
                self._finish(request, error="connection lost")
        self._pump()

    def _dropConnection(self):
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abort()

    def close(self):
        """Close the connection and fail what waits."""
        request, self._current = self._current, None
        waiting, self._queue = list(self._queue), collections.deque()
        self._dropConnection()
        if self._connecting is not None:
            self._connecting.cancel()
        for r in ([request] if request else []) + waiting:
            self._finish(r, error="table closed")
