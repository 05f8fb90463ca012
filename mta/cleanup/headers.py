"""mta.cleanup.headers - the header work of Postfix's cleanup(8), as a streaming filter.

NAME
    HeaderCleanup - hop count, dropped headers, address rewriting and missing
    headers, on the way in

SYNOPSIS
    cleanup = HeaderCleanup(message.write, hopLimit=50, dropHeaders=DROP, addMissing=False,
                            hostname=myhostname, queueId=queueId, now=clock.seconds(),
                            rewrite=context)   # an mta.rewrite.RewriteContext, or None
    cleanup.write(block)      # DATA: blocks of whole lines; BDAT: chunks, any boundaries
    cleanup.close()           # end of content
    cleanup.error             # "too many hops" or None: answer 554 5.4.0 if set
    cleanup.added             # ("Message-Id", "Date") etc., for the mail log
    cleanup.notRewritten      # address headers left alone past the budget: log it

DESCRIPTION
    Sits between an entrance (the server's DATA/BDAT reader, pickup's
    maildrop reader, a notice) and the queue file, after mta.cleanup has
    written the entrance's Received: header.  It examines the primary header
    section only, one logical header (first line plus continuation lines) at
    a time, and writes every header out as soon as it is complete; the body
    goes to the sink unchanged and uncopied, in the caller's own blocks.
    What it does, and where Postfix does the same:

    Received: headers are counted (cleanup_message.c), case-insensitively,
    together with the server's own (priorHops, 1 by default: Postfix's smtpd
    passes its Received: header through cleanup, which counts it).  When the
    count reaches hopcount_limit ("hop_count >= var_hopcount_limit") C{error}
    becomes "too many hops"; the filter keeps consuming, and the server
    answers the end of data with "554 5.4.0 Error: too many hops" (Postfix's
    reply; cleanup_strerror.c maps CLEANUP_STAT_HOPS to 554 5.4.0).  So with
    the default 50 a message may arrive with at most 48 Received: headers.
    Delivered-To: is not counted: Postfix finds Delivered-To loops at
    delivery (local(8), virtual(8)), not here.

    Headers named in message_drop_headers are removed with their
    continuation lines (header_opts.c marks them HDR_OPT_DROP; they still
    count as seen, and Resent-Bcc: still selects Resent- headers below).

    With a rewriting context (the caller's choice: the local one for mail
    from a client that matches local_header_rewrite_clients, default
    permit_inet_interfaces, and for mail from mta-sendmail; the remote one
    for other clients when remote_header_rewrite_domain is set; else none),
    the address headers (From, To, Cc, Sender, Reply-To, the Resent- ones
    and the others of mta.rewrite.ADDRESS_HEADERS) have their incomplete
    addresses completed by mta.rewrite: "To: root" becomes "To:
    root@$myorigin" (append_at_myorigin), user@host may become
    user@host.$mydomain (append_dot_mydomain), source routes and trailing
    dots go, as Postfix's cleanup_rewrite_sender()/_recip() do.  A header
    whose addresses need no change, and every other header, is passed on
    byte for byte; a changed one keeps its phrases, comments and folding.
    Rewriting may add at most REWRITE_GROWTH (10) times header_size_limit
    bytes to one message; past that, address headers are left as they are
    and counted in notRewritten (see mta.rewrite, DEVIATIONS).  A header
    that cannot be parsed, or an unexpected error in the rewriting, leaves
    the header as it came.

    At the end of the header section, with addMissing (Postfix adds them when
    always_add_missing_headers = yes, or when there is a rewriting context:
    the client is local, or remote_header_rewrite_domain is set), it
    appends, after the existing headers, in this order:
        Message-Id: <queueId@hostname>      (enable_long_queue_ids = yes, the
                                             only kind of queue id here), or
        Message-Id: <YYYYmmddHHMMSS.queueId@hostname> (UTC; longQueueIds=False)
        Date: Sat, 21 Nov 2026 08:58:25 +0100 (CET)   (arrival time, local
                                             time, day padded with a space)
        From: sender, or MAILER-DAEMON for the null sender (only when the
                                             caller passes sender)
        the undisclosed_recipients_header text when there is no To:, Cc:,
                                             Resent-To: or Resent-Cc:
    each only when missing, and nothing to a message with too many hops.
    Once any Resent- header (Resent-Bcc, -Cc, -Date, -From, -Message-Id,
    -Reply-To, -Sender, -To) has been seen, Resent-Message-Id:, Resent-Date:
    and Resent-From: are checked and added instead
    (cleanup_header_done_callback).

    header_size_limit bounds one logical header, not the header section: text
    beyond it is discarded and the header ends there (mime_state.c: a
    continuation is appended only while the header is shorter than the
    limit; smtpd hands over long lines in pieces of line_length_limit, 2048
    bytes, and each piece is judged alone).  Old Postfix, before the MIME
    parser of 2.0, started the body there instead; current Postfix (and this
    filter) go on reading headers.

    The header section ends at the first line that is not a header ("name:"
    or the obsolete "name :", a name of printable ASCII without ":") nor a
    continuation (a line starting with space or tab) - normally the empty
    line.  A header section that ends in a non-empty line gets an empty line
    inserted before it, as the newest Postfix source does by default
    (cleanup_non_empty_eoh_action, "fix quietly"); older releases leave it
    out (fixEndOfHeaders=False).  Either way the rest is body and is
    not examined, so a "Bcc:" after a malformed line is body text, and the
    inserted line makes every later reader agree.

    Two fixes that Postfix makes in smtpd(8), because its own Received:
    header comes first: "From " lines (also ">From ") at the very start of
    the content become "X-Mailbox-Line: From ..." headers, and content whose
    first line starts with white space gets an empty line in front, so that
    it is body text and not a continuation of the server's Received: header.
    The obsolete "name :" is written as "name:", as Postfix does.

    A header line that arrives without a line end at the end of the content
    (BDAT) gets CRLF; body bytes are never changed.

SECURITY
    Everything passed to write() is untrusted network input.  Memory held
    between writes is bounded by header_size_limit plus two pieces of 2048
    bytes, whatever the chunking: a line without an end is judged after 2048
    bytes, and a header stops growing at the limit.  Work is linear: every
    byte of the header section is searched for its line end once and copied
    a bounded number of times; the body is handed on without being looked
    at.  Header names are
    matched case-insensitively as bytes; 8-bit bytes in a header value are
    kept; a name with 8-bit or control bytes is not a header (it starts the
    body, as in Postfix).  The sender given for From: has CR, LF and NUL
    removed.  Address headers are parsed once more by mta.addrlist (linear,
    at most 10240 tokens); rewriting adds a bounded number of bytes.

CONFIGURATION
    hopcount_limit (default 50)
        Received: headers, the server's own included, that make a mail loop.
    message_drop_headers (default "bcc, content-length, resent-bcc,
    return-path", Postfix 3.0 and later)
        Headers removed from incoming mail.
    always_add_missing_headers (default no), local_header_rewrite_clients
    (default permit_inet_interfaces), remote_header_rewrite_domain (default
    empty)
        Together decide addMissing and the rewriting context (mta.cleanup
        computes them from the message's origin).
    append_at_myorigin (yes), append_dot_mydomain (no), myorigin, mydomain
        How addresses are completed (mta.rewrite).
    header_size_limit (default 102400)
        The most bytes kept of one logical header; ten times as many bytes
        may be added to one message by rewriting.
    undisclosed_recipients_header (default empty since Postfix 2.8)
        The To: header added to mail without To: or Cc:, when addMissing.
    myhostname
        The domain part of a generated Message-Id.
"""

