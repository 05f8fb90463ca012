"""
anvil_store (mta.smtpd.anvilstore, mta.smtpd.redisclient) without sockets or sleeps:

- the RESP client over MemoryReactorClock and StringTransport: what goes on the wire (AUTH and
  SELECT first, arguments as bulk strings, so a key holding CRLF stays one argument), replies of
  every type, error replies, deadlines (no reply, no connection), the pause after a failed
  connection, replies that break the protocol or the limits, a refused AUTH;
- RedisAnvil against FakeRedis, a model of the Lua scripts with TTLs on a Clock: counts shared
  by nodes, windows that reset together after the unit, release on disconnect, a dead node's
  sessions swept, the heartbeat putting Redis right after a restart, failing open with one
  warning a minute, and the release at stop;
- the anvil_store value type, and the daemon's wiring (its listeners count in Redis, a reload
  keeps the store and warns of a change), and the master's answers to its workers when the
  counts are Deferreds.
"""

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from mta.config.types import AnvilStore, AnvilStoreSpec
from mta.smtpd import anvilstore
from mta.smtpd.anvilstore import NODE_TTL, RedisAnvil
from mta.smtpd.redisclient import (
    RETRY,
    RedisClient,
    RedisReplyError,
    RedisUnavailable,
    encodeCommand,
    parseReply,
)
from mta.testing import resultOf

SPEC = AnvilStoreSpec("inet", "127.0.0.1", 6379, 3)
ADDR = "192.0.2.1"


# -- the RESP client ---------------------------------------------------------------------------


def failureOf(d):
    failures = []
    d.addErrback(failures.append)
    assert failures, "the Deferred has not failed"
    return failures[0]


class Wire:
    """A RedisClient on MemoryReactorClock, its connection made by connect()."""

    def __init__(self, password=None, spec=SPEC, timeout=1.0):
        self.reactor = MemoryReactorClock()
        self.client = RedisClient(self.reactor, spec, password=password, timeout=timeout)
        self.transport = None
        self.protocol = None

    def written(self):
        data = self.transport.value()
        self.transport.clear()
        return data


def connectedWire(password=None, spec=AnvilStoreSpec("inet", "127.0.0.1", 6379, 0)):
    """A wire whose connection is made (by hand: MemoryReactorClock only records connectTCP)."""
    wire = Wire(password, spec)
    d = wire.client.execute("PING")
    host, port, factory, timeout, _ = wire.reactor.tcpClients[-1]
    wire.protocol = factory.buildProtocol(None)
    wire.transport = StringTransport()
    wire.protocol.makeConnection(wire.transport)
    return wire, d


def test_arguments_are_bulk_strings_so_a_crlf_in_a_key_stays_inside_it():
    key = "mta:anvil:rate:smtp:1.2.3.4\r\nFLUSHALL\r\n"
    payload = encodeCommand(["HGET", key, 7])
    assert payload == (b"*3\r\n$4\r\nHGET\r\n$%d\r\n" % len(key) + key.encode() + b"\r\n$1\r\n7\r\n")


def test_replies_of_every_type():
    buffer = b"+OK\r\n:-3\r\n$3\r\nab\n\r\n$-1\r\n*3\r\n:1\r\n*1\r\n$0\r\n\r\n*-1\r\n-ERR wrong\r\n"
    values, offset = [], 0
    while offset < len(buffer):
        value, offset = parseReply(buffer, offset)
        values.append(value)
    assert values[:5] == ["OK", -3, b"ab\n", None, [1, [b""], None]]
    assert isinstance(values[5], RedisReplyError) and str(values[5]) == "ERR wrong"


