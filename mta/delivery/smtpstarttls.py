"""mta.delivery.smtpstarttls - StartTLS: the STARTTLS steps of an SMTP/LMTP client session.

NAME
    StartTLS - mixed into mta.delivery.smtpclient.SMTPClientSession: the
    decision, the STARTTLS command, the handshake and the certificate's
    verdict, each outcome recorded as Postfix's smtp(8) words it.

DESCRIPTION
    After the EHLO reply (or at connect in wrapper mode), by the session's
    level (smtp_tls_security_level; "none" for a plaintext retry):

        none                 no STARTTLS (smtp_tls_note_starttls_offer
                             logs "Host offered STARTTLS: [name]")
        may                  STARTTLS when offered; not offered, or a 4xx/5xx
                             reply to it: plaintext; a failed handshake:
                             4.7.5 "Cannot start TLS: handshake failure" for
                             this connection (mta.delivery.smtp then retries
                             the host without TLS, as Postfix does)
        encrypt and above    not offered: 4.7.4 "TLS is required, but was not
                             offered by host NAME[ADDR]"; refused: "TLS is
                             required, but host NAME[ADDR] refused to start
                             TLS: REPLY"; a failed handshake: 4.7.5 "Cannot
                             start TLS: handshake failure"; each defers this
                             host and the next one is tried
        verify, secure       also 4.7.5 "Server certificate not trusted" or
                             "Server certificate not verified"

    After the handshake everything read before it is forgotten (the
    replies and a partial line, the EHLO keywords, the SIZE) and the
    caller sends EHLO again.  With smtp_tls_loglevel >= 1 (and on every
    certificate failure) the log has Postfix's "Verified TLS connection
    established to NAME[ADDR]:PORT: TLSv1.3 with cipher ... (256/256 bits)
    key-exchange X25519 server-signature RSA-PSS (2048 bits)".

    Session resumption (mta.delivery.tlssessions): when the transport
    gives the session a cache (tlsSessions), the handshake offers the
    session stored for (address, port, SNI, SitePolicy.reuseKey), a
    policy-accepted handshake stores its session (taken after the first
    reply inside TLS: TLS 1.3 tickets), a refused one drops it; a resumed
    session keeps the original's chain verdict, and smtp_tls_loglevel >= 2
    logs Postfix's "smtp:ADDR:PORT: Reusing old session".

SECURITY
    What the server sends after its 220 to STARTTLS and before the
    handshake is dropped unread (mta.delivery.smtpconnection); the
    handshake has its own deadline (smtp_starttls_timeout).

CONFIGURATION
    mta.config.settings.client.ClientTls (smtp_tls_*, lmtp_tls_*).

DEVIATIONS
    The delivery status line does not repeat the TLS outcome (Postfix's
    does not either; its TLS words are in the lines above).
"""

import attrs
from OpenSSL._util import lib
from twisted.logger import Logger

from mta.delivery.smtpconnection import _Broken

__all__ = ["StartTLS"]

log = Logger()


def _tlsError(reason):
    """The TLS library's words for a failed handshake (from connectionLost's Failure)."""
    if reason is None:
        return "lost connection"
    value = reason.value
    errors = getattr(value, "args", ())
    if errors and isinstance(errors[0], list):
        texts = [e[2] for e in errors[0] if isinstance(e, tuple) and len(e) == 3]
        if texts:
            return ", ".join(texts)
    return str(value) or type(value).__name__



