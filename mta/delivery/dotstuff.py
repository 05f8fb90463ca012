"""mta.delivery.dotstuff - the SMTP client's DATA encoder (RFC 5321 4.5.2).

NAME
    DotStuffer - turn message content, fed in chunks of any size and with
    any boundaries, into the bytes that go on the wire after "354".

DESCRIPTION
    feed(chunk) returns the wire bytes for that chunk; finish() returns the
    rest, ending with the end-of-data line.  The encoder guarantees:

    * CRLF line ends only.  CRLF, a bare LF and a bare CR each end a line
      and each go out as CRLF (a CR at the end of a chunk is held back
      until the next chunk shows whether an LF follows).  A bare CR or LF
      never reaches the wire, so the encoder cannot be used to smuggle a
      second message past a server that treats them as line ends
      (CVE-2023-51764 and friends).
    * A "." at the start of any line is doubled.  The state "at the start
      of a line" is carried across chunks: a chunk that ends in CRLF and
      a next chunk that starts with "." still get the dot doubled.  (This
      is the bug in twisted.mail's client, which stuffs each 16 KiB chunk
      separately and so lets a "." line at a chunk boundary end the
      message early.)
    * finish() adds the CRLF that ends the last line when the content does
      not end with one, then ".<CR><LF>": the wire always ends with
      CRLF "." CRLF (just ".<CR><LF>" for empty content).
    * smtp_line_length_limit (Postfix's default 998; 0 disables it): a line
      longer than the limit is broken by inserting <CR><LF><SPACE> after
      every limit bytes, exactly as Postfix's smtp_text_out() does, in the
      headers and in the body alike ("to minimize the damage to MIME
      formatted mail").  As in Postfix the limit counts content bytes: a
      doubled dot is not counted, and the inserted space is.  A line of
      exactly the limit is left alone.

    Normal content is handled with bytes methods over the whole chunk
    (count, split, replace); only a chunk that holds an over-long line is
    walked line by line, and never byte by byte.

    C{normalized} becomes True once a bare CR or LF was rewritten and
    C{brokenLines} counts the inserted line breaks (for one log line, as
    Postfix's "breaking line > N bytes with <CR><LF>SPACE").

SECURITY
    The content comes from the queue file, i.e. from whoever submitted
    the message; anything at all may be in it.  Whatever it holds, the
    encoded stream ends exactly once, at the end.

CONFIGURATION
    smtp_line_length_limit (default 998), passed as C{lineLengthLimit}.
"""

import re

__all__ = ["DotStuffer", "encode"]

_EOL = re.compile(rb"\r\n|\r|\n")


class DotStuffer:
    """A streaming dot-stuffing, CRLF-normalising, line-breaking encoder."""

    def __init__(self, lineLengthLimit=998):
        if lineLengthLimit < 0 or lineLengthLimit == 1:
            raise ValueError("line length limit must be 0 (no limit) or at least 2")
        self._limit = lineLengthLimit
        self._col = 0  # content bytes on the current output line; 0 = at the start of a line
        self._cr = False  # a CR held back from the end of the previous chunk
        self._finished = False
        self.normalized = False
        self.brokenLines = 0

    def feed(self, data):
        """Encode C{data} (bytes); return the wire bytes it gives so far."""
        if self._finished:
            raise ValueError("feed() after finish()")
        if not data:
            return b""
        data = bytes(data)
        if self._cr:
            data = b"\r" + data
            self._cr = False
        if data[-1:] == b"\r":
            data = data[:-1]
            self._cr = True
            if not data:
                return b""
        crlf = data.count(b"\r\n")
        if crlf != data.count(b"\n") or crlf != data.count(b"\r"):
            data = _EOL.sub(b"\r\n", data)
            self.normalized = True
        return self._encode(data)

    def finish(self):
        """The end of the content: the last line end if missing, then "." CRLF."""
        if self._finished:
            raise ValueError("finish() called twice")
        self._finished = True
        if self._cr:
            self._cr = False
            self.normalized = True
            return b"\r\n.\r\n"
        return b"\r\n.\r\n" if self._col else b".\r\n"

    def _encode(self, data):
        """C{data} has CRLF line ends only; stuff dots and break long lines."""
        limit = self._limit
        col = self._col
        if limit and col + len(data) > limit:
            lines = data.split(b"\r\n")
            longest = max(col + len(lines[0]), max(map(len, lines[1:]), default=0))
            if longest > limit:
                return self._encodeLines(lines)
            newCol = len(lines[-1]) if len(lines) > 1 else col + len(data)
        else:
            end = data.rfind(b"\r\n")
            newCol = len(data) - end - 2 if end >= 0 else col + len(data)
        if col == 0 and data[:1] == b".":
            data = (b"\r\n" + data).replace(b"\r\n.", b"\r\n..")[2:]
        elif b"\r\n." in data:
            data = data.replace(b"\r\n.", b"\r\n..")
        self._col = newCol
        return data

    def _encodeLines(self, lines):
        """The slow path, for a chunk that holds a line over the limit."""
        limit = self._limit
        col = self._col
        out = []
        for i, line in enumerate(lines):
            if i:
                out.append(b"\r\n")
                col = 0
            if not line:
                continue
            if col == 0 and line[:1] == b".":
                out.append(b".")
            pos = 0
            size = len(line)
            while size - pos > limit - col:
                take = limit - col
                out.append(line[pos : pos + take])
                out.append(b"\r\n ")
                pos += take
                col = 1
                self.brokenLines += 1
            out.append(line[pos:])
            col += size - pos
        self._col = col
        return b"".join(out)


def encode(content, lineLengthLimit=998):
    """Encode a whole message at once (for tests and small messages)."""
    encoder = DotStuffer(lineLengthLimit)
    return encoder.feed(content) + encoder.finish()