import re
import time

from twisted.logger import Logger

from mta.rewrite import ADDRESS_HEADERS

log = Logger()

TOO_MANY_HOPS = "too many hops"

PIECE = 2048
"""Postfix's line_length_limit default: smtpd gives cleanup a long line in pieces of
this size, and cleanup decides on each piece alone whether it still fits the header."""

REWRITE_GROWTH = 10
"""Header rewriting adds at most this many times header_size_limit bytes to one message."""

_HEADER = re.compile(rb"([\x21-\x39\x3b-\x7e]+)([ \t]*):")
_FROM_LINE = re.compile(rb">*From ")
_WSP = (b" ", b"\t")
_RESENT = frozenset(
    (b"resent-bcc", b"resent-cc", b"resent-date", b"resent-from", b"resent-message-id",
     b"resent-reply-to", b"resent-sender", b"resent-to")
)
_VISIBLE_RCPT = frozenset((b"to", b"cc", b"resent-to", b"resent-cc"))
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_UNSAFE = re.compile(r"[\r\n\x00]")

_HEADERS, _BODY, _CLOSED = "headers", "body", "closed"


def mailDate(when):
    """
    The date as Postfix's mail_date() writes it: local time, day of month
    padded with a space (strftime %e), numeric offset and the zone's name.
    """
    lt = time.localtime(when)
    offset = lt.tm_gmtoff
    if offset is None:  # pragma: no cover - every platform we run on has tm_gmtoff
        import calendar

        offset = calendar.timegm(lt) - int(when)
    sign = "+" if offset >= 0 else "-"
    minutes = abs(offset) // 60
    zone = f" ({lt.tm_zone})" if lt.tm_zone else ""
    return (
        f"{_DAYS[lt.tm_wday]}, {lt.tm_mday:2d} {_MONTHS[lt.tm_mon - 1]} {lt.tm_year:04d} "
        f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}{zone}"
    )


