"""mta.delivery.smtpreply - reading SMTP/LMTP server replies (the reply half of Postfix's smtp_chat.c).

NAME
    ReplyParser - turn the bytes a server sends into SMTPReply values, in
    bounded memory, whatever the server sends.

SYNOPSIS
    parser = ReplyParser(limit=2048)            # line_length_limit
    for event in parser.feed(data):             # any pieces, any sizes
        if isinstance(event, MalformedReply):   # the last event; then dead
            ...
        else:                                   # an SMTPReply
            ...

DESCRIPTION
    A reply is one or more lines "ddd-text" ending with a line "ddd text"
    (or "ddd" alone); a line ends with LF, and a CR before it is removed
    (as Postfix's smtp_get(): liberal in what we accept).  As Postfix's
    smtp_chat_resp():

      * a line longer than C{limit} bytes is cut there; the rest of it is
        read and thrown away as it arrives, up to its LF
        (SMTPReply.longLines counts such lines);
      * the text kept of a multi-line reply is bounded: a line is kept
        while less than C{limit} bytes are kept, later lines are read to
        the end of the reply but dropped (SMTPReply.skippedLines), so at
        most 2 x limit bytes of one reply are ever held;
      * non-printable characters become "?" (printable(text, '?')), after
        decoding as UTF-8 with replacement.

    So memory does not grow with what the server sends: an endless line or
    an endless multi-line reply is read, and forgotten, until the caller's
    deadline for the reply ends the conversation.

    Protocol errors (MalformedReply, after which the parser reads nothing
    more): a line that does not start with three digits followed by a
    space, a dash or the line end ("non-SMTP response"), a reply code
    outside 200-599 (the same), and a multi-line reply whose lines carry
    different codes, such as "250-a" then "550 b" (RFC 5321 4.2.1: the
    code on each line must be the same; "malformed multi-line response").
    Every line is checked, also those whose text is not kept.

SECURITY
    Everything here comes from the network.  Memory is bounded by
    C{limit} + 1 (the partial line) and 2 x C{limit} (the reply being read),
    whatever the input; reply text never holds CR, LF, NUL or other
    controls.

CONFIGURATION
    line_length_limit (2048), passed in by the client session.

DEVIATIONS FROM POSTFIX
    * Garbage instead of a reply line, a code outside 200-599 and a
      multi-line reply with different codes are protocol errors; Postfix
      takes garbage for a continuation line (when not pipelining), takes
      any three digits and judges a reply by its last line.
    * An over-long line is skipped to its LF for as long as it takes
      (within the caller's deadline); Postfix 3.12 stops reading after
      another line_length_limit bytes ("disabling input from ...").
"""

import attrs

from mta.delivery.status import splitStatus

__all__ = ["MalformedReply", "ReplyParser", "SMTPReply", "printable"]

DEFAULT_LIMIT = 2048  # Postfix's line_length_limit


def printable(text):
    """Postfix's printable(text, '?'): every non-printable character becomes '?'."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


@attrs.frozen
class SMTPReply:
    """
    A server reply: the code of its lines and the lines kept, sanitized,
    code included.  C{skippedLines}: lines read but not kept (the text
    limit); C{longLines}: lines cut at the line limit, C{longSample} the
    start of the first.
    """

    code: int
    lines: tuple
    skippedLines: int = 0
    longLines: int = 0
    limit: int = DEFAULT_LIMIT
    longSample: str = ""  # the start of the first over-long line (30 characters), for the warning

    @property
    def text(self):
        """The lines joined by spaces (Postfix's translit "\\n" to " "), at most C{limit} characters."""
        text = " ".join(self.lines)
        return text if len(text) <= self.limit else text[: self.limit]

    @property
    def dsn(self):
        """The enhanced status code of the first line if its class agrees, else X.0.0."""
        cls = str(self.code)[0]
        default = f"{cls}.0.0"
        status, _ = splitStatus(self.lines[0][4:], default)
        return status if status[0] == cls else default

    @property
    def positive(self):
        return 200 <= self.code < 300


@attrs.frozen
class MalformedReply:
    """A protocol error: C{what} went wrong ("non-SMTP response", ...), C{line} (sanitized, at most 100 characters)."""

    what: str
    line: str
    detail: str = ""


class ReplyParser:
    """Bytes in, SMTPReply (or one MalformedReply) out; see the module docstring."""

    def __init__(self, limit=DEFAULT_LIMIT):
        if limit < 80:
            raise ValueError("the reply line limit must be at least 80 bytes")
        self.limit = limit
        self.dead = False
        self.reset()

    def reset(self):
        """Forget everything read and not yet returned (a new start, as after a TLS handshake)."""
        self._partial = b""  # the start of the line being read, at most limit + 1 bytes
        self._skipping = False  # the line being read is over-long: its rest is discarded up to LF
        self._code = None  # the code of the reply's first line
        self._lines = []
        self._kept = 0  # bytes of text kept of this reply
        self._skipped = 0
        self._long = 0
        self._longSample = ""

    @property
    def buffered(self):
        """Bytes held for the reply being read (for tests: it stays bounded)."""
        return len(self._partial) + sum(len(line) for line in self._lines)

    def feed(self, data):
        """The replies completed by C{data}, in order; a MalformedReply ends the list and the parser."""
        events = []
        if self.dead or not data:
            return events
        start = 0
        size = len(data)
        while start < size:
            end = data.find(b"\n", start)
            if end < 0:
                if not self._skipping:
                    # Room for the line and the CR of its CRLF.
                    room = self.limit + 1 - len(self._partial)
                    piece = data[start : start + room] if room > 0 else b""
                    self._partial += piece
                    if size - start > len(piece):
                        self._skipping = True
                break
            if self._skipping:
                line, long = self._partial[: self.limit], True
            else:
                line = self._partial + data[start:end]
                if line[-1:] == b"\r":
                    line = line[:-1]
                long = len(line) > self.limit
                if long:
                    line = line[: self.limit]
            self._partial = b""
            self._skipping = False
            start = end + 1
            event = self._line(line, long)
            if event is not None:
                events.append(event)
                if isinstance(event, MalformedReply):
                    self.dead = True
                    self.reset()
                    break
        return events

    def _line(self, line, long):
        code = line[:3]
        sep = line[3:4]
        if len(code) != 3 or not code.isdigit() or sep not in (b"", b" ", b"-"):
            return self._malformed("non-SMTP response", line)
        number = int(code)
        if self._code is None:
            if not 200 <= number <= 599:
                return self._malformed("non-SMTP response", line)
            self._code = number
        elif number != self._code:
            return self._malformed("malformed multi-line response", line,
                                   f"reply code {number} after {self._code}")
        if long:
            self._long += 1
            if self._long == 1:
                self._longSample = printable(line[:30].decode("utf-8", "replace"))
        if self._kept < self.limit:
            text = printable(line.decode("utf-8", "replace"))
            self._lines.append(text)
            self._kept += len(line) + 1
        else:
            self._skipped += 1
        if sep == b"-":
            return None
        reply = SMTPReply(self._code, tuple(self._lines), self._skipped, self._long, self.limit, self._longSample)
        self._code = None
        self._lines = []
        self._kept = self._skipped = self._long = 0
        self._longSample = ""
        return reply

    def _malformed(self, what, line, detail=""):
        return MalformedReply(what, printable(line[:100].decode("utf-8", "replace")), detail)
