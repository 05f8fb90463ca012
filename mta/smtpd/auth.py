"""mta.smtpd.auth - the AUTH command of smtpd(8) (RFC 4954) and its SASL exchange.

SMTPAuth is mixed into the session (mta.smtpd.protocol.SMTPServer).  The
mechanisms and the backends are mta.sasl's; this module is the SMTP side:
what EHLO offers, the AUTH command's rules, base64 on the wire, the
continuation lines, and what a login leaves in the session.

EHLO offers "AUTH MECH..." (and with broken_sasl_auth_clients also
"AUTH=MECH...") when smtpd_sasl_auth_enable = yes, AUTH is not in
smtpd_discard_ehlo_keywords, the client is not in
smtpd_sasl_exceptions_networks, and, under smtpd_tls_auth_only, TLS is
active; the mechanisms are the backend's less those that the security
options drop (smtpd_sasl_tls_security_options under TLS).  MAIL takes
AUTH= whenever AUTH is enabled (RFC 4954 5; the value is recorded as the
sasl_sender, as Postfix does).

The AUTH command, checked in this order (Postfix's texts and codes):

    AUTH disabled or discarded      503 5.5.1 Error: authentication not enabled
    before EHLO                     503 5.5.1 Error: send EHLO first
    in a mail transaction           503 5.5.1 Error: MAIL transaction in progress
    smtpd_tls_auth_only, no TLS     504 5.5.4 Encryption required for requested authentication mechanism
    a second login                  503 5.5.1 Error: already authenticated
    no or too many arguments        501 5.5.4 Syntax: AUTH mechanism
    over smtpd_client_auth_rate_limit   450 4.7.1 Error: too many AUTH commands from ADDR
    a mechanism not offered         535 5.7.8 Error: authentication failed: Invalid authentication mechanism
    a response over the limit       500 5.5.6 SASL response limit exceeded
    a response that is not base64   501 5.5.2 Invalid base64 data in initial (continued) response
    "*" as a response               501 5.7.0 Authentication aborted
    wrong credentials               535 5.7.8 Error: authentication failed: authentication failure
    the backend is unavailable      454 4.7.0 Temporary authentication failure: ...
    success                         235 2.7.0 Authentication successful

An initial response "=" is an empty one (RFC 4954 4).  A challenge is "334
BASE64"; the next line is the client's response, never a command.  Every
refusal counts as an error (the tarpit of smtpd_error_sleep_time and the
hard error limit apply, as to any other error), so does every failed login;
a failure reads the same whether or not the user exists.  On success the
session has saslMethod and saslUsername (the Received protocol becomes
ESMTPA or ESMTPSA, the message's client= line and envelope carry the
login: mta.smtpd.message).

SECURITY
    The responses carry passwords: they never reach the mail log or the
    postmaster's transcript (_redact() turns them into "[response
    hidden]" before _heard() and the over-long-line warning see them).
    Every response is base64-checked and bounded by
    smtpd_sasl_response_limit before the backend sees it.  AUTH is neither
    offered nor accepted before TLS with smtpd_tls_auth_only = yes, which
    smtpd_tls_security_level = encrypt implies (as in Postfix).

CONFIGURATION
    mta.config.settings.sasl.SaslSettings: smtpd_sasl_auth_enable,
    smtpd_sasl_type, smtpd_sasl_path, smtpd_sasl_security_options,
    smtpd_sasl_tls_security_options, smtpd_tls_auth_only,
    smtpd_sasl_exceptions_networks, smtpd_sasl_response_limit,
    smtpd_sasl_service, broken_sasl_auth_clients, smtpd_client_auth_rate_limit
    and anvil_rate_time_unit (AUTH commands per client address per unit,
    counted by the listener's anvil, mta.smtpd.anvil;
    smtpd_client_event_limit_exceptions exempt);
    smtpd_discard_ehlo_keywords.

DEVIATIONS
    AUTH before EHLO (after HELO, or with no greeting) is refused with 503
    5.5.1 (Postfix accepts it after HELO): AUTH is an ESMTP extension.
    A response line over smtpd_sasl_response_limit is refused whole, as a
    command line over line_length_limit is (Postfix cuts it into pieces).
    The failure warning names no user (Postfix 3.5 logs sasl_username=).
    The AUTH rate is counted per listener in the process, not by a shared
    anvil service; a reload starts the counts afresh.  Only AUTH commands
    that pass the protocol checks above are counted (Postfix counts every
    AUTH command).
"""