def test_auth_and_select_go_first_then_the_command_gets_its_reply():
    wire, d = connectedWire(password="pw", spec=SPEC)
    assert wire.written() == encodeCommand(["AUTH", "pw"]) + encodeCommand(["SELECT", 3]) + encodeCommand(["PING"])
    wire.protocol.dataReceived(b"+OK\r\n+OK\r\n+PO")
    assert not d.called
    wire.protocol.dataReceived(b"NG\r\n")
    assert resultOf(d) == "PONG"
    later = wire.client.execute("HGET", "k", "f")
    assert wire.written() == encodeCommand(["HGET", "k", "f"])  # the same connection, no prelude again
    wire.protocol.dataReceived(b"$1\r\n5\r\n")
    assert resultOf(later) == b"5"


def test_an_error_reply_fails_that_command_only():
    wire, d = connectedWire()
    second = wire.client.execute("PING")
    wire.protocol.dataReceived(b"-NOSCRIPT no\r\n+PONG\r\n")
    assert failureOf(d).check(RedisReplyError)
    assert resultOf(second) == "PONG"
    assert not wire.transport.disconnecting


def test_a_refused_auth_closes_the_connection():
    wire, d = connectedWire(password="bad")
    wire.protocol.dataReceived(b"-WRONGPASS invalid username-password pair\r\n")
    assert failureOf(d).check(RedisUnavailable)
    assert wire.client.protocol is None
    assert "AUTH or SELECT refused" in wire.client.lastError


def test_no_reply_in_time_fails_and_drops_the_connection():
    wire, d = connectedWire()
    other = wire.client.execute("PING")
    wire.reactor.advance(1.0)
    assert failureOf(d).check(RedisUnavailable) and failureOf(other).check(RedisUnavailable)
    assert "no reply in 1s" in wire.client.lastError
    assert wire.client.protocol is None


def test_no_connection_in_time_fails_the_command():
    wire = Wire()
    d = wire.client.execute("PING")
    assert wire.reactor.tcpClients  # connecting
    wire.reactor.advance(1.0)
    assert failureOf(d).check(RedisUnavailable)


def test_a_refused_connection_fails_at_once_for_a_while_then_tries_again():
    wire = Wire()
    d = wire.client.execute("PING")
    host, port, factory, timeout, _ = wire.reactor.tcpClients[-1]
    factory.clientConnectionFailed(wire.reactor.connectors[-1], Failure(ConnectionRefusedError()))
    assert failureOf(d).check(RedisUnavailable)
    assert "cannot connect" in wire.client.lastError
    attempts = len(wire.reactor.tcpClients)
    quick = wire.client.execute("PING")
    assert failureOf(quick).check(RedisUnavailable)
    assert len(wire.reactor.tcpClients) == attempts  # no new attempt during the pause
    wire.reactor.advance(RETRY)
    wire.client.execute("PING")
    assert len(wire.reactor.tcpClients) == attempts + 1


@pytest.mark.parametrize("reply", [b"?what\r\n", b":12x\r\n", b"$99999999\r\n", b"*4\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
                                   b"$2\r\nabcd", b"x" * (1024 * 1024 + 100)])
def test_replies_that_break_the_protocol_or_the_limits_close_the_connection(reply):
    wire, d = connectedWire()
    wire.protocol.dataReceived(reply)
    assert failureOf(d).check(RedisUnavailable)
    assert wire.client.protocol is None


def test_a_reply_to_no_command_closes_the_connection():
    wire, d = connectedWire()
    wire.protocol.dataReceived(b"+PONG\r\n+EXTRA\r\n")
    assert resultOf(d) == "PONG"
    assert wire.client.protocol is None and "a reply to no command" in wire.client.lastError


def test_a_lost_connection_fails_what_waits_and_the_next_command_reconnects():
    wire, d = connectedWire()
    attempts = len(wire.reactor.tcpClients)
    wire.protocol.connectionLost(Failure(ConnectionRefusedError()))
    assert failureOf(d).check(RedisUnavailable)
    wire.reactor.advance(RETRY)
    wire.client.execute("PING")
    assert len(wire.reactor.tcpClients) == attempts + 1


def test_a_unix_socket_spec_connects_there():
    reactor = MemoryReactorClock()
    client = RedisClient(reactor, AnvilStoreSpec("unix", "/run/redis.sock"), timeout=1.0)
    client.execute("PING")
    assert reactor.unixClients[-1][0] == "/run/redis.sock"


