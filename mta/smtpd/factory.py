"""mta.smtpd.factory - the per-listener server factory.

The factory takes its listener's compiled settings (mta.config.settings:
.smtpd, every smtpd parameter read and converted once at load; .recipients,
the recipient checks; .cleanup and .rewrite, the listener's cleanup;
.notices, its postmaster transcripts) and the collaborators its sessions
share: the clock, the queue store, the Tables registry (for the network
lists and maps that name tables) and the one address resolver.  It makes
the listener's recipient policy (mta.smtpd.policy), cleanup (mta.cleanup)
and transcript notices (mta.transcript), keeps the per-client connection
counts and event rates (the smtpd_client_*_limit parameters,
mta.smtpd.anvil; in a worker process the master counts for every worker:
``remoteAnvil``, mta.workers) and a cached free-space reading for
queue_minfree.

Construction:

    SMTPServerFactory(settings, clock, store, tables, resolver, ...)
        settings: the listener's Compiled settings (listener.settings);
        resolver: the daemon's shared AddressResolver (mta.routing).
    SMTPServerFactory.fromScope(scope, clock, store, tables, ...)
        the same from a scope alone, with a resolver of its own
        (mta-sendmail -bs, whose scope is [main] with the stand-alone
        overrides).
    serverFactory(listener, daemon)
        the daemon's factory for one listener.

SECURITY
    See mta.smtpd.protocol.

CONFIGURATION
    Through the listener's settings: SmtpdSettings (mta.config.settings
    .smtpd), RecipientCheckSettings (.routing), CleanupSettings and
    RewriteSettings (.cleanup), NoticeSettings (.notices).  ETRN flushes
    through the queue manager's flushSite(domain) (serverFactory passes it
    in; without one, ETRN gets 458 as in Postfix without its flush
    service).
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mta.maillog import MailLogger

log = Logger()

FREE_SPACE_CACHE = 1.0  # seconds a statvfs() reading is reused


class SMTPServerFactory(Factory):
    """
    The sessions of one listener share it.

    settings              the listener's SmtpdSettings
    clock, store          the injected clock; the queue store (newMessage,
                          freeSpace)
    listenerName          the listener's name ("sendmail" for -bs)
    maillog               the mail log as $syslog_name/smtpd
    flushSite             ETRN's flush: flushSite(domain) -> Deferred, or None
    eventLimitExceptions, bareNewlineExclusions
                          NetworkMatchers of the settings' network lists
    policy                the recipient checks (mta.smtpd.policy.RecipientPolicy)
    cleanup, rewrite      the listener's cleanup (mta.cleanup) and its rewriting
    headerRewriteClients  local_header_rewrite_clients, matched at MAIL FROM
    notices, keepTranscripts
                          postmaster transcripts (mta.transcript) and whether to keep them
    sasl, saslSettings, saslExceptions
                          the SASL backend (mta.sasl; None: AUTH off), the listener's
                          SaslSettings, smtpd_sasl_exceptions_networks
    sessions              the open sessions (SMTPServer)
    """

    noisy = False
    # tlsSettings, tls  the listener's TlsSettings and its mta.tls.context.ServerTLS (None: no TLS)

    def __init__(self, settings, clock, store, tables, resolver, *, listenerName="smtp", flushSite=None,
                 postmasterNotices=False, maillogs=None, dns=None, verifyAddress=None):
        """
        C{settings}: the listener's compiled settings (mta.config.settings
        Compiled: .smtpd, .recipients, .cleanup, .rewrite, .notices; a
        listener's own as listener.settings).  C{resolver}: the one
        mta.routing.AddressResolver (the daemon's, built from [main] and
        shared with the queue manager).  C{postmasterNotices}: send the
        postmaster transcripts of sessions whose errors notify_classes
        lists (the daemon's listeners; not in stand-alone mode,
        mta-sendmail -bs, as in Postfix).  C{maillogs}: program ->
        MailLogger (default: loggers under the settings' syslog_name).
        C{dns}: a callable that returns the daemon's DNS client
        (mta.delivery.dns.Resolver, made on first use), for the client's
        name (mta.smtpd.peername); None: no name lookups, every client is
        unknown (the test factories, mta-sendmail -bs).  C{verifyAddress}:
        the verify service's query(address) -> Deferred[(status, text)]
        (mta.verify), for reject_unverified_*; None: those answer 450
        "address verification problem".
        """
        from mta.cleanup import Cleanup
        from mta.rewrite import HeaderRewriteClients
        from mta.smtpd.chat import SERVER_ERROR_CLASSES
        from mta.smtpd.policy import RecipientPolicy
        from mta.tables.matchers import NetworkMatcher
        from mta.transcript import TranscriptNotices

        smtpd = settings.smtpd
        self.settings = smtpd
        self.clock = clock
        self.store = store
        self.listenerName = listenerName
        if maillogs is None:
            maillogs = _maillogs(smtpd.syslogName)
        self.maillogs = maillogs
        self.maillog = maillogs("smtpd")
        # ETRN: flushSite(domain) -> Deferred[int] (QueueManager.flushSite); None: 458, as
        # Postfix answers when its flush service is unavailable.
        self.flushSite = flushSite
        self.eventLimitExceptions = NetworkMatcher(smtpd.eventLimitExceptions, tables)
        self.debugPeers = NetworkMatcher(smtpd.debugPeerList, tables)  # debug_peer_list
        self.commandFilter = [tables.open(t) for t in smtpd.commandFilter]  # smtpd_command_filter
        self.discardEhloMaps = [tables.open(t) for t in smtpd.discardEhloMaps]
        self._ehloViews = {}
        self.bareNewlineExclusions = NetworkMatcher(smtpd.bareNewlineExclusions, tables)
        self.policy = RecipientPolicy(settings.recipients, resolver, tables, dns=dns, maillog=self.maillog,
                                      reactor=clock, queueDirectory=getattr(store, "directory", None),
                                      verifier=verifyAddress, unverified=getattr(settings, "unverified", None))
        # The listener's cleanup (mta.cleanup): Received, header cleanup, rewriting, the commit.
        self.cleanup = Cleanup(settings.cleanup, store, clock, maillogs)
        self.rewrite = self.cleanup.rewriting
        self.headerRewriteClients = HeaderRewriteClients(
            settings.cleanup.rewrite.localHeaderRewriteClients, self.policy.mynetworks, tables,
            self.policy.relayClientcerts)
        # Postmaster notices (smtpd_chat_notify): a transcript is kept when notify_classes lists a
        # class the server can meet; at the end of the session (or when it passes the flush
        # threshold) it goes to the postmaster if the session met one of the listed classes.
        self.notices = TranscriptNotices(settings.notices, self.cleanup, clock, self.maillog)
        self.keepTranscripts = postmasterNotices and bool(SERVER_ERROR_CLASSES & set(settings.notices.classes))
        # TLS (mta.smtpd.starttls): the listener's TlsSettings, and its contexts (mta.tls.context,
        # the certificate files read now, at start and reload); None when STARTTLS is not offered.
        self.tlsSettings = settings.tls
        self.tls = None
        if settings.tls.enabled:
            from mta.tls.context import ServerTLS

            self.tls = ServerTLS(settings.tls, tables, sessionId=f"mta-{listenerName}".encode())
        for note in settings.tls.notes:
            self.maillog.emit(f"warning: {note}")
        # SASL AUTH (mta.smtpd.auth, mta.sasl): None when off, and in stand-alone mode (-bs) as in Postfix.
        from mta.sasl import makeBackend

        self.saslSettings = settings.sasl
        self.saslExceptions = NetworkMatcher(settings.sasl.exceptionsNetworks, tables)
        self.sasl = None if listenerName == "sendmail" else makeBackend(settings.sasl, tables, clock, self.maillog)
        from mta.smtpd.anvil import Anvil

        # Per-client session counts and event rates (mta.smtpd.anvil), shared by the listener's
        # factories across reloads; in a worker process the master counts for all of them
        # (mta.workers: remoteAnvil, a RemoteAnvil whose answers are Deferreds).
        self.anvil = Anvil(clock, smtpd.rateTimeUnit)
        self.remoteAnvil = None
        # The client's name at connect (smtpd_peername_lookup): None when not looked up.
        self.peerNames = None
        if smtpd.peernameLookup and dns is not None:
            from mta.smtpd.peername import PeerNames

            self.peerNames = PeerNames(dns, clock, self.maillog)
        self.sessions = set()
        # postscreen_enable (mta.smtpd.postscreen): the screen in front of the sessions; not for
        # -bs (standard I/O) nor for a wrapper-mode TLS listener, whose first bytes are TLS.
        self.postscreen = None
        if settings.postscreen.enabled and listenerName != "sendmail" and not settings.tls.wrapperMode:
            from mta.smtpd.postscreen import Postscreen

            self.postscreen = Postscreen(settings.postscreen, self, tables, dns)
        self._freeSpace = None
        self._freeSpaceAt = None

    @classmethod
    def fromScope(cls, scope, clock, store, tables, listenerName="smtp", flushSite=None, postmasterNotices=False):
        """
        A factory for the parameter C{scope} alone, with an address
        resolver of its own: its settings are compiled here (a bad value
        raises ConfigError with its location).  mta-sendmail -bs calls
        fromScope(standaloneParameters(main), reactor, store, tables, "sendmail").
        """
        from mta.config.settings import compile, listenerSettings
        from mta.config.settings.routing import ResolverSettings
        from mta.routing import AddressResolver

        resolver = AddressResolver(ResolverSettings.build(scope), tables)
        return cls(compile(scope, listenerSettings()), clock, store, tables, resolver, listenerName=listenerName,
                   flushSite=flushSite, postmasterNotices=postmasterNotices)

    def ehloView(self, value):
        """
        The settings a client gets when smtpd_discard_ehlo_keyword_address_maps
        gives C{value}: the EHLO lines, the extensions offered and the
        discard log recomputed with those keywords (made once per value).
        """
        import attrs

        from mta.config.settings.smtpd import discardedKeywords

        view = self._ehloViews.get(value)
        if view is None:
            if len(self._ehloViews) >= 100:
                self._ehloViews.clear()
            view = self._ehloViews[value] = attrs.evolve(self.settings, discardEhloKeywords=discardedKeywords(value))
        return view

    def buildProtocol(self, addr):
        """A new connection: the screen first with postscreen_enable, else the SMTP session."""
        if self.postscreen is not None:
            from mta.smtpd.postscreen import PostscreenServer

            return PostscreenServer(self.postscreen, addr)
        return self.buildSession(addr)

    def buildSession(self, addr):
        """The SMTP session of a connection (a screened one's, at the hand-over)."""
        from mta.smtpd.protocol import SMTPServer

        protocol = SMTPServer(self)
        self.sessions.add(protocol)
        return protocol

    def connectionClosed(self, protocol):
        self.sessions.discard(protocol)

    # -- anvil (mta.smtpd.anvil): each answer is a value, or a Deferred of it in a worker process --

    def clientConnect(self, address):
        """One more session from C{address}: (sessions open, connections in the window)."""
        if self.remoteAnvil is not None:
            return self.remoteAnvil.connect(self.listenerName, address)
        return self.anvil.connect(address)

    def clientDisconnect(self, address):
        if self.remoteAnvil is not None:
            self.remoteAnvil.disconnect(self.listenerName, address)
        else:
            self.anvil.disconnect(address)

    def clientEvent(self, address, kind):
        """One more C{kind} event ("mail", "rcpt", "newtls", "auth"): its count in the client's window."""
        if self.remoteAnvil is not None:
            return self.remoteAnvil.event(self.listenerName, address, kind, True)
        return self.anvil.event(address, kind)

    def clientStatus(self, address, kind):
        """The count of C{kind} events in the client's window, without counting one."""
        if self.remoteAnvil is not None:
            return self.remoteAnvil.event(self.listenerName, address, kind, False)
        return self.anvil.status(address, kind)

    def enoughSpace(self, declaredSize):
        """queue_minfree: is there room for a message of C{declaredSize} bytes?"""
        now = self.clock.seconds()
        if self._freeSpaceAt is None or now - self._freeSpaceAt >= FREE_SPACE_CACHE:
            try:
                self._freeSpace = self.store.freeSpace()
            except OSError as e:
                log.error("smtpd: cannot read the queue's free space: {error}", error=e.strerror)
                self._freeSpace = 0
            self._freeSpaceAt = now
        return self._freeSpace >= self.settings.queueMinfree + declaredSize * 3 // 2


def _maillogs(syslogName):
    loggers = {}

    def maillogFor(program):
        if program not in loggers:
            loggers[program] = MailLogger(syslogName, program)
        return loggers[program]

    return maillogFor


def serverFactory(listener, daemon):
    """
    The factory for one listener of the running daemon (a mta.generation
    Generation): its compiled settings, the daemon's shared address
    resolver, mail loggers, ETRN flush and verify service.
    """
    return SMTPServerFactory(
        listener.settings, daemon.clock, daemon.store, daemon.tables, daemon.addressResolver,
        listenerName=listener.name, flushSite=getattr(daemon, "flushSite", None), postmasterNotices=True,
        maillogs=getattr(daemon, "maillogFor", None), dns=lambda: daemon.resolver,
        verifyAddress=getattr(daemon, "verifyAddress", None),
    )
