"""mta.cli.queue - mta-queue, talks to the running daemon (postqueue/postsuper).

    mta-queue [-c FILE] status

``status`` connects to the daemon's control socket,
$queue_directory/private/control, asks for its Status and prints one line::

    mta is running: pid 123, version 0.1.0, up 12s, queue /var/spool/mta,
        listeners: smtp tcp:port=2525:interface=127.0.0.1

(on one line).  It exits 1 with one line on stderr when the daemon cannot be
reached.  The queue commands (list, show, flush, delete, hold, release,
requeue) come with the queue manager.

SECURITY
    The control socket is mode 0600 in a 0700 directory: only the MTA's own
    user (and root) can use this tool.  Replies are printed after escaping
    control characters.

CONFIGURATION
    queue_directory, read from the file given with --config (default: the
    embedded defaults, as ``twistd mta`` without --config).

EXIT STATUS
    0 success, 1 the daemon is not reachable or the configuration is wrong,
    2 usage error.
"""

import argparse
import os
import sys

from twisted.internet import error as netError

from mta import control
from mta.config import ConfigError, load
from mta.maillog import sanitize

PROG = "mta-queue"

TIMEOUT = 10


def buildParser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Talk to the running mta daemon through its control socket "
                    "($queue_directory/private/control).",
        epilog=(
            "The queue commands list, show, flush, delete, hold, release and requeue\n"
            "(postqueue(1) and postsuper(1)) come with the queue manager.\n"
            "\n"
            "exit status: 0 success, 1 the daemon cannot be reached or the configuration\n"
            "is wrong, 2 usage error."
        ),
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help="the daemon's configuration file, to find queue_directory; "
             "default: the embedded defaults",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "status", help="is the daemon running? its pid, version, uptime, queue and listeners",
        description="Ask the running daemon for its status and print it on one line.",
    )
    return parser


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
    return (
        f"mta is running: pid {status['pid']}, version {sanitize(status['version'])}, "
        f"up {formatDuration(status['uptime'])}, queue {sanitize(status['queue_directory'])}, "
        f"listeners: {listeners}"
    )


async def status(reactor, queueDirectory, out, err, connect=control.connect):
    """Print the daemon's status on C{out}; return the exit status."""
    path = control.socketPath(queueDirectory)
    if not os.path.exists(path):
        return _noSocket(path, err)
    try:
        client = await connect(reactor, queueDirectory, timeout=TIMEOUT)
    except netError.ConnectionRefusedError:
        err.write(f"{PROG}: mta is not running (stale control socket at {path}: connection refused)\n")
        return 1
    except Exception as e:
        err.write(f"{PROG}: mta is not reachable at {path}: {_reason(e)}\n")
        return 1
    try:
        d = client.callRemote(control.Status)
        d.addTimeout(TIMEOUT, reactor)
        result = await d
    except Exception as e:
        err.write(f"{PROG}: no status from mta at {path}: {_reason(e)}\n")
        return 1
    finally:
        if client.transport is not None:
            client.transport.loseConnection()
    out.write(formatStatus(result) + "\n")
    return 0


def _noSocket(path, err):
    err.write(f"{PROG}: mta is not running (no control socket at {path})\n")
    return 1


def _reason(exception):
    text = str(exception).strip() or type(exception).__name__
    return sanitize(text)


def _runStatus(queueDirectory):
    from twisted.internet import defer, task

    async def run(reactor):
        raise SystemExit(await status(reactor, queueDirectory, sys.stdout, sys.stderr))

    try:
        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    return 0  # not reached: react() always exits


def main(argv=None):
    """Run mta-queue with C{argv} (default: sys.argv[1:]); return the exit status."""
    parser = buildParser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        queueDirectory = load(args.config)["queue_directory"]
    except ConfigError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    path = control.socketPath(queueDirectory)
    if not os.path.exists(path):  # the common case, answered without a reactor
        return _noSocket(path, sys.stderr)
    return _runStatus(queueDirectory)


if __name__ == "__main__":
    raise SystemExit(main())
