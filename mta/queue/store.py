"""mta.queue.store - durable entry into the queue, and the queue directories.

The one cleanup (mta.cleanup: for the SMTP server, pickup and the notices)
calls

    message = store.newMessage()      # tmp/QUEUEID, O_EXCL, mode 0600
    message.write(chunk) ...          # content as it arrives, from the reactor thread
    queueId = await message.commit(envelope)   # then, and only then, 250
    message.abort()                   # on any other outcome; always safe

The file is written by the one queue-file writer (mta.queue.files.
QueueFileWriter, which mta-sendmail uses for maildrop/ too), its system
calls made through the store's FileSystem seam.  write() appends to a small
buffer and writes it to the temporary file every WRITE_BUFFER_SIZE (64 KiB)
bytes, so memory does not grow with the message.
These writes go to the page cache and are made from the reactor thread, as
Postfix's cleanup(8) does; a write error is remembered, later data is
dropped, and commit() reports it (the server reads DATA to its end and then
answers 451 4.3.0).

commit(envelope) adds the envelope record and settles the real content
header (see mta.queue.fileformat); then the store's committer
(mta.queue.committer: one thread, a batch of jobs at a time) has the
writer write the last buffered bytes and the header (creating the file if
the message never outgrew the buffer), close the file and rename it from
tmp/ into incoming/, and makes the batch durable -- one syncfs(2) of the
queue's file system per batch (queue_sync_method = syncfs, the default),
or an fsync of each file and one of each directory per batch (fsync) --
and only after that does the Deferred fire with the queue id.  Any failure
(ENOSPC, EIO, EACCES, a failed rename or sync, an envelope that cannot be
stored) fails the Deferred with QueueWriteError and leaves nothing in
incoming/ or tmp/: the temporary file is removed, and after a failed sync
the renamed files are unlinked again.  (If the machine then crashes before
that unlink reaches the disk, a message the client was told to retry may
still be delivered: a duplicate, never a loss.)

GROUP COMMIT
    The committer takes every job submitted while its previous batch ran
    and serves them with one sync: a commit fires only after a sync that
    began after its rename (mta.queue.committer, BATCHES).  State records
    (appendState) go through the same batches, so a relayed message's
    results share the sync of the messages being received.

THE QUEUE MANAGER'S FILE WORK
    Blocking methods, run in the store's thread pool (inPool), their system
    calls made through the FileSystem seam so that tests can inject faults
    (reading a queue file, fileformat.readQueueFile, does not use it):
    appendState() (a state record, made durable by the committer; a
    Deferred), move() (a
    rename, and the deferred queue's mtime), setAside() (anything, under
    any name, into corrupt/ without overwriting), presentIn(), truncate()
    (a torn append), cleanTemporary().  scan() reads a directory in the
    pool, SCAN_BATCH entries (lstat only) per job, as ScanBatch objects
    whose flat arrays give the garbage collector nothing to walk.

SECURITY
    Message content is untrusted but never interpreted here.  Queue ids are
    made here; names found in directories are used as paths in another
    directory only if they are valid queue ids (setAside() keeps any other
    name within the queue and corrupt/).  Files are created
    O_EXCL|O_NOFOLLOW, mode 0600, in directories of mode 0700; entries are
    lstat'ed, never followed.

CONFIGURATION
    queue_directory (the store's directory), queue_sync_method (the
    committer's); queue_minfree uses freeSpace().
"""

import errno
import os
import stat

from twisted.internet.defer import Deferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.interfaces import IQueueMessage, IQueueStore
from mta.model import Envelope
from mta.queue import fileformat, queueid
from mta.queue.committer import Committer
from mta.queue.files import (  # noqa: F401 (re-exported)
    WRITE_BUFFER_SIZE,
    DirectoryScan,
    FileSystem,
    QueueFileWriter,
    QueueWriteError,
    StepFailed,
    _describe,
    _writeAll,
    fsyncDirectory,
)

log = Logger()

QUEUE_NAMES = ("incoming", "active", "deferred", "hold", "corrupt", "maildrop", "tmp")
SCAN_BATCH = 1000  # directory entries per thread-pool job of a DirectoryScan


