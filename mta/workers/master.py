"""mta.workers.master - the master's side: start, watch, restart and retire worker processes.

    pool = WorkerPool(daemon, reactor)   # daemon: the MTAService
    pool.start()      after the listeners are bound and the queue manager runs
    pool.reload()     after a reload: a new set of workers, the old ones retire
    pool.reopenLogs() after a refused reload: the workers open maillog_file again
    pool.stop()       a Deferred: every worker has ended (SIGTERM, then SIGKILL)
    pool.describe()   "worker N pid P" lines for mta status

Each worker is ``python -m mta.workers`` (mta.workers.worker) started with
spawnProcess: descriptor 3 is one end of a socketpair that carries AMP
(mta.workers.commands), descriptors 4, 5, ... are the listening sockets of
the listeners (the master's own, bound before twistd dropped privileges),
1 is the master's standard output (for maillog_file = /dev/stdout), and
the worker's standard error is read by the master, which logs each line
as ``worker N[PID]: ...``.  Nothing else is inherited.

While at least one worker of the current set is ready, the master does
not accept connections itself (its listening sockets are removed from the
reactor, IReactorFDSet.removeReader); when none is, it accepts again, so
mail is never refused because workers are starting or restarting.

A worker that ends while the daemon runs is logged as Postfix's master
logs a dead child::

    warning: process mta-worker pid 1234 killed by signal 9
    warning: process mta-worker pid 1234 exit status 1

The connections it had counted are released, incoming/ is scanned again
(mail it committed and acknowledged but could not announce is taken up),
its directory tmp/worker.PID is emptied and removed, and a new worker
takes its place: at once if it had been ready, else after
service_throttle_time with Postfix's ``warning: mta-worker: bad command
startup -- throttling``.

A reload (pool.reload()) starts a new set of workers with the new
configuration (they read the file again) and the new sockets, and sends
Retire to the old ones: they stop accepting, finish their open sessions
and exit (as Postfix's old smtpd processes finish their session); one
still running after RETIRE_LIMIT seconds is sent SIGTERM.

SECURITY
    The workers run as the master's user (after twistd's --uid).  What a
    worker says over AMP is checked: queue ids by the queue manager,
    listener names against the configuration in force, event kinds
    against mta.smtpd.anvil.EVENTS; a count for an unknown listener or
    kind is 0.  Worker directories are emptied without
    following links (unlink of each entry; the directory itself must be a
    directory, lstat).

CONFIGURATION
    worker_processes, service_throttle_time.
"""

import os
import socket
import stat
import sys

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger, LogLevel
from twisted.protocols import amp

from mta.smtpd.anvil import EVENTS
from mta.workers import commands

log = Logger()

PROGRAM = "mta-worker"
WORKER_DIRECTORY_PREFIX = "worker."  # tmp/worker.PID
RETIRE_LIMIT = 3600.0  # seconds a retiring worker may take to finish its sessions
KILL_AFTER = 10.0  # seconds between SIGTERM and SIGKILL when the daemon stops
LINE_LIMIT = 4096  # bytes of a worker's standard error line that are logged


def workerDirectory(store, pid):
    return os.path.join(store.queuePath("tmp"), f"{WORKER_DIRECTORY_PREFIX}{pid}")


def removeWorkerDirectory(path):
    """
    Blocking: empty and remove a worker's tmp directory (its files are
    half-received messages nobody was told were accepted).  The number of
    files removed; a missing directory is 0.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return 0
    removed = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                continue
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    try:
        os.rmdir(path)
    except OSError as e:
        log.warn("cannot remove {path}: {error}", path=path, error=e.strerror)
    return removed


def removeWorkerDirectories(store):
    """Blocking, at start-up (no worker runs yet): every tmp/worker.* left by an earlier run."""
    tmp = store.queuePath("tmp")
    removed = 0
    try:
        names = os.listdir(tmp)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(WORKER_DIRECTORY_PREFIX):
            removed += removeWorkerDirectory(os.path.join(tmp, name))
    return removed


def describeEnd(reason):
    """Postfix's words for how a child ended: 'exit status N' or 'killed by signal N'."""
    value = reason.value
    if isinstance(value, error.ProcessTerminated) and value.signal is not None:
        return f"killed by signal {value.signal}"
    return f"exit status {getattr(value, 'exitCode', 0) or 0}"