def notRewrittenWarning(count):
    """The mail-log text for C{count} address headers left alone once the rewriting budget was spent."""
    return (f"warning: {count} address headers not rewritten: rewriting would add more than "
            f"{REWRITE_GROWTH} times header_size_limit bytes")


def messageId(queueId, hostname, now, longQueueIds=True):
    """Postfix's Message-Id value (without the angle brackets)."""
    if longQueueIds:
        return f"{queueId}@{hostname}"
    return f"{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}.{queueId}@{hostname}"


def _splitEnd(line):
    """(content, line end) of one line; the end is CRLF, a bare LF (BDAT) or nothing."""
    if line.endswith(b"\r\n"):
        return line[:-2], b"\r\n"
    if line.endswith(b"\n"):
        return line[:-1], b"\n"
    return line, b""


def _name(text):
    return text.strip().lower().encode("ascii", "replace")


class HeaderCleanup:
    """
    A streaming filter: write() content, close() at its end; C{sink(bytes)}
    receives the cleaned content.

    C{hops} is the number of Received: headers, the server's own
    (C{priorHops}) included, as Postfix counts them; C{error} is "too many
    hops" once C{hops} >= C{hopLimit}.  C{added} names the headers added;
    C{messageId} is the first Message-Id value seen or the one added (for
    the "message-id=" log line), else None; C{truncated} says whether a
    header was cut at C{headerSizeLimit}.
    """

    def __init__(
        self,
        sink,
        *,
        hopLimit: int,
        dropHeaders: frozenset,
        addMissing: bool,
        hostname: str,
        queueId: str,
        now: float,
        headerSizeLimit: int = 102400,
        priorHops: int = 1,
        sender: "str | None" = None,
        undisclosedRecipients: str = "",
        longQueueIds: bool = True,
        fixEndOfHeaders: bool = True,
        rewrite=None,
        rewriteLimit: "int | None" = None,
    ):
        self._sink = sink
        self._hopLimit = hopLimit
        self._drop = frozenset(_name(n) for n in dropHeaders)
        self._addMissing = addMissing
        self._hostname = hostname
        self._queueId = queueId
        self._now = now
        self._limit = headerSizeLimit
        self._sender = None if sender is None else _UNSAFE.sub("", sender)
        self._undisclosed = undisclosedRecipients.strip()
        self._longQueueIds = longQueueIds
        self._fixEnd = fixEndOfHeaders
        self._rewrite = rewrite  # an mta.rewrite.RewriteContext, or None: headers not rewritten
        # bytes that rewriting may still add to this message
        self._rewriteBudget = REWRITE_GROWTH * headerSizeLimit if rewriteLimit is None else rewriteLimit

        self.hops = priorHops
        self.error = TOO_MANY_HOPS if priorHops and priorHops >= hopLimit else None
        self.added = ()
        self.messageId = None
        self.tlsRequiredNo = False  # RFC 8689 5: a "TLS-Required: No" header (kept in the message)
        self.truncated = False
        self.rewritten = 0  # address headers changed by rewriting
        self.notRewritten = 0  # address headers left alone once the budget was spent
        self.work = 0  # bytes of header section searched for line ends (linear in its size)

        self._state = _HEADERS
        self._first = True  # no content line seen yet (smtpd's From_ and white-space fixes)
        self._out = bytearray()  # output not yet given to the sink
        self._partial = bytearray()  # the start of a line whose end has not arrived, < PIECE
        self._inLine = False  # a header line longer than PIECE is being read, not yet ended
        self._hdr = None  # the current logical header, or None
        self._hname = b""
        self._hlen = 0  # its length as Postfix counts it (lines joined by one newline)
        self._lineOff = 0  # bytes of the current physical line taken so far
        self._firstLine = False  # the current physical line is the header's first
        self._pieceOn = False  # the current piece of it is kept
        self._lineKept = False  # some of the current physical line is kept
        self._lineCut = False  # some of the current physical line is discarded
        self._seen = set()
        self._resent = False

    # -- input -------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._state is _BODY:
            if data:
                self._sink(data)
            return
        if self._state is _CLOSED:
            raise RuntimeError("HeaderCleanup: write() after close()")
        if not data:
            return
        if not isinstance(data, bytes):
            data = bytes(data)
        pos = self._headerSection(data)
        if self._out:
            self._sink(bytes(self._out))
            self._out.clear()
        if pos < len(data):
            self._sink(data[pos:] if pos else data)

    def close(self) -> None:
        if self._state is _HEADERS:
            if self._inLine:
                self._endLine(b"")
            elif self._partial:
                line = bytes(self._partial)
                self._partial.clear()
                self._line(line, True)
            if self._state is _HEADERS:
                self._endHeaders()
            if self._out:
                self._sink(bytes(self._out))
                self._out.clear()
        self._state = _CLOSED

    # -- the header section --------------------------------------------------------

    def _headerSection(self, data):
        """Consume header lines from C{data}; the index where the body starts, or len(data)."""
        pos, n = 0, len(data)
        while pos < n and self._state is _HEADERS:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            self.work += end - pos
            if self._inLine:  # more of a long header line
                content, eol = _splitEnd(data[pos:end]) if nl >= 0 else (data[pos:end], b"")
                self._take(content)
                if nl >= 0:
                    self._endLine(eol)
                pos = end
            elif nl < 0:  # an unfinished line: hold it, up to one piece
                self._partial += data[pos:]
                pos = n
                if len(self._partial) > PIECE:
                    line = bytes(self._partial)
                    self._partial.clear()
                    self._line(line, False)
            else:
                if self._partial:
                    self._partial += data[pos:end]
                    line = bytes(self._partial)
                    self._partial.clear()
                else:
                    line = data[pos:end]
                pos = end
                self._line(line, True)
        return pos

    def _line(self, line, complete):
        """Classify a line (whole, or its first piece and more when not C{complete})."""
        content, eol = _splitEnd(line) if complete else (line, b"")
        head = content[:PIECE]
        if self._first:
            if _FROM_LINE.match(head):  # smtpd: a Unix From_ line heading the content
                self._flush()
                self._begin(b"x-mailbox-line", b"X-Mailbox-Line: " + content)
                self._lineDone(eol, complete)
                return
            self._first = False
            if head[:1] in _WSP:  # smtpd: not a continuation of our Received: header
                self._endHeaders()
                self._out += b"\r\n"
                self._toBody(line)
                return
        if self._hdr is not None and head[:1] in _WSP:
            self._newLine()
            self._take(content)
            self._lineDone(eol, complete)
            return
        m = _HEADER.match(head)
        if m:
            self._flush()
            if m.group(2):  # obsolete "name :" becomes "name:"
                content = m.group(1) + content[m.end(2):]
            self._begin(m.group(1).lower(), content)
            self._lineDone(eol, complete)
            return
        self._endHeaders()
        if content and self._fixEnd:
            self._out += b"\r\n"
        self._toBody(line)

    def _toBody(self, line):
        self._out += line
        self._state = _BODY

    def _begin(self, name, content):
        self._hdr = bytearray()
        self._hname = name
        self._hlen = 0
        self._lineOff = 0
        self._firstLine = True
        self._lineKept = self._lineCut = False
        self._take(content)

    def _newLine(self):
        self._lineOff = 0
        self._firstLine = False
        self._lineKept = self._lineCut = False

    def _take(self, content):
        """Add bytes of the current physical line to the header, piece by piece, as Postfix does."""
        i, n = 0, len(content)
        while i < n:
            inPiece = self._lineOff % PIECE
            if inPiece == 0:
                fresh = self._lineOff == 0
                self._pieceOn = (fresh and self._firstLine) or self._hlen < self._limit
                if fresh and self._pieceOn and not self._firstLine:
                    self._hlen += 1  # the newline that joins it to the line before
            take = min(PIECE - inPiece, n - i)
            if self._pieceOn:
                self._hdr += content[i:i + take]
                self._hlen += take
                self._lineKept = True
            else:
                self._lineCut = self.truncated = True
            i += take
            self._lineOff += take

    def _lineDone(self, eol, complete):
        if complete:
            self._endLine(eol)
        else:
            self._inLine = True

    def _endLine(self, eol):
        self._inLine = False
        if self._lineKept:
            if self._lineCut:
                if self._hdr.endswith(b"\r"):
                    del self._hdr[-1]
                self._hdr += b"\r\n"
            else:
                self._hdr += eol

    def _flush(self):
        """The current header is complete: count it, note it, write or drop it."""
        hdr = self._hdr
        if hdr is None:
            return
        self._hdr = None
        name = self._hname
        if not hdr.endswith(b"\n"):  # the content ended inside this header (BDAT)
            hdr += b"\n" if hdr.endswith(b"\r") else b"\r\n"
        if name == b"received":
            self.hops += 1
            if self.hops >= self._hopLimit:
                self.error = TOO_MANY_HOPS
        self._seen.add(name)
        if name in _RESENT:
            self._resent = True
        if name == b"tls-required":
            value = bytes(hdr[hdr.index(b":") + 1:])
            if b"".join(value.split()).lower() == b"no":
                self.tlsRequiredNo = True
        if name == b"message-id" and self.messageId is None:
            value = bytes(hdr[hdr.index(b":") + 1:])
            self.messageId = b" ".join(value.split()).decode("utf-8", "replace")[:998]
        if name not in self._drop:
            if self._rewrite is not None and name in ADDRESS_HEADERS:
                hdr = self._rewriteHeader(bytes(hdr))
            self._out += hdr

    def _rewriteHeader(self, hdr):
        """The address header C{hdr} rewritten in the context, within the budget."""
        try:
            new = self._rewrite.header(hdr)
        except Exception:  # a bug must not lose the message: the header stays as it came
            log.failure("cleanup: cannot rewrite a header")
            return hdr
        if new is hdr:
            return hdr
        growth = len(new) - len(hdr)
        if growth > self._rewriteBudget:
            self.notRewritten += 1
            return hdr
        self._rewriteBudget -= max(growth, 0)
        self.rewritten += 1
        return new

    def _endHeaders(self):
        """End of the header section: write the last header and add the missing ones."""
        self._flush()
        self._state = _BODY
        if not self._addMissing or self.error:  # Postfix adds nothing to mail it rejects
            return
        resent = self._resent
        prefix = "Resent-" if resent else ""
        added = []

        def add(name, value):
            self._out += f"{prefix}{name}: {value}\r\n".encode("utf-8", "replace")
            added.append(prefix + name)

        if (b"resent-message-id" if resent else b"message-id") not in self._seen:
            value = f"<{messageId(self._queueId, self._hostname, self._now, self._longQueueIds)}>"
            add("Message-Id", value)
            if not resent:
                self.messageId = value
        if (b"resent-date" if resent else b"date") not in self._seen:
            add("Date", mailDate(self._now))
        if self._sender is not None and (b"resent-from" if resent else b"from") not in self._seen:
            add("From", self._sender or "MAILER-DAEMON")
        if self._undisclosed and not (self._seen & _VISIBLE_RCPT):
            text = self._undisclosed.encode("utf-8", "replace")
            m = _HEADER.match(text)
            if m and not _UNSAFE.search(self._undisclosed):
                self._out += text + b"\r\n"
                added.append(m.group(1).decode("ascii"))
        self.added = tuple(added)
