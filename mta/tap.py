"""mta.tap - ``twistd mta``: command-line options and makeService().

    twistd -n mta [-c FILE]

The configuration is found as every mta program finds it
(mta.config.findConfig): -c/--config FILE (a directory means DIR/mta.ini),
else $MTA_CONFIG, else /etc/mta/mta.ini when it exists, else the embedded
defaults: one listener on 127.0.0.1:2525, relaying for 127.0.0.0/8 only,
its queue under var/spool/mta, relative to the directory twistd starts in
(so that ``twistd -n mta`` runs as any user; see the README's Deployment
section for a real queue).  The start line in the log names the file in
effect.  A configuration problem stops the start with one line naming
file, line, section and key, and exit status 1.

Signals: SIGTERM stops the daemon cleanly with exit status 0 (postfix
stop); SIGHUP reloads the configuration file and the tables, as ``mta
reload`` does (see mta.service, RELOAD), instead of killing the daemon.
twistd's own SIGUSR1 rotates its --logfile.

SECURITY
    None beyond mta.config.

CONFIGURATION
    --config/-c FILE; the environment variable MTA_CONFIG.
"""

import os
import signal
import sys

from twisted.python import usage

from mta.config import CONFIG_ENVIRONMENT, DEFAULT_CONFIG, ConfigError, loadConfig


class Options(usage.Options):
    synopsis = "[-c FILE]"
    longdesc = (
        f"Run the mta mail transfer agent. The configuration is --config FILE, else "
        f"${CONFIG_ENVIRONMENT}, else {DEFAULT_CONFIG} if it exists, else the embedded defaults."
    )
    optParameters = [
        ["config", "c", None,
         f"The configuration file (INI; a directory means DIR/mta.ini). Default: ${CONFIG_ENVIRONMENT}, "
         f"else {DEFAULT_CONFIG} if it exists, else the embedded defaults."],
    ]

    def postOptions(self):
        try:
            self.mtaConfig = loadConfig(self["config"])
        except ConfigError as e:
            fatal(str(e))


def fatal(message):
    """Print one line to stderr and exit 1, without a traceback."""
    # sys.__stderr__: once twistd's logging is up, sys.stderr feeds the log.
    stream = sys.__stderr__ or sys.stderr
    stream.write(f"mta: fatal: {message}\n")
    stream.flush()
    raise SystemExit(1)


def exitCleanlyOnSigterm(reactor):
    """
    Stop on SIGTERM with exit status 0, as ``postfix stop`` does.  twistd's
    own handler makes the process end by the signal (status 143), which
    service managers and scripts read as a failure.
    """

    def stop():
        if reactor.running:
            reactor.stop()

    def handler(signum, frame):
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, handler)


def reloadOnSighup(reactor, service):
    """
    SIGHUP reloads the configuration (Postfix's master does the same): the
    signal only schedules MTAService.reload(), in the reactor's thread, the
    same call as ``mta reload``.  Installed before the reactor runs, so
    that a SIGHUP during the start cannot kill the daemon either (the
    reload then waits for the reactor, and is refused if the daemon is not
    running yet).
    """

    def handler(signum, frame):
        reactor.callFromThread(service.reload)

    signal.signal(signal.SIGHUP, handler)


def runAs(twistdOptions):
    """(uid, gid) of twistd's --uid/--gid (the gid defaults to the uid's group, as twistd's), or None."""
    if not twistdOptions:
        return None
    uid, gid = twistdOptions.get("uid"), twistdOptions.get("gid")
    if uid is None:
        return None
    if gid is None:
        import pwd

        try:
            gid = pwd.getpwuid(uid).pw_gid
        except KeyError:
            gid = os.getgid()
    return (uid, gid)


def makeService(options):
    from twisted.internet import reactor

    from mta.config import openTables
    from mta.service import buildService
    from mta.tables import Tables

    tables = Tables(reactor)
    try:
        openTables(options.mtaConfig, tables)
    except ConfigError as e:
        fatal(str(e))
    reactor.callWhenRunning(exitCleanlyOnSigterm, reactor)
    nodaemon = bool(options.parent and options.parent.get("nodaemon"))
    service = buildService(options.mtaConfig, reactor, tables, onStartupError=fatal if nodaemon else None,
                           runAs=runAs(options.parent))
    reloadOnSighup(reactor, service)
    return service
