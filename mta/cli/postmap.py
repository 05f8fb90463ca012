"""mta.cli.postmap - mta-postmap, the postmap(1) of mta.

SYNOPSIS
    mta-postmap [-c FILE] [-fNnoprw] [TYPE:]PATH...
    mta-postmap [-c FILE] [-fNnoprw] -i [TYPE:]PATH...
    mta-postmap [-c FILE] [-fNn] -q KEY|- TYPE:NAME...
    mta-postmap [-c FILE] [-fNn] -d KEY|- [TYPE:]PATH...
    mta-postmap [-c FILE] [-fNn] -s TYPE:NAME

DESCRIPTION
    Without -i, -q, -d or -s: build PATH.lmdb from the text file PATH, in
    postmap's input format (texthash's parser: ``key value`` per logical
    line, continuation lines start with white space, # comments), keys
    folded to lower case.  The new database is written to a temporary file
    in the same directory, fsynced and renamed over the old one, so a reader
    sees the old database or the new one, never a part.  The first of
    duplicate keys wins, with a warning (-r: the last; -w: no warning).
    The database gets the text file's permissions (-p: the default ones)
    and, when run as root, its owner (-o: root's).  TYPE defaults to lmdb,
    the only type mta-postmap builds.

    -i      add ``key value`` lines from standard input to PATH.lmdb in
            place, in one transaction under an exclusive fcntl() lock (the
            database is created when it does not exist).
    -q KEY  look KEY up in each TYPE:NAME in turn (any table type mta
            knows) and print the first value found.
    -q -    read keys from standard input, one a line, and print
            ``key<TAB>value`` for each key found (in the first table that
            has it).
    -d KEY  delete KEY from each PATH.lmdb; -d - reads the keys from
            standard input.
    -s      print every entry of the table, ``key<TAB>value`` (lmdb and
            texthash tables).
    -f      do not fold keys to lower case (lmdb and unix tables; texthash
            and inline tables always fold).
    -N, -n  store keys and values with (-N) or without (-n) a trailing NUL
            byte, and look keys up only in that form; by default lookups try
            both and builds append the NUL, as Postfix on Linux does.
    -c FILE the mta configuration file: loaded, so that a broken one is
            reported; mta-postmap reads no parameters from it (tables carry
            their settings in their own files).

EXIT STATUS
    As postmap(1): 0 on success; with -q, 0 when a key was found and 1 when
    none was; with -d, 0 when a key was deleted and 1 when none was.  1 on
    any error, a table that cannot answer now (a temporary lookup error)
    included, with one line on stderr (``mta-postmap: error: ...``).  2 on a
    usage error (argparse).

DIFFERENCES FROM POSTFIX
    Only lmdb is built, updated and deleted from; -q reads every type mta
    knows, -s lmdb and texthash.  A text line with a key and no value, or any
    other syntax error, stops the build with the file and line named
    (postmap warns and skips the line); the old database stays in place.
    Postfix's postmap updates the database in place; mta-postmap renames a
    new one over it and then touches the old file's modification time, so
    that Postfix daemons that have it open notice the change.  The -b, -h,
    -m (header and body queries), -F, -j, -u, -U and -v options are not
    implemented.  A usage error exits with 2, not 1.  Without TYPE, lmdb is
    used (postmap uses default_database_type).

SECURITY
    Run by the administrator on files the administrator controls.  Keys
    from standard input are untrusted only as lookup keys (compared, never
    interpreted).  Values read from tables are printed as they are.

CONFIGURATION
    None (see -c).
"""

import argparse
import os
import sys

from mta.cli import Done, parseArguments

PROG = "mta-postmap"

BUILDABLE = ("lmdb",)
LISTABLE = ("lmdb", "texthash")


class _Failed(Exception):
    """One 'mta-postmap: error:' line, exit status 1."""


