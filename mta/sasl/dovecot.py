"""mta.sasl.dovecot - the client side of Dovecot's authentication protocol (smtpd_sasl_type = dovecot).

Dovecot's auth service (its "auth" unix_listener or inet_listener, e.g.
private/auth for Postfix) speaks a line protocol of TAB-separated fields
(Dovecot's "Authentication Protocol", version 1.2).  On connect the server
sends its handshake and the client answers with its own:

    S: VERSION 1 2 / MECH name flags... (one a mechanism) / SPID pid /
       CUID id / COOKIE hex / DONE
    C: VERSION 1 2 / CPID pid

then one exchange:

    C: AUTH id mech service=smtp nologin lip=.. rip=.. lport=.. rport=..
       [secured] [resp=BASE64]
    S: CONT id BASE64         a challenge; C: CONT id BASE64 (the response)
    S: OK id user=NAME ...    success
    S: FAIL id [reason=TEXT] [temp] ...   failure (temp: try again later)

Each AUTH command gets a connection of its own (connect, handshake, one
exchange, close), so a lost connection costs one login, never a session.
The mechanisms EHLO offers are the ones Dovecot lists (less "private"
ones), cached for MECH_CACHE seconds and refreshed by every handshake.

SECURITY
    Dovecot's lines are parsed strictly (bounded length, TAB fields, the
    request id checked); user names are sanitized by the caller.  The
    responses pass through base64-encoded and are never logged.  Every
    connection and exchange has a deadline (TIMEOUT): a Dovecot that does
    not answer gives "454 4.7.0 Temporary authentication failure", never a
    hung session.

CONFIGURATION
    smtpd_sasl_path (the socket), smtpd_sasl_service (service=).

DEVIATIONS
    Postfix keeps one connection per smtpd process and dies when Dovecot
    cannot be reached at start; mta connects per AUTH and answers 454
    4.7.0 while Dovecot is down (EHLO then offers the mechanisms last
    seen, or no AUTH when it never answered).  The timeouts are fixed
    (Postfix has no parameter for them either).
"""

import base64
import os

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from mta.sasl import Challenge, Failure, Mechanism, Success

__all__ = ["DovecotAuthProtocol", "DovecotBackend", "DovecotError"]

log = Logger()

TIMEOUT = 10.0  # seconds for a connection and its handshake, and for each answer
MECH_CACHE = 60.0  # seconds the mechanism list is reused for EHLO
DOWN = "Connection lost to authentication server"


class DovecotError(Exception):
    """The auth service cannot be reached, broke the protocol or did not answer in time."""


def _escape(value):
    """Dovecot's TAB-escaping of a field value."""
    return (value.replace("\x01", "\x011").replace("\t", "\x01t").replace("\n", "\x01n")
            .replace("\r", "\x01r"))


def _unescape(value):
    return (value.replace("\x01t", "\t").replace("\x01n", "\n").replace("\x01r", "\r")
            .replace("\x011", "\x01"))


class DovecotAuthProtocol(LineOnlyReceiver):
    """One connection to the auth service: the handshake, then one exchange at a time."""

    delimiter = b"\n"
    MAX_LENGTH = 65536

    def __init__(self, clock, timeout=TIMEOUT):
        self.clock = clock
        self.timeout = timeout
        self.mechanisms = []
        self.ready = Deferred()  # fires with the mechanisms at DONE
        self._handshake = True
        self._pending = None  # (request id, Deferred) of the exchange waiting for an answer
        self._timer = None
        self._lastId = 0

    def connectionMade(self):
        self.sendLine(f"VERSION\t1\t2\nCPID\t{os.getpid()}".encode("ascii"))
        self._arm(self.ready)

    def _arm(self, d):
        self._disarm()
        self._timer = self.clock.callLater(self.timeout, self._timedOut, d)

    def _disarm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timedOut(self, d):
        self._timer = None
        self._fail(DovecotError("timeout waiting for the authentication server"))
        self.transport.abortConnection()

    def _fail(self, error):
        self._disarm()
        if self._handshake:
            self._handshake = False
            if not self.ready.called:
                self.ready.errback(error)
        if self._pending is not None:
            _, d = self._pending
            self._pending = None
            d.errback(error)

    def lineLengthExceeded(self, line):
        self._fail(DovecotError("line too long from the authentication server"))
        self.transport.abortConnection()

    def lineReceived(self, line):
        try:
            fields = [_unescape(f) for f in line.decode("utf-8").split("\t")]
        except UnicodeDecodeError:
            self._fail(DovecotError("bad UTF-8 from the authentication server"))
            self.transport.abortConnection()
            return
        if self._handshake:
            self._handshakeLine(fields)
        else:
            self._answer(fields)

    def _handshakeLine(self, fields):
        kind = fields[0]
        if kind == "VERSION":
            if len(fields) < 3 or fields[1] != "1":
                self._fail(DovecotError(f"unsupported protocol version {'.'.join(fields[1:3])}"))
                self.transport.abortConnection()
        elif kind == "MECH" and len(fields) >= 2:
            flags = frozenset(f.lower() for f in fields[2:])
            if "private" not in flags:
                self.mechanisms.append(Mechanism(fields[1].upper(), flags))
        elif kind == "DONE":
            self._handshake = False
            self._disarm()
            self.ready.callback(tuple(self.mechanisms))
        # SPID, CUID, COOKIE and anything newer are not needed by a client of this kind.

    def auth(self, mechanism, client, service, response):
        """Start an exchange; a Deferred of the first answer (see answer fields in _answer)."""
        self._lastId += 1
        fields = ["AUTH", str(self._lastId), mechanism, f"service={service}", "nologin"]
        for name, value in (("lip", client.localAddress), ("rip", client.address), ("rport", client.port)):
            if value:
                fields.append(f"{name}={value}")
        if client.tls:
            fields.append("secured")
        if response is not None:
            fields.append("resp=" + base64.b64encode(response).decode("ascii"))
        return self._send(fields)

    def cont(self, response):
        return self._send(["CONT", str(self._lastId), base64.b64encode(response).decode("ascii")])

    def _send(self, fields):
        d = Deferred()
        self._pending = (str(self._lastId), d)
        self._arm(d)
        self.sendLine("\t".join(_escape(f) for f in fields).encode("utf-8"))
        return d

    def _answer(self, fields):
        if self._pending is None or len(fields) < 2 or fields[1] != self._pending[0]:
            log.warn("sasl: unexpected line from the authentication server: {kind}", kind=fields[0][:20])
            return
        kind = fields[0]
        if kind not in ("OK", "CONT", "FAIL"):
            return
        _, d = self._pending
        self._pending = None
        self._disarm()
        d.callback((kind, fields[2:]))

    def connectionLost(self, reason):
        self._fail(DovecotError(DOWN))


