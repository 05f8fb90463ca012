"""pgsql: and mysql: tables against a private PostgreSQL and a private MariaDB, and through a running mta.

Each server (tests/integration/sqlservers.py) is started once per test class
in its own directory on a free loopback port, loaded with a few rows, and
stopped at the end.  Real lookups through the real reactor: values, rows
joined with commas, %u/%d queries, result_format, the domain filter,
expansion_limit, injection attempts in keys, wrong password, refused
connection, SQL error, query timeout, a server restart (the next lookup
works at once), a server that is down (temporary error) and back (works
after retry_interval).  Last, check_recipient_access pgsql:... in a running
mta: the table's REJECT, OK, and 451 4.3.0 while PostgreSQL is stopped.
"""

import os
import smtplib
import time

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mta.tables import Tables, TableTemporaryError
from tests.integration.daemon import Daemon
from tests.integration.peerservers import freePort
from tests.integration.sqlservers import Mariadb, Postgres

pytestmark = pytest.mark.integration

ROWS = [
    ("alice@example.com", "alice@mail.example.com"),
    ("list@example.com", "bob@example.org"),
    ("list@example.com", "carol@example.org"),
    ("@catchall.example", "postmaster@example.com"),
    ("eve@example.com", "eve\r\n550 injected"),
]

INJECTIONS = ["' OR 1=1 --", "x' OR '1'='1", "alice@example.com' --", "'; DROP TABLE alias; --",
              "\\' OR 1=1 #", '" OR ""="', "%' OR 'a'='a"]


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


