"""mta.cli.sendmail.message - mta-sendmail's reading of the message, and the -t header reader.

MessageReader turns standard input into queue file content as Postfix's
sendmail reads it (see mta.cli.sendmail, DESCRIPTION): leading "From "
lines dropped, LF or CRLF line ends stored as CRLF, a last line without
one given one, a lone "." ending the input without -i, a From: header
added when a full name asks for it, the size bounded by
message_size_limit.  With -t it keeps the values of the recipient headers
(To:, Cc:, Bcc:, or the Resent- ones when there are any) and removes Bcc:
and Resent-Bcc:; headerRecipients() gives their addr-specs
(mta.cli.sendmail.addresses).

SECURITY
    The input is untrusted.  Memory is bounded: a line longer than PIECE
    bytes is passed on in pieces, and only the recipient headers (with -t)
    are kept while they are read.

CONFIGURATION
    message_size_limit, passed in by the caller (sizeLimit).
"""

import re

from mta.cli.sendmail.addresses import extractAddresses

PIECE = 65536  # the most of one unfinished line held in memory

_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_FROM_LINE = re.compile(rb">*From ")
_RECIPIENT_HEADERS = {b"to": False, b"cc": False, b"bcc": False,
                      b"resent-to": True, b"resent-cc": True, b"resent-bcc": True}
_DROPPED_WITH_T = frozenset({b"bcc", b"resent-bcc"})


class MessageReader:
    """
    Turns standard input into queue file content, as Postfix's sendmail
    reads it (see the module docstring).  feed() blocks of input, then
    finish(); C{sink(bytes)} gets the content.  C{done}: a lone "." ended
    the input; C{tooBig}: the content passed C{sizeLimit} (0: no limit) and
    nothing more is written.  With C{extract}, C{recipients} and
    C{resentRecipients} are the values of the recipient headers (str).
    C{addFrom}: a From: header (bytes) to add when the message has none.
    """

    def __init__(self, sink, *, extract=False, dotEnds=True, addFrom=None, sizeLimit=0):
        self._sink = sink
        self.extract = extract
        self.dotEnds = dotEnds
        self.addFrom = addFrom
        self.sizeLimit = sizeLimit
        self.size = 0
        self.eightBit = False
        self.done = False
        self.tooBig = False
        self.sawFrom = False
        self.recipients = []
        self.resentRecipients = []
        self._buffer = bytearray()
        self._out = bytearray()
        self._midLine = False  # the last piece did not end its line
        self._skipFrom = True
        self._inHeaders = True
        self._header = None  # lower-case name of the header being read
        self._keep = True
        self._collect = None  # bytearray: a recipient header being read, with extract
        self._resent = False

    def feed(self, data):
        if self.done or self.tooBig:
            return
        buffer = self._buffer
        buffer += data
        start = 0
        while not self.done and not self.tooBig:
            nl = buffer.find(b"\n", start)
            if nl < 0:
                break
            end = nl
            while end > start and buffer[end - 1] == 0x0D:
                end -= 1
            self._piece(bytes(buffer[start:end]), True)
            start = nl + 1
        del buffer[:start]
        if len(buffer) > PIECE and not self.done and not self.tooBig:
            # A long line: pass on what we have, but keep trailing CRs (a CRLF may be split).
            cut = len(buffer.rstrip(b"\r")) or len(buffer) - 1
            piece = bytes(buffer[:cut])
            del buffer[:cut]
            self._piece(piece, False)
        self._drain()

    def finish(self):
        if not self.done and not self.tooBig:
            if self._buffer:
                line = bytes(self._buffer).rstrip(b"\r")
                self._buffer.clear()
                self._piece(line, True)
            elif self._midLine:
                self._piece(b"", True)
        if self._inHeaders and not self.tooBig:
            self._endHeader()
            self._endHeaders(None)
        self._drain()

    def _drain(self):
        if self._out:
            self._sink(bytes(self._out))
            self._out.clear()

    def _emit(self, data):
        if self.tooBig:
            return
        self.size += len(data)
        if self.sizeLimit and self.size > self.sizeLimit:
            self.tooBig = True
            self._out.clear()
            return
        if not self.eightBit and not data.isascii():
            self.eightBit = True
        self._out += data

    def _piece(self, content, complete):
        first = not self._midLine
        self._midLine = not complete
        if self._skipFrom:
            if first and complete and _FROM_LINE.match(content):
                return
            self._skipFrom = False
        if first and complete and self.dotEnds and content == b".":
            self.done = True
            return
        if self._inHeaders:
            if first and not (content[:1] in (b" ", b"\t") and self._header is not None):
                match = _HEADER.match(content)
                self._endHeader()
                if match:
                    self._startHeader(match.group(1).lower())
                else:
                    self._endHeaders(content)
            if self._inHeaders:
                if self._collect is not None:
                    self._collect += content
                if self._keep:
                    self._emit(content + b"\r\n" if complete else content)
                return
        self._emit(content + b"\r\n" if complete else content)

    def _startHeader(self, name):
        self._header = name
        if name == b"from":
            self.sawFrom = True
        self._keep = not (self.extract and name in _DROPPED_WITH_T)
        if self.extract and name in _RECIPIENT_HEADERS:
            self._collect = bytearray()
            self._resent = _RECIPIENT_HEADERS[name]

    def _endHeader(self):
        if self._collect is not None:
            value = bytes(self._collect).split(b":", 1)[1].decode("utf-8", "replace")
            (self.resentRecipients if self._resent else self.recipients).append(value)
            self._collect = None
        self._header = None
        self._keep = True

    def _endHeaders(self, bodyLine):
        self._inHeaders = False
        if self.addFrom is not None and not self.sawFrom:
            self._emit(self.addFrom)
            if bodyLine:  # a non-empty first body line: keep it out of the header section
                self._emit(b"\r\n")

    def headerRecipients(self):
        """With extract: the addr-specs of Resent-To/Cc/Bcc if there are any, else of To/Cc/Bcc."""
        values = self.resentRecipients or self.recipients
        return [spec for value in values for spec in extractAddresses(value)]