def buildParser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Build, query and update lookup tables, as postmap(1) does for Postfix.\n\n"
                    "Without -i, -q, -d or -s: build PATH.lmdb from the text file PATH.",
        epilog=(
            "examples:\n"
            "  mta-postmap lmdb:/etc/mta/virtual               build /etc/mta/virtual.lmdb\n"
            "  mta-postmap -q user@example.com lmdb:/etc/mta/virtual\n"
            "  mta-postmap -q - texthash:/etc/mta/access < keys\n"
            "  mta-postmap -s lmdb:/etc/mta/virtual             list it\n"
            "  echo 'key value' | mta-postmap -i lmdb:/etc/mta/virtual\n"
            "  mta-postmap -d key lmdb:/etc/mta/virtual\n"
            "\n"
            "exit status: 0 success (-q, -d: found); 1 not found, or an error; 2 usage error."
        ),
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="the mta configuration file (checked; no parameter is read)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-q", dest="query", metavar="KEY", help="look KEY up ('-': keys from standard input)")
    mode.add_argument("-d", dest="delete", metavar="KEY", help="delete KEY ('-': keys from standard input)")
    mode.add_argument("-s", dest="dump", action="store_true", help="print every entry of the table")
    mode.add_argument("-i", dest="incremental", action="store_true",
                      help="add 'key value' lines from standard input, in place")
    parser.add_argument("-f", dest="noFold", action="store_true", help="do not fold keys to lower case")
    nul = parser.add_mutually_exclusive_group()
    nul.add_argument("-N", dest="nul", action="store_const", const="1",
                     help="keys and values with a trailing NUL byte")
    nul.add_argument("-n", dest="nul", action="store_const", const="0",
                     help="keys and values without a trailing NUL byte")
    dups = parser.add_mutually_exclusive_group()
    dups.add_argument("-r", dest="duplicates", action="store_const", const="replace",
                      help="a duplicate key replaces the earlier entry")
    dups.add_argument("-w", dest="duplicates", action="store_const", const="ignore",
                      help="a duplicate key is ignored without a warning")
    parser.add_argument("-o", dest="asOwner", action="store_false",
                        help="when run as root, do not give the database the text file's owner")
    parser.add_argument("-p", dest="keepMode", action="store_false",
                        help="do not give the database the text file's permissions")
    parser.add_argument("tables", nargs="+", metavar="TYPE:NAME", help="the tables")
    parser.set_defaults(duplicates="warn")
    return parser


def _split(spec, defaultType="lmdb"):
    tableType, colon, name = spec.partition(":")
    if not colon:
        return defaultType, spec
    if not tableType or not name:
        raise _Failed(f"{spec}: expected TYPE:NAME")
    return tableType, name


