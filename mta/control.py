"""mta.control - the control channel between the daemon and its tools.

AMP over a UNIX socket, $queue_directory/private/control.  The private
directory is mode 0700 and the socket 0600, so only the MTA's own user (and
root) can connect; nothing else authenticates.  The socket's lock file
(control.lock, holding the daemon's pid) also keeps a second daemon off the
same queue.  Every command is declared here so that both ends share one
definition:

    Status        pid, version, uptime, queue directory, listeners
    Flush         postqueue -f
    QueueAction   postsuper -d/-h/-H/-r
    Reload        postfix reload: the same reload as SIGHUP (mta.service);
                  the answer comes when it is done: refused (with the
                  error) or applied (with warnings about listeners)
    Stop          postfix stop: answered, then the daemon stops as on SIGTERM

SECURITY
    Reachable only by the MTA's user; arguments are still checked, since a
    tool may be buggy.

CONFIGURATION
    queue_directory.
"""

import os

from twisted.internet.endpoints import UNIXClientEndpoint, UNIXServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols import amp

import mta


class Status(amp.Command):
    """Is the daemon there, and what is it?"""

    arguments = []
    response = [
        (b"version", amp.Unicode()),
        (b"pid", amp.Integer()),
        (b"uptime", amp.Float()),
        (b"queue_directory", amp.Unicode()),
        (b"listeners", amp.ListOf(amp.Unicode())),
        # "worker N[PID] ready|starting|retiring" (worker_processes, mta.workers); empty without
        (b"workers", amp.ListOf(amp.Unicode(), optional=True)),
    ]


class Flush(amp.Command):
    """Attempt all deferred mail now (postqueue -f)."""

    arguments = []
    response = [(b"count", amp.Integer())]


# An AMP value holds at most 64 KiB: requests and the id lists in replies stay under this.
MAX_IDS = 1000


class QueueAction(amp.Command):
    """
    delete, hold, release or requeue messages (postsuper -d/-h/-H/-r);
    at most MAX_IDS ids, or ["ALL"].  The reply lists at most MAX_IDS ids
    of each kind; the counts are exact.
    """

    arguments = [(b"action", amp.Unicode()), (b"ids", amp.ListOf(amp.Unicode()))]
    response = [
        (b"done", amp.ListOf(amp.Unicode())),
        (b"missing", amp.ListOf(amp.Unicode())),
        (b"doneCount", amp.Integer(optional=True)),
        (b"missingCount", amp.Integer(optional=True)),
    ]
    errors = {ValueError: b"BAD_REQUEST"}


# What a Reload answer carries at most: an AMP value holds at most 64 KiB.
MAX_TEXT = 2000
MAX_LINES = 20


class Reload(amp.Command):
    """Reload the configuration file and the tables (postfix reload); answered when done."""

    arguments = []
    response = [
        (b"configuration", amp.Unicode()),
        (b"pid", amp.Integer()),
        (b"refused", amp.Boolean()),
        (b"error", amp.Unicode(optional=True)),
        (b"warnings", amp.ListOf(amp.Unicode())),
        (b"errors", amp.ListOf(amp.Unicode())),
    ]


class Stop(amp.Command):
    """Stop the daemon cleanly, as SIGTERM does (postfix stop); answered first, with its pid."""

    arguments = []
    response = [(b"pid", amp.Integer())]


def _bounded(texts):
    texts = list(texts)
    if len(texts) > MAX_LINES:
        texts = texts[: MAX_LINES - 1] + [f"... and {len(texts) - MAX_LINES + 1} more (see the log)"]
    return [text[:MAX_TEXT] for text in texts]


def socketPath(queueDirectory):
    return os.path.join(queueDirectory, "private", "control")


class ControlProtocol(amp.AMP):
    def __init__(self, daemon):
        super().__init__()
        self.daemon = daemon

    @Status.responder
    def status(self):
        return {
            "version": mta.__version__,
            "pid": os.getpid(),
            "uptime": self.daemon.clock.seconds() - self.daemon.startedAt,
            "queue_directory": self.daemon.queueDirectory,
            "listeners": [f"{name} {endpoint}" for name, endpoint in self.daemon.listenerDescriptions()],
            "workers": self.daemon.workers.describe(),
        }

    @Flush.responder
    def flush(self):
        return self.daemon.manager.flush().addCallback(lambda count: {"count": count})

    @QueueAction.responder
    def queueAction(self, action, ids):
        from mta.queue.tools import SOURCES

        if action not in SOURCES:
            raise ValueError(f"unknown action {action!r}")
        if len(ids) > MAX_IDS:
            raise ValueError(f"at most {MAX_IDS} queue ids per request")
        def answer(result):
            done, missing = result
            return {
                "done": done[:MAX_IDS],
                "missing": missing[:MAX_IDS],
                "doneCount": len(done),
                "missingCount": len(missing),
            }

        return self.daemon.manager.operate(action, list(ids)).addCallback(answer)


    @Reload.responder
    def reload(self):
        def answer(result):
            reply = {
                "configuration": result.configuration[:MAX_TEXT],
                "pid": os.getpid(),
                "refused": result.refused,
                "warnings": _bounded(result.warnings),
                "errors": _bounded(result.errors),
            }
            if result.error is not None:
                reply["error"] = result.error[:MAX_TEXT]
            return reply

        return self.daemon.reload().addCallback(answer)

    @Stop.responder
    def stop(self):
        self.daemon.requestStop()
        return {"pid": os.getpid()}


def prepareDirectory(queueDirectory):
    """Create $queue_directory/private, mode 0700."""
    private = os.path.join(queueDirectory, "private")
    os.makedirs(private, mode=0o700, exist_ok=True)
    os.chmod(private, 0o700)


def controlServerEndpoint(reactor, queueDirectory):
    return UNIXServerEndpoint(reactor, socketPath(queueDirectory), mode=0o600, wantPID=True)


def controlFactory(daemon):
    factory = Factory.forProtocol(lambda: ControlProtocol(daemon))
    factory.noisy = False
    return factory


def connect(reactor, queueDirectory, timeout=10):
    """Connect to the daemon's control socket; a Deferred firing with an AMP."""
    endpoint = UNIXClientEndpoint(reactor, socketPath(queueDirectory), timeout=timeout)
    return endpoint.connect(Factory.forProtocol(amp.AMP))
