"""The queue manager's error paths: stray files, I/O errors, lost notices, damaged bodies, tmp/ leftovers.

Faults are injected through the store's FileSystem seam (FaultyFileSystem);
time is a Clock; the thread pool runs jobs at once (SyncReactor).
"""

import errno
import os

import pytest
from twisted.logger import capturedLogs, formatEvent

from mta.model import Envelope, Recipient
from mta.queue import fileformat
from mta.queue.fileformat import readQueueFile
from mta.queue.manager import RETRY_DELAY
from mta.queue.scanner import TMP_CLEAN_INTERVAL, TMP_MAX_AGE
from mta.queue.state import mergeStates
from mta.queue.store import WRITE_BUFFER_SIZE
from mta.testing import SyncReactor, resultOf
from tests.unit.test_queue_manager import FakeTransport, Harness, once

LIMIT_ONE = "qmgr_message_active_limit = 1\n"
VALID_ID = "0aWfQ3Zk1STRAY"


def delivered(h, transport="virtual"):
    return [r.address for request in h.transports[transport].requests for r in request.recipients]


def states(h, queue, queueId):
    return mergeStates(readQueueFile(h.store.queuePath(queue, queueId)).states)


# -- 1. stray entries -----------------------------------------------------------------------------


def makeStray(h, tmp_path, queue, kind):
    """A stray entry of C{kind} in C{queue}; its name."""
    directory = h.store.queuePath(queue)
    if kind == "bad name":
        name = "core"
        with open(os.path.join(directory, name), "wb") as f:
            f.write(b"not a queue file")
    elif kind == "bad name directory":
        name = "lost+found"
        os.mkdir(os.path.join(directory, name))
    elif kind == "symlink":  # to a FIFO: following it (or opening it) would block
        name = VALID_ID
        fifo = str(tmp_path / "elsewhere.fifo")
        os.mkfifo(fifo)
        os.symlink(fifo, os.path.join(directory, name))
    elif kind == "fifo":
        name = VALID_ID
        os.mkfifo(os.path.join(directory, name))
    elif kind == "directory":
        name = VALID_ID
        os.mkdir(os.path.join(directory, name))
        with open(os.path.join(directory, name, "x"), "wb") as f:
            f.write(b"x")
    else:
        raise ValueError(kind)
    return name


STRAY_KINDS = ["bad name", "bad name directory", "symlink", "fifo", "directory"]
REASONS = {"bad name": "not a queue file name", "bad name directory": "not a queue file name",
           "symlink": "a symbolic link", "fifo": "a FIFO", "directory": "a directory"}


@pytest.mark.parametrize("queue", ["incoming", "active", "deferred"])
@pytest.mark.parametrize("kind", STRAY_KINDS)
def test_strayEntryGoesToCorruptAndMailStillFlows(tmp_path, queue, kind):
    h = Harness(tmp_path, LIMIT_ONE)
    name = makeStray(h, tmp_path, queue, kind)
    h.manager.start()
    h.clock.advance(0)  # the first deferred-queue scan
    first, second = h.submit(["u@box.example"]), h.submit(["v@box.example"])
    assert delivered(h) == ["u@box.example", "v@box.example"]
    assert f"qmgr: {first}: removed" in h.lines and f"qmgr: {second}: removed" in h.lines
    assert os.listdir(h.store.queuePath(queue)) == []
    assert os.listdir(h.store.queuePath("corrupt")) == [name]
    assert os.path.islink(h.store.queuePath("corrupt") + "/" + name) == (kind == "symlink")
    assert (f'qmgr: warning: saving corrupt file "{name}" from queue "{queue}" to queue "corrupt": '
            f"{REASONS[kind]}") in h.lines
    assert h.manager.active == {} and not h.manager.backlog


