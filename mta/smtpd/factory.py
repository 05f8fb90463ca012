"""mta.smtpd.factory - the per-listener server factory.

The factory takes its listener's SmtpdSettings (mta.config.settings.smtpd:
every smtpd parameter, read and converted once at load) and the
collaborators its sessions share: the clock, the queue store, the Tables
registry (for the network lists that name tables), the recipient policy,
the address rewriting, the postmaster notices and the cleanup's values.
It keeps the per-client connection counts
(smtpd_client_connection_count_limit) and a cached free-space reading for
queue_minfree.

Construction:

    SMTPServerFactory(settings, clock, store, tables, scope, ...)
        settings: the listener's SmtpdSettings (listener.settings.smtpd);
        scope: the listener's parameter scope, read only by the lines
        marked "other area" below, until the recipient policy, the
        rewriting, the notices and the cleanup take settings objects of
        their own.
    SMTPServerFactory.fromScope(scope, clock, store, tables, ...)
        the same from a scope alone (mta-sendmail -bs, whose scope is
        [main] with the stand-alone overrides; tests).
    serverFactory(listener, daemon)
        the daemon's factory for one listener.

SECURITY
    See mta.smtpd.protocol.

CONFIGURATION
    The smtpd parameters through SmtpdSettings (see
    mta.config.settings.smtpd).  ETRN flushes through the queue manager's
    flushSite(domain) (serverFactory passes it in; without one, ETRN gets
    458 as in Postfix without its flush service).  Read from the scope for
    other areas, for now: the recipient checks and ETRN restrictions
    (mta.smtpd.policy), address rewriting (mta.rewrite: append_at_myorigin,
    append_dot_mydomain, myorigin, mydomain, local_header_rewrite_clients,
    remote_header_rewrite_domain), the cleanup (hopcount_limit,
    message_drop_headers, always_add_missing_headers, header_size_limit)
    and postmaster notices (mta.transcript, only for the daemon's
    listeners: notify_classes, error_notice_recipient,
    bounce_notice_recipient, double_bounce_sender, myorigin).
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mta.config.settings.smtpd import SmtpdSettings
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
    policy, rewrite, headerRewriteClients, notices, keepTranscripts
                          other areas' objects (see the module docstring)
    sessions              the open sessions (SMTPServer)
    """

    noisy = False

    def __init__(self, settings, clock, store, tables, scope, listenerName="smtp", flushSite=None,
                 postmasterNotices=False, addressResolver=None):
        """
        C{postmasterNotices}: send the postmaster transcripts of sessions
        whose errors notify_classes lists (the daemon's listeners; not in
        stand-alone mode, mta-sendmail -bs, as in Postfix).
        C{addressResolver}: the daemon's shared mta.routing.AddressResolver
        (built from [main]); None: one is made from C{params}.
        """
        from mta.tables.matchers import NetworkMatcher

        self.settings = settings
        self.clock = clock
        self.store = store
        self.listenerName = listenerName
        self.maillog = MailLogger(settings.syslogName, "smtpd")
        # ETRN: flushSite(domain) -> Deferred[int] (QueueManager.flushSite); None: 458, as
        # Postfix answers when its flush service is unavailable.
        self.flushSite = flushSite
        self.eventLimitExceptions = NetworkMatcher(settings.eventLimitExceptions, tables)
        self.bareNewlineExclusions = NetworkMatcher(settings.bareNewlineExclusions, tables)
        self._otherAreas(scope, tables, postmasterNotices, addressResolver)
        self.sessions = set()
        self._connections = {}
        self._freeSpace = None
        self._freeSpaceAt = None

    def _otherAreas(self, scope, tables, postmasterNotices, addressResolver):
        """The collaborators of other areas, built from the listener's scope as they take it today."""
        from mta.config.settings.routing import RecipientCheckSettings, ResolverSettings
        from mta.rewrite import AddressRewriting, HeaderRewriteClients
        from mta.routing import AddressResolver
        from mta.smtpd.chat import SERVER_ERROR_CLASSES
        from mta.smtpd.policy import RecipientPolicy
        from mta.transcript import TranscriptNotices

        # The one address resolver is the daemon's (mta.generation), shared with the queue
        # manager's router; stand-alone (mta-sendmail -bs, tests) builds its own.
        if addressResolver is None:
            addressResolver = AddressResolver(ResolverSettings.build(scope), tables)
        self.policy = RecipientPolicy(RecipientCheckSettings.build(scope), addressResolver, tables)
        # other area: converted by its helper (cleanup: RewriteSettings)
        self.rewrite = AddressRewriting(scope)
        self.headerRewriteClients = HeaderRewriteClients(
            scope["local_header_rewrite_clients"], self.policy.mynetworks, tables)
        # other area: converted by its helper (cleanup: CleanupSettings; read by mta.smtpd.message)
        self.params = scope  # mta.smtpd.message reads params["syslog_name"]
        self.hopLimit = scope["hopcount_limit"]
        self.dropHeaders = frozenset(h.lower() for h in scope["message_drop_headers"])
        self.alwaysAddMissing = scope["always_add_missing_headers"]
        self.headerSizeLimit = scope["header_size_limit"]
        # other area: converted by its helper (notices).  Postmaster notices (smtpd_chat_notify):
        # a transcript is kept when notify_classes lists a class the server can meet; at the end
        # of the session (or when it passes the flush threshold) it goes to the postmaster if
        # the session met one of the listed classes.
        self.notices = TranscriptNotices.fromParameters(scope, self.store, self.clock, self.maillog)
        self.keepTranscripts = postmasterNotices and bool(SERVER_ERROR_CLASSES & set(scope["notify_classes"]))

    @classmethod
    def fromScope(cls, scope, clock, store, tables, listenerName="smtp", flushSite=None, postmasterNotices=False):
        """
        A factory for the parameter C{scope} alone: its SmtpdSettings are
        built here (a bad value raises ConfigError with its location).
        mta-sendmail -bs calls fromScope(standaloneParameters(main), reactor,
        store, tables, "sendmail").
        """
        return cls(SmtpdSettings.build(scope), clock, store, tables, scope, listenerName, flushSite,
                   postmasterNotices)

    # Read by mta.smtpd.message (the cleanup helper's code replaces these with its settings).
    hostname = property(lambda self: self.settings.hostname)
    mailName = property(lambda self: self.settings.mailName)

    def buildProtocol(self, addr):
        from mta.smtpd.protocol import SMTPServer

        protocol = SMTPServer(self)
        self.sessions.add(protocol)
        return protocol

    def connectionClosed(self, protocol):
        self.sessions.discard(protocol)

    def countConnection(self, address):
        """Count one more session from C{address}; return the new count."""
        count = self._connections.get(address, 0) + 1
        self._connections[address] = count
        return count

    def releaseConnection(self, address):
        count = self._connections.get(address, 0) - 1
        if count > 0:
            self._connections[address] = count
        else:
            self._connections.pop(address, None)

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


def serverFactory(listener, daemon):
    """The factory for one listener of the running daemon."""
    return SMTPServerFactory(
        listener.settings.smtpd, daemon.clock, daemon.store, daemon.tables, listener.params, listener.name,
        flushSite=getattr(daemon, "flushSite", None), postmasterNotices=True,
        addressResolver=getattr(daemon, "addressResolver", None),
    )
