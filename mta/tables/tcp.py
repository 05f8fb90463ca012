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

The connection follows mta.tables.stream's rules (one persistent
connection per table, opened at the first lookup, one request at a time in
order, a per-request timeout, resent once after a lost connection; no idle
close, as dict_tcp).  A ``400`` reply, a malformed reply (no three digits
and a space, a bad %XX, a status other than 2, 4 or 5), a reply line over
MAX_REPLY bytes, a value that is not UTF-8 or decodes to NUL, CR or LF, a
timeout or a failed connection: a warning and TableTemporaryError; after a
``400`` or a protocol error the connection is closed, as dict_tcp does.

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

import re

from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import printable
from mta.tables.stream import LineDecoder, ProtocolError, ReplyError, RequestStream, parseHostPort

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
    return parseHostPort(spec, name, "tcp requires host:port")


@implementer(ILookupTable)
class TcpTable:
    """tcp:host:port; see the module docstring."""

    pattern = True

    def __init__(self, name, reactor):
        self.spec = f"tcp:{name}"
        self._stream = RequestStream(
            self.spec, reactor, "inet", parseAddress(self.spec, name), decoder=lambda: LineDecoder(MAX_REPLY),
            parseReply=self._parseReply, timeout=TIMEOUT, maxQueue=MAX_QUEUE, readError="read TCP map reply",
            connectError="connect to TCP map", lostTwice="read TCP map reply: unexpected EOF, twice,")

    def lookup(self, key):
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            return self._stream.refuse(key, "key not UTF-8")
        if len(encoded) > MAX_KEY:
            return self._stream.refuse(key, f"key over {MAX_KEY} bytes")
        return self._stream.request(key, encodeRequest(key))

    def _parseReply(self, line):
        try:
            status, raw = parseReply(line)
        except TcpReplyError as e:
            raise ProtocolError(f"{e}: {printable(line.decode('latin-1'), 100)}") from None
        if status == "4":
            log.warn("{spec}: server temporary error: {reply}", spec=self.spec,
                     reply=printable(line.decode("latin-1")))
            raise ReplyError("server temporary error", close=True)
        if status == "5":
            return None
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            value = None
        if value is None or _BAD_VALUE.search(value):
            log.warn("{spec}: reply value not UTF-8 or with NUL, CR or LF: {reply}", spec=self.spec,
                     reply=printable(raw.decode("latin-1")))
            raise ReplyError("bad reply value")
        return value

    def close(self):
        """Close the connection and fail what waits."""
        self._stream.close()
