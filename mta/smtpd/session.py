"""mta.smtpd.session - the state of one SMTP session and of its mail transaction.

An SMTP server session (mta.smtpd.protocol.SMTPServer) keeps two kinds of
state apart from its protocol mechanics (buffers, mode, deadlines,
replies):

    SessionState   who the client is and what it said of itself: address,
                   port and name, the HELO/EHLO name and the protocol it
                   chose, TLS and SASL, its error counters.  Lives for the
                   connection.
    Transaction    one mail transaction (RFC 5321 3.3): the sender and its
                   MAIL parameters, the recipients, a hold reason, the
                   header rewriting context, the message being written and
                   the DATA/BDAT reading state.  Replaced by a fresh one at
                   every reset.

What a reset keeps, as RFC 5321 and Postfix's smtpd (mail_reset,
rcpt_reset, helo_reset) say:

    RSET (4.1.1.5)         a fresh Transaction; SessionState unchanged
                           (the HELO/EHLO name and protocol stay: "the
                           state as right after HELO/EHLO")
    HELO, EHLO (4.1.1.1)   a fresh Transaction, as if RSET; the session's
                           helo and protocol are replaced; TLS, SASL and
                           the error counters stay (Postfix's helo_reset
                           touches none of them)
    end of DATA, BDAT LAST a fresh Transaction (the message goes on to the
                           queue on its own); SessionState unchanged, but a
                           message queued forgives the client's errors
                           (Postfix: error_count and junk_cmds to 0)
    STARTTLS               RFC 3207 4.2: a fresh Transaction, and the
                           session forgets what the client said (helo None,
                           protocol SMTP, as Postfix's helo_reset) and any
                           AUTH (saslUsername None) until it sends EHLO
                           again; tlsActive set, tls the TlsInfo
                           (startedTLS(), mta.smtpd.starttls).  AUTH sets
                           saslUsername (RFC 4954 4: once per session).

The Received header's protocol name derives from the session (RFC 3848,
RFC 6531): receivedProtocol().

SECURITY
    The HELO name is stored sanitized (mta.maillog.sanitize) by the
    session; everything else here was parsed by mta.address before it is
    stored.

CONFIGURATION
    None.
"""

import attrs

__all__ = ["SessionState", "Transaction"]


@attrs.define
class SessionState:
    """
    One connection's client and what it said of itself.

    clientAddress  the peer's IP address as text ("" when unknown)
    clientPort     the peer's port (0 when unknown)
    clientName     its verified name (mta.smtpd.peername: reverse lookup and
                   forward confirmation at connect), else "unknown", as
                   Postfix names an unverified client; mta-sendmail -bs
                   sets "localhost"
    reverseClientName
                   the name the reverse lookup gave, unverified, or "unknown"
    nameStatus, reverseNameStatus
                   Postfix's codes of those lookups: 2 found, 4 a temporary
                   failure, 5 not found (or, for the name, not confirmed)
    helo           the HELO/EHLO argument, sanitized; None before any
    protocol       "SMTP" before EHLO and after HELO, "ESMTP" after EHLO:
                   the envelope's protocol and the log's proto=; whether
                   ESMTP extensions are offered (extended)
    tlsActive      STARTTLS completed (the S of ESMTPS); set by STARTTLS
                   or at connect in wrapper mode
    tls            the TlsInfo of the session's TLS (mta.tls.info: protocol,
                   cipher, bits, key exchange, client certificate), or None
    saslUsername   the AUTH identity (the A of ESMTPA), None without AUTH
    saslMethod     the AUTH mechanism that logged in (PLAIN, LOGIN, ...), or None
    bareNewline    the smtpd_forbid_bare_newline mode for this client:
                   reject, normalize (an excluded client) or no
    earlyTalker    caught talking before the greeting under
                   postscreen_greet_action = enforce: its RCPTs get 550
    errors         Postfix's error_count: errors so far (the tarpit and
                   the hard limit count them)
    junk           Postfix's junk_cmds: NOOP, VRFY, ETRN and RSET so far
    commands       verb (lower case) -> (ok, total), for the disconnect
                   line's "ehlo=1 mail=1/2 ... commands=N/M"
    """

    clientAddress: str = ""
    clientPort: int = 0
    clientName: str = "unknown"
    reverseClientName: str = "unknown"
    nameStatus: int = 5
    reverseNameStatus: int = 5
    helo: str | None = None
    protocol: str = "SMTP"
    tlsActive: bool = False
    tls: object = None
    saslUsername: str | None = None
    saslMethod: str | None = None
    bareNewline: str = "reject"
    earlyTalker: bool = False
    errors: int = 0
    junk: int = 0
    commands: dict = attrs.Factory(dict)
    # The restriction stages run at connect and HELO without smtpd_delay_reject (mta.smtpd.policy):
    accessDenied: object = None  # the client stage's refusal: every command but QUIT gets 503 (Postfix)
    deferIfPermit: dict = attrs.Factory(dict)  # stage -> the DEFER_IF_PERMIT reply it raised
    stageEffects: object = None  # the Evaluation of those stages (hold, discard, redirect, bcc)
    illegalPipelining: bool = False  # reject_unauth_pipelining: commands sent ahead where not allowed
    debugPeer: bool = False  # debug_peer_list: the dialog is logged line by line
    ehloView: object = None  # smtpd_discard_ehlo_keyword_address_maps: this client's EHLO settings; None: the listener's

    @property
    def client(self):
        """The client as Postfix's log lines name it: name[address]."""
        return f"{self.clientName}[{self.clientAddress}]"

    @property
    def extended(self):
        """ESMTP (EHLO given): the EHLO extensions are offered."""
        return self.protocol != "SMTP"

    def hello(self, name, protocol):
        """HELO (protocol SMTP) or EHLO (ESMTP) with the sanitized C{name}."""
        self.helo = name
        self.protocol = protocol

    def startedTLS(self, info):
        """The TLS handshake is done (C{info}: its TlsInfo): forget HELO/EHLO and AUTH (RFC 3207 4.2)."""
        self.helo = None
        self.protocol = "SMTP"
        self.logout()
        self.tlsActive = True
        self.tls = info

    def logout(self):
        """Forget the AUTH login (STARTTLS starts the session over: RFC 3207 4.2)."""
        self.saslUsername = self.saslMethod = None

    def receivedProtocol(self, smtputf8=False):
        """
        The protocol our Received header names (RFC 3848, RFC 6531): SMTP,
        ESMTP, or UTF8SMTP for a transaction with SMTPUTF8 (C{smtputf8});
        S with TLS and A with AUTH are added for ESMTP, as Postfix does.
        """
        if self.protocol != "ESMTP":
            return self.protocol
        name = "UTF8SMTP" if smtputf8 else "ESMTP"
        return name + ("S" if self.tlsActive else "") + ("A" if self.saslUsername else "")

    def count(self, verb, ok):
        """One more C{verb} command, successful or not, for the disconnect line."""
        verb = verb.lower()
        good, total = self.commands.get(verb, (0, 0))
        self.commands[verb] = (good + bool(ok), total + 1)

    def forgive(self):
        """A message was queued: Postfix forgives the client's errors and junk commands."""
        self.errors = self.junk = 0

    def commandSummary(self):
        """The end of Postfix's disconnect line: "ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4"."""
        counts = " ".join(
            f"{verb}={ok}" if ok == total else f"{verb}={ok}/{total}" for verb, (ok, total) in self.commands.items()
        )
        total = sum(t for _, t in self.commands.values())
        okTotal = sum(o for o, _ in self.commands.values())
        commands = f"commands={okTotal}" if okTotal == total and total else f"commands={okTotal}/{total}"
        return f"{counts} {commands}" if counts else commands


