"""Directory scans in the thread pool (bounded batches, fault injection) and ETRN's flushSite, with a Clock."""

import errno
import os

from twisted.python.failure import Failure

from mta.model import Envelope, Recipient
from mta.queue.fileformat import dumpQueueFile
from mta.queue.queueid import QueueIdGenerator
from mta.queue.store import SCAN_BATCH
from mta.testing import SyncReactor, resultOf
from tests.unit.test_queue_manager import FakeTransport, Harness, once


class ManualPool:
    """A thread pool whose jobs wait until the test runs them; records what each job returned."""

    def __init__(self):
        self.jobs = []
        self.done = []  # (function name, result)

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        self.jobs.append((onResult, f, args, kwargs))

    def runNext(self):
        onResult, f, args, kwargs = self.jobs.pop(0)
        try:
            result = f(*args, **kwargs)
        except BaseException:
            self.done.append((f.__name__, None))
            onResult(False, Failure())
        else:
            self.done.append((f.__name__, result))
            onResult(True, result)

    def runAll(self, limit=100000):
        while self.jobs and limit:
            self.runNext()
            limit -= 1


def writeDeferred(h, count, due=(), sender="s@example.org", recipient="r{i}@far.example"):
    """C{count} deferred queue files, not due for an hour except the indexes in C{due}; their ids."""
    ids = []
    newId = QueueIdGenerator(salt="scan0")
    content = b"Subject: x\r\n\r\nx\r\n"
    now = h.clock.seconds()
    for i in range(count):
        queueId = newId()
        envelope = Envelope(sender=sender, recipients=(Recipient(recipient.format(i=i)),), arrival_time=now - 10)
        path = h.store.queuePath("deferred", queueId)
        with open(path, "wb") as f:
            f.write(dumpQueueFile(envelope, content))
        when = now - 1 if i in due else now + 3600
        os.utime(path, (when, when))
        ids.append(queueId)
    return ids


