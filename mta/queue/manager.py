"""mta.queue.manager - the queue manager (qmgr(8)): the only writer of queue state.

New mail is handed over by the store the moment its commit is durable (no
polling on the hot path).  The manager moves it from incoming/ to active/,
reads its envelope and the state records of earlier attempts, checks the
content's length and CRC-32 against the file header (a damaged file goes
to corrupt/ and nothing of it is delivered), routes every recipient
(mta.routing), groups deliveries by (transport, nexthop), and hands them
to its scheduler (mta.queue.scheduler), which runs them with
per-destination concurrency and recipient limits, so a dead destination
only ever holds its own slots.

Every transport result is recorded before anything is done about it: a
state record appended to the queue file and fdatasync'd (mta.queue.store
.appendState), then the mail-log line.  A recipient is identified by its
index in the envelope, and an alias expansion of it by "index>address", so
after a crash nothing that was recorded as delivered is delivered again
(only a delivery that finished but was not yet recorded can repeat: the
RFC 1047 window).  When all deliveries of a message are over:

    bounced recipients   -> a DSN to the sender (mta.bounce), recorded
    NOTIFY=SUCCESS sent  -> a success notice, recorded
    any deferred         -> the file moves to deferred/, its mtime set to
                            the next attempt (as Postfix does); after
                            maximal_queue_lifetime (bounce_queue_lifetime
                            for mail from <>) deferred recipients bounce
                            ("from=<...>, status=expired, returned to sender")
    otherwise            -> the file is removed ("removed")

A notice is owed until a state record says it was handled ("notified"):
at every activation, recipients recorded as bounced (or sent, with NOTIFY=
SUCCESS) but not notified get their notice, so one that could not be
queued (disk full, a crash at that moment) is sent on the next attempt or
after a restart.  "notified" is appended only when a notice was queued (or
dropped on purpose, with its log line), so the common case, one recipient
delivered and nothing to tell, costs exactly one append and one fdatasync.

One exception saves a sync that the next step would throw away: when the
last delivery of an attempt ends with every one of its recipients sent
(and none asking for a success notice), its results are withheld
(ActiveMessage.withhold) and, if the attempt then ends with the removal of
the file, never written: the file is unlinked and the to= lines logged
after the unlink.  If the file stays after all (another recipient was
deferred, a notice failed, a tool's action, the unlink failed), they are
recorded first, as above.  A crash before the unlink repeats those
deliveries (a duplicate, never a loss); this costs nothing more than the
RFC 1047 window already does, since the append would have come after the
delivery too.

PROBES
    An address verification probe (Envelope.probe, mta.verify) is routed
    and delivered as any message, but its transports stop at the
    recipient's verdict, and each result goes to the verify service
    (QueueManager.verifier.update) as it is recorded; its lines say
    status=deliverable or status=undeliverable, as Postfix's.  It never
    gets a bounce, a success notice or a delay warning; a deferred probe
    is retried until its queue lifetime ends, and then counts as
    undeliverable.  With more than address_verify_pending_request_limit
    probes in the active queue, the others are deferred ("4.3.2 Too many
    address verification requests"), as Postfix's qmgr does.

ERRORS
    No error leaves a message where nobody looks at it, and every way out
    of an activation frees its active slot.  A state append that fails
    (EIO, ENOSPC) is logged and the message is deferred, without notices
    (their results are not durable); its next attempt repeats what was not
    recorded (the RFC 1047 window: a delivery may repeat, none is lost).
    A notice that cannot be queued defers the message; it is sent at the
    next attempt.  A file that cannot be read or moved is tried again after
    RETRY_DELAY; a failure inside the manager (a bug) defers the message.
    Anything in incoming/, active/ or deferred/ that is not a queue file
    (a name that is not a queue id, a symbolic link, a FIFO, a directory)
    goes to corrupt/ with a log line; nothing is opened or followed to find
    out (lstat only).  So does a file the parser rejects or whose content
    checksum does not match.

SCANS
    Directories are read in the store's thread pool, a batch of entries a
    job, and the reactor handles one batch between two jobs, so a deferred
    queue of any size never blocks the reactor for long (mta.queue.scanner
    does the start-up sweeps of tmp/, active/ and incoming/, the deferred
    scans and ETRN).  The deferred queue is scanned every queue_run_delay; a
    file whose mtime has passed goes back to active/.  The retry interval is
    the message's age, bounded by minimal_backoff_time and
    maximal_backoff_time (Postfix's rule).

ADMINISTRATION
    operate(action, ids) is postsuper's -d/-h/-H/-r for the daemon's tools
    (mta.control; mta.queue.admin): a message being read or delivered gets
    the action when its attempt ends; for the others the file work runs in
    the store's thread pool through the store's FileSystem.  Every system
    call the manager, its scanner and its administration make on the
    queue goes through that seam, in the pool, except reading a queue file
    (mta.queue.fileformat) and the cheap steps of the relay path below.

CHEAP FILE OPERATIONS IN THE REACTOR THREAD
    The activation of new mail (the store's hand-over; not the scans, which
    can take thousands of files in a row and keep a pool job per file)
    renames the file into active/ (store.move, no mtime, no sync), opens it and, for a file of at most SMALL_FILE (64 KiB) bytes,
    reads it whole in one read and parses and verifies it from memory, all
    in the reactor thread; the end of an attempt unlinks the file there
    too.  Each of these is a local file system call on a small file that
    never waits for the disk; a thread-pool round trip costs more (this
    2-core machine, ext4, a 2 KB file: 34-66 us of CPU per operation
    inline, 190-200 us through deferToThreadPool).  A bigger file is read
    and verified in the pool (its CRC-32 check can take milliseconds), and
    every sync (a torn tail's truncation, state records, the move to
    deferred/) stays in the pool.  The content of a small file is kept in
    the QueueFile and handed to the transport (DeliveryRequest.content),
    so the SMTP client sends it from memory without reading the file
    again; at most CONTENT_MEMORY (8 MiB) of content is held so, and past
    it (or for a big file) the transport reads the file in bounded chunks.

ETRN
    flushSite(domain) activates the deferred mail that has a deferred
    recipient in exactly that domain (Postfix's flush(8); mta.queue.sites
    is the in-memory index, built at the first flush), and fires with the
    number of messages activated; whether the domain may be flushed
    (fast_flush_domains, smtpd_etrn_restrictions) is the ETRN command's
    decision.  flush() is postqueue -f.

LOGGING
    qmgr: "from=<...>, size=N, nrcpt=N (queue active)", "removed", expiry,
    corrupt files; each to= line under the program of the delivery agent,
    named as the transport (smtp, relay, lmtp, virtual, error, discard,
    retry), or qmgr for what qmgr itself decided (defer_transports, an
    unknown transport, a table lookup failure); error for addresses the
    router refused (Postfix's trivial-rewrite sends those to error(8)).

DEVIATIONS
    Postfix leaves a non-regular file in a queue with a warning (postsuper
    removes it) and ignores names that are not queue ids; mta moves both to
    corrupt/.  Postfix has no content checksum; mta checks its CRC-32 at
    every activation (about 5 ms for 10 MB from the page cache, in the
    thread pool: bench/queuebench.py verify), before any byte can reach a
    transport; checking it in the transports' reader instead would find
    the damage only after the content was sent.  Postfix's stock master.cf logs the relay transport as
    postfix/relay/smtp and retry as postfix/error; mta logs them as
    mta/relay and mta/retry (the transport name is the program).

SECURITY
    Queue files are untrusted input (mta.queue.fileformat parses them
    strictly); addresses from them are only routed, never interpreted.
    Names read from directories are sanitised before they reach a log line.

CONFIGURATION
    QmgrSettings (mta.config.settings.qmgr, from [main]):
    qmgr_message_active_limit, default_destination_concurrency_limit,
    TRANSPORT_destination_concurrency_limit,
    default_destination_recipient_limit, TRANSPORT_destination_recipient_limit,
    minimal_backoff_time, maximal_backoff_time, queue_run_delay,
    maximal_queue_lifetime, bounce_queue_lifetime, defer_transports,
    soft_bounce, delay_warning_time.

SEE ALSO
    The queue manager's jobs with a boundary of their own live beside it:
    the deliveries by destination in mta.queue.scheduler, a message's
    state records and the notices it owes in mta.queue.attempt, directory
    scans in mta.queue.scanner, the ETRN index in mta.queue.sites, the
    tools' operations in mta.queue.admin (their file work in
    mta.queue.tools).  What is left here is the one state machine of an
    attempt (activation, routing, the end of an attempt, and the error path
    of each), whose steps share the active table, the backlog and the
    retry timers.
"""