@pytest.mark.parametrize("kind", STRAY_KINDS)
def test_strayInDeferredWhileRunningDoesNotStopMail(tmp_path, kind):
    """The old failure: a stray in deferred/ took the only active slot for good, restart or not."""
    h = Harness(tmp_path, LIMIT_ONE, {"smtp": FakeTransport(lambda r: ("deferred", "4.4.1", "later")),
                                      "virtual": FakeTransport()})
    h.manager.start()
    h.clock.advance(0)
    later = h.submit(["x@far.example"])
    name = makeStray(h, tmp_path, "deferred", kind)
    h.clock.advance(h.manager.runDelay)  # a queue run finds the stray (and the message is not due yet)
    assert sorted(os.listdir(h.store.queuePath("deferred"))) == [later]
    assert os.listdir(h.store.queuePath("corrupt")) == [name]
    h.submit(["u@box.example"])
    assert delivered(h) == ["u@box.example"]
    h.restart()
    h.clock.advance(0)
    h.submit(["v@box.example"])
    assert delivered(h) == ["u@box.example", "v@box.example"]
    assert h.manager.active == {}


def test_strayWithATakenNameInCorruptIsNotOverwritten(tmp_path):
    h = Harness(tmp_path)
    for queue in ("corrupt", "deferred"):
        with open(os.path.join(h.store.queuePath(queue), "core"), "wb") as f:
            f.write(queue.encode())
    h.manager.start()
    h.clock.advance(0)
    assert sorted(os.listdir(h.store.queuePath("corrupt"))) == ["core", "core.1"]
    assert open(os.path.join(h.store.queuePath("corrupt"), "core"), "rb").read() == b"corrupt"
    assert any(line.endswith("not a queue file name (as core.1)") for line in h.lines)


def test_strayNameIsSanitisedInTheLog(tmp_path):
    h = Harness(tmp_path)
    with open(os.path.join(h.store.queuePath("deferred"), "evil\nMar  1 00:00:00 forged"), "wb") as f:
        f.write(b"x")
    h.manager.start()
    h.clock.advance(0)
    assert any('saving corrupt file "evil\\x0aMar  1 00:00:00 forged"' in line for line in h.lines)


# -- every way out of an activation frees its slot ------------------------------------------------


def test_ioErrorWhileActivatingFreesTheSlotAndRetries(tmp_path):
    h = Harness(tmp_path, LIMIT_ONE)
    h.manager.start()
    h.fs.faults["rename"] = once(OSError(errno.EIO, "Input/output error"), lambda src, dst: "/incoming/" in src)
    first = h.submit(["u@box.example"])
    assert h.store.listQueue("incoming") == [first] and h.manager.active == {}
    h.submit(["v@box.example"])  # the slot is free
    assert delivered(h) == ["v@box.example"]
    h.clock.advance(RETRY_DELAY)
    assert delivered(h) == ["v@box.example", "u@box.example"]
    assert f"qmgr: {first}: removed" in h.lines


def test_routerFailureDefersTheMessageAndFreesTheSlot(tmp_path):
    h = Harness(tmp_path, LIMIT_ONE)
    route = h.manager.router.route
    calls = []

    async def broken(address, sender=None):
        calls.append(address)
        if address == "u@box.example" and calls.count(address) == 1:
            raise RuntimeError("a bug in a table")
        return await route(address, sender)

    h.manager.router.route = broken
    h.manager.start()
    first = h.submit(["u@box.example"])
    assert h.store.listQueue("deferred") == [first] and h.manager.active == {}
    h.submit(["v@box.example"])
    assert delivered(h) == ["v@box.example"]
    h.clock.advance(301)
    assert delivered(h) == ["v@box.example", "u@box.example"]
    assert h.store.listQueue("deferred") == []


@pytest.mark.parametrize("misbehaviour", ["raises", "returns junk", "fails"])
def test_misbehavingTransportDefersAndFreesTheSlot(tmp_path, misbehaviour):
    class Broken:
        requests = []

        def deliver(self, request):
            self.requests.append(request)
            if misbehaviour == "raises":
                raise RuntimeError("bug")
            if misbehaviour == "returns junk":
                return "junk"
            from twisted.internet.defer import fail

            return fail(RuntimeError("async bug"))

    h = Harness(tmp_path, LIMIT_ONE, {"smtp": Broken(), "virtual": FakeTransport()})
    h.manager.start()
    bad = h.submit(["x@far.example"])
    assert h.store.listQueue("deferred") == [bad]
    assert any("status=deferred (delivery agent failed: no result)" in line for line in h.lines)
    h.submit(["u@box.example"])
    assert delivered(h) == ["u@box.example"] and h.manager.active == {}


