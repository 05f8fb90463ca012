"""mta.cli.main - mta, the administrator's command (postfix(1) for mta).

SYNOPSIS
    mta [-c FILE] reload | status | check | stop | flush
    mta [-c FILE] tls new-server-key | new-server-cert | output-server-tlsa  (mta.cli.tls)

DESCRIPTION
    reload  postfix reload: asks the running daemon, over its control
            socket, to read its configuration file and its tables again;
            the same reload as SIGHUP (see mta.service, RELOAD).  It prints
            what the daemon answered::

                mta: refreshing the mta mail system
                mta: mta (pid 4242) reloaded /etc/mta/mta.ini

            and the daemon's warnings and errors about listeners (one line
            each on stderr).  When the daemon refuses the new configuration,
            its error goes to stderr and the exit status is 1; the
            configuration in force stays.  The daemon reads the file it was
            started with: -c only says where the queue (and so the control
            socket) is.  A file too broken for that is reported as it is.
    status  is the daemon running? mta-queue status's line.
    check   mta-config --check: load the file and open every table it
            names; silent when all is well.
    stop    postfix stop: asks the daemon to stop (it stops as on SIGTERM:
            listeners closed, deliveries in progress abandoned to the next
            start, exit status 0), then waits until its process has gone::

                mta: stopping the mta mail system

    flush   mta-queue flush (postqueue -f).
    tls     postfix tls: server keys, self-signed certificates and DANE
            TLSA records (new-server-key, new-server-cert,
            output-server-tlsa); see mta.cli.tls.

    Results go to stdout, errors to stderr, one line each; never a
    traceback.  The control-channel client is mta-queue's (mta.cli.queue.client).

DIFFERENCES FROM POSTFIX
    postfix reload signals the master and returns at once; mta reload waits
    for the daemon's answer, so that a refused configuration is an exit
    status.  postfix stop kills the master with SIGKILL when it has not
    stopped after 5 seconds; mta stop waits STOP_WAIT seconds and then
    only says so (exit 1).  There are no start, abort, set-permissions or
    upgrade-configuration commands: start the daemon with twistd.

SECURITY
    The control socket is mode 0600 in a 0700 directory: only the MTA's own
    user (and root) can reload or stop the daemon.  Text from the daemon is
    printed with its control characters escaped.

CONFIGURATION
    queue_directory, from the configuration found as every program finds
    it (mta.config.findConfig: -c/--config, else $MTA_CONFIG, else
    /etc/mta/mta.ini when it exists, else the embedded defaults).

EXIT STATUS
    0 success; 1 the daemon is not running or not reachable, it refused the
    new configuration or a listener is not listening after the reload, it
    has not stopped, or the configuration is wrong; 2 usage error.
"""

import argparse
import os
import re
import sys

from mta import control
from mta.cli import Done, parseArguments
from mta.cli import tls
from mta.cli.queue import client as cliQueue
from mta.config import ConfigError, Scope, findConfig, loadConfig, openTables, readIni
from mta.config.schema import parameter
from mta.maillog import sanitize

PROG = "mta"
STOP_WAIT = 60.0  # seconds mta stop waits for the daemon to go
POLL = 0.1

COMMANDS = {
    "reload": ("reload the configuration and tables of the running daemon (postfix reload)",
               "Ask the running daemon to read its configuration file and tables again, as SIGHUP "
               "does.  Exit status 1 when it refuses the new configuration (the one in force stays)."),
    "status": ("is the daemon running? (mta-queue status)",
               "Ask the running daemon for its pid, version, uptime, queue and listeners."),
    "check": ("check the configuration file and its tables (mta-config --check)",
              "Load the configuration and open every table it names; silent when all is well."),
    "stop": ("stop the running daemon cleanly, as SIGTERM (postfix stop)",
             "Ask the running daemon to stop, and wait until its process has gone."),
    "flush": ("try all deferred mail now (mta-queue flush, postqueue -f)",
              "Ask the running daemon to try all deferred mail now."),
}


def buildParser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Control the mta mail system, as postfix(1) does for Postfix.",
        epilog="exit status: 0 success, 1 failure (one line on stderr says why), 2 usage error.",
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help="the daemon's configuration file, to find queue_directory (check: the file to check); "
             "default: $MTA_CONFIG, else /etc/mta/mta.ini, else the embedded defaults",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, description) in COMMANDS.items():
        commands.add_parser(name, help=summary, description=description)
    parser.tls = tls.addParser(commands)  # mta tls: mta.cli.tls
    return parser


def queueDirectoryOf(path):
    """
    The queue_directory of the configuration at C{path}.  When the file
    does not load (what a reload is often asked for after), the queue
    directory is still taken from the [main] lines that name known
    parameters, if that is enough, so that the daemon can be reached and
    give its own answer; otherwise the ConfigError is raised.
    """
    found = findConfig(path)
    try:
        return loadConfig(path).settings.service.queueDirectory
    except ConfigError as e:
        if found.path is None or not os.path.exists(found.path):
            raise
        path, error = found.path, e
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            text = _mainParameters(f.read())
        sections = readIni(path, text)
        return Scope([e for s in sections if s.name == "main" for e in s.entries])["queue_directory"]
    except (OSError, ConfigError, ValueError):
        raise error from None