class MasterSide(amp.AMP):
    """The master's end of one worker's AMP connection."""

    def __init__(self, pool, worker):
        super().__init__()
        self.pool = pool
        self.worker = worker

    @commands.Ready.responder
    def ready(self, index, pid):
        self.pool._ready(self.worker)
        return {}

    @commands.Committed.responder
    def committed(self, ids):
        manager = self.pool.daemon.manager
        for queueId in ids:
            manager.enqueue(queueId, inline=True)
        return {}

    @commands.ClientConnect.responder
    def clientConnect(self, listener, address):
        factory = self.pool.factoryFor(listener)
        if factory is None:
            return {"count": 0, "rate": 0}
        key = (listener, address)
        self.worker.counts[key] = self.worker.counts.get(key, 0) + 1
        counts = factory.clientConnect(address)
        if isinstance(counts, Deferred):  # the counts are in Redis (anvil_store, mta.smtpd.anvilstore)
            return counts.addCallback(lambda counts: {"count": counts[0], "rate": counts[1]})
        return {"count": counts[0], "rate": counts[1]}

    @commands.ClientDisconnect.responder
    def clientDisconnect(self, listener, address):
        key = (listener, address)
        count = self.worker.counts.get(key, 0)
        if count <= 0:
            return {}
        if count == 1:
            del self.worker.counts[key]
        else:
            self.worker.counts[key] = count - 1
        factory = self.pool.factoryFor(listener)
        if factory is not None:
            factory.clientDisconnect(address)
        return {}

    @commands.ClientEvent.responder
    def clientEvent(self, listener, address, kind, count):
        factory = self.pool.factoryFor(listener)
        if factory is None or kind not in EVENTS:
            return {"rate": 0}
        rate = factory.clientEvent(address, kind) if count else factory.clientStatus(address, kind)
        if isinstance(rate, Deferred):  # anvil_store (mta.smtpd.anvilstore)
            return rate.addCallback(lambda rate: {"rate": rate})
        return {"rate": rate}

    @commands.FlushSite.responder
    def flushSite(self, domain):
        return self.pool.daemon.manager.flushSite(domain).addCallback(lambda count: {"count": count})

    @commands.VerifyQuery.responder
    def verifyQuery(self, address):
        d = self.pool.daemon.verify.query(address)
        return d.addCallback(lambda answer: {"status": answer[0], "text": answer[1]})

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.worker.channel = None


class WorkerProcess(protocol.ProcessProtocol):
    """One worker: its process, AMP channel, state and the connections it counted."""

    def __init__(self, pool, index):
        self.pool = pool
        self.index = index
        self.pid = None
        self.channel = None  # MasterSide, while connected
        self.ready = False
        self.retiring = False
        self.counts = {}  # (listener, address) -> sessions this worker counted and has not released
        self.ended = Deferred()
        self._stderr = b""
        self._retireCall = None

    def __str__(self):
        return f"worker {self.index}[{self.pid}]"

    def errReceived(self, data):
        self._stderr += data
        *lines, self._stderr = self._stderr.split(b"\n")
        if len(self._stderr) > LINE_LIMIT:
            lines.append(self._stderr)
            self._stderr = b""
        for line in lines:
            self._logLine(line)

    def _logLine(self, line):
        text = line[:LINE_LIMIT].decode("utf-8", "backslashreplace").rstrip()
        if not text:
            return
        level, _, rest = text.partition(" ")
        emit = {"critical": log.critical, "error": log.error, "warn": log.warn, "debug": log.debug}.get(level)
        if emit is None:
            emit, rest = log.info, (rest if level == "info" else text)
        emit("{worker}: {line}", worker=str(self), line=rest)

    def processEnded(self, reason):
        if self._stderr:
            self._logLine(self._stderr)
            self._stderr = b""
        if self._retireCall is not None and self._retireCall.active():
            self._retireCall.cancel()
        self.pool._ended(self, reason)
        self.ended.callback(None)

    def signal(self, name):
        try:
            self.transport.signalProcess(name)
        except (error.ProcessExitedAlready, OSError):
            pass