class _SqlTests:
    """Tests shared by both servers; a subclass sets server, tableType, hosts() and load()."""

    server = None
    tableType = None

    @classmethod
    def writeTable(cls, name, text):
        path = os.path.join(cls.server.directory, name)
        with open(path, "w") as f:
            f.write(text)
        return f"{cls.tableType}:{path}"

    @classmethod
    def standard(cls, name, query, extra="", password="mtapw", hosts=None):
        return cls.writeTable(name, f"""\
# a {cls.tableType} table for the tests
hosts = {hosts or cls.hosts()}
user = mta
password = {password}
dbname = mail
query = {query}
retry_interval = 1
connect_timeout = 5
query_timeout = 2
{extra}""")

    def setUp(self):
        self.tables = Tables(reactor)
        self.opened = []

    @inlineCallbacks
    def tearDown(self):
        for table in self.opened:
            table.close()
        yield sleep(0.05)

    def open(self, spec):
        table = self.tables.open(spec)
        self.opened.append(table)
        return table

    @inlineCallbacks
    def assertTemporary(self, table, key, text):
        with self.assertRaises(TableTemporaryError) as info:
            yield table.lookup(key)
        self.assertIn(text, str(info.exception))

    @inlineCallbacks
    def test_lookups(self):
        table = self.open(self.standard("alias.cf", "SELECT goto FROM alias WHERE address='%s'"))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        self.assertEqual((yield table.lookup("ALICE@Example.COM")), "alice@mail.example.com")  # folded
        self.assertEqual(sorted((yield table.lookup("list@example.com")).split(",")),
                         ["bob@example.org", "carol@example.org"])
        self.assertEqual((yield table.lookup("@catchall.example")), "postmaster@example.com")
        self.assertIsNone((yield table.lookup("nobody@example.com")))
        yield self.assertTemporary(table, "eve@example.com", "NUL, CR or LF")
        # Concurrent lookups on the bounded pool.
        from twisted.internet.defer import gatherResults

        results = yield gatherResults([table.lookup("alice@example.com") for _ in range(12)])
        self.assertEqual(set(results), {"alice@mail.example.com"})

    @inlineCallbacks
    def test_injection_attempts_find_nothing(self):
        table = self.open(self.standard("inject.cf", "SELECT goto FROM alias WHERE address='%s'"))
        for key in INJECTIONS:
            self.assertIsNone((yield table.lookup(key)), key)
        parts = self.open(self.standard(
            "inject2.cf", "SELECT goto FROM alias WHERE address='%u@%d' OR address = %s"))
        for key in INJECTIONS:
            self.assertIsNone((yield parts.lookup(key + "@example.com")), key)
        # The table is still there, with its rows.
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")

    @inlineCallbacks
    def test_parts_result_format_domain_and_limit(self):
        table = self.open(self.standard(
            "parts.cf", "SELECT goto FROM alias WHERE address = '%u@%d' AND '%2' = 'example'",
            extra="result_format = relay:[%d] for %U\ndomain = example.com, catchall.example\n"))
        self.assertEqual((yield table.lookup("alice@example.com")), "relay:[mail.example.com] for alice")
        self.assertIsNone((yield table.lookup("alice")))  # no domain: not queried
        self.assertIsNone((yield table.lookup("alice@other.example")))  # not in domain
        self.assertIsNone((yield table.lookup("@example.com")))  # domain filter: needs a local part
        limited = self.open(self.standard("limit.cf", "SELECT goto FROM alias WHERE address='%s'",
                                          extra="expansion_limit = 1\n"))
        self.assertEqual((yield limited.lookup("alice@example.com")), "alice@mail.example.com")
        yield self.assertTemporary(limited, "list@example.com", "expansion limit exceeded")

    @inlineCallbacks
    def test_legacy_fields(self):
        table = self.open(self.writeTable("legacy.cf", f"""\
hosts = {self.hosts()}
user = mta
password = mtapw
dbname = mail
table = alias
select_field = goto
where_field = address
additional_conditions = AND goto LIKE '%%example.org'
"""))
        self.assertEqual(sorted((yield table.lookup("list@example.com")).split(",")),
                         ["bob@example.org", "carol@example.org"])
        self.assertIsNone((yield table.lookup("alice@example.com")))

    @inlineCallbacks
    def test_wrong_password_is_temporary(self):
        table = self.open(self.standard("badpw.cf", "SELECT goto FROM alias WHERE address='%s'",
                                        password="wrong"))
        yield self.assertTemporary(table, "alice@example.com", "cannot connect")

    @inlineCallbacks
    def test_nothing_listening_is_temporary(self):
        table = self.open(self.standard("refused.cf", "SELECT goto FROM alias WHERE address='%s'",
                                        hosts=f"inet:127.0.0.1:{freePort()}"))
        started = time.monotonic()
        yield self.assertTemporary(table, "alice@example.com", "cannot connect")
        self.assertLess(time.monotonic() - started, 5)
        # Within retry_interval the failed server is not tried again: at once temporary.
        yield self.assertTemporary(table, "alice@example.com", "no server available")

    @inlineCallbacks
    def test_sql_error_is_temporary(self):
        table = self.open(self.standard("missing.cf", "SELECT goto FROM nosuchtable WHERE address='%s'"))
        yield self.assertTemporary(table, "alice@example.com", "query failed")

    @inlineCallbacks
    def test_slow_query_times_out(self):
        table = self.open(self.standard("slow.cf", self.slowQuery))
        started = time.monotonic()
        yield self.assertTemporary(table, "alice@example.com", f"on inet:127.0.0.1:{self.server.port}")
        self.assertLess(time.monotonic() - started, 15)  # query_timeout is 2 s, on each of the two entries

    @inlineCallbacks
    def test_server_restart_down_and_back(self):
        table = self.open(self.standard("restart.cf", "SELECT goto FROM alias WHERE address='%s'"))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        # A restart between two lookups: the stale connection fails, the
        # other entry of the host reconnects, the lookup works.
        type(self).server.stop()
        type(self).server.start()
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        # Down: temporary, never "not found".
        type(self).server.stop()
        try:
            yield self.assertTemporary(table, "alice@example.com", "")
            yield self.assertTemporary(table, "nobody@example.com", "")
        finally:
            type(self).server.start()
        # Back: after retry_interval (1 s here) the servers are tried again.
        yield sleep(1.2)
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")


