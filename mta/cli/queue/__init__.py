"""mta.cli.queue - mta-queue: mailq, postqueue and postsuper for mta.

SYNOPSIS
    mta-queue [-c FILE] status
    mta-queue [-c FILE] list [--json]
    mta-queue [-c FILE] show ID
    mta-queue [-c FILE] flush
    mta-queue [-c FILE] delete|hold|release|requeue ID...|ALL|-

DESCRIPTION
    status      asks the running daemon, through its control socket
                ($queue_directory/private/control), for its pid, version,
                uptime, queue and listeners, and prints one line::

                    mta is running: pid 123, version 0.1.0, up 12s, queue /var/spool/mta,
                        listeners: smtp tcp:port=2525:interface=127.0.0.1

                (on one line); with worker_processes, then ``workers: worker
                1[124] ready, worker 2[125] ready`` (starting, or retiring
                after a reload).

    list        mailq(1), postqueue -p: reads the queue files itself, as
                Postfix's showq(8) does, so it works whether the daemon runs
                or not (it only reads).  The queues are listed in showq's
                order: maildrop (mail from mta-sendmail that pickup has not
                taken yet), active, incoming, deferred, hold.  The text is
                mailq's::

                    -Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------
                    8DmPKBcDdcVvyF*     1234 Sat Nov 21 07:48:25  alice@example.org
                                                                  bob@example.net

                    8DmPKCqk2aVvyF!      567 Sat Nov 21 07:50:00  MAILER-DAEMON
                    (connect to mx.example.com[192.0.2.1]:25: Connection refused)
                                                                  carol@example.com

                    -- 1 Kbytes in 2 Requests.

                ``*`` marks a message in the active queue, ``!`` one on hold;
                a ``(reason)`` line comes before the recipients deferred for
                it; recipients already delivered or bounced are not shown.
                An empty queue prints ``Mail queue is empty``.  A queue file
                that cannot be read is a line with the error.

                ``--json`` is postqueue -j: one JSON object per line and
                message, with Postfix's members in Postfix's order and
                spacing (src/postqueue/showq_json.c)::

                    {"queue_name": "deferred", "queue_id": "8DmPKCqk2aVvyF", "arrival_time": 1605944400, "message_size": 567, "forced_expire": false, "sender": "MAILER-DAEMON", "recipients": [{"orig_address": "carol@example.com", "address": "carol@example.com", "delay_reason": "connect to ...: Connection refused"}]}

                (on one line).  arrival_time is whole seconds, message_size
                the content bytes, forced_expire always false (mta has no
                postsuper -e), sender "MAILER-DAEMON" for the null sender
                (Postfix's empty_address_recipient), recipients the ones
                still to be delivered, delay_reason only where a delivery
                was deferred.  Strings are escaped as Postfix's
                quote_for_json(): \\b \\f \\n \\r \\t, other control
                characters (and DEL) as \\uXXXX, UTF-8 as it is, text that
                is not UTF-8 as '?'.  A queue file that cannot be read is
                left out with a warning on stderr (showq logs one).  An
                empty queue prints nothing.

    show ID     postcat -q: the envelope (queue, arrival time, size, sender,
                client, recipients with their status and reason) and then
                the content, its CRLF line ends shown as LF.  On a terminal,
                control characters in the content are shown as \\xNN.

    flush       postqueue -f: asks the daemon to try all deferred mail now.
                Like postqueue -f when the mail system is down, it fails
                (exit 1) when the daemon is not running.

    delete, hold, release, requeue
                postsuper -d, -h, -H and -r, on the named queue ids, on ALL
                messages, or (``-``) on the ids read from standard input,
                separated by white space.  delete looks in hold, incoming,
                active and deferred; hold in incoming, active and deferred;
                release in hold; requeue everywhere.  When the daemon runs
                the request goes through the control channel to the queue
                manager (the only writer of the queue; it defers the action
                on a message being delivered until its deliveries end).
                When it does not run (no control socket, or the socket
                refuses connections), mta-queue acts on the files itself
                (mta.queue.tools), holding the control socket's lock so that
                a daemon cannot start meanwhile, and appends the same
                mail-log lines as the daemon (mta/postsuper) to
                $maillog_file.  Either way it prints one line per message
                and a summary, in postsuper's words::

                    mta-queue: 8DmPKBcDdcVvyF: removed
                    mta-queue: Deleted: 1 message

                A named message that is not found is reported on stderr and
                makes the exit status 1.  ALL through the daemon is the ids
                found in the queue directories at that moment; ids go to the
                daemon in batches of BATCH, as an AMP value holds at most
                64 KiB.  A lock left by a daemon that was killed is broken
                (with its socket, which the next start could not bind over).

    Results go to stdout, errors to stderr, one line each; never a
    traceback.

DEVIATIONS
    list --json: mta expands aliases when it routes, not in cleanup, so a
    queue file holds the recipients as they were given: each recipient
    object has that address as both address and orig_address (Postfix
    3.11's orig_address), and the delay_reason of a deferred alias
    expansion.  Recipients that have bounced are left out (Postfix 3.11
    lists them with a bounce_reason until the bounce is written; earlier
    versions leave them out too).
    postsuper writes its per-message lines and summary to stderr and syslog;
    mta-queue prints them on stdout (the daemon, or mta-queue itself when
    the daemon is stopped, writes the mail log) and prints the summary even
    for 0 messages.  postsuper ignores ids that are not found; mta-queue
    names them and exits 1.  flush prints how many deferred messages it
    scheduled; postqueue -f prints nothing.

SECURITY
    The control socket is mode 0600 in a 0700 directory: only the MTA's own
    user (and root) can use the daemon's commands.  Queue ids from the
    command line and from stdin are validated (mta.queue.queueid) before any
    of them is used, and before anything is done; ALL is only accepted
    alone, on the command line.  Queue files are parsed as untrusted input
    (a damaged one is reported, never fatal to a listing), and everything
    printed from them or from the daemon has its control characters
    escaped, except message content written to a pipe or file by show.

CONFIGURATION
    queue_directory (and, when acting on the files, maillog_file,
    syslog_name and myhostname), read from the file that every mta program
    uses (mta.config.findConfig): --config FILE, else $MTA_CONFIG, else
    /etc/mta/mta.ini when it exists, else the embedded defaults.  A
    relative queue_directory is taken from the current directory.  When
    the queue directory does not exist, every command says so, naming the
    configuration in effect, and exits 1.

EXIT STATUS
    0 success; 1 the daemon is not reachable (status, flush), a message was
    not found, a queue file cannot be read or written, or the configuration
    is wrong; 2 usage error (bad options, bad queue ids).
"""

