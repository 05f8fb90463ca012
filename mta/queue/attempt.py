"""mta.queue.attempt - one message in the active queue: its results, its state records, the notices it owes.

ActiveMessage is what the queue manager (mta.queue.manager) holds for a
message between its activation and the end of its attempt: the parsed queue
file, the recipient states merged from earlier attempts (mta.queue.state),
the results of this run, and the state appends still in flight.  It is
also what a notice is built from (mta.queue.notices reads queueId, path,
envelope and queueFile).

Recording is the one rule of the queue manager: a result is appended to
the queue file and fdatasync'd (store.appendState, in the thread pool)
before anything is done about it.  record() appends a batch of results as
one state record and then logs them, one mail-log line each under its
program; append() never fails (a failure sets recordFailed: the results of
this run are not durable, and the manager defers the message without
notices); settle() waits for every append in flight.  owed() lists the
recipients whose bounce or success notice has not been recorded as
"notified" yet, from this run or from an earlier one; sendNotices() sends
them (mta.queue.notices) and records each one queued, and sends the one
delay warning (delay_warning_time) when it is due.  withhold() keeps the
last results of an attempt unrecorded when the file is about to be
removed (mta.queue.manager explains when): recordWithheld() records them
if it stays, logWithheld() only logs them once it is gone.

SECURITY
    Results come from transports and from queue files (untrusted); they
    are stored through mta.queue.state (bounded texts) and logged through
    mta.maillog (sanitised).

CONFIGURATION
    None.
"""

import attrs
from twisted.internet.defer import fail
from twisted.logger import Logger

from mta.maillog import deliveryFields
from mta.queue.files import QueueWriteError
from mta.queue.state import resultFromState, stateOf, wantsSuccessNotice

__all__ = ["ActiveMessage"]

log = Logger()


