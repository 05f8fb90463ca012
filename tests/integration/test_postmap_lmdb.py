"""mta-postmap and lmdb: against Postfix's own postmap (postfix-lmdb), both directions.

Postfix's postmap runs with a private configuration directory (-c) whose
main.cf sets only compatibility_level = 3.6, as Debian's does (so SMTPUTF8 is
on and keys are case-folded as Unicode) (lmdb is found through the system's
dynamicmaps.cf, which postfix-lmdb fills).  mta-postmap runs as a child
process with this checkout importable.

1. Databases built by Postfix (keys and values with a trailing NUL, its
   default on Linux, and without, -n) are read by mta-postmap -q, -q - and
   -s and by the lmdb: table, with the same answers as postmap -q gives.
2. Databases built by mta-postmap (both forms) are read by postmap -q,
   -q - and -s with the same answers.
3. In-place updates by one program (-i, -d) are seen by the other; an open
   lmdb: table sees Postfix's in-place update and mta-postmap's rename.
4. A reader waits (without blocking the reactor) while a writer holds the
   fcntl() lock, as Postfix's writers do, and gives a temporary error when
   the lock is held too long.
5. The other table types both programs know (unix:, unionmap:, pipemap:,
   fail:) answer alike.
6. A running mta uses lmdb: databases built by Postfix in
   check_recipient_access (partial keys, case folding), answers 4xx for a
   unionmap with a fail: component, and follows a rebuild by mta-postmap.
"""

import os
import random
import shutil
import smtplib
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial import unittest

from mta.tables import TableTemporaryError
from mta.tables import lmdb as mlmdb
from mta.tables.lmdb import LmdbTable
from tests.integration.daemon import ROOT, Daemon, environment
from tests.integration.peers import requireProgram

pytestmark = pytest.mark.integration

TIMEOUT = 60


def postfixMapTypes():
    return subprocess.run([requireProgram("postconf"), "-m"], capture_output=True, text=True, timeout=TIMEOUT).stdout.split()


