"""mta.smtpd.starttls - STARTTLS (RFC 3207) and wrapper mode in the SMTP server.

StartTLSCommands is mixed into the session (mta.smtpd.protocol.SMTPServer)
beside the other commands.  It owns everything TLS in a session:

    EHLO        STARTTLS is offered when the listener has a certificate,
                smtpd_tls_security_level is may or encrypt, TLS is not yet
                active and smtpd_discard_ehlo_keywords does not hide it
                (Postfix's place: after ETRN, before AUTH)
    STARTTLS    501 5.5.4 Syntax: STARTTLS        with an argument
                502 5.5.1 Error: command not implemented   when not offered
                454 4.7.0 TLS not available due to local problem
                                                  encrypt without a certificate
                503 5.5.1 Error: MAIL transaction in progress
                554 5.5.1 Error: TLS already active
                454 4.7.0 Error: too many new TLS sessions from name[addr]
                                  past smtpd_client_new_tls_session_rate_limit
                220 2.0.0 Ready to start TLS, then the handshake; a new
                (not resumed) session is counted (mta.smtpd.anvil), and
                past the limit gets 421 4.7.0 and a close
    encrypt     MAIL, VRFY, ETRN (and AUTH) before TLS:
                530 5.7.0 Must issue a STARTTLS command first
    wrapper     smtpd_tls_wrappermode: the handshake starts at connect;
                the banner is written into TLS and leaves after it

After the 220 the session reads nothing more in plaintext: whatever the
client sent behind STARTTLS (in the same read, or before the handshake)
is thrown away and logged, never executed, and input stays stopped until
the handshake is over.  Then the session starts over (RFC 3207 4.2): a
fresh transaction, no HELO/EHLO, no AUTH; SessionState.tlsActive is set
and SessionState.tls holds the TlsInfo (mta.tls.info) that the log, the
Received: header and the restrictions read.  smtpd_starttls_timeout limits
the handshake; a handshake that fails or times out is logged ("SSL_accept
error from name[addr]: ...") and the connection is closed; no queue file
exists at that point (STARTTLS is refused inside a transaction).

With smtpd_tls_loglevel >= 1 a handshake is logged as Postfix does:
"Anonymous TLS connection established from name[addr]: TLSv1.3 with cipher
... (256/256 bits) key-exchange X25519 server-signature RSA-PSS (2048
bits)" (Untrusted or Trusted with a client certificate, and a line with
the certificate's names and fingerprints).

SECURITY
    Plaintext injected after STARTTLS is the classic attack (CVE-2011-0411
    and its kin): it is dropped.  Nothing learnt before TLS survives it.
    A client certificate is only trusted when it verifies against
    smtpd_tls_CAfile/CApath (mta.tls.context).

CONFIGURATION
    mta.config.settings.tls (TlsSettings), through the factory's
    C{tlsSettings} and C{tls} (an mta.tls.context.ServerTLS, None when TLS
    is off).

DEVIATIONS
    Under encrypt the 530 comes before any other check of MAIL, VRFY and
    ETRN.  A STARTTLS pipelined behind other commands is accepted (the
    commands before it are answered first); Postfix does the same.  A
    transport without TLS (standard I/O, mta-sendmail -bs) never offers
    STARTTLS and ignores wrapper mode.  In wrapper mode a client past
    smtpd_client_new_tls_session_rate_limit is refused after the handshake
    (421), where Postfix closes the connection before it ("Refusing TLS
    service request").
"""

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import ITLSTransport
from twisted.logger import Logger

from mta.model import Reply
from mta.tls.info import TlsInfo

log = Logger()

# Commands refused before TLS under smtpd_tls_security_level = encrypt (Postfix's smtpd).
NEED_TLS = frozenset({"MAIL", "VRFY", "ETRN", "AUTH"})
R_NEED_TLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")