@implementer(IQueueMessage)
class IncomingMessage:
    """
    A message being received into tmp/, through the one queue-file writer
    (mta.queue.files.QueueFileWriter).  C{queueId} names it; C{path} is
    its temporary file; C{size} is the number of content bytes given to
    write() so far.
    """

    def __init__(self, store, queueId, path):
        self.queueId = queueId
        self.path = path
        self._store = store
        self._writer = QueueFileWriter(store.fs, path)
        self._state = "open"  # -> committing -> committed | failed; open -> aborted | failed

    def __repr__(self):
        return f"<IncomingMessage {self.queueId} {self._state} size={self.size}>"

    @property
    def size(self):
        return self._writer.size

    @property
    def _buffer(self):
        """The content not yet written out (for tests: memory stays bounded)."""
        return self._writer.buffer

    def write(self, data):
        """
        Append C{data} (bytes) to the content.  Past WRITE_BUFFER_SIZE it is
        written out from the calling (reactor) thread, the file created
        then.  Errors are reported by commit().
        """
        if self._state != "open":
            if self._state == "aborted":
                return
            raise RuntimeError(f"queue file {self.queueId}: write() after commit()")
        self._writer.write(data)

    def commit(self, envelope, queue="incoming"):
        """
        Store the message with C{envelope} (its size is set to self.size).
        Returns a Deferred that fires with the queue id once the message is
        durable in incoming/, or fails with QueueWriteError.  C{queue} "hold"
        puts it on hold instead (an access table's HOLD action): the queue
        manager leaves it alone until it is released.
        """
        if self._state != "open":
            return fail(QueueWriteError(f"queue file {self.queueId}: commit() when {self._state}"))
        self._state = "committing"
        writer = self._writer
        if writer.error is not None:
            return self._failNow(f"cannot write queue file {self.queueId}: {writer.error.reason}")
        try:
            if not isinstance(envelope, Envelope):
                raise ValueError(f"not an Envelope: {type(envelope).__name__}")
            writer.seal(envelope)
        except (ValueError, TypeError) as e:
            return self._failNow(f"cannot store message {self.queueId}: {e}")
        # From here on the writer belongs to a worker thread: it writes what is
        # left, the header, fsyncs and renames (QueueStore._syncAndRename).
        return self._store._commit(self, queue)

    def _failNow(self, reason):
        self._state = "failed"
        self._cleanup()
        error = QueueWriteError(reason)
        log.error("{queue_id}: {error}", queue_id=self.queueId, error=reason)
        return fail(error)

    def abort(self):
        """
        Forget the message and remove its temporary file.  Safe at any time;
        it does nothing once commit() has been called (the commit's result
        decides) or after an earlier abort().
        """
        if self._state != "open":
            return
        self._state = "aborted"
        self._cleanup()

    def _cleanup(self):
        error = self._writer.discard()
        if error is not None:
            log.warn("{queue_id}: cannot remove {path}: {error}", queue_id=self.queueId,
                     path=self.path, error=_describe(error))
        self._store._open.pop(self.queueId, None)


