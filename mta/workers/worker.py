"""mta.workers.worker - one worker process: the SMTP sessions of the shared listeners.

    python -m mta.workers --index N --control-fd 3 --queue-directory DIR
                          --listener NAME=FD/FAMILY ... [--config FILE]

Started by the master (mta.workers.master), never by hand.  It loads the
configuration (the master's file, read again; the queue directory is the
master's), opens its tables, and builds a Generation (mta.generation) as
the master does, with a QueueStore (mta.queue.store) of its own: its own
committer thread, so its messages are durable before their 250 exactly as
in one process, and its own temporary directory tmp/worker.PID.  It adopts
the listening sockets it inherited (IReactorSocket.adoptStreamPort) and
the AMP channel on descriptor 3, says Ready, and from then on:

- every commit into incoming/ is announced with Committed (the ids of one
  reactor turn in one box), so the master's queue manager takes it up at
  once; mail on hold is not announced (as in one process);
- the per-client counts and rates of the smtpd_client_*_limit parameters
  are the master's (RemoteAnvil, mta.smtpd.anvil: the session waits for
  the count before its banner, its MAIL, RCPT, STARTTLS or AUTH reply,
  only when a limit applies to the client); ETRN asks the master's
  queue manager;
- mail-log lines go to maillog_file, which every process of the daemon
  appends to (O_APPEND, whole lines per write; the lines carry the
  worker's own pid, as Postfix's smtpd processes do), else to twistd's log
  through the master (standard error, one event per line); ReopenLog (a
  reload, also a refused one, as after a log rotation) opens the file again.

SIGTERM stops it: it stops accepting, lets the commits in flight finish
(the committer's thread is stopped after its batch), flushes the mail log
and exits 0; the open sessions are cut, as Postfix's stop does.  Retire
(a reload) stops accepting and exits when the last session has ended.  If
the master goes away (its end of the channel closes), the worker stops.
SIGHUP is ignored: a reload replaces the workers.

SECURITY
    As the master's user.  The descriptors and their families come from
    the master; a bad command line is one line on standard error and exit
    status 2.

CONFIGURATION
    Everything the SMTP server reads; queue_sync_method; maillog_file.
"""

import argparse
import os
import signal
import socket
import sys

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel, formatEvent, globalLogBeginner
from twisted.protocols import amp
from twisted.python.threadpool import ThreadPool

from mta.workers import commands

log = Logger()

RETIRE_POLL = 0.5  # seconds between looks at the sessions still open while retiring
VERIFY_TIMEOUT = 30.0  # seconds a verify query to the master may take (then 450 "address verification problem")


class RemoteAnvil:
    """The master's anvil (SMTPServerFactory.remoteAnvil, mta.smtpd.anvil), over the worker's channel."""

    def __init__(self, channel):
        self.channel = channel

    def connect(self, listener, address):
        """(sessions open, connections in the window): a Deferred."""
        return self.channel.callRemote(commands.ClientConnect, listener=listener, address=address).addCallbacks(
            lambda answer: (answer["count"], answer["rate"]), self._unanswered, errbackArgs=((0, 0),))

    def disconnect(self, listener, address):
        self.channel.callRemote(commands.ClientDisconnect, listener=listener, address=address)

    def event(self, listener, address, kind, count):
        """The client's count of C{kind} events (one more counted with C{count}): a Deferred."""
        return self.channel.callRemote(commands.ClientEvent, listener=listener, address=address, kind=kind,
                                       count=count).addCallbacks(lambda answer: answer["rate"], self._unanswered,
                                                                 errbackArgs=(0,))

    def _unanswered(self, failure, nothing):
        # The master is gone (this worker stops now): count nothing rather than refuse.
        log.warn("the master did not answer a count: {error}", error=failure.getErrorMessage())
        return nothing


class StartError(Exception):
    """The worker cannot start, for a reason that one line tells (a configuration edited since the reload)."""


class WorkerSide(amp.AMP):
    """The worker's end of its channel to the master."""

    def __init__(self, worker):
        super().__init__()
        self.worker = worker

    @commands.Retire.responder
    def retire(self):
        self.worker.retire()
        return {}

    @commands.ReopenLog.responder
    def reopenLog(self):
        self.worker.reopenMaillog()
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.worker.masterGone()