class PostmapTests(unittest.TestCase):
    def setUp(self):
        self.postmapProgram = requireProgram("postmap")
        assert "lmdb" in postfixMapTypes(), "Postfix has no lmdb support; scripts/test installs postfix-lmdb"
        self.dir = tempfile.mkdtemp(prefix="mta-postmap-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.confDir = os.path.join(self.dir, "postfix")
        os.mkdir(self.confDir)
        with open(os.path.join(self.confDir, "main.cf"), "w") as f:
            f.write("compatibility_level = 3.6\n")  # Debian's main.cf: SMTPUTF8 on, keys case-folded as Unicode
        rng = random.Random(1234)
        self.entries = {"user@example.com": "local@here", "multi": "first part  second part",
                        "@example.org": "catchall@example.net", "utf8": "värde ü"}
        for i in range(2000):
            key = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789.-_@") for _ in range(rng.randint(1, 60)))
            self.entries.setdefault(f"{key}{i}", f"value-{i} " + "x" * rng.randint(1, 300))
        self.source = os.path.join(self.dir, "virtual")
        with open(self.source, "w") as f:
            f.write("# a table for both programs\n")
            for key, value in self.entries.items():
                if key == "multi":
                    f.write("MULTI first part\n  second part\n")
                elif key == "user@example.com":
                    f.write("User@Example.COM local@here\n")
                else:
                    f.write(f"{key}\t{value}\n")

    def postfix(self, *args, stdin=None, check=True):
        result = subprocess.run([self.postmapProgram, "-c", self.confDir, *args], input=stdin, capture_output=True,
                                text=True, timeout=TIMEOUT)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def mta(self, *args, stdin=None, check=True):
        result = subprocess.run([sys.executable, "-m", "mta.cli.postmap", *args], input=stdin, capture_output=True,
                                text=True, timeout=TIMEOUT, env=environment(), cwd=ROOT)
        if check:
            assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        return result

    def rawForm(self):
        import lmdb

        env = lmdb.open(self.source + ".lmdb", subdir=False, lock=False, readonly=True)
        with env.begin() as txn:
            key = next(iter(txn.cursor()))[0]
        env.close()
        return key.endswith(b"\0")

    def queryAll(self, program, spec):
        keys = list(self.entries) + ["USER@EXAMPLE.COM", "nobody", "Multi", "x" * 400]
        result = program("-q", "-", spec, stdin="".join(k + "\n" for k in keys))
        return result.stdout

    def checkBoth(self, spec):
        expected = "".join(f"{k}\t{v}\n" for k, v in self.entries.items())
        expected += "USER@EXAMPLE.COM\tlocal@here\nMulti\tfirst part  second part\n"
        ours, theirs = self.queryAll(self.mta, spec), self.queryAll(self.postfix, spec)
        assert ours == theirs
        assert sorted(ours.splitlines()) == sorted(expected.splitlines())
        assert sorted(self.mta("-s", spec).stdout.splitlines()) == sorted(self.postfix("-s", spec).stdout.splitlines())
        for key in ("user@example.com", "MULTI", "utf8"):
            assert self.mta("-q", key, spec).stdout == self.postfix("-q", key, spec).stdout != ""
        assert self.mta("-q", "nobody", spec, check=False).returncode == \
            self.postfix("-q", "nobody", spec, check=False).returncode == 1

    def test_postfix_builds_mta_reads(self):
        self.postfix(f"lmdb:{self.source}")
        assert self.rawForm() is True  # Postfix's default on Linux: with the NUL
        self.checkBoth(f"lmdb:{self.source}")
        table = LmdbTable(self.source, Clock())
        self.addCleanup(table.close)
        for key, value in self.entries.items():
            d = table.lookup(key)
            assert self.successResultOf(d) == value

    def test_postfix_builds_without_nul_mta_reads(self):
        self.postfix("-n", f"lmdb:{self.source}")
        assert self.rawForm() is False
        self.checkBoth(f"lmdb:{self.source}")
        assert self.mta("-N", "-q", "multi", f"lmdb:{self.source}", check=False).returncode == 1

    def test_mta_builds_postfix_reads(self):
        self.mta(f"lmdb:{self.source}")
        assert self.rawForm() is True
        self.checkBoth(f"lmdb:{self.source}")

    def test_mta_builds_without_nul_postfix_reads(self):
        self.mta("-n", f"lmdb:{self.source}")
        assert self.rawForm() is False
        self.checkBoth(f"lmdb:{self.source}")

    def test_same_duplicate_and_syntax_handling(self):
        with open(self.source, "a") as f:
            f.write("multi another value\n")
        ours = self.mta(f"lmdb:{self.source}")
        assert self.mta("-q", "multi", f"lmdb:{self.source}").stdout == "first part  second part\n"
        theirs = self.postfix(f"lmdb:{self.source}")
        assert self.postfix("-q", "multi", f"lmdb:{self.source}").stdout == "first part  second part\n"
        assert 'duplicate entry: "multi"' in ours.stderr and 'duplicate entry: "multi"' in theirs.stderr

    def test_same_parse_of_a_tricky_source(self):
        with open(self.source, "w") as f:
            f.write("# comment\n"
                    "a\tone   \n"
                    "# a comment inside a continued entry\n"
                    "\t two\t\n"
                    "\n"
                    "B    \t  spaced   value  \n"
                    "   # an indented comment\n"
                    "c=d value=with=equals\n"
                    "key # not a comment\n"
                    "Ünïcode välue\n"
                    "Straße ß\n"
                    "ΣΑΣ sigma\n")
        self.mta(f"lmdb:{self.source}")
        ours = self.mta("-s", f"lmdb:{self.source}").stdout
        self.postfix(f"lmdb:{self.source}")
        theirs = self.postfix("-s", f"lmdb:{self.source}").stdout
        assert ours == theirs
        assert "a\tone   \t two\n" in ours and "b\tspaced   value\n" in ours

    def test_postfix_updates_in_place_mta_sees(self):
        self.mta(f"lmdb:{self.source}")
        clock = Clock()
        table = LmdbTable(self.source, clock)
        self.addCleanup(table.close)
        assert self.successResultOf(table.lookup("multi")) == "first part  second part"
        inode = os.stat(self.source + ".lmdb").st_ino
        self.postfix("-i", f"lmdb:{self.source}", stdin="Added@Example.com by postfix\n")
        self.postfix("-d", "multi", f"lmdb:{self.source}")
        assert os.stat(self.source + ".lmdb").st_ino == inode  # in place
        clock.advance(1)
        assert self.successResultOf(table.lookup("added@example.com")) == "by postfix"
        assert self.successResultOf(table.lookup("multi")) is None
        # Postfix's rebuild truncates in place; the open table sees the new contents.
        with open(self.source, "w") as f:
            f.write("only one\n")
        self.postfix(f"lmdb:{self.source}")
        clock.advance(1)
        assert self.successResultOf(table.lookup("only")) == "one"
        assert self.successResultOf(table.lookup("user@example.com")) is None
        # mta-postmap renames a new file in; the open table follows it.
        with open(self.source, "w") as f:
            f.write("only two\n")
        self.mta(f"lmdb:{self.source}")
        assert os.stat(self.source + ".lmdb").st_ino != inode
        clock.advance(1)
        assert self.successResultOf(table.lookup("only")) == "two"

    def test_open_table_follows_a_map_grown_by_postfix(self):
        # The reader's map is only as big as the file was (plus slmdb's fudge); Postfix's -i grows the file
        # past it in place: the next read adopts the new size instead of failing or answering "not found".
        self.patch(mlmdb, "DEFAULT_MAP_SIZE", 0)
        with open(self.source, "w") as f:
            f.write("first entry\n")
        self.postfix(f"lmdb:{self.source}")
        clock = Clock()
        table = LmdbTable(self.source, clock)
        self.addCleanup(table.close)
        assert self.successResultOf(table.lookup("first")) == "entry"
        before = os.stat(self.source + ".lmdb").st_size
        self.postfix("-i", f"lmdb:{self.source}", stdin="".join(f"key{i} {'v' * 500}{i}\n" for i in range(4000)))
        assert os.stat(self.source + ".lmdb").st_size > before + 1024 * 1024
        assert self.successResultOf(table.lookup("key3999")) == "v" * 500 + "3999"  # before the reopen check
        clock.advance(1)
        assert self.successResultOf(table.lookup("key0")) == "v" * 500 + "0"

    def test_mta_updates_in_place_postfix_sees(self):
        self.postfix(f"lmdb:{self.source}")
        self.mta("-i", f"lmdb:{self.source}", stdin="Added@Example.com by mta\nmulti not replaced\n")
        assert self.postfix("-q", "added@example.com", f"lmdb:{self.source}").stdout == "by mta\n"
        assert self.postfix("-q", "multi", f"lmdb:{self.source}").stdout == "first part  second part\n"
        assert self.mta("-d", "MULTI", f"lmdb:{self.source}").returncode == 0
        assert self.postfix("-q", "multi", f"lmdb:{self.source}", check=False).returncode == 1
        assert self.mta("-d", "multi", f"lmdb:{self.source}", check=False).returncode == 1
        self.postfix("-n", f"lmdb:{self.source}")
        self.mta("-i", f"lmdb:{self.source}", stdin="added again\n")
        assert self.rawForm() is False
        assert self.postfix("-q", "added", f"lmdb:{self.source}").stdout == "again\n"

    def holdLock(self):
        """A child that holds an exclusive fcntl() lock on the database (as Postfix's writers do) until told."""
        script = textwrap.dedent(f"""
            import fcntl, os, sys
            fd = os.open({self.source + '.lmdb'!r}, os.O_RDWR)
            fcntl.lockf(fd, fcntl.LOCK_EX)
            print("locked", flush=True)
            sys.stdin.readline()
        """)
        child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True)
        self.addCleanup(lambda: (child.poll() is None and child.kill(), child.wait()))
        assert child.stdout.readline() == "locked\n"
        return child

    @inlineCallbacks
    def test_reader_waits_for_a_writer(self):
        self.postfix(f"lmdb:{self.source}")
        table = LmdbTable(self.source, reactor)
        self.addCleanup(table.close)
        child = self.holdLock()
        answers = []
        d = table.lookup("multi")
        d.addBoth(answers.append)
        ticks = []
        for _ in range(5):  # the reactor keeps running while the lookup waits
            yield deferLater(reactor, 0.05, ticks.append, 1)
        assert answers == [] and len(ticks) == 5
        child.stdin.write("go\n")
        child.stdin.flush()
        child.wait(TIMEOUT)
        yield deferLater(reactor, 0.3, lambda: None)
        assert answers == ["first part  second part"]

    @inlineCallbacks
    def test_writer_holding_the_lock_too_long(self):
        self.patch(mlmdb, "LOCK_TIMEOUT", 0.5)
        self.postfix(f"lmdb:{self.source}")
        table = LmdbTable(self.source, reactor)
        self.addCleanup(table.close)
        self.holdLock()
        with self.assertRaises(TableTemporaryError):
            yield table.lookup("multi")

    def test_postfix_reader_waits_for_a_lock_holder(self):
        # The same fcntl() lock as mta's writers take: Postfix's reader waits for it, then answers.
        self.mta(f"lmdb:{self.source}")
        child = self.holdLock()
        reader = subprocess.Popen([self.postmapProgram, "-c", self.confDir, "-q", "multi", f"lmdb:{self.source}"],
                                  stdout=subprocess.PIPE, text=True)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                reader.wait(0.5)  # Postfix blocks on the lock too
        finally:
            child.stdin.write("go\n")
            child.stdin.flush()
        out, _ = reader.communicate(timeout=TIMEOUT)
        assert out == "first part  second part\n"

    def test_other_table_types_answer_alike(self):
        for args in (("-q", "root", "unix:passwd.byname"), ("-q", "root", "unix:group.byname"),
                     ("-q", "nosuchuser", "unix:passwd.byname"),
                     ("-q", "a", "unionmap:{inline:{a=1}, inline:{b=2}, inline:{a=3}}"),
                     ("-q", "b", "unionmap:{inline:{a=1}, inline:{b=2}}"),
                     ("-q", "c", "unionmap:{inline:{a=1}, inline:{b=2}}"),
                     ("-q", "a", "pipemap:{inline:{a=b}, inline:{b=c}}"),
                     ("-q", "a", "pipemap:{inline:{a=b}, inline:{x=c}}"),
                     ("-q", "a", "fail:down")):
            ours, theirs = self.mta(*args, check=False), self.postfix(*args, check=False)
            assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), args
            assert bool(ours.stderr) == bool(theirs.stderr), (args, ours.stderr, theirs.stderr)
        lines = self.mta("-q", "-", f"unionmap:{{lmdb:{self.source}, inline:{{multi=x}}}}", stdin="multi\n",
                         check=False)
        assert lines.returncode == 1 and f"{self.source}.lmdb" in lines.stderr  # not built yet: named


