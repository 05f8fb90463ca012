"""mta.delivery.smtpclient - one SMTP or LMTP client session (the protocol half of smtp(8)/lmtp(8)).

NAME
    SMTPClientSession - deliver a DeliveryRequest over a connection that
    the caller has already made (TCP or UNIX); the caller picks the hosts,
    connects, tries the next host when told to, and caches connections.

SYNOPSIS
    settings = ClientSettings(heloName="mail.example.org")
    session = SMTPClientSession(settings, reactor)      # any IReactorTime
    ... connect it (endpoint.connect / connectProtocol) ...
    outcome = await session.deliver(request, chunks, RemoteHost("mx.example.net", "192.0.2.1", 25))
    # outcome.results: one mta.model.RecipientResult per request recipient
    # outcome.retry / outcome.tryNextHost: recipients to try at the next host
    # outcome.reusable: the connection is open and idle (deliver() again,
    #   after reset() if it sat in a cache; else quit())

DESCRIPTION
    Greeting (220; 4xx, or 5xx with smtp_skip_5xx_greeting, defers and
    asks for the next host; 5xx otherwise bounces), EHLO (LHLO for LMTP;
    HELO when EHLO gets anything but 2xx or 421, or with
    smtp_never_send_ehlo; with smtp_always_send_ehlo = no, EHLO only when
    the greeting says ESMTP), EHLO keywords (case-insensitive; SIZE and its
    limit, PIPELINING, 8BITMIME, SMTPUTF8, DSN, CHUNKING,
    ENHANCEDSTATUSCODES, ...; smtp_discard_ehlo_keywords removes some),
    loop detection (SMTP: the EHLO reply names $myhostname: 5.4.6 at the
    best MX, else 4.4.6 and the next host), then per deliver():

      * local checks: a message larger than the server's SIZE bounces
        (5.3.4) without MAIL; mail that needs SMTPUTF8 (the envelope says
        so or an address is not ASCII) bounces 5.6.7 when it is not
        offered, but may first be tried at the other hosts (as Postfix does
        since its 2025 change);
      * MAIL FROM with SIZE=, BODY=8BITMIME, ENVID=, RET=, SMTPUTF8 as
        offered and needed; RCPT TO with ORCPT= and NOTIFY= when DSN is
        offered; DATA.  With PIPELINING, MAIL, every RCPT and DATA go out
        in one write and the replies are matched in order; without it, one
        command at a time, stopping when MAIL or every RCPT is refused.
        A 552 reply to RCPT is RFC 821's "too many recipients" and counts
        as 452 (RFC 5321 4.5.3.1.10): that recipient is deferred with the
        enhanced code made 4.X.X ("host mx[192.0.2.1] said: 552 5.5.3
        Error: too many recipients (in reply to RCPT TO command)", dsn
        4.5.3), the accepted ones get the message, and the queue manager
        (or the next MX host) takes the rest later.  552 stays permanent at
        MAIL, DATA and end of data ("too much mail data");
        After 354 with no accepted recipient (pipelining), an empty message
        (".") is sent, as RFC 2920 says;
      * the content, pulled from the caller's chunk source, through
        mta.delivery.dotstuff (CRLF only, dots doubled across chunk
        boundaries, smtp_line_length_limit), written in pieces of at most
        64 KiB while the transport asks for more: the session is the
        transport's streaming producer and waits whenever it is paused;
      * the end-of-data reply: SMTP one for all accepted recipients, LMTP
        one per accepted recipient in RCPT order, each recorded on its own.
        A recipient is "sent" only on a 2xx end-of-data reply to the
        complete message;
      * then QUIT (pipelined behind the final "." when PIPELINING is on;
        smtp_skip_quit_response), or, with keepOpen, nothing after a
        finished transaction and RSET after an aborted one, leaving the
        connection for reuse.

    Replies are read by mta.delivery.smtpreply: at most
    line_length_limit bytes of a line and about twice that of a reply are
    kept, the rest is read to the end of the reply and dropped (with
    Postfix's warnings "mx[192.0.2.1]:25: response longer than 2048: ..."
    and "multi-line response longer than 2048 ..."), within the phase's
    deadline.  A malformed reply (garbage, a code outside 200-599, a
    multi-line reply whose lines carry different codes such as "250-a"
    then "550 b", a reply nobody asked for) is a protocol error in
    whatever phase it comes: the pending recipients are deferred with
    4.5.0, "malformed multi-line response from mx[192.0.2.1] while
    sending RCPT TO" (or "non-SMTP response from ...", "unexpected
    response from ..."), a warning with the offending line goes to the
    mail log, and the connection is dropped.

    Results are worded as Postfix words them: "host mx[192.0.2.1] said:
    550 5.1.1 <x@y>: unknown (in reply to RCPT TO command)", "lost
    connection with mx[192.0.2.1] while sending message body",
    "conversation with mx[192.0.2.1] timed out while sending MAIL FROM",
    "host mx[192.0.2.1] refused to talk to me: 421 ...".  The status
    comes from the reply class (2 sent, 4 deferred, 5 bounced), the dsn
    from the enhanced code of the first reply line when its class agrees,
    else X.0.0; a reply of the wrong class (354 to RCPT, 250 to DATA) is a
    "Protocol error: ..." with 5.5.0, as in Postfix.  relay is
    "host[address]:port", diagnostic "smtp; <reply>", remote_mta
    "dns; host" (the last two only for what the server said).

    Which recipients may go to the next host (SessionOutcome.retry), as
    Postfix's "keep the recipient for a backup server": every recipient
    deferred by a 4xx reply, a lost connection, a timeout or a protocol
    error, up to the moment the final "." is written; and the SMTPUTF8
    bounce.  After the final "." a lost connection or timeout defers the
    recipients without an answer (RFC 1047: the server may have taken the
    message, so it may be delivered twice, but never reported as sent), and
    they are not retried elsewhere now.  A chunk source that fails (an
    unreadable queue file) defers with 4.3.0 and the connection is
    dropped without the final ".", so no partial message is delivered.

    Timeouts, one per phase, each a deadline for one reply (not renewed
    by partial input, as Postfix's smtp_per_record_deadline = yes, so a
    server trickling a byte at a time cannot hold the session): greeting
    and EHLO/HELO/LHLO smtp_helo_timeout, MAIL smtp_mail_timeout, RCPT
    smtp_rcpt_timeout, DATA smtp_data_init_timeout, the content
    smtp_data_xfer_timeout (renewed at each write and each resume of the
    transport: it limits a lack of progress), end of data
    smtp_data_done_timeout, RSET smtp_rset_timeout, QUIT smtp_quit_timeout.
    The connect timeout is the caller's.

    With a transcript (mta.transcript.Transcript, the caller's when
    notify_classes asks for one), the session records each command it
    sends ("Out: ", the final "." and a pipelined QUIT included, never the
    content) and each reply line it reads ("In:  ", the offending line of
    a malformed reply too), and notes the protocol class where Postfix's
    smtp_chat.c and smtp_trouble.c set MAIL_ERROR_PROTOCOL: a malformed
    reply or one nobody asked for, a refusal whose code is not 4xx or 5xx
    or is 555 or 500-509, a reply of the wrong class.  The caller
    (mta.delivery.smtp) sends it to the postmaster.

    STARTTLS goes in _startTLS(), after the EHLO reply is parsed and
    before MAIL: send STARTTLS, read 220, call _discardInput() so that
    nothing read before the handshake is trusted, start TLS on the
    transport, forget the EHLO keywords and send EHLO again.

SECURITY
    Everything read is untrusted.  Reply lines are cut at
    line_length_limit (2048) bytes, the rest of a longer line is discarded
    while it arrives, and a reply keeps at most about 2 x line_length_limit
    bytes however many lines it has (mta.delivery.smtpreply): an endless
    line or an endless multi-line reply costs no memory, only the phase's
    deadline, which partial input does not renew.  A reply that nobody
    asked for, a line that does not start with three digits and a space or
    dash, a reply code outside 200-599 and a multi-line reply with
    different codes are protocol errors.  Reply text is decoded as
    UTF-8 with replacement and every non-printable character (CR, LF, NUL,
    TAB, other controls) becomes "?", so a server cannot put a line end
    in a log line, a queue file or a DSN; the text kept is at most
    line_length_limit characters.  Every wait has a deadline, every write
    waits for the transport, and memory per session is bounded.  Commands never carry
    CR, LF or NUL: addresses with control characters are refused (bounced
    5.1.7 / 5.1.3 without being sent), a domain may not hold white space
    or angle brackets, DSN values are re-encoded (xtext, RFC 6533
    utf-8-addr-xtext), and a final check refuses any command with a line
    end in it.

CONFIGURATION
    Plain values in ClientSettings (ClientSettings.fromParameters maps
    Postfix's parameter names): smtp_helo_name (lmtp_lhlo_name),
    myhostname, smtp_helo_timeout, smtp_mail_timeout, smtp_rcpt_timeout,
    smtp_data_init_timeout, smtp_data_xfer_timeout, smtp_data_done_timeout,
    smtp_rset_timeout, smtp_quit_timeout, smtp_discard_ehlo_keywords,
    smtp_never_send_ehlo, smtp_always_send_ehlo, smtp_skip_5xx_greeting,
    smtp_skip_quit_response, smtp_quote_rfc821_envelope,
    smtp_line_length_limit, lmtp_assume_final, line_length_limit (the
    reply bound, as Postfix's smtp_chat.c uses it).

DEVIATIONS FROM POSTFIX
    * The session sends the content its caller gives it: for a server
      without 8BITMIME the smtp transport converts 8-bit MIME to
      quoted-printable first (mta.delivery.mime7bit; off with
      disable_mime_output_conversion = yes).  BODY=7BIT is never sent (an envelope that says 7BIT may
      still hold 8-bit data that the server accepted without BODY=);
      BINARYMIME mail goes out as BODY=8BITMIME through DATA, its line
      ends normalised (TODO: BDAT).
    * Garbage instead of a reply is a protocol error (4.5.0) with or
      without PIPELINING (Postfix tolerates it as a continuation line when
      not pipelining); so are a reply nobody asked for and a multi-line
      reply whose lines carry different codes (Postfix judges a reply by
      its last line).  Their texts ("non-SMTP response from HOST while
      ...", "unexpected response from ...", "malformed multi-line
      response from ...") are ours, in the shape of Postfix's "lost
      connection with HOST while ...".
    * 552 to RCPT is deferred as 452 (RFC 5321 4.5.3.1.10).  Postfix
      keeps it permanent: the conversion is "#ifdef notdef" in
      smtp_proto.c, because some servers mean "too much mail data" by it;
      here a 552 at RCPT can only be about recipients (the size goes with
      MAIL FROM and the end of data, where 552 stays permanent), and a
      wrongly deferred recipient costs a retry, a wrongly bounced one a
      lost message.
    * When not caching the connection, an aborted transaction ends with
      QUIT alone (Postfix sends RSET, then QUIT).
    * Deadlines per reply, as smtp_per_record_deadline = yes.
"""

