"""mta.smtpd.data - the DATA reader: end of data, dot-unstuffing, limits.

Only CRLF "." CRLF ends DATA.  The reader works on whole lines: it keeps the
unfinished last line of a chunk back and examines the rest with bytes
methods (no per-byte Python loop).  A bare LF or bare CR anywhere is an
error (Postfix's smtpd_forbid_bare_newline = yes): the caller answers 521
and closes, so a bare-LF "." can never end a message early (SMTP smuggling,
CVE-2023-51764).  An over-long line or too much data switches the reader to
discarding: it still reads to the real end of data, so nothing of the
message is ever taken as a command, and the caller rejects the message.

SECURITY
    Everything here is untrusted network input.

CONFIGURATION
    line_length_limit (per line, CRLF excluded), message_size_limit.
"""

import re

BARE_NEWLINE = "bare newline"
LINE_TOO_LONG = "line too long"
TOO_BIG = "too big"

_BARE_LF = re.compile(rb"(?<!\r)\n")


class DataReader:
    """
    Feed it the bytes after the 354 reply.  C{sink(bytes)} receives the
    unstuffed content; feed() returns the number of bytes it consumed up to
    and including the end-of-data line, or None while more is needed.
    After the end (or a fatal error) C{error} says what went wrong, if
    anything: one of the module constants.

    C{bareNewline} is smtpd_forbid_bare_newline: "reject" makes a bare LF
    or CR fatal; "normalize" turns a bare LF into CRLF (a line end inside
    the message, never the end of data); "no" keeps it as data.
    """

    def __init__(self, sink, lineLimit, sizeLimit, bareNewline="reject"):
        self._sink = sink
        self._lineLimit = lineLimit
        self._sizeLimit = sizeLimit
        self._reject = bareNewline in ("reject", "yes")
        self._normalize = bareNewline == "normalize"
        self._longLine = re.compile(rb"[^\n]{%d}" % (lineLimit + 2))
        self._partial = b""  # unfinished line, at most lineLimit + 2 bytes
        self._afterCRLF = True  # the partial line starts right after a CRLF
        self._discarding = False  # the partial line is the tail of a too-long line
        self.error = None
        self.size = 0
        self.done = False

    def _fail(self, reason):
        if self.error is None:
            self.error = reason

    def feed(self, data):
        """Consume C{data}; return bytes consumed if the end was reached, else None."""
        start = len(self._partial)
        buf = self._partial + data if self._partial else data
        # Only CRLF "." CRLF ends the data; the held-back partial line can be
        # the "." only if it starts right after a CRLF.
        prefix = b"\r\n" if self._afterCRLF and not self._discarding else b""
        end = (prefix + buf).find(b"\r\n.\r\n")
        if end >= 0:
            end -= len(prefix)  # index in buf of the CRLF before ".", -2 if "." is first
            self._process(buf[: end + 2])
            self._partial = b""
            self.done = True
            return end + 5 - start
        cut = buf.rfind(b"\n")
        if cut < 0:
            rest = buf
        else:
            self._process(buf[: cut + 1])
            if self.done:
                return None
            rest = buf[cut + 1 :]
            self._afterCRLF = buf[cut - 1 : cut] == b"\r"
        if self._reject and b"\r" in rest[:-1]:
            self._fail(BARE_NEWLINE)
            self.done = True
            return None
        if len(rest) > self._lineLimit + 1:
            # An endless line: keep only its last byte (it may be the CR of CRLF).
            self._fail(LINE_TOO_LONG)
            self._discarding = True
            rest = rest[-1:]
        self._partial = rest
        return None

    def _process(self, block):
        """Check and store complete lines (block ends in LF, or is empty)."""
        if not block:
            return
        lineStart = self._afterCRLF or self._normalize
        if self._discarding:
            # The first line continues a too-long line: drop it.
            cut = block.find(b"\n") + 1
            lineStart = block[cut - 2 : cut] == b"\r\n" or self._normalize
            block = block[cut:]
            self._discarding = False
            if not block:
                return
        crlf = block.count(b"\r\n")
        if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
            if self._reject:
                self._fail(BARE_NEWLINE)
                self.done = True
                return
            if self._normalize:
                block = _BARE_LF.sub(b"\r\n", block)
        if len(block) > self._lineLimit + 2 and self._longLine.search(block):
            self._fail(LINE_TOO_LONG)
        if (lineStart and block[:1] == b".") or b"\r\n." in block:
            head = b"\r\n" if lineStart else b"\n"
            block = (head + block).replace(b"\r\n.", b"\r\n")[len(head) :]
        self.size += len(block)
        if self._sizeLimit and self.size > self._sizeLimit:
            self._fail(TOO_BIG)
        if self.error is None:
            self._sink(block)
