"""mta.queue.manager - the queue manager (qmgr(8)): the only writer of queue state.

New mail is handed over by the store the moment its commit is durable (no
polling on the hot path).  The manager moves it from incoming/ to active/,
reads its envelope and the state records of earlier attempts, routes every
recipient (mta.routing), groups deliveries by (transport, nexthop), and
runs them with per-destination concurrency and recipient limits, so a dead
destination only ever holds its own slots.

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
    otherwise            -> the file is removed ("removed")

Deferred mail is scanned every queue_run_delay; a file whose mtime has
passed goes back to active/.  The retry interval is the message's age,
bounded by minimal_backoff_time and maximal_backoff_time (Postfix's rule).
At start-up, files left in active/ by a crash are taken up again.  A queue
file that does not parse is moved to corrupt/ with a log line; the rest of
the mail is not held up.

SECURITY
    Queue files are untrusted input (mta.queue.fileformat parses them
    strictly); addresses from them are only routed, never interpreted.

CONFIGURATION
    qmgr_message_active_limit, default_destination_concurrency_limit,
    TRANSPORT_destination_concurrency_limit,
    default_destination_recipient_limit, TRANSPORT_destination_recipient_limit,
    minimal_backoff_time, maximal_backoff_time, queue_run_delay,
    maximal_queue_lifetime, bounce_queue_lifetime, defer_transports,
    soft_bounce.
"""

import collections
import os

import attrs
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from mta.maillog import sanitize
from mta.model import DeliveryRecipient, DeliveryRequest, RecipientResult
from mta.queue import tools
from mta.queue.fileformat import CorruptQueueFile, readQueueFile
from mta.routing import RouteError

log = Logger()

DONE = frozenset({"sent", "bounced"})


@attrs.define
class ActiveMessage:
    queueId: str
    path: str
    queueFile: object  # fileformat.QueueFile
    activeSince: float
    states: dict  # key -> {"status", "dsn", "text", "relay", ...}, merged from state records
    notified: set  # keys whose result was already reported to the sender
    results: dict = attrs.Factory(dict)  # key -> (DeliveryRecipient, RecipientResult), this run
    jobs: int = 0  # deliveries not finished
    pendingAction: str | None = None  # delete, hold or requeue, asked for while delivering
    appends: list = attrs.Factory(list)  # Deferreds of state appends in flight

    @property
    def envelope(self):
        return self.queueFile.envelope


@attrs.define
class Destination:
    transport: str
    nexthop: str
    limit: int
    pending: collections.deque = attrs.Factory(collections.deque)
    active: int = 0


def _seconds(value):
    """A delay as Postfix logs it: 0.27, 3.1, 42 (never an exponent)."""
    if value >= 10:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}".rstrip("0").rstrip(".")
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


def recipientKey(index, original, address):
    """The state key of a delivery: the envelope index, plus the address if aliases changed it."""
    return str(index) if address == original else f"{index}>{address.lower()}"


def mergeStates(records):
    """Fold state records (in file order) into ({key: state}, notified keys)."""
    states, notified = {}, set()
    for record in records:
        recipients = record.get("recipients")
        if isinstance(recipients, dict):
            for key, state in recipients.items():
                if isinstance(state, dict):
                    states[str(key)] = state
        keys = record.get("notified")
        if isinstance(keys, list):
            notified.update(str(k) for k in keys)
    return states, notified