class Worker:
    """One worker process's service (see the module docstring)."""

    def __init__(self, index, config, tables, reactor, queueDirectory, channelFd, listeners):
        """C{listeners}: [(name, fd, family)] inherited from the master."""
        from mta.generation import Generation
        from mta.queue.store import QueueStore
        from mta.smtpd import serverFactory

        self.index = index
        self.reactor = reactor
        self.pid = os.getpid()
        self.channelFd = channelFd
        self.listeners = listeners
        service = config.settings.service
        self.commitPool = ThreadPool(1, 1, "mta-commit")
        self.store = QueueStore(queueDirectory, reactor, commitPool=self.commitPool,
                                syncMethod=service.queueSyncMethod, temporary=f"tmp/worker.{self.pid}")
        self.generation = Generation(config, tables, reactor, self.store, serverFactory, self.flushSite,
                                     verifyAddress=self.verifyAddress)
        self.channel = None
        self.ports = []
        self._announce = []  # queue ids committed in this reactor turn
        self._announceCall = None
        self._retiring = None  # the LoopingCall that waits for the last session
        self._stopping = False
        self.maillogFile = None

    # -- start ---------------------------------------------------------------------

    def openMaillog(self):
        """maillog_file (again, after a rotation: the new file first, then the old one flushed and closed); OSError."""
        from mta.maillog import MailLogFile, installFile

        service = self.generation.config.settings.service
        if service.maillogFile:
            old, self.maillogFile = self.maillogFile, MailLogFile(service.maillogFile, service.hostname,
                                                                  service.syslogName, clock=self.reactor)
            installFile(self.maillogFile)
            if old is not None:
                old.close()

    def reopenMaillog(self):
        try:
            self.openMaillog()
        except OSError as e:
            log.error("cannot reopen maillog_file: {error}", error=e.strerror)

    def start(self):
        os.mkdir(self.store.tmpDirectory, 0o700)
        self.commitPool.start()
        self.store.onCommit = self._committed
        self.channel = WorkerSide(self)
        self.reactor.adoptStreamConnection(self.channelFd, socket.AF_UNIX, _Once(self.channel))
        os.close(self.channelFd)
        anvil = RemoteAnvil(self.channel)
        from mta.listeners import ListenerFactory

        for factory in self.generation.factories.values():
            factory.remoteAnvil = anvil
        for name, fd, family in self.listeners:
            factory = self.generation.factories.get(name)
            if factory is None:
                os.close(fd)
                raise StartError(f"listener {name} is not in the configuration")
            self.ports.append(self.reactor.adoptStreamPort(fd, family, ListenerFactory(factory)))
            os.close(fd)
        return self.channel.callRemote(commands.Ready, index=self.index, pid=self.pid)

    def flushSite(self, domain):
        """ETRN: the master's queue manager."""
        if self.channel is None:
            return succeed(0)
        return self.channel.callRemote(commands.FlushSite, domain=domain).addCallback(lambda answer: answer["count"])

    def verifyAddress(self, address):
        """reject_unverified_*: the master's verify service (mta.verify); a lost or slow master fails the query."""
        if self.channel is None:
            return fail(ConnectionError("no channel to the master process"))
        d = self.channel.callRemote(commands.VerifyQuery, address=address)
        d.addTimeout(VERIFY_TIMEOUT, self.generation.clock)
        return d.addCallback(lambda answer: (answer["status"], answer["text"]))

    def _committed(self, queueId):
        self._announce.append(queueId)
        if self._announceCall is None:
            self._announceCall = self.reactor.callLater(0, self._sendAnnouncements)

    def _sendAnnouncements(self):
        self._announceCall = None
        ids, self._announce = self._announce, []
        if ids and self.channel is not None:
            self.channel.callRemote(commands.Committed, ids=ids)

    # -- retire and stop ------------------------------------------------------------------

    def _stopListening(self):
        ports, self.ports = self.ports, []
        return [maybeDeferred(port.stopListening) for port in ports]

    def sessions(self):
        return sum(len(factory.sessions) for factory in self.generation.factories.values())

    def retire(self):
        if self._retiring is not None:
            return
        self._stopListening()
        log.info("retiring: {count} session(s) to finish", count=self.sessions())
        self._retiring = LoopingCall(self._retireCheck)
        self._retiring.clock = self.reactor
        self._retiring.start(RETIRE_POLL, now=False)

    def _retireCheck(self):
        if self.sessions() == 0:
            self._retiring.stop()
            self.stopReactor()

    def masterGone(self):
        self.channel = None
        if not self._stopping:
            log.warn("the master closed the channel: stopping")
            self.stopReactor()

    def stopReactor(self):
        if self.reactor.running:
            self.reactor.stop()

    def stop(self):
        """Before shutdown: no new sessions; the commits in flight finish; the mail log is flushed."""
        self._stopping = True
        self._stopListening()
        if self._announceCall is not None and self._announceCall.active():
            self._announceCall.cancel()
        d = Deferred()

        def finish():
            if self.commitPool.started:
                self.commitPool.stop()  # waits for the batch that runs
            self.store.close()
            self._sendAnnouncements()
            if self.maillogFile is not None:
                self.maillogFile.close()
            d.callback(None)

        # The commits already handed over finish in the committer's thread; results come back through
        # callFromThread, so give the reactor one turn for them.
        self.reactor.callLater(0, finish)
        return d


