"""mta.testing - public fakes for tests of mta and of its plugins.

FakeQueueStore keeps messages in memory and lets a test decide when (and
whether) a commit succeeds, so the server's ordering and failure paths can
be checked without a disk or a thread pool.  serverFactory() builds an SMTP
server factory from INI text.

SyncPool and SyncReactor run the queue's thread-pool work at once, so
tests of the store, the queue manager, pickup and the tools need neither
threads nor sleeps.

Each fake declares the interface of the real thing it stands for, and is
checked against it (tests/unit/test_fakes.py, zope.interface's
verifyObject): FakeQueueStore and FakeMessage provide mta.interfaces'
IQueueStore and IQueueMessage, as QueueStore and IncomingMessage do, and
one contract test suite (tests/unit/test_queue_contract.py) runs against
both; SyncPool provides IWorkerPool, the part of Twisted's ThreadPool the
store uses; SyncReactor provides IReactorTime (it is a Clock) and
IReactorThreads.

SECURITY
    Test code only.

CONFIGURATION
    None.
"""

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.config import load, openTables
from mta.interfaces import IQueueMessage, IQueueStore, IWorkerPool
from mta.model import Envelope
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


@implementer(IWorkerPool)
class SyncPool:
    """A thread pool that runs each job at once, in the calling thread; counts them."""

    def __init__(self):
        self.jobs = 0

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        self.jobs += 1
        try:
            result = func(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


@implementer(IReactorTime, IReactorThreads)
class SyncReactor(Clock):
    """A Clock whose thread pool (C{pool}, a SyncPool by default) runs work at once."""

    def __init__(self, pool=None):
        super().__init__()
        self.pool = pool if pool is not None else SyncPool()

    def callFromThread(self, callable, *args, **kw):
        callable(*args, **kw)

    def callInThread(self, callable, *args, **kwargs):
        self.pool.callInThreadWithCallback(lambda ok, result: None, callable, *args, **kwargs)

    def getThreadPool(self):
        return self.pool

    def suggestThreadPoolSize(self, size):
        pass


@implementer(IQueueMessage)
class FakeMessage:
    """
    An in-memory IQueueMessage: C{chunks} and C{content} hold what was
    written, C{envelope} and C{queue} what commit() was given (the
    envelope's size set to C{size}, as the real store does), C{aborted}
    whether abort() took effect.
    """

    def __init__(self, store, queueId):
        self.store = store
        self.queueId = queueId
        self.chunks = []
        self.size = 0
        self.aborted = False
        self.envelope = None
        self.queue = None
        self._state = "open"  # -> committing | aborted, as IncomingMessage

    def write(self, data):
        if self._state != "open":
            if self._state == "aborted":
                return
            raise RuntimeError(f"queue file {self.queueId}: write() after commit()")
        self.chunks.append(bytes(data))
        self.size += len(data)

    @property
    def content(self):
        return b"".join(self.chunks)

    def commit(self, envelope, queue="incoming"):
        if self._state != "open":
            return fail(QueueWriteError(f"queue file {self.queueId}: commit() when {self._state}"))
        self._state = "committing"
        if not isinstance(envelope, Envelope):
            return fail(QueueWriteError(f"cannot store message {self.queueId}: not an Envelope: "
                                        f"{type(envelope).__name__}"))
        if queue not in ("incoming", "hold"):
            return fail(QueueWriteError(f"cannot store message {self.queueId}: no queue {queue!r}"))
        self.envelope = attrs.evolve(envelope, size=self.size)
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
        if self._state != "open":
            return
        self._state = "aborted"
        self.aborted = True


@implementer(IQueueStore)
class FakeQueueStore:
    """
    An in-memory IQueueStore.  C{messages}: every FakeMessage made;
    C{committed}: those whose commit succeeded, in order.  Set
    C{failCommits} to fail every commit with QueueWriteError, or
    C{holdCommits} to keep commits C{pending} until release().
    C{free} is what freeSpace() answers.
    """

    def __init__(self, freeSpace=10**12):
        self.free = freeSpace
        self.messages = []
        self.committed = []
        self.pending = []
        self.holdCommits = False
        self.failCommits = False

    def newMessage(self):
        message = FakeMessage(self, f"FAKE{len(self.messages) + 1:010d}")
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


def serverFactory(main="", clock=None, store=None, peer=None, dns=None):
    """
    An SMTPServerFactory for [main] text C{main}, with a Clock and a
    FakeQueueStore, built from the settings load() compiled for its
    (default) listener.  C{dns}: an IDNSResolver for the client's name
    (mta.smtpd.peername); None: no name lookups (every client unknown).
    """
    from mta.routing import AddressResolver
    from mta.smtpd.factory import SMTPServerFactory

    clock = clock or Clock()
    config = load("<test>", "[main]\nmyhostname = mx.test\n" + main)
    tables = Tables(clock)
    openTables(config, tables)
    listener = config.listeners[0]
    resolver = AddressResolver(config.settings.resolver, tables)
    return SMTPServerFactory(listener.settings, clock, store or FakeQueueStore(), tables, resolver,
                             dns=None if dns is None else (lambda: dns))