import collections

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mta.maillog import sanitize
from mta.model import DeliveryRecipient, RecipientResult
from mta.queue import tools
from mta.queue.admin import Administration
from mta.queue.attempt import ActiveMessage
from mta.queue.fileformat import SMALL_FILE, CorruptQueueFile, openQueueFile, readOpenQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.scanner import Scanner
from mta.queue.scheduler import Scheduler
from mta.queue.sites import SiteIndex, pendingSites, siteOf
from mta.queue.state import DONE, mergeStates, recipientKey, wantsSuccessNotice
from mta.routing import RouteError

# ActiveMessage: mta.queue.attempt; mergeStates, recipientKey: mta.queue.state (re-exported).
__all__ = ["QueueManager", "ActiveMessage", "mergeStates", "recipientKey"]

log = Logger()

RETRY_DELAY = 60.0  # seconds before a file that could not be read or moved is tried again
# A probe's result as a verify status (mta.verify: Postfix's DEL_RCPT_STAT_OK, _DEFER, _BOUNCE).
PROBE_STATUS = {"sent": 0, "deferred": 1, "bounced": 2}
CONTENT_MEMORY = 8 * 1024 * 1024  # bytes of small messages' content held in memory for the transports, at most


class QueueManager:
    """
    The queue manager (see the module docstring).  Attributes: C{store},
    C{router}, C{transports}, C{notices}, C{settings} (QmgrSettings) and
    the values read from it (C{activeLimit}, C{runDelay}, C{softBounce},
    ...), C{active} (queue id -> ActiveMessage, None while its file is
    read), C{backlog} (waiting for an active slot), C{scheduler} (the
    deliveries; C{destinations} is its (transport, nexthop) ->
    Destination), C{sites} (the ETRN index), C{scanner}.
    """

    def __init__(self, store, router, transports, settings, clock, maillogs, notices=None, verifier=None):
        """
        C{settings}: mta.config.settings.qmgr.QmgrSettings (``config.settings.qmgr``).
        C{transports}: a callable name -> IDeliveryTransport or None.
        C{maillogs}: a callable program -> MailLogger.
        C{notices}: an object with send(kind, message, items) -> Deferred, or None.
        C{verifier}: the verify service (mta.verify.VerifyService: update(address,
        status, text) -> the status to log), which takes the results of probes.
        """
        self.store = store
        self.router = router
        self.transports = transports
        self.clock = clock
        self.maillog = maillogs("qmgr")
        self.maillogs = maillogs
        self.notices = notices
        self.verifier = verifier
        self._configure(settings)
        # The scheduler asks for self.transports at each dispatch: a reload's new registry serves new work.
        self.scheduler = Scheduler(settings, lambda name: self.transports(name), clock, self._delivered,
                                   self._deliveryDone)
        self.active = {}  # queue id -> ActiveMessage (None while its file is being read)
        self._pendingActions = {}  # queue id -> action asked for while its file was being read
        self.backlog = collections.OrderedDict()  # queue id -> queue(s) it comes from, waiting for a slot
        self.sites = SiteIndex()  # deferred mail by recipient site, for flushSite (ETRN)
        self.scanner = Scanner(self)
        self.admin = Administration(self)
        self._contentBytes = 0  # content held in the active messages' QueueFile.content (CONTENT_MEMORY)
        self._retries = {}  # queue id -> DelayedCall of a new attempt after an I/O error
        self._running = False
        self.activeProbes = 0  # probes (mta.verify) in the active queue: address_verify_pending_request_limit
        self.idle = Deferred()  # fires (and is replaced) whenever no message is active: tests

    def _configure(self, settings):
        self.settings = settings
        self.activeLimit = settings.activeLimit
        self.minBackoff = settings.minBackoff
        self.maxBackoff = settings.maxBackoff
        self.runDelay = settings.runDelay
        self.lifetime = settings.lifetime
        self.bounceLifetime = settings.bounceLifetime
        self.deferTransports = settings.deferTransports
        self.softBounce = settings.softBounce
        self.delayWarning = settings.delayWarning

    @property
    def destinations(self):
        """(transport, nexthop) -> Destination (mta.queue.scheduler)."""
        return self.scheduler.destinations

    # -- life cycle ---------------------------------------------------------------

    def start(self):
        """Sweep tmp/, take up what a crash left in active/, then incoming/, then deferred mail that is due."""
        self._running = True
        self.store.onCommit = self._committed
        self.scanner.start()

    def stop(self):
        self._running = False
        self.store.onCommit = None
        self.scanner.stop()
        for call in self._retries.values():
            if call.active():
                call.cancel()
        self._retries.clear()

    def scanIncoming(self):
        """Take up whatever incoming/ holds now (mta.workers, after a worker ended); a Deferred."""
        return self.scanner.scanIncoming()

    def scanDeferred(self, flush=False):
        """
        Activate deferred mail whose time has come (all of it with C{flush});
        a Deferred of the number of messages taken (activated, or waiting
        for an active slot).
        """
        return self.scanner.scanDeferred(flush)

    def flush(self):
        """Attempt all deferred mail now (postqueue -f); a Deferred of the number of messages taken."""
        return self.scanner.scanDeferred(flush=True)

    def flushSite(self, domain):
        """
        ETRN: activate now the deferred mail with a deferred recipient in
        exactly C{domain} (case-insensitive; no subdomains, as flush(8)); a
        Deferred of the number of messages activated (or, past
        qmgr_message_active_limit, waiting for a slot).  The caller strips
        ETRN's "@" or "#" and decides whether the domain may be flushed.
        """
        return self.scanner.flushSite(domain)

    # -- activation ---------------------------------------------------------------

    def _committed(self, queueId):
        """The store's hand-over of new mail: activated with the cheap file steps inline."""
        return self.enqueue(queueId, inline=True)

    def enqueue(self, queueId, fromQueue="incoming", inline=False):
        """
        A message is ready (new, or due): activate it now or when a slot
        frees.  C{fromQueue}: the queue it is in, or a tuple of queues to
        look in, in order; C{inline}: new mail, whose file steps may run in the
        reactor thread (see _load).  True if it was taken; False if it was already
        active or waiting (a waiting one then comes from C{fromQueue}).
        """
        if not self._running or queueId in self.active:
            return False
        if not isValidQueueId(queueId):
            log.error("qmgr: not a queue id: {name!r}", name=queueId)
            return False
        if self.admin.holds(queueId, fromQueue):  # a tool's file work on it runs in the pool: taken up after it
            return False
        self._cancelRetry(queueId)
        if queueId in self.backlog:
            self.backlog[queueId] = fromQueue
            return False
        if len(self.active) >= self.activeLimit:
            self.backlog[queueId] = fromQueue
            return True
        self.active[queueId] = None  # the slot (and a second activation) is taken while the file is read
        d = Deferred.fromCoroutine(self._activate(queueId, fromQueue, inline))
        d.addErrback(self._activationFailed, queueId)
        return True

    def _activationFailed(self, failure, queueId):
        # _activate handles its errors; this is the last line of defence: never keep a slot.
        log.failure("qmgr: {queue_id}: activation failed", failure, queue_id=queueId)
        message = self.active.get(queueId, "missing")
        if message is None:
            self._abandon(queueId)
            self._retryLater(queueId, ("active", "incoming", "deferred"))
        elif isinstance(message, ActiveMessage) and message.jobs == 0:
            d = Deferred.fromCoroutine(self._finish(message, failed=True))
            d.addErrback(lambda f: log.failure("qmgr: {queue_id}: finishing failed", f, queue_id=queueId))

    def _moveToActive(self, queueId, fromQueues):
        """Rename the file into active/ from the first of C{fromQueues} that has it; its path."""
        for i, queue in enumerate(fromQueues):
            try:
                return self.store.move(queueId, queue, "active")
            except FileNotFoundError:
                if i == len(fromQueues) - 1:
                    raise

    def _parse(self, queueId, path, fd, size):
        """Parse and verify the file open at C{fd} (and close it); a corrupt one is set aside."""
        try:
            return readOpenQueueFile(fd, size, path, verifyContent=True, keepContent=True)
        except CorruptQueueFile as e:
            e.savedAs = self.store.setAside("active", queueId)
            raise

    def _open(self, queueId, fromQueues):
        """Move the file into active/ and open it: (path, fd, size); a corrupt one is set aside."""
        path = self._moveToActive(queueId, fromQueues)
        try:
            fd, size = openQueueFile(path)
        except CorruptQueueFile as e:
            e.savedAs = self.store.setAside("active", queueId)
            raise
        return path, fd, size

    def _loadBlocking(self, queueId, fromQueues):
        """In a worker thread: move, open, parse and verify the file, cut off a torn tail."""
        path, fd, size = self._open(queueId, fromQueues)
        queueFile = self._parse(queueId, path, fd, size)
        if queueFile.tornTail:
            self.store.truncate(path, queueFile.validLength)
        return path, queueFile

    async def _load(self, queueId, fromQueues, inline):
        """
        Move the file into active/, parse and verify it, cut off a torn tail.
        For new mail (C{inline}), the rename, the open and the read and parse
        of a small file run in the reactor thread (cheaper than a thread-pool
        round trip: see the module docstring); a big file is read in the pool,
        and the truncation (an fdatasync) runs there too.  Scans and retries,
        which can activate thousands of files in a row, keep one pool job
        per file, so that they never hold the reactor.
        """
        if inline:
            path, fd, size = self._open(queueId, fromQueues)
            if size <= SMALL_FILE:
                queueFile = self._parse(queueId, path, fd, size)
            else:
                queueFile = await self.store.inPool(self._parse, queueId, path, fd, size)
            if queueFile.tornTail:
                await self.store.inPool(self.store.truncate, path, queueFile.validLength)
        else:
            path, queueFile = await self.store.inPool(self._loadBlocking, queueId, fromQueues)
        if queueFile.content is not None:
            if self._contentBytes + len(queueFile.content) > CONTENT_MEMORY:
                queueFile = attrs.evolve(queueFile, content=None)  # read from the file by the transport
            else:
                self._contentBytes += len(queueFile.content)
        return path, queueFile

    async def _activate(self, queueId, fromQueue, inline=False):
        fromQueues = (fromQueue,) if isinstance(fromQueue, str) else tuple(fromQueue)
        try:
            path, queueFile = await self._load(queueId, fromQueues, inline)
        except FileNotFoundError:
            return self._abandon(queueId)  # deleted or moved meanwhile (a tool, another scan)
        except CorruptQueueFile as e:
            savedAs = getattr(e, "savedAs", queueId)
            self.maillog.emit(f'warning: saving corrupt file "{queueId}" from queue "active" to queue "corrupt": '
                              f"{sanitize(str(e))}" + (f" (as {savedAs})" if savedAs != queueId else ""),
                              queue_id=queueId, prefix=False)
            return self._abandon(queueId)
        except Exception as e:
            error = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            log.error("qmgr: {queue_id}: cannot activate: {error}; trying again in {delay}s",
                      queue_id=queueId, error=error, delay=RETRY_DELAY)
            self._abandon(queueId)
            return self._retryLater(queueId, ("active",) + fromQueues)
        self.sites.discard(queueId)
        states, notified = mergeStates(queueFile.states)
        message = ActiveMessage(queueId, path, queueFile, self.clock.seconds(), states, notified)
        self.active[queueId] = message
        if message.envelope.probe:
            self.activeProbes += 1  # Postfix's qmgr_vrfy_pend_count
        message.pendingAction = self._pendingActions.pop(queueId, None)
        envelope = message.envelope
        self.maillog.fields(
            queueId,
            [("from", f"<{envelope.sender}>"), ("size", envelope.size), ("nrcpt", len(envelope.recipients))],
            "queue active",
            sender=envelope.sender,
        )
        try:
            jobs = await self._route(message)
            self._recordImmediate(message)
        except Exception:
            log.failure("qmgr: {queue_id}: routing failed; the message is deferred", queue_id=queueId)
            message.results.clear()
            return await self._finish(message, failed=True)
        message.jobs += 1  # deliveries may finish while they are being scheduled
        for (transport, nexthop), targets in jobs.items():
            self.scheduler.schedule(message, transport, nexthop, targets)
        message.jobs -= 1
        if message.jobs == 0:
            await self._finish(message)

    async def _route(self, message):
        """Route the recipients that are not done; the deliveries, {(transport, nexthop): [(key, target)]}."""
        states = message.states
        groups = collections.defaultdict(list)
        # Safety, as Postfix's qmgr: excess address verification probes are deferred.
        tooMany = message.envelope.probe and self.activeProbes > self.settings.probeLimit
        for index, recipient in enumerate(message.envelope.recipients):
            if states.get(str(index), {}).get("status") in DONE:
                continue
            for route in await self.router.route(recipient.address, message.envelope.sender):
                key = recipientKey(index, recipient.address, route.address)
                if states.get(key, {}).get("status") in DONE:
                    continue
                target = DeliveryRecipient(index, route.address, recipient.address, recipient.orcpt, recipient.notify)
                if tooMany:
                    self._result(message, key, target,
                                 RecipientResult(index, "deferred", "4.3.2", "Too many address verification requests"))
                elif isinstance(route, RouteError):
                    program = "error" if route.status == "bounced" else "qmgr"
                    self._result(message, key, target, RecipientResult(index, route.status, route.dsn, route.text), program)
                elif route.transport in self.deferTransports:
                    self._result(message, key, target, RecipientResult(index, "deferred", "4.3.2", "deferred transport"))
                elif self.transports(route.transport) is None:
                    text = f"mail transport unavailable: {route.transport}"
                    self._result(message, key, target, RecipientResult(index, "deferred", "4.3.0", text))
                else:
                    groups[(route.transport, route.nexthop)].append((key, target))
        return groups

    def _softened(self, result):
        """soft_bounce: a bounce becomes a deferral (5.x.x -> 4.x.x)."""
        if self.softBounce and result.status == "bounced":
            return attrs.evolve(result, status="deferred", dsn="4" + result.dsn[1:])
        return result

    def _result(self, message, key, target, result, program="qmgr"):
        message.results[key] = (target, self._softened(result))
        message.programs[key] = program

    def _abandon(self, queueId):
        self.active.pop(queueId, None)
        self._pendingActions.pop(queueId, None)
        self._slotFree()

    def _retryLater(self, queueId, fromQueues, delay=RETRY_DELAY):
        """Take C{queueId} up again after C{delay} (its file could not be read or moved)."""
        if not self._running or queueId in self._retries:
            return
        self._retries[queueId] = self.clock.callLater(delay, self._retryNow, queueId, fromQueues)

    def _retryNow(self, queueId, fromQueues):
        self._retries.pop(queueId, None)
        self.enqueue(queueId, tuple(dict.fromkeys(fromQueues)))

    def _recordImmediate(self, message):
        """Record (and log) the results decided while routing, before any delivery."""
        if message.results:
            programs = message.programs
            self._record(message, {k: (t, r, programs.get(k, "qmgr")) for k, (t, r) in message.results.items()})

    # -- deliveries (mta.queue.scheduler runs them) ------------------------------------

    def _delivered(self, message, batch, started):
        """The results of one delivery (key -> (target, result, program)): record and log them."""
        try:
            batch = {key: (target, self._softened(result), program) for key, (target, result, program) in batch.items()}
            message.results.update({key: (target, result) for key, (target, result, _) in batch.items()})
            if message.jobs == 1 and message.pendingAction is None and all(
                    result.status == "sent" and not wantsSuccessNotice(target, result)
                    for target, result, _ in batch.values()):
                # The last delivery and nothing left to tell: the file is likely removed next, so its
                # record is not synced first (a crash before the removal repeats these deliveries).
                self._verifyResults(message, batch)
                message.withhold(self.clock.seconds(), batch, started)
            else:
                self._record(message, batch, started)
        except Exception:
            log.failure("qmgr: {queue_id}: cannot record delivery results", queue_id=message.queueId)
            message.recordFailed = True
        finally:
            message.jobs -= 1

    def _deliveryDone(self, message):
        if message.jobs == 0:
            d = Deferred.fromCoroutine(self._finish(message))
            d.addErrback(lambda f: log.failure("qmgr: {queue_id}: finishing failed", f, queue_id=message.queueId))

    def _record(self, message, batch, started=None):
        """Append the results (key -> (target, result, program)) to the queue file, then log them."""
        self._verifyResults(message, batch)
        message.record(self.store, self.clock.seconds(), self.maillogs, batch, started)

    def _verifyResults(self, message, batch):
        """
        A probe's results (mta.verify) go to the verify service, for the
        original address and the one delivered to (Postfix's verify_append);
        their log lines show its status (deliverable, undeliverable).
        """
        if not message.envelope.probe:
            return
        for key, (target, result, _) in batch.items():
            if result.status not in PROBE_STATUS:
                continue
            status = PROBE_STATUS[result.status]
            shown = "deliverable" if status == 0 else "undeliverable"
            if self.verifier is not None:
                try:
                    shown = self.verifier.update(target.original, status, result.text)
                    if target.address != target.original:
                        self.verifier.update(target.address, status, result.text)
                except Exception:
                    log.failure("qmgr: {queue_id}: verify update failed", queue_id=message.queueId)
            message.probeStatus[key] = shown

    def _append(self, message, state):
        """Append a state record; the Deferred never fails (a failure sets message.recordFailed)."""
        return message.append(self.store, state)

    async def _settle(self, message):
        """Wait for the appends in flight; True if every one of them is durable."""
        return await message.settle()

    # -- the end of an attempt --------------------------------------------------------

    async def _finish(self, message, failed=False):
        """End the attempt: expiry, notices, then defer, remove or apply a tool's action.  Frees the slot."""
        queueId = message.queueId
        requeue = None
        try:
            if failed:
                await self._settle(message)
                await self._defer(message)
            else:
                requeue = await self._conclude(message)
        except Exception:
            log.failure("qmgr: {queue_id}: finishing failed; the message is deferred", queue_id=queueId)
            try:
                await self._defer(message)
            except Exception:
                log.failure("qmgr: {queue_id}: cannot defer", queue_id=queueId)
                self._retryLater(queueId, ("active",))
        del self.active[queueId]
        if message.envelope.probe:
            self.activeProbes -= 1
        if message.queueFile.content is not None:
            self._contentBytes -= len(message.queueFile.content)
        self._slotFree()
        if requeue is not None:
            self.enqueue(queueId, requeue)

    async def _conclude(self, message):
        """The normal end of an attempt; the queue to take the message up from again (a tool's action), or None."""
        queueId = message.queueId
        if not await self._settle(message):
            self.maillog.warning("cannot record delivery results; the message is deferred, and deliveries that "
                                 "were not recorded will be repeated", queueId)
            await self._defer(message)
            return None
        now = self.clock.seconds()
        envelope = message.envelope
        lifetime = self.bounceLifetime if not envelope.sender else self.lifetime
        deferred = {key for key, (_, result) in message.results.items() if result.status == "deferred"}
        if deferred and now - envelope.arrival_time >= lifetime:
            self.maillog.emit(f"from=<{sanitize(envelope.sender)}>, status=expired, returned to sender", queueId,
                              sender=envelope.sender)
            expired = {}
            for key in deferred:
                target, result = message.results[key]
                result = attrs.evolve(result, status="bounced", text=f"message expired: {result.text}")
                message.results[key] = (target, result)
                expired[key] = (target, result, "qmgr")
            self._record(message, expired)
            if not await self._settle(message):
                self.maillog.warning("cannot record the expiry; the message is deferred", queueId)
                await self._defer(message)
                return None
            deferred = set()
        noticed = await self._notify(message)
        if message.pendingAction is not None:
            await self._recordWithheld(message)
            return await self._applyPending(message)
        if deferred or not noticed:
            await self._defer(message)
            return None
        try:
            self.store.fs.unlink(message.path)  # in the reactor thread: cheaper than a pool round trip (measured)
        except FileNotFoundError:
            message.logWithheld(self.maillogs)
            return None
        except OSError as e:
            log.error("qmgr: {queue_id}: cannot remove: {error}", queue_id=queueId, error=e.strerror)
            await self._recordWithheld(message)
            self._retryLater(queueId, ("active",))
            return None
        message.logWithheld(self.maillogs)
        self.maillog.emit("removed", queueId)
        return None

    async def _recordWithheld(self, message):
        """The file stays: record (and log) the last results that were withheld in the hope of removing it."""
        if message.withheld is not None:
            message.recordWithheld(self.store, self.maillogs)
            await message.settle()

    async def _defer(self, message):
        """Move the message to deferred/, due after the backoff; on failure try again later from active/."""
        await self._recordWithheld(message)
        now = self.clock.seconds()
        age = now - message.envelope.arrival_time
        delay = min(max(age, self.minBackoff), self.maxBackoff)
        try:
            await self.store.inPool(self.store.move, message.queueId, "active", "deferred", now + delay)
        except FileNotFoundError:
            return
        except OSError as e:
            log.error("qmgr: {queue_id}: cannot move to deferred/: {error}; trying again in {delay}s",
                      queue_id=message.queueId, error=e.strerror, delay=delay)
            self._retryLater(message.queueId, ("active",), delay)
            return
        sites = {siteOf(target.address) for target, result in message.results.values() if result.status == "deferred"}
        sites.discard(None)
        if not sites and (message.recordFailed or not message.results):
            sites = pendingSites(message.envelope, mergeStates(message.queueFile.states)[0])
        self.sites.add(message.queueId, sites)

    async def _applyPending(self, message):
        """A tool's action asked for during delivery; the queue to take the message up from, or None."""
        action, queueId = message.pendingAction, message.queueId
        try:
            text = await self.store.inPool(tools.apply, self.store, action, queueId, "active", self.clock.seconds())
        except FileNotFoundError:
            return None
        except OSError as e:
            log.error("qmgr: {queue_id}: {action} failed: {error}", queue_id=queueId, action=action, error=e.strerror)
            self._retryLater(queueId, ("active",))
            return None
        if text is not None:
            self.maillogs("postsuper").emit(text, queueId)
        return {"requeue": "incoming", "release": "deferred"}.get(action)

    async def _notify(self, message):
        """Send the notices still owed (mta.queue.attempt); False if one that must be sent failed."""
        if self.notices is None or message.envelope.probe:  # a probe's results went to the verify service
            return True
        return await message.sendNotices(self.notices, self.store, self.clock, self.delayWarning)

    # -- administration (mta-queue) -----------------------------------------------

    def operate(self, action, ids):
        """
        postsuper's -d/-h/-H/-r: C{ids} is a list of queue ids or ["ALL"]; a
        Deferred of (done ids, missing ids).  See mta.queue.admin.
        """
        return self.admin.operate(action, ids)

    def _cancelRetry(self, queueId):
        retry = self._retries.pop(queueId, None)
        if retry is not None and retry.active():
            retry.cancel()

    def _slotFree(self):
        while self.backlog and len(self.active) < self.activeLimit:
            queueId, fromQueue = self.backlog.popitem(last=False)
            self.enqueue(queueId, fromQueue)
        if not self.active:
            idle, self.idle = self.idle, Deferred()
            idle.callback(None)

    # -- reload -----------------------------------------------------------------------

    def reconfigure(self, settings, router, transports, notices=None):
        """
        A reload (mta.service): new work uses C{router}, C{transports},
        C{notices} and C{settings} (the new QmgrSettings).  A delivery in
        progress finishes with the transport object it holds; the limits of
        existing destinations change at once (a raised concurrency limit
        starts waiting deliveries now, a lowered one lets those in progress
        end).
        """
        self.router = router
        self.transports = transports
        self.notices = notices
        self.maillog = self.maillogs("qmgr")
        self._configure(settings)
        # A shorter queue_run_delay applies to the next scan, not only to the one after it.
        self.scanner.runDelayChanged()
        self.scheduler.reconfigure(settings)
        if self._running:
            self._slotFree()