import argparse
import os
import stat
import sys

from mta import control
from mta.cli import Done, parseArguments
from mta.cli.queue.actions import ACTIONS, BATCH, MailLog, actOnFiles, queueAction, queueIds
from mta.cli.queue.client import (
    TIMEOUT, NotRunning, Unreachable, _react, _socketMissing, ask, callDaemon, connectDaemon, flush,
    formatDuration, formatStatus, hangUp, status,
)
from mta.cli.queue.common import PROG, UsageError, _oserror, _reason
from mta.cli.queue.listing import (
    HEADER, LISTING, formatJson, formatListing, jsonString, listQueue, readQueue, show,
)
from mta.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG, ConfigError, loadConfig
from mta.maillog import sanitize
from mta.queue import tools
from mta.queue.store import QueueStore

__all__ = [
    "ACTIONS", "BATCH", "HEADER", "LISTING", "PROG", "TIMEOUT", "MailLog", "NotRunning", "QueueStore",
    "Unreachable", "UsageError", "actOnFiles", "ask", "buildParser", "callDaemon", "connectDaemon", "flush",
    "formatDuration", "formatJson", "formatListing", "formatStatus", "hangUp", "jsonString", "listQueue",
    "main", "queueAction", "queueIds", "readQueue", "show", "status", "tools",
]

ACTION_HELP = {
    "delete": ("delete messages from the queue (postsuper -d)",
               "Delete the named messages (from hold, incoming, active or deferred)."),
    "hold": ("put messages on hold (postsuper -h)",
             "Put the named messages (in incoming, active or deferred) on hold: the queue manager "
             "leaves them alone until they are released."),
    "release": ("release messages from hold (postsuper -H)",
                "Release the named messages from hold; they are tried at once."),
    "requeue": ("requeue messages (postsuper -r)",
                "Put the named messages (in hold, active or deferred) back into incoming, so that "
                "the queue manager routes them again."),
}


