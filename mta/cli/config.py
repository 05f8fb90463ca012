"""mta.cli.config - mta-config, the postconf(1) of mta.

    mta-config [-c FILE] [-d | -n | -M | --check | --which] [-x] [-h] [NAME...]

Prints the parameters in effect in [main], ``name = value`` sorted by name,
with the values as written (unexpanded, as postconf does): -d the schema
defaults, -n only what the file's [main] sets, -x with $name expanded, -h the
values without names, -M the listeners as INI sections.  --check loads the
configuration and opens every lookup table it names, and says nothing when
all is well.  --which prints the file in effect and how it was found.

The file is found as ``twistd mta`` finds it (mta.config.findConfig):
--config FILE, else $MTA_CONFIG, else /etc/mta/mta.ini when it exists, else
the embedded defaults.

SECURITY
    Reads the configuration file and the table files it names, as the user
    who runs it.  Prints values, which may include table contents of inline:
    tables; nothing is written.

CONFIGURATION
    The file given with --config (or $MTA_CONFIG, or /etc/mta/mta.ini);
    every parameter of mta.config.schema.

EXIT STATUS
    0 on success, 1 on a configuration problem or an unknown name (one line
    on stderr, ``mta-config: error: ...``), 2 on a usage error.
"""

import argparse
import difflib
import os
import sys

from mta.cli import Done, parseArguments
from mta.config import BY_NAME, CONFIG_ENVIRONMENT, DEFAULT_CONFIG, ConfigError, Scope, findConfig, loadConfig, openTables
from mta.config.schema import parameter
from mta.config.schema import LISTENER_KEYS

PROG = "mta-config"


class _Failed(Exception):
    """A problem to report as one 'mta-config: error:' line, exit status 1."""


def buildParser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        add_help=False,  # -h means "values only", as in postconf(1)
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Show or check the mta configuration, as postconf(1) does for Postfix.\n\n"
            "Without options, print every parameter in effect in [main] as 'name = value',\n"
            "sorted by name, with values as written (unexpanded). NAME... limits the\n"
            "output to those parameters."
        ),
        epilog=(
            "examples:\n"
            "  mta-config -c /etc/mta/mta.ini -n        what the file changes\n"
            "  mta-config -d message_size_limit         a default\n"
            "  mta-config -c mta.ini -x -h myhostname   one value, expanded, no name\n"
            "  mta-config -c mta.ini -M                 the listeners\n"
            "  mta-config -c mta.ini --check            check it, quietly\n"
            "  mta-config --which                       which file is in effect\n"
            "\n"
            f"Without --config: ${CONFIG_ENVIRONMENT}, else {DEFAULT_CONFIG} if it exists, else the\n"
            "embedded defaults (as twistd mta, mta-queue and mta-sendmail).\n"
            "\n"
            "exit status: 0 success, 1 configuration error or unknown name, 2 usage error."
        ),
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument(
        "-c", "--config", metavar="FILE",
        help=f"the configuration file (INI; a directory means DIR/mta.ini); default: ${CONFIG_ENVIRONMENT}, "
             f"else {DEFAULT_CONFIG} if it exists, else the embedded defaults",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-d", dest="defaults", action="store_true",
                      help="show the default values (the schema's), ignoring the file")
    mode.add_argument("-n", dest="nondefault", action="store_true",
                      help="show only the parameters the file's [main] sets")
    mode.add_argument("-M", dest="listeners", action="store_true",
                      help="show the listeners as INI sections ([listener:NAME], endpoint, "
                           "overrides); NAME... selects listeners by name")
    mode.add_argument("--check", action="store_true",
                      help="load the configuration and open every lookup table it names; "
                           "print nothing and exit 0 when all is well")
    mode.add_argument("--which", action="store_true",
                      help="print the configuration file in effect and how it was found")
    parser.add_argument("-x", dest="expand", action="store_true",
                        help="expand $name references in the values")
    parser.add_argument("-h", dest="hideNames", action="store_true",
                        help="print only the values, without 'name = ' (as postconf -h)")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="parameters to show (with -M: listeners)")
    return parser