def test_corruptFileThatCannotBeMovedIsTriedAgain(tmp_path):
    h = Harness(tmp_path, LIMIT_ONE)
    bad = h.submit(["u@box.example"])
    with open(h.store.queuePath("incoming", bad), "r+b") as f:
        f.write(b"XX")
    h.fs.faults["rename"] = once(OSError(errno.EACCES, "Permission denied"), lambda src, dst: "/corrupt/" in dst)
    h.manager.start()
    assert h.store.listQueue("active") == [bad] and h.manager.active == {}
    h.submit(["v@box.example"])
    assert delivered(h) == ["v@box.example"]
    h.clock.advance(RETRY_DELAY)
    assert os.listdir(h.store.queuePath("corrupt")) == [bad] and h.store.listQueue("active") == []


# -- 2. a failed state append ------------------------------------------------------------------------


def failStateSync(h, error):
    """Make the sync of the next state record fail with C{error} (written, but whether it is on the disk is unknown)."""
    if h.store.syncMethod == "fsync":
        h.fs.faults["fdatasync"] = once(error)
    else:  # the batch's syncfs
        h.fs.faults["syncfs"] = once(error, lambda fd: h.fs.stateWritten)


@pytest.mark.parametrize("syncMethod", ["syncfs", "fsync"])
@pytest.mark.parametrize("fault", ["write ENOSPC", "sync EIO"])
def test_failedStateAppendDefersTheMessageAndItIsRetried(tmp_path, fault, syncMethod):
    h = Harness(tmp_path, LIMIT_ONE, syncMethod=syncMethod)
    h.manager.start()
    if fault == "write ENOSPC":  # the record never reaches the file
        h.fs.faults["write"] = once(OSError(errno.ENOSPC, "No space left on device"),
                                    lambda fd, data: bytes(data[:6]) == b"state ")
    else:
        failStateSync(h, OSError(errno.EIO, "Input/output error"))
    queueId = h.submit(["u@box.example"])
    # delivered, but not known to be recorded: deferred, never left in active/
    assert delivered(h) == ["u@box.example"]
    assert h.store.listQueue("deferred") == [queueId] and h.store.listQueue("active") == []
    assert (f"qmgr: warning: {queueId}: cannot record delivery results; the message is deferred, and deliveries "
            "that were not recorded will be repeated") in h.lines
    assert any(line.startswith(f"virtual: {queueId}: to=<u@box.example>") and "status=sent" in line for line in h.lines)
    h.submit(["v@box.example"])  # the slot was freed
    assert delivered(h) == ["u@box.example", "v@box.example"]
    h.clock.advance(301)
    if fault == "write ENOSPC":
        # the retry delivers again: the RFC 1047 window, a duplicate and no loss
        assert delivered(h) == ["u@box.example", "v@box.example", "u@box.example"]
    else:
        # the record did reach the file: the retry finds u delivered
        assert delivered(h) == ["u@box.example", "v@box.example"]
    assert f"qmgr: {queueId}: removed" in h.lines and h.store.listQueue("deferred") == []


@pytest.mark.parametrize("syncMethod", ["syncfs", "fsync"])
def test_failedAppendSendsNoNoticeForUnrecordedResults(tmp_path, syncMethod):
    smtp = FakeTransport(lambda r: ("bounced", "5.1.1", "no such user"))
    smtp.hold = True
    h = Harness(tmp_path, transports={"smtp": smtp}, syncMethod=syncMethod)
    h.manager.start()
    queueId = h.submit(["bad@far.example"])
    failStateSync(h, OSError(errno.ENOSPC, "No space left on device"))
    smtp.release()
    assert not any("notification" in line for line in h.lines)
    assert h.store.listQueue("deferred") == [queueId]
    smtp.hold = False
    h.clock.advance(301)  # bounced again, recorded this time, and now the sender hears of it
    assert sum("sender non-delivery notification" in line for line in h.lines) == 1
    assert h.store.listQueue("deferred") == []