class WorkerPool:
    """The master's worker processes (see the module docstring)."""

    def __init__(self, daemon, reactor, executable=None):
        self.daemon = daemon
        self.reactor = reactor
        self.executable = executable or sys.executable
        path = daemon.config.path  # made absolute now, in the directory the configuration was loaded from
        self.configPath = os.path.abspath(path) if path is not None else None
        self.workers = {}  # index -> WorkerProcess of the current set
        self.retiring = set()  # WorkerProcesses of earlier sets, finishing their sessions
        self.running = False
        self._restarts = {}  # index -> the DelayedCall of a throttled restart
        self._paused = set()  # the master's listening ports removed from the reactor

    @property
    def count(self):
        return self.daemon.config.settings.service.workerProcesses

    def factoryFor(self, listener):
        return self.daemon.current.factories.get(listener)

    def describe(self):
        return [f"{w} {'ready' if w.ready else 'starting'}" for _, w in sorted(self.workers.items())] + \
               [f"{w} retiring" for w in sorted(self.retiring, key=lambda w: w.pid or 0)]

    # -- life cycle ------------------------------------------------------------------

    def start(self):
        self.running = True
        for index in range(1, self.count + 1):
            self._spawn(index)

    def reload(self):
        """The configuration in force changed: a new set of workers; the old ones finish and exit."""
        if not self.running:
            return
        old, self.workers = self.workers, {}
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        for worker in old.values():
            self._retire(worker)
        self.reopenLogs(old.values())  # they finish their sessions: into the file as it is now
        for index in range(1, self.count + 1):
            self._spawn(index)
        self._updateAccepting()

    def reopenLogs(self, workers=None):
        """Tell the workers (C{workers}, default: every one) to open maillog_file again (log rotation)."""
        for worker in list(self.workers.values()) + list(self.retiring) if workers is None else workers:
            if worker.channel is not None:
                worker.channel.callRemote(commands.ReopenLog)

    def stop(self):
        """Stop every worker (SIGTERM; SIGKILL after KILL_AFTER seconds); a Deferred that fires when all ended."""
        self.running = False
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        everyone = list(self.workers.values()) + list(self.retiring)
        if not everyone:
            self._updateAccepting()
            return succeed(None)
        for worker in everyone:
            worker.signal("TERM")
        kill = self.reactor.callLater(KILL_AFTER, lambda: [w.signal("KILL") for w in everyone])
        done = DeferredList([w.ended for w in everyone])

        def ended(_):
            if kill.active():
                kill.cancel()
            self._updateAccepting()

        return done.addCallback(ended)

    # -- one worker ---------------------------------------------------------------------

    def _listenerSockets(self):
        """[(name, fd, family)] of the master's listening sockets."""
        found = []
        for name, service in self.daemon.listeners.items():
            port = service.port
            if port is None or not hasattr(port, "fileno"):
                continue
            found.append((name, port.fileno(), port.socket.family))
        return found

    def _spawn(self, index):
        self._restarts.pop(index, None)
        if not self.running:
            return
        worker = WorkerProcess(self, index)
        parentEnd, childEnd = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        childFDs = {1: 1 if _isOpen(1) else "r", 2: "r", 3: childEnd.fileno()}
        args = [self.executable, "-m", "mta.workers", "--index", str(index), "--control-fd", "3",
                "--queue-directory", self.daemon.queueDirectory]
        for number, (name, fd, family) in enumerate(self._listenerSockets(), start=4):
            childFDs[number] = fd
            args += ["--listener", f"{name}={number}/{int(family)}"]
        if self.configPath is not None:
            args += ["--config", self.configPath]
        try:
            transport = self.reactor.spawnProcess(worker, self.executable, args, env=dict(os.environ),
                                                  childFDs=childFDs)
        except Exception as e:
            parentEnd.close()
            childEnd.close()
            log.error("warning: cannot start {program}: {error}", program=PROGRAM, error=str(e))
            self._restarts[index] = self.reactor.callLater(
                self.daemon.config.settings.service.serviceThrottleTime, self._spawn, index)
            return
        childEnd.close()
        worker.pid = transport.pid
        worker.channel = MasterSide(self, worker)
        self.reactor.adoptStreamConnection(parentEnd.fileno(), socket.AF_UNIX, _Once(worker.channel))
        parentEnd.close()
        self.workers[index] = worker
        log.info("{worker}: started", worker=str(worker))

    def _ready(self, worker):
        worker.ready = True
        log.info("{worker}: ready", worker=str(worker))
        if worker.retiring:  # retired before it said it was ready
            self._sendRetire(worker)
        self._updateAccepting()

    def _retire(self, worker):
        worker.retiring = True
        self.retiring.add(worker)
        if worker.ready:
            self._sendRetire(worker)
        worker._retireCall = self.reactor.callLater(RETIRE_LIMIT, worker.signal, "TERM")

    def _sendRetire(self, worker):
        if worker.channel is None:
            worker.signal("TERM")
            return
        d = worker.channel.callRemote(commands.Retire)
        d.addErrback(lambda f: worker.signal("TERM"))

    def _ended(self, worker, reason):
        for (listener, address), count in worker.counts.items():
            factory = self.factoryFor(listener)
            for _ in range(count if factory is not None else 0):
                factory.clientDisconnect(address)
        worker.counts.clear()
        removed = removeWorkerDirectory(workerDirectory(self.daemon.store, worker.pid))
        if removed:
            log.info("{worker}: removed {count} unfinished file(s) in its tmp directory", worker=str(worker),
                     count=removed)
        if self.running:  # what it committed but could not announce (its last box may be lost at exit)
            self.daemon.manager.scanIncoming()
        if worker.retiring:
            self.retiring.discard(worker)
            log.info("{worker}: retired ({how})", worker=str(worker), how=describeEnd(reason))
            return
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        self._updateAccepting()
        if not self.running:
            return
        self.daemon.maillogFor("master").emit(f"warning: process {PROGRAM} pid {worker.pid} {describeEnd(reason)}",
                                             level=LogLevel.warn)
        if worker.ready:
            self.reactor.callLater(0, self._spawn, worker.index)
        else:
            self.daemon.maillogFor("master").emit(f"warning: {PROGRAM}: bad command startup -- throttling",
                                                 level=LogLevel.warn)
            self._restarts[worker.index] = self.reactor.callLater(
                self.daemon.config.settings.service.serviceThrottleTime, self._spawn, worker.index)

    # -- who accepts --------------------------------------------------------------------

    def _updateAccepting(self):
        """The master accepts on its listening sockets only while no current worker is ready."""
        ports = {service.port for service in self.daemon.listeners.values() if service.port is not None}
        self._paused &= ports
        if self.running and any(w.ready for w in self.workers.values()):
            for port in ports - self._paused:
                self.reactor.removeReader(port)
                self._paused.add(port)
        else:
            for port in self._paused:
                self.reactor.addReader(port)
            self._paused.clear()


class _Once(protocol.Factory):
    """The factory of an adopted connection: its one protocol, made already."""

    def __init__(self, channel):
        self.channel = channel

    def buildProtocol(self, addr):
        return self.channel


def _isOpen(fd):
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


__all__ = ["WorkerPool", "removeWorkerDirectories", "removeWorkerDirectory"]