def _mainParameters(text):
    """C{text} with only the [main] lines that set known parameters (others blank: line numbers stay)."""
    kept, inMain, keep = [], False, False
    for line in text.split("\n"):
        if line.startswith("["):
            inMain, keep = line.strip().replace(" ", "") == "[main]", False
            kept.append("[main]" if inMain else "")
        elif line[:1] in (" ", "\t"):
            kept.append(line if keep else "")
        else:
            match = re.match(r"([A-Za-z0-9_.-]+)\s*=", line)
            keep = bool(inMain and match and parameter(match.group(1)) is not None)
            kept.append(line if keep else "")
    return "\n".join(kept)


# -- reload ---------------------------------------------------------------------------------


async def reload(reactor, queueDirectory, out, err, connect=control.connect):
    """mta reload; return the exit status."""
    try:
        client = await cliQueue.connectDaemon(reactor, queueDirectory, connect)
    except cliQueue.NotRunning as e:
        err.write(f"{PROG}: mta is not running ({e})\n")
        return 1
    except cliQueue.Unreachable as e:
        err.write(f"{PROG}: {e}\n")
        return 1
    out.write(f"{PROG}: refreshing the mta mail system\n")
    out.flush()
    try:
        result = await cliQueue.ask(reactor, client, queueDirectory, control.Reload, "answer to reload")
    except cliQueue.Unreachable as e:
        err.write(f"{PROG}: {e}\n")
        return 1
    finally:
        cliQueue.hangUp(client)
    configuration = sanitize(result["configuration"])
    if result["refused"]:
        err.write(f"{PROG}: reload refused, the configuration in force stays: {sanitize(result.get('error'))}\n")
        return 1
    out.write(f"{PROG}: mta (pid {result['pid']}) reloaded {configuration}\n")
    for text in result["warnings"]:
        err.write(f"{PROG}: warning: {sanitize(text)}\n")
    for text in result["errors"]:
        err.write(f"{PROG}: error: {sanitize(text)}\n")
    return 1 if result["errors"] else 0


# -- stop -------------------------------------------------------------------------------------


def processExists(pid):
    """Is process C{pid} still there?  A zombie (exited, not yet reaped by its parent) is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[:1]
    except OSError:
        return True
    return state != [b"Z"]


async def stop(reactor, queueDirectory, out, err, connect=control.connect, exists=processExists, wait=STOP_WAIT):
    """mta stop; return the exit status."""
    from twisted.internet.task import deferLater

    try:
        result = await cliQueue.callDaemon(reactor, queueDirectory, control.Stop, "answer to stop", connect)
    except cliQueue.NotRunning as e:
        err.write(f"{PROG}: mta is not running ({e})\n")
        return 1
    except cliQueue.Unreachable as e:
        err.write(f"{PROG}: {e}\n")
        return 1
    out.write(f"{PROG}: stopping the mta mail system\n")
    out.flush()
    pid = result["pid"]
    waited = 0.0
    while exists(pid):
        if waited >= wait:
            err.write(f"{PROG}: mta (pid {pid}) has not stopped after {wait:g}s\n")
            return 1
        await deferLater(reactor, POLL, lambda: None)
        waited += POLL
    return 0


# -- check ------------------------------------------------------------------------------------


def check(path, err):
    from twisted.internet.task import Clock

    from mta.tables import Tables

    try:
        openTables(loadConfig(path), Tables(Clock()))
    except ConfigError as e:
        err.write(f"{PROG}: error: {e}\n")
        return 1
    return 0


# -- running ------------------------------------------------------------------------------------


def main(argv=None):
    """Run mta with C{argv} (default: sys.argv[1:]); return the exit status."""
    parser = buildParser()
    try:
        args = parseArguments(parser, argv, needCommand=True)
    except Done as e:
        return e.status
    out, err = sys.stdout, sys.stderr
    try:
        if args.command == "tls":
            return tls.run(args, parser.tls, out, err)
        if args.command == "check":
            return check(args.config, err)
        try:
            queueDirectory = queueDirectoryOf(args.config)
        except ConfigError as e:
            err.write(f"{PROG}: error: {e}\n")
            return 1
        if cliQueue._socketMissing(queueDirectory):  # the common case, answered without a reactor
            what, after = ("cannot flush the queue: ", "; deferred mail will be tried when it starts") \
                if args.command == "flush" else ("", "")
            err.write(f"{PROG}: {what}mta is not running (no control socket at "
                      f"{control.socketPath(queueDirectory)}){after}\n")
            return 1
        commands = {
            "reload": lambda reactor: reload(reactor, queueDirectory, out, err),
            "status": lambda reactor: cliQueue.status(reactor, queueDirectory, out, err, prog=PROG),
            "stop": lambda reactor: stop(reactor, queueDirectory, out, err),
            "flush": lambda reactor: cliQueue.flush(reactor, queueDirectory, out, err, prog=PROG),
        }
        return cliQueue._react(commands[args.command])
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 1
    except Exception as e:  # a bug: still one line, never a traceback
        err.write(f"{PROG}: internal error: {type(e).__name__}: {sanitize(str(e))}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
