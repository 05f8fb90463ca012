"""mta.queue.scanner - the queue manager's directory work: start-up sweeps, deferred scans, ETRN.

The Scanner belongs to one QueueManager and feeds it queue ids
(manager.enqueue); it never reads a message itself, except for the
envelopes it reads to rebuild the ETRN index (mta.queue.sites).

Every directory is read in the store's thread pool, SCAN_BATCH entries per
job (mta.queue.files.DirectoryScan: lstat only, nothing opened or
followed); the reactor handles one batch between two jobs, so a deferred
queue of 100,000 files never blocks it for long (bench/queuebench.py
deferred measures the longest stall).  Each entry is judged by its name and
its lstat: a queue id naming a regular file is a message; anything else (a
name that is not a queue id, a symbolic link, a FIFO, a directory, a
socket) is set aside into corrupt/ (store.setAside, a rename) with
Postfix's qmgr warning:

    warning: saving corrupt file "NAME" from queue "deferred" to queue "corrupt": a symbolic link

START-UP (start())
    1. tmp/: everything but directories and the files of messages being
       received is removed, whatever its age (store.cleanTemporary()).
       Only this process writes tmp/ itself and it holds the queue lock (a
       second daemon cannot start); worker processes (mta.workers) write
       their own directories tmp/worker.PID, which the master empties when
       the worker ends and at its start; mta-sendmail and mta-sendmail -bs write maildrop/QUEUEID.tmp,
       pickup reads maildrop/ and writes through the store (its files are
       "being received").  Then every TMP_CLEAN_INTERVAL, files older than
       TMP_MAX_AGE that no message being received owns (left by an I/O
       error, or by someone else) are removed.
    2. active/: left there by a crash; moved back to incoming/.
    3. incoming/: every message is taken up.
    4. deferred/: the first scan (then one every queue_run_delay).

DEFERRED SCANS (scanDeferred())
    A file whose mtime (the next attempt) has passed is activated; with
    flush, every file.  One scan runs at a time: a flush asked for during a
    timed scan runs right after it; a timed scan asked for during a scan is
    served by it.  The Deferred fires with the number of messages taken.

ETRN (flushSite())
    The deferred messages that the SiteIndex lists for the site and that
    are still regular files in deferred/ (store.presentIn, in the pool,
    FLUSH_BATCH ids per job) are activated, whatever their mtime.  An
    incomplete index (after a start) is rebuilt first: every deferred
    file's envelope and state records are read in the pool, INDEX_BATCH
    files per job; concurrent flushes share one rebuild.  The count
    includes messages that wait for an active slot.

SECURITY
    Directory entries are untrusted names: they are used only as entries of
    their own directory (never joined across directories unless they are
    valid queue ids) and sanitised before they reach a log line.

CONFIGURATION
    queue_run_delay (through the manager).  Constants: SCAN_BATCH (the
    store's), INDEX_BATCH, FLUSH_BATCH, TMP_CLEAN_INTERVAL, TMP_MAX_AGE.
"""

import stat

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from mta.maillog import sanitize
from mta.queue.fileformat import CorruptQueueFile, readQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.sites import pendingSites
from mta.queue.files import ScanBatch
from mta.queue.state import mergeStates

log = Logger()

INDEX_BATCH = 200  # deferred files read per thread-pool job when the ETRN index is rebuilt
FLUSH_BATCH = 1000  # queue ids checked per thread-pool job by flushSite
TMP_CLEAN_INTERVAL = 3600.0  # seconds between sweeps of tmp/ while running
TMP_MAX_AGE = 3600.0  # age after which an unowned file in tmp/ is removed by those sweeps


def strayReason(name, mode):
    """Why the entry C{name} (with lstat's C{mode}) is not a queue file, or None if it is one."""
    if not isValidQueueId(name):
        return "not a queue file name"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "not a regular file"


def readSites(store, queueIds):
    """Blocking: [(queue id, its pending sites)] of the files C{queueIds} in deferred/; unreadable ones left out."""
    found = []
    for queueId in queueIds:
        try:
            queueFile = readQueueFile(store.queuePath("deferred", queueId))
        except (OSError, CorruptQueueFile):
            continue  # gone, or damaged: its activation will tell
        found.append((queueId, pendingSites(queueFile.envelope, mergeStates(queueFile.states)[0])))
    return found