class PgsqlTests(_SqlTests, unittest.TestCase):
    tableType = "pgsql"
    slowQuery = "SELECT goto FROM alias, pg_sleep(10) WHERE address='%s'"
    timeout = 180

    @classmethod
    def setUpClass(cls):
        cls.server = Postgres().start()
        cls.server.execute(["CREATE DATABASE mail", "CREATE USER mta PASSWORD 'mtapw'"])
        rows = ", ".join(f"('{a}', '{g}')" for a, g in ROWS).replace("\r\n", "' || chr(13) || chr(10) || '")
        cls.server.execute(["CREATE TABLE alias (address text, goto text)",
                            f"INSERT INTO alias VALUES {rows}",
                            "CREATE TABLE access (address text PRIMARY KEY, action text)",
                            "INSERT INTO access VALUES ('blocked@mta.test', 'REJECT no such user'),"
                            " ('welcome@mta.test', 'OK')",
                            "GRANT SELECT ON alias, access TO mta"], dbname="mail")

    @classmethod
    def tearDownClass(cls):
        cls.server.remove()

    @classmethod
    def hosts(cls):
        return f"inet:127.0.0.1:{cls.server.port}"

    @inlineCallbacks
    def test_unix_socket_and_uri(self):
        table = self.open(self.writeTable("uri.cf", f"""\
hosts = postgresql:///mail?host={self.server.directory}&port={self.server.port}&user=mta
query = SELECT goto FROM alias WHERE address='%s'
"""))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        unix = self.open(self.standard("unix.cf", "SELECT goto FROM alias WHERE address='%s'",
                                       hosts=f"unix:{self.server.directory}"))
        # libpq's default port for a socket directory is 5432: ours listens elsewhere.
        yield self.assertTemporary(unix, "alice@example.com", "cannot connect")

    @inlineCallbacks
    def test_select_function(self):
        self.server.execute(["CREATE OR REPLACE FUNCTION lookup_alias(text) RETURNS SETOF text AS "
                             "$$ SELECT goto FROM alias WHERE address = $1 $$ LANGUAGE sql",
                             "GRANT EXECUTE ON FUNCTION lookup_alias(text) TO mta"], dbname="mail")
        table = self.open(self.writeTable("function.cf", f"""\
hosts = {self.hosts()}
user = mta
password = mtapw
dbname = mail
select_function = lookup_alias
"""))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        self.assertIsNone((yield table.lookup("' OR 1=1 --")))

    @inlineCallbacks
    def test_hung_server_times_out(self):
        # A server that holds the connection open and answers nothing: the lookup gives up after
        # connect_timeout + query_timeout on each entry (the waiting thread's socket is shut down).
        table = self.open(self.standard("hung.cf", "SELECT goto FROM alias WHERE address='%s'",
                                        extra="connect_timeout = 1\nquery_timeout = 1\n"))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        self.server.freeze()
        try:
            started = time.monotonic()
            # The connected entry times out; the other one's connect times out too.
            yield self.assertTemporary(table, "alice@example.com", f"cannot connect to inet:127.0.0.1:{self.server.port}")
            self.assertLess(time.monotonic() - started, 10)
        finally:
            self.server.thaw()
        yield sleep(1.2)  # retry_interval
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")

    def test_check_recipient_access_in_a_running_mta(self):
        spec = self.standard("access.cf", "SELECT action FROM access WHERE address='%s'")
        directory = os.path.join(self.server.directory, "mta")
        os.makedirs(directory, exist_ok=True)
        d = Daemon(directory, hold=False, main=f"""\
            smtpd_recipient_restrictions = check_recipient_access {spec},
                check_recipient_access static:HOLD, permit_mynetworks, reject_unauth_destination
            """)
        d.start()
        try:
            with smtplib.SMTP("127.0.0.1", d.port, local_hostname="client.example", timeout=60) as client:
                client.ehlo()
                client.mail("sender@example.org")
                code, text = client.rcpt("blocked@mta.test")
                self.assertEqual((code, text.decode()), (554, "5.7.1 <blocked@mta.test>: Recipient address "
                                                              "rejected: no such user"))
                code, _ = client.rcpt("welcome@mta.test")
                self.assertEqual(code, 250)
                self.server.stop()
                try:
                    code, text = client.rcpt("other@mta.test")
                finally:
                    self.server.start()
                self.assertEqual(code, 451, text)
                self.assertIn(b"4.3.0", text)
        finally:
            code, out, err = d.stop()
        self.assertEqual(code, 0, out + err)
        self.assertNotIn("Traceback", out + err)
        self.assertIn("reject: RCPT from", d.maillogText())


