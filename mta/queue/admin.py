"""mta.queue.admin - postsuper(1) for the running daemon: the queue manager's operate().

While the daemon runs, the queue manager is the only writer of queue
state, so the tools (mta-queue delete, hold, release, requeue, through the
control socket, mta.control) ask it: QueueManager.operate(action, ids),
which is Administration.operate.

    - A message being read or delivered gets the action when its attempt
      ends (the manager applies it then: delete, hold, requeue, release).
    - For every other message the file work (finding it with lstat,
      renaming it, removing it, setting a released message's due time)
      runs in the store's thread pool, OPERATE_BATCH ids a job
      (mta.queue.tools.applyAll), every system call through the store's
      FileSystem, so the reactor never waits on the disk and
      fault-injection tests reach it.  While a job works on a file, the
      manager does not activate that message: an activation asked for
      meanwhile (a deferred scan, a retry timer) waits for the job, and is
      taken up afterwards only if the job did not touch the file.
    - Each action done is logged under postsuper ("removed", "placed on
      hold", "released from hold", "requeued"); a retry timer of the
      message is cancelled; requeued mail is taken up from incoming/,
      released mail from deferred/ (due at once).

The Deferred fires with (done ids, missing ids), in the order asked; an id
whose file could not be changed (EIO, EACCES) is logged and missing.

SECURITY
    Queue ids come from the tools (checked there and by
    mta.queue.queueid before they become file names).

CONFIGURATION
    None.
"""

import collections

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mta.queue import tools

__all__ = ["Administration", "OPERATE_BATCH"]

log = Logger()

OPERATE_BATCH = 200  # queue ids per thread-pool job of operate()


class Administration:
    """The operate() of one QueueManager (C{manager}); see the module docstring."""

    def __init__(self, manager):
        self.manager = manager
        self._operating = collections.Counter()  # queue id -> jobs working on its file in the pool
        self._asked = {}  # queue id -> fromQueue of an activation asked for during such a job

    def holds(self, queueId, fromQueue):
        """
        Is a job working on C{queueId}'s file?  Then the activation asked
        for (from C{fromQueue}) is remembered for after it; True.
        """
        if not self._operating[queueId]:
            return False
        self._asked[queueId] = fromQueue
        return True

    def operate(self, action, ids):
        """C{action} (delete, hold, release, requeue) on C{ids} or ["ALL"]; a Deferred of (done, missing)."""
        return Deferred.fromCoroutine(self._operateAll(action, ids))

    async def _operateAll(self, action, ids):
        manager, store = self.manager, self.manager.store
        queues = tools.SOURCES[action]
        if ids == ["ALL"]:
            found = await store.inPool(tools.allIds, store, queues)
            ids = found + sorted(q for q in manager.active if "active" in queues)
        ids = list(dict.fromkeys(ids))
        done = set()
        for start in range(0, len(ids), OPERATE_BATCH):
            chunk = []
            for queueId in ids[start : start + OPERATE_BATCH]:
                if self._later(action, queueId, queues):
                    done.add(queueId)
                else:
                    chunk.append(queueId)
            if not chunk:
                continue
            self._operating.update(chunk)  # no activation while the pool works on these files
            try:
                outcomes = await store.inPool(tools.applyAll, store, action, chunk, queues, manager.clock.seconds())
            except BaseException:
                self._operating.subtract(chunk)
                self._after(chunk)
                raise
            self._operating.subtract(chunk)
            for queueId, present, text, error in outcomes:
                if error is not None:
                    log.error("qmgr: {queue_id}: {action} failed: {error}", queue_id=queueId, action=action,
                              error=error.strerror or str(error))
                elif present:
                    self._asked.pop(queueId, None)  # the action decides what comes next
                    self._done(action, queueId, text)
                    done.add(queueId)
            self._after(chunk)
        return [i for i in ids if i in done], [i for i in ids if i not in done]

    def _after(self, chunk):
        """Take up the activations asked for during the job on C{chunk} (files it did not touch)."""
        for queueId in chunk:
            if self._operating[queueId] <= 0:
                self._operating.pop(queueId, None)
                fromQueue = self._asked.pop(queueId, None)
                if fromQueue is not None:
                    self.manager.enqueue(queueId, fromQueue)

    def _later(self, action, queueId, queues):
        """A message being read or delivered gets C{action} when its attempt ends; True if it is one."""
        manager = self.manager
        if queueId not in manager.active or "active" not in queues:
            return False
        if manager.active[queueId] is None:  # still being read
            manager._pendingActions[queueId] = action
        else:
            manager.active[queueId].pendingAction = action
        return True

    def _done(self, action, queueId, text):
        """C{action} was done on C{queueId}'s file (a file in active/ not being delivered waited for a retry)."""
        manager = self.manager
        if text is not None:
            manager.maillogs("postsuper").emit(text, queueId)
        manager._cancelRetry(queueId)
        if action == "requeue":
            manager.enqueue(queueId)
        elif action == "release":
            manager.enqueue(queueId, "deferred")