import base64
import binascii

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mta.maillog import sanitize
from mta.model import Reply
from mta.sasl import Challenge, ClientInfo, Success, allowed

log = Logger()

HIDDEN = b"[response hidden]"
_LATER = ("ENHANCEDSTATUSCODES", "8BITMIME", "BINARYMIME", "DSN", "SMTPUTF8", "CHUNKING")


@attrs.define
class AuthExchange:
    """The SASL exchange in progress: its mechanism and the backend's exchange object."""

    mechanism: str
    exchange: object


def _decode(text):
    """The bytes of a base64 response (str), or None if it is not base64."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


class SMTPAuth:
    """The AUTH half of an SMTP session; mixed into mta.smtpd.protocol.SMTPServer."""

    _auth = None  # the AuthExchange waiting for a response line

    # -- what EHLO offers -----------------------------------------------------------

    @property
    def _authEnabled(self):
        return self.factory.sasl is not None and "AUTH" not in self.ehloSettings.discardEhloKeywords

    def _securityOptions(self):
        sasl = self.factory.saslSettings
        return sasl.tlsSecurityOptions if self.session.tlsActive else sasl.securityOptions

    async def _mechanisms(self):
        """The mechanism names this session may use, or None (the backend is down: logged)."""
        try:
            mechanisms = await self.factory.sasl.mechanisms(self.session.tlsActive)
        except Exception as e:
            self.factory.maillog.emit(f"warning: SASL: cannot get the authentication mechanisms: {e}")
            return None
        return allowed(mechanisms, self._securityOptions())

    async def _authEhloLines(self, lines):
        """C{lines} (EHLO's keyword lines) with AUTH put where Postfix puts it, when offered."""
        sasl = self.factory.saslSettings
        if self._tlsAuthOnly() and not self.session.tlsActive:
            return lines
        if await self.factory.saslExceptions.matches(self.session.clientAddress):
            return lines
        names = await self._mechanisms()
        if not names:
            return lines
        auth = ["AUTH " + " ".join(names)] + (["AUTH=" + " ".join(names)] if sasl.brokenClients else [])
        at = next((i for i, line in enumerate(lines) if line.split(" ")[0] in _LATER), len(lines))
        return (*lines[:at], *auth, *lines[at:])

    # -- the command --------------------------------------------------------------

    def _tlsAuthOnly(self):
        """smtpd_tls_auth_only, which smtpd_tls_security_level = encrypt implies (as in Postfix)."""
        return self.factory.saslSettings.tlsAuthOnly or self.factory.tlsSettings.level == "encrypt"

    def smtp_AUTH(self, arg):
        session = self.session
        if not self._authEnabled:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: authentication not enabled"))
        if not session.extended:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: send EHLO first"))
        if self.transaction.sender is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: MAIL transaction in progress"))
        if self._tlsAuthOnly() and not session.tlsActive:
            return self._fault("protocol",
                               Reply(504, "5.5.4", "Encryption required for requested authentication mechanism"))
        if session.saslUsername is not None:
            return self._fault("protocol", Reply(503, "5.5.1", "Error: already authenticated"))
        words = arg.split()
        if not 1 <= len(words) <= 2:
            return self._fault("protocol", Reply(501, "5.5.4", "Syntax: AUTH mechanism"))
        return self._authStart(words[0].upper(), words[1] if len(words) == 2 else None)

    async def _authStart(self, mechanism, initial):
        session = self.session
        rate = await self._rateExceeded("auth", self.factory.saslSettings.authRateLimit)
        if rate is not None:  # Postfix's anvil check (smtpd_sasl_auth_cmd_wrapper)
            self.factory.maillog.emit(f"warning: AUTH command rate limit exceeded: {rate} from {session.client} "
                                      f"for service {self.factory.listenerName}", client=session.client)
            return self._fault("policy", Reply(450, "4.7.1", f"Error: too many AUTH commands from "
                                                             f"{session.clientAddress}"))
        names = await self._mechanisms()
        if names is None:
            return self._authFailed(mechanism, "Connection lost to authentication server", temporary=True)
        if mechanism not in names:
            return self._authFailed(mechanism, "Invalid authentication mechanism")
        response = None
        if initial is not None:
            reply = self._checkResponse(initial, "initial")
            if isinstance(reply, Reply):
                return reply
            response = reply
        session = self.session
        client = ClientInfo(address=session.clientAddress, port=session.clientPort, tls=session.tlsActive,
                            service=self.factory.saslSettings.service,
                            localAddress=getattr(self.transport.getHost(), "host", "") or "")
        exchange = self.factory.sasl.start(mechanism, client)
        if exchange is None:
            return self._authFailed(mechanism, "Invalid authentication mechanism")
        self._auth = AuthExchange(mechanism, exchange)
        return await self._authStep(response)

    def _checkResponse(self, text, which):
        """The decoded response, or the Reply refusing it (the exchange is then over)."""
        if len(text) > self.factory.saslSettings.responseLimit:
            self._authEnd()
            return self._fault("protocol", Reply(500, "5.5.6", "SASL response limit exceeded"))
        data = _decode(text)
        if data is None:
            self._authEnd()
            return self._fault("protocol", Reply(501, "5.5.2", f"Invalid base64 data in {which} response"))
        return data

    async def _authStep(self, response):
        auth = self._auth
        try:
            result = await auth.exchange.step(response)
        except Exception:
            log.failure("smtpd: SASL {mechanism} exchange failed", mechanism=auth.mechanism)
            self._authEnd()
            return self._fault("software", Reply(454, "4.7.0", "Temporary authentication failure: internal error"))
        if self._auth is not auth:  # the session ended meanwhile
            return None
        if isinstance(result, Challenge):
            # "334 " and the challenge, the space kept when it is empty (a Reply would drop it).
            wire = b"334 " + base64.b64encode(result.data) + b"\r\n"
            if self.transcript is not None:
                self.transcript.sentLines(wire)
            self._out.append(wire)
            return None  # the next line is the response (_authResponse)
        self._authEnd()
        if isinstance(result, Success):
            self.session.saslMethod = auth.mechanism
            self.session.saslUsername = sanitize(result.username)
            return Reply(235, "2.7.0", "Authentication successful")
        if result.malformed:
            return self._fault("protocol", Reply(501, "5.5.2", result.reason))
        return self._authFailed(auth.mechanism, result.reason, result.temporary)

    def _authResponse(self, line):
        """A response line (bytes, no line end) in the exchange: a Reply, None, or a Deferred of one."""
        auth = self._auth
        text = line.decode("latin-1").strip(" ")
        if text == "*":
            self._authEnd()
            self.factory.maillog.emit(f"warning: {self.session.client}: SASL {auth.mechanism} authentication aborted")
            return self._fault("protocol", Reply(501, "5.7.0", "Authentication aborted"))
        response = self._checkResponse(text, "continued")
        if isinstance(response, Reply):
            return response
        
        return Deferred.fromCoroutine(self._authStep(response))

    def _authTooLong(self):
        """A response line of smtpd_sasl_response_limit octets or more: refused, the exchange ends."""
        self._newRequest()
        self._authEnd()
        self._respond("auth", self._fault("protocol", Reply(500, "5.5.6", "SASL response limit exceeded")))

    def _authFailed(self, mechanism, reason, temporary=False):
        self.factory.maillog.emit(f"warning: {self.session.client}: SASL {mechanism} authentication failed: "
                                  f"{sanitize(reason)}", client=self.session.client)
        if temporary:
            return self._fault("software", Reply(454, "4.7.0", f"Temporary authentication failure: {reason}"))
        return self._fault("policy", Reply(535, "5.7.8", f"Error: authentication failed: {reason}"))

    def _authEnd(self):
        auth = self._auth
        if auth is not None:  # (a session without AUTH never gets an instance attribute for it)
            self._auth = None
            auth.exchange.abort()

    # -- hooks for the session ------------------------------------------------------

    def _lineLimit(self):
        """The longest line now: a SASL response's limit in an exchange, else line_length_limit."""
        if self._auth is not None:
            return self.factory.saslSettings.responseLimit
        return self.settings.lineLimit

    def _redact(self, line):
        """C{line} (bytes) as the transcript and the log may show it: no SASL response."""
        if self._auth is not None:
            return line if line.strip() == b"*" else HIDDEN
        verb, _, rest = line.partition(b" ")
        if verb.upper() == b"AUTH":
            words = rest.split()
            if len(words) > 1:
                return b"AUTH " + words[0] + b" " + HIDDEN
        return line
