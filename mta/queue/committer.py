"""mta.queue.committer - the queue's durable writes, made by one thread a batch at a time.

    committer = Committer(reactor, pool, fs, directory, method)
    d = committer.submit(job)   # fires with job.run()'s result once durable

Everything the reactor may act on only once it is on the disk goes through
here: a new queue file before its 250 (mta.queue.store commit()), a state
record before the queue manager acts on the results in it (appendState()).
A job has

    run(grouped)   blocking, in the committer's thread; it writes through
                   the FileSystem seam; with grouped true it makes no sync
                   of its own (the batch's one syncfs covers it), otherwise
                   it fsyncs (fdatasyncs) what it wrote; returns its result
                   or raises QueueWriteError;
    directory      the directory whose entries it changed (a rename into
                   it), or None: under the fsync method each such directory
                   is fsynced once per batch;
    undo()         after the batch's sync failed: take back what run() did
                   where nothing may act on it (unlink a renamed queue file:
                   its client is told 4xx, so it must not be delivered);
    failed(reason) the QueueWriteError its Deferred fails with then.

BATCHES
    submit() puts the job on a list under a lock and starts a batch only
    when none is running: one hand-off to the committer's thread (one job
    of its one-thread pool) per batch, not per write.  The thread takes the
    whole list, runs every job in order, makes them durable with one sync,
    gives all the results to the reactor with one callFromThread, and takes
    the list again; it stops when the list is empty.  A job's result fires
    only after a sync that began after its run(), and results fire in the
    order the jobs were submitted.  A job that raised fails alone; a failed
    sync fails every job of its batch (undone first) -- for syncfs the
    error cannot be tied to a file, so the whole batch is told 4xx (a
    message may then be refused that was stored: a retry and a duplicate,
    never a loss).

SYNC METHODS (queue_sync_method)
    syncfs  One syncfs(2) of the queue's file system per batch: the data,
            inodes and directory entries of everything written in the
            batch and a flush of the device's cache (ext4, xfs, btrfs).
            Writeback errors since the previous call are reported through
            the same descriptor (Linux 5.8 and later), so the committer
            opens the queue directory once, before its first write, and
            keeps it.  Cost: it writes back whatever else is dirty on that
            file system too; a queue on a file system of its own (as
            Postfix's documentation advises for a busy queue) sees only its
            own writes.  Not available (not Linux, or no syncfs in the C
            library): the fsync method, with a warning.
    fsync   Every file fsynced (a state record fdatasync'd) and every
            changed directory fsynced once per batch.

SECURITY
    Nothing from the network is interpreted here; paths come from the
    store (valid queue ids only).

CONFIGURATION
    queue_sync_method (syncfs or fsync).

DEVIATIONS
    Postfix fsyncs each queue file (and, on Linux, never its directory);
    mta makes a whole batch durable with one syncfs by default.
"""

import os
import threading

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from mta.queue.files import QueueWriteError, _describe

log = Logger()

SYNC_METHODS = ("syncfs", "fsync")