@pytest.mark.parametrize("step", ["defer", "remove"])
def test_failedMoveOrRemovalIsTriedAgain(tmp_path, step):
    answer = (lambda r: ("deferred", "4.4.1", "later")) if step == "defer" else None
    h = Harness(tmp_path, LIMIT_ONE, {"virtual": FakeTransport(answer), "smtp": FakeTransport()})
    h.manager.start()
    if step == "defer":
        h.fs.faults["rename"] = once(OSError(errno.EIO, "Input/output error"), lambda src, dst: "/deferred/" in dst)
    else:
        h.fs.faults["unlink"] = once(OSError(errno.EIO, "Input/output error"), lambda path: "/active/" in path)
    queueId = h.submit(["u@box.example"])
    assert h.store.listQueue("active") == [queueId] and h.manager.active == {}
    h.clock.advance(301)
    if step == "defer":
        assert h.store.listQueue("deferred") == [queueId] and h.store.listQueue("active") == []
    else:
        assert h.store.listQueue("active") == [] and f"qmgr: {queueId}: removed" in h.lines
        assert delivered(h) == ["u@box.example"]  # recorded as sent: not delivered again


@pytest.mark.parametrize("syncMethod", ["syncfs", "fsync"])
def test_commonPathIsOneAppendAndOneSync(tmp_path, syncMethod):
    h = Harness(tmp_path, syncMethod=syncMethod)
    h.manager.start()
    before = dict(h.fs.calls)
    queueId = h.submit(["u@box.example"])
    assert f"qmgr: {queueId}: removed" in h.lines
    assert h.fs.appendOpens == 1
    synced = {name: h.fs.calls[name] - before.get(name, 0) for name in ("fdatasync", "syncfs")}
    # the commit's sync and the state record's (one batch each here: the pool runs jobs at once)
    assert synced == ({"fdatasync": 1, "syncfs": 0} if syncMethod == "fsync" else {"fdatasync": 0, "syncfs": 2})
    assert not any("notification" in line for line in h.lines)


def test_notifiedIsRecordedOnlyWhenANoticeWasQueued(tmp_path):
    smtp = FakeTransport()
    smtp.hold = True
    h = Harness(tmp_path, transports={"virtual": FakeTransport(), "smtp": smtp})
    h.manager.start()
    queueId = h.submit([Recipient("u@box.example", notify=("SUCCESS",)), Recipient("v@box.example"),
                        Recipient("x@far.example")])
    path = h.store.queuePath("active", queueId)
    assert h.fs.appendPaths == [path]  # u and v, delivered in one request; x still being delivered
    smtp.hold = False
    smtp.release()  # x is sent: the end of the attempt; u asked for a success notice
    notices = [line for line in h.lines if "notification" in line]
    assert len(notices) == 1 and notices[0].startswith(f"bounce: {queueId}: sender delivery status notification: ")
    noticeId = notices[0].rsplit(" ", 1)[1]
    # "notified" for u, and the notice's own delivery result; x's result, the last one, is not
    # recorded: the file is removed right after it (a crash in between repeats x, loses nothing)
    assert sorted(h.fs.appendPaths) == sorted([path, path, h.store.queuePath("active", noticeId)])
    assert f"qmgr: {queueId}: removed" in h.lines


def test_lastResultsBeforeTheRemovalAreNotSynced(tmp_path):
    smtp = FakeTransport()
    smtp.hold = True
    h = Harness(tmp_path, transports={"smtp": smtp})
    h.manager.start()
    before = h.fs.calls["fdatasync"]
    queueId = h.submit(["x@far.example"])
    smtp.release()
    assert h.fs.appendOpens == 0 and h.fs.calls["fdatasync"] == before  # no record synced, then deleted
    lines = [line for line in h.lines if line.startswith(("smtp: " + queueId, "qmgr: " + queueId + ": removed"))]
    assert len(lines) == 2 and "to=<x@far.example>" in lines[0] and "status=sent" in lines[0]
    assert lines[1] == f"qmgr: {queueId}: removed"
    assert h.store.listQueue("active") == []