def _unknownParameter(name):
    message = f"unknown parameter: {name}"
    if name in LISTENER_KEYS:
        return message + f" ('{name}' is set in a [listener:NAME] section; see {PROG} -M)"
    hint = difflib.get_close_matches(name, list(BY_NAME), n=1)
    return message + (f" (did you mean {hint[0]}?)" if hint else "")


def _checkNames(names):
    unknown = [name for name in names if parameter(name) is None]
    if unknown:
        raise _Failed("\n".join(f"{PROG}: error: {_unknownParameter(n)}" for n in unknown))


def _value(scope, name, expand):
    try:
        return scope.expanded(name) if expand else scope.raw(name)
    except ValueError as e:  # load() has checked, so only a bug gets here
        raise _Failed(f"{PROG}: error: {name}: {e}") from None


def _line(name, value, hideNames):
    if hideNames:
        return value
    return f"{name} = {value}" if value else f"{name} ="


def _parameters(args):
    _checkNames(args.names)
    if args.defaults:
        scope, names = Scope(), args.names or sorted(BY_NAME)
    else:
        config = loadConfig(args.config)
        scope = config.main
        if args.nondefault:
            setHere = {entry.key for entry in scope.setHere()}
            names = [n for n in (args.names or sorted(setHere)) if n in setHere]
        else:
            # Every declared parameter, and transport-named ones set in the file.
            names = args.names or sorted(set(BY_NAME) | {e.key for e in scope.setHere()})
    return [_line(name, _value(scope, name, args.expand), args.hideNames) for name in names]


def _listeners(args):
    if args.hideNames:
        raise _Failed(f"{PROG}: error: -h applies to parameters, not to -M")
    config = loadConfig(args.config)
    listeners = config.listeners
    if args.names:
        byName = {listener.name: listener for listener in listeners}
        unknown = [name for name in args.names if name not in byName]
        if unknown:
            known = ", ".join(byName) or "none"
            raise _Failed("\n".join(f"{PROG}: error: unknown listener: {n} (listeners: {known})" for n in unknown))
        listeners = [byName[name] for name in args.names]
    lines = []
    for listener in listeners:
        if lines:
            lines.append("")
        lines.append(f"[listener:{listener.name}]")
        lines.append(f"endpoint = {listener.endpoint}")
        for entry in listener.params.setHere():
            lines.append(_line(entry.key, _value(listener.params, entry.key, args.expand), False))
    return lines


def _check(args):
    from twisted.internet.task import Clock

    from mta.tables import Tables

    if args.names:
        raise _Failed(f"{PROG}: error: --check takes no parameter names")
    openTables(loadConfig(args.config), Tables(Clock()))
    return []


def _which(args):
    if args.names or args.expand or args.hideNames:
        raise _Failed(f"{PROG}: error: --which takes no other options or names")
    found = findConfig(args.config)
    if found.named and not os.path.lexists(found.path):
        loadConfig(args.config)  # raises ConfigNotFound, with the message of every program
    return [found.describe()]


def main(argv=None):
    """Run mta-config with C{argv} (default: sys.argv[1:]); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sasl-passwd"]:  # the builtin SASL backend's password table (mta.cli.saslpasswd)
        from mta.cli.saslpasswd import main as saslPasswd

        return saslPasswd(argv[1:])
    try:
        args = parseArguments(buildParser(), argv)
    except Done as e:
        return e.status
    try:
        if args.check:
            lines = _check(args)
        elif args.which:
            lines = _which(args)
        elif args.listeners:
            lines = _listeners(args)
        else:
            lines = _parameters(args)
    except ConfigError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except _Failed as e:
        sys.stderr.write(f"{e}\n")
        return 1
    for line in lines:
        sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
