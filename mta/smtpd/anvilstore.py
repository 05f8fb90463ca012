"""mta.smtpd.anvilstore - the anvil's counts in Redis, shared by several mta machines.

    store = RedisAnvil(reactor, spec, node, maillog, password=None)
    store.attach(factory)                   # factory.remoteAnvil = store, its listener's unit noted
    store.start()                           # the node's heartbeat
    d = store.connect(listener, address)    # -> Deferred[(sessions open, connections in the window)]
    store.disconnect(listener, address)
    d = store.event(listener, address, kind, count)   # -> Deferred[int] (count false: only look)
    d = store.stop()                        # this node's sessions released, the connection closed

With anvil_store = redis:... the per-client counts and rates of the
smtpd_client_*_limit parameters (mta.smtpd.anvil) are kept in one Redis
server that every mta daemon behind the same MX names, so that the limits
hold over all of them: smtpd_client_connection_rate_limit = 2 lets a client
make two connections per unit to the whole group, not two to each machine.
It has RemoteAnvil's interface (mta.workers.worker): the SMTP server
factories of the daemon's listeners use it as their ``remoteAnvil``.  With
worker_processes the workers still ask the master (RemoteAnvil) and the
master asks Redis: one connection and one node per daemon, and the
master's release of a dead worker's sessions reaches Redis as usual.

Keys (prefix ``mta:anvil:``, LISTENER the listener's name, ADDR the
client's address), each written by one Lua script per request, so each
request is one round trip and atomic:

    rate:LISTENER:ADDR   a hash of the client's window: conn, mail, rcpt,
                         newtls, auth.  Made by the client's first event
                         with a TTL of the listener's anvil_rate_time_unit,
                         so every rate is reset together when the window
                         has passed, as in anvil(8) (one window per client,
                         begun by its first event).
    conn:LISTENER:ADDR   a hash of the sessions open from the client: one
                         field per node (daemon) with its count.
    node:NODE            this node is alive: refreshed every HEARTBEAT
                         seconds with a TTL of NODE_TTL seconds.

A connect adds one to the node's field, then sums the fields of the nodes
that are alive (deleting the fields of nodes whose node key has expired),
and adds one to the client's conn rate.  The heartbeat refreshes the node
key, writes the node's own count into every conn hash it has sessions in
(from its own record, so that Redis is brought back to the truth after a
restart, a failed request or a sweep) and gives those hashes a TTL of
NODE_TTL: when a node dies, its sessions stop counting within NODE_TTL
seconds, and hashes nobody refreshes expire.  A node that stops cleanly
deletes its fields and its node key.

Redis down or slow: every request has a deadline of TIMEOUT seconds; one
that fails or is late counts nothing (a connect answers (0, 0), an event
0), so the limits fail open and mail is never refused because of Redis, as
mail passes when Postfix's anvil is unreachable.  The failure is logged as
"warning: anvil_store SERVER: REASON; client limits are not enforced" at
most once a WARN_INTERVAL (a minute); "anvil_store SERVER: available again"
when a request succeeds after a failure.

SECURITY
    Addresses are the peers', never client input; they are sent as bulk
    strings (mta.smtpd.redisclient), never spliced into a script.  The
    server's answers are checked for shape; a wrong one counts nothing.
    Anyone who can write to the Redis database can set the counts (refuse
    or let through clients): give it a password (anvil_store_password_file)
    and keep it on a private network.

CONFIGURATION
    anvil_store, anvil_store_password_file (read at start), and each
    listener's anvil_rate_time_unit.  Compiled in: TIMEOUT = 1 s, NODE_TTL =
    30 s, HEARTBEAT = 10 s, WARN_INTERVAL = 60 s.

DEVIATIONS
    Postfix's anvil(8) is one process per machine and has no shared store:
    anvil_store is mta's.  The nodes' clocks do not matter (Redis keeps the
    TTLs), but every node should have the same anvil_rate_time_unit and
    listener names: the node that starts a client's window sets its length.
    The scripts touch keys they compute (node keys), so the server must be
    a single Redis (or a primary with replicas), not a Redis Cluster.
    anvil_store is read at start: a reload that changes it is logged and
    ignored until the daemon is restarted.
"""