def test_lastResultsAreRecordedWhenTheFileStays(tmp_path):
    # x is deferred, y (the last delivery) sent: the file goes to deferred/, so y must be recorded
    smtp = FakeTransport(lambda r: ("deferred", "4.4.1", "later") if r.address.startswith("x@") else ("sent", "2.0.0", "ok"))
    smtp.hold = True
    h = Harness(tmp_path, transports={"smtp": smtp})
    h.manager.start()
    queueId = h.submit(["x@far.example", "y@other.example"])
    smtp.release()
    smtp.release()
    assert h.store.listQueue("deferred") == [queueId]
    assert states(h, "deferred", queueId)[0]["1"]["status"] == "sent"
    assert any(line.startswith(f"smtp: {queueId}: to=<y@other.example>") for line in h.lines)


def test_removalThatFailsRecordsTheLastResults(tmp_path):
    smtp = FakeTransport()
    smtp.hold = True
    h = Harness(tmp_path, transports={"smtp": smtp})
    h.manager.start()
    h.fs.faults["unlink"] = once(OSError(errno.EIO, "Input/output error"), lambda path: "/active/" in path)
    queueId = h.submit(["x@far.example"])
    smtp.release()
    assert states(h, "active", queueId)[0]["0"]["status"] == "sent"  # recorded: the retry will not repeat it
    h.clock.advance(301)
    assert h.store.listQueue("active") == [] and f"qmgr: {queueId}: removed" in h.lines
    assert len(smtp.requests) == 1


# -- 3. a notice is owed until it is recorded ------------------------------------------------------


def noticesTo(h, transport, address):
    return [r for r in h.transports[transport].requests if r.envelope.sender == ""
            and [x.address for x in r.recipients] == [address]]


def test_bounceLostToAFailedCommitIsSentAfterARestart(tmp_path):
    smtp = FakeTransport(lambda r: ("bounced", "5.1.1", "550 5.1.1 no such user")
                         if r.address == "bad@far.example" else ("sent", "2.0.0", "ok"))
    smtp.hold = True
    h = Harness(tmp_path, transports={"smtp": smtp})
    h.manager.start()
    queueId = h.submit(["bad@far.example"])
    # The notice's queue file cannot be created (disk full) at the moment of the bounce.
    h.fs.faults["open"] = lambda path, flags: (OSError(errno.ENOSPC, "No space left on device")
                                               if flags & os.O_CREAT else None)
    smtp.release()
    assert any(line.startswith(f"bounce: warning: {queueId}: sender notification failed to alice@example.org: ")
               for line in h.lines)
    assert h.store.listQueue("deferred") == [queueId]
    recorded, notified = states(h, "deferred", queueId)
    assert recorded["0"]["status"] == "bounced" and notified == set()
    del h.fs.faults["open"]
    smtp.hold = False
    h.restart()  # a new queue manager on the same store
    h.clock.advance(0)
    h.clock.advance(301)
    assert len(noticesTo(h, "smtp", "alice@example.org")) == 1
    notice = smtp.contents[smtp.requests.index(noticesTo(h, "smtp", "alice@example.org")[0])]
    assert b"Final-Recipient: rfc822; bad@far.example" in notice and b"550 5.1.1 no such user" in notice
    assert any(line.startswith(f"bounce: {queueId}: sender non-delivery notification: ") for line in h.lines)
    assert f"qmgr: {queueId}: removed" in h.lines
    assert [r.address for r in smtp.requests[0].recipients] == ["bad@far.example"]
    assert sum(r.recipients[0].address == "bad@far.example" for r in smtp.requests) == 1  # never delivered again


