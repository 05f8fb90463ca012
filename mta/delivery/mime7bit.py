"""mta.delivery.mime7bit - 8-bit MIME to 7-bit, for servers without 8BITMIME.

smtp(8) converts 8-bit MIME content to 7-bit when the next hop does not
announce 8BITMIME (unless disable_mime_output_conversion = yes): every
leaf part whose Content-Transfer-Encoding is 8bit (or absent, or binary)
and whose body holds 8-bit bytes is re-encoded as quoted-printable, and
multipart containers marked 8bit are relabelled 7bit.  As in Postfix, a
message without MIME-Version is sent as it is (its character set is
unknown), and headers are not touched.  Built on the stdlib email package.

SECURITY
    The content is untrusted; the email package parses it (a damaged MIME
    structure is converted as far as it parses; nothing is executed).  The
    whole message is held in memory, bounded by message_size_limit.

CONFIGURATION
    disable_mime_output_conversion (no).
"""

import email
import email.policy
import quopri

_POLICY = email.policy.compat32.clone(linesep="\r\n")
_EIGHT = ("8bit", "binary", "")


def needsConversion(content):
    """Does the message hold 8-bit bytes at all?"""
    return not content.isascii()


def to7bit(content):
    """
    The message C{content} (bytes, CRLF) converted to 7-bit MIME, or the
    content unchanged when it is not MIME or has nothing to convert.
    """
    if not needsConversion(content):
        return content
    message = email.message_from_bytes(content.replace(b"\r\n", b"\n"), policy=email.policy.compat32)
    if message.get("MIME-Version") is None:
        return content
    changed = False
    for part in message.walk():
        cte = (part.get("Content-Transfer-Encoding") or "").strip().lower()
        if part.is_multipart():
            if cte in ("8bit", "binary"):
                part.replace_header("Content-Transfer-Encoding", "7bit")
                changed = True
            continue
        if cte not in _EIGHT:
            continue  # quoted-printable, base64 or 7bit: already 7-bit
        raw = part.get_payload(decode=True) or b""
        if raw.isascii():
            continue
        encoded = quopri.encodestring(raw).decode("ascii")
        part.set_payload(encoded)
        if "Content-Transfer-Encoding" in part:
            part.replace_header("Content-Transfer-Encoding", "quoted-printable")
        else:
            part["Content-Transfer-Encoding"] = "quoted-printable"
        changed = True
    if not changed:
        return content
    return message.as_bytes(policy=_POLICY)
