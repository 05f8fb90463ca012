"""mta.listeners - a listener's socket, kept across reloads.

A ListenerService is one [listener:NAME]: the listening port of its
endpoint and, behind it, a ListenerFactory that hands each new connection
to the SMTP server factory of the configuration in force (``current``).
A reload swaps ``current``: sessions already open keep the factory that
built them, so their settings never change mid-session.  moveTo() changes
the endpoint of a running listener (see mta.service, RELOAD).

SECURITY
    The endpoint faces the network; see mta.smtpd.

CONFIGURATION
    [listener:NAME] endpoint.
"""

import errno

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, fail, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()


class ListenerFactory(Factory):
    """
    The factory a listener's socket keeps across reloads: each new session
    is built by C{current}, the SMTP server factory of the configuration in
    force when the client connects.
    """

    noisy = False

    def __init__(self, current):
        self.current = current

    def buildProtocol(self, addr):
        return self.current.buildProtocol(addr)

    def logPrefix(self):
        return self.current.logPrefix()


def shareConnectionCounts(old, new):
    """
    The per-client counts and rates (mta.smtpd.anvil) are per listener: the
    new factory shares the old one's Anvil (with the new
    anvil_rate_time_unit), so that sessions still open under the old
    settings count (and are released) in the same place, and a reload does
    not start the clients' windows again.
    """
    from mta.smtpd.anvil import Anvil

    anvil, fresh = getattr(old, "anvil", None), getattr(new, "anvil", None)
    if isinstance(anvil, Anvil) and isinstance(fresh, Anvil):
        anvil.unit = fresh.unit
        new.anvil = anvil
    # postscreen's cache of passed clients (mta.smtpd.pscache) is kept too, when its map is the same.
    screen, fresh = getattr(old, "postscreen", None), getattr(new, "postscreen", None)
    if screen is not None and fresh is not None and screen.settings.cacheMap == fresh.settings.cacheMap:
        fresh.cache.close()
        fresh.cache = screen.cache
    elif screen is not None:
        screen.close()  # another map (or none): the old one's pending changes are written, its timer stopped


class ListenerService(Service):
    """One [listener:NAME]: its socket (C{port}) and the ListenerFactory behind it."""

    def __init__(self, name, description, reactor, factory):
        self.setName(f"listener:{name}")
        self.listenerName = name
        self.description = description
        self.reactor = reactor
        self.factory = ListenerFactory(factory)
        self.port = None
        self._listening = None  # the Deferred of a listen not finished yet

    def __str__(self):
        return f"listener {self.listenerName} ({self.description})"

    def listen(self, description=None):
        """Listen on C{description} (default: our own); a Deferred firing with the port."""
        try:
            endpoint = serverFromString(self.reactor, description or self.description)
            return endpoint.listen(self.factory)
        except Exception:
            return fail()

    def privilegedStartService(self):
        """Bind now; a failure known at once is raised, so that the start stops with a message."""
        super().privilegedStartService()
        if self.port is not None or self._listening is not None:
            return
        synchronous, failed = [True], []

        def listened(result):
            self._listening = None
            if not isinstance(result, Failure):
                self.port = result
            elif synchronous[0]:
                failed.append(result)
            elif not result.check(CancelledError):
                log.error("{listener}: cannot listen: {error}", listener=str(self), error=describeError(result.value))

        d = self._listening = self.listen()
        d.addBoth(listened)
        synchronous[0] = False
        if failed:
            failed[0].raiseException()

    def startService(self):
        super().startService()
        if self.port is None and self._listening is None:
            try:
                self.privilegedStartService()
            except Exception as e:  # a reload adds listeners to a running daemon: see moveTo()
                log.error("{listener}: cannot listen: {error}", listener=str(self), error=describeError(e))

    def stopService(self):
        super().stopService()
        if self._listening is not None:
            self._listening.cancel()
        screen = getattr(self.factory.current, "postscreen", None)
        if screen is not None:  # postscreen's cache: its last changes to the file (mta.smtpd.pscache)
            screen.close()
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else succeed(None)

    async def moveTo(self, description):
        """
        Listen on C{description} instead of our endpoint: bind the new one,
        then close the old one.  If the new one is in use while the old is
        open (the same port on another address), close the old one first;
        if the new one cannot be bound, stay on (or go back to) the old one.
        Returns None, or the (level, text) of a problem.
        """
        old = self.description

        def stillOld(error):
            return ("warning", f"listener {self.listenerName} ({description}): cannot listen: "
                               f"{describeError(error)}; still listening on {old}")

        try:
            port = await self.listen(description)
        except Exception as e:
            if not _addressInUse(e):
                return stillOld(e)
            await self._closePort()
            try:
                port = await self.listen(description)
            except Exception as e:
                try:
                    self.port = await self.listen(old)
                except Exception as again:
                    return ("error", f"listener {self.listenerName} ({description}): cannot listen: "
                                     f"{describeError(e)}; nor again on {old}: {describeError(again)}; "
                                     "not listening")
                return stillOld(e)
        else:
            await self._closePort()
        self.port = port
        self.description = description
        return None

    async def _closePort(self):
        port, self.port = self.port, None
        if port is not None:
            await maybeDeferred(port.stopListening)


def _addressInUse(exception):
    error = getattr(exception, "socketError", None)
    return isinstance(exception, CannotListenError) and getattr(error, "errno", None) == errno.EADDRINUSE


def describeError(exception):
    if isinstance(exception, CannotListenError):
        return str(exception.socketError)
    return str(exception) or type(exception).__name__


