"""mta.generation - what one configuration makes, so that a reload can make another beside it.

    Generation(config, tables, clock, store, protocolFactory, flushSite=None, verifyAddress=None)
        .tables, .addressResolver (trivial-rewrite, from [main], shared by the
        router and every listener's recipient checks), .router, .cleanup
        (for pickup, notices and transcripts), .notices,
        .transports (a TransportRegistry),
        .resolver (the DNS client, made on first use), .maillogFor(program),
        .tlsReporter (TLS-RPT, mta.delivery.tlsrpt: the daemon's, shared),
        .factories (one SMTP server factory per listener, by name)

The daemon (mta.service) holds one generation in force; a reload makes a
new one from the file read again, and only if that succeeds switches to it.
Work that began under the old generation keeps the objects it holds: an
SMTP session its server factory, a delivery its transport.  A Generation
is the context of its transports (clock, store, tables, resolver,
transports, listenerDescriptions, maillogFor) and the ``daemon`` of its
SMTP server factories (clock, store, tables, flushSite, verifyAddress).

TransportRegistry makes the delivery transports by name from
IDeliveryTransportFactory plugins and counts the deliveries in progress
through them, so that retire() can stop an old generation's transports
(closing their cached SMTP connections) when its last delivery ends.

SECURITY
    None beyond the transports' own.

CONFIGURATION
    dns_servers, syslog_name, local_transport, virtual_transport,
    relay_transport, default_transport; what the router, the notices, the
    transports and the SMTP server read.
"""

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger, LogLevel

from mta.cleanup import Cleanup
from mta.maillog import MailLogger
from mta.queue.notices import Notices
from mta.routing import AddressResolver, Router

log = Logger()


def configuredTransports(config):
    """The transports the four *_transport parameters name: they must start, or the daemon does not."""
    return sorted(config.settings.resolver.transportNames())


class Generation:
    """
    What one configuration makes (see the module docstring).  It is the
    context of its transports (clock, store, tables, resolver, transports,
    listenerDescriptions, maillogFor) and the daemon of its SMTP server
    factories (clock, store, tables, flushSite, verifyAddress).
    """

    def __init__(self, config, tables, clock, store, protocolFactory, flushSite=None, tlsReporter=None,
                 verifyAddress=None):
        """
        C{flushSite}: the queue manager's flushSite(domain), for ETRN (the
        manager outlives generations); C{tlsReporter}: the daemon's one
        mta.delivery.tlsrpt.TlsReporter (it outlives generations too;
        None: one of this generation's own); C{verifyAddress}: the verify
        service's query(address), for reject_unverified_* (mta.verify; it
        outlives generations too).
        """
        self.config = config
        self.flushSite = flushSite
        self.verifyAddress = verifyAddress
        self.tables = tables
        self.clock = clock
        self.store = store
        self._maillogs = {}
        self._resolver = None
        self.transports = TransportRegistry(config.settings, self)
        self.addressResolver = AddressResolver(config.settings.resolver, tables)  # shared: router and listeners
        self.router = Router(config.settings.resolver, tables, self.addressResolver)
        self.cleanup = Cleanup(config.settings.cleanup, store, clock, self.maillogFor)  # pickup, notices, transcripts
        self.notices = Notices(config.settings.notices, self.cleanup, clock, self.maillogFor)
        if tlsReporter is None:
            from mta.delivery.tlsrpt import TlsReporter

            tlsReporter = TlsReporter.forGeneration(self)
        self.tlsReporter = tlsReporter  # TLS-RPT: every smtp transport records through it
        self.factories = {listener.name: protocolFactory(listener, self) for listener in config.listeners}
        for program, client in (("smtp", config.settings.smtpClient), ("lmtp", config.settings.lmtpClient)):
            for note in client.notes:  # older client parameter names, mapped at load
                self.maillogFor(program).emit(f"warning: {note}", level=LogLevel.warn)

    @property
    def resolver(self):
        """The DNS client (made on first use), shared by this generation's SMTP transports."""
        if self._resolver is None:
            from mta.delivery.dns import Resolver

            self._resolver = Resolver(self.clock, servers=self.config.settings.service.dnsServers)
        return self._resolver

    def maillogFor(self, program):
        """The MailLogger of C{program} (qmgr, virtual, bounce, ...)."""
        logger = self._maillogs.get(program)
        if logger is None:
            logger = self._maillogs[program] = MailLogger(self.config.settings.service.syslogName, program)
        return logger

    def listenerDescriptions(self):
        return [(listener.name, listener.endpoint) for listener in self.config.listeners]


