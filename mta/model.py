"""mta.model - frozen value types shared by the server, queue and transports; the queue file's error.

The queue's two errors are here, below every module that meets them, so
that none of them depends on another (or on mta.queue) for them:
CorruptQueueFile (mta.queue.fileformat raises it, pickup and the queue
manager set such a file aside, mta.bounce leaves the original out of a
notice when it cannot be read) and QueueWriteError (the store, the one
writer and mta.cleanup raise it; every entrance turns it into a 4xx, a
retry or a log line).

Address, Reply, Recipient, Envelope, DeliveryRecipient, DeliveryRequest and
RecipientResult, and the RFC 5321 text of an Address (formatAddress(): the
local part quoted when it is not a dot-atom).  This module sits below
everything else of mta but the configuration: it imports nothing of mta, so
mta.address (the parser of paths, which makes Address values) and every
other module can use it.

SECURITY
    Values here are already parsed; whatever built them checked the input.
    formatAddress refuses (ValueError) an Address that holds a control
    character, so a damaged queue file cannot make the SMTP client send one.

CONFIGURATION
    None.
"""

import unicodedata

import attrs

# RFC 5321 atext; the characters of a dot-atom local part besides ".".
ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
# The format characters IDNA and RFC 6531 allow in an address (ZWNJ, ZWJ).
JOINERS = frozenset("\u200c\u200d")


def isControl(c: str) -> bool:
    """C0, DEL and C1 controls."""
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F


def isBadUnicode(c: str) -> bool:
    """Non-ASCII characters never allowed in an address, even with SMTPUTF8:
    controls, surrogates (undecodable input), line/paragraph separators,
    non-ASCII spaces and format characters other than the joiners."""
    cat = unicodedata.category(c)
    if cat in ("Cc", "Cs", "Zl", "Zp", "Zs"):
        return True
    return cat == "Cf" and c not in JOINERS


def isDotAtom(local: str) -> bool:
    """Is C{local} an RFC 5321 dot-atom (UTF-8 allowed), needing no quotes?"""
    if not local or local.startswith(".") or local.endswith(".") or ".." in local:
        return False
    return all(c in ATEXT or c == "." or (ord(c) > 0x7F and not isBadUnicode(c)) for c in local)


def formatAddress(address) -> str:
    """
    The RFC 5321 text of C{address} (an Address; without angle brackets):
    the local part quoted when it is not a dot-atom (``"`` and ``\\``
    escaped), ``@domain`` unless the domain is empty; "" for the null sender.

    @raise ValueError: the address holds a control character (it could
        only come from a damaged source; it must never reach the wire).
    """
    if address.isNull:
        return ""
    local, domain = address.local, address.domain
    for c in local + domain:
        if isControl(c):
            raise ValueError("control character in address")
    if not isDotAtom(local):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{local}@{domain}" if domain else local


@attrs.frozen
class Reply:
    """An SMTP reply: code, enhanced status (may be empty) and text lines."""

    code: int
    status: str
    text: str

    def lines(self):
        """The reply as wire lines (bytes, CRLF-terminated), multi-line aware."""
        parts = self.text.split("\n") if self.text else [""]
        out = []
        for i, part in enumerate(parts):
            sep = " " if i == len(parts) - 1 else "-"
            body = f"{self.status} {part}" if self.status else part
            out.append(f"{self.code}{sep}{body}".rstrip(" ").encode("utf-8", "replace") + b"\r\n")
        return b"".join(out)

    def __str__(self):
        return f"{self.code} {self.status} {self.text}".replace("  ", " ").strip()


@attrs.frozen
class Address:
    """
    A mailbox from an SMTP path.  C{local} is the local part unquoted
    (``john smith`` for ``"john smith"@example.org``); C{domain} is lower
    case, a domain literal keeps its brackets; both empty is the null
    sender.  str() gives the RFC 5321 form, quoting the local part when it
    needs quotes.
    """

    local: str
    domain: str

    @property
    def isNull(self):
        return not self.local and not self.domain

    def __str__(self):
        return formatAddress(self)


