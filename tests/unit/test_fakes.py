"""The fakes in mta.testing declare the interfaces of the real things they stand for, and provide them."""

import pytest
from twisted.internet.interfaces import IReactorThreads, IReactorTime
from twisted.python.threadpool import ThreadPool
from zope.interface.verify import verifyClass, verifyObject

from mta.interfaces import IQueueMessage, IQueueStore, IWorkerPool
from mta.queue.store import IncomingMessage, QueueStore
from mta.testing import FakeMessage, FakeQueueStore, SyncPool, SyncReactor


def test_fakeQueueStoreAndItsMessagesProvideTheQueueInterfaces():
    store = FakeQueueStore()
    assert verifyObject(IQueueStore, store)
    assert verifyObject(IQueueMessage, store.newMessage())
    assert verifyClass(IQueueStore, FakeQueueStore) and verifyClass(IQueueMessage, FakeMessage)


def test_theRealQueueStoreAndItsMessagesProvideTheSameInterfaces(tmp_path):
    store = QueueStore(str(tmp_path / "queue"), SyncReactor())
    store.prepare()
    message = store.newMessage()
    try:
        assert verifyObject(IQueueStore, store)
        assert verifyObject(IQueueMessage, message)
        assert verifyClass(IQueueStore, QueueStore) and verifyClass(IQueueMessage, IncomingMessage)
    finally:
        message.abort()


def test_syncPoolHasTheShapeOfTwistedsThreadPool():
    assert verifyObject(IWorkerPool, SyncPool())
    # Twisted's ThreadPool does not declare IWorkerPool; it has the method, with the same signature.
    assert verifyClass(IWorkerPool, ThreadPool, tentative=True)


@pytest.mark.parametrize("interface", [IReactorTime, IReactorThreads])
def test_syncReactorIsAReactorForTimeAndThreads(interface):
    assert verifyObject(interface, SyncReactor())


def test_syncReactorRunsThreadWorkAtOnceAndCountsIt():
    reactor = SyncReactor()
    ran = []
    reactor.callInThread(ran.append, "in a thread")
    reactor.callFromThread(ran.append, "from a thread")
    assert ran == ["in a thread", "from a thread"]
    assert reactor.getThreadPool() is reactor.pool and reactor.pool.jobs == 1