import os

from twisted.internet.defer import gatherResults, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import LogLevel

from mta.smtpd.anvil import EVENTS
from mta.smtpd.redisclient import RedisClient

TIMEOUT = 1.0
NODE_TTL = 30.0
HEARTBEAT = 10.0
WARN_INTERVAL = 60.0
BATCH = 500  # conn hashes per heartbeat request
PREFIX = "mta:anvil:"

# KEYS: conn hash, rate hash, this node's key.  ARGV: node, unit (ms), node TTL (ms), node key prefix.
CONNECT = """
redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local fields = redis.call('HGETALL', KEYS[1])
local count = 0
for i = 1, #fields, 2 do
  if fields[i] == ARGV[1] or redis.call('EXISTS', ARGV[4] .. fields[i]) == 1 then
    count = count + tonumber(fields[i + 1])
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
local rate = redis.call('HINCRBY', KEYS[2], 'conn', 1)
if redis.call('PTTL', KEYS[2]) < 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return {count, rate}
"""

# KEYS: conn hash.  ARGV: node.
DISCONNECT = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return n
"""

# KEYS: rate hash.  ARGV: kind, unit (ms).
EVENT = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return n
"""

# KEYS: this node's key, then conn hashes.  ARGV: node, node TTL (ms), then one count per hash.
HEARTBEAT_SCRIPT = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
for i = 2, #KEYS do
  local n = tonumber(ARGV[i + 1])
  if n > 0 then
    redis.call('HSET', KEYS[i], ARGV[1], n)
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  else
    redis.call('HDEL', KEYS[i], ARGV[1])
  end
end
return #KEYS - 1
"""

# KEYS: this node's key, then conn hashes.  ARGV: node.
RELEASE = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do redis.call('HDEL', KEYS[i], ARGV[1]) end
return #KEYS - 1
"""


def readPassword(path):
    """The first line of anvil_store_password_file (None when the parameter is empty); OSError."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.readline().rstrip("\r\n")


def nodeName(hostname):
    """This daemon's node: host name, pid and a random part (a restarted daemon is a new node)."""
    return f"{hostname}:{os.getpid()}:{os.urandom(4).hex()}"