class _Once(Factory):
    def __init__(self, channel):
        self.channel = channel

    def buildProtocol(self, addr):
        return self.channel


LEVELS = {LogLevel.critical: "critical", LogLevel.error: "error", LogLevel.warn: "warn", LogLevel.info: "info",
          LogLevel.debug: "debug"}


def stderrObserver(stream):
    """twisted.logger events as 'LEVEL text' lines (one per line of text) for the master to log."""

    def observe(event):
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}\n{failure.getTraceback()}"
        level = LEVELS.get(event.get("log_level"), "info")
        try:
            stream.write("".join(f"{level} {line}\n" for line in text.splitlines() or [""]))
            stream.flush()
        except (OSError, ValueError):
            pass

    return observe


def parseListener(text):
    """NAME=FD/FAMILY -> (name, fd, family); ValueError."""
    name, _, rest = text.partition("=")
    fd, _, family = rest.partition("/")
    if not name or not fd.isdigit() or not family.isdigit():
        raise ValueError(f"bad --listener {text!r}")
    return name, int(fd), socket.AddressFamily(int(family))


def parseArguments(argv):
    parser = argparse.ArgumentParser(prog="mta-worker", description="An mta worker process (started by the master).")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--queue-directory", required=True)
    parser.add_argument("--listener", action="append", default=[], type=parseListener)
    parser.add_argument("--config", default=None)
    return parser.parse_args(argv)


def main(argv=None):
    options = parseArguments(sys.argv[1:] if argv is None else argv)
    globalLogBeginner.beginLoggingTo([stderrObserver(sys.stderr)], redirectStandardIO=False)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C at the terminal is the master's to handle
    from twisted.internet import reactor

    from mta.config import ConfigError, openTables
    from mta.service import loadAgain
    from mta.tables import Tables

    try:
        config = loadAgain(options.config)
        tables = Tables(reactor)
        openTables(config, tables)
        worker = Worker(options.index, config, tables, reactor, options.queue_directory, options.control_fd,
                        options.listener)
        worker.openMaillog()
    except (ConfigError, OSError) as e:
        sys.stderr.write(f"critical fatal: {e}\n")
        return 1

    failed = []

    def cannotStart(failure):
        # A reason is one "fatal:" line (as a bad configuration is before the reactor runs); a bug
        # is a traceback.  Either way the exit status tells the master the start failed.
        failed.append(failure)
        if failure.check(StartError, OSError):
            log.critical("fatal: {error}", error=str(failure.value))
        else:
            log.failure("cannot start", failure)
        worker.stopReactor()

    def started():
        maybeDeferred(worker.start).addErrback(cannotStart)

    signal.signal(signal.SIGTERM, lambda signum, frame: reactor.callFromThread(worker.stopReactor))
    reactor.addSystemEventTrigger("before", "shutdown", worker.stop)
    reactor.callWhenRunning(started)
    reactor.run(installSignalHandlers=False)
    return 1 if failed else 0