def test_deferredScanRunsInThePoolInBoundedBatches(tmp_path):
    pool = ManualPool()
    clock = SyncReactor(pool)
    clock.advance(1_000_000)
    h = Harness(tmp_path, clock=clock, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.0.0", "later"))})
    ids = writeDeferred(h, 2 * SCAN_BATCH + 500, due={7, 1500})
    h.manager.start()
    pool.runAll()  # the start-up sweeps of tmp/, active/, incoming/
    clock.advance(0)  # the first deferred scan is due
    scandirs = h.fs.calls["scandir"]
    d = h.manager.scanDeferred()  # a second request while one runs is served by it
    assert h.fs.calls["scandir"] == scandirs  # nothing read in the reactor: all in pool jobs
    pool.done.clear()
    pool.runAll()
    batches = [len(result) for name, result in pool.done if name == "_read"]
    assert batches == [SCAN_BATCH, SCAN_BATCH, 500]  # one job per batch; the reactor runs between them
    assert resultOf(d) == 2
    assert sorted(r.recipients[0].address for r in h.transports["smtp"].requests) == ["r1500@far.example", "r7@far.example"]
    assert sorted(h.store.listQueue("deferred")) == sorted(ids)


def test_scanErrorsAreLoggedAndTheNextRunWorks(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.0.0", "later"))})
    writeDeferred(h, 3, due={0, 1, 2})
    h.fs.faults["scandir"] = once(OSError(errno.EIO, "Input/output error"), lambda path: path.endswith("deferred"))
    h.manager.start()
    h.clock.advance(0)
    assert h.transports["smtp"].requests == []  # the scan failed
    h.clock.advance(h.manager.runDelay)
    assert len(h.transports["smtp"].requests) == 3


def test_aScanThatFailsHalfwayKeepsWhatItFound(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.0.0", "later"))})
    writeDeferred(h, SCAN_BATCH + 10, due=set(range(SCAN_BATCH + 10)))
    real = h.fs.scandir

    def failing(path):
        for n, entry in enumerate(real(path)):
            if n == SCAN_BATCH and path.endswith("deferred"):
                raise OSError(errno.EIO, "Input/output error")
            yield entry

    h.fs.scandir = failing
    h.manager.start()
    h.clock.advance(0)
    assert len(h.transports["smtp"].requests) == SCAN_BATCH
    assert h.manager.active == {}


def test_flushCountsWhatItActivated(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.0.0", "later"))})
    writeDeferred(h, 4)
    h.manager.start()
    h.clock.advance(0)
    assert h.transports["smtp"].requests == []
    assert resultOf(h.manager.flush()) == 4
    assert len(h.transports["smtp"].requests) == 4


def test_backlogFromTheDeferredQueueIsNotScannedTwice(tmp_path):
    smtp = FakeTransport(lambda r: ("deferred", "4.0.0", "later"))
    smtp.hold = True
    h = Harness(tmp_path, "qmgr_message_active_limit = 2\n", {"smtp": smtp})
    writeDeferred(h, 5, due=set(range(5)))
    h.manager.start()
    h.clock.advance(0)
    assert len(smtp.requests) == 2 and len(h.manager.backlog) == 3
    assert resultOf(h.manager.scanDeferred(flush=True)) == 0  # all of them active or waiting already
    smtp.hold = False
    smtp.release()
    assert len(smtp.requests) == 5 and not h.manager.backlog


# -- ETRN -----------------------------------------------------------------------------------------


def deferring(h_answer=None):
    def answer(r):
        local = r.address.split("@")[0]
        return ("sent", "2.0.0", "ok") if local.startswith("ok") else ("deferred", "4.4.1", "no answer")

    return {"smtp": FakeTransport(h_answer or answer), "virtual": FakeTransport()}


def attempts(h, address):
    return sum(1 for request in h.transports["smtp"].requests for r in request.recipients if r.address == address)


def test_flushSiteActivatesMailForExactlyThatSite(tmp_path):
    h = Harness(tmp_path, transports=deferring())
    h.manager.start()
    h.clock.advance(0)
    a1 = h.submit(["x@a.example"])
    a2 = h.submit(["y@A.Example"])
    h.submit(["x@b.example"])
    h.submit(["x@mx.a.example"])  # a subdomain: not flushed (flush(8) has no parent match)
    h.submit(["ok@a.example", "z@b.example"])  # its a.example recipient is delivered: not flushed
    assert len(h.manager.sites) == 0  # nothing kept before the first ETRN: it rebuilds the index
    assert resultOf(h.manager.flushSite("A.EXAMPLE")) == 2
    assert attempts(h, "x@a.example") == attempts(h, "y@A.Example") == 2
    assert attempts(h, "x@b.example") == attempts(h, "x@mx.a.example") == attempts(h, "z@b.example") == 1
    assert sorted(h.manager.sites.ids("a.example")) == sorted([a1, a2])  # deferred again, indexed again
    assert resultOf(h.manager.flushSite("nowhere.example")) == 0
    assert resultOf(h.manager.flushSite("a.example")) == 2  # from the index kept since the rebuild
    assert attempts(h, "x@a.example") == 3


def test_flushSiteAfterARestartRebuildsTheIndexOnce(tmp_path):
    pool = ManualPool()
    clock = SyncReactor(pool)
    clock.advance(1_000_000)
    h = Harness(tmp_path, clock=clock, transports=deferring())
    ids = writeDeferred(h, 450, recipient="u{i}@site{i}.example")
    with open(h.store.queuePath("deferred", ids[3]), "r+b") as f:
        f.write(b"XX")  # damaged: left for its activation to find
    h.manager.start()
    pool.runAll()
    clock.advance(0)
    pool.runAll()
    assert not h.manager.sites.complete
    first = h.manager.flushSite("site5.example")
    second = h.manager.flushSite("SITE7.example")
    pool.done.clear()
    pool.runAll()
    reads = [len(result) for name, result in pool.done if name == "readSites"]
    assert len(reads) == 3 and sum(reads) == 449  # one rebuild, shared, in batches; the damaged file left out
    assert resultOf(first) == 1 and resultOf(second) == 1
    assert attempts(h, "u5@site5.example") == attempts(h, "u7@site7.example") == 1
    assert h.manager.sites.complete and len(h.manager.sites) == 449


def test_flushSiteSkipsMessagesThatAreGone(tmp_path):
    h = Harness(tmp_path, transports=deferring())
    h.manager.start()
    h.clock.advance(0)
    gone = h.submit(["x@a.example"])
    held = h.submit(["y@a.example"])
    kept = h.submit(["z@a.example"])
    assert resultOf(h.manager.operate("delete", [gone])) == ([gone], [])
    assert resultOf(h.manager.operate("hold", [held])) == ([held], [])
    assert resultOf(h.manager.flushSite("a.example")) == 1
    assert attempts(h, "z@a.example") == 2 and attempts(h, "x@a.example") == attempts(h, "y@a.example") == 1
    assert h.manager.sites.ids("a.example") == [kept]


def test_flushSiteFollowsAliasExpansions(tmp_path):
    h = Harness(tmp_path, "virtual_alias_maps = inline:{ {list@lists.example = ok@far.example, b@near.example} }\n",
                deferring())
    h.manager.start()
    h.clock.advance(0)
    queueId = h.submit(["list@lists.example"])
    assert resultOf(h.manager.flushSite("lists.example")) == 0
    assert resultOf(h.manager.flushSite("far.example")) == 0  # delivered there
    assert resultOf(h.manager.flushSite("near.example")) == 1
    assert attempts(h, "b@near.example") == 2 and attempts(h, "ok@far.example") == 1
    h.restart()  # rebuilt from the state records: the expansion's site, not the list's
    h.clock.advance(0)
    assert resultOf(h.manager.flushSite("near.example")) == 1
    assert h.manager.sites.ids("near.example") == [queueId]
