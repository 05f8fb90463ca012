"""mta.smtpd.connect - what a session does at connect, before its banner.

ConnectSteps is the half of the session (mta.smtpd.protocol.SMTPServer)
that runs between the accepted connection and the 220 greeting, in
Postfix's order: the client's name (smtpd_peername_lookup,
mta.smtpd.peername), the "connect from" line, the per-client connection
count and rate (mta.smtpd.anvil; in a worker process the master's
answer), the bare-newline exclusions, debug_peer_list,
smtpd_discard_ehlo_keyword_address_maps, smtpd_client_restrictions
without smtpd_delay_reject (mta.smtpd.policy; a refusal replaces the
greeting), and the in-session pregreet test (postscreen_greet_wait,
postscreen_greet_action; none after the postscreen screen).  When
nothing needs a lookup or a wait, connectionMade greets at once (the fast
path); otherwise _connect() runs these steps as a coroutine.

SECURITY
    The client address and its DNS names are untrusted; a table or DNS
    server that cannot answer never refuses a client for good (4xx or the
    listener's defaults), and a session that closed meanwhile is left
    alone.

CONFIGURATION
    smtpd_peername_lookup, smtpd_client_connection_count_limit,
    smtpd_client_connection_rate_limit, smtpd_client_event_limit_exceptions,
    smtpd_forbid_bare_newline_exclusions, debug_peer_list,
    smtpd_discard_ehlo_keyword_address_maps, smtpd_delay_reject,
    smtpd_client_restrictions, postscreen_greet_wait, postscreen_greet_action.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from mta.maillog import sanitize
from mta.model import Reply
from mta.tables import TableTemporaryError


class ConnectSteps:
    """The connect-time steps of an SMTP session; mixed into mta.smtpd.protocol.SMTPServer."""

    def _lookUpName(self):
        """
        smtpd_peername_lookup: set the session's names now and return None
        when /etc/hosts answers (or nothing is looked up), else return the
        Deferred of the lookup (mta.smtpd.peername.PeerName).
        """
        names, address = self.factory.peerNames, self.session.clientAddress
        if names is None or not address:
            return None
        result = names.lookup(address)
        if isinstance(result, Deferred):
            return result
        self._setNames(result)
        return None

    def _setNames(self, peer):
        session = self.session
        session.clientName, session.reverseClientName = peer.name, peer.reverseName
        session.nameStatus, session.reverseNameStatus = peer.nameStatus, peer.reverseStatus

    def _logConnect(self):
        self._connectLogged = True
        self.factory.maillog.emit(f"connect from {self.session.client}", client=self.session.client)

    def _connectLimited(self):
        """Is this session counted at connect (smtpd_client_connection_count_limit or _rate_limit)?"""
        settings = self.settings
        return bool(settings.connectionLimit or settings.connectionRateLimit) and bool(self.session.clientAddress)

    def _connectChecksAreStatic(self):
        factory = self.factory
        if not factory.debugPeers.static or factory.discardEhloMaps:
            return False
        if self._clientStageAtConnect():
            return False
        if factory.remoteAnvil is not None and self._connectLimited():  # the count is the master's answer
            return False
        return factory.eventLimitExceptions.static and factory.bareNewlineExclusions.static

    def _checkConnectionCount(self, counts=None):
        """
        Count this session (or take C{counts}, counted already: sessions open,
        connections in the window); refuse it (False) past the per-client
        concurrency or rate limit (Postfix's order and words).
        """
        factory, session, settings = self.factory, self.session, self.settings
        if counts is None:
            counts = factory.clientConnect(session.clientAddress)
        self._counted = True
        count, rate = counts
        service = factory.listenerName
        if settings.connectionLimit and count > settings.connectionLimit:
            warning = f"warning: Connection concurrency limit exceeded: {count} from {session.client} for service {service}"
        elif settings.connectionRateLimit and rate > settings.connectionRateLimit:
            warning = f"warning: Connection rate limit exceeded: {rate} from {session.client} for service {service}"
        else:
            return True
        factory.maillog.emit(warning, client=session.client)
        self._fault("policy")
        self._reply(Reply(421, "4.7.0", f"{self.hostname} Error: too many connections from {session.clientAddress}"))
        self._close()
        return False

    async def _rateExceeded(self, kind, limit, count=True):
        """
        smtpd_client_*_rate_limit: count one C{kind} event ("mail", "rcpt",
        "newtls", "auth"; with C{count} false only look) and return the
        client's count in its window when it is past C{limit}, else None.
        A limit of 0, a client in smtpd_client_event_limit_exceptions and a
        session without a client address (mta-sendmail -bs) count nothing.
        """
        factory, address = self.factory, self.session.clientAddress
        if not limit or not address or await factory.eventLimitExceptions.matches(address):
            return None
        rate = factory.clientEvent(address, kind) if count else factory.clientStatus(address, kind)
        if isinstance(rate, Deferred):  # counted by the master (mta.workers)
            rate = await rate
        return rate if rate > limit else None

    async def _ehloDiscardLookup(self):
        """smtpd_discard_ehlo_keyword_address_maps: the client's address, in each table until one answers."""
        factory, session = self.factory, self.session
        for table in factory.discardEhloMaps:
            try:
                value = await table.lookup(session.clientAddress)
            except TableTemporaryError:
                factory.maillog.emit(f"warning: {table.spec}: smtpd_discard_ehlo_keyword_address_maps lookup "
                                     f"error for {session.clientAddress}; smtpd_discard_ehlo_keywords applies")
                return
            if value is not None:
                session.ehloView = factory.ehloView(value)
                return

    def _clientStageAtConnect(self):
        """Without smtpd_delay_reject, smtpd_client_restrictions judge the client at connect."""
        policy = self.factory.policy
        return not policy.delayReject and bool(policy.clientRestrictions) and bool(self.session.clientAddress)

    async def _clientStage(self):
        """
        smtpd_client_restrictions at connect: a refusal replaces the greeting
        and answers every later command but QUIT with 503 (Postfix's
        access_denied); False when the session is done.
        """
        session = self.session
        outcome = await self.factory.policy.checkSessionStage("client", self._request(),
                                                              note=self._restrictionNote(None, "CONNECT"))
        if self._closing:
            return False
        if outcome.reply is None:
            session.deferIfPermit["client"] = outcome.evaluation.deferIfPermit
            session.stageEffects = outcome.evaluation
            return True
        self._logReject("CONNECT", outcome.reply)
        self._fault(outcome.errorClass)
        session.accessDenied = outcome.reply
        session.errors += 1
        self._reply(outcome.reply)
        self._waiting = False
        if outcome.reply.code == 421:
            self._close()
        else:
            self._process()
        return False
    def _greetWait(self):
        """postscreen_greet_wait in the session: none after the screen, which did the pregreet test."""
        return 0 if self.screened else self.settings.greetWait

    def _greet(self):
        if self._greetAfterHandshake():  # wrapper mode: the banner after the TLS handshake
            return
        self._reply(Reply(220, "", self.settings.banner))
        self._waiting = False
        self._process()

    async def _connect(self, lookup=None):
        factory, settings, session = self.factory, self.settings, self.session
        if lookup is not None:
            self._setNames(await lookup)
            if self._closing:
                return
            self._logConnect()
        if self._connectLimited() and not await factory.eventLimitExceptions.matches(session.clientAddress):
            if self._closing:  # gone while the table answered: nothing to count, nobody to greet
                return
            counts = factory.clientConnect(session.clientAddress)
            if isinstance(counts, Deferred):  # counted by the master (mta.workers)
                self._counted = True  # released at the end of the session, whatever the answer
                counts = await counts
                if self._closing:
                    return
            if not self._checkConnectionCount(counts):
                return
        session.debugPeer = bool(session.clientAddress) and await factory.debugPeers.matches(session.clientAddress)
        if factory.discardEhloMaps and session.clientAddress:
            await self._ehloDiscardLookup()
            if self._closing:
                return
        if session.bareNewline == "reject" and await factory.bareNewlineExclusions.matches(session.clientAddress):
            session.bareNewline = "normalize"
        if self._closing:
            return
        if self._clientStageAtConnect() and not await self._clientStage():
            return
        if self._greetWait() > 0:
            await deferLater(factory.clock, settings.greetWait)
            if self._closing:
                return
            if self._buffer:
                first = sanitize(self._buffer[:60].decode("latin-1"))
                factory.maillog.emit(
                    f"PREGREET {len(self._buffer)} after {settings.greetWait:g} from "
                    f"[{session.clientAddress}]:{session.clientPort}: {first}",
                    client=self.session.client,
                )
                action = settings.greetAction
                if action == "drop":
                    self._fault("protocol")
                    self._reply(Reply(521, "5.5.1", "Protocol error"))
                    self._close()
                    return
                if action == "enforce":
                    session.earlyTalker = True  # its recipients are refused (mta.smtpd.commands)
                elif action == "ignore":
                    pass  # logged only
        self._greet()
