"""mta.smtpd.factory - the per-listener server factory and its settings.

Everything a session needs from the configuration is read once here, from
the listener's own parameter scope, so the per-command path does no
parameter lookups.  The factory also keeps the per-client connection
counts (smtpd_client_connection_count_limit) and a cached free-space
reading for queue_minfree.

SECURITY
    See mta.smtpd.protocol.

CONFIGURATION
    All smtpd_* parameters in mta.config.schema, plus message_size_limit,
    line_length_limit, queue_minfree, hopcount_limit, postscreen_greet_*,
    fast_flush_domains.  ETRN flushes through the queue manager's
    flushSite(domain) (serverFactory passes it in; without one, ETRN gets
    458 as in Postfix without its flush service).  For address rewriting
    (mta.rewrite): append_at_myorigin, append_dot_mydomain, myorigin,
    mydomain, local_header_rewrite_clients, remote_header_rewrite_domain.
    For postmaster notices (mta.transcript, only for the daemon's
    listeners): notify_classes, error_notice_recipient,
    bounce_notice_recipient, double_bounce_sender, myorigin.
"""

from twisted.internet.protocol import Factory
from twisted.logger import Logger

from mta.maillog import MailLogger

log = Logger()

# EHLO keywords in Postfix's order.
EHLO_KEYWORDS = ("PIPELINING", "SIZE", "VRFY", "ETRN", "ENHANCEDSTATUSCODES", "8BITMIME", "BINARYMIME",
                 "DSN", "SMTPUTF8", "CHUNKING")
# The keywords smtpd_discard_ehlo_keywords knows, in the order Postfix logs them (ehlo_mask.c),
# with BINARYMIME, which Postfix does not have; other words are ignored, as in Postfix.
DISCARD_LOG_ORDER = ("8BITMIME", "AUTH", "ETRN", "PIPELINING", "SIZE", "VERP", "VRFY", "XCLIENT", "XFORWARD",
                     "STARTTLS", "ENHANCEDSTATUSCODES", "DSN", "SMTPUTF8", "CHUNKING", "BINARYMIME", "REQUIRETLS")
FREE_SPACE_CACHE = 1.0  # seconds a statvfs() reading is reused


