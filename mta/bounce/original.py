"""mta.bounce.original - what a notice returns of the original message.

readOriginal(original, full, limit) reads, through the caller's
C{original} callable and only as far as needed, the whole message or its
header section: a message over bounce_size_limit, or with a line over 998
octets, is returned as headers only, so its MIME structure is never cut
(Postfix's bounce_original()); the header section is cut at a field
boundary at the limit.  Line ends become CRLF.  An original that cannot be
read (OSError, mta.model.CorruptQueueFile) gives None: the notice leaves
its third part out.

SECURITY
    The original is untrusted: it is copied byte for byte (line ends made
    CRLF), never interpreted but for finding the end of its header section;
    reading is bounded (its header section, or bounce_size_limit + 1
    bytes).

CONFIGURATION
    bounce_size_limit, passed in (limit; 0: none).
"""

import re

from mta.bounce.fields import MAX_LINE, clean
from mta.model import CorruptQueueFile


# RFC 822 field name followed by a colon (Postfix's is_header()).
HEADER_START = re.compile(rb"[!-9;-~]+[ \t]*:")
ANY_NEWLINE = re.compile(rb"\r\n|\r|\n")


def readOriginal(original, full, limit):
    """
    Read what is needed of the original: (bytes with CRLF line ends, full)
    where full says whether it is the whole message or only its header
    section; None when there is no original or it cannot be read.
    """
    if original is None:
        return None
    buf = bytearray()
    complete = True
    try:
        chunks = iter(original())
        try:
            for chunk in chunks:
                scanFrom = max(len(buf) - 2, 0)
                buf += chunk
                if full:
                    if limit > 0 and len(buf) > limit:
                        full = False  # too big: headers only (bounce_original)
                        scanFrom = 0
                    else:
                        continue
                if endOfHeaders(buf, scanFrom) or (limit > 0 and len(buf) > limit):
                    complete = False
                    break
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
    except (OSError, CorruptQueueFile):
        return None
    data = bytes(buf)
    if not complete:
        # Drop a partial last line (we stopped reading in the middle).
        data = data[: data.rfind(b"\n") + 1]
    data = ANY_NEWLINE.sub(b"\r\n", data)
    if full:
        if data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        if any(len(line) > MAX_LINE for line in data.split(b"\r\n")):
            full = False
        else:
            return data, True
    return headerSection(data, limit), False


def endOfHeaders(buf, start=0):
    """Whether C{buf} holds the empty line that ends the header section
    (looking only from C{start}: reading is linear, not quadratic)."""
    if buf.startswith(b"\r\n") or buf.startswith(b"\n"):
        return True
    return buf.find(b"\n\r\n", start) != -1 or buf.find(b"\n\n", start) != -1


def headerSection(data, limit):
    """The header fields at the start of C{data} (Postfix's IS_HEADER test),
    whole fields only, at most C{limit} octets when C{limit} > 0."""
    lines = data.split(b"\r\n")
    if lines and lines[-1] == b"":
        lines.pop()
    fields = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif HEADER_START.match(line):
            fields.append([line])
        else:
            break
    out, total = [], 0
    for field in fields:
        if any(len(line) > MAX_LINE for line in field):
            continue
        text = b"".join(line + b"\r\n" for line in field)
        if limit > 0 and total + len(text) > limit:
            break
        out.append(text)
        total += len(text)
    return b"".join(out)


def headerBytes(data):
    end = data.find(b"\r\n\r\n")
    return data if end == -1 else data[:end]


def returnPath(sender, utf8):
    return b"Return-Path: <" + clean(sender, utf8).encode("utf-8") + b">\r\n"