def writeFileWithState(h, queue, recipients, state, notify=()):
    """A queue file in C{queue} whose state record says C{state} for recipient 0 (as after a crash)."""
    message = h.store.newMessage()
    message.write(b"Subject: t\r\n\r\nhi\r\n")
    envelope = Envelope(sender="alice@example.org", recipients=tuple(Recipient(r, notify=notify) for r in recipients),
                        arrival_time=h.clock.seconds())
    ids = []
    message.commit(envelope).addCallback(ids.append)
    queueId = ids[0]
    resultOf(h.store.appendState(h.store.queuePath("incoming", queueId), {"time": 1, "recipients": {"0": state}}))
    if queue != "incoming":
        os.rename(h.store.queuePath("incoming", queueId), h.store.queuePath(queue, queueId))
    return queueId


def test_bounceOwedAfterACrashIsSentAtStart(tmp_path):
    h = Harness(tmp_path)
    queueId = writeFileWithState(h, "active", ["bad@far.example"], {
        "status": "bounced", "dsn": "5.1.1", "text": "550 5.1.1 no such user", "relay": "mx[192.0.2.1]:25",
        "diagnostic": "smtp; 550 5.1.1 no such user", "remote_mta": "dns; mx.far.example"})
    h.manager.start()
    notices = noticesTo(h, "smtp", "alice@example.org")
    assert len(notices) == 1
    content = h.transports["smtp"].contents[h.transports["smtp"].requests.index(notices[0])]
    assert b"Remote-MTA: dns; mx.far.example" in content and b"Diagnostic-Code: smtp; 550 5.1.1 no such user" in content
    assert not any(r.recipients[0].address == "bad@far.example" for r in h.transports["smtp"].requests)
    assert f"qmgr: {queueId}: removed" in h.lines


def test_successNoticeOwedIsSentAndOnlyWhenAskedFor(tmp_path):
    h = Harness(tmp_path)
    asked = writeFileWithState(h, "incoming", ["u@box.example"], {
        "status": "sent", "dsn": "2.0.0", "text": "delivered to maildir", "relay": "virtual"}, notify=("SUCCESS",))
    quiet = writeFileWithState(h, "incoming", ["v@box.example"], {
        "status": "sent", "dsn": "2.0.0", "text": "delivered to maildir", "relay": "virtual"})
    taken = writeFileWithState(h, "incoming", ["w@box.example"], {
        "status": "sent", "dsn": "2.0.0", "text": "250 ok", "relay": "x", "success_action": "none"}, notify=("SUCCESS",))
    h.manager.start()
    assert len(noticesTo(h, "smtp", "alice@example.org")) == 1
    assert any(line.startswith(f"bounce: {asked}: sender delivery status notification: ") for line in h.lines)
    for queueId in (asked, quiet, taken):
        assert f"qmgr: {queueId}: removed" in h.lines
    assert delivered(h) == []


# -- 4. a damaged body is never delivered ----------------------------------------------------------