import re
from collections import deque

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from mta.address import formatAddress, xtextEncode
from mta.delivery.dotstuff import DotStuffer
from mta.delivery.smtpreply import DEFAULT_LIMIT, MalformedReply, ReplyParser, SMTPReply
from mta.model import Address, RecipientResult

__all__ = ["ClientSettings", "RemoteHost", "SMTPClientSession", "SMTPReply", "SessionOutcome", "Timeouts"]

log = Logger()

REPLY_LINE_LIMIT = DEFAULT_LIMIT  # the default of line_length_limit: bytes kept of a reply line and of a reply
WRITE_SIZE = 65536  # largest single write of message content

_GREETING = "receiving the initial server greeting"
_MAIL = "sending MAIL FROM"
_RCPT = "sending RCPT TO"
_DATA = "sending DATA command"
_BODY = "sending message body"
_DOT = "sending end of data -- message may be sent more than once"
_FINAL_RSET = "sending final RSET"
_RSET_PROBE = "sending RSET probe"
_QUIT = "sending QUIT"

_NOTIFY = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
_ADDR_TYPE = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+\Z")
_QUOTED_LOCAL = re.compile(r'"((?:[^"\\]|\\.)*)"\Z', re.S)
_UNQUOTE = re.compile(r"\\(.)", re.S)
_BAD_DOMAIN = re.compile(r"[\s<>\"]")
_SIZE_VALUE = re.compile(r"[0-9]{1,20}\Z")
_UXTEXT_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset("+=\\")