class MysqlTests(_SqlTests, unittest.TestCase):
    tableType = "mysql"
    slowQuery = "SELECT goto FROM alias WHERE address='%s' AND SLEEP(10) = 0"
    timeout = 180

    @classmethod
    def setUpClass(cls):
        cls.server = Mariadb().start()
        rows = ", ".join(f"('{a}', '{g}')" for a, g in ROWS).replace("\r\n", "\\r\\n")
        cls.server.execute([
            "CREATE DATABASE mail CHARACTER SET utf8mb4",
            "CREATE USER 'mta'@'127.0.0.1' IDENTIFIED BY 'mtapw'",
            "CREATE USER 'mta'@'localhost' IDENTIFIED BY 'mtapw'",
            "GRANT SELECT ON mail.* TO 'mta'@'127.0.0.1'",
            "GRANT SELECT ON mail.* TO 'mta'@'localhost'",
        ])
        cls.server.execute(["CREATE TABLE alias (address VARCHAR(200), goto VARCHAR(200))",
                            f"INSERT INTO alias VALUES {rows}"], database="mail")

    @classmethod
    def tearDownClass(cls):
        cls.server.remove()

    @classmethod
    def hosts(cls):
        return f"inet:127.0.0.1:{cls.server.port}"

    @inlineCallbacks
    def test_unix_socket_and_several_hosts(self):
        table = self.open(self.standard("unix.cf", "SELECT goto FROM alias WHERE address='%s'",
                                        hosts=f"unix:{self.server.socket}"))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        # One dead host among live ones: the lookups still work.
        several = self.open(self.standard(
            "several.cf", "SELECT goto FROM alias WHERE address='%s'",
            hosts=f"inet:127.0.0.1:{freePort()} unix:{self.server.socket}, 127.0.0.1:{self.server.port}"))
        for _ in range(4):
            self.assertEqual((yield several.lookup("alice@example.com")), "alice@mail.example.com")

    @inlineCallbacks
    def test_double_quoted_and_backslash_literals(self):
        table = self.open(self.standard(
            "quotes.cf", "SELECT goto FROM alias WHERE address = \"%u@%d\" AND goto <> 'it\\'s'"))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
        self.assertIsNone((yield table.lookup('x" OR "1"="1@example.com')))

    @inlineCallbacks
    def test_no_result_set(self):
        table = self.open(self.standard("noresult.cf", "DO '%s'"))
        yield self.assertTemporary(table, "alice@example.com", "query failed")
        allowed = self.open(self.standard("noresult2.cf", "DO '%s'", extra="require_result_set = no\n"))
        self.assertIsNone((yield allowed.lookup("alice@example.com")))

    @inlineCallbacks
    def test_option_file(self):
        options = os.path.join(self.server.directory, "my.cnf")
        with open(options, "w") as f:
            f.write(f"[mta]\nuser = mta\npassword = mtapw\nport = {self.server.port}\n")
        table = self.open(self.writeTable("options.cf", f"""\
hosts = inet:127.0.0.1:{self.server.port}
dbname = mail
option_file = {options}
option_group = mta
query = SELECT goto FROM alias WHERE address='%s'
"""))
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mail.example.com")
