"""mta.smtpd.policyclient - check_policy_service: Postfix's policy delegation protocol (SMTPD_POLICY_README).

    client = PolicyClients(reactor, settings, queueDirectory, maillog)
    action = await client.query(spec, attributes)   # "DUNNO", "REJECT text", "DEFER_IF_PERMIT ...", ...

A request is ``name=value`` lines and an empty line; the answer is
``action=...`` (and other attributes, ignored) and an empty line.  The
action is an access(5) value (mta.smtpd.access.accessResult).

Connections are kept per server and reused, one request at a time on
each (Postfix's smtpd keeps one per process; mta's sessions share the
idle ones, and open another when all are busy):

    smtpd_policy_service_timeout      connect, send and answer, per attempt (100s)
    smtpd_policy_service_max_idle     an idle connection is closed after this (300s)
    smtpd_policy_service_max_ttl      a connection is not used again after this (1000s)
    smtpd_policy_service_request_limit  requests per connection (0: no limit)
    smtpd_policy_service_try_limit    attempts per query (2)
    smtpd_policy_service_retry_delay  between attempts (1s)
    smtpd_policy_service_default_action  the action when no attempt gave one
                                      (451 4.3.5 Server configuration problem)

Each failed attempt is one warning, as Postfix's: ``warning: problem
talking to server inet:127.0.0.1:10023: Connection refused``.

SECURITY
    The server is the administrator's; its answers are still read with a
    line limit (LINE_LIMIT) and a deadline, and attribute values sent to it
    have no newline.  unix: paths are relative to the queue directory, as
    Postfix's private/policy.

CONFIGURATION
    smtpd_policy_service_timeout, _max_idle, _max_ttl, _request_limit,
    _try_limit, _retry_delay, _default_action.

DEVIATIONS
    Postfix 3.0's per-server braced options ({ inet:host:port, timeout=10s,
    default_action=DUNNO, ... }) are not built yet; the parameters apply to
    every server.
"""

import os

import attrs
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

log = Logger()

LINE_LIMIT = 65536


class PolicyError(Exception):
    """One attempt failed; str() says why, for the warning."""


