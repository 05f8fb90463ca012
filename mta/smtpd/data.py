"""mta.smtpd.data - message content on its way in: end of DATA, line ends, limits.

ContentReader is the one content path for DATA and BDAT.  It applies
smtpd_forbid_bare_newline to line ends, line_length_limit to lines and
message_size_limit to the whole, undoes DATA's dot-stuffing, and passes the
content on.  It works on whole lines with bytes methods (no per-byte Python
loop) and keeps the unfinished last line, and a CR that may be the first
half of a CRLF, across reads and across BDAT chunks (RFC 3030 chunks may
split a CRLF).  BODY=BINARYMIME content (BDAT only) has no lines: it is
exempt from the line-end and line-length checks and only counted.

DataReader stands in front of it for DATA and finds the end of the data:
the first CRLF "." CRLF after the 354 reply (whose own CRLF counts, so a
lone "." first ends an empty message).  Nothing else ends DATA, in any mode
and whatever errors were recorded before: the end is found on the raw byte
stream before any content check runs, so no content error can change where
the data ends (SMTP smuggling, CVE-2023-51764).  Bytes that may be the start
of the end sequence are held back until the next read decides.

The modes of smtpd_forbid_bare_newline, for message content:

    reject, yes  A bare LF or a bare CR anywhere in the content is fatal:
                 C{fatal} is set at once and the session replies with
                 smtpd_forbid_bare_newline_reject_code and disconnects.
    normalize    A bare LF is a line end: stored as CRLF (the next line is
                 dot-unstuffed as any other).  A bare CR is kept as data.
    no           Bare LF and bare CR are kept as data, unchanged; only CRLF
                 ends a line for dot-unstuffing.

An over-long line (more than line_length_limit octets before its line end)
or too much content is not fatal: the reader keeps reading to the real end,
storing nothing more, and the session refuses the message there (552).  A
line is what ends in LF (a bare LF too, under normalize and no); its length
does not count the LF or a CR right before it.

SECURITY
    Everything here is untrusted network input.

CONFIGURATION
    line_length_limit (per line, CRLF excluded), message_size_limit,
    smtpd_forbid_bare_newline.

DEVIATIONS
    Postfix splits an over-long line into pieces; mta refuses the message.
    Postfix's "no" lets a bare LF end DATA (".\\n"); mta never does: only
    CRLF "." CRLF ends DATA in every mode.  Postfix's "yes" is an alias of
    normalize (3.9); mta's is reject (its 3.8.4 meaning).  Postfix delays
    a bare-newline reject to the end of the message; mta replies and
    disconnects at once.  Postfix keeps a bare CR in content under reject;
    mta rejects it too.  Postfix has no BINARYMIME and checks all BDAT
    content for bare newlines; mta exempts BODY=BINARYMIME content, which
    has no lines (RFC 3030), and checks all other BDAT content as Postfix
    does.
"""

import re

BARE_NEWLINE = "bare newline"
LINE_TOO_LONG = "line too long"
TOO_BIG = "too big"

END_OF_DATA = b"\r\n.\r\n"

_BARE_LF = re.compile(rb"(?<!\r)\n")