class RedisAnvil:
    """The shared counts (see the module docstring)."""

    def __init__(self, reactor, spec, node, maillog, password=None, client=None):
        """C{maillog}: a MailLogger ($syslog_name/anvil).  C{client}: a RedisClient (tests pass a fake)."""
        self.reactor = reactor
        self.spec = spec
        self.node = node
        self.maillog = maillog
        self.client = client if client is not None else RedisClient(reactor, spec, password, TIMEOUT)
        self.units = {}  # listener -> anvil_rate_time_unit (seconds)
        self.open = {}  # conn hash key -> sessions this node counted there
        self.dirty = set()  # conn hash keys whose count in Redis may be wrong (a failed request)
        self._heartbeat = None
        self._lastWarning = None
        self._failing = False

    def attach(self, factory):
        """Count C{factory}'s sessions here (an SMTPServerFactory of the daemon, at start and reload)."""
        self.units[factory.listenerName] = factory.settings.rateTimeUnit
        factory.remoteAnvil = self

    # -- keys ----------------------------------------------------------------------

    def _key(self, kind, listener, address):
        return f"{PREFIX}{kind}:{listener}:{address}"

    @property
    def nodeKey(self):
        return f"{PREFIX}node:{self.node}"

    def _unitMs(self, listener):
        return max(1, int(self.units.get(listener, 60.0) * 1000))

    # -- the interface of RemoteAnvil ----------------------------------------------

    def connect(self, listener, address):
        """One more session: a Deferred of (sessions open, connections in the window); (0, 0) when Redis fails."""
        key = self._key("conn", listener, address)
        self.open[key] = self.open.get(key, 0) + 1
        d = self.client.execute("EVAL", CONNECT, 3, key, self._key("rate", listener, address), self.nodeKey,
                                self.node, self._unitMs(listener), int(NODE_TTL * 1000), f"{PREFIX}node:")

        def answered(reply):
            count, rate = reply
            return self._succeeded((int(count), int(rate)))

        def failed(failure):
            self._uncount(key)
            self.dirty.add(key)  # it may have been counted all the same: the heartbeat puts it right
            self._failed(failure)
            return (0, 0)

        return d.addCallback(answered).addErrback(failed)

    def disconnect(self, listener, address):
        key = self._key("conn", listener, address)
        if self.open.get(key, 0) <= 0:  # not counted here (Redis failed at its connect)
            return
        self._uncount(key)
        d = self.client.execute("EVAL", DISCONNECT, 1, key, self.node)
        d.addCallbacks(self._succeeded, self._failedDisconnect, errbackArgs=(key,))

    def event(self, listener, address, kind, count):
        """The client's count of C{kind} events in its window (one more counted with C{count}); 0 when Redis fails."""
        if kind not in EVENTS:
            return succeed(0)
        key = self._key("rate", listener, address)
        if count:
            d = self.client.execute("EVAL", EVENT, 1, key, kind, self._unitMs(listener))
        else:
            d = self.client.execute("HGET", key, kind)
        d.addCallback(lambda value: self._succeeded(0 if value is None else int(value)))
        return d.addErrback(lambda failure: self._failed(failure) or 0)

    # -- the node's life -----------------------------------------------------------

    def start(self):
        self._heartbeat = LoopingCall(self.beat)
        self._heartbeat.clock = self.reactor
        self._heartbeat.start(HEARTBEAT, now=True)

    def beat(self):
        """Refresh this node's key and write its counts (a Deferred, fired when every batch is answered)."""
        counts = dict.fromkeys(self.dirty, 0)
        counts.update(self.open)
        self.dirty = set()
        keys = list(counts)
        batches = [keys[i:i + BATCH] for i in range(0, len(keys), BATCH)] or [[]]
        results = []
        for batch in batches:
            d = self.client.execute("EVAL", HEARTBEAT_SCRIPT, 1 + len(batch), self.nodeKey, *batch, self.node,
                                    int(NODE_TTL * 1000), *(counts[k] for k in batch))
            d.addCallbacks(self._succeeded, self._failedBeat, errbackArgs=(batch,))
            results.append(d)
        return gatherResults(results)

    def stop(self):
        """Release this node's sessions in Redis and close the connection (a Deferred; never fails)."""
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        keys = list(self.open)
        self.open.clear()
        d = self.client.execute("EVAL", RELEASE, 1 + len(keys), self.nodeKey, *keys, self.node)
        d.addErrback(lambda failure: None)  # its fields expire with the node key
        d.addBoth(lambda _: self.client.close())
        return d

    # -- bookkeeping ---------------------------------------------------------------

    def _uncount(self, key):
        n = self.open.get(key, 0) - 1
        if n > 0:
            self.open[key] = n
        else:
            self.open.pop(key, None)

    def _succeeded(self, value):
        if self._failing:
            self._failing = False
            self.maillog.emit(f"anvil_store {self.spec}: available again")
        return value

    def _failed(self, failure):
        self._failing = True
        now = self.reactor.seconds()
        if self._lastWarning is None or now - self._lastWarning >= WARN_INTERVAL:
            self._lastWarning = now
            self.maillog.emit(f"warning: anvil_store {self.spec}: {failure.getErrorMessage()}; "
                              "client limits are not enforced", level=LogLevel.warn)

    def _failedDisconnect(self, failure, key):
        self.dirty.add(key)
        self._failed(failure)

    def _failedBeat(self, failure, batch):
        self.dirty.update(k for k in batch if k not in self.open)
        self._failed(failure)


__all__ = ["RedisAnvil", "nodeName", "readPassword"]