@implementer(IQueueStore)
class QueueStore:
    """
    The queue directory C{directory}.  C{reactor} provides callFromThread
    (and getThreadPool when C{threadpool} is None; the pool is looked up at
    the first commit).  C{fileSystem} (a FileSystem) and C{newQueueId} (a
    callable returning fresh ids) are for tests.
    """

    def __init__(self, directory, reactor, threadpool=None, *, fileSystem=None, newQueueId=None, commitPool=None,
                 syncMethod="syncfs", temporary=None):
        self.directory = os.fspath(directory)
        # Where new files are written before their commit: tmp/, or a worker process's own
        # directory under it (tmp/worker.PID, mta.workers), so that no two processes sweep each
        # other's files.
        self.tmpDirectory = os.path.join(self.directory, temporary or "tmp")
        self.reactor = reactor
        self._threadpool = threadpool
        self.fs = fileSystem if fileSystem is not None else FileSystem()
        self._newQueueId = newQueueId if newQueueId is not None else queueid.newQueueId
        self._open = {}  # queue id -> IncomingMessage with a file in tmp/
        self._commitPool = commitPool
        self.syncMethod = syncMethod
        self._committer = None
        self.onCommit = None  # called with the queue id of every durable commit (the queue manager)

    def queuePath(self, name, queueId=None):
        """The path of queue C{name}, or of C{queueId} in it."""
        if name not in QUEUE_NAMES:
            raise ValueError(f"no queue named {name!r}")
        if queueId is None:
            return os.path.join(self.directory, name)
        if not queueid.isValidQueueId(queueId):
            raise ValueError(f"not a queue id: {queueId!r}")
        return os.path.join(self.directory, name, queueId)

    # -- set-up and inspection ------------------------------------------

    def prepare(self):
        """Create the queue directories (mode 0700); idempotent.  Raises OSError."""
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        for name in QUEUE_NAMES:
            path = os.path.join(self.directory, name)
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if os.path.islink(path) or not os.path.isdir(path):
                    raise NotADirectoryError(errno.ENOTDIR, "exists and is not a directory", path) from None
            os.chmod(path, 0o700)
        self.fs.fsyncDirectory(self.directory)

    def freeSpace(self):
        """Bytes available to unprivileged users on the queue's file system."""
        st = os.statvfs(self.directory)
        return st.f_bavail * st.f_frsize

    def listQueue(self, name):
        """
        Blocking: the queue ids of the regular files in queue C{name}, sorted;
        other names are ignored.  For tools; the queue manager uses scan().
        """
        ids = []
        for entryName, st in self.fs.scandir(self.queuePath(name)):
            if queueid.isValidQueueId(entryName) and st is not None and stat.S_ISREG(st.st_mode):
                ids.append(entryName)
        ids.sort()
        return ids

    def scan(self, name, batchSize=SCAN_BATCH):
        """
        A DirectoryScan of queue C{name}: its entries read in the thread pool,
        C{batchSize} at a time, so that a queue of any size never blocks
        the reactor for long.
        """
        return DirectoryScan(self, self.queuePath(name), batchSize)

    def move(self, queueId, fromQueue, toQueue, mtime=None):
        """
        Blocking (call it with inPool): rename C{queueId} from one queue to
        another, and set its mtime (the deferred queue's next attempt).
        Returns the new path.  Raises OSError (FileNotFoundError: gone).
        """
        src = self.queuePath(fromQueue, queueId)
        dst = self.queuePath(toQueue, queueId)
        self.fs.rename(src, dst)
        if mtime is not None:
            self.fs.utime(dst, (mtime, mtime))
        return dst

    def setAside(self, fromQueue, name):
        """
        Blocking: move the entry C{name} of queue C{fromQueue} (any name,
        any kind of file: nothing is opened or followed) into corrupt/, under
        the same name or, if that is taken, NAME.1, NAME.2, ...  Returns the
        name it got.  Raises OSError (FileNotFoundError: gone).
        """
        if not name or name in (".", "..") or os.sep in name or "\0" in name:
            raise ValueError(f"not a directory entry: {name!r}")
        src = os.path.join(self.queuePath(fromQueue), name)
        corrupt = self.queuePath("corrupt")
        target, n = name, 0
        while True:
            try:
                self.fs.lstat(os.path.join(corrupt, target))
            except FileNotFoundError:
                break
            n += 1
            target = f"{name}.{n}"
        self.fs.rename(src, os.path.join(corrupt, target))
        return target

    def presentIn(self, name, queueIds):
        """Blocking: those of C{queueIds} that are regular files in queue C{name}, in order."""
        present = []
        for queueId in queueIds:
            try:
                st = self.fs.lstat(self.queuePath(name, queueId))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                present.append(queueId)
        return present

    def cleanTemporary(self, olderThan=None, now=None):
        """
        Blocking: remove what is left in tmp/ (anything but a directory) that
        was last modified more than C{olderThan} seconds before C{now} (the
        reactor's clock by default; C{olderThan} None: whatever its age),
        except the files of messages being received.  Returns the names
        removed, sorted.  Only this process writes its tmp directory
        (mta-sendmail and pickup's submissions use maildrop/; each worker
        process has a directory of its own under tmp/, mta.workers), so at
        start-up, holding the queue lock, everything there is garbage.
        """
        if olderThan is None:
            limit = None
        else:
            limit = (self.reactor.seconds() if now is None else now) - olderThan
        tmp = self.tmpDirectory
        removed = []
        for name, st in self.fs.scandir(tmp):
            if name in self._open or st is None:
                continue
            if stat.S_ISDIR(st.st_mode) or (limit is not None and st.st_mtime > limit):
                continue
            path = os.path.join(tmp, name)
            try:
                self.fs.unlink(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warn("cannot remove {path}: {error}", path=path, error=_describe(e))
                continue
            removed.append(name)
        removed.sort()
        return removed

    # -- receiving ------------------------------------------------------

    def newMessage(self):
        """
        A new IncomingMessage, to be written in tmp/.  Its file is created
        when its content outgrows the write buffer, or at commit in a worker
        thread, so the reactor does not wait on the queue directory's lock.
        """
        for _ in range(3):
            queueId = self._newQueueId()
            if queueId not in self._open:
                break
        else:
            raise QueueWriteError("cannot create a queue file with a fresh queue id")
        try:
            self.committer().openDescriptor()  # before the content's first write (mta.queue.committer)
        except OSError:
            pass  # the committer tries again, and fsyncs the batch if it still cannot
        message = IncomingMessage(self, queueId, os.path.join(self.tmpDirectory, queueId))
        self._open[queueId] = message
        return message

    def appendState(self, path, state, truncateTo=None):
        """
        Append a state record to the committed queue file C{path}, in the
        committer's next batch (mta.queue.committer); a Deferred that fires
        when it is durable.  C{truncateTo} first cuts off a torn append.  Raises
        (through the Deferred) QueueWriteError.
        """
        record = fileformat.dumpState(state)
        return self.committer().submit(_AppendJob(self, path, record, truncateTo))

    def _append(self, path, record, truncateTo, sync=True):
        fs = self.fs
        try:
            fd = fs.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise QueueWriteError(f"cannot update {path}: {_describe(e)}") from None
        try:
            if truncateTo is not None:
                fs.ftruncate(fd, truncateTo)
            _writeAll(fs, fd, record)
            if sync:
                fs.fdatasync(fd)
        except OSError as e:
            raise QueueWriteError(f"cannot update {path}: {_describe(e)}") from None
        finally:
            fs.close(fd)

    def truncate(self, path, length):
        """Blocking: cut the committed queue file C{path} to C{length} bytes (a torn append) and fdatasync it."""
        fs = self.fs
        fd = fs.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fs.ftruncate(fd, length)
            fs.fdatasync(fd)
        finally:
            fs.close(fd)

    def inPool(self, f, *args):
        """Run blocking file work C{f(*args)} in the store's thread pool; a Deferred of its result."""
        return deferToThreadPool(self.reactor, self._pool(), f, *args)

    def _pool(self):
        if self._threadpool is None:
            self._threadpool = self.reactor.getThreadPool()
        return self._threadpool

    def committer(self):
        """The Committer (mta.queue.committer) of this queue's durable writes, made at first use."""
        if self._committer is None:
            pool = self._commitPool if self._commitPool is not None else self._pool()
            self._committer = Committer(self.reactor, pool, self.fs, self.directory, self.syncMethod)
        return self._committer

    def setSyncMethod(self, method):
        """Use queue_sync_method C{method} from the next batch on (a reload)."""
        self.syncMethod = method
        if self._committer is not None:
            self._committer.setMethod(method)

    @property
    def syncs(self):
        """How many syncs (syncfs calls or directory fsyncs) the commits and state records needed so far."""
        return 0 if self._committer is None else self._committer.syncs

    def close(self):
        """After the commit pool has stopped: release the committer's descriptor."""
        if self._committer is not None:
            self._committer.close()

    def _commit(self, message, queue="incoming"):
        if queue not in ("incoming", "hold"):
            raise ValueError(f"cannot commit into {queue!r}")
        result = Deferred()
        self.committer().submit(_StoreJob(self, message, queue)).addBoth(
            self._finish, message, result, queue == "incoming")
        return result

    def _finish(self, outcome, message, result, notify):
        queueId = message.queueId
        self._open.pop(queueId, None)
        if isinstance(outcome, Failure):
            message._state = "failed"
            error = outcome.value
            if not isinstance(error, QueueWriteError):
                log.failure("{queue_id}: unexpected error in commit", outcome, queue_id=queueId)
                error = QueueWriteError(f"cannot store message {queueId}: {_describe(error)}")
            log.error("{queue_id}: {error}", queue_id=queueId, error=str(error))
            result.errback(error)
            return
        message._state = "committed"
        result.callback(queueId)  # the 250 first, then the queue manager
        if notify and self.onCommit is not None:
            self.onCommit(queueId)


class _StoreJob:
    """A committer job (mta.queue.committer): an IncomingMessage's file written out and renamed into its queue."""

    def __init__(self, store, message, queue):
        self.queueId = message.queueId
        self.writer = message._writer  # from here on the committer's thread's alone
        self.path = store.queuePath(queue, message.queueId)
        self.directory = store.queuePath(queue)
        self.fs = store.fs

    def run(self, grouped):
        try:
            self.writer.store(self.path, sync=not grouped)
        except StepFailed as e:
            raise QueueWriteError(f"cannot store message {self.queueId}: {e}") from None
        return self.queueId

    def undo(self):
        try:
            self.fs.unlink(self.path)
        except OSError:
            pass

    def failed(self, reason):
        return QueueWriteError(f"cannot store message {self.queueId}: {reason}")


class _AppendJob:
    """A committer job: a state record appended to a committed queue file."""

    directory = None

    def __init__(self, store, path, record, truncateTo):
        self.store = store
        self.path = path
        self.record = record
        self.truncateTo = truncateTo

    def run(self, grouped):
        self.store._append(self.path, self.record, self.truncateTo, sync=not grouped)

    def undo(self):
        pass  # the record may or may not be on the disk; the queue manager treats it as not recorded

    def failed(self, reason):
        return QueueWriteError(f"cannot update {self.path}: {reason}")