def _hasControl(text):
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


# -- configuration -------------------------------------------------------------------


@attrs.frozen
class Timeouts:
    """Per-phase reply deadlines in seconds (Postfix's defaults)."""

    helo: float = 300.0  # smtp_helo_timeout: the greeting and the EHLO/HELO/LHLO reply
    mail: float = 300.0  # smtp_mail_timeout
    rcpt: float = 300.0  # smtp_rcpt_timeout
    dataInit: float = 120.0  # smtp_data_init_timeout: the reply to DATA
    dataXfer: float = 180.0  # smtp_data_xfer_timeout: without progress while sending content
    dataDone: float = 600.0  # smtp_data_done_timeout: the end-of-data reply (each, for LMTP)
    rset: float = 20.0  # smtp_rset_timeout
    quit: float = 300.0  # smtp_quit_timeout


def _keywordSet(value):
    return frozenset(str(v).upper() for v in value)


def _checkHeloName(instance, attribute, value):
    if not value or _hasControl(value) or " " in value:
        raise ValueError(f"bad {attribute.name}: {value!r}")


def _checkReplyLimit(instance, attribute, value):
    if value < 80:
        raise ValueError(f"{attribute.name} must be at least 80")


def _checkLineLimit(instance, attribute, value):
    if value < 0 or value == 1:
        raise ValueError(f"{attribute.name} must be 0 (no limit) or at least 2")


@attrs.frozen
class ClientSettings:
    """The client's configuration, as plain values (see the module docstring)."""

    heloName: str = attrs.field(validator=_checkHeloName)
    lmtp: bool = False
    myHostname: str = ""  # for loop detection; empty: heloName
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    discardEhloKeywords: frozenset = attrs.field(default=frozenset(), converter=_keywordSet)
    neverSendEhlo: bool = False
    alwaysSendEhlo: bool = True
    skip5xxGreeting: bool = True
    skipQuitResponse: bool = True
    quoteRfc821Envelope: bool = True
    lineLengthLimit: int = attrs.field(default=998, validator=_checkLineLimit)
    lmtpAssumeFinal: bool = False
    replyLimit: int = attrs.field(default=REPLY_LINE_LIMIT, validator=_checkReplyLimit)  # line_length_limit

    @classmethod
    def fromParameters(cls, params, lmtp=False):
        """
        Settings from a mapping of Postfix parameters (mta.config Scope or
        a dict) holding the names listed in the module docstring, with
        lmtp_* names (lmtp_lhlo_name, lmtp_lhlo_timeout, ...) for LMTP.
        """
        p = "lmtp" if lmtp else "smtp"
        hello = "lhlo" if lmtp else "helo"
        return cls(
            heloName=params[f"{p}_{hello}_name"],
            lmtp=lmtp,
            myHostname=params["myhostname"],
            timeouts=Timeouts(
                helo=params[f"{p}_{hello}_timeout"],
                mail=params[f"{p}_mail_timeout"],
                rcpt=params[f"{p}_rcpt_timeout"],
                dataInit=params[f"{p}_data_init_timeout"],
                dataXfer=params[f"{p}_data_xfer_timeout"],
                dataDone=params[f"{p}_data_done_timeout"],
                rset=params[f"{p}_rset_timeout"],
                quit=params[f"{p}_quit_timeout"],
            ),
            discardEhloKeywords=params["lmtp_discard_lhlo_keywords" if lmtp else "smtp_discard_ehlo_keywords"],
            neverSendEhlo=False if lmtp else params["smtp_never_send_ehlo"],
            alwaysSendEhlo=True if lmtp else params["smtp_always_send_ehlo"],
            skip5xxGreeting=params[f"{p}_skip_5xx_greeting"],
            skipQuitResponse=params[f"{p}_skip_quit_response"],
            quoteRfc821Envelope=params[f"{p}_quote_rfc821_envelope"],
            lineLengthLimit=params[f"{p}_line_length_limit"],
            lmtpAssumeFinal=params["lmtp_assume_final"] if lmtp else False,
            replyLimit=params["line_length_limit"],
        )