class SMTPServerFactory(Factory):
    noisy = False

    def __init__(self, params, clock, store, tables, listenerName="smtp", flushSite=None, postmasterNotices=False):
        """
        C{postmasterNotices}: send the postmaster transcripts of sessions
        whose errors notify_classes lists (the daemon's listeners; not in
        stand-alone mode, mta-sendmail -bs, as in Postfix).
        """
        from mta.cleanup import Cleanup
        from mta.config.settings.cleanup import CleanupSettings
        from mta.config.settings.notices import NoticeSettings
        from mta.rewrite import HeaderRewriteClients
        from mta.smtpd.chat import SERVER_ERROR_CLASSES
        from mta.smtpd.policy import RecipientPolicy
        from mta.tables.matchers import NetworkMatcher
        from mta.transcript import TranscriptNotices

        self.params = params
        self.clock = clock
        self.store = store
        self.listenerName = listenerName
        self.policy = RecipientPolicy(params, tables)
        self.maillog = MailLogger(params["syslog_name"], "smtpd")
        # The listener's cleanup (mta.cleanup): Received, header cleanup, rewriting, the commit.
        self.cleanup = Cleanup(CleanupSettings.build(params), store, clock,
                               lambda program: MailLogger(params["syslog_name"], program))
        self.rewrite = self.cleanup.rewriting
        self.headerRewriteClients = HeaderRewriteClients(
            self.cleanup.settings.rewrite.localHeaderRewriteClients, self.policy.mynetworks, tables)
        self.hostname = params["myhostname"]
        self.mailName = params["mail_name"]
        self.banner = params["smtpd_banner"]
        self.timeout = params["smtpd_timeout"]
        self.perRequestDeadline = params["smtpd_per_request_deadline"]
        self.minDataRate = params["smtpd_min_data_rate"]
        # ETRN: flushSite(domain) -> Deferred[int] (QueueManager.flushSite); None: 458, as
        # Postfix answers when its flush service is unavailable.
        self.flushSite = flushSite
        self.sizeLimit = params["message_size_limit"]
        self.recipientLimit = params["smtpd_recipient_limit"]
        self.overshootLimit = params["smtpd_recipient_overshoot_limit"]
        self.lineLimit = params["line_length_limit"]
        self.heloRequired = params["smtpd_helo_required"]
        self.strictEnvelopes = params["strict_rfc821_envelopes"]
        self.disableVrfy = params["disable_vrfy_command"]
        self.noopCommands = frozenset(c.upper() for c in params["smtpd_noop_commands"])
        self.forbiddenCommands = frozenset(c.upper().encode("ascii", "replace") for c in params["smtpd_forbidden_commands"])
        self.rejectFooter = params["smtpd_reject_footer"]
        self.queueMinfree = params["queue_minfree"]
        self.connectionLimit = params["smtpd_client_connection_count_limit"]
        self.eventLimitExceptions = NetworkMatcher(params["smtpd_client_event_limit_exceptions"], tables)
        self.errorSleep = params["smtpd_error_sleep_time"]
        self.softErrorLimit = params["smtpd_soft_error_limit"]
        self.hardErrorLimit = params["smtpd_hard_error_limit"]
        self.junkLimit = params["smtpd_junk_command_limit"]
        self.forbidUnauthPipelining = params["smtpd_forbid_unauth_pipelining"]
        self.bareNewline = params["smtpd_forbid_bare_newline"]
        self.bareNewlineExclusions = NetworkMatcher(params["smtpd_forbid_bare_newline_exclusions"], tables)
        self.bareNewlineCode = params["smtpd_forbid_bare_newline_reject_code"]
        self.greetWait = params["postscreen_greet_wait"]
        self.greetAction = params["postscreen_greet_action"]
        # Postmaster notices (smtpd_chat_notify): a transcript is kept when notify_classes lists a
        # class the server can meet; at the end of the session (or when it passes the flush
        # threshold) it goes to the postmaster if the session met one of the listed classes.
        self.notices = TranscriptNotices(NoticeSettings.build(params), self.cleanup, clock, self.maillog)
        self.keepTranscripts = postmasterNotices and bool(SERVER_ERROR_CLASSES & set(params["notify_classes"]))

        words = {k.upper() for k in params["smtpd_discard_ehlo_keywords"]}
        discard = words - {"SILENT-DISCARD"}
        # Postfix logs the discarded keywords at each EHLO unless silent-discard is given (and,
        # as ehlo_cmd does, not when ENHANCEDSTATUSCODES itself is discarded).
        logged = [k for k in DISCARD_LOG_ORDER if k in discard]
        silent = "SILENT-DISCARD" in words or "ENHANCEDSTATUSCODES" in discard
        self.ehloDiscardLog = "" if silent else " ".join(logged)
        if self.disableVrfy:
            discard.add("VRFY")
        offered = [k for k in EHLO_KEYWORDS if k not in discard]
        if "CHUNKING" not in offered:
            offered = [k for k in offered if k != "BINARYMIME"]
        self.offered = frozenset(offered)
        self.ehloLines = tuple(f"SIZE {self.sizeLimit}" if k == "SIZE" and self.sizeLimit else k for k in offered)
        self.sessions = set()
        self._connections = {}
        self._freeSpace = None
        self._freeSpaceAt = None

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
        return self._freeSpace >= self.queueMinfree + declaredSize * 3 // 2


def serverFactory(listener, daemon):
    """The factory for one listener of the running daemon."""
    return SMTPServerFactory(
        listener.params, daemon.clock, daemon.store, daemon.tables, listener.name,
        flushSite=getattr(daemon, "flushSite", None), postmasterNotices=True,
    )
