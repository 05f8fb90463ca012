"""mta.service - build the daemon's service tree from a configuration, and reload it.

    MTAService (MultiService)
      +- control channel (AMP on $queue_directory/private/control)
      +- one ListenerService per [listener:NAME]
    and beside them, started after the listeners:
      queue manager (mta.queue.manager) and pickup (mta.queue.pickup) for
      maildrop/; and the queue committer's one thread (a ThreadPool of
      one, mta.queue.committer), started before the listeners and stopped
      after everything else, so the last commits and state records finish.
    and, with worker_processes = N, N worker processes (mta.workers): they
      adopt the listeners' sockets and run the SMTP sessions; they are
      started last, and stopped first (stopService waits for them).

Everything made from one configuration is a Generation (mta.generation):
the opened tables, the router, the notices, the delivery transports
(TransportRegistry: IDeliveryTransportFactory plugins, the ones the
configuration names made at once so that a bad setup stops the start or
refuses the reload), the DNS client (made on first use), the mail loggers
and one SMTP server factory per listener, with the parameters of the
listener's own scope.  A ListenerService (mta.listeners) holds a
listener's socket and hands each connection to the factory in force.  The
queue directory and its subdirectories are created on start; the queue
manager takes up what a previous run left in the queue.  SIGTERM and the
control channel's Stop (``mta stop``) stop the reactor; stopService closes
the listeners and the control socket and stops the transports.

RELOAD
    SIGHUP (mta.tap) and ``mta reload`` (the control channel's Reload
    command) both call MTAService.reload(), as ``postfix reload`` signals
    the master.  It logs Postfix's line::

        reload -- version 0.1.0, configuration /etc/mta/mta.ini

    re-reads the file the daemon started with (config.path; no discovery is
    run again, and a daemon on the embedded defaults reloads those) and
    opens every table it names again, in a new Tables.  Then it makes a new
    Generation.  Any error up to here (a syntax error, a bad value, a table
    that does not open, a transport that cannot be made, a maillog_file
    that cannot be opened) refuses the whole reload: one line
    ``error: reload refused, the configuration in force stays: ...`` and
    nothing changes.  Otherwise the new generation takes over:

    - listeners: one whose endpoint is unchanged keeps its socket; its
      ListenerFactory hands each new session to the new SMTP server
      factory, while a session already open keeps the factory it was built
      by, so its settings never change mid-session (the per-client
      connection counts carry over).  A new [listener:X] starts listening;
      a removed one stops listening and its open sessions finish.  A
      changed endpoint: the new one is bound, then the old one closed (if
      the new one cannot be bound while the old is open, as for the same
      port on another address, the old one is closed first); if the new one
      cannot be bound at all, the listener goes back to its old endpoint.
      A listener that cannot bind is a warning or an error line naming it
      and the reason; the rest of the new configuration stays in force (as
      Postfix's master carries on with the other services), and the next
      reload tries again.
    - the queue manager (QueueManager.reconfigure): new deliveries use the
      new router, transports, notices and limits (the concurrency limit of
      existing destinations changes at once); deliveries in progress finish
      with the transport objects they hold, and the old transports are
      stopped when their last delivery ends (their cached SMTP connections
      close then); then the old generation's tables are closed (their
      database and LDAP connections, thread pools and files: Tables.close();
      a session that began before the reload and asks one again opens a
      connection anew).  At stop the tables in force are closed too.
    - pickup: the old one finishes the file in hand, a new one with the new
      settings takes over.
    - the DNS client is made anew (dns_servers, or /etc/resolv.conf, read
      again; its cache starts empty), as Postfix's new smtp(8) processes.
    - maillog_file is opened again (the new path, or the same path after a
      log rotation), also when the reload is refused; syslog_name applies
      to lines logged after the reload.
    - the control channel stays as it is.
    - worker processes (mta.workers.master.WorkerPool.reload): a new set
      is started with the new configuration and the new sockets (as many
      as the new worker_processes says; 0 stops using workers), and the old
      ones finish their sessions and exit.
    - queue_sync_method applies from the committer's next batch.
    - TLS-RPT (mta.delivery.tlsrpt): the one reporter keeps its counts
      (in memory and in its SQLite store) and takes the new settings.

    anvil_store (the per-client counts in Redis, mta.smtpd.anvilstore)
    cannot change without a restart either: the new listeners' factories
    count in the store in force, and a change is ignored with a warning.

    queue_directory cannot change without a restart (the queue store, the
    control socket and its lock live there): a change is ignored with
    Postfix's three warnings ("ignoring queue_directory parameter value
    change", the old and new values, "to change queue_directory, stop and
    start mta"), and the rest of the configuration is applied.

    One reload runs at a time.  A request that arrives while one runs is
    queued: it runs once the running one is done (so it reads the file as it
    was after the request), and the requests that arrive meanwhile share
    that one run.  When it ends, ``reload done`` is logged, with a warning
    count when a listener failed; the requester (``mta reload``) gets the
    same result.

SECURITY
    Listeners face the network; see mta.smtpd.  The configuration is read
    again with the daemon's privileges; after twistd drops them (--uid), a
    new listener on a port below 1024 cannot be bound (logged, the rest of
    the reload applies).

    twistd --uid/--gid: the privileged start (as root) binds the sockets
    and creates the queue directory, then gives the queue to that user
    (chownTree: the directory, its files and its queue subdirectories;
    only entries owned otherwise, with lchown, never following a symbolic
    link, so a link planted in the queue cannot make root chown another
    file; unknown subdirectories are left alone).  startService, as the user the daemon runs
    as, checks that it can use every queue directory (queueAccessProblem)
    and open maillog_file, and stops with one fatal line when it cannot.

CONFIGURATION
    queue_directory, maillog_file, syslog_name, myhostname, dns_servers,
    worker_processes, service_throttle_time, anvil_store, anvil_store_password_file, local_transport, virtual_transport, relay_transport, default_transport;
    [listener:NAME] endpoint and per-listener overrides.

DEVIATIONS
    Postfix's master exits (fatal) when main.cf or master.cf is broken at
    reload time, and when a service cannot bind; mta refuses a broken
    configuration and keeps the one in force, and carries on without the
    listener that cannot bind.  Postfix terminates the processes of a
    service removed from master.cf at once; mta lets the open sessions of
    a removed listener finish.
"""