# -- RedisAnvil against a model of the scripts ---------------------------------------------------


class FakeRedis:
    """The data and TTLs of one Redis server on a Clock, running anvilstore's scripts as Python."""

    def __init__(self, clock):
        self.clock = clock
        self.data = {}  # key -> dict (a hash) or str
        self.expires = {}  # key -> clock time
        self.down = False
        self.hold = False  # answers wait in self.held
        self.held = []
        self.commands = []

    def _expire(self):
        now = self.clock.seconds()
        for key, when in list(self.expires.items()):
            if when <= now:
                self.expires.pop(key)
                self.data.pop(key, None)

    def _hash(self, key):
        return self.data.setdefault(key, {})

    def _pexpire(self, key, ms):
        if key in self.data:
            self.expires[key] = self.clock.seconds() + int(ms) / 1000

    def _clean(self, key):
        if key in self.data and not self.data[key]:
            del self.data[key]
            self.expires.pop(key, None)

    def execute(self, *args):
        self.commands.append(args)
        if self.down:
            return fail(RedisUnavailable("cannot connect: refused"))
        if self.hold:
            d = Deferred()
            self.held.append(d)
            return d
        self._expire()
        return succeed(self._run(args))

    def _run(self, args):
        if args[0] == "HGET":
            return self.data.get(args[1], {}).get(args[2])
        assert args[0] == "EVAL"
        script, n = args[1], args[2]
        keys, argv = list(args[3:3 + n]), [str(a) for a in args[3 + n:]]
        if script == anvilstore.CONNECT:
            conn, rate, nodeKey = keys
            node, unit, ttl, prefix = argv
            self.data[nodeKey] = "1"
            self._pexpire(nodeKey, ttl)
            h = self._hash(conn)
            h[node] = str(int(h.get(node, 0)) + 1)
            self._pexpire(conn, ttl)
            count = 0
            for field in list(h):
                if field == node or (prefix + field) in self.data:
                    count += int(h[field])
                else:
                    del h[field]
            r = self._hash(rate)
            r["conn"] = str(int(r.get("conn", 0)) + 1)
            if rate not in self.expires:
                self._pexpire(rate, unit)
            return [count, int(r["conn"])]
        if script == anvilstore.DISCONNECT:
            h = self._hash(keys[0])
            n = int(h.get(argv[0], 0)) - 1
            h[argv[0]] = str(n)
            if n <= 0:
                del h[argv[0]]
            self._clean(keys[0])
            return n
        if script == anvilstore.EVENT:
            r = self._hash(keys[0])
            r[argv[0]] = str(int(r.get(argv[0], 0)) + 1)
            if keys[0] not in self.expires:
                self._pexpire(keys[0], argv[1])
            return int(r[argv[0]])
        if script == anvilstore.HEARTBEAT_SCRIPT:
            node, ttl, counts = argv[0], argv[1], argv[2:]
            self.data[keys[0]] = "1"
            self._pexpire(keys[0], ttl)
            for key, n in zip(keys[1:], counts):
                h = self._hash(key)
                if int(n) > 0:
                    h[node] = n
                    self._pexpire(key, ttl)
                else:
                    h.pop(node, None)
                    self._clean(key)
            return len(keys) - 1
        if script == anvilstore.RELEASE:
            self.data.pop(keys[0], None)
            for key in keys[1:]:
                self.data.get(key, {}).pop(argv[0], None)
                self._clean(key)
            return len(keys) - 1
        raise AssertionError(f"unknown script {script!r}")


class Log:
    def __init__(self):
        self.lines = []

    def emit(self, text, **fields):
        self.lines.append(text)