@attrs.define
class Transaction:
    """
    One mail transaction, from MAIL FROM to its end (end of data, BDAT
    LAST, RSET, HELO/EHLO, a failed MAIL lookup, the end of the session).

    sender        the MAIL FROM address (mta.address.Address, completed by
                  mta.rewrite; the null sender is an Address too); None:
                  no MAIL yet
    mailParams    its parameters (mta.address.MailParameters: SIZE, BODY,
                  SMTPUTF8, RET, ENVID, AUTH)
    recipients    the accepted recipients (mta.model.Recipient), in order
    hold          the reason of the first HOLD action (the message goes to
                  the hold queue), None: none
    headerRewrite the header rewriting context chosen at MAIL FROM
                  (mta.rewrite; local_header_rewrite_clients), None: the
                  headers stay as they are
    rcptTried     a RCPT was given (DATA without recipients is then 554 no
                  valid recipients, not 503 need RCPT)
    overshoot     RCPTs refused over smtpd_recipient_limit
    message       the queue file being written (an IncomingTransaction,
                  mta.smtpd.message) from DATA or the first BDAT; None
                  before, and once its end was handed to the queue
    reader        DATA's DataReader (mta.smtpd.data) while in DATA
    content       BDAT's ContentReader, across the chunks
    bdatBytes     BDAT content bytes received so far
    bdatFailure   the Reply that failed the BDAT transaction: later chunks
                  are discarded up to LAST
    prepend       the headers PREPEND actions of the restrictions gave
    discard, redirect, bcc
                  the DISCARD, REDIRECT and BCC actions of the restrictions
    """

    sender: object = None
    senderGiven: object = None  # the sender as the client gave it, before mta.rewrite (restriction replies)
    mailParams: object = None
    recipients: list = attrs.Factory(list)
    hold: str | None = None
    headerRewrite: object = None
    rcptTried: bool = False
    overshoot: int = 0
    message: object = None
    reader: object = None
    content: object = None
    bdatBytes: int = 0
    bdatFailure: object = None
    prepend: list = attrs.Factory(list)  # headers a PREPEND action gave (before our Received:, as Postfix)
    discard: str | None = None  # a DISCARD action's reason: accepted, then dropped; nothing more is checked
    redirect: str | None = None  # a REDIRECT target: it replaces every recipient at the end of data
    bcc: list = attrs.Factory(list)  # BCC targets: added as recipients at the end of data

    @property
    def smtputf8(self):
        """MAIL FROM had SMTPUTF8."""
        return self.mailParams is not None and self.mailParams.smtputf8

    @property
    def queueId(self):
        """The queue id of the message being written, or None."""
        return self.message.queueId if self.message is not None else None

    @property
    def contentBytes(self):
        """The message content bytes received so far (DATA or BDAT), for Postfix's abort log line."""
        return self.reader.received if self.reader is not None else self.bdatBytes

    def takeMessage(self):
        """Hand the message over (to its end and commit): the transaction holds it no longer."""
        message, self.message = self.message, None
        return message

    def abort(self):
        """Give up the message being written, if any (the queue file is removed)."""
        message = self.takeMessage()
        if message is not None:
            message.abort()
