"""mta.bounce.fields - text made safe for a notice's header and DSN field lines, and the email policy that folds them.

clean() makes a value safe for one header or DSN field line (controls,
line and paragraph separators to spaces, surrogates and, in an ASCII
notice, non-ASCII to "?", at most VALUE_LIMIT octets); a Raw value is
stored by NoticePolicy as it is and folded at spaces only (the stock policy
would make long tokens into RFC 2047 encoded-words, which DSN fields may
not hold); NoticeGenerator copies message/* payloads byte for byte.

SECURITY
    Every header and DSN field value of a notice passes clean(): nothing
    can start a header line or a MIME part and no line passes 998 octets.

CONFIGURATION
    None.
"""

import email.generator
import email.policy
import unicodedata


# A DSN field value or header value is cut at this many octets, so that no
# line of the notice can exceed RFC 5322's 998 (name + value + folding).
VALUE_LIMIT = 900
# RFC 5322 2.1.1: a line is at most 998 octets without its CRLF.
MAX_LINE = 998


def clean(text, utf8, limit=VALUE_LIMIT):
    """
    C{text} made safe for one header or DSN field line: controls, line and
    paragraph separators become spaces, surrogates (and non-ASCII in an
    ASCII notice) "?", leading/trailing space stripped, at most C{limit}
    octets.
    """
    out = []
    for c in str(text):
        if c.isascii():
            out.append(" " if (c < " " or c == "\x7f") else c)
            continue
        cat = unicodedata.category(c)
        if cat in ("Cc", "Zl", "Zp"):
            out.append(" ")
        elif cat == "Cs" or not utf8:
            out.append("?")
        else:
            out.append(c)
    cleaned = "".join(out).strip(" ")
    if len(cleaned.encode("utf-8")) > limit:
        cleaned = cleaned.encode("utf-8")[:limit].decode("utf-8", "ignore").rstrip(" ")
    return cleaned


def textClean(text, utf8):
    """Like clean, for the human-readable text (white space collapsed)."""
    return " ".join(clean(text, utf8, limit=4 * VALUE_LIMIT).split())


class Raw(str):
    """A header value already made safe by clean(); folded at spaces only."""


def foldRaw(name, value, maxlen, linesep):
    """C{name}: C{value} folded before spaces; a longer word is never split."""
    line = f"{name}: {value}"
    lines = []
    start = len(name) + 2
    while len(line) > maxlen:
        cut = line.rfind(" ", start, maxlen + 1)
        if cut == -1:
            cut = line.find(" ", maxlen + 1)
        # Never leave a line (or the rest) that is nothing but white space.
        while cut != -1 and not line[cut:].strip(" "):
            cut = -1
        if cut == -1 or not line[:cut].strip(" "):
            break
        lines.append(line[:cut])
        line = line[cut:]
        start = 1
    lines.append(line)
    return linesep.join(lines) + linesep


class NoticePolicy(email.policy.EmailPolicy):
    """
    The email package's SMTP policy, except that Raw values (DSN fields,
    addresses) are stored as they are and folded at spaces only.
    """

    def header_store_parse(self, name, value):
        if isinstance(value, Raw):
            return (name, value)
        return super().header_store_parse(name, value)

    def fold(self, name, value):
        if isinstance(value, Raw):
            return foldRaw(name, value, self.max_line_length or MAX_LINE, self.linesep)
        return super().fold(name, value)

    def fold_binary(self, name, value):
        if isinstance(value, Raw):
            return self.fold(name, value).encode("utf-8" if self.utf8 else "ascii")
        return super().fold_binary(name, value)


class NoticeGenerator(email.generator.BytesGenerator):
    """BytesGenerator that copies a message/* part's text payload byte for
    byte (surrogate-escaped 8-bit octets included) and writes
    message/global-delivery-status blocks like message/delivery-status."""

    def _encode(self, s):
        return s.encode("ascii", "surrogateescape")

    _handle_message_global_delivery_status = email.generator.BytesGenerator._handle_message_delivery_status
