"""mta.delivery.smtpclient - one SMTP or LMTP client session (the protocol half of smtp(8)/lmtp(8)).

NAME
    SMTPClientSession - deliver a DeliveryRequest over a connection that
    the caller has already made (TCP or UNIX); the caller picks the hosts,
    connects, tries the next host when told to, and caches connections.

SYNOPSIS
    settings = load(path).settings.smtpClient           # or .lmtpClient
    session = SMTPClientSession(settings, reactor)      # any IReactorTime
    ... connect it (endpoint.connect / connectProtocol) ...
    outcome = await session.deliver(request, chunks, RemoteHost("mx.example.net", "192.0.2.1", 25))
    # outcome.results: one mta.model.RecipientResult per request recipient
    # outcome.retry / outcome.tryNextHost: recipients to try at the next host
    # outcome.reusable: the connection is open and idle (deliver() again,
    #   after reset() if it sat in a cache; else quit())

DESCRIPTION
    This module is the session's state machine; its parts are

        mta.delivery.smtpconnection  replies in, commands and content out,
                                     one deadline per reply, the transcript
        mta.delivery.smtpreply       the reply parser (bounded memory)
        mta.delivery.smtpcommands    MAIL FROM / RCPT TO and their ESMTP
                                     parameters, the EHLO keywords
        mta.delivery.smtpresults     per-recipient results and their texts
        mta.delivery.dotstuff        the content encoder

    Greeting (220; 4xx, or 5xx with smtp_skip_5xx_greeting, defers and
    asks for the next host unless smtp_skip_4xx_greeting = no; 5xx
    otherwise bounces), EHLO (LHLO for LMTP;
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
        offered (mta.delivery.smtpcommands); DATA.  With PIPELINING, MAIL,
        every RCPT and DATA go out in one write and the replies are matched
        in order; without it, one command at a time, stopping when MAIL or
        every RCPT is refused.  A 552 reply to RCPT is RFC 821's "too many
        recipients" and counts as 452 (RFC 5321 4.5.3.1.10): that
        recipient is deferred with the enhanced code made 4.X.X ("host
        mx[192.0.2.1] said: 552 5.5.3 Error: too many recipients (in reply
        to RCPT TO command)", dsn 4.5.3), the accepted ones get the
        message, and the queue manager (or the next MX host) takes the
        rest later.  552 stays permanent at MAIL, DATA and end of data
        ("too much mail data");
        After 354 with no accepted recipient (pipelining), an empty message
        (".") is sent, as RFC 2920 says.  An address verification probe
        (Envelope.probe, mta.verify) sends no DATA: each recipient's RCPT
        reply is its result (2xx "sent", as Postfix's smtp(8) for
        DEL_REQ_FLAG_MTA_VRFY), and the session goes on with RSET (a
        cached connection) or QUIT;
      * the content, pulled from the caller's chunk source, through
        mta.delivery.dotstuff (CRLF only, dots doubled across chunk
        boundaries, smtp_line_length_limit), written in pieces of at most
        64 KiB while the transport asks for more
        (mta.delivery.smtpconnection);
      * the end-of-data reply: SMTP one for all accepted recipients, LMTP
        one per accepted recipient in RCPT order, each recorded on its own.
        A recipient is "sent" only on a 2xx end-of-data reply to the
        complete message;
      * then QUIT (pipelined behind the final "." when PIPELINING is on;
        smtp_skip_quit_response), or, with keepOpen, nothing after a
        finished transaction and RSET after an aborted one, leaving the
        connection for reuse.

    A malformed reply (garbage, a code outside 200-599, a multi-line reply
    whose lines carry different codes such as "250-a" then "550 b", a
    reply nobody asked for) is a protocol error in whatever phase it
    comes: the pending recipients are deferred with 4.5.0, "malformed
    multi-line response from mx[192.0.2.1] while sending RCPT TO" (or
    "non-SMTP response from ...", "unexpected response from ..."), a
    warning with the offending line goes to the mail log, and the
    connection is dropped.

    Results are worded as Postfix words them (mta.delivery.smtpresults):
    "host mx[192.0.2.1] said: 550 5.1.1 <x@y>: unknown (in reply to RCPT
    TO command)", "lost connection with mx[192.0.2.1] while sending
    message body", "conversation with mx[192.0.2.1] timed out while
    sending MAIL FROM", "host mx[192.0.2.1] refused to talk to me: 421
    ...".

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
    content) and each reply line it reads ("In:  "), and notes the
    protocol class where Postfix's smtp_chat.c and smtp_trouble.c set
    MAIL_ERROR_PROTOCOL (mta.delivery.smtpconnection,
    mta.delivery.smtpresults).  The caller (mta.delivery.smtp) sends it to
    the postmaster.

    STARTTLS (mta.delivery.smtpstarttls) comes after the EHLO reply is
    parsed and before MAIL: by smtp_tls_security_level, STARTTLS, its 220
    (whatever follows it in plaintext is dropped), _discardInput() so that
    nothing read before the handshake is trusted, TLS on the transport,
    the certificate judged (mta.delivery.smtptls), then EHLO again; with
    smtp_tls_wrappermode the handshake comes before the greeting.

SECURITY
    Everything read is untrusted.  Reply lines are cut at
    line_length_limit (2048) bytes, the rest of a longer line is discarded
    while it arrives, and a reply keeps at most about 2 x line_length_limit
    bytes however many lines it has (mta.delivery.smtpreply): an endless
    line or an endless multi-line reply costs no memory, only the phase's
    deadline, which partial input does not renew.  Reply text is decoded
    as UTF-8 with replacement and every non-printable character becomes
    "?", so a server cannot put a line end in a log line, a queue file or
    a DSN.  Every wait has a deadline, every write waits for the
    transport, and memory per session is bounded.  Commands never carry
    CR, LF or NUL: addresses with control characters are refused (bounced
    5.1.7 / 5.1.3 without being sent), DSN values are re-encoded
    (mta.delivery.smtpcommands), and a final check refuses any command
    with a line end in it.

CONFIGURATION
    A mta.config.settings.client.SmtpClientSettings (``smtpClient``) or
    LmtpClientSettings (``lmtpClient``): smtp_helo_name (lmtp_lhlo_name),
    myhostname, smtp_helo_timeout, smtp_mail_timeout, smtp_rcpt_timeout,
    smtp_data_init_timeout, smtp_data_xfer_timeout, smtp_data_done_timeout,
    smtp_rset_timeout, smtp_quit_timeout, smtp_discard_ehlo_keywords,
    smtp_never_send_ehlo, smtp_always_send_ehlo, smtp_skip_5xx_greeting,
    smtp_skip_quit_response, smtp_quote_rfc821_envelope,
    smtp_line_length_limit, lmtp_assume_final, smtp_tls_*, those of
    mta.delivery.smtpstarttls and smtpquirks, line_length_limit (the
    reply bound, as Postfix's smtp_chat.c uses it); the lmtp_* forms for
    LMTP.  REQUIRETLS (RFC 8689): requiretls_enable and
    smtp_requiretls_policy, through three hooks of mta.delivery.requiretls
    (after the first EHLO, after a failed STARTTLS, before MAIL FROM).

DEVIATIONS FROM POSTFIX
    * The session sends the content its caller gives it: for a server
      without 8BITMIME the smtp transport converts 8-bit MIME to
      quoted-printable first (mta.delivery.mime7bit; off with
      disable_mime_output_conversion = yes).  BODY=7BIT is never sent (an
      envelope that says 7BIT may still hold 8-bit data that the server
      accepted without BODY=); BINARYMIME mail goes out as BODY=8BITMIME
      through DATA, its line ends normalised (TODO: BDAT).
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

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mta.delivery import requiretls
from mta.delivery.dotstuff import DotStuffer
from mta.delivery.smtpcommands import mailCommand, parseEhlo, rcptCommand
from mta.delivery.smtpconnection import REPLY_LINE_LIMIT, WRITE_SIZE, ClientConnection, _Broken
from mta.delivery.smtpquirks import ServerQuirks
from mta.delivery.smtpsasl import SaslAuth
from mta.delivery.smtpstarttls import StartTLS
from mta.delivery.smtpreply import SMTPReply
from mta.delivery.smtpresults import RemoteHost, SessionOutcome, Transaction
from mta.delivery.tlspolicy import SitePolicy

__all__ = ["REPLY_LINE_LIMIT", "WRITE_SIZE", "RemoteHost", "SMTPClientSession", "SMTPReply", "SessionOutcome"]

log = Logger()

_GREETING = "receiving the initial server greeting"
_MAIL = "sending MAIL FROM"
_RCPT = "sending RCPT TO"
_DATA = "sending DATA command"
_BODY = "sending message body"
_DOT = "sending end of data -- message may be sent more than once"
_FINAL_RSET = "sending final RSET"
_RSET_PROBE = "sending RSET probe"
_QUIT = "sending QUIT"


class _ContentError(Exception):
    """The caller's chunk source failed."""