class Scanner:
    def __init__(self, manager):
        self.manager = manager
        self.store = manager.store
        self.clock = manager.clock
        self._scanCall = None
        self._tmpCall = None
        self._scanning = False
        self._flushWaiters = []  # flushes asked for, waiting for the next pass
        self._timedWaiters = []  # timed scans asked for while no pass runs
        self._passWaiters = []  # served by the pass that runs now
        self._rebuildWaiters = None  # list while the ETRN index is being rebuilt

    @property
    def running(self):
        return self.manager._running

    # -- life cycle ---------------------------------------------------------------

    def start(self):
        d = Deferred.fromCoroutine(self._startUp())
        d.addErrback(lambda f: log.failure("qmgr: start-up scan failed", f))
        return d

    def stop(self):
        for name in ("_scanCall", "_tmpCall"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def runDelayChanged(self):
        """queue_run_delay changed (a reload): a scan due later than the new delay comes forward."""
        call = self._scanCall
        if call is not None and call.active() and call.getTime() - self.clock.seconds() > self.manager.runDelay:
            call.reset(self.manager.runDelay)

    def scanIncoming(self):
        """
        Take up every message in incoming/ (a worker process that ended may
        have committed mail it could not announce, mta.workers); a Deferred.
        """
        d = Deferred.fromCoroutine(self._sweep("incoming", self._takeUp))
        d.addErrback(lambda f: log.failure("qmgr: incoming/ scan failed", f))
        return d

    async def _startUp(self):
        await self._cleanTemporary(None)
        await self._sweep("active", self._backToIncoming)
        await self._sweep("incoming", self._takeUp)
        if self.running:
            self._scanCall = self.clock.callLater(0, self._timedScan)

    # -- tmp/ -------------------------------------------------------------------------

    async def _cleanTemporary(self, olderThan):
        try:
            removed = await self.store.inPool(self.store.cleanTemporary, olderThan, self.clock.seconds())
        except OSError as e:
            log.error("qmgr: cannot clean {path}: {error}", path=self.store.queuePath("tmp"), error=e.strerror)
        else:
            if removed:
                log.info("qmgr: removed {count} temporary file(s) left in tmp/", count=len(removed))
        if self.running:
            self._tmpCall = self.clock.callLater(TMP_CLEAN_INTERVAL, self._tmpTick)

    def _tmpTick(self):
        self._tmpCall = None
        d = Deferred.fromCoroutine(self._cleanTemporary(TMP_MAX_AGE))
        d.addErrback(lambda f: log.failure("qmgr: cleaning tmp/ failed", f))

    # -- reading directories ------------------------------------------------------------

    async def _sweep(self, queue, handle):
        """Read queue C{queue}: strays go to corrupt/, the queue files to C{handle}, a ScanBatch at a time."""
        scan = self.store.scan(queue)
        try:
            while self.running and not scan.done:
                batch = await scan.next()
                messages = await self._sort(queue, batch)
                if messages:
                    await handle(messages)
        except OSError as e:
            log.error("qmgr: cannot scan {path}: {error}", path=self.store.queuePath(queue), error=e.strerror or str(e))
        finally:
            scan.close()

    async def _sort(self, queue, batch):
        """The queue files in C{batch} (a ScanBatch); the rest is set aside."""
        messages, strays = ScanBatch(), []
        for name, mode, mtime in batch:
            reason = strayReason(name, mode)
            if reason is None:
                messages.add(name, mode, mtime)
            else:
                strays.append((name, reason))
        for name, reason in strays:
            await self._setAside(queue, name, reason)
        return messages

    async def _setAside(self, queue, name, reason):
        try:
            target = await self.store.inPool(self.store.setAside, queue, name)
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("qmgr: cannot move {name} from {queue}/ to corrupt/: {error}", name=sanitize(name), queue=queue,
                      error=e.strerror or str(e))
            return
        text = f'warning: saving corrupt file "{sanitize(name)}" from queue "{queue}" to queue "corrupt": {reason}'
        if target != name:
            text += f" (as {sanitize(target)})"
        self.manager.maillog.emit(text, queue_id=name if isValidQueueId(name) else None, prefix=False)

    async def _backToIncoming(self, messages):
        def move():
            for queueId in messages.names:
                try:
                    self.store.move(queueId, "active", "incoming")
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.error("qmgr: {queue_id}: cannot move back to incoming/: {error}", queue_id=queueId,
                              error=e.strerror)

        await self.store.inPool(move)

    async def _takeUp(self, messages):
        for queueId in messages.names:
            self.manager.enqueue(queueId)

    # -- the deferred queue ---------------------------------------------------------------

    def _timedScan(self):
        self._scanCall = None
        self.scanDeferred()

    def scanDeferred(self, flush=False):
        """Activate deferred mail that is due (all of it with C{flush}); a Deferred of the number taken."""
        if not self.running:
            return succeed(0)
        waiter = Deferred()
        if flush or not self._scanning:
            self._flushWaiters.append(waiter) if flush else self._timedWaiters.append(waiter)
        else:
            self._passWaiters.append(waiter)  # a timed scan asked for during a scan: served by it
        if not self._scanning:
            self._scanning = True
            d = Deferred.fromCoroutine(self._scanLoop())
            d.addErrback(lambda f: log.failure("qmgr: deferred queue scan failed", f))
        return waiter

    async def _scanLoop(self):
        try:
            while self.running and (self._flushWaiters or self._timedWaiters):
                flush = bool(self._flushWaiters)
                self._passWaiters = self._flushWaiters + self._timedWaiters
                self._flushWaiters, self._timedWaiters = [], []
                count = 0
                try:
                    count = await self._scanPass(flush)
                finally:
                    waiters, self._passWaiters = self._passWaiters, []
                    for waiter in waiters:
                        waiter.callback(count)
        finally:
            self._scanning = False
            for waiter in self._flushWaiters + self._timedWaiters:  # stopped meanwhile
                waiter.callback(0)
            self._flushWaiters, self._timedWaiters = [], []
            if self.running and self._scanCall is None:
                self._scanCall = self.clock.callLater(self.manager.runDelay, self._timedScan)

    async def _scanPass(self, flush):
        now = self.clock.seconds()
        taken = []

        async def due(messages):
            for queueId, _, mtime in messages:
                if (flush or mtime <= now) and self.manager.enqueue(queueId, "deferred"):
                    taken.append(queueId)

        await self._sweep("deferred", due)
        return len(taken)

    # -- ETRN ------------------------------------------------------------------------------

    def flushSite(self, domain):
        """Activate the deferred mail with a deferred recipient in exactly C{domain}; a Deferred of the count."""
        return Deferred.fromCoroutine(self._flushSite(str(domain).lower()))

    async def _flushSite(self, site):
        manager = self.manager
        if not manager._running:
            return 0
        if not manager.sites.complete:
            await self._rebuildSites()
        ids = manager.sites.ids(site)
        count = 0
        for start in range(0, len(ids), FLUSH_BATCH):
            chunk = [i for i in ids[start : start + FLUSH_BATCH] if i not in manager.active and i not in manager.backlog]
            try:
                present = await self.store.inPool(self.store.presentIn, "deferred", chunk)
            except OSError as e:
                log.error("qmgr: ETRN {site}: {error}", site=sanitize(site), error=e.strerror or str(e))
                continue
            gone = set(chunk).difference(present)
            for queueId in gone:
                manager.sites.discard(queueId)
            for queueId in present:
                if manager.enqueue(queueId, "deferred"):
                    count += 1
        return count

    async def _rebuildSites(self):
        if self._rebuildWaiters is not None:
            waiter = Deferred()
            self._rebuildWaiters.append(waiter)
            await waiter
            return
        self._rebuildWaiters = []
        try:
            await self._readAllSites()
        finally:
            waiters, self._rebuildWaiters = self._rebuildWaiters, None
            for waiter in waiters:
                waiter.callback(None)

    async def _readAllSites(self):
        sites = self.manager.sites
        sites.tracking = True  # deferrals from now on are recorded, also those the scan misses
        scan = self.store.scan("deferred", INDEX_BATCH)
        try:
            while not scan.done:
                batch = await scan.next()
                ids = [name for name, mode, _ in batch if strayReason(name, mode) is None]
                for queueId, found in await self.store.inPool(readSites, self.store, ids):
                    if queueId not in self.manager.active:
                        sites.add(queueId, found)
            sites.complete = True
        except OSError as e:
            log.error("qmgr: cannot read {path} for ETRN: {error}", path=self.store.queuePath("deferred"),
                      error=e.strerror or str(e))
        finally:
            scan.close()
