"""mta.tables.socketmap - socketmap:inet:host:port:name, socketmap:unix:/path:name.

Postfix's socketmap_table(5) client (dict_sockmap), speaking Sendmail's
socketmap protocol: each request is one netstring ``name key`` and each
reply one netstring, ``OK value``, ``NOTFOUND``, ``TEMP reason``,
``TIMEOUT reason`` or ``PERM reason``.  The name is everything after the
last colon; the rest is the server, ``inet:host:port`` (host an IPv4
address, ``[IPv6]`` or a name) or ``unix:/absolute/path``.  Servers such as
postfix-mta-sts-resolver answer smtp_tls_policy_maps lookups this way.

The connection follows mta.tables.stream's rules (one persistent
connection per table, opened at the first lookup, one request at a time in
order, a per-request timeout, resent once after a lost connection: Postfix
retries a broken connection once, to hide server restarts), with the idle
close below.

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

import re

from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, printable
from mta.tables.stream import FrameError, ReplyError, RequestStream, parseHostPort

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


class NetstringError(FrameError):
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
    return "inet", parseHostPort(spec, rest, "inet: needs host:port"), mapname


@implementer(ILookupTable)
class SocketmapTable:
    """socketmap:inet:host:port:name or socketmap:unix:/path:name; see the module docstring."""

    pattern = False

    def __init__(self, name, reactor):
        self.spec = f"socketmap:{name}"
        kind, address, self.mapname = parseServer(self.spec, name)
        self._stream = RequestStream(
            self.spec, reactor, kind, address, decoder=lambda: NetstringDecoder(MAX_REPLY),
            parseReply=self._parseReply, timeout=TIMEOUT, maxQueue=MAX_QUEUE, maxIdle=MAX_IDLE, maxTtl=MAX_TTL)

    def lookup(self, key):
        encoded = key.encode("utf-8", "surrogatepass")
        if len(encoded) > MAX_KEY:
            return self._stream.refuse(key, f"key over {MAX_KEY} bytes")
        if _CONTROL.search(key) or not _validUtf8(encoded):
            return self._stream.refuse(key, "key with a control character or not UTF-8")
        return self._stream.request(key, encodeNetstring(self.mapname.encode("ascii") + b" " + encoded))

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
                raise ReplyError("reply not UTF-8") from None
            if _BAD_VALUE.search(value):
                log.warn("{spec}: socketmap server reply holds NUL, CR or LF: {reply}", spec=self.spec,
                         reply=printable(value))
                raise ReplyError("reply with NUL, CR or LF")
            return value
        if status == b"NOTFOUND":
            return None
        errorClass = {b"TEMP": "temporary", b"TIMEOUT": "timeout", b"PERM": "permanent"}.get(status, "unknown")
        reason = printable(rest.decode("latin-1").lstrip()) if errorClass != "unknown" else printable(
            payload.decode("latin-1"))
        log.warn("{spec} socketmap server {error_class} error{sep}{reason}", spec=self.spec,
                 error_class=errorClass, sep=": " if reason else "", reason=reason)
        raise ReplyError(f"socketmap server {errorClass} error")

    def close(self):
        """Close the connection and fail what waits (for tests and shutdown)."""
        self._stream.close()


def _validUtf8(encoded):
    try:
        encoded.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