# -- through the daemon ----------------------------------------------------------------


def rcpt(daemon, recipient):
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=30) as client:
        client.ehlo()
        client.mail("sender@example.org")
        code, text = client.rcpt(recipient)
        return code, text.decode()


def test_daemon_uses_lmdb_tables_built_by_either_program(tmp_path):
    confDir = tmp_path / "postfix"
    confDir.mkdir()
    (confDir / "main.cf").write_text("compatibility_level = 3.6\n")
    access = tmp_path / "access"
    access.write_text("Blocked@Example.COM  REJECT no thanks\nstrasse.example REJECT by domain\n")
    subprocess.run([requireProgram("postmap"), "-c", str(confDir), f"lmdb:{access}"], check=True, timeout=TIMEOUT)
    d = Daemon(tmp_path, hold=False, main=f"""\
        smtpd_recipient_restrictions = check_recipient_access lmdb:{access},
            check_recipient_access unionmap:{{lmdb:{access}, fail:down}},
            permit_mynetworks, reject_unauth_destination
        """).start()
    try:
        code, text = rcpt(d, "blocked@example.com")
        assert code == 554 and "no thanks" in text, (code, text)
        code, text = rcpt(d, "someone@STRASSE.example")
        assert code == 554 and "by domain" in text, (code, text)
        # unionmap with fail: is a temporary error: 451, never "not found"
        code, text = rcpt(d, "other@mta.test")
        assert code == 451, (code, text)
        # mta-postmap renames a new database in; the daemon reopens it
        access.write_text("other@mta.test REJECT rebuilt by mta\n")
        subprocess.run([sys.executable, "-m", "mta.cli.postmap", f"lmdb:{access}"], check=True, timeout=TIMEOUT,
                       env=environment(), cwd=ROOT)
        time.sleep(1.2)  # the table checks the file at most once a second
        code, text = rcpt(d, "other@mta.test")
        assert code == 554 and "rebuilt by mta" in text, (code, text)
        code, text = rcpt(d, "blocked@example.com")
        assert code == 451, (code, text)  # gone from the table; then unionmap's fail: answers
    finally:
        code, out, err = d.stop()
    assert code == 0 and "Traceback" not in out + err, out + err