NULL_SENDER = Address("", "")


@attrs.frozen
class Recipient:
    """An envelope recipient with its DSN parameters (RFC 3461)."""

    address: str
    orcpt: str | None = None  # "addr-type;address", xtext-decoded
    notify: tuple = ()  # () = not given; ("NEVER",) or a subset of SUCCESS, FAILURE, DELAY


@attrs.frozen
class Envelope:
    """What the queue keeps beside the message content."""

    sender: str
    recipients: tuple
    arrival_time: float
    client_name: str = "unknown"
    client_address: str = ""
    client_port: int = 0
    helo: str = ""
    protocol: str = "SMTP"  # SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, LMTP, local
    body: str = "7BIT"  # 7BIT, 8BITMIME or BINARYMIME
    smtputf8: bool = False
    ret: str | None = None  # FULL or HDRS
    envid: str | None = None  # xtext-decoded
    size: int = 0  # bytes of content as queued
    # The SMTP AUTH login (mta.smtpd.auth), for later policy and content filters; None without one.
    sasl_method: str | None = None  # PLAIN, LOGIN, ...
    sasl_username: str | None = None
    sasl_sender: str | None = None  # MAIL FROM's AUTH= (RFC 4954 5), xtext-decoded
    # RFC 8689: MAIL FROM's REQUIRETLS (taken only over TLS), and a "TLS-Required: No" header.
    requiretls: bool = False
    tls_required_no: bool = False
    # An address verification probe (mta.verify): delivered up to RCPT only, its result recorded in the
    # verify cache instead of a delivery or a bounce (Postfix's DEL_REQ_FLAG_MTA_VRFY).
    probe: bool = False


@attrs.frozen
class DeliveryRecipient:
    """One recipient of a DeliveryRequest."""

    index: int  # position in the envelope's recipients: the key of its queue state
    address: str  # where to deliver, after alias rewriting
    original: str  # the envelope recipient as received
    orcpt: str | None = None  # RFC 3461 ORCPT, "addr-type;address"
    notify: tuple = ()


@attrs.frozen
class DeliveryRequest:
    """
    What the queue manager asks a transport to deliver: one message, to
    some of its recipients, all for one (transport, nexthop).  The content
    is C{content_length} bytes at C{content_offset} in the queue file
    C{path}; read it with mta.queue.fileformat.readContent (blocking: in a
    thread) and never write to that file.  C{content}: the same bytes,
    when the queue manager read the (small) file whole; None otherwise.
    """

    queue_id: str
    transport: str
    nexthop: str
    envelope: Envelope
    recipients: tuple  # of DeliveryRecipient
    path: str
    content_offset: int
    content_length: int
    content: bytes | None = attrs.field(default=None, repr=False)


@attrs.frozen
class RecipientResult:
    """
    A transport's answer for one recipient: C{status} is "sent",
    "deferred" or "bounced" (a 2xx, 4xx or 5xx in SMTP terms), C{dsn} the
    enhanced status code, C{text} the human text for logs and DSNs (e.g.
    "250 2.0.0 Ok: queued as 4Tb..." or "delivered to maildir").
    """

    index: int
    status: str
    dsn: str
    text: str
    relay: str = "none"  # for the log: "virtual", "mx.example.net[192.0.2.1]:25"
    diagnostic: str | None = None  # RFC 3464 Diagnostic-Code, e.g. "smtp; 550 5.1.1 <x>: unknown"
    remote_mta: str | None = None  # RFC 3464 Remote-MTA, e.g. "dns; mx.example.net"
    conn_use: int = 0  # the connection's use count when it came from the connection cache (logged)
    # For a "sent" result: the DSN action of our success notice ("relayed",
    # "delivered"), or "none" when the next hop took NOTIFY and reports itself.
    success_action: str | None = None


class CorruptQueueFile(Exception):
    """A queue file is damaged; str() says how."""


class QueueWriteError(Exception):
    """A message could not be stored; str() says why (for the log, not the client)."""