def _printable(text):
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _Run:
    def __init__(self, args, stdin, stdout, stderr, reactor):
        self.args = args
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.reactor = reactor
        self.fold = not args.noFold
        self._tables = None

    def warn(self, message):
        self.stderr.write(f"{PROG}: warning: {_printable(message)}\n")

    def readLines(self):
        data = self.stdin.buffer.read() if hasattr(self.stdin, "buffer") else self.stdin.read().encode()
        text = data.decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return lines

    # -- opening tables --------------------------------------------------

    def open(self, spec):
        from mta.tables import Tables

        tableType, name = _split(spec, defaultType="lmdb")
        if tableType == "lmdb":
            from mta.tables.lmdb import LmdbTable

            return LmdbTable(name, self.reactor, fold=self.fold, nul=self.args.nul)
        if tableType == "unix":
            from mta.tables.simple import UnixTable

            return UnixTable(name, self.reactor, fold=self.fold)
        if self._tables is None:
            self._tables = Tables(self.reactor)
        return self._tables.open(f"{tableType}:{name}")

    def writable(self, spec, what):
        tableType, name = _split(spec)
        if tableType not in BUILDABLE:
            raise _Failed(f"{spec}: cannot {what} a {tableType} table (mta-postmap writes {', '.join(BUILDABLE)})")
        return name

    # -- the modes ------------------------------------------------------

    async def query(self):
        from mta.tables import TableTemporaryError

        keys = self.readLines() if self.args.query == "-" else [self.args.query]
        tables = {}
        found = False
        for key in keys:
            for spec in self.args.tables:
                if spec not in tables:  # opened when first needed, as postmap does
                    tables[spec] = self.open(spec)
                table = tables[spec]
                try:
                    value = await table.lookup(key)
                except TableTemporaryError as e:
                    raise _Failed(f"table {table.spec}: query error: {e}") from None
                if value is not None:
                    if self.args.query == "-":
                        self.stdout.write(f"{_printable(key)}\t{value}\n")
                    else:
                        self.stdout.write(f"{value}\n")
                    found = True
                    break
            if found and self.args.query != "-":
                break
        return 0 if found else 1

    async def dump(self):
        spec = self.args.tables[0]
        tableType, name = _split(spec)
        if tableType not in LISTABLE:
            raise _Failed(f"{spec}: cannot list a {tableType} table (mta-postmap lists {', '.join(LISTABLE)})")
        table = self.open(spec)
        entries = table.items()
        if hasattr(table, "close"):
            table.close()
        for key, value in entries:
            self.stdout.write(f"{_printable(key)}\t{_printable(value)}\n")
        return 0

    async def delete(self):
        from mta.tables.lmdb import deleteKeys

        keys = self.readLines() if self.args.delete == "-" else [self.args.delete]
        deleted = 0
        for spec in self.args.tables:
            deleted += deleteKeys(self.writable(spec, "delete from"), keys, fold=self.fold, nul=self.args.nul)
        return 0 if deleted else 1

    async def incremental(self):
        from mta.tables.lmdb import SUFFIX, buildDatabase, updateDatabase
        from mta.tables.texthash import parseTextEntries

        entries = [(key, value) for _, key, value in parseTextEntries("stdin", self.readLines())]
        for spec in self.args.tables:
            path = self.writable(spec, "update")
            if os.path.exists(path + SUFFIX):
                updateDatabase(path, entries, fold=self.fold, nul=self.args.nul,
                               duplicates=self.args.duplicates, warn=self.warn)
            else:
                buildDatabase(path, entries, fold=self.fold, nul=self.args.nul,
                              duplicates=self.args.duplicates, warn=self.warn)
        return 0

    async def build(self):
        from mta.tables import TableError
        from mta.tables.lmdb import buildDatabase, sourceOwnership
        from mta.tables.texthash import parseTextEntries

        for spec in self.args.tables:
            path = self.writable(spec, "build")
            try:
                with open(path, "rb") as f:
                    data = f.read()
                mode, owner = sourceOwnership(path)
            except OSError as e:
                raise TableError(f"open source file {path}: {e.strerror}") from None
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise TableError(f"{path}: not UTF-8 text (byte {e.start})") from None
            entries = parseTextEntries(path, text.replace("\r\n", "\n").split("\n"))
            buildDatabase(path, [(key, value) for _, key, value in entries], fold=self.fold, nul=self.args.nul,
                          duplicates=self.args.duplicates, warn=self.warn,
                          mode=mode if self.args.keepMode else None,
                          owner=owner if self.args.asOwner else None)
        return 0

    async def run(self):
        if self.args.config is not None:
            from mta.config import loadConfig

            loadConfig(self.args.config)
        if self.args.query is not None:
            return await self.query()
        if self.args.dump:
            return await self.dump()
        if self.args.delete is not None:
            return await self.delete()
        if self.args.incremental:
            return await self.incremental()
        return await self.build()


def _drive(coroutine, reactor):
    """Run C{coroutine} to its end: at once when it never waits, else on C{reactor}."""
    from twisted.internet.defer import Deferred

    results = []
    d = Deferred.fromCoroutine(coroutine)
    d.addBoth(results.append)
    if not results:
        d.addBoth(lambda _: reactor.stop())
        reactor.run()
    result = results[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def main(argv=None, stdin=None, stdout=None, stderr=None, reactor=None):
    """Run mta-postmap with C{argv} (default: sys.argv[1:]); return the exit status."""
    from mta.config import ConfigError
    from mta.tables import TableError

    argv = sys.argv[1:] if argv is None else list(argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        args = parseArguments(buildParser(), argv)
    except Done as e:
        return e.status
    if args.dump and len(args.tables) > 1:
        stderr.write(f"{PROG}: error: -s lists one table\n")
        return 2
    if reactor is None:
        from twisted.internet import reactor
    try:
        return _drive(_Run(args, stdin, stdout, stderr, reactor).run(), reactor)
    except (_Failed, TableError, ConfigError) as e:
        stderr.write(f"{PROG}: error: {_printable(str(e))}\n")
        return 1
    except OSError as e:
        stderr.write(f"{PROG}: error: {e.filename or ''}: {e.strerror}\n")
        return 1
    finally:
        stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