class QueueManager:
    def __init__(self, store, router, transports, params, clock, maillogs, notices=None):
        """
        C{transports}: a callable name -> IDeliveryTransport or None.
        C{maillogs}: a callable program -> MailLogger.
        C{notices}: an object with send(kind, message, items) -> Deferred, or None.
        """
        self.store = store
        self.router = router
        self.transports = transports
        self.params = params
        self.clock = clock
        self.maillog = maillogs("qmgr")
        self.maillogs = maillogs
        self.notices = notices
        self.activeLimit = params["qmgr_message_active_limit"]
        self.minBackoff = params["minimal_backoff_time"]
        self.maxBackoff = params["maximal_backoff_time"]
        self.runDelay = params["queue_run_delay"]
        self.lifetime = params["maximal_queue_lifetime"]
        self.bounceLifetime = params["bounce_queue_lifetime"]
        self.deferTransports = frozenset(params["defer_transports"])
        self.softBounce = params["soft_bounce"]
        self.delayWarning = params["delay_warning_time"]
        self.active = {}  # queue id -> ActiveMessage (None while its file is being read)
        self._pendingActions = {}  # queue id -> action asked for while its file was being read
        self.backlog = collections.deque()  # (queue id, from queue) waiting for an active slot
        self.destinations = {}
        self._scanCall = None
        self._running = False
        self.idle = Deferred()  # fires (and is replaced) whenever no message is active: tests

    # -- life cycle ---------------------------------------------------------------

    def start(self):
        """Take up what a crash left in active/, then incoming/, then deferred mail that is due."""
        self._running = True
        self.store.onCommit = self.enqueue
        self.store.cleanTemporary(olderThan=3600)
        for queueId in self.store.listQueue("active"):
            self._move(queueId, "active", "incoming")
        for queueId in self.store.listQueue("incoming"):
            self.enqueue(queueId)
        self._scanCall = self.clock.callLater(0, self.scanDeferred)

    def stop(self):
        self._running = False
        self.store.onCommit = None
        if self._scanCall is not None and self._scanCall.active():
            self._scanCall.cancel()
        self._scanCall = None

    def scanDeferred(self, flush=False):
        """Activate deferred mail whose time has come (all of it with C{flush})."""
        self._scanCall = None
        if not self._running:
            return
        now = self.clock.seconds()
        due = []
        with os.scandir(self.store.queuePath("deferred")) as entries:
            for entry in entries:
                try:
                    if flush or entry.stat(follow_symlinks=False).st_mtime <= now:
                        due.append(entry.name)
                except OSError:
                    continue
        for queueId in sorted(due):
            if queueId not in self.active and (queueId, "deferred") not in self.backlog:
                self.enqueue(queueId, "deferred")
        self._scanCall = self.clock.callLater(self.runDelay, self.scanDeferred)

    # -- activation ---------------------------------------------------------------

    def enqueue(self, queueId, fromQueue="incoming"):
        """A message is ready (new, or due): activate it now or when a slot frees."""
        if not self._running:
            return
        if len(self.active) >= self.activeLimit:
            self.backlog.append((queueId, fromQueue))
            return
        d = Deferred.fromCoroutine(self._activate(queueId, fromQueue))
        d.addErrback(lambda f: log.failure("qmgr: {queue_id}: activation failed", f, queue_id=queueId))

    def _move(self, queueId, fromQueue, toQueue, mtime=None):
        src = self.store.queuePath(fromQueue, queueId)
        dst = self.store.queuePath(toQueue, queueId)
        os.rename(src, dst)
        if mtime is not None:
            os.utime(dst, (mtime, mtime))
        return dst

    def _load(self, queueId, fromQueue):
        """In a worker thread: move the file into active/ and parse it."""
        path = self._move(queueId, fromQueue, "active")
        try:
            return path, readQueueFile(path)
        except CorruptQueueFile:
            self._move(queueId, "active", "corrupt")
            raise

    async def _activate(self, queueId, fromQueue):
        # A placeholder keeps the slot (and a second activation) taken while the file is read.
        self.active[queueId] = None
        try:
            path, queueFile = await self.store.inPool(self._load, queueId, fromQueue)
        except FileNotFoundError:
            return self._abandon(queueId)  # deleted or moved meanwhile (a tool, another scan)
        except CorruptQueueFile as e:
            self.maillog.emit(f"warning: corrupt queue file moved to corrupt/: {sanitize(str(e))}", queueId)
            return self._abandon(queueId)
        except OSError as e:
            log.error("qmgr: {queue_id}: cannot activate: {error}", queue_id=queueId, error=e.strerror)
            return self._abandon(queueId)
        states, notified = mergeStates(queueFile.states)
        message = ActiveMessage(queueId, path, queueFile, self.clock.seconds(), states, notified)
        self.active[queueId] = message
        message.pendingAction = self._pendingActions.pop(queueId, None)
        envelope = message.envelope
        self.maillog.fields(
            queueId,
            [("from", f"<{envelope.sender}>"), ("size", envelope.size), ("nrcpt", len(envelope.recipients))],
            "queue active",
            sender=envelope.sender,
        )
        groups = collections.defaultdict(list)
        for index, recipient in enumerate(envelope.recipients):
            if states.get(str(index), {}).get("status") in DONE:
                continue
            for route in await self.router.route(recipient.address):
                key = recipientKey(index, recipient.address, route.address)
                if states.get(key, {}).get("status") in DONE:
                    continue
                target = DeliveryRecipient(index, route.address, recipient.address, recipient.orcpt, recipient.notify)
                if isinstance(route, RouteError):
                    self._result(message, key, target, RecipientResult(index, route.status, route.dsn, route.text))
                elif route.transport in self.deferTransports:
                    self._result(message, key, target, RecipientResult(index, "deferred", "4.3.2", "deferred transport"))
                elif self.transports(route.transport) is None:
                    text = f"mail transport unavailable: {route.transport}"
                    self._result(message, key, target, RecipientResult(index, "deferred", "4.3.0", text))
                else:
                    groups[(route.transport, route.nexthop)].append((key, target))
        self._recordImmediate(message)
        message.jobs += 1  # deliveries may finish while they are being scheduled
        for (transport, nexthop), targets in groups.items():
            limit = self.params[f"{transport}_destination_recipient_limit"]
            for start in range(0, len(targets), limit):
                self._schedule(message, transport, nexthop, targets[start : start + limit])
        message.jobs -= 1
        if message.jobs == 0:
            await self._finish(message)

    def _result(self, message, key, target, result):
        if self.softBounce and result.status == "bounced":
            result = attrs.evolve(result, status="deferred", dsn="4" + result.dsn[1:])
        message.results[key] = (target, result)

    def _abandon(self, queueId):
        del self.active[queueId]
        self._pendingActions.pop(queueId, None)
        self._slotFree()

    def _recordImmediate(self, message):
        """Record (and log) the results decided while routing, before any delivery."""
        if message.results:
            self._record(message, dict(message.results))

    # -- deliveries -----------------------------------------------------------------

    def _schedule(self, message, transport, nexthop, targets):
        key = (transport, nexthop)
        destination = self.destinations.get(key)
        if destination is None:
            limit = self.params[f"{transport}_destination_concurrency_limit"]
            destination = self.destinations[key] = Destination(transport, nexthop, limit)
        message.jobs += 1
        destination.pending.append((message, targets))
        self._dispatch(destination)

    def _dispatch(self, destination):
        while destination.active < destination.limit and destination.pending:
            message, targets = destination.pending.popleft()
            destination.active += 1
            queueFile = message.queueFile
            request = DeliveryRequest(
                queue_id=message.queueId,
                transport=destination.transport,
                nexthop=destination.nexthop,
                envelope=message.envelope,
                recipients=tuple(target for _, target in targets),
                path=message.path,
                content_offset=queueFile.contentOffset,
                content_length=queueFile.contentLength,
            )
            started = self.clock.seconds()
            transport = self.transports(destination.transport)
            d = maybeDeferred(transport.deliver, request)
            d.addBoth(self._delivered, message, destination, targets, started)
            d.addErrback(lambda f: log.failure("qmgr: after a delivery", f))

    def _delivered(self, results, message, destination, targets, started):
        destination.active -= 1
        byIndex = collections.defaultdict(list)
        if isinstance(results, list):
            for result in results:
                if isinstance(result, RecipientResult):
                    byIndex[result.index].append(result)
        else:
            log.failure("qmgr: transport {transport} failed", results, transport=destination.transport)
        batch = {}
        for key, target in targets:
            found = byIndex.get(target.index)
            result = found.pop(0) if found else RecipientResult(
                target.index, "deferred", "4.3.0", "delivery agent failed: no result"
            )
            if self.softBounce and result.status == "bounced":
                result = attrs.evolve(result, status="deferred", dsn="4" + result.dsn[1:])
            batch[key] = (target, result)
        message.results.update(batch)
        self._record(message, batch, started)
        message.jobs -= 1
        self._dispatch(destination)
        if message.jobs == 0:
            d = Deferred.fromCoroutine(self._finish(message))
            d.addErrback(lambda f: log.failure("qmgr: {queue_id}: finishing failed", f, queue_id=message.queueId))

    def _record(self, message, batch, started=None):
        """Append the results to the queue file, then log them (one line each)."""
        now = self.clock.seconds()
        state = {
            "time": now,
            "recipients": {
                key: {"status": r.status, "dsn": r.dsn, "text": r.text[:2000], "relay": r.relay}
                for key, (_, r) in batch.items()
            },
        }
        for key, (_, r) in batch.items():
            message.states[key] = state["recipients"][key]
        d = self._append(message, state)

        def logged(_):
            envelope = message.envelope
            for key, (target, r) in batch.items():
                fields = [("to", f"<{target.address}>")]
                if target.address != target.original:
                    fields.append(("orig_to", f"<{target.original}>"))
                total = now - envelope.arrival_time
                before = message.activeSince - envelope.arrival_time
                inQueue = (started or now) - message.activeSince
                fields.append(("relay", r.relay))
                if r.conn_use > 1:
                    fields.append(("conn_use", r.conn_use))
                fields += [
                    ("delay", _seconds(total)),
                    ("delays", "/".join(_seconds(x) for x in (before, inQueue, 0, max(0.0, now - (started or now))))),
                    ("dsn", r.dsn),
                    ("status", r.status),
                ]
                program = r.relay if r.relay in ("virtual", "discard", "error") else "qmgr"
                self.maillogs(program).fields(
                    message.queueId, fields, r.text, recipient=target.address, status=r.status, dsn=r.dsn
                )

        def failed(failure):
            log.error("qmgr: {queue_id}: cannot record delivery results: {error}",
                      queue_id=message.queueId, error=failure.getErrorMessage())

        d.addCallbacks(logged, failed)

    def _append(self, message, state):
        """Append a state record (the first append also cuts off a torn tail)."""
        truncate = None
        if message.queueFile.tornTail and not message.appends:
            truncate = message.queueFile.validLength
        d = self.store.appendState(message.path, state, truncateTo=truncate)
        message.appends.append(d)
        return d

    # -- the end of an attempt --------------------------------------------------------

    async def _finish(self, message):
        for d in message.appends:
            await d
        now = self.clock.seconds()
        envelope = message.envelope
        lifetime = self.bounceLifetime if not envelope.sender else self.lifetime
        deferred = [key for key, s in message.states.items() if s.get("status") == "deferred"]
        if deferred and now - envelope.arrival_time >= lifetime:
            expired = {}
            for key, (target, result) in message.results.items():
                if result.status == "deferred":
                    expired[key] = (target, attrs.evolve(result, status="bounced", text=f"message expired: {result.text}"))
            if expired:
                message.results.update(expired)
                self._record(message, expired)
                for d in message.appends:
                    await d
            deferred = [key for key, s in message.states.items() if s.get("status") == "deferred"]
        await self._notify(message)
        try:
            if message.pendingAction is not None:
                self._operate(message.pendingAction, message.queueId, "active")
            elif deferred:
                age = now - envelope.arrival_time
                delay = min(max(age, self.minBackoff), self.maxBackoff)
                await self.store.inPool(self._move, message.queueId, "active", "deferred", now + delay)
            else:
                await self.store.inPool(os.unlink, message.path)
                self.maillog.emit("removed", message.queueId)
        except OSError as e:
            log.error("qmgr: {queue_id}: {error}", queue_id=message.queueId, error=e.strerror)
        del self.active[message.queueId]
        self._slotFree()

    async def _notify(self, message):
        """Send the bounces and success notices this attempt calls for, once."""
        if self.notices is None:
            return
        pending = {k: v for k, v in message.results.items() if k not in message.notified}
        for kind, status in (("failure", "bounced"), ("success", "sent")):
            items = [(key, target, result) for key, (target, result) in pending.items() if result.status == status]
            if not items:
                continue
            sent = await self.notices.send(kind, message, items)
            if sent:
                keys = [key for key, _, _ in items]
                message.notified.update(keys)
                await self._append(message, {"time": self.clock.seconds(), "notified": keys})
        # One delay warning per message, once it has waited delay_warning_time.
        age = self.clock.seconds() - message.envelope.arrival_time
        if self.delayWarning > 0 and age >= self.delayWarning and "delay" not in message.notified:
            items = [(key, target, result) for key, (target, result) in message.results.items()
                     if result.status == "deferred"]
            if items and await self.notices.send("delay", message, items):
                message.notified.add("delay")
                await self._append(message, {"time": self.clock.seconds(), "notified": ["delay"]})

    # -- administration (mta-queue) -----------------------------------------------

    def flush(self):
        """Attempt all deferred mail now (postqueue -f); the number of messages activated."""
        due = self.store.listQueue("deferred")
        self.scanDeferred(flush=True)
        return len(due)

    def operate(self, action, ids):
        """
        postsuper's -d/-h/-H/-r: C{ids} is a list of queue ids or ["ALL"].
        A message being delivered gets the operation when its deliveries end.
        Returns (done ids, missing ids).
        """
        queues = tools.SOURCES[action]
        if ids == ["ALL"]:
            ids = tools.allIds(self.store, queues) + sorted(q for q in self.active if "active" in queues)
        done, missing = [], []
        for queueId in dict.fromkeys(ids):
            if queueId in self.active and "active" in queues:
                if self.active[queueId] is None:  # still being read
                    self._pendingActions[queueId] = action
                else:
                    self.active[queueId].pendingAction = action
                done.append(queueId)
                continue
            queue = tools.findMessage(self.store, queueId, [q for q in queues if q != "active"])
            if queue is None:
                missing.append(queueId)
                continue
            try:
                self._operate(action, queueId, queue)
            except OSError as e:
                log.error("qmgr: {queue_id}: {action} failed: {error}", queue_id=queueId, action=action, error=e.strerror)
                missing.append(queueId)
                continue
            done.append(queueId)
        return done, missing

    def _operate(self, action, queueId, queue):
        text = tools.apply(self.store, action, queueId, queue, self.clock.seconds())
        if text is not None:
            self.maillogs("postsuper").emit(text, queueId)
        if action == "requeue":
            self.enqueue(queueId)
        elif action == "release":
            self.enqueue(queueId, "deferred")

    def _slotFree(self):
        while self.backlog and len(self.active) < self.activeLimit:
            queueId, fromQueue = self.backlog.popleft()
            self.enqueue(queueId, fromQueue)
        if not self.active:
            idle, self.idle = self.idle, Deferred()
            idle.callback(None)

    # -- reload -----------------------------------------------------------------------

    def reconfigure(self, params, router, transports, notices=None):
        """
        A reload (mta.service): new work uses C{router}, C{transports},
        C{notices} and the settings of C{params}.  A delivery in progress
        finishes with the transport object it holds; the limits of existing
        destinations change at once (a raised concurrency limit starts
        waiting deliveries now, a lowered one lets those in progress end).
        """
        self.params = params
        self.router = router
        self.transports = transports
        self.notices = notices
        self.maillog = self.maillogs("qmgr")
        self.activeLimit = params["qmgr_message_active_limit"]
        self.minBackoff = params["minimal_backoff_time"]
        self.maxBackoff = params["maximal_backoff_time"]
        self.runDelay = params["queue_run_delay"]
        self.lifetime = params["maximal_queue_lifetime"]
        self.bounceLifetime = params["bounce_queue_lifetime"]
        self.deferTransports = frozenset(params["defer_transports"])
        self.softBounce = params["soft_bounce"]
        self.delayWarning = params["delay_warning_time"]
        # A shorter queue_run_delay applies to the next scan, not only to the one after it.
        if self._scanCall is not None and self._scanCall.active():
            if self._scanCall.getTime() - self.clock.seconds() > self.runDelay:
                self._scanCall.reset(self.runDelay)
        for destination in list(self.destinations.values()):
            destination.limit = params[f"{destination.transport}_destination_concurrency_limit"]
            self._dispatch(destination)
        while self._running and self.backlog and len(self.active) < self.activeLimit:
            queueId, fromQueue = self.backlog.popleft()
            self.enqueue(queueId, fromQueue)
