"""mta.service - build the daemon's service tree from a configuration.

    MTAService (MultiService)
      +- control channel (AMP on $queue_directory/private/control)
      +- one StreamServerEndpointService per [listener:NAME]
    and beside them, started after the listeners:
      queue manager (mta.queue.manager) with the router, the notices and
      the delivery transports (TransportRegistry: IDeliveryTransportFactory
      plugins, the ones the configuration names made at start so a bad
      setup stops the start), and pickup (mta.queue.pickup) for maildrop/.

The queue directory and its subdirectories are created on start; the queue
manager takes up what a previous run left in the queue.  Listeners serve
the SMTP server (mta.smtpd) with the parameters of their own scope.  The
DNS client (mta.delivery.dns) is made on first use and shared.

SECURITY
    Listeners face the network; see mta.smtpd.

CONFIGURATION
    queue_directory, maillog_file, syslog_name, myhostname, dns_servers,
    local_transport, virtual_transport, relay_transport, default_transport;
    [listener:NAME] endpoint and per-listener overrides.
"""

import os

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger, globalLogPublisher

from mta import control
from mta.maillog import MailLogFileObserver, MailLogger
from mta.queue.manager import QueueManager
from mta.queue.notices import Notices
from mta.queue.pickup import Pickup
from mta.queue.store import QueueStore
from mta.routing import Router

log = Logger()


class StartupError(Exception):
    """The daemon cannot start; str() is the message for the administrator."""


class MTAService(MultiService):
    def __init__(self, config, reactor, tables, protocolFactory, onStartupError=None):
        super().__init__()
        self.onStartupError = onStartupError
        self.config = config
        self.clock = reactor
        self.tables = tables
        self.queueDirectory = config["queue_directory"]
        self.store = QueueStore(self.queueDirectory, reactor)
        self.startedAt = None
        self._observer = None
        self.maillog = MailLogger(config["syslog_name"], "master")
        self.setName("mta")
        self._maillogs = {}
        self._resolver = None
        self.transports = TransportRegistry(config.main, self)
        self.manager = QueueManager(
            self.store, Router(config.main, tables), self.transports, config.main, reactor, self.maillogFor,
            notices=Notices(self.store, config.main, reactor, self.maillogFor),
        )
        self.pickup = Pickup(self.store, config.main, reactor, self.maillogFor)

        self._addServer("control", control.controlServerEndpoint(reactor, self.queueDirectory),
                        control.controlFactory(self))
        for listener in config.listeners:
            self._addServer(f"listener:{listener.name}", serverFromString(reactor, listener.endpoint),
                            protocolFactory(listener, self))

    def _addServer(self, name, endpoint, factory):
        service = StreamServerEndpointService(endpoint, factory)
        service._raiseSynchronously = True  # a failed listen stops the start, with a message
        service.setName(name)
        service.setServiceParent(self)

    @property
    def resolver(self):
        """The daemon's DNS client (made on first use), shared by the SMTP transports."""
        if self._resolver is None:
            from mta.delivery.dns import Resolver

            self._resolver = Resolver(self.clock, servers=tuple(self.config["dns_servers"]))
        return self._resolver

    def _configuredTransports(self):
        from mta.routing import splitTransport

        params = self.config.main
        names = {splitTransport(params[p])[0] for p in
                 ("local_transport", "virtual_transport", "relay_transport", "default_transport")}
        return sorted(n for n in names if n)

    def maillogFor(self, program):
        """The MailLogger of C{program} (qmgr, virtual, bounce, ...)."""
        logger = self._maillogs.get(program)
        if logger is None:
            logger = self._maillogs[program] = MailLogger(self.config["syslog_name"], program)
        return logger

    def listenerDescriptions(self):
        return [(listener.name, listener.endpoint) for listener in self.config.listeners]

    def _describe(self, service):
        if service.name == "control":
            return f"the control socket {control.socketPath(self.queueDirectory)}"
        name = service.name.split(":", 1)[1]
        endpoint = dict(self.listenerDescriptions())[name]
        return f"listener {name} ({endpoint})"

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
            self.transports.check(self._configuredTransports())
        except Exception as e:
            raise StartupError(str(e)) from None
        try:
            os.makedirs(self.queueDirectory, mode=0o755, exist_ok=True)
            self.store.prepare()
            control.prepareDirectory(self.queueDirectory)
        except OSError as e:
            raise StartupError(f"cannot create queue directory {self.queueDirectory}: {e.strerror}") from None
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

    def startService(self):
        self.startedAt = self.clock.seconds()
        path = self.config["maillog_file"]
        if path:
            self._observer = MailLogFileObserver(path, self.config["myhostname"], self.config["syslog_name"])
            globalLogPublisher.addObserver(self._observer)
        super().startService()
        self.manager.start()
        self.pickup.start()
        self.maillog.emit(
            f"daemon started -- version {__import__('mta').__version__}, configuration "
            f"{self.config.path or '(embedded defaults)'}"
        )

    def stopService(self):
        pickupStopped = self.pickup.stop()
        self.manager.stop()
        d = super().stopService()
        d.addBoth(lambda result: pickupStopped.addBoth(lambda _: result))
        d.addBoth(lambda result: self.transports.stop().addBoth(lambda _: result))

        def stopped(result):
            self.maillog.emit("daemon stopped")
            if self._observer is not None:
                globalLogPublisher.removeObserver(self._observer)
                self._observer.stream.close()
                self._observer = None
            return result

        return d.addBoth(stopped)


class TransportRegistry:
    """
    The delivery transports by name (master.cf's services), made on first
    use from IDeliveryTransportFactory plugins.  An unknown name gives None:
    the queue manager defers that mail ("mail transport unavailable"), as
    Postfix does for a transport missing from master.cf.
    """

    def __init__(self, params, context):
        self._params = params
        self._context = context
        self._made = {}
        self._factories = None

    def __call__(self, name):
        if name in self._made:
            return self._made[name]
        if self._factories is None:
            import mta.plugins
            from twisted.plugin import getPlugins

            from mta.interfaces import IDeliveryTransportFactory

            self._factories = {f.transportType: f for f in getPlugins(IDeliveryTransportFactory, mta.plugins)}
        factory = self._factories.get(name)
        transport = None
        if factory is not None:
            try:
                transport = factory.makeTransport(name, self._params, self._context)
            except Exception as e:  # a ConfigError, or a plugin's bug: its mail waits
                log.error("transport {name} cannot start, its mail is deferred: {error}", name=name, error=str(e))
        self._made[name] = transport
        return transport

    def check(self, names):
        """Make the transports C{names} now: a configuration error stops the start."""
        for name in names:
            if name in self._made:
                continue
            if self._factories is None:
                self("")  # loads the factories
                self._made.pop("", None)
            factory = self._factories.get(name)
            if factory is not None:
                self._made[name] = factory.makeTransport(name, self._params, self._context)

    def stop(self):
        from twisted.internet.defer import DeferredList, maybeDeferred

        return DeferredList([maybeDeferred(t.stop) for t in self._made.values() if t is not None])


def buildService(config, reactor, tables, onStartupError=None):
    """The daemon's service tree for C{config}; tables already opened in C{tables}."""
    from mta.smtpd import serverFactory

    return MTAService(config, reactor, tables, serverFactory, onStartupError)