class ContentReader:
    """
    C{write(bytes)} takes content as it arrives (for DATA: still
    dot-stuffed, without the end sequence); C{close()} ends it.
    C{sink(bytes)} receives the checked content, in order, until the first
    error.  After each call: C{fatal} is BARE_NEWLINE if the session must
    reply and disconnect now; C{error} is the first non-fatal error
    (LINE_TOO_LONG or TOO_BIG), for the reply at the end of the content.
    """

    def __init__(self, sink, lineLimit, sizeLimit, bareNewline="reject", unstuff=False, binary=False):
        self._sink = sink
        self._lineLimit = lineLimit
        self._sizeLimit = sizeLimit
        self._reject = bareNewline in ("reject", "yes")
        self._normalize = bareNewline == "normalize"
        self._unstuff = unstuff
        self._binary = binary
        self._partial = b""  # the unfinished last line, at most lineLimit + 2 bytes
        self._lineStart = True  # the partial line starts a line (for dot-unstuffing)
        self._discarding = False  # the partial line is the tail of an over-long line
        self.error = None
        self.fatal = None
        self.size = 0  # content bytes after unstuffing and normalizing
        self.received = 0  # bytes written

    def _fail(self, reason):
        if self.error is None:
            self.error = reason

    def write(self, data):
        if self.fatal is not None or not data:
            return
        self.received += len(data)
        if self._binary:
            self._store(data)
            return
        buf = self._partial + data if self._partial else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            rest = buf
        else:
            rest = buf[cut + 1 :]
            if not self._lines(buf[: cut + 1]):
                return
        # A CR inside the unfinished line is bare; one at its end may be half a CRLF.
        if self._reject and b"\r" in rest[:-1]:
            self._fatal()
            return
        if len(rest) > self._lineLimit + 1:
            # An endless line: keep only its last byte (it may be the CR of CRLF).
            self._fail(LINE_TOO_LONG)
            self._discarding = True
            rest = rest[-1:]
        elif self._sizeLimit:
            # The unfinished line counts already (a BDAT chunk's reply depends on it).
            pending = len(rest) - (self._unstuff and self._lineStart and rest[:1] == b".")
            if self.size + pending > self._sizeLimit:
                self._fail(TOO_BIG)
        self._partial = rest

    def close(self):
        """The end of the content: the unfinished last line (BDAT only) is judged and stored."""
        rest, self._partial = self._partial, b""
        if self.fatal is not None or not rest or self._discarding:
            return
        if rest.endswith(b"\r") and self._reject:
            self._fatal()
            return
        if len(rest) - rest.endswith(b"\r") > self._lineLimit:
            self._fail(LINE_TOO_LONG)
        if self._unstuff and self._lineStart and rest[:1] == b".":
            rest = rest[1:]
        self._store(rest)

    def _fatal(self):
        self.fatal = BARE_NEWLINE
        self._partial = b""

    def _lines(self, block):
        """Check and store complete lines (C{block} ends in LF); False if fatal."""
        lineStart = self._lineStart
        if self._discarding:
            # The first line ends a too-long line: check its line end, drop it.
            cut = block.find(b"\n") + 1
            tail, block = block[:cut], block[cut:]
            if self._reject and (b"\r" in tail[:-2] or tail[-2:] != b"\r\n"):
                self._fatal()
                return False
            lineStart = tail[-2:] == b"\r\n" or self._normalize
            self._discarding = False
            if not block:
                self._lineStart = lineStart
                return True
        crlf = block.count(b"\r\n")
        if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
            if self._reject:
                self._fatal()
                return False
            if self._normalize:
                block = _BARE_LF.sub(b"\r\n", block)
        if len(block) > self._lineLimit + 1 and self._tooLong(block):
            self._fail(LINE_TOO_LONG)
        # Under "no" a bare LF is data: the line after it does not start a line.
        self._lineStart = block[-2:] == b"\r\n"
        if self._unstuff and ((lineStart and block[:1] == b".") or b"\r\n." in block):
            head = b"\r\n" if lineStart else b"\n"
            block = (head + block).replace(b"\r\n.", b"\r\n")[len(head) :]
        self._store(block)
        return True

    def _tooLong(self, block):
        """A line with more than lineLimit octets before its LF (a CR right before it not counted)?"""
        limit = self._lineLimit
        lines = block.split(b"\n")  # 20 times faster than a regular expression over long blocks
        longest = max(map(len, lines))
        if longest == limit + 1:
            return any(len(line) == limit + 1 and line[-1:] != b"\r" for line in lines)
        return longest > limit + 1

    def _store(self, block):
        self.size += len(block)
        if self._sizeLimit and self.size > self._sizeLimit:
            self._fail(TOO_BIG)
        if self.error is None and block:
            self._sink(block)


def _heldBack(buf):
    """How many bytes at the end of C{buf} may begin the end of data (CR LF "." CR)."""
    for k in (4, 3, 2, 1):
        if buf.endswith(END_OF_DATA[:k]):
            return k
    return 0


class DataReader:
    """
    Feed it the bytes after the 354 reply.  feed() returns the number of
    bytes it consumed up to and including the end-of-data line, or None
    while more is needed (all of C{data} is then consumed).  C{done} is set
    at the end of data, and only there.  After every feed(), C{fatal} set
    means reply and disconnect now; at the end, C{error} (fatal or not)
    says what went wrong, if anything: one of the module constants.
    C{content} is the ContentReader behind it.
    """

    def __init__(self, sink, lineLimit, sizeLimit, bareNewline="reject"):
        self.content = ContentReader(sink, lineLimit, sizeLimit, bareNewline, unstuff=True)
        # The 354 reply ends a line: these two bytes are not content.
        self._held = b"\r\n"
        self._virtual = 2
        self.done = False
        self.received = 0

    @property
    def fatal(self):
        return self.content.fatal

    @property
    def error(self):
        return self.content.fatal or self.content.error

    def feed(self, data):
        held = self._held
        buf = held + data
        end = buf.find(END_OF_DATA)
        if end >= 0:
            self._pass(buf, end + 2)  # the content ends with the CRLF before "."
            self._held = b""
            self.done = True
            consumed = end + 5 - len(held)
            self.received += consumed
            self.content.close()
            return consumed
        cut = len(buf) - _heldBack(buf)
        self._pass(buf, cut)
        self._held = buf[cut:]
        self.received += len(data)
        return None

    def _pass(self, buf, upto):
        if upto > self._virtual:
            self.content.write(buf[self._virtual : upto])
        self._virtual = max(0, self._virtual - upto)
