"""mta.queue.tools - postsuper(1)-style operations on queue files.

find, delete, hold, release and requeue act on the files of a queue
directory.  The daemon's queue manager calls them for messages that are not
being delivered (it defers the operation on active ones until their
deliveries end), in the store's thread pool (applyAll(): a batch of ids a
job); mta-queue calls them itself when the daemon is not running, when
nothing else writes the queue.  Every system call that changes or looks at
a queue directory goes through the store's FileSystem (store.fs: lstat,
rename, utime, unlink, scandir), the seam through which tests inject
faults.  listMessages() reads every queue file, as showq(8) does for
mailq(1); it never writes.

SECURITY
    Queue ids from the command line are checked (mta.queue.queueid) before
    they become file names.  Queue files are parsed as untrusted input; a
    damaged one is listed as such, never fatal.

CONFIGURATION
    queue_directory.
"""


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
    """Blocking: the queue that holds C{queueId} (any kind of entry: lstat), or None."""
    if not isValidQueueId(queueId):
        return None
    for queue in queues:
        try:
            store.fs.lstat(store.queuePath(queue, queueId))
        except OSError:
            continue  # as os.path.lexists: what cannot be looked at is not there
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
    fs = store.fs
    path = store.queuePath(queue, queueId)
    if action == "delete":
        fs.unlink(path)
        return "removed"
    if action == "hold":
        fs.rename(path, store.queuePath("hold", queueId))
        return "placed on hold"
    if action == "release":
        target = store.queuePath("deferred", queueId)
        fs.rename(path, target)
        fs.utime(target, (now, now))  # due at once
        return "released from hold"
    if action == "requeue":
        if queue == "incoming":
            return None
        fs.rename(path, store.queuePath("incoming", queueId))
        return "requeued"
    raise ValueError(f"unknown action {action!r}")


def applyAll(store, action, queueIds, queues, now):
    """
    Blocking (the queue manager runs it in the store's pool): find each of
    C{queueIds} in C{queues} and do C{action} on it.  Returns a list of
    (queue id, found, log text or None, OSError or None); a file that
    vanished between finding and acting counts as not found.
    """
    outcomes = []
    for queueId in queueIds:
        queue = findMessage(store, queueId, queues)
        if queue is None:
            outcomes.append((queueId, False, None, None))
            continue
        try:
            text = apply(store, action, queueId, queue, now)
        except FileNotFoundError:
            outcomes.append((queueId, False, None, None))
        except OSError as e:
            outcomes.append((queueId, False, None, e))
        else:
            outcomes.append((queueId, True, text, None))
    return outcomes


def describe(store, queue, queueId, now):
    """A dict describing one message, for mta-queue list (JSON) and show."""
    path = store.queuePath(queue, queueId)
    entry = {"id": queueId, "queue": queue}
    try:
        queueFile = readQueueFile(path)
        mtime = store.fs.lstat(path).st_mtime  # through the seam; the file was opened O_NOFOLLOW
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