def buildParser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Look at and manage the mta mail queue (mailq, postqueue and postsuper).",
        epilog=(
            "The queue commands list, show, flush, delete, hold, release and requeue are\n"
            "postqueue(1) and postsuper(1).  list and show read the queue files, and work\n"
            "whether the daemon runs or not; flush needs the running daemon; delete, hold,\n"
            "release and requeue go through the queue manager, over the control socket\n"
            "($queue_directory/private/control), when the daemon runs, and act on the queue\n"
            "files themselves when it does not.\n"
            "\n"
            "exit status: 0 success, 1 the daemon cannot be reached, a message was not found\n"
            "or the configuration is wrong, 2 usage error."
        ),
    )
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help=f"the daemon's configuration file, to find queue_directory; default: ${CONFIG_ENVIRONMENT}, "
             f"else {DEFAULT_CONFIG} if it exists, else the embedded defaults",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "status", help="is the daemon running? its pid, version, uptime, queue and listeners",
        description="Ask the running daemon for its status and print it on one line.",
    )
    listing = commands.add_parser(
        "list", help="list the queue, as mailq (postqueue -p)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "List every message in the maildrop, active, incoming, deferred and hold queues, as\n"
            "mailq does.\n"
            "Reads the queue files; works whether the daemon runs or not.\n"
            "'*' after the id: active; '!': on hold.  (reason) lines precede the recipients\n"
            "that were deferred for that reason."
        ),
    )
    listing.add_argument(
        "--json", action="store_true",
        help="print one JSON object per line and message, as postqueue -j: queue_name, queue_id, "
             "arrival_time, message_size, forced_expire, sender, recipients (orig_address, address, "
             "delay_reason)",
    )
    show = commands.add_parser(
        "show", help="print a message's envelope and content (postcat -q)",
        description="Print the envelope (queue, arrival, size, sender, recipients with their "
                    "status) and then the content of one queued message.",
    )
    show.add_argument("queue_id", metavar="ID", help="the queue id")
    commands.add_parser(
        "flush", help="try all deferred mail now (postqueue -f); needs the running daemon",
        description="Ask the running daemon to try all deferred mail now.  Fails (exit 1) "
                    "when the daemon is not running.",
    )
    for action, (summary, description) in ACTION_HELP.items():
        sub = commands.add_parser(
            action, help=summary,
            description=description + "  Through the daemon when it runs, on the queue files when "
                                      "it does not.",
        )
        sub.add_argument(
            "ids", nargs="+", metavar="ID",
            help="queue ids; ALL for every message; - to read ids from standard input",
        )
    return parser


def main(argv=None):
    """Run mta-queue with C{argv} (default: sys.argv[1:]); return the exit status."""
    try:
        args = parseArguments(buildParser(), argv, needCommand=True)
    except Done as e:
        return e.status
    out, err = sys.stdout, sys.stderr
    try:
        try:
            config = loadConfig(args.config)
            queueDirectory = config.settings.service.queueDirectory
        except ConfigError as e:
            err.write(f"{PROG}: error: {e}\n")
            return 1
        problem = _queueProblem(queueDirectory, config)
        if problem:
            err.write(f"{PROG}: mta is not running ({problem})\n" if args.command == "status" else f"{PROG}: {problem}\n")
            return 1
        return _dispatch(args, config, queueDirectory, out, err)
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 1
    except BrokenPipeError:  # mta-queue list | head
        try:  # nothing more can be written there: keep the exit-time flush quiet
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 1
    except Exception as e:  # a bug: still one line, never a traceback
        err.write(f"{PROG}: internal error: {type(e).__name__}: {_reason(e)}\n")
        return 1


def _queueProblem(queueDirectory, config):
    """Why C{queueDirectory} cannot be a queue (it does not exist, ...), naming the configuration; or None."""
    try:
        st = os.stat(queueDirectory)
    except FileNotFoundError:
        return f"no queue directory {sanitize(queueDirectory)} (configuration: {sanitize(config.describe())})"
    except OSError as e:
        return f"cannot use the queue directory {sanitize(queueDirectory)}: {_oserror(e)}"
    if not stat.S_ISDIR(st.st_mode):
        return f"the queue directory {sanitize(queueDirectory)} is not a directory"
    return None


def _dispatch(args, config, queueDirectory, out, err):
    command = args.command
    if command == "list":
        return listQueue(queueDirectory, out, err, asJson=args.json)
    if command == "show":
        return show(queueDirectory, args.queue_id, out, err)
    if command == "status":
        if _socketMissing(queueDirectory):  # the common case, answered without a reactor
            err.write(f"{PROG}: mta is not running (no control socket at {control.socketPath(queueDirectory)})\n")
            return 1
        return _react(status, queueDirectory, out, err)
    if command == "flush":
        if _socketMissing(queueDirectory):
            err.write(f"{PROG}: cannot flush the queue: mta is not running (no control socket at "
                      f"{control.socketPath(queueDirectory)}); deferred mail will be tried when it starts\n")
            return 1
        return _react(flush, queueDirectory, out, err)
    # delete, hold, release, requeue
    try:
        ids = queueIds(args.ids, sys.stdin)
    except UsageError as e:
        err.write(f"{PROG}: {command}: {e}; nothing done\n")
        return 2
    except (OSError, UnicodeDecodeError) as e:
        err.write(f"{PROG}: {command}: cannot read queue ids from standard input: {_oserror(e)}\n")
        return 1
    service = config.settings.service
    maillog = MailLog(service.maillogFile, service.hostname, service.syslogName, err)
    if _socketMissing(queueDirectory):
        return actOnFiles(queueDirectory, command, ids, out, err, maillog=maillog)
    return _react(queueAction, queueDirectory, command, ids, out, err, control.connect, None, maillog)