class _TrackedTransport:
    """A transport whose deliveries in progress its registry counts (so a reload can retire it)."""

    def __init__(self, transport, registry):
        self._transport = transport
        self._registry = registry

    def deliver(self, request):
        self._registry._inFlight += 1
        d = maybeDeferred(self._transport.deliver, request)
        d.addBoth(self._registry._delivered)
        return d

    def stop(self):
        return self._transport.stop()

    def __getattr__(self, name):
        return getattr(self._transport, name)


class TransportRegistry:
    """
    The delivery transports by name (master.cf's services), made on first
    use from IDeliveryTransportFactory plugins.  An unknown name gives None:
    the queue manager defers that mail ("mail transport unavailable"), as
    Postfix does for a transport missing from master.cf.  retire() (after
    a reload) stops the transports when the last delivery in progress ends.
    """

    def __init__(self, settings, context, factories=None):
        """
        C{settings}: the settings compiled from [main] (Config.settings), given
        to each factory's makeTransport; C{factories}: transport type ->
        IDeliveryTransportFactory; default: the plugins.
        """
        self._settings = settings
        self._context = context
        self._made = {}
        self._factories = factories
        self._inFlight = 0  # deliveries in progress
        self._retiring = False  # retire() was called
        self._stopping = None  # the DeferredList of the transports' stop()
        self._stopped = False
        self._waiters = []  # Deferreds of retire() and stop(), fired when all have stopped

    def __call__(self, name):
        if name in self._made:
            return self._made[name]
        self._loadFactories()
        factory = self._factories.get(name)
        transport = None
        if factory is not None:
            try:
                transport = self._track(factory.makeTransport(name, self._settings, self._context))
            except Exception as e:  # a ConfigError, or a plugin's bug: its mail waits
                log.error("transport {name} cannot start, its mail is deferred: {error}", name=name, error=str(e))
        self._made[name] = transport
        return transport

    def _loadFactories(self):
        if self._factories is None:
            import mta.plugins
            from twisted.plugin import getPlugins

            from mta.interfaces import IDeliveryTransportFactory

            self._factories = {f.transportType: f for f in getPlugins(IDeliveryTransportFactory, mta.plugins)}

    def _track(self, transport):
        return _TrackedTransport(transport, self) if transport is not None else None

    def check(self, names):
        """Make the transports C{names} now: a configuration error is raised (the start stops)."""
        self._loadFactories()
        for name in names:
            if name in self._made:
                continue
            factory = self._factories.get(name)
            if factory is not None:
                self._made[name] = self._track(factory.makeTransport(name, self._settings, self._context))

    def _delivered(self, result):
        self._inFlight -= 1
        if self._inFlight == 0 and self._retiring:
            self.stop()
        return result

    def retire(self):
        """No new work comes: stop every transport once no delivery is in progress; a Deferred."""
        self._retiring = True
        if self._inFlight == 0:
            return self.stop()
        return self._whenStopped()

    def stop(self):
        """Stop every transport made (once); a Deferred that fires when they have stopped."""
        if self._stopping is None:
            self._stopping = DeferredList(
                [maybeDeferred(t.stop) for t in self._made.values() if t is not None], consumeErrors=True
            )
            self._stopping.addBoth(self._allStopped)
        return self._whenStopped()

    def _allStopped(self, _):
        self._stopped = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _whenStopped(self):
        d = Deferred()
        if self._stopped:
            d.callback(None)
        else:
            self._waiters.append(d)
        return d
