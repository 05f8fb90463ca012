"""mta.cli.sendmail.standalone - mta-sendmail -bs: the SMTP server on standard input and output.

As Postfix runs smtpd(8) stand-alone (mta.cli.sendmail, STAND-ALONE MODE):
the server of mta.smtpd with the access controls off
(STANDALONE_OVERRIDES), a client localhost[127.0.0.1], and MaildropStore
as its queue, so that the server's cleanup (mta.cleanup, its Received:
header and header cleanup, as for any listener) commits each accepted
message as a maildrop file (mta.cli.sendmail.maildrop: the same deposit as
mta-sendmail's own, by the queue's one writer), which pickup queues later.
Twisted's networking is imported only here, and only in -bs mode.

SECURITY
    As the server's: the session is untrusted input.  The access controls
    are off because the client is the invoking user, who could deposit the
    same mail without SMTP.

CONFIGURATION
    The smtpd and cleanup parameters of [main], with STANDALONE_OVERRIDES;
    queue_directory (SendmailSettings).
"""

import os

from mta.cli.sendmail.maildrop import DepositError, MaildropFile, findMaildrop, maildropDirectory
from mta.cli.sendmail.options import EX_OK, EX_TEMPFAIL, PROG, Exit
from mta.queue.files import QueueWriteError


class _SessionMessage:
    """A MaildropFile as the SMTP server's queue message (mta.queue.store.IncomingMessage)."""

    def __init__(self, drop):
        self._drop = drop
        self.queueId = drop.queueId

    @property
    def size(self):
        return self._drop.size

    def write(self, data):
        self._drop.write(data)

    def commit(self, envelope, queue="incoming"):
        from twisted.internet.defer import fail, succeed

        try:
            return succeed(self._drop.commit(envelope))
        except DepositError as e:
            return fail(QueueWriteError(str(e)))

    def abort(self):
        self._drop.abort()


class MaildropStore:
    """What the SMTP server needs of a QueueStore, for -bs: every message becomes a maildrop file."""

    def __init__(self, queueDirectory, fs=None, newQueueId=None):
        self.directory = queueDirectory
        self.fs = fs
        self._newQueueId = newQueueId

    def newMessage(self):
        try:
            return _SessionMessage(MaildropFile(maildropDirectory(self.directory), self.fs, self._newQueueId))
        except DepositError as e:
            raise QueueWriteError(str(e)) from None

    def freeSpace(self):
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize


STANDALONE_OVERRIDES = {
    "smtpd_recipient_restrictions": "",  # an empty list permits
    "smtpd_reject_unlisted_recipient": "no",
    "smtpd_forbid_unauth_pipelining": "no",
    "smtpd_forbid_bare_newline": "normalize",
    "smtpd_client_connection_count_limit": "0",
    "postscreen_greet_wait": "0s",
}


def standaloneParameters(main):
    """The [main] scope with the access controls of stand-alone mode turned off."""
    from mta.config.loader import Entry, Location, Scope

    where = f"{PROG} -bs"
    entries = [Entry(name, value, Location(where, 0, "stand-alone", name)) for name, value in STANDALONE_OVERRIDES.items()]
    scope = Scope(entries, parent=main, origin=where)
    scope.check()
    return scope


def standaloneServer(config, reactor, tables, store):
    """An SMTP server protocol for one stand-alone session (-bs); connect it to stdio."""
    from twisted.internet.address import IPv4Address

    from mta.smtpd.factory import SMTPServerFactory
    from mta.smtpd.protocol import SMTPServer

    local = IPv4Address("TCP", "127.0.0.1", 0)

    class LocalTransport:
        """Standard input and output, as seen from a client at 127.0.0.1."""

        def __init__(self, transport):
            self._transport = transport

        def __getattr__(self, name):
            return getattr(self._transport, name)

        def getPeer(self):
            return local

        def getHost(self):
            return local

    class StandaloneServer(SMTPServer):
        lost = None  # a Deferred fired when the session ends

        def connectionMade(self):
            self.transport = LocalTransport(self.transport)
            super().connectionMade()
            self.session.clientName = "localhost"  # as Postfix's smtpd names a client not on a socket

        def connectionLost(self, reason):
            super().connectionLost(reason)
            if self.lost is not None and not self.lost.called:
                self.lost.callback(None)

    factory = SMTPServerFactory.fromScope(standaloneParameters(config.main), reactor, store, tables, "sendmail")
    server = StandaloneServer(factory)
    factory.sessions.add(server)
    return server


def runStandalone(config, stderr):
    """-bs: an SMTP session on standard input and output; the exit status."""
    from twisted.internet import defer, stdio, task
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    from mta.config import ConfigError, openTables
    from mta.tables import Tables

    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(stderr), [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )

    def run(reactor):
        findMaildrop(config)  # before the greeting: a session with no queue would only answer 451s
        tables = Tables(reactor)
        try:
            openTables(config, tables)
        except ConfigError as e:
            raise Exit(EX_TEMPFAIL, str(e)) from None
        server = standaloneServer(config, reactor, tables, MaildropStore(config.settings.sendmail.queueDirectory))
        server.lost = defer.Deferred()
        stdio.StandardIO(server, reactor=reactor)
        return server.lost

    status = [EX_OK]

    def react(reactor):
        d = defer.maybeDeferred(run, reactor)

        def failed(failure):
            if failure.check(Exit):
                status[0] = failure.value.status
                stderr.write(f"{PROG}: fatal: {failure.value.message}\n")
                return None
            return failure

        return d.addErrback(failed)

    try:
        task.react(react)
    except SystemExit as e:
        return status[0] if e.code in (0, None) else (e.code if isinstance(e.code, int) else 1)
    return status[0]