def nodes(count=2, unit=60.0):
    clock = Clock()
    redis = FakeRedis(clock)
    log = Log()
    made = []
    for i in range(count):
        anvil = RedisAnvil(clock, SPEC, f"node{i}", log, client=redis)
        factory = SimpleNamespace(listenerName="smtp", settings=SimpleNamespace(rateTimeUnit=unit), remoteAnvil=None)
        anvil.attach(factory)
        assert factory.remoteAnvil is anvil
        made.append(anvil)
    return clock, redis, log, made


def test_sessions_and_connection_rates_are_summed_over_the_nodes():
    clock, redis, log, (a, b) = nodes()
    assert resultOf(a.connect("smtp", ADDR)) == (1, 1)
    assert resultOf(b.connect("smtp", ADDR)) == (2, 2)
    assert resultOf(a.connect("smtp", ADDR)) == (3, 3)
    assert resultOf(b.connect("smtp", "192.0.2.2")) == (1, 1)  # every client its own counts
    assert resultOf(a.connect("submission", ADDR)) == (1, 1)  # and every listener
    a.disconnect("smtp", ADDR)
    assert resultOf(b.connect("smtp", ADDR)) == (3, 4)  # one released: three open, four in the window
    assert log.lines == []


def test_every_rate_is_reset_together_when_the_window_has_passed():
    clock, redis, log, (a, b) = nodes(unit=60.0)
    assert resultOf(a.event("smtp", ADDR, "mail", True)) == 1
    clock.advance(30)
    assert resultOf(b.event("smtp", ADDR, "mail", True)) == 2
    assert resultOf(b.event("smtp", ADDR, "rcpt", True)) == 1
    assert resultOf(a.event("smtp", ADDR, "rcpt", False)) == 1  # only looked: not counted
    assert resultOf(a.event("smtp", ADDR, "rcpt", False)) == 1
    assert resultOf(a.event("smtp", ADDR, "auth", False)) == 0
    clock.advance(30)  # the window began at the first event: all reset together
    assert resultOf(a.event("smtp", ADDR, "rcpt", False)) == 0
    assert resultOf(a.event("smtp", ADDR, "mail", True)) == 1
    unit = [args for args in redis.commands if args[0] == "EVAL" and args[1] == anvilstore.EVENT][0][-1]
    assert unit == 60000


def test_an_unknown_event_kind_counts_nothing_and_asks_nothing():
    clock, redis, log, (a,) = nodes(1)
    assert resultOf(a.event("smtp", ADDR, "__class__", True)) == 0
    assert redis.commands == []


def test_a_disconnect_releases_the_session_and_the_hash_goes():
    clock, redis, log, (a, b) = nodes()
    resultOf(a.connect("smtp", ADDR))
    a.disconnect("smtp", ADDR)
    assert "mta:anvil:conn:smtp:" + ADDR not in redis.data
    a.disconnect("smtp", ADDR)  # counted once, released once
    assert [args for args in redis.commands if args[1] == anvilstore.DISCONNECT].__len__() == 1


