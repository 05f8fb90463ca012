"""mta.queue.tools - postsuper(1)-style operations on queue files.

find, delete, hold, release and requeue act on the files of a queue
directory.  The daemon's queue manager calls them for messages that are not
being delivered (it defers the operation on active ones until their
deliveries end); mta-queue calls them itself when the daemon is not
running, when nothing else writes the queue.  listMessages() reads every
queue file, as showq(8) does for mailq(1); it never writes.

SECURITY
    Queue ids from the command line are checked (mta.queue.queueid) before
    they become file names.  Queue files are parsed as untrusted input; a
    damaged one is listed as such, never fatal.

CONFIGURATION
    queue_directory.
"""

import os

from mta.queue.fileformat import CorruptQueueFile, readQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.state import mergeStates

# Where each operation looks, as postsuper's defaults.
SOURCES = {
    "delete": ("hold", "incoming", "active", "deferred"),
    "hold": ("incoming", "active", "deferred"),
    "release": ("hold",),
    "requeue": ("hold", "incoming", "active", "deferred"),
}
LISTED = ("incoming", "active", "deferred", "hold")


def findMessage(store, queueId, queues=LISTED):
    """The queue that holds C{queueId}, or None."""
    if not isValidQueueId(queueId):
        return None
    for queue in queues:
        if os.path.lexists(store.queuePath(queue, queueId)):
            return queue
    return None


def allIds(store, queues):
    return sorted({queueId for queue in queues for queueId in store.listQueue(queue)})


def apply(store, action, queueId, queue, now):
    """
    Do C{action} on C{queueId}, found in C{queue}; return the log text
    ("removed", "placed on hold", ...) or None if nothing was to be done.
    Raises OSError.
    """
    path = store.queuePath(queue, queueId)
    if action == "delete":
        os.unlink(path)
        return "removed"
    if action == "hold":
        os.rename(path, store.queuePath("hold", queueId))
        return "placed on hold"
    if action == "release":
        target = store.queuePath("deferred", queueId)
        os.rename(path, target)
        os.utime(target, (now, now))  # due at once
        return "released from hold"
    if action == "requeue":
        if queue == "incoming":
            return None
        os.rename(path, store.queuePath("incoming", queueId))
        return "requeued"
    raise ValueError(f"unknown action {action!r}")


def describe(store, queue, queueId, now):
    """A dict describing one message, for mta-queue list (JSON) and show."""
    path = store.queuePath(queue, queueId)
    entry = {"id": queueId, "queue": queue}
    try:
        queueFile = readQueueFile(path)
        mtime = os.stat(path).st_mtime
    except (CorruptQueueFile, OSError) as e:
        entry["error"] = str(e)
        return entry
    envelope = queueFile.envelope
    states, _ = mergeStates(queueFile.states)
    recipients = []
    for index, recipient in enumerate(envelope.recipients):
        keys = [k for k in states if k == str(index) or k.startswith(f"{index}>")]
        latest = [states[k] for k in keys]
        status = "pending"
        reason = None
        if latest:
            statuses = {s.get("status") for s in latest}
            status = "deferred" if "deferred" in statuses else ("bounced" if "bounced" in statuses else "sent")
            texts = [s.get("text") for s in latest if s.get("status") == status]
            reason = texts[0] if texts else None
        recipients.append({"address": recipient.address, "status": status, "reason": reason})
    entry.update(
        arrival_time=envelope.arrival_time,
        size=envelope.size,
        sender=envelope.sender,
        recipients=recipients,
        next_attempt=mtime if queue == "deferred" else (now if queue in ("incoming", "active") else None),
    )
    return entry


def listMessages(store, now, queues=LISTED):
    return [describe(store, queue, queueId, now) for queue in queues for queueId in store.listQueue(queue)]