class StartTLS:
    """The STARTTLS steps (see the module docstring); needs a ClientConnection and the session's state."""

    async def _startTLS(self, tx):
        """
        STARTTLS by policy (mta.delivery.smtptls for the context and the
        verdict, mta.delivery.tlspolicy for the site's policy): True when
        TLS was started (the caller sends EHLO again), False to go on in
        plaintext, None when this host will not do (the results are
        recorded: TLS required and not offered, refused or failed, or a
        certificate that the policy does not accept).
        """
        level = self.tlsLevel
        policy = self.site.tls
        namaddr = tx.host.namaddr
        offered = self.esmtp and "STARTTLS" in self.extensions
        if self.tlsActive or level == "none":
            if offered and not self.tlsActive and policy.noteStarttlsOffer:
                self._note(f"Host offered STARTTLS: [{tx.host.name}]")
            return False
        required = policy.required
        if not offered:
            if required:
                self._recordTls(tx, False, "starttls-not-supported", "STARTTLS not offered")
                tx.local(tx.pending(), "deferred", "4.7.4", f"TLS is required, but was not offered by host {namaddr}",
                         retry=True)
                return None
            return False
        self._stage = "performing the STARTTLS handshake"
        self._expectTLS()
        reply = await self._command("STARTTLS", self.settings.heloTimeout)
        if reply.code != 220:
            self._dropAfterReply = self._dropPlaintext = False
            if required:
                self._recordTls(tx, False, "starttls-not-supported", f"STARTTLS refused: {reply.code}")
                tx.refused(tx.pending(), reply, f"TLS is required, but host {namaddr} refused to start TLS: "
                                                f"{reply.text}", dsn="4" + reply.dsn[1:], reason=True)
                return None
            self._note(f"{namaddr}: STARTTLS refused: {reply.text}; going on in plaintext")
            return False
        if not await self._tlsHandshake(tx):
            return None
        return True

    async def _tlsHandshake(self, tx):
        """Start TLS on the transport, wait for the handshake, judge the certificate; False: recorded."""
        from mta.delivery.smtptls import ClientTLS, matchNamesFor, serverNameFor
        from mta.tls.info import TlsInfo

        policy = self.site.tls
        if self.tls is None:
            self.tls = self.tlsPolicy.context(policy) if self.tlsPolicy is not None else ClientTLS(policy)
        self._discardInput()
        self.localAddress()  # known before a failed handshake drops the connection (TLS-RPT)
        self._stage = "performing the TLS handshake"
        serverName = serverNameFor(policy, tx.host, tx.request.nexthop)
        sessions, sessionKey, offered = self._tlsOffer(tx, serverName)
        creator = self.tls.creator(serverName, offered[0] if offered else None)
        try:
            await self._beginTLS(creator, policy.starttlsTimeout)
        except _Broken as e:
            self.tlsFailed = True
            why = "timed out" if e.kind == "timeout" else _tlsError(self.lostReason)
            self._note(f"SSL_connect error to {tx.host.relay}: {why}", warn=True)
            self._recordTls(tx, False, "validation-failure", f"handshake failure: {why}")
            tx.local(tx.pending(), "deferred", "4.7.5", "Cannot start TLS: handshake failure", retry=True)
            return False
        connection = self.transport.getHandle()
        resumed = offered is not None and bool(lib.SSL_session_reused(connection._ssl))
        if resumed and not offered[1]:
            self.tls.markUntrusted(connection)  # no chain check on resumption: the original's verdict
        verdict = self.tls.judge(connection, matchNamesFor(policy, tx.host, tx.request.nexthop))
        if self.tlsPolicy is not None:
            verdict = self.tlsPolicy.judge(self.site, verdict, connection, tx.host)
        self.tlsVerdict = verdict
        self.tlsInfo = TlsInfo.fromConnection(connection, verdict.trusted, client=True)
        if resumed and policy.loglevel >= 2:
            self._note(f"{'lmtp' if self.settings.lmtp else 'smtp'}:{tx.host.address}:{tx.host.port}: "
                       f"Reusing old session")
        if policy.loglevel >= 1 or verdict.failure:
            # A new connection is "established" even when its session was resumed (Postfix's words:
            # "reused" is for a cached connection used again, logged by mta.delivery.smtp).
            self._note(attrs.evolve(self.tlsInfo, reused=False).clientLogLine(tx.host.relay, verdict.trust))
        if sessions is not None:
            if verdict.failure:
                sessions.forget(sessionKey)
            else:
                sessions.remember(sessionKey, connection, verdict.trusted)
        if verdict.failure:
            if self.site.tlsa:  # DANE: no TLSA record matches the chain
                failureType = "tlsa-invalid"
            else:
                failureType = "certificate-not-trusted" if not verdict.trusted else "certificate-host-mismatch"
            self._recordTls(tx, False, failureType, verdict.failure, resumed=resumed)
            self._note(f"{verdict.failure}: {tx.host.relay} ({self._levelSource()})", warn=True)
            tx.local(tx.pending(), "deferred", "4.7.5", verdict.failure, retry=True)
            return False
        if verdict.report is not None:  # a policy in "testing" mode: reported, not enforced
            self._recordTls(tx, False, *verdict.report, resumed=resumed)
        else:
            self._recordTls(tx, True, resumed=resumed)
        return True

    def _levelSource(self):
        """Where the TLS level came from, for a warning: the parameter, or the MTA-STS policy."""
        site = getattr(self, "site", None)
        sts = getattr(site, "sts", None)
        if site is not None and site.source == "mta-sts" and sts is not None:
            return f"MTA-STS policy of {sts.domain}: mode {sts.mode}, TLS level {self.tlsLevel}"
        return f"smtp_tls_security_level = {self.tlsLevel}"

    def _tlsPolicyKey(self):
        """The TLS policy part of the session key: the SitePolicy's reuseKey, else the transport's."""
        site = getattr(self, "site", None)
        if site is not None:
            return site.reuseKey
        return (self.tlsLevel, self.settings.tls)

    def _tlsOffer(self, tx, serverName):
        """(cache, key, (Session, trusted) or None): the cached session to offer this host, if any."""
        sessions = getattr(self, "tlsSessions", None)
        if sessions is None or tx.host is None or tx.host.port is None:
            return None, None, None
        from mta.delivery.tlssessions import sessionKey

        key = sessionKey(tx.host.address, tx.host.port, serverName, self._tlsPolicyKey())
        return sessions, key, sessions.lookup(key)

    def _tlsSettle(self):
        """The first reply inside TLS has come (TLS 1.3 tickets with it): the session cache takes the session."""
        sessions = getattr(self, "tlsSessions", None)
        if sessions is not None and self.tlsActive:
            sessions.settle(self.transport.getHandle())

    def _recordTls(self, tx, success, failureType=None, detail="", resumed=False):
        """
        One TLS attempt's outcome for TLS-RPT (mta.delivery.tlspolicy.TlsPolicy.record,
        mta.delivery.tlsrpt): not for a report's own delivery, nor for a resumed
        session under smtp_tlsrpt_skip_reused_handshakes = yes.
        """
        reporter = getattr(self.tlsPolicy, "reporter", None)
        if reporter is None:
            return
        ignores = getattr(reporter, "ignores", None)
        if (ignores is not None and ignores(tx.request)) or (resumed and getattr(reporter, "skipReused", True)):
            return
        from mta.delivery.tlspolicy import TlsResult

        self.tlsPolicy.record(self.site, tx.host, TlsResult(success, failureType, detail), sendingIp=self.localAddress())

    def localAddress(self):
        """This end's IP address of the connection (TLS-RPT's sending-mta-ip), or None; kept once known."""
        known = getattr(self, "_localAddress", None)
        if known is None:
            try:
                known = self._localAddress = getattr(self.transport.getHost(), "host", None)
            except Exception:
                return None
        return known

    def _note(self, text, warn=False):
        """A mail-log line under the session's queue id (a warning: "warning: ...")."""
        if warn:
            self._warn(text)
        elif self.maillog is not None:
            self.maillog.emit(text, self._queueId)
        else:
            log.info("{text}", text=text)