class PolicyProtocol(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = LINE_LIMIT

    def __init__(self):
        self.pending = None  # the Deferred of the request in flight
        self.answer = {}
        self.createdAt = None
        self.requests = 0
        self.closed = False
        self.idleCall = None

    def request(self, attributes):
        self.requests += 1
        self.answer = {}
        self.pending = defer.Deferred()
        lines = [f"{name}={_clean(value)}" for name, value in attributes.items()]
        self.transport.write(("\n".join(lines) + "\n\n").encode("utf-8", "replace"))
        return self.pending

    def lineReceived(self, line):
        if self.pending is None:
            self.transport.loseConnection()  # an answer nobody asked for
            return
        text = line.decode("utf-8", "replace").rstrip("\r")
        if text:
            name, _, value = text.partition("=")
            self.answer.setdefault(name.strip(), value)
            return
        d, self.pending = self.pending, None
        d.callback(self.answer)

    def lineLengthExceeded(self, line):
        self._fail(PolicyError("answer line too long"))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed = True
        if self.idleCall is not None and self.idleCall.active():
            self.idleCall.cancel()
        self._fail(PolicyError("lost connection"))

    def _fail(self, error):
        if self.pending is not None:
            d, self.pending = self.pending, None
            if not d.called:  # (a request cancelled at its deadline has been answered already)
                d.errback(error)


def _clean(value):
    return str(value).replace("\r", " ").replace("\n", " ")


@attrs.frozen
class _Server:
    connections: list = attrs.Factory(list)  # idle PolicyProtocols


class PolicyClients:
    """The policy servers of one listener's restrictions, with their idle connections."""

    def __init__(self, reactor, settings, queueDirectory, maillog):
        self.reactor = reactor
        self.settings = settings  # RecipientCheckSettings (the smtpd_policy_service_* fields)
        self.queueDirectory = queueDirectory
        self.maillog = maillog
        self._idle = {}  # spec text -> [PolicyProtocol]

    def endpoint(self, spec):
        if spec.kind == "unix":
            path = spec.address if os.path.isabs(spec.address) else os.path.join(self.queueDirectory or ".", spec.address)
            return UNIXClientEndpoint(self.reactor, path, timeout=self.settings.policyTimeout)
        kind = TCP6ClientEndpoint if ":" in spec.address else TCP4ClientEndpoint
        return kind(self.reactor, spec.address, spec.port, timeout=self.settings.policyTimeout)

    async def query(self, spec, attributes):
        """The action of server C{spec} for C{attributes}, or the default action after the attempts failed."""
        settings = self.settings
        for attempt in range(max(1, settings.policyTryLimit)):
            if attempt:
                await task.deferLater(self.reactor, settings.policyRetryDelay, lambda: None)
            try:
                answer = await self._attempt(spec, attributes)
            except PolicyError as e:
                self.maillog.emit(f"warning: problem talking to server {spec}: {e}")
                continue
            action = answer.get("action")
            if action is None or not action.strip():
                self.maillog.emit(f"warning: {spec}: the policy server's answer has no action")
                continue
            return action.strip()
        return settings.policyDefaultAction

    async def _attempt(self, spec, attributes):
        protocol = self._reusable(spec)
        try:
            if protocol is None:
                connecting = self.endpoint(spec).connect(Factory.forProtocol(PolicyProtocol))
                protocol = await _deadline(self.reactor, connecting, self.settings.policyTimeout)
                protocol.createdAt = self.reactor.seconds()
            answer = await _deadline(self.reactor, protocol.request(attributes), self.settings.policyTimeout)
        except PolicyError:
            if protocol is not None:
                protocol.transport.loseConnection()
            raise
        except Exception as e:  # a refused or failed connect
            if protocol is not None and protocol.transport is not None:
                protocol.transport.loseConnection()
            raise PolicyError(_describe(e)) from None
        self._release(spec, protocol)
        return answer

    def _reusable(self, spec):
        idle = self._idle.get(str(spec), [])
        now = self.reactor.seconds()
        while idle:
            protocol = idle.pop()
            if protocol.idleCall is not None and protocol.idleCall.active():
                protocol.idleCall.cancel()
            if not protocol.closed and now - protocol.createdAt < self.settings.policyMaxTtl:
                return protocol
            protocol.transport.loseConnection()
        return None

    def _release(self, spec, protocol):
        settings = self.settings
        limit = settings.policyRequestLimit
        if protocol.closed or (limit and protocol.requests >= limit) or (
                self.reactor.seconds() - protocol.createdAt >= settings.policyMaxTtl):
            protocol.transport.loseConnection()
            return
        idle = self._idle.setdefault(str(spec), [])
        idle.append(protocol)

        def expire():
            if protocol in idle:
                idle.remove(protocol)
            protocol.transport.loseConnection()

        protocol.idleCall = self.reactor.callLater(settings.policyMaxIdle, expire)

    def close(self):
        for idle in self._idle.values():
            for protocol in idle:
                if protocol.idleCall is not None and protocol.idleCall.active():
                    protocol.idleCall.cancel()
                protocol.transport.loseConnection()
        self._idle.clear()


def _describe(error):
    """Postfix's words for a failed connect: 'Connection refused', 'timeout', or the system's text."""
    from twisted.internet import error as errors

    if isinstance(error, errors.ConnectionRefusedError):
        return "Connection refused"
    if isinstance(error, errors.TimeoutError):
        return "timeout"
    osError = getattr(error, "osError", None)
    if isinstance(osError, int):
        return os.strerror(osError)
    return str(error) or error.__class__.__name__


async def _deadline(reactor, d, seconds):
    """The result of C{d}, or PolicyError("timeout") after C{seconds} (C{d} is cancelled)."""
    timedOut = []

    def expire():
        timedOut.append(True)
        d.cancel()

    call = reactor.callLater(seconds, expire)
    try:
        return await d
    except defer.CancelledError:
        if timedOut:
            raise PolicyError("timeout") from None
        raise
    finally:
        if call.active():
            call.cancel()


__all__ = ["PolicyClients", "PolicyError", "PolicyProtocol"]