@attrs.define
class ActiveMessage:
    """
    A message being attempted.  C{states}: key -> recorded state (merged
    state records); C{notified}: keys whose notice was recorded as sent;
    C{results}: key -> (DeliveryRecipient, RecipientResult) of this run;
    C{jobs}: deliveries not finished; C{pendingAction}: a tool's action
    (delete, hold, requeue, release) asked for while delivering;
    C{appends}: Deferreds of state appends in flight; C{recordFailed}: one
    of them failed; C{programs}: key -> the program that logs a result
    decided while routing.
    """

    queueId: str
    path: str
    queueFile: object  # fileformat.QueueFile
    activeSince: float
    states: dict  # key -> {"status", "dsn", "text", "relay", ...}, merged from state records
    notified: set  # keys whose result was already reported to the sender
    results: dict = attrs.Factory(dict)  # key -> (DeliveryRecipient, RecipientResult), this run
    jobs: int = 0  # deliveries not finished
    pendingAction: str | None = None  # delete, hold or requeue, asked for while delivering
    appends: list = attrs.Factory(list)  # Deferreds of state appends in flight (they never fail)
    recordFailed: bool = False  # a state append failed: results of this run are not durable
    programs: dict = attrs.Factory(dict)  # key -> the program that logs a result decided while routing
    withheld: tuple | None = None  # (now, batch, started): the last results, not recorded (see withhold)
    probeStatus: dict = attrs.Factory(dict)  # key -> the status a probe's result is logged with (mta.verify)

    @property
    def envelope(self):
        return self.queueFile.envelope

    def record(self, store, now, maillogs, batch, started=None):
        """
        Append the results C{batch} (key -> (target, result, program)) as one
        state record, then log them, one line each under its program (a
        callable program -> MailLogger).  A failed append is logged and
        marks the message (the lines are logged anyway: the deliveries
        happened).
        """
        recipients = {}
        for key, (_, r, _) in batch.items():
            recipients[key] = self.states[key] = stateOf(r)
        d = self.append(store, {"time": now, "recipients": recipients})
        d.addCallback(lambda _: self._log(maillogs, now, batch, started))
        d.addErrback(lambda f: log.failure("qmgr: {queue_id}: logging results", f, queue_id=self.queueId))
        return d

    def _log(self, maillogs, now, batch, started):
        arrival = self.envelope.arrival_time
        for key, (target, r, program) in batch.items():
            status = self.probeStatus.get(key, r.status)  # a probe's: deliverable, undeliverable
            fields = deliveryFields(target.address, target.original, r.relay, r.conn_use, r.dsn, status,
                                    arrival, self.activeSince, started, now)
            maillogs(program).fields(self.queueId, fields, r.text, recipient=target.address, status=status,
                                     dsn=r.dsn)

    def withhold(self, now, batch, started=None):
        """
        Keep the last results of the attempt (all final, nothing to notify)
        unrecorded: if the file is then removed, a state record synced just
        before the unlink is saved.  The manager calls recordWithheld if the
        file stays after all, or logWithheld once it is gone.  A crash in
        between repeats these deliveries (a duplicate, never a loss).
        """
        for key, (_, r, _) in batch.items():
            self.states[key] = stateOf(r)
        self.withheld = (now, batch, started)

    def recordWithheld(self, store, maillogs):
        """Record (and then log) the withheld results: the file stays."""
        if self.withheld is not None:
            now, batch, started = self.withheld
            self.withheld = None
            self.record(store, now, maillogs, batch, started)

    def logWithheld(self, maillogs):
        """Log the withheld results: the file is gone, so they will not be repeated."""
        if self.withheld is not None:
            now, batch, started = self.withheld
            self.withheld = None
            self._log(maillogs, now, batch, started)

    def append(self, store, state):
        """Append a state record; the Deferred never fails (a failure sets recordFailed)."""
        try:
            d = store.appendState(self.path, state)
        except Exception:
            d = fail()

        def failed(failure):
            self.recordFailed = True
            log.error("qmgr: {queue_id}: cannot record delivery results: {error}",
                      queue_id=self.queueId, error=failure.getErrorMessage())

        d.addErrback(failed)
        self.appends.append(d)
        return d

    async def settle(self):
        """Wait for the appends in flight; True if every one of them is durable."""
        while self.appends:
            appends, self.appends = self.appends, []
            for d in appends:
                await d
        return not self.recordFailed

    def owed(self, status):
        """(key, target, result) of the recipients recorded with C{status} whose notice is still owed."""
        items = []
        for key, state in self.states.items():
            if state.get("status") != status or key in self.notified:
                continue
            pair = self.results.get(key) or resultFromState(self.envelope, key, state)
            if pair is None:
                continue
            target, result = pair
            if status == "sent" and not wantsSuccessNotice(target, result):
                continue
            items.append((key, target, result))
        return items

    async def sendNotices(self, notices, store, clock, delayWarning):
        """
        Send the bounces and success notices still owed, and a delay warning
        once the message has waited C{delayWarning} seconds (0: never);
        False if a bounce or success notice could not be queued (the
        message keeps owing it).  C{notices}: send(kind, message, items).
        """
        ok = True
        for kind, status in (("failure", "bounced"), ("success", "sent")):
            items = self.owed(status)
            if items and not await self._send(notices, store, clock, kind, items, [key for key, _, _ in items]):
                ok = False
        # One delay warning per message, once it has waited delay_warning_time.
        age = clock.seconds() - self.envelope.arrival_time
        if delayWarning > 0 and age >= delayWarning and "delay" not in self.notified:
            items = [(key, target, result) for key, (target, result) in self.results.items()
                     if result.status == "deferred"]
            if items:
                await self._send(notices, store, clock, "delay", items, ["delay"])  # a lost warning: no retry
        return ok

    async def _send(self, notices, store, clock, kind, items, keys):
        """One notice; True if it was queued (and recorded as notified) or there was nothing to send."""
        try:
            sent = await notices.send(kind, self, items)
        except QueueWriteError:
            return False  # logged by the notices
        except Exception:
            log.failure("qmgr: {queue_id}: {kind} notice failed", queue_id=self.queueId, kind=kind)
            return False
        if sent:
            self.notified.update(keys)
            self.append(store, {"time": clock.seconds(), "notified": keys})
            await self.settle()  # a failure here only risks a duplicate notice, never a lost one
        return True