def damageContent(path, at=3):
    """Flip a bit of the content, keeping the mtime (a deferred file's next attempt)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(fileformat.HEADER_SIZE + at)
        byte = f.read(1)
        f.seek(fileformat.HEADER_SIZE + at)
        f.write(bytes([byte[0] ^ 0x20]))
    os.utime(path, (st.st_atime, st.st_mtime))


def test_damagedBodyGoesToCorruptAndNothingIsDelivered(tmp_path):
    h = Harness(tmp_path)
    bad = h.submit(["u@box.example", "x@far.example"])
    damageContent(h.store.queuePath("incoming", bad))
    h.manager.start()
    assert h.transports["virtual"].requests == h.transports["smtp"].requests == []
    assert os.listdir(h.store.queuePath("corrupt")) == [bad]
    assert any(line.startswith(f'qmgr: warning: saving corrupt file "{bad}" from queue "active" to queue "corrupt": ')
               and line.endswith("content checksum mismatch") for line in h.lines)
    assert not any("notification" in line for line in h.lines)


def test_bodyDamagedWhileDeferredIsNotDeliveredOnRetry(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.4.1", "later"))})
    h.manager.start()
    queueId = h.submit(["x@far.example"])
    damageContent(h.store.queuePath("deferred", queueId), at=10)
    h.clock.advance(301)
    assert len(h.transports["smtp"].requests) == 1
    assert os.listdir(h.store.queuePath("corrupt")) == [queueId]


# -- 5. tmp/ ------------------------------------------------------------------------------------------------


def test_startRemovesEveryTemporaryLeftoverAtOnce(tmp_path):
    h = Harness(tmp_path)
    tmp = h.store.queuePath("tmp")
    now = h.clock.seconds()
    for name, age in [("0aWfQ3Zk1YOUNG", 5), ("0aWfQ3Zk1OLD00", 7200), ("junk", 0)]:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(b"partial")
        os.utime(os.path.join(tmp, name), (now - age, now - age))
    os.mkfifo(os.path.join(tmp, "fifo"))
    os.symlink("/nonexistent", os.path.join(tmp, "link"))
    os.mkdir(os.path.join(tmp, "somedir"))
    receiving = h.store.newMessage()  # a slow client: its file is young and in use
    receiving.write(b"x" * (WRITE_BUFFER_SIZE + 1))
    h.manager.start()
    assert sorted(os.listdir(tmp)) == sorted([receiving.queueId, "somedir"])
    # While running: only what is old and unowned goes, once an interval.
    for name, age in [("0aWfQ3Zk1LATE0", -60), ("0aWfQ3Zk1STALE", TMP_MAX_AGE + TMP_CLEAN_INTERVAL + 1)]:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(b"x")
        os.utime(os.path.join(tmp, name), (now - age, now - age))
    os.utime(receiving.path, (0, 0))
    h.clock.advance(TMP_CLEAN_INTERVAL)
    assert sorted(os.listdir(tmp)) == sorted([receiving.queueId, "somedir", "0aWfQ3Zk1LATE0"])
    h.clock.advance(TMP_MAX_AGE)
    assert sorted(os.listdir(tmp)) == sorted([receiving.queueId, "somedir"])
    done = []
    receiving.commit(Envelope(sender="a@example.org", recipients=(Recipient("u@box.example"),),
                              arrival_time=now)).addCallback(done.append)
    assert done == [receiving.queueId] and delivered(h) == ["u@box.example"]


# -- 6. mta-queue's operations on a running daemon: file work in the pool, through the seam --------


def deferredMessage(h):
    """A message in deferred/ (its one attempt deferred); its queue id."""
    queueId = h.submit(["x@far.example"])
    assert h.queue("deferred") == [queueId]
    return queueId


def commit(h, pool, recipients):
    """Submit a message, running pool jobs only until its commit is durable; its queue id."""
    message = h.store.newMessage()
    message.write(b"Subject: t\r\n\r\nhi\r\n")
    envelope = Envelope(sender="a@example.org", recipients=tuple(Recipient(r) for r in recipients),
                        arrival_time=h.clock.seconds())
    ids = []
    message.commit(envelope).addCallback(ids.append)
    while not ids:
        pool.runNext()
    return ids[0]


def manualHarness(tmp_path):
    from tests.unit.test_queue_scan import ManualPool

    pool = ManualPool()
    clock = SyncReactor(pool)
    clock.advance(1_000_000)
    h = Harness(tmp_path, clock=clock, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.4.1", "later"))})
    h.manager.start()
    pool.runAll()
    return h, pool


def test_operateMakesNoSystemCallInTheReactor(tmp_path):
    h, pool = manualHarness(tmp_path)
    queueId = commit(h, pool, ["x@far.example"])
    pool.runAll()
    assert h.queue("deferred") == [queueId]
    before = dict(h.fs.calls)
    d = h.manager.operate("hold", [queueId])
    everything = h.manager.operate("delete", ["ALL"])
    assert dict(h.fs.calls) == before and not d.called  # nothing looked at or renamed yet: all in pool jobs
    pool.runAll()
    assert resultOf(d) == ([queueId], [])
    assert resultOf(everything) == ([queueId], [])  # found in hold/ by the second request
    assert h.fs.calls["rename"] > before.get("rename", 0) and h.fs.calls["unlink"] > before.get("unlink", 0)
    assert h.queue("hold") == h.queue("deferred") == []
    assert f"postsuper: {queueId}: placed on hold" in h.lines and f"postsuper: {queueId}: removed" in h.lines


def test_anOperationThatFailsIsLoggedAndReportedMissing(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.4.1", "later"))})
    h.manager.start()
    queueId = deferredMessage(h)
    h.fs.faults["rename"] = once(OSError(errno.EIO, "Input/output error"), lambda src, dst: "/hold/" in dst)
    with capturedLogs() as events:
        assert resultOf(h.manager.operate("hold", [queueId])) == ([], [queueId])
    assert h.queue("deferred") == [queueId] and h.queue("hold") == []
    assert f"qmgr: {queueId}: hold failed: Input/output error" in [formatEvent(e) for e in events]
    assert resultOf(h.manager.operate("hold", [queueId])) == ([queueId], [])  # the next try works


def test_aReleaseSetsTheDueTimeThroughTheSeam(tmp_path):
    h = Harness(tmp_path, transports={"smtp": FakeTransport(lambda r: ("deferred", "4.4.1", "later"))})
    h.manager.start()
    queueId = deferredMessage(h)
    assert resultOf(h.manager.operate("hold", [queueId])) == ([queueId], [])
    h.fs.faults["utime"] = once(OSError(errno.EPERM, "Operation not permitted"))
    assert resultOf(h.manager.operate("release", [queueId])) == ([], [queueId])  # renamed, but not made due
    assert h.fs.calls["utime"] >= 1


def test_noActivationWhileAToolWorksOnTheFile(tmp_path):
    """A deferred scan (or a retry) asking for a message whose file a tool is moving waits for the tool."""
    h, pool = manualHarness(tmp_path)
    held = commit(h, pool, ["x@far.example"])
    untouched = commit(h, pool, ["y@far.example"])
    pool.runAll()
    requests = len(h.transports["smtp"].requests)
    hold = h.manager.operate("hold", [held])
    release = h.manager.operate("release", [untouched])  # not on hold: this one touches no file
    assert h.manager.enqueue(held, "deferred") is False  # asked meanwhile: not taken now
    assert h.manager.enqueue(untouched, "deferred") is False
    pool.runAll()
    assert resultOf(hold) == ([held], []) and resultOf(release) == ([], [untouched])
    assert h.queue("hold") == [held]  # never activated: no attempt from hold/
    assert len(h.transports["smtp"].requests) == requests + 1  # the untouched one was taken up afterwards
    assert h.transports["smtp"].requests[-1].recipients[0].address == "y@far.example"
    assert h.manager.admin._operating == {} and h.manager.admin._asked == {}


def test_aMessageBeingReadGetsTheActionWhenItsAttemptEnds(tmp_path):
    h, pool = manualHarness(tmp_path)
    smtp = h.transports["smtp"]
    smtp.hold = True
    queueId = commit(h, pool, ["x@far.example"])  # its file is read in a pool job not run yet
    d = h.manager.operate("delete", [queueId])
    assert resultOf(d) == ([queueId], [])  # at once: nothing for the pool to do now
    pool.runAll()
    assert len(smtp.requests) == 1  # delivered first (the action waits for the attempt)
    smtp.hold = False
    smtp.release()
    pool.runAll()
    assert h.queue("active") == h.queue("deferred") == []
    assert f"postsuper: {queueId}: removed" in h.lines


def test_newMailIsActivatedInTheReactorAndDeferredMailThroughThePool(tmp_path):
    h, pool = manualHarness(tmp_path)
    queueId = commit(h, pool, ["x@far.example"])
    # the hand-over of new mail: renamed into active/ and read without a pool job
    assert h.queue("active") == [queueId] and len(h.transports["smtp"].requests) == 1
    pool.runAll()
    assert h.queue("deferred") == [queueId]
    renames = h.fs.calls["rename"]
    h.clock.advance(301)  # the deferred scan: the activation is a pool job
    while pool.jobs and h.fs.calls["rename"] == renames:
        pool.runNext()
    assert pool.done[-1][0] == "_loadBlocking" and h.queue("active") == [queueId]
