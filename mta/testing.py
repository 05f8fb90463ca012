"""mta.testing - public fakes for tests of mta and of its plugins.

FakeQueueStore keeps messages in memory and lets a test decide when (and
whether) a commit succeeds, so the server's ordering and failure paths can
be checked without a disk or a thread pool.  serverFactory() builds an SMTP
server factory from INI text.

SECURITY
    Test code only.

CONFIGURATION
    None.

SyncPool and SyncReactor run the queue's thread-pool work at once, so
tests of the store, the queue manager, pickup and the tools need neither
threads nor sleeps.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from mta.config import load, openTables
from mta.queue.store import QueueWriteError
from mta.tables import Tables


def resultOf(d):
    """
    The result of a Deferred (or a coroutine, run with Deferred.fromCoroutine)
    that has already fired, as Twisted's successResultOf does for plain
    pytest tests; a failure is raised.  AssertionError if it has not fired.
    """
    if not isinstance(d, Deferred):
        d = Deferred.fromCoroutine(d)
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


class SyncPool:
    """A thread pool that runs each job at once, in the calling thread; counts them."""

    def __init__(self):
        self.jobs = 0

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.jobs += 1
        try:
            result = f(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


class SyncReactor(Clock):
    """A Clock whose thread pool (C{pool}, a SyncPool by default) runs work at once."""

    def __init__(self, pool=None):
        super().__init__()
        self.pool = pool if pool is not None else SyncPool()

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def getThreadPool(self):
        return self.pool


class FakeMessage:
    def __init__(self, store, queueId):
        self.store = store
        self.queueId = queueId
        self.chunks = []
        self.size = 0
        self.aborted = False
        self.envelope = None

    def write(self, data):
        self.chunks.append(bytes(data))
        self.size += len(data)

    @property
    def content(self):
        return b"".join(self.chunks)

    def commit(self, envelope, queue="incoming"):
        self.envelope = envelope
        self.queue = queue
        if self.store.failCommits:
            return fail(QueueWriteError("fake: disk full"))
        if self.store.holdCommits:
            d = Deferred()
            self.store.pending.append((d, self))
            return d
        self.store.committed.append(self)
        return succeed(self.queueId)

    def abort(self):
        self.aborted = True


class FakeQueueStore:
    """An in-memory QueueStore.  Set holdCommits to release commits by hand."""

    def __init__(self, freeSpace=10**12):
        self.free = freeSpace
        self.messages = []
        self.committed = []
        self.pending = []
        self.holdCommits = False
        self.failCommits = False

    def newMessage(self):
        message = FakeMessage(self, f"FAKE{len(self.messages) + 1:04d}")
        self.messages.append(message)
        return message

    def freeSpace(self):
        return self.free

    def release(self):
        """Let every held commit succeed, in order."""
        pending, self.pending = self.pending, []
        for d, message in pending:
            self.committed.append(message)
            d.callback(message.queueId)


def serverFactory(main="", clock=None, store=None, peer=None):
    """
    An SMTPServerFactory for [main] text C{main}, with a Clock and a
    FakeQueueStore, built from the settings load() compiled for its
    (default) listener.
    """
    from mta.routing import AddressResolver
    from mta.smtpd.factory import SMTPServerFactory

    clock = clock or Clock()
    config = load("<test>", "[main]\nmyhostname = mx.test\n" + main)
    tables = Tables(clock)
    openTables(config, tables)
    listener = config.listeners[0]
    resolver = AddressResolver(config.settings.resolver, tables)
    return SMTPServerFactory(listener.settings, clock, store or FakeQueueStore(), tables, resolver)