class SMTPClientSession(ServerQuirks, SaslAuth, StartTLS, ClientConnection):
    """
    One client session on one connection; see the module docstring.

    @ivar settings: the SmtpClientSettings or LmtpClientSettings.
    @ivar esmtp: the server took EHLO (LHLO).
    @ivar serverName: the first word of the EHLO/HELO reply.
    @ivar extensions: EHLO keyword (upper case) -> its parameters.
    @ivar sizeLimit: the server's SIZE; 0: none announced.
    """

    def __init__(self, settings, clock, maillog=None, transcript=None, tls=None, tlsLevel=None, site=None,
                 policy=None, sasl=None, destination=""):
        super().__init__(clock, settings.replyLimit, settings.heloTimeout, maillog, transcript)
        self.settings = settings
        self._clock = clock
        # The TLS policy of this host (mta.delivery.tlspolicy.SitePolicy; the transport's own by
        # default) and the TlsPolicy that made it (its judge() and record()); None in unit tests.
        self.site = site if site is not None else SitePolicy(tls=settings.tls)
        self.tlsPolicy = policy
        self.tls = tls  # a mta.delivery.smtptls.ClientTLS for site.tls; None: made on first use
        self.tlsLevel = tlsLevel or self.site.tls.level  # "none" for a plaintext retry under may
        self.tlsInfo = None  # mta.tls.info.TlsInfo once TLS is up
        self.tlsVerdict = None  # mta.delivery.smtptls.TlsVerdict once TLS is up
        self.tlsFailed = False  # the handshake failed (under may the caller may retry in plaintext)
        self._busy = False
        self._greeted = False
        self._stage = _GREETING
        self.esmtp = False
        self.serverName = ""
        self.extensions = {}
        self.sizeLimit = 0
        self.sasl = sasl  # a mta.delivery.smtpsasl.SaslClient (the transport's); None: no AUTH
        self.saslDestination = destination  # the next-hop as written (smtp_sasl_password_maps)


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
        tx = Transaction(request, host, self.transcript.error if self.transcript is not None else None)
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
        if self.site.tls.wrapperMode and self.tlsLevel != "none":
            # smtp_tls_wrappermode: TLS from the connect, the greeting inside it.
            if not await self._tlsHandshake(tx):
                return False
            greeting = await self._read(s.heloTimeout)
        else:
            greeting = await self._read(None)
        if not greeting.positive:
            dsn = greeting.dsn
            if greeting.code // 100 == 5 and s.skip5xxGreeting:
                dsn = "4" + dsn[1:]
            text = f"host {tx.host.namaddr} refused to talk to me: {greeting.text}"
            tx.refused(tx.pending(), greeting, text, dsn, reason=True)
            if greeting.code // 100 == 4 and not s.skip4xxGreeting:
                tx.retry.clear()  # smtp_skip_4xx_greeting = no: defer now, no next host
            return False
        await self._pixCheck(tx, greeting)
        words = " ".join(line[4:] for line in greeting.lines).upper().split()
        esmtp = s.lmtp or (s.alwaysSendEhlo or "ESMTP" in words[1:]) and not s.neverSendEhlo \
            and "disable_esmtp" not in self.pixFeatures
        if not await self._hello(tx, bestMx, esmtp):
            return False
        if not requiretls.beforeStarttls(self, tx):  # RFC 8689: no STARTTLS is a 5.7.30 (next MX)
            return False
        started = await self._startTLS(tx)
        if started is None:
            requiretls.afterStarttlsFailure(self, tx)  # a REQUIRETLS message bounces (5.7.10), never waits
            return False
        if started:
            # After the TLS handshake there is no greeting: EHLO again, trusting nothing from before.
            if not await self._hello(tx, bestMx, True):
                return False
        self._tlsSettle()
        if not await self._saslLogin(tx):  # mta.delivery.smtpsasl: AUTH after the final EHLO
            return False
        self._greeted = True
        return True

    async def _hello(self, tx, bestMx, esmtp):
        """EHLO (HELO when refused), or LHLO; parse the keywords and check for a mail loop."""
        s = self.settings
        namaddr = tx.host.namaddr
        if s.lmtp:
            self._stage = "performing the LHLO handshake"
            reply = await self._command(f"LHLO {s.heloName}", s.heloTimeout)
        else:
            reply = None
            if esmtp:
                self._stage = "performing the EHLO handshake"
                reply = await self._command(f"EHLO {s.heloName}", s.heloTimeout)
                if not reply.positive and reply.code != 421:
                    esmtp = False
            if not esmtp:
                self._stage = "performing the HELO handshake"
                reply = await self._command(f"HELO {s.heloName}", s.heloTimeout)
        if not reply.positive:
            tx.refused(tx.pending(), reply, f"host {namaddr} refused to talk to me: {reply.text}", reason=True)
            return False
        self.esmtp = esmtp
        self.serverName = (reply.lines[0][4:].split() or [""])[0]
        discard = await self._ehloDiscards(tx) if esmtp else frozenset()
        if discard is None:
            return False
        self.extensions, self.sizeLimit = parseEhlo(reply if esmtp else None, discard)
        self.ehloReply = reply if esmtp else None
        myself = s.myHostname or s.heloName
        if esmtp and not s.lmtp and self.serverName.lower() == myself.lower():
            log.warn("host {host} replied to HELO/EHLO with my own hostname {me}", host=namaddr, me=myself)
            status, dsn = ("bounced", "5.4.6") if bestMx else ("deferred", "4.4.6")
            tx.local(tx.pending(), status, dsn, f"mail for {tx.request.nexthop} loops back to myself",
                     retry=not bestMx)
            return False
        return True

    def _discardInput(self):
        """Forget everything read and not yet used (before a TLS handshake)."""
        self._discardReplies()
        self.extensions = {}
        self.sizeLimit = 0

    # -- the mail transaction ---------------------------------------------------------------

    async def _transaction(self, tx, content, keepOpen):
        """MAIL, RCPT, DATA, content, end of data; True if QUIT went out behind the "."."""
        s = self.settings
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
        sendRequireTls = requiretls.beforeMail(self, tx)  # RFC 8689: verified TLS, REQUIRETLS offered
        if sendRequireTls is None:
            return False
        try:
            mail = mailCommand(request, self.extensions, needUtf8, s.quoteRfc821Envelope, sendRequireTls) + self.saslMailParameter()
        except ValueError:
            tx.local(tx.pending(), "bounced", "5.1.7", "bad sender address syntax in the queue file")
            return False
        steps = [("MAIL", mail, None)]
        for rcpt in tx.pending():
            try:
                steps.append(("RCPT", rcptCommand(rcpt, self.extensions, needUtf8, s.quoteRfc821Envelope), rcpt))
            except ValueError:
                tx.local([rcpt], "bounced", "5.1.3", "bad recipient address syntax in the queue file", reason=False)
        if len(steps) == 1 or self._earlyReply(tx):
            return False
        probe = envelope.probe  # address verification (mta.verify): stop after the RCPT replies, never DATA
        if not probe:
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
            self._stage, timeout = {"MAIL": (_MAIL, s.mailTimeout), "RCPT": (_RCPT, s.rcptTimeout), "DATA": (_DATA, s.dataInitTimeout)}[kind]
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
                        if probe:
                            tx.sent(rcpt, reply)  # deliverable: the RCPT reply is the result
                    elif reply.code == 552:
                        # RFC 5321 4.5.3.1.10: 552 to RCPT is RFC 821's "too many
                        # recipients"; treat it as 452 (see DEVIATIONS).
                        tx.said([rcpt], reply, "RCPT TO command", dsn="4" + reply.dsn[1:])
                    else:
                        tx.said([rcpt], reply, "RCPT TO command")
            else:
                dataReply = reply
        if dataReply is None:  # a probe ends here: _deliver sends RSET (a cached connection) or QUIT
            return False
        if dataReply.code // 100 != 3:
            if accepted:
                tx.said(accepted, dataReply, "DATA command")
            return False
        if not accepted:
            # RFC 2920: the server took DATA though nothing is left; send an empty message.
            self._stage = _DOT
            self._send(b".\r\n", 1)
            await self._read(s.dataDoneTimeout)
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
                reply = await self._read(s.dataDoneTimeout)
                if reply.positive:
                    tx.sent(rcpt, reply)
                else:
                    tx.said([rcpt], reply, "end of DATA command")
        else:
            reply = await self._read(s.dataDoneTimeout)
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
        self.setTimeout(self.settings.dataXferTimeout)
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
            tail = await self._pixDelay(encoder.finish())  # smtp_pix_workarounds delay_dotcrlf
            tx.dotSent = True
            self._stage = _DOT
            self._expected += 1 if quit else 0
            if self.transcript is not None:
                self.transcript.sentLines(b".\r\nQUIT\r\n" if quit else b".\r\n")
            self.transport.write(tail + (b"QUIT\r\n" if quit else b""))
        finally:
            self._paused = False
            self.transport.unregisterProducer()
        if encoder.brokenLines:
            log.info("{queue_id}: breaking line > {limit} bytes with <CR><LF>SPACE",
                     queue_id=tx.request.queue_id, limit=self.settings.lineLengthLimit)

    # -- the end of a session -----------------------------------------------------------------

    async def _reset(self, stage):
        self._stage = stage
        try:
            reply = await self._command("RSET", self.settings.rsetTimeout)
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
                await self._read(self.settings.quitTimeout)
            except _Broken:
                pass
        if not self._closing:
            self._close()