@attrs.frozen
class RemoteHost:
    """The server at the other end, for texts: name, address, port (None: a UNIX socket)."""

    name: str
    address: str
    port: int | None = 25

    @property
    def namaddr(self):
        return f"{self.name}[{self.address}]"

    @property
    def relay(self):
        return self.namaddr if self.port is None else f"{self.namaddr}:{self.port}"


@attrs.frozen
class SessionOutcome:
    """
    What one deliver() came to.  C{results} has one RecipientResult per
    request recipient, in request order: what to record if no other host
    is tried.  C{retry} holds the indexes of the recipients that the caller
    may try at the next host instead (their results here are what to
    record when there is none); C{reason} says why this host failed as a
    whole, if it did.  C{reusable}: the connection is open and idle.
    C{successAction} is the DSN action of a "sent" result: "delivered"
    for LMTP with lmtp_assume_final when the server did not offer DSN,
    else "relayed"; C{dsnOffered} tells whether NOTIFY went to the server
    (so that it, not we, sends success notices).
    """

    results: tuple
    retry: frozenset = frozenset()
    reason: str | None = None
    reusable: bool = False
    dsnOffered: bool = False
    successAction: str = "relayed"

    @property
    def tryNextHost(self):
        return bool(self.retry)


# -- internals ------------------------------------------------------------------------


class _Broken(Exception):
    """The connection cannot be used any more: lost, timeout or protocol."""

    def __init__(self, kind, detail=None):
        super().__init__(kind, detail)
        self.kind = kind
        self.detail = detail


class _ContentError(Exception):
    """The caller's chunk source failed."""


class _Transaction:
    """Per-recipient results of one deliver()."""

    def __init__(self, request, host, fault=None):
        self.request = request
        self.host = host
        self.fault = fault  # fault(errorClass): the session met an error of a notify_classes class
        self.results = {}
        self.retry = set()
        self.reason = None
        self.dotSent = False  # the final "." was written: RFC 1047 window
        self.dirty = False  # MAIL was sent and the transaction is not finished

    def pending(self):
        return [r for r in self.request.recipients if r.index not in self.results]

    def record(self, rcpt, status, dsn, text, reply=None, retry=False):
        self.results[rcpt.index] = RecipientResult(
            rcpt.index,
            status,
            dsn,
            text,
            relay=self.host.relay,
            diagnostic=f"smtp; {reply.text}" if reply is not None else None,
            remote_mta=f"dns; {self.host.name}" if reply is not None else None,
        )
        if retry:
            self.retry.add(rcpt.index)

    def local(self, rcpts, status, dsn, text, retry=False, reason=True):
        """A failure found here (no server reply to quote) for C{rcpts}."""
        if reason and rcpts:
            self.reason = text
        for rcpt in rcpts:
            self.record(rcpt, status, dsn, text, retry=retry)

    def refused(self, rcpts, reply, text, dsn=None, reason=False):
        """A failure the server said: 4xx defers (retry elsewhere), 5xx bounces."""
        dsn = dsn or reply.dsn
        # Postfix's smtp_check_code(): a code that is not 4xx or 5xx, 555, or 500-509 (syntax
        # errors, most likely ours) is the protocol class, and so is a reply of the wrong class.
        code = reply.code
        if self.fault is not None and (dsn[0] not in "45" or not 400 <= code <= 599 or code == 555
                                       or 500 <= code < 510):
            self.fault("protocol")
        if dsn[0] not in "45":
            text = "Protocol error: " + text
            dsn = "5.5.0"
        status = "deferred" if dsn[0] == "4" else "bounced"
        if reason or reply.code == 421:  # 421: the server is closing the whole session
            self.reason = text
        for rcpt in rcpts:
            self.record(rcpt, status, dsn, text, reply, retry=status == "deferred")

    def said(self, rcpts, reply, command, dsn=None):
        text = f"host {self.host.namaddr} said: {reply.text} (in reply to {command})"
        self.refused(rcpts, reply, text, dsn)

    def sent(self, rcpt, reply):
        self.record(rcpt, "sent", reply.dsn, reply.text, reply)

    def outcome(self, reusable, dsnOffered, successAction):
        order = [self.results[r.index] for r in self.request.recipients]
        return SessionOutcome(
            tuple(order),
            frozenset(self.retry),
            self.reason,
            reusable,
            dsnOffered,
            successAction,
        )


def _uxtext(text):
    """RFC 6533 utf-8-addr-xtext: QCHAR as is, anything else as \\x{HEX}."""
    return "".join(c if c in _UXTEXT_SAFE else f"\\x{{{ord(c):X}}}" for c in text)