class StartTLSCommands:
    """STARTTLS, wrapper mode and the encrypt level; mixed into mta.smtpd.protocol.SMTPServer."""

    _handshaking = False  # between STARTTLS's 220 (or connect, in wrapper mode) and the end of the handshake
    _handshakeTimer = None
    _handshakeWhere = None  # "STARTTLS" or "CONNECT", for the failure's log line
    _greetingHeld = False  # wrapper mode: the banner waits for the handshake

    # -- hooks called by the session ----------------------------------------------

    def _startTlsOffered(self):
        """Is STARTTLS offered now (and accepted)?"""
        return (self.factory.tls is not None and not self.session.tlsActive and not self._handshaking
                and "STARTTLS" not in self.ehloSettings.discardEhloKeywords and ITLSTransport.providedBy(self.transport))

    def _ehloKeywords(self, lines):
        """The EHLO keyword lines with STARTTLS in Postfix's place, when offered."""
        if not self._startTlsOffered():
            return lines
        lines = list(lines)
        for index, line in enumerate(lines):
            if line.split(" ", 1)[0] not in ("PIPELINING", "SIZE", "VRFY", "ETRN"):
                lines.insert(index, "STARTTLS")
                return tuple(lines)
        return (*lines, "STARTTLS")

    def _tlsGate(self, verb):
        """The 530 for a command that needs TLS first under encrypt, else None."""
        if verb in NEED_TLS and self.factory.tlsSettings.level == "encrypt" and not self.session.tlsActive:
            return self._fault("protocol", R_NEED_TLS)
        return None

    def _startWrapperMode(self):
        """smtpd_tls_wrappermode: TLS from the first byte (called first thing at connect)."""
        if self.factory.tls is not None and self.factory.tlsSettings.wrapperMode:
            if not ITLSTransport.providedBy(self.transport):  # standard I/O (mta-sendmail -bs): no TLS
                return
            self._beginHandshake("CONNECT")

    def _greetAfterHandshake(self):
        """
        Wrapper mode: hold the banner until the handshake is done (True).  Written
        earlier it would sit in the TLS layer's buffer, which pauses the session as
        its producer, which stops reading the socket: the handshake could not finish.
        """
        if self._handshaking and self._handshakeWhere == "CONNECT":
            self._greetingHeld = True
            return True
        return False

    def _tlsConnectionLost(self, reason):
        """The connection ended: during a handshake that is its failure."""
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None
        if self._handshaking and not self._closing:
            self._handshaking = False
            error = reason.getErrorMessage() if reason is not None else "lost connection"
            self.factory.maillog.emit(f"SSL_accept error from {self.session.client}: {error}",
                                      client=self.session.client)

    # -- STARTTLS ---------------------------------------------------------------------

    def smtp_STARTTLS(self, arg):
        if arg:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: STARTTLS"))
        if self.transaction.sender is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
        if self.session.tlsActive:
            return self._fault("protocol", Reply(554, "5.5.1", "Error: TLS already active"))
        if not self._startTlsOffered():
            if self.factory.tlsSettings.level == "encrypt" and self.factory.tls is None:
                return self._fault("software", Reply(454, "4.7.0", "TLS not available due to local problem"))
            return self._fault("protocol", Reply(502, "5.5.1", "Error: command not implemented"))
        if self.settings.newTlsRateLimit:  # smtpd_client_new_tls_session_rate_limit (mta.smtpd.anvil)
            return self._startTlsRateChecked()
        return self._startTls()

    async def _startTlsRateChecked(self):
        rate = await self._rateExceeded("newtls", self.settings.newTlsRateLimit, count=False)
        if rate is None:
            return self._startTls()
        client = self.session.client
        self.factory.maillog.emit(f"warning: Refusing STARTTLS request from {client} for service "
                                  f"{self.factory.listenerName}", client=client)
        return self._fault("policy", Reply(454, "4.7.0", f"Error: too many new TLS sessions from {client}"))

    def _startTls(self):
        if self._closing:
            return None
        self._count("starttls", True)
        self._reply(Reply(220, "2.0.0", "Ready to start TLS"))
        self._flush()  # the 220 goes out in plaintext, before the TLS layer
        self._discardPlaintext()
        self._beginHandshake("STARTTLS")
        return None

    def _discardPlaintext(self):
        """RFC 3207 / pitfalls: nothing the client sent in plaintext after STARTTLS is executed."""
        if self._buffer:
            self.factory.maillog.emit(
                f"warning: {self.session.client}: discarding {len(self._buffer)} bytes of plaintext "
                f"pipelined after STARTTLS", client=self.session.client)
            self._buffer = b""
        self._skipLine = False

    def _beginHandshake(self, where):
        self._directSocket = None  # from now on every byte goes through the TLS layer
        self._handshaking = True
        self._handshakeWhere = where
        if where == "STARTTLS":
            self._waiting = True  # no input is processed until the handshake is over
        self._handshakeTimer = self.factory.clock.callLater(
            self.factory.tlsSettings.starttlsTimeout, self._handshakeTimeout)
        self.transport.startTLS(self.factory.tls)

    def _handshakeTimeout(self):
        self._handshakeTimer = None
        if not self._handshaking:
            return
        self._handshaking = False
        client = self.session.client
        self.factory.maillog.emit(f"SSL_accept error from {client}: timed out", client=client)
        if not self._closing:
            self._logAbort("timeout")
        self._closing = True
        self._unregister()
        self.transport.abortConnection()

    def handshakeCompleted(self):
        """Twisted's IHandshakeListener: the TLS handshake is done; the session starts over."""
        if self._closing or not self._handshaking:
            return
        if self._handshakeTimer is not None and self._handshakeTimer.active():
            self._handshakeTimer.cancel()
        self._handshakeTimer = None
        self._handshaking = False
        factory, session = self.factory, self.session
        tls, settings = factory.tls, factory.tlsSettings
        connection = self.transport.getHandle()
        info = TlsInfo.fromConnection(connection, trusted=tls.trusted(connection), digest=settings.fingerprintDigest)
        if self._handshakeWhere == "STARTTLS":
            self._chatReset()
        self._resetTransaction()
        session.startedTLS(info)
        if settings.loglevel >= 1:
            certificate = info.certificateLine(session.client)
            if certificate is not None:
                factory.maillog.emit(certificate, client=session.client)
            factory.maillog.emit(info.logLine(session.client), client=session.client)
        if self.settings.newTlsRateLimit and not info.reused:
            d = Deferred.fromCoroutine(self._countNewTls())
            d.addErrback(self._internalError)
            return
        self._afterHandshake()

    async def _countNewTls(self):
        """A new TLS session (not a resumption): counted; past the limit 421 and a close (Postfix's)."""
        rate = await self._rateExceeded("newtls", self.settings.newTlsRateLimit)
        if self._closing:
            return
        if rate is None:
            self._afterHandshake()
            return
        client = self.session.client
        self.factory.maillog.emit(f"warning: New TLS session rate limit exceeded: {rate} from {client} for service "
                                  f"{self.factory.listenerName}", client=client)
        self._fault("policy")
        self._reply(Reply(421, "4.7.0", f"{self.hostname} Error: too many new TLS sessions from {client}"))
        self._close()

    def _afterHandshake(self):
        if self._handshakeWhere == "STARTTLS":
            self._waiting = False
            self._process()
        elif self._greetingHeld:
            self._greetingHeld = False
            self._greet()
