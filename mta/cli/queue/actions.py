"""
mta.cli.queue.actions - mta-queue delete, hold, release and requeue (postsuper -d, -h, -H, -r).

queueAction() sends the ids to the running daemon's queue manager (the only
writer of the queue) in batches of BATCH; when no daemon runs, actOnFiles()
acts on the queue files itself (mta.queue.tools) under the control socket's
lock, so that a daemon cannot start meanwhile, and appends the daemon's
mail-log lines (MailLog).  Both print postsuper's lines and summary.
"""

import os
import stat
import time

from mta import control
from mta.cli.queue.client import NotRunning, Unreachable, ask, connectDaemon, hangUp
from mta.cli.queue.common import PROG, UsageError, _oserror, _plural, _quote
from mta.maillog import sanitize, syslogFormatter
from mta.queue import tools
from mta.queue.queueid import isValidQueueId
from mta.queue.store import QueueStore

BATCH = 1000  # queue ids per QueueAction: 16 KiB of the 64 KiB an AMP value may hold

ACTIONS = {
    # command: (log text, summary)
    "delete": ("removed", "Deleted"),
    "hold": ("placed on hold", "Placed on hold"),
    "release": ("released from hold", "Released from hold"),
    "requeue": ("requeued", "Requeued"),
}


def queueIds(arguments, stdin):
    """
    The ids to act on, from the command-line C{arguments}: a list of valid
    queue ids without duplicates, or ["ALL"].  "-" reads ids from C{stdin}.
    UsageError names the bad ones; nothing has been done then.
    """
    if "ALL" in arguments:
        if arguments != ["ALL"]:
            raise UsageError("ALL cannot be combined with queue ids")
        return ["ALL"]
    ids = []
    for argument in arguments:
        if argument == "-":
            ids.extend(stdin.read().split())
        else:
            ids.append(argument)
    bad = [i for i in ids if not isValidQueueId(i)]
    if bad:
        shown = ", ".join(_quote(i) for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UsageError(f"not a queue id: {shown}")
    return list(dict.fromkeys(ids))


def _report(action, done, missing, out, err, texts=None):
    """Print postsuper's lines for C{done} ids, the summary, and the missing ones; the exit status."""
    text, summary = ACTIONS[action]
    for queueId in done:
        out.write(f"{PROG}: {queueId}: {texts.get(queueId, text) if texts else text}\n")
    out.write(f"{PROG}: {summary}: {_plural(len(done), 'message')}\n")
    if missing:
        where = ", ".join(tools.SOURCES[action])
        shown = ", ".join(sanitize(i) for i in missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        err.write(f"{PROG}: not found in {where}: {shown}\n")
        return 1
    return 0


class MailLog:
    """Appends mail-log lines, in the daemon's syslog form, to $maillog_file (if set)."""

    def __init__(self, path, hostname, syslogName, err):
        self.path = path
        self.format = syslogFormatter(hostname, syslogName, os.getpid())
        self.err = err
        self.failed = False

    def emit(self, text, queueId, program="postsuper"):
        if not self.path or self.failed:
            return
        line = self.format({"mail_line": f"{queueId}: {text}", "mail_program": program, "log_time": time.time()})
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            self.failed = True
            self.err.write(f"{PROG}: warning: cannot write {sanitize(self.path)}: {_oserror(e)}\n")


class _ControlLock:
    """
    The control socket's lock ($queue_directory/private/control.lock), which
    the daemon holds while it runs: taken while mta-queue acts on the files.
    """

    def __init__(self, queueDirectory):
        from twisted.python.lockfile import FilesystemLock

        self.socket = control.socketPath(queueDirectory)
        self.lock = FilesystemLock(self.socket + ".lock")

    def __enter__(self):
        if not os.path.isdir(os.path.dirname(self.socket)):
            return self  # the daemon never ran on this queue: nothing to lock
        try:
            acquired = self.lock.lock()
        except (OSError, ValueError) as e:
            raise Unreachable(f"cannot take the lock {self.lock.name}: {_oserror(e)}") from None
        if not acquired:
            try:
                pid = os.readlink(self.lock.name)
            except OSError:
                pid = "?"
            raise Unreachable(
                f"mta is running (pid {sanitize(pid)} holds {self.lock.name}) but does not answer on "
                f"its control socket; nothing done"
            )
        if not self.lock.clean:
            # The daemon died without cleaning up: remove its socket too, or
            # the next start could not bind (it only removes a stale socket
            # when it finds a stale lock, which we are about to remove).
            try:
                if stat.S_ISSOCK(os.lstat(self.socket).st_mode):
                    os.unlink(self.socket)
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.lock.locked:
            self.lock.unlock()
        return False


def actOnFiles(queueDirectory, action, ids, out, err, now=None, maillog=None):
    """
    delete, hold, release or requeue C{ids} (valid ids, or ["ALL"]) on the
    queue files, with the daemon stopped; return the exit status.
    C{maillog}: a MailLog, or None.
    """
    store = QueueStore(queueDirectory, None)
    queues = tools.SOURCES[action]
    now = time.time() if now is None else now
    done, missing, texts, failed = [], [], {}, False
    try:
        with _ControlLock(queueDirectory):
            try:
                if ids == ["ALL"]:
                    ids = tools.allIds(store, queues)
            except OSError as e:
                err.write(f"{PROG}: cannot read the queue in {sanitize(queueDirectory)}: {_oserror(e)}\n")
                return 1
            for queueId in ids:
                queue = tools.findMessage(store, queueId, queues)
                if queue is None:
                    missing.append(queueId)
                    continue
                try:
                    text = tools.apply(store, action, queueId, queue, now)
                except OSError as e:
                    err.write(f"{PROG}: {queueId}: cannot {action}: {_oserror(e)}\n")
                    failed = True
                    continue
                if text is None:  # nothing to do (requeue of a message in incoming)
                    continue
                done.append(queueId)
                texts[queueId] = text
                if maillog is not None:
                    maillog.emit(text, queueId)
    except Unreachable as e:
        err.write(f"{PROG}: {e}\n")
        return 1
    code = _report(action, done, missing, out, err, texts)
    return 1 if failed else code


async def queueAction(reactor, queueDirectory, action, ids, out, err, connect=control.connect, now=None, maillog=None):
    """
    delete, hold, release or requeue C{ids} (valid ids, or ["ALL"]):
    through the daemon when it runs, else on the files; return the exit status.

    The ids go to the daemon in batches of BATCH (an AMP value holds at most
    64 KiB); ALL is the ids found in the queue directories now (and the
    daemon also finds a message that moved meanwhile).
    """
    if not ids:
        return _report(action, [], [], out, err)
    try:
        client = await connectDaemon(reactor, queueDirectory, connect)
    except NotRunning:
        return actOnFiles(queueDirectory, action, ids, out, err, now, maillog)
    except Unreachable as e:
        err.write(f"{PROG}: {e}; nothing done\n")
        return 1
    done, missing = [], []
    try:
        if ids == ["ALL"]:
            try:
                ids = tools.allIds(QueueStore(queueDirectory, None), tools.SOURCES[action])
            except OSError as e:
                err.write(f"{PROG}: cannot read the queue in {sanitize(queueDirectory)}: {_oserror(e)}\n")
                return 1
        for start in range(0, len(ids), BATCH):
            result = await ask(reactor, client, queueDirectory, control.QueueAction, "answer",
                               action=action, ids=ids[start:start + BATCH])
            done.extend(i for i in result["done"] if isValidQueueId(i))
            missing.extend(i for i in result["missing"] if isValidQueueId(i))
    except Unreachable as e:
        _report(action, done, missing, out, err)
        err.write(f"{PROG}: {e}; {len(ids) - len(done) - len(missing)} of {len(ids)} messages not done\n")
        return 1
    finally:
        hangUp(client)
    return _report(action, done, missing, out, err)