@implementer(IPushProducer)
class SMTPClientSession(Protocol, TimeoutMixin):
    """One client session on one connection; see the module docstring."""

    def __init__(self, settings, clock, maillog=None, transcript=None):
        self.settings = settings
        self.callLater = clock.callLater  # TimeoutMixin's clock
        self.maillog = maillog  # a mta.maillog.MailLogger for warnings, or None (twisted.logger)
        # A mta.transcript.Transcript (Postfix's session history and error_mask), or None.
        self.transcript = transcript
        self._parser = ReplyParser(settings.replyLimit)
        self._replies = deque()
        self._expected = 1  # replies owed by the server: the greeting so far
        self._waiter = None
        self._greetingTimer = False
        self._failure = None  # (kind, detail) once the connection is unusable
        self._closing = False
        self._connected = False
        self._paused = False
        self._drain = None
        self._busy = False
        self._greeted = False
        self._stage = _GREETING
        self._queueId = None
        self.host = None
        self.esmtp = False
        self.serverName = ""
        self.extensions = {}  # EHLO keyword (upper case) -> its parameters
        self.sizeLimit = 0  # the server's SIZE; 0: none announced

    # -- connection -----------------------------------------------------------------

    def connectionMade(self):
        self._connected = True
        self._greetingTimer = True
        self.setTimeout(self.settings.timeouts.helo)

    def connectionLost(self, reason):
        self._connected = False
        self._fail("lost")

    def timeoutConnection(self):
        self._abort()
        self._fail("timeout")

    def dataReceived(self, data):
        # The parser keeps at most line_length_limit bytes of a line and
        # about twice that of a reply, whatever arrives; the deadline of the
        # reply being waited for (not renewed here) ends an endless one.
        if self._failure is not None or self._closing:
            return
        for event in self._parser.feed(data):
            if isinstance(event, MalformedReply):
                self._protocolError(event)
                break
            self._reply(event)
            if self._failure is not None:
                break
        self._wake()

    def _reply(self, reply):
        if self.transcript is not None:
            for line in reply.lines:
                self.transcript.received(line)
        if reply.longLines:
            self._warn(f"{self._peer()}: response longer than {reply.limit}: {reply.longSample}...")
        if reply.skippedLines:
            self._warn(f"{self._peer()}: multi-line response longer than {reply.limit} {reply.lines[0][:30]}...")
        if self._expected <= 0:
            self._protocolError(MalformedReply("unexpected response", reply.lines[-1][:100]))
            return
        self._expected -= 1
        self._replies.append(reply)
        if self._greetingTimer:
            self._greetingTimer = False
            if self._waiter is None:
                self.setTimeout(None)
        if reply.code == 421:
            # The server is going away: nothing after this reply counts.
            self._fail("lost")
            self._close()

    def _peer(self):
        return self.host.relay if self.host is not None else "server"

    def _warn(self, text):
        if self.maillog is not None:
            from twisted.logger import LogLevel

            self.maillog.emit(f"warning: {text}", self._queueId, LogLevel.warn)
        else:
            log.warn("{text}", text=text)

    def _protocolError(self, error):
        if self.transcript is not None:
            if isinstance(error, MalformedReply) and error.what != "unexpected response":
                self.transcript.received(error.line)  # an unexpected reply is in the transcript already
            self.transcript.error("protocol")
        detail = f"{error.detail}: " if error.detail else ""
        self._warn(f"{error.what} from {self._peer()}: {detail}{error.line}")
        self._abort()
        self._fail("protocol", error.what)

    def _fail(self, kind, detail=None):
        if self._failure is None:
            self._failure = (kind, detail)
        self._greetingTimer = False
        self.setTimeout(None)
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.errback(_Broken(kind, detail))
        self._wake()

    def _wake(self):
        """Give the waiting reader its reply, or its failure once the replies are used up."""
        waiter = self._waiter
        if waiter is None:
            return
        if self._replies:
            self._waiter = None
            self.setTimeout(None)
            waiter.callback(self._replies.popleft())
        elif self._failure is not None:
            self._waiter = None
            self.setTimeout(None)
            waiter.errback(_Broken(*self._failure))

    def _close(self):
        self._closing = True
        self.setTimeout(None)
        if self.transport is not None:
            self.transport.loseConnection()

    def _abort(self):
        self._closing = True
        self.setTimeout(None)
        if self.transport is not None:
            self.transport.abortConnection()

    # -- IPushProducer (for the message content) ------------------------------------------

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self.resetTimeout()
        drain, self._drain = self._drain, None
        if drain is not None:
            drain.callback(None)

    def stopProducing(self):
        self._fail("lost")

    # -- commands and replies -------------------------------------------------------------

    def _send(self, data, replies):
        """Write commands owing C{replies} replies; raise _Broken if the connection is gone."""
        if self._failure is not None or self._closing:
            raise _Broken(*(self._failure or ("lost", None)))
        bare = data.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare or b"\0" in bare:
            raise ValueError("line end or NUL inside a command")
        self._expected += replies
        if self.transcript is not None:
            self.transcript.sentLines(data)
        self.transport.write(data)

    def _read(self, timeout):
        """A Deferred for the next reply, waiting at most C{timeout} (None: the running timer)."""
        if self._replies:
            return succeed(self._replies.popleft())
        if self._failure is not None or self._closing:
            return fail(_Broken(*(self._failure or ("lost", None))))
        self._waiter = Deferred()
        if timeout is not None:
            self.setTimeout(timeout)
        return self._waiter

    async def _command(self, line, timeout):
        self._send(line.encode("utf-8") + b"\r\n", 1)
        return await self._read(timeout)

    # -- the public API ---------------------------------------------------------------------

    def deliver(self, request, content, host, keepOpen=False, bestMx=True):
        """
        Deliver C{request} (mta.model.DeliveryRequest) over this connection.

        @param content: the message content: an iterable or async iterable
            of bytes chunks, or a callable returning one (called once, when
            the server has said 354, so nothing is read for mail that is
            refused earlier).  A failure of the source defers the recipients
            (4.3.0) and drops the connection without the final ".".
        @param host: a RemoteHost, for texts and the relay field.
        @param keepOpen: leave the connection open for another deliver()
            (connection caching) instead of sending QUIT.
        @param bestMx: this host is one of the best MX hosts (for the loop
            check: 5.4.6 at the best MX, else 4.4.6 and the next host).
        @return: a Deferred firing with a SessionOutcome; an errback only
            for a bug (the connection is then dropped).
        """
        if not self._connected and self._failure is None:
            raise RuntimeError("deliver() before connectionMade()")
        if self._busy:
            raise RuntimeError("deliver() while a delivery is in progress")
        self._busy = True
        d = Deferred.fromCoroutine(self._deliver(request, content, host, keepOpen, bestMx))

        def done(result):
            self._busy = False
            return result

        return d.addBoth(done)

    def reset(self):
        """RSET (smtp_rset_timeout) before reusing a cached connection: Deferred[bool], True if usable."""
        if self._busy:
            raise RuntimeError("reset() while a delivery is in progress")
        return Deferred.fromCoroutine(self._reset(_RSET_PROBE))

    def quit(self):
        """Send QUIT (waiting for its reply unless smtp_skip_quit_response) and close: Deferred[None]."""
        if self._busy:
            raise RuntimeError("quit() while a delivery is in progress")
        return Deferred.fromCoroutine(self._quit())

    # -- the session ----------------------------------------------------------------------

    async def _deliver(self, request, content, host, keepOpen, bestMx):
        self.host = host
        self._queueId = request.queue_id
        tx = _Transaction(request, host, self.transcript.error if self.transcript is not None else None)
        quitSent = False
        try:
            try:
                if not self._greeted:
                    if not await self._handshake(tx, bestMx):
                        await self._quit()
                        return self._outcome(tx, False)
                quitSent = await self._transaction(tx, content, keepOpen)
            except _Broken as e:
                self._broken(tx, e)
            except _ContentError as e:
                log.warn("{queue_id}: unreadable mail queue entry: {error!r}", queue_id=request.queue_id,
                         error=e.__cause__)
                tx.local(tx.pending(), "deferred", "4.3.0", "unreadable mail queue entry")
                self._fail("lost")
                self._abort()
        except BaseException:
            self._abort()
            raise
        reusable = False
        if self._failure is None and not self._closing:
            if quitSent:
                await self._quitReply()
            elif keepOpen and not tx.dirty:
                reusable = True
            elif keepOpen and await self._reset(_FINAL_RSET):
                reusable = True
            else:
                await self._quit()
        elif not self._closing:
            self._abort()
        return self._outcome(tx, reusable)

    def _outcome(self, tx, reusable):
        dsn = "DSN" in self.extensions
        action = "delivered" if self.settings.lmtp and self.settings.lmtpAssumeFinal and not dsn else "relayed"
        return tx.outcome(reusable, dsn, action)

    def _broken(self, tx, error):
        name = tx.host.namaddr
        if error.kind == "timeout":
            text, dsn = f"conversation with {name} timed out while {self._stage}", "4.4.2"
        elif error.kind == "protocol":
            text, dsn = f"{error.detail} from {name} while {self._stage}", "4.5.0"
        else:
            text, dsn = f"lost connection with {name} while {self._stage}", "4.4.2"
        tx.local(tx.pending(), "deferred", dsn, text, retry=not tx.dotSent)

    async def _handshake(self, tx, bestMx):
        """Greeting, EHLO/HELO/LHLO, STARTTLS; False (results recorded) if this host will not do."""
        s = self.settings
        self._stage = _GREETING
        greeting = await self._read(None)
        if not greeting.positive:
            dsn = greeting.dsn
            if greeting.code // 100 == 5 and s.skip5xxGreeting:
                dsn = "4" + dsn[1:]
            text = f"host {tx.host.namaddr} refused to talk to me: {greeting.text}"
            tx.refused(tx.pending(), greeting, text, dsn, reason=True)
            return False
        words = " ".join(line[4:] for line in greeting.lines).upper().split()
        esmtp = s.lmtp or (s.alwaysSendEhlo or "ESMTP" in words[1:]) and not s.neverSendEhlo
        if not await self._hello(tx, bestMx, esmtp):
            return False
        if await self._startTLS(tx):  # pragma: no cover - no STARTTLS yet
            # After the TLS handshake there is no greeting: EHLO again, trusting nothing from before.
            if not await self._hello(tx, bestMx, True):
                return False
        self._greeted = True
        return True

    async def _hello(self, tx, bestMx, esmtp):
        """EHLO (HELO when refused), or LHLO; parse the keywords and check for a mail loop."""
        s = self.settings
        namaddr = tx.host.namaddr
        if s.lmtp:
            self._stage = "performing the LHLO handshake"
            reply = await self._command(f"LHLO {s.heloName}", s.timeouts.helo)
        else:
            reply = None
            if esmtp:
                self._stage = "performing the EHLO handshake"
                reply = await self._command(f"EHLO {s.heloName}", s.timeouts.helo)
                if not reply.positive and reply.code != 421:
                    esmtp = False
            if not esmtp:
                self._stage = "performing the HELO handshake"
                reply = await self._command(f"HELO {s.heloName}", s.timeouts.helo)
        if not reply.positive:
            tx.refused(tx.pending(), reply, f"host {namaddr} refused to talk to me: {reply.text}", reason=True)
            return False
        self.esmtp = esmtp
        self.serverName = (reply.lines[0][4:].split() or [""])[0]
        self._parseEhlo(reply if esmtp else None)
        myself = s.myHostname or s.heloName
        if esmtp and not s.lmtp and self.serverName.lower() == myself.lower():
            log.warn("host {host} replied to HELO/EHLO with my own hostname {me}", host=namaddr, me=myself)
            status, dsn = ("bounced", "5.4.6") if bestMx else ("deferred", "4.4.6")
            tx.local(tx.pending(), status, dsn, f"mail for {tx.request.nexthop} loops back to myself",
                     retry=not bestMx)
            return False
        return True

    def _parseEhlo(self, reply):
        self.extensions = {}
        self.sizeLimit = 0
        if reply is None:
            return
        discard = self.settings.discardEhloKeywords
        for line in reply.lines[1:]:
            words = re.split(r"[ \t=]+", line[4:].strip(), maxsplit=1)
            keyword = words[0].upper()
            if not keyword or keyword in discard:
                continue
            self.extensions[keyword] = words[1] if len(words) > 1 else ""
        if "SIZE" in self.extensions:
            value = self.extensions["SIZE"].split()[:1]
            if value and _SIZE_VALUE.match(value[0]):
                self.sizeLimit = int(value[0])
        if "SMTPUTF8" in self.extensions and "8BITMIME" not in self.extensions:
            self.extensions["8BITMIME"] = ""  # Postfix: SMTPUTF8 implies 8BITMIME

    async def _startTLS(self, tx):
        """
        The place for STARTTLS, between the EHLO reply and MAIL: decide by
        policy and "STARTTLS" in self.extensions, send STARTTLS, read 220,
        call self._discardInput() (nothing read in plaintext is trusted
        afterwards), start TLS on the transport and return True; the caller
        then sends EHLO again.  Not implemented yet: never starts TLS.
        """
        return False

    def _discardInput(self):
        """Forget everything read and not yet used (before a TLS handshake)."""
        self._parser.reset()
        self._replies.clear()
        self.extensions = {}
        self.sizeLimit = 0

    # -- the mail transaction ---------------------------------------------------------------

    async def _transaction(self, tx, content, keepOpen):
        """MAIL, RCPT, DATA, content, end of data; True if QUIT went out behind the "."."""
        s = self.settings
        t = s.timeouts
        request = tx.request
        envelope = request.envelope
        namaddr = tx.host.namaddr
        if self.sizeLimit and request.content_length > self.sizeLimit:
            tx.local(tx.pending(), "bounced", "5.3.4",
                     f"message size {request.content_length} exceeds size limit {self.sizeLimit} of server {namaddr}")
            return False
        addresses = [envelope.sender] + [r.address for r in tx.pending()]
        needUtf8 = envelope.smtputf8 or not all(a.isascii() for a in addresses)
        if needUtf8 and "SMTPUTF8" not in self.extensions:
            tx.local(tx.pending(), "bounced", "5.6.7", f"SMTPUTF8 is required, but was not offered by host {namaddr}",
                     retry=True)
            return False
        try:
            mail = self._mailCommand(request, needUtf8)
        except ValueError:
            tx.local(tx.pending(), "bounced", "5.1.7", "bad sender address syntax in the queue file")
            return False
        steps = [("MAIL", mail, None)]
        for rcpt in tx.pending():
            try:
                steps.append(("RCPT", self._rcptCommand(rcpt, needUtf8), rcpt))
            except ValueError:
                tx.local([rcpt], "bounced", "5.1.3", "bad recipient address syntax in the queue file", reason=False)
        if len(steps) == 1:
            return False
        steps.append(("DATA", "DATA", None))
        pipelining = "PIPELINING" in self.extensions
        tx.dirty = True
        self._stage = _MAIL
        if pipelining:
            self._send(b"".join(line.encode("utf-8") + b"\r\n" for _, line, _ in steps), len(steps))
        mailOk = True
        accepted = []
        dataReply = None
        for kind, line, rcpt in steps:
            if not pipelining and (kind == "RCPT" and not mailOk or kind == "DATA" and not accepted):
                break
            self._stage, timeout = {"MAIL": (_MAIL, t.mail), "RCPT": (_RCPT, t.rcpt), "DATA": (_DATA, t.dataInit)}[kind]
            if not pipelining:
                self._send(line.encode("utf-8") + b"\r\n", 1)
            reply = await self._read(timeout)
            if kind == "MAIL":
                if not reply.positive:
                    tx.said(tx.pending(), reply, "MAIL FROM command")
                    mailOk = False
            elif kind == "RCPT":
                if mailOk:
                    if reply.positive:
                        accepted.append(rcpt)
                    elif reply.code == 552:
                        # RFC 5321 4.5.3.1.10: 552 to RCPT is RFC 821's "too many
                        # recipients"; treat it as 452 (see DEVIATIONS).
                        tx.said([rcpt], reply, "RCPT TO command", dsn="4" + reply.dsn[1:])
                    else:
                        tx.said([rcpt], reply, "RCPT TO command")
            else:
                dataReply = reply
        if dataReply is None:
            return False
        if dataReply.code // 100 != 3:
            if accepted:
                tx.said(accepted, dataReply, "DATA command")
            return False
        if not accepted:
            # RFC 2920: the server took DATA though nothing is left; send an empty message.
            self._stage = _DOT
            self._send(b".\r\n", 1)
            await self._read(t.dataDone)
            return False
        quit = pipelining and not keepOpen
        endReplies = len(accepted) if s.lmtp else 1
        self._expected += endReplies
        try:
            await self._sendContent(tx, content, quit)
        except _Broken:
            self._prematureReply(tx, accepted)
            raise
        self._stage = _DOT
        if s.lmtp:
            for rcpt in accepted:
                reply = await self._read(t.dataDone)
                if reply.positive:
                    tx.sent(rcpt, reply)
                else:
                    tx.said([rcpt], reply, "end of DATA command")
        else:
            reply = await self._read(t.dataDone)
            if reply.positive:
                for rcpt in accepted:
                    tx.sent(rcpt, reply)
            else:
                tx.said(accepted, reply, "end of DATA command")
        tx.dirty = False
        return quit

    def _prematureReply(self, tx, accepted):
        """The connection broke during the content: use a refusal the server sent first (Postfix)."""
        self._stage = _BODY
        for rcpt in accepted if self.settings.lmtp else accepted[:1]:
            if not self._replies or self._replies[0].positive:
                return
            reply = self._replies.popleft()
            tx.said([rcpt] if self.settings.lmtp else accepted, reply, "end of DATA command")

    async def _sendContent(self, tx, content, quit):
        """Stream the content through the dot-stuffer, then the final "." (and QUIT if C{quit})."""
        encoder = DotStuffer(self.settings.lineLengthLimit)
        self._stage = _BODY
        self.setTimeout(self.settings.timeouts.dataXfer)
        self.transport.registerProducer(self, True)
        try:
            try:
                source = content() if callable(content) else content
                asynchronous = hasattr(source, "__aiter__")
                chunks = source.__aiter__() if asynchronous else iter(source)
            except Exception as e:
                raise _ContentError() from e
            while True:
                try:
                    chunk = await chunks.__anext__() if asynchronous else next(chunks)
                except (StopIteration, StopAsyncIteration):
                    break
                except Exception as e:
                    raise _ContentError() from e
                await self._write(encoder.feed(chunk))
            await self._write(b"")
            tx.dotSent = True
            self._stage = _DOT
            self._expected += 1 if quit else 0
            if self.transcript is not None:
                self.transcript.sentLines(b".\r\nQUIT\r\n" if quit else b".\r\n")
            self.transport.write(encoder.finish() + (b"QUIT\r\n" if quit else b""))
        finally:
            self._paused = False
            self.transport.unregisterProducer()
        if encoder.brokenLines:
            log.info("{queue_id}: breaking line > {limit} bytes with <CR><LF>SPACE",
                     queue_id=tx.request.queue_id, limit=self.settings.lineLengthLimit)

    async def _write(self, data):
        """Write content in bounded pieces, each when the transport wants more."""
        pos = 0
        while True:
            if self._failure is not None:
                raise _Broken(*self._failure)
            if self._paused:
                self._drain = Deferred()
                await self._drain
                continue
            if pos >= len(data):
                return
            self.transport.write(data[pos : pos + WRITE_SIZE])
            pos += WRITE_SIZE
            self.resetTimeout()

    def _mailCommand(self, request, needUtf8):
        envelope = request.envelope
        ext = self.extensions
        line = f"MAIL FROM:<{self._path(envelope.sender)}>"
        if "SIZE" in ext:
            line += f" SIZE={request.content_length}"
        if "8BITMIME" in ext and envelope.body in ("8BITMIME", "BINARYMIME"):
            line += " BODY=8BITMIME"
        if "DSN" in ext:
            if envelope.envid:
                line += " ENVID=" + xtextEncode(envelope.envid)
            if envelope.ret in ("FULL", "HDRS"):
                line += f" RET={envelope.ret}"
        if needUtf8:
            line += " SMTPUTF8"
        return line

    def _rcptCommand(self, rcpt, needUtf8):
        line = f"RCPT TO:<{self._path(rcpt.address)}>"
        if "DSN" in self.extensions:
            orcpt = self._orcpt(rcpt, needUtf8)
            if orcpt:
                line += " ORCPT=" + orcpt
            if rcpt.notify and set(rcpt.notify) <= _NOTIFY:
                line += " NOTIFY=" + ",".join(rcpt.notify)
        return line

    @staticmethod
    def _orcpt(rcpt, needUtf8):
        if rcpt.orcpt:
            addrType, semi, address = rcpt.orcpt.partition(";")
            if semi and address and _ADDR_TYPE.match(addrType):
                if addrType.lower() == "utf-8":
                    return "utf-8;" + _uxtext(address)
                return addrType + ";" + xtextEncode(address)
        if rcpt.original:
            if needUtf8 and not rcpt.original.isascii():
                return "utf-8;" + _uxtext(rcpt.original)
            return "rfc822;" + xtextEncode(rcpt.original)
        return None

    def _path(self, address):
        """
        The address as it goes between <>: with smtp_quote_rfc821_envelope
        the local part is (re)quoted when it needs it (mta.address.formatAddress).

        @raise ValueError: control characters, or a domain with white space
            or angle brackets, or (without quoting) a local part that would
            need quotes.
        """
        if not address:
            return ""
        if _hasControl(address):
            raise ValueError("control character in address")
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        if _BAD_DOMAIN.search(domain):
            raise ValueError("bad domain")
        match = _QUOTED_LOCAL.match(local)
        unquoted = _UNQUOTE.sub(r"\1", match.group(1)) if match else local
        formatted = formatAddress(Address(unquoted, domain))
        if self.settings.quoteRfc821Envelope:
            return formatted
        if match or formatted == address:
            return address
        raise ValueError("local part needs quoting")

    # -- the end of a session -----------------------------------------------------------------

    async def _reset(self, stage):
        self._stage = stage
        try:
            reply = await self._command("RSET", self.settings.timeouts.rset)
        except _Broken:
            self._abort()
            return False
        if reply.positive:
            return True
        await self._quit()
        return False

    async def _quit(self):
        if self._failure is not None or self._closing:
            if not self._closing:
                self._abort()
            return
        self._stage = _QUIT
        try:
            self._send(b"QUIT\r\n", 1)
        except _Broken:
            self._abort()
            return
        await self._quitReply()

    async def _quitReply(self):
        """After QUIT went out: wait for its reply unless smtp_skip_quit_response, then close."""
        if not self.settings.skipQuitResponse:
            self._stage = _QUIT
            try:
                await self._read(self.settings.timeouts.quit)
            except _Broken:
                pass
        if not self._closing:
            self._close()