import os
import stat

import attrs
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

import mta
from mta import control
from mta.config import ConfigError, load, openTables
from mta.generation import Generation, TransportRegistry, configuredTransports
from mta.listeners import ListenerService, describeError, shareConnectionCounts
from mta.maillog import MailLogFile, installFile
from mta.queue.manager import QueueManager
from mta.queue.pickup import Pickup
from mta.queue.store import QueueStore
from mta.verify import VerifyService
from mta.workers.master import WorkerPool, removeWorkerDirectories

__all__ = ["MTAService", "ReloadResult", "StartupError", "TransportRegistry", "buildService"]

log = Logger()


class StartupError(Exception):
    """The daemon cannot start; str() is the message for the administrator."""


class ReloadRefused(Exception):
    """The new configuration is not applied; str() says why."""


@attrs.frozen
class ReloadResult:
    """What a reload did: refused (with the error), or applied (with warnings about listeners)."""

    configuration: str
    refused: bool = False
    error: str | None = None
    warnings: tuple = ()
    errors: tuple = ()


def describeConfiguration(config):
    return config.path or "(embedded defaults)"


def loadAgain(path):
    """The configuration at C{path} again; None: the embedded defaults (never a discovery)."""
    return load(path) if path is not None else load(None, text="")


class MTAService(MultiService):
    """
    The daemon: a MultiService of the control channel and one
    ListenerService per [listener:NAME], beside the queue manager and
    pickup, all in one reactor (see the module docstring).

    config            the configuration in force (mta.config.Config; the
                      current generation's)
    current           the Generation in force (mta.generation): tables,
                      address resolver, router, cleanup, notices,
                      transports and one SMTP server factory per listener
    clock             the reactor (IReactorTime, IReactorThreads, ...)
    queueDirectory    $queue_directory (fixed for the daemon's life: a
                      reload cannot change it)
    store             the QueueStore (mta.queue.store) of that directory
    manager           the QueueManager (mta.queue.manager)
    pickup            the Pickup service of maildrop/ (mta.queue.pickup)
    listeners         listener name -> ListenerService (mta.listeners), in
                      configuration order
    startedAt         when the daemon started (clock seconds), for status
    tables, transports, resolver, maillog
                      the current generation's (properties)

    reload() is the one path of SIGHUP and the control channel's Reload.
    """

    def __init__(self, config, reactor, tables, protocolFactory, onStartupError=None, stopReactor=None, runAs=None):
        """C{runAs}: (uid, gid) twistd switches to after binding (--uid/--gid), or None."""
        super().__init__()
        self.onStartupError = onStartupError
        self.runAs = runAs
        self.stopReactor = stopReactor if stopReactor is not None else getattr(reactor, "stop", None)
        self.clock = reactor
        self.protocolFactory = protocolFactory
        self.queueDirectory = config.settings.service.queueDirectory
        # The queue's durable writes get a thread of their own (mta.queue.committer), not the reactor's
        # pool that DNS and delivery share; a test reactor's synchronous pool is used as it is.
        reactorPool = reactor.getThreadPool() if hasattr(reactor, "getThreadPool") else None
        self.commitPool = ThreadPool(1, 1, "mta-commit") if isinstance(reactorPool, ThreadPool) else None
        self.store = QueueStore(self.queueDirectory, reactor, commitPool=self.commitPool,
                                syncMethod=config.settings.service.queueSyncMethod)
        self.startedAt = None
        self._observer = None
        self.setName("mta")
        # Address verification (mta.verify): one service for the daemon's life, its cache in memory or a file.
        self.verify = VerifyService(config.settings.verify, reactor, self._postProbe, self.maillogFor,
                                    pool=(reactor, reactorPool) if isinstance(reactorPool, ThreadPool) else None,
                                    qualify=config.settings.notices.qualified)
        self.current = Generation(config, tables, reactor, self.store, protocolFactory, self._flushSite,
                                  verifyAddress=self._verifyAddress)
        # TLS-RPT (mta.delivery.tlsrpt): one reporter for the daemon's life, handed to every generation.
        self.tlsReporter = self.current.tlsReporter
        self._retiring = set()  # TransportRegistry objects of earlier generations, not stopped yet
        self._stopping = []  # Deferreds of old pickups finishing their file
        self._reloadRunning = False
        self._reloadWaiters = []
        self.manager = QueueManager(
            self.store, self.current.router, self.current.transports, config.settings.qmgr, reactor, self.maillogFor,
            notices=self.current.notices, verifier=self.verify,
        )
        self.pickup = Pickup(self.store, self.current.cleanup, reactor, self.current.maillogFor)
        self.workers = WorkerPool(self, reactor)  # worker_processes (mta.workers)
        # anvil_store (mta.smtpd.anvilstore): the per-client counts in Redis, shared with other machines;
        # None: each listener's own Anvil in memory.  With workers, the master asks Redis for them.
        self.anvilStore = None
        spec = config.settings.service.anvilStore
        if spec is not None:
            from mta.smtpd.anvilstore import RedisAnvil, nodeName

            self.anvilStore = RedisAnvil(reactor, spec, nodeName(config.settings.service.hostname),
                                         self.maillogFor("anvil"))
            self._attachAnvil(self.current)

        service = StreamServerEndpointService(control.controlServerEndpoint(reactor, self.queueDirectory),
                                              control.controlFactory(self))
        service._raiseSynchronously = True  # a failed listen stops the start, with a message
        service.setName("control")
        service.setServiceParent(self)
        self.listeners = {}  # name -> ListenerService, in configuration order
        for listener in config.listeners:
            self._addListener(ListenerService(listener.name, listener.endpoint, reactor,
                                              self.current.factories[listener.name]))

    def _attachAnvil(self, generation):
        if self.anvilStore is not None:
            for factory in generation.factories.values():
                self.anvilStore.attach(factory)

    def _addListener(self, service):
        self.listeners[service.listenerName] = service
        service.setServiceParent(self)

    # -- what the generation in force holds ------------------------------------------

    @property
    def config(self):
        return self.current.config

    @property
    def tables(self):
        return self.current.tables

    @property
    def transports(self):
        return self.current.transports

    @property
    def resolver(self):
        return self.current.resolver

    @property
    def maillog(self):
        return self.maillogFor("master")

    def _flushSite(self, domain):
        """ETRN (every generation's SMTP servers): the queue manager's flushSite."""
        return self.manager.flushSite(domain)

    def _verifyAddress(self, address):
        """reject_unverified_* (every generation's SMTP servers, and the workers'): the verify service's query."""
        return self.verify.query(address)

    def _postProbe(self, sender, address):
        """Queue an address verification probe through the cleanup in force (mta.verify)."""
        from mta.cleanup import Origin
        from mta.model import Recipient

        return self.current.cleanup.submit(Origin.internal(), sender, (Recipient(address),), b"", probe=True)

    def maillogFor(self, program):
        """The MailLogger of C{program} in the configuration in force."""
        return self.current.maillogFor(program)

    def listenerDescriptions(self):
        """(name, endpoint) of every listener that listens (or is binding)."""
        return [(s.listenerName, s.description) for s in self.listeners.values()
                if s.port is not None or s._listening is not None]

    def _describe(self, service):
        if service.name == "control":
            return f"the control socket {control.socketPath(self.queueDirectory)}"
        return str(service)

    # -- start and stop ----------------------------------------------------------------

    def privilegedStartService(self):
        """Create the queue directory and bind every socket, or stop with one clear message."""
        try:
            self._bind()
        except StartupError as e:
            log.critical("fatal: {error}", error=str(e))
            if self.onStartupError is None:
                raise
            self.onStartupError(str(e))

    def _bind(self):
        try:
            self.transports.check(configuredTransports(self.config))
        except Exception as e:
            raise StartupError(str(e)) from None
        try:
            os.makedirs(self.queueDirectory, mode=0o755, exist_ok=True)
            self.store.prepare()
            control.prepareDirectory(self.queueDirectory)
        except OSError as e:
            raise StartupError(f"cannot create queue directory {self.queueDirectory}: {e.strerror}") from None
        if self.anvilStore is not None:  # read as root, before twistd's --uid, as the TLS keys are
            from mta.smtpd.anvilstore import readPassword

            path = self.config.settings.service.anvilStorePasswordFile
            try:
                self.anvilStore.client.password = readPassword(path)
            except (OSError, UnicodeDecodeError) as e:
                raise StartupError(f"anvil_store_password_file {path}: cannot read: "
                                   f"{getattr(e, 'strerror', None) or e}") from None
        for service in self:
            try:
                service.privilegedStartService()
            except CannotListenError as e:
                if service.name == "control" and "lock" in str(e.socketError).lower():
                    raise StartupError(
                        f"another mta is running on queue directory {self.queueDirectory} "
                        f"(see {control.socketPath(self.queueDirectory)}.lock)"
                    ) from None
                raise StartupError(f"{self._describe(service)}: cannot listen: {e.socketError}") from None
            except Exception as e:
                raise StartupError(f"{self._describe(service)}: cannot listen: {e}") from None
        if self.runAs is not None and os.geteuid() == 0:
            uid, gid = self.runAs
            try:
                changed = chownTree(self.queueDirectory, uid, gid)
            except OSError as e:
                raise StartupError(f"cannot give queue directory {self.queueDirectory} to uid {uid} gid {gid}: "
                                   f"{e.filename}: {e.strerror}") from None
            if changed:
                log.info("queue directory {path}: {count} entries given to uid {uid} gid {gid} (twistd --uid/--gid)",
                         path=self.queueDirectory, count=changed, uid=uid, gid=gid)

    def startService(self):
        self.startedAt = self.clock.seconds()
        problem = queueAccessProblem(self.queueDirectory)
        if problem is None:
            try:
                observer = self._openMaillog(self.config)
            except OSError as e:
                problem = f"maillog_file {self.config.settings.service.maillogFile}: cannot open: {e.strerror}"
        if problem is not None:  # as the user twistd runs the daemon as (--uid): a clear stop, not a broken daemon
            log.critical("fatal: {error}", error=problem)
            if self.onStartupError is None:
                raise StartupError(problem)
            self.onStartupError(problem)
            return
        self._swapMaillog(observer)
        if self.commitPool is not None:
            self.commitPool.start()
        try:
            removed = removeWorkerDirectories(self.store)  # no worker runs yet: what an earlier run left
        except OSError as e:
            log.error("cannot clean the worker directories in {path}: {error}", path=self.store.queuePath("tmp"),
                      error=e.strerror)
        else:
            if removed:
                log.info("removed {count} temporary file(s) left by worker processes", count=removed)
        super().startService()
        self.manager.start()
        self.verify.start()
        self.pickup.start()
        self.tlsReporter.start()
        if self.anvilStore is not None:
            self.anvilStore.start()
        self.maillog.emit(f"daemon started -- version {mta.__version__}, configuration "
                          f"{describeConfiguration(self.config)}")
        self.workers.start()

    def stopService(self):
        # The workers first (their sessions are cut, their commits in flight finish), then the rest.
        return self.workers.stop().addBoth(lambda _: self._stopMaster())

    def _stopMaster(self):
        pickupStopped = DeferredList([self.pickup.stop()] + self._stopping)
        self.manager.stop()
        self.verify.stop()
        d = super().stopService()
        d.addBoth(lambda result: pickupStopped.addBoth(lambda _: result))
        registries = [self.transports] + list(self._retiring)
        d.addBoth(lambda result: DeferredList([r.stop() for r in registries]).addBoth(lambda _: result))
        d.addBoth(lambda result: maybeDeferred(self.tlsReporter.stop).addBoth(lambda _: result))
        d.addBoth(lambda result: self.current.tables.close().addBoth(lambda _: result))
        if self.anvilStore is not None:  # after the listeners: no session counts any more
            d.addBoth(lambda result: self.anvilStore.stop().addBoth(lambda _: result))

        def stopped(result):
            if self.commitPool is not None and self.commitPool.started:
                self.commitPool.stop()  # after the last commit and state record: waits for a batch running
                self.store.close()
            self.maillog.emit("daemon stopped")
            self._swapMaillog(None)
            return result

        return d.addBoth(stopped)

    def requestStop(self):
        """Stop the daemon as SIGTERM does (mta stop), once the current answer is written."""
        if self.stopReactor is not None:
            self.clock.callLater(0, self.stopReactor)

    # -- maillog_file ----------------------------------------------------------------------

    def _openMaillog(self, config):
        """A new MailLogFile (mta.maillog) for the maillog_file of C{config} (None when it is empty); OSError."""
        path = config.settings.service.maillogFile
        if not path:
            return None
        return MailLogFile(path, config.settings.service.hostname, config.settings.service.syslogName,
                           clock=self.clock)

    def _swapMaillog(self, observer):
        """Log to C{observer} (a MailLogFile) from now on (None: no file); the old file is flushed and closed."""
        old, self._observer = self._observer, observer
        installFile(observer)
        if old is not None:
            old.close()

    # -- reload ------------------------------------------------------------------------------

    def reload(self):
        """
        Reload the configuration file and the tables (SIGHUP, mta reload);
        a Deferred firing with a ReloadResult.  See RELOAD in the module
        docstring; a request while a reload runs is queued.
        """
        waiter = Deferred()
        if not self.running:
            error = "the daemon is not running (starting or stopping)"
            self.maillog.emit(f"warning: reload request ignored: {error}", level=LogLevel.warn)
            waiter.callback(ReloadResult(describeConfiguration(self.config), refused=True, error=error))
        elif self._reloadRunning:
            self._reloadWaiters.append(waiter)
        else:
            self._runReload([waiter])
        return waiter

    def _runReload(self, waiters):
        self._reloadRunning = True
        d = Deferred.fromCoroutine(self._reload())

        def done(result):
            if isinstance(result, Failure):  # a bug: logged, and the requester is told
                log.failure("reload failed", result)
                result = ReloadResult(describeConfiguration(self.config), refused=True,
                                      error=f"internal error: {result.getErrorMessage()}")
            self._reloadRunning = False
            queued, self._reloadWaiters = self._reloadWaiters, []
            if queued:
                if self.running:
                    self._runReload(queued)
                else:
                    for waiter in queued:
                        waiter.callback(ReloadResult(result.configuration, refused=True,
                                                     error="the daemon is stopping"))
            for waiter in waiters:
                waiter.callback(result)

        d.addBoth(done)

    async def _reload(self):
        path = self.config.path
        self.maillog.emit(f"reload -- version {mta.__version__}, configuration {describeConfiguration(self.config)}")
        try:
            generation, observer = self._prepare(path)
        except ReloadRefused as e:
            self._reopenMaillog()
            self.workers.reopenLogs()  # a log rotation's reload may be refused: the workers reopen too
            self.maillog.emit(f"error: reload refused, the configuration in force stays: {e}", level=LogLevel.error)
            return ReloadResult(describeConfiguration(self.config), refused=True, error=str(e))
        problems = await self._commit(generation, observer)
        warnings = tuple(text for level, text in problems if level == "warning")
        errors = tuple(text for level, text in problems if level == "error")
        for level, text in problems:
            self.maillog.emit(f"{level}: {text}", level=LogLevel.warn if level == "warning" else LogLevel.error)
        count = len(problems)
        self.maillog.emit("reload done" + (f" ({count} listener problem{'s' if count > 1 else ''})" if count else ""))
        return ReloadResult(describeConfiguration(generation.config), warnings=warnings, errors=errors)

    def _prepare(self, path):
        """The new Generation and maillog observer, with nothing changed yet; ReloadRefused."""
        from mta.tables import Tables

        try:
            config = loadAgain(path)
            tables = Tables(self.clock)
            openTables(config, tables)
            generation = Generation(config, tables, self.clock, self.store, self.protocolFactory, self._flushSite,
                                    tlsReporter=self.tlsReporter, verifyAddress=self._verifyAddress)
            generation.transports.check(configuredTransports(config))
        except ConfigError as e:
            raise ReloadRefused(str(e)) from None
        except Exception as e:  # a plugin's error, or a bug: it must not take the daemon down
            log.failure("reload: the new configuration cannot be set up", Failure())
            raise ReloadRefused(describeError(e)) from None
        try:
            observer = self._openMaillog(config)
        except OSError as e:
            raise ReloadRefused(f"maillog_file {config.settings.service.maillogFile}: cannot open: {e.strerror}") from None
        return generation, observer

    def _reopenMaillog(self):
        """maillog_file opened again under the configuration in force (log rotation)."""
        try:
            observer = self._openMaillog(self.config)
        except OSError as e:
            log.error("cannot reopen maillog_file {path}: {error}", path=self.config.settings.service.maillogFile,
                      error=e.strerror)
            return
        self._swapMaillog(observer)

    async def _commit(self, generation, observer):
        """Put C{generation} in force; the list of (level, text) problems with listeners."""
        old = self.current
        # The store, the control socket and its lock stay where they are (self.queueDirectory).
        before, after = self.queueDirectory, generation.config.settings.service.queueDirectory
        if before != after:
            for text in ("ignoring queue_directory parameter value change",
                         f'old value: "{before}", new value: "{after}"',
                         "to change queue_directory, stop and start mta"):
                self.maillog.emit(f"warning: {text}", level=LogLevel.warn)
        self.current = generation
        self._swapMaillog(observer)
        self._switchAnvil(old, generation)
        self.store.setSyncMethod(generation.config.settings.service.queueSyncMethod)
        self.tlsReporter.use(generation)  # its settings, cleanup and DNS from now on (the store stays)
        self.manager.reconfigure(generation.config.settings.qmgr, generation.router, generation.transports,
                                 generation.notices)
        self.verify.reconfigure(generation.config.settings.verify, generation.config.settings.notices.qualified)
        self._retire(old)
        await self._switchPickup(generation)
        if not self.running:
            return []
        problems = await self._switchListeners(generation)
        self.workers.reload()  # new workers with the new configuration and sockets; the old ones retire
        return problems

    def _switchAnvil(self, old, generation):
        """The new listeners count where the old ones did (anvil_store is fixed until a restart)."""
        before, after = old.config.settings.service.anvilStore, generation.config.settings.service.anvilStore
        if before != after:
            self.maillog.emit(f'warning: ignoring anvil_store parameter value change (old value: "{before or ""}", '
                              f'new value: "{after or ""}"): to change anvil_store, stop and start mta',
                              level=LogLevel.warn)
        if self.anvilStore is not None:
            self.anvilStore.maillog = generation.maillogFor("anvil")
            self._attachAnvil(generation)

    def _retire(self, generation):
        """The replaced generation: its transports stop when idle, then its tables are closed."""
        registry = generation.transports
        self._retiring.add(registry)
        d = registry.retire()
        d.addBoth(lambda _: self._retiring.discard(registry))
        if generation.tables is not self.current.tables:  # sessions that began before still work: see close()
            d.addBoth(lambda _: generation.tables.close())

    async def _switchPickup(self, generation):
        old = self.pickup
        self.pickup = Pickup(self.store, generation.cleanup, self.clock, generation.maillogFor)
        stopped = old.stop()
        self._stopping.append(stopped)
        try:
            await stopped
        finally:
            self._stopping.remove(stopped)
        # A maildrop file queued but not removable must never be queued twice.
        self.pickup._skip = old._skip
        self.pickup._retryAt = old._retryAt
        if self.running:
            self.pickup.start()

    async def _switchListeners(self, generation):
        problems = []
        wanted = {listener.name: listener for listener in generation.config.listeners}
        # Removed ones first: a renamed listener may take over the endpoint of the old name.
        for name in [n for n in self.listeners if n not in wanted]:
            service = self.listeners.pop(name)
            await maybeDeferred(service.disownServiceParent)
            self.maillog.emit(f"listener {name} ({service.description}): removed; its open sessions finish")
        for name, listener in wanted.items():
            factory = generation.factories[name]
            service = self.listeners.get(name)
            if service is None:
                service = ListenerService(name, listener.endpoint, self.clock, factory)
                try:
                    service.port = await service.listen()
                except Exception as e:
                    problems.append(("error", f"{service}: cannot listen: {describeError(e)}; not listening"))
                    continue
                if not self.running:  # stopped meanwhile
                    await maybeDeferred(service.stopService)
                    continue
                self._addListener(service)
                self.maillog.emit(f"{service}: added")
                continue
            shareConnectionCounts(service.factory.current, factory)
            service.factory.current = factory
            if service.port is None:  # not listening since an earlier reload: try again
                service.description = listener.endpoint
                try:
                    service.port = await service.listen()
                except Exception as e:
                    problems.append(("error", f"{service}: cannot listen: {describeError(e)}; not listening"))
            elif service.description != listener.endpoint:
                before = service.description
                problem = await service.moveTo(listener.endpoint)
                if problem is not None:
                    problems.append(problem)
                else:
                    self.maillog.emit(f"{service}: moved from {before}")
        # Configuration order, for the status line.
        self.listeners = {name: self.listeners[name] for name in wanted if name in self.listeners}
        return problems


