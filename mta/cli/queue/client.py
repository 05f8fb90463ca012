"""
mta.cli.queue.client - the daemon's control channel, as mta-queue and mta use it.

connectDaemon() connects to $queue_directory/private/control (an AMP
socket, mta.control) and tells a daemon that is not running (NotRunning: no
socket, or a stale one) from one that cannot be used (Unreachable); ask()
sends one command with a timeout; callDaemon() is both and a hang-up.
status() and flush() are the commands `mta-queue status|flush` and `mta
status|flush` run; _react() runs one of them in a reactor and returns its
exit status; _socketMissing() answers the common "not running" without one.
"""

import os

from twisted.internet import error as netError

from mta import control
from mta.cli.queue.common import PROG, _plural, _reason
from mta.maillog import sanitize

TIMEOUT = 10


class NotRunning(Exception):
    """No daemon answers on the control socket: str() says why."""


class Unreachable(Exception):
    """The daemon may be there but cannot be used: str() is the whole message."""


def formatDuration(seconds):
    """12s, 5m3s, 2h4m, 3d: the largest unit and the next one if not zero."""
    seconds = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (suffix, size) in enumerate(units):
        if seconds >= size or suffix == "s":
            count, rest = divmod(seconds, size)
            text = f"{count}{suffix}"
            if index + 1 < len(units):
                nextSuffix, nextSize = units[index + 1]
                if rest // nextSize:
                    text += f"{rest // nextSize}{nextSuffix}"
            return text


def formatStatus(status):
    """The one line 'mta is running: ...' for a Status response."""
    listeners = ", ".join(sanitize(item) for item in status["listeners"]) or "none"
    workers = status.get("workers") or []
    return (
        f"mta is running: pid {status['pid']}, version {sanitize(status['version'])}, "
        f"up {formatDuration(status['uptime'])}, queue {sanitize(status['queue_directory'])}, "
        f"listeners: {listeners}" + (f", workers: {', '.join(sanitize(w) for w in workers)}" if workers else "")
    )


def _checkSocket(path):
    """NotRunning if there is no control socket at C{path}; Unreachable if it cannot be seen."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise NotRunning(f"no control socket at {path}") from None
    except OSError as e:
        raise Unreachable(f"mta is not reachable at {path}: {sanitize(e.strerror or e)}") from None


async def connectDaemon(reactor, queueDirectory, connect=control.connect):
    """
    An AMP client connected to the daemon's control socket.  NotRunning when
    no daemon listens (no socket, or a stale one that refuses connections);
    Unreachable for any other failure.
    """
    path = control.socketPath(queueDirectory)
    _checkSocket(path)
    try:
        return await connect(reactor, queueDirectory, timeout=TIMEOUT)
    except netError.ConnectionRefusedError:
        raise NotRunning(f"stale control socket at {path}: connection refused") from None
    except Exception as e:
        _checkSocket(path)  # removed meanwhile: the daemon stopped
        raise Unreachable(f"mta is not reachable at {path}: {_reason(e)}") from None


async def ask(reactor, client, queueDirectory, command, what, **arguments):
    """Send C{command} and return the answer; Unreachable (naming C{what}) on any failure."""
    try:
        d = client.callRemote(command, **arguments)
        d.addTimeout(TIMEOUT, reactor)
        return await d
    except Exception as e:
        raise Unreachable(f"no {what} from mta at {control.socketPath(queueDirectory)}: {_reason(e)}") from None


def hangUp(client):
    if client.transport is not None:
        client.transport.loseConnection()


async def callDaemon(reactor, queueDirectory, command, what, connect=control.connect, **arguments):
    """connectDaemon(), ask() once, hang up."""
    client = await connectDaemon(reactor, queueDirectory, connect)
    try:
        return await ask(reactor, client, queueDirectory, command, what, **arguments)
    finally:
        hangUp(client)


async def status(reactor, queueDirectory, out, err, connect=control.connect, prog=PROG):
    """Print the daemon's status on C{out}; return the exit status.  C{prog}: the name on error lines."""
    try:
        result = await callDaemon(reactor, queueDirectory, control.Status, "status", connect)
    except NotRunning as e:
        err.write(f"{prog}: mta is not running ({e})\n")
        return 1
    except Unreachable as e:
        err.write(f"{prog}: {e}\n")
        return 1
    out.write(formatStatus(result) + "\n")
    return 0


async def flush(reactor, queueDirectory, out, err, connect=control.connect, prog=PROG):
    """mta-queue flush: ask the daemon to try all deferred mail; return the exit status."""
    try:
        result = await callDaemon(reactor, queueDirectory, control.Flush, "answer", connect)
    except NotRunning as e:
        err.write(f"{prog}: cannot flush the queue: mta is not running ({e}); "
                  "deferred mail will be tried when it starts\n")
        return 1
    except Unreachable as e:
        err.write(f"{prog}: cannot flush the queue: {e}\n")
        return 1
    out.write(f"{prog}: Flushed: {_plural(result['count'], 'deferred message')}\n")
    return 0


def _react(function, *args):
    """Run C{function(reactor, *args)} (a coroutine function returning the exit status) in the reactor."""
    from twisted.internet import defer, task

    async def run(reactor):
        raise SystemExit(await function(reactor, *args))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # not reached: react() always exits


def _socketMissing(queueDirectory):
    try:
        _checkSocket(control.socketPath(queueDirectory))
    except NotRunning:
        return True
    except Unreachable:
        return False  # let the reactor path report it
    return False