class DovecotExchange:
    """One login over its own connection (see the module docstring)."""

    def __init__(self, backend, mechanism, client):
        self.backend = backend
        self.mechanism = mechanism
        self.client = client
        self.protocol = None
        self._aborted = False

    def step(self, response):
        return Deferred.fromCoroutine(self._step(response))

    async def _step(self, response):
        try:
            if self.protocol is None:
                self.protocol = await self.backend.connect()
                if self._aborted:
                    self.abort()
                    return Failure(DOWN, temporary=True)
                kind, fields = await self.protocol.auth(self.mechanism, self.client, self.backend.service, response)
            else:
                kind, fields = await self.protocol.cont(response if response is not None else b"")
        except DovecotError as e:
            self.abort()
            return Failure(str(e) if str(e) else DOWN, temporary=True)
        if kind == "CONT":
            data = fields[0] if fields else ""
            try:
                return Challenge(base64.b64decode(data.encode("ascii"), validate=True))
            except (ValueError, UnicodeEncodeError):
                self.abort()
                return Failure("bad challenge from the authentication server", temporary=True)
        self.abort()
        params = dict(f.partition("=")[::2] for f in fields)
        if kind == "OK":
            user = params.get("user")
            if not user:
                return Failure("the authentication server named no user", temporary=True)
            return Success(user)
        # FAIL: Dovecot's reason= when it gives one, else the same text for every failure.
        reason = params.get("reason") or "authentication failure"
        return Failure(reason[:200], temporary="temp" in params)

    def abort(self):
        self._aborted = True
        if self.protocol is not None and self.protocol.transport is not None:
            self.protocol.transport.loseConnection()


class DovecotBackend:
    """
    Dovecot's auth service at C{socket} (("unix", path) or ("inet", host,
    port)).  C{connector}: protocol factory -> Deferred of the connected
    protocol (default: Twisted endpoints on C{clock}, which must then be
    a reactor), for the tests.
    """

    def __init__(self, socket, clock, maillog=None, service="smtp", connector=None, timeout=TIMEOUT):
        self.socket = socket
        self.clock = clock
        self.maillog = maillog
        self.service = service
        self.timeout = timeout
        self._connector = connector or self._endpointConnect
        self._mechanisms = None
        self._mechanismsAt = None

    def _endpointConnect(self, factory):
        from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint

        if self.socket[0] == "unix":
            endpoint = UNIXClientEndpoint(self.clock, self.socket[1], timeout=self.timeout)
        elif ":" in self.socket[1]:
            endpoint = TCP6ClientEndpoint(self.clock, self.socket[1], self.socket[2], timeout=self.timeout)
        else:
            endpoint = TCP4ClientEndpoint(self.clock, self.socket[1], self.socket[2], timeout=self.timeout)
        return endpoint.connect(factory)

    def connect(self):
        """A Deferred of a DovecotAuthProtocol past its handshake; DovecotError when down."""
        return Deferred.fromCoroutine(self._connect())

    async def _connect(self):
        factory = Factory.forProtocol(lambda: DovecotAuthProtocol(self.clock, self.timeout))
        try:
            protocol = await self._connector(factory)
        except Exception as e:
            where = self.socket[1] if self.socket[0] == "unix" else f"{self.socket[1]}:{self.socket[2]}"
            if self.maillog is not None:
                self.maillog.emit(f"warning: SASL: connect to Dovecot auth socket '{where}' failed: {e}")
            raise DovecotError(DOWN) from None
        mechanisms = await protocol.ready
        self._mechanisms, self._mechanismsAt = mechanisms, self.clock.seconds()
        return protocol

    def mechanisms(self, tls=False):
        """Dovecot's mechanisms (cached MECH_CACHE seconds; the last list seen while it is down)."""
        if self._mechanisms is not None and self.clock.seconds() - self._mechanismsAt < MECH_CACHE:
            return succeed(self._mechanisms)
        return Deferred.fromCoroutine(self._fetchMechanisms())

    async def _fetchMechanisms(self):
        try:
            protocol = await self.connect()
        except DovecotError:
            if self._mechanisms is not None:
                return self._mechanisms
            raise
        protocol.transport.loseConnection()
        return self._mechanisms

    def start(self, mechanism, client):
        return DovecotExchange(self, mechanism, client)