def buildService(config, reactor, tables, onStartupError=None, runAs=None):
    """The daemon's service tree for C{config}; tables already opened in C{tables}; C{runAs}: see MTAService."""
    from mta.smtpd import serverFactory

    return MTAService(config, reactor, tables, serverFactory, onStartupError, runAs=runAs)


def chownTree(directory, uid, gid):
    """
    Give the queue directory C{directory} to C{uid}:C{gid}: itself, the
    files directly in it (the SQLite caches), and the queue directories
    (QUEUE_NAMES, private) with everything under them; entries owned
    otherwise only; symbolic links themselves, never what they point to;
    other subdirectories are left alone (a queue_directory set to a
    directory that holds other things must not hand those over).  The
    number of entries changed; OSError on failure.
    """
    from mta.queue.store import QUEUE_NAMES

    changed = 0

    def give(path):
        nonlocal changed
        st = os.lstat(path)
        if st.st_uid != uid or st.st_gid != gid:
            os.lchown(path, uid, gid)
            changed += 1
        return st

    give(directory)
    queues = {*QUEUE_NAMES, "private"}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        st = give(path) if name in queues or not os.path.isdir(path) or os.path.islink(path) else None
        if st is None or name not in queues or stat.S_ISLNK(st.st_mode):
            continue
        for top, dirs, files in os.walk(path, onerror=_raise):
            for entry in dirs + files:
                give(os.path.join(top, entry))
    return changed


def _raise(error):
    raise error


QUEUE_ACCESS = os.R_OK | os.W_OK | os.X_OK


def queueAccessProblem(directory):
    """Why the daemon, as the user it runs as, cannot use its queue directory, or None."""
    from mta.queue.store import QUEUE_NAMES

    for path in [directory] + [os.path.join(directory, name) for name in (*QUEUE_NAMES, "private")]:
        if os.path.isdir(path) and not os.access(path, QUEUE_ACCESS):
            return (f"queue directory {path} is not readable and writable by uid {os.geteuid()} "
                    f"(owned by uid {os.stat(path).st_uid}); when twistd runs mta with --uid, start it as root "
                    f"so that mta gives the queue to that user, or chown -R the queue directory")
    return None