class Committer:
    """
    The durable writes of the queue directory C{directory}, run in C{pool}
    (a thread pool: one thread of its own in the daemon; any pool
    providing callInThreadWithCallback in tests: batches never overlap,
    see _start) a batch at a time.  C{fs} is the store's FileSystem;
    C{method} one of SYNC_METHODS.  Attributes for statistics and tests:
    C{batches}, C{syncs} (syncfs calls or directory fsyncs), C{jobs}.
    """

    def __init__(self, reactor, pool, fs, directory, method="syncfs"):
        self.reactor = reactor
        self.pool = pool
        self.fs = fs
        self.directory = directory
        self.method = None
        self.setMethod(method)
        self._lock = threading.Lock()
        self._pending = []  # (job, Deferred); under _lock
        self._running = False  # a batch is running or about to; under _lock
        self._fd = None  # the queue directory, open for syncfs (openDescriptor)
        self.batches = 0
        self.syncs = 0
        self.jobs = 0

    def setMethod(self, method):
        """Sync with C{method} (one of SYNC_METHODS) from the next batch on."""
        if method not in SYNC_METHODS:
            raise ValueError(f"queue_sync_method: not one of {', '.join(SYNC_METHODS)}: {method!r}")
        if method == "syncfs" and not self.fs.syncfsAvailable():
            if self.method != "fsync":
                log.warn("queue_sync_method = syncfs: syncfs(2) is not available here; using fsync")
            method = "fsync"
        self.method = method

    def submit(self, job):
        """Run C{job} in the next batch; a Deferred of its result, fired once it is durable."""
        d = Deferred()
        with self._lock:
            self._pending.append((job, d))
            start = not self._running
            self._running = True
        if start:
            self._start()
        return d

    def _start(self):
        try:
            if getattr(self.pool, "joined", False):  # a stopped Twisted ThreadPool drops new work silently
                raise RuntimeError("the pool has stopped")
            self.pool.callInThreadWithCallback(self._drained, self._drain)
        except Exception:  # fail what waits rather than leave it hanging
            with self._lock:
                pending, self._pending = self._pending, []
                self._running = False
            failure = Failure(QueueWriteError("cannot store message: the queue's writer has stopped"))
            self._deliver([(d, failure) for _, d in pending])

    def _drained(self, ok, result):
        if not ok:  # a bug in _drain: never leave a commit hanging
            self.reactor.callFromThread(log.failure, "queue committer failed", result)
            with self._lock:
                pending, self._pending = self._pending, []
                self._running = False
            error = Failure(QueueWriteError("cannot store message: internal error"))
            self.reactor.callFromThread(self._deliver, [(d, error) for _, d in pending])

    def openDescriptor(self):
        """
        Open the queue directory for syncfs, once: before the first write
        it is to cover (the store calls it when a message is begun, since
        content may be written before its commit), as syncfs reports only
        the errors since the descriptor was opened.  Any thread; OSError.
        """
        if self._fd is not None or self.method != "syncfs":
            return
        with self._lock:
            if self._fd is None:
                self._fd = self.fs.openDirectory(self.directory)

    def close(self):
        """Close the descriptor kept for syncfs (after the pool has stopped)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.close(fd)
            except OSError:
                pass

    # -- in the committer's thread ----------------------------------------------------

    def _drain(self):
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._running = False
                    return
            try:
                results = self._runBatch(batch)
            except Exception:  # a bug (or a FileSystem's): nothing of this batch is known to be durable
                failure = Failure()
                self.reactor.callFromThread(log.failure, "queue committer: a batch failed", failure)
                for job, _ in batch:
                    try:
                        job.undo()
                    except Exception:
                        pass
                error = Failure(QueueWriteError("cannot store message: internal error"))
                results = [(d, error) for _, d in batch]
            self.reactor.callFromThread(self._deliver, results)

    def _runBatch(self, batch):
        self.batches += 1
        self.jobs += len(batch)
        grouped = self.method == "syncfs"
        if grouped:
            try:
                self.openDescriptor()
            except OSError as e:  # this batch is fsynced file by file instead
                grouped = False
                self.reactor.callFromThread(log.warn, "cannot open {directory} for syncfs: {error}; using fsync",
                                            directory=self.directory, error=_describe(e))
        done = []  # [job, Deferred, result or Failure]
        for job, d in batch:
            try:
                done.append([job, d, job.run(grouped)])
            except QueueWriteError as e:
                done.append([job, d, Failure(e)])
            except Exception as e:  # a bug: the job fails alone, nothing is acted upon
                done.append([job, d, Failure(QueueWriteError(f"cannot store message: {_describe(e)}"))])
        succeeded = [entry for entry in done if not isinstance(entry[2], Failure)]
        if succeeded:
            if grouped:
                self._syncAll(succeeded)
            else:
                self._syncDirectories(succeeded)
        return [(d, result) for _, d, result in done]

    def _syncAll(self, entries):
        self.syncs += 1
        try:
            self.fs.syncfs(self._fd)
        except Exception as e:
            self._failAll(entries, f"syncfs of {self.directory} failed: {_describe(e)}")
            try:
                self.fs.syncfs(self._fd)  # the undoing made durable, as far as possible
            except Exception:
                pass

    def _syncDirectories(self, entries):
        directories = {}
        for entry in entries:
            if entry[0].directory is not None:
                directories.setdefault(entry[0].directory, []).append(entry)
        for directory, members in directories.items():
            self.syncs += 1
            try:
                self.fs.fsyncDirectory(directory)
            except Exception as e:
                self._failAll(members, f"fsync of {directory} failed: {_describe(e)}")
                try:
                    self.fs.fsyncDirectory(directory)
                except Exception:
                    pass

    def _failAll(self, entries, reason):
        for entry in entries:
            try:
                entry[0].undo()
            except Exception:
                pass
            entry[2] = Failure(entry[0].failed(reason))

    # -- in the reactor thread --------------------------------------------------------

    def _deliver(self, results):
        for d, result in results:
            d.callback(result) if not isinstance(result, Failure) else d.errback(result)