def test_a_dead_nodes_sessions_stop_counting_after_the_node_ttl():
    clock, redis, log, (a, b) = nodes()
    a.start()
    b.start()
    for _ in range(3):
        resultOf(a.connect("smtp", ADDR))
    assert resultOf(b.connect("smtp", ADDR))[0] == 4
    a._heartbeat.stop()  # node a dies: no heartbeat, no release
    for _ in range(int(NODE_TTL // anvilstore.HEARTBEAT) + 1):
        clock.advance(anvilstore.HEARTBEAT)
    assert resultOf(b.connect("smtp", ADDR))[0] == 2  # b's two; a's fields swept
    assert "node0" not in redis.data["mta:anvil:conn:smtp:" + ADDR]


def test_the_heartbeat_puts_redis_right_after_a_restart():
    clock, redis, log, (a, b) = nodes()
    a.start()
    resultOf(a.connect("smtp", ADDR))
    resultOf(a.connect("smtp", ADDR))
    redis.data.clear()  # Redis restarted without its data
    redis.expires.clear()
    clock.advance(anvilstore.HEARTBEAT)
    assert resultOf(b.connect("smtp", ADDR))[0] == 3


def test_redis_down_counts_nothing_warns_once_a_minute_and_says_when_it_is_back():
    clock, redis, log, (a,) = nodes(1)
    redis.down = True
    assert resultOf(a.connect("smtp", ADDR)) == (0, 0)
    assert resultOf(a.event("smtp", ADDR, "mail", True)) == 0
    assert resultOf(a.event("smtp", ADDR, "mail", False)) == 0
    assert log.lines == ["warning: anvil_store redis:127.0.0.1:6379/3: cannot connect: refused; "
                         "client limits are not enforced"]
    before = len(redis.commands)
    a.disconnect("smtp", ADDR)  # its connect was not counted: nothing to release
    assert len(redis.commands) == before
    clock.advance(59)
    resultOf(a.connect("smtp", ADDR))
    assert len(log.lines) == 1
    clock.advance(1)
    resultOf(a.connect("smtp", ADDR))
    assert len(log.lines) == 2
    redis.down = False
    assert resultOf(a.connect("smtp", ADDR)) == (1, 1)
    assert log.lines[-1] == "anvil_store redis:127.0.0.1:6379/3: available again"


def test_a_late_answer_counts_nothing_and_the_heartbeat_clears_what_it_may_have_counted():
    clock, redis, log, (a,) = nodes(1)
    redis.hold = True
    d = a.connect("smtp", ADDR)
    redis.held.pop().errback(RedisUnavailable("no reply in 1s"))  # the client's deadline
    assert resultOf(d) == (0, 0)
    redis.hold = False
    redis.data["mta:anvil:conn:smtp:" + ADDR] = {"node0": "1"}  # it had reached Redis all the same
    resultOf(a.beat())
    assert "mta:anvil:conn:smtp:" + ADDR not in redis.data
    assert a.dirty == set()


def test_a_malformed_answer_counts_nothing():
    clock, redis, log, (a,) = nodes(1)
    redis.execute = lambda *args: succeed([b"x"])
    assert resultOf(a.connect("smtp", ADDR)) == (0, 0)
    redis.execute = lambda *args: succeed(b"many")
    assert resultOf(a.event("smtp", ADDR, "rcpt", True)) == 0
    assert len(log.lines) == 1


def test_stop_releases_the_nodes_sessions():
    clock, redis, log, (a, b) = nodes()
    a.start()
    resultOf(a.connect("smtp", ADDR))
    resultOf(b.connect("smtp", ADDR))
    closed = []
    redis.close = lambda: closed.append(True)
    resultOf(a.stop())
    assert closed == [True]
    assert "mta:anvil:node:node0" not in redis.data
    assert redis.data["mta:anvil:conn:smtp:" + ADDR] == {"node1": "1"}
    assert not a._heartbeat.running


def test_stop_with_redis_down_still_closes():
    clock, redis, log, (a,) = nodes(1)
    redis.down = True
    redis.close = lambda: None
    assert resultOf(a.stop()) is None


def test_a_slow_redis_through_the_real_client_counts_nothing_after_the_deadline():
    reactor = MemoryReactorClock()
    anvil = RedisAnvil(reactor, SPEC, "n", Log())
    anvil.attach(SimpleNamespace(listenerName="smtp", settings=SimpleNamespace(rateTimeUnit=60.0)))
    d = anvil.connect("smtp", ADDR)
    host, port, factory, timeout, _ = reactor.tcpClients[-1]
    protocol = factory.buildProtocol(None)
    protocol.makeConnection(StringTransport())  # connected, but the server never answers
    assert not d.called
    reactor.advance(anvilstore.TIMEOUT)
    assert resultOf(d) == (0, 0)
    assert "no reply in 1s" in anvil.maillog.lines[0]


def test_the_password_file_first_line(tmp_path):
    path = tmp_path / "secret"
    path.write_text("pass word\nsecond\n")
    assert anvilstore.readPassword(str(path)) == "pass word"
    assert anvilstore.readPassword("") is None
    with pytest.raises(OSError):
        anvilstore.readPassword(str(tmp_path / "missing"))


# -- configuration and wiring ------------------------------------------------------------------


@pytest.mark.parametrize("text, spec", [
    ("", None),
    ("redis:127.0.0.1:6379", AnvilStoreSpec("inet", "127.0.0.1", 6379, 0)),
    ("redis:redis.example:6380/2", AnvilStoreSpec("inet", "redis.example", 6380, 2)),
    ("redis:[::1]:6379/1", AnvilStoreSpec("inet", "::1", 6379, 1)),
    ("redis:unix:/run/redis/redis.sock", AnvilStoreSpec("unix", "/run/redis/redis.sock", 0, 0)),
    ("redis:unix:/run/redis/redis.sock/4", AnvilStoreSpec("unix", "/run/redis/redis.sock", 0, 4)),
])
def test_anvil_store_values(text, spec):
    assert AnvilStore().parse(text) == spec
    if spec is not None:
        assert str(spec) == text


@pytest.mark.parametrize("text", ["memory", "redis:", "redis:host", "redis:host:0", "redis:host:99999",
                                  "redis:unix:relative.sock", "redis:[nothex]:1", "redis:a b:1",
                                  "redis:host:6379/x", "redis:ho\x00st:1"])
def test_bad_anvil_store_values(text):
    with pytest.raises(ValueError, match="is not an anvil store"):
        AnvilStore().parse(text)


def test_the_daemons_listeners_count_in_redis_and_a_reload_keeps_the_store(tmp_path):
    from tests.unit.test_reload import Daemon

    d = Daemon(tmp_path)
    d.write(main="anvil_store = redis:127.0.0.1:6379\n")
    d.start()
    try:
        store = d.service.anvilStore
        assert isinstance(store, RedisAnvil)
        assert d.service.listeners["smtp"].factory.current.remoteAnvil is store
        d.write(main="anvil_store = redis:127.0.0.1:6380\nanvil_rate_time_unit = 120s\n")
        d.reload()
        assert d.service.anvilStore is store
        assert d.service.listeners["smtp"].factory.current.remoteAnvil is store
        assert store.units["smtp"] == 120.0
        assert 'warning: ignoring anvil_store parameter value change (old value: "redis:127.0.0.1:6379", ' \
               'new value: "redis:127.0.0.1:6380")' in d.log()
    finally:
        stopped = d.service.stopService()
        d.reactor.advance(anvilstore.TIMEOUT)  # the release at stop waits for its deadline: nobody answers
        resultOf(stopped)


def test_without_anvil_store_the_counts_stay_in_memory(tmp_path):
    from tests.unit.test_reload import Daemon

    d = Daemon(tmp_path)
    d.write()
    d.start()
    try:
        assert d.service.anvilStore is None
        assert d.service.listeners["smtp"].factory.current.remoteAnvil is None
    finally:
        resultOf(d.service.stopService())


def test_an_unreadable_password_file_stops_the_start(tmp_path):
    from mta.service import StartupError
    from tests.unit.test_reload import Daemon

    d = Daemon(tmp_path)
    d.write(main=f"anvil_store = redis:127.0.0.1:6379\nanvil_store_password_file = {tmp_path}/none\n")
    with pytest.raises(StartupError, match="anvil_store_password_file .*/none: cannot read"):
        d.start()


def test_the_master_answers_its_workers_from_redis(tmp_path):
    from tests.unit.test_workers import channel

    c = channel(tmp_path)
    counts, rates = [], []
    c.daemon.factory.clientConnect = lambda address: succeed((4, 5))
    c.daemon.factory.clientEvent = lambda address, kind: succeed(6)
    counts.append(c.anvil.connect("smtp", ADDR))
    rates.append(c.anvil.event("smtp", ADDR, "mail", True))
    c.pump.flush()
    assert resultOf(counts[0]) == (4, 5) and resultOf(rates[0]) == 6
