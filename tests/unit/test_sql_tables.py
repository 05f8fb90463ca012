"""mta.tables.sql, sqlite, pgsql, mysql without sockets: the file parser, escapes, the query compiler,
result formatting, the domain filter, and lookups through a fake DB-API module (and sqlite3 on a
file) on a thread pool that runs each job at once, with a Clock for the timers."""

import sys
import types

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel, capturedLogs
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, Tables, TableTemporaryError, tableFactories
from mta.tables import sqlconfig as sqlmod
from mta.tables.mysql import MysqlTable
from mta.tables.pgsql import PgsqlTable
from mta.tables.sqlconfig import Templates, compileQuery, parseHost, parseTableConfig
from mta.tables.sqlite import SqliteTable
from mta.testing import SyncReactor

PG = PgsqlTable.dialect
MY = MysqlTable.dialect
LITE = SqliteTable.dialect


# -- the configuration file -----------------------------------------------------------


KNOWN = frozenset(sqlmod.COMMON + sqlmod.NETWORK)


def test_config_comments_continuations_and_override():
    with capturedLogs() as events:
        config = parseTableConfig("/t.cf", "# comment\n\n  # indented comment\nquery = SELECT a\n"
                                  "   FROM b WHERE c = '%s'\nuser=x\nuser = y\r\n", KNOWN)
    assert config.get("query") == "SELECT a FROM b WHERE c = '%s'"
    assert config.get("user") == "y"
    assert config.where("user") == "/t.cf:7"
    assert any("overriding earlier entry" in e["log_format"] for e in events)


@pytest.mark.parametrize("text, message", [
    ("query = x\nbogus = 1\n", "/t.cf:2: unknown parameter 'bogus'"),
    ("query = x\njust words\n", "/t.cf:2: expected 'name = value'"),
    ("= value\n", "/t.cf:1: expected 'name = value'"),
    ("  continued\n", "/t.cf:1: continuation line"),
    ("two words = x\n", "/t.cf:1: expected 'name = value'"),
])
def test_config_errors_name_file_and_line(text, message):
    with pytest.raises(TableError) as info:
        parseTableConfig("/t.cf", text, KNOWN)
    assert str(info.value).startswith(message)


def test_config_numbers_and_booleans():
    config = parseTableConfig("/t.cf", "expansion_limit = x\nretry_interval = 0\n", KNOWN | {"flag"})
    with pytest.raises(TableError, match="/t.cf:1: 'expansion_limit' is not a number"):
        config.getInt("expansion_limit", 0)
    with pytest.raises(TableError, match="/t.cf:2: 'retry_interval' must be at least 1"):
        config.getInt("retry_interval", 60, minimum=1)
    assert config.getInt("idle_interval", 60) == 60
    assert parseTableConfig("/t", "flag = yes", frozenset({"flag"})).getBool("flag", False) is True
    with pytest.raises(TableError, match="must be yes or no"):
        parseTableConfig("/t", "flag = maybe", frozenset({"flag"})).getBool("flag", False)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_open_errors(tmp_path):
    clock = SyncReactor()
    with pytest.raises(TableError, match="cannot open table"):
        PgsqlTable(str(tmp_path / "missing.cf"), clock)
    with pytest.raises(TableError, match="must be the path of its configuration file"):
        PgsqlTable("pgsqlsource", clock)
    bad = tmp_path / "latin1.cf"
    bad.write_bytes(b"query = SELECT '\xe9'\n")
    with pytest.raises(TableError, match="not UTF-8 text"):
        PgsqlTable(str(bad), clock)
    nothing = write(tmp_path, "nothing.cf", "dbname = mail\n")
    with pytest.raises(TableError, match="missing parameter 'table'"):
        PgsqlTable(nothing, clock)
    nodb = write(tmp_path, "nodb.cf", "hosts = db.example\nquery = SELECT '%s'\n")
    with pytest.raises(TableError, match="requires the dbname setting"):
        PgsqlTable(nodb, clock)
    with pytest.raises(TableError, match="missing parameter 'dbname'"):
        MysqlTable(nodb, clock)
    badesc = write(tmp_path, "badesc.cf", "dbname = m\nquery = SELECT '%x'\n")
    with pytest.raises(TableError, match=r"badesc.cf:2: invalid query template \(bad escape %x\)"):
        PgsqlTable(badesc, clock)
    badres = write(tmp_path, "badres.cf", "dbname = m\nquery = SELECT '%s'\nresult_format = %q\n")
    with pytest.raises(TableError, match="invalid result_format template"):
        PgsqlTable(badres, clock)
    badport = write(tmp_path, "badport.cf", "dbname = m\nhosts = inet:db:99999\nquery = SELECT '%s'\n")
    with pytest.raises(TableError, match="badport.cf:2: bad port '99999'"):
        MysqlTable(badport, clock)


# -- templates --------------------------------------------------------------------------


def test_query_escapes():
    t = Templates("w", "%s %u %d %S %U %D %1 %2 %3 %%", "%s")
    assert t.expand("%s|%u|%d|%S|%U|%D|%1|%2|%3|%%", "user@mail.example.com") == \
        "user@mail.example.com|user|mail.example.com|user@mail.example.com|user|mail.example.com|com|example|mail|%"


def test_keys_the_query_cannot_be_filled_for_are_skipped():
    t = Templates("w", "%u %d", "%s")
    assert t.keyFits("user@example.com")
    assert not t.keyFits("user")  # %d without a domain
    assert not t.keyFits("@example.com")  # %u with an empty local part
    assert not t.keyFits("user@")  # empty domain
    assert not t.keyFits("")  # empty key
    plain = Templates("w", "%s", "%s")
    assert plain.keyFits("user") and plain.keyFits("@example.com")
    user = Templates("w", "%u", "%s")
    assert user.keyFits("user") and not user.keyFits("@example.com")
    assert user.expand("%u", "user") == "user"  # %u of a key without @ is the key


def test_label_escapes_need_enough_labels():
    t = Templates("w", "%3", "%s")
    assert t.keyFits("a@mail.example.com")
    assert not t.keyFits("a@example.com")  # two labels
    assert not t.keyFits("example.com")  # no domain at all
    assert t.keyFits("a@x..example.com")  # empty labels do not count, as Postfix's argv_split
    assert t.expand("%3", "a@x..example.com") == "x"


def test_result_format():
    t = Templates("w", "%s", "[%d] %u %s for %S %U %D %1")
    assert t.formatResult("joe@relay.example", "Bob@Example.Org") == \
        "[relay.example] joe joe@relay.example for Bob@Example.Org Bob Example.Org Org"
    assert t.formatResult("no-domain", "bob@example.org") is None  # %d of a value without one: skipped
    assert t.formatResult("@relay.example", "bob@example.org") is None  # %u of an empty local part
    assert Templates("w", "%s", "%s").formatResult("anything", "k") == "anything"


# -- the query compiler ---------------------------------------------------------------------


@pytest.mark.parametrize("dialect, query, sql, params", [
    (PG, "SELECT a FROM t WHERE k='%s'", "SELECT a FROM t WHERE k=%s", ["%s"]),
    (PG, "SELECT a FROM t WHERE k='%u@example.com' AND d = '%d'", "SELECT a FROM t WHERE k=%s AND d = %s",
     ["%u@example.com", "%d"]),
    (PG, "SELECT a FROM t WHERE k = %s", "SELECT a FROM t WHERE k = %s", ["%s"]),
    (PG, "SELECT a FROM t WHERE k LIKE 'a%%' AND x = '100%%'", "SELECT a FROM t WHERE k LIKE 'a%%' AND x = '100%%'",
     []),
    (PG, "SELECT a FROM t WHERE k LIKE '%%%s'", "SELECT a FROM t WHERE k LIKE %s", ["%%%s"]),
    (PG, "SELECT 'it''s', \"Col%%\" FROM t WHERE k='%s''x'", "SELECT 'it''s', \"Col%%\" FROM t WHERE k=%s",
     ["%s'x"]),
    (PG, "SELECT 5 %% 2 WHERE '%s' <> ''", "SELECT 5 %% 2 WHERE %s <> ''", ["%s"]),
    (LITE, "SELECT a FROM t WHERE k='%s' AND x LIKE 'a%%'", "SELECT a FROM t WHERE k=? AND x LIKE 'a%'", ["%s"]),
    (LITE, "SELECT [a%%b] FROM t WHERE k=%d", "SELECT [a%b] FROM t WHERE k=?", ["%d"]),
    (MY, "SELECT a FROM t WHERE k=\"%s\" AND x='it\\'s' AND y = 'a\\%%'",
     "SELECT a FROM t WHERE k=%s AND x='it\\'s' AND y = 'a\\%%'", ["%s"]),
    (MY, "SELECT a FROM t WHERE k='%u\\n%d'", "SELECT a FROM t WHERE k=%s", ["%u\n%d"]),
])
def test_compile_query(dialect, query, sql, params):
    assert compileQuery("w", query, dialect) == (sql, params)


@pytest.mark.parametrize("dialect, query, message", [
    (PG, "SELECT a FROM \"%d\" WHERE k='%s'", "quoted identifier cannot be bound"),
    (MY, "SELECT a FROM `%d` WHERE k='%s'", "quoted identifier cannot be bound"),
    (PG, "SELECT a FROM t WHERE k='%s", "unterminated string literal"),
    (PG, "SELECT \"a FROM t", "unterminated quoted identifier"),
])
def test_compile_query_errors(dialect, query, message):
    with pytest.raises(TableError, match=message):
        compileQuery("/t.cf:3", query, dialect)


def test_parse_host():
    assert parseHost("w", "inet:db.example:5433", 5432) == ("inet", "db.example", 5433)
    assert parseHost("w", "db.example", 5432) == ("inet", "db.example", 5432)
    assert parseHost("w", "[::1]:3307", 3306) == ("inet", "::1", 3307)
    assert parseHost("w", "unix:/run/postgresql", 5432) == ("unix", "/run/postgresql", None)
    assert parseHost("w", "/run/postgresql", 5432) == ("unix", "/run/postgresql", None)
    for bad in ("unix:relative", "db:port", "[::1", "bad host!", "inet::5"):
        with pytest.raises(TableError):
            parseHost("w", bad, 1)


# -- a fake DB-API module ---------------------------------------------------------------------


class FakeDb:
    """The server side of the fake driver: what connect() and execute() do, and what they saw."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.connects = []
        self.executed = []
        self.connectError = None
        self.executeErrors = []  # raised by the next executes, in order
        self.results = [[("value",)]]  # result sets of the next execute; None: no result set
        self.closed = 0


FAKE = FakeDb()


class FakeError(Exception):
    pass


class FakeCursor:
    def __init__(self, conn):
        self.conn = conn
        self.description = None
        self._sets = []

    def execute(self, sql, params):
        FAKE.executed.append((sql, params))
        if self.conn.closed:
            raise FakeError("connection already closed")
        if FAKE.executeErrors:
            raise FAKE.executeErrors.pop(0)
        self._sets = list(FAKE.results)
        self._advance()

    def _advance(self):
        current = self._sets.pop(0) if self._sets else None
        self._rows = current
        self.description = None if current is None else [("col",)]

    def fetchall(self):
        return list(self._rows)

    def nextset(self):
        if not self._sets:
            return None
        self._advance()
        return True

    def close(self):
        pass


class FakeConnection:
    def __init__(self, kwargs):
        self.kwargs = kwargs
        self.closed = False

    def cursor(self):
        return FakeCursor(self)

    def rollback(self):
        pass

    def commit(self):
        pass

    def close(self):
        self.closed = True
        FAKE.closed += 1

    def fileno(self):
        raise FakeError("no socket")


fakedbapi = types.ModuleType("mta_test_fakedbapi")
fakedbapi.apilevel = "2.0"
fakedbapi.threadsafety = 1


def _connect(*args, **kwargs):
    FAKE.connects.append((args, kwargs))
    if FAKE.connectError is not None:
        raise FAKE.connectError
    return FakeConnection(kwargs)


fakedbapi.connect = _connect
sys.modules["mta_test_fakedbapi"] = fakedbapi


class SyncThreadPool:
    """Runs each job at once (mta.testing.SyncPool), or holds them when C{hold} is set."""

    holdAll = False

    def __init__(self):
        self.started = self.stopped = False
        self.hold = self.holdAll
        self.held = []

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def callInThreadWithCallback(self, onResult, func, *args, **kw):
        if self.hold:
            self.held.append((onResult, func, args, kw))
            return
        from mta.testing import SyncPool

        SyncPool().callInThreadWithCallback(onResult, func, *args, **kw)


class FakeReactor(SyncReactor):
    """A Clock whose threads run at once; enough of IReactorCore for adbapi's pool."""

    def callWhenRunning(self, f, *args, **kw):
        return None

    def addSystemEventTrigger(self, *args, **kw):
        return ("trigger", args)

    def removeSystemEventTrigger(self, trigger):
        pass


class Harness:
    """Opens a table of C{cls} whose pools run on SyncThreadPool, with the fake driver."""

    def __init__(self, tmp_path, cls, text, name="t.cf"):
        FAKE.reset()
        self.reactor = FakeReactor()
        self.pools = []
        path = write(tmp_path, name, text)
        self.table = cls(path, self.reactor)
        self.table.driver = "mta_test_fakedbapi"
        original = self.table.makePool

        def makePool(server):
            pool = original(server)
            pool.threadpool = SyncThreadPool()
            self.pools.append(pool)
            return pool

        self.table.makePool = makePool

    def lookup(self, key):
        results = []
        self.table.lookup(key).addBoth(results.append)
        assert results, "the lookup did not finish"
        result = results[0]
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result


PGCONF = """\
hosts = inet:127.0.0.1:5432
user = mta
password = secret
dbname = mail
query = SELECT goto FROM alias WHERE address = '%s'
"""


def test_lookup_binds_the_folded_key(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF)
    verifyObject(ILookupTable, h.table)
    assert h.table.pattern is False
    FAKE.results = [[("one",), ("two",), (None,)]]
    assert h.lookup("Alice@Example.COM") == "one,two"
    assert FAKE.executed == [("SELECT goto FROM alias WHERE address = %s", ("alice@example.com",))]
    [(args, kwargs)] = FAKE.connects
    assert kwargs == {"connect_timeout": 10, "options": "-c statement_timeout=30000", "client_encoding": "UTF8",
                      "application_name": "mta", "dbname": "mail", "user": "mta", "password": "secret",
                      "host": "127.0.0.1", "port": 5432}
    FAKE.results = [[]]
    assert h.lookup("nobody@example.com") is None
    assert len(FAKE.connects) == 1  # the connection is kept


def test_injection_attempts_are_bound_as_values(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF.replace("'%s'", "'%u@%d' OR x = %s"))
    FAKE.results = [[]]
    key = "' or 1=1 --@example.com"
    assert h.lookup(key) is None
    assert FAKE.executed == [("SELECT goto FROM alias WHERE address = %s OR x = %s", (key, key))]


def test_all_columns_rows_joined_empty_and_null_skipped(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF + "result_format = <%s>\n")
    FAKE.results = [[("a", "b"), ("", None), (3, b"bytes")]]
    with capturedLogs() as events:
        assert h.lookup("k@example.com") == "<a>,<b>,<3>,<bytes>"
    assert any("empty lookup result" in e["log_format"] for e in events)


@pytest.mark.parametrize("value", ["a\nb", "a\r\n550 x", "a\0b"])
def test_values_with_line_breaks_are_temporary(tmp_path, value):
    h = Harness(tmp_path, PgsqlTable, PGCONF)
    FAKE.results = [[(value,)]]
    with pytest.raises(TableTemporaryError, match="NUL, CR or LF"):
        h.lookup("k@example.com")


def test_value_not_utf8_is_temporary(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF)
    FAKE.results = [[(b"\xff",)]]
    with pytest.raises(TableTemporaryError, match="not UTF-8"):
        h.lookup("k@example.com")


def test_expansion_limit(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF + "expansion_limit = 2\n")
    FAKE.results = [[("a",), ("b",)]]
    assert h.lookup("k@example.com") == "a,b"
    FAKE.results = [[("a",), ("b",), ("c",)]]
    with pytest.raises(TableTemporaryError, match="expansion limit exceeded"):
        h.lookup("k@example.com")


def test_keys_never_sent(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF.replace("'%s'", "'%u' AND d = '%d'"))
    assert h.lookup("bare") is None  # no domain for %d
    assert h.lookup("@example.com") is None  # no local part for %u
    assert h.lookup("") is None
    assert h.lookup("a\0b@example.com") is None  # NUL cannot be quoted
    assert h.lookup("a\udcff@example.com") is None  # not UTF-8
    with pytest.raises(TableTemporaryError, match="over 1000 bytes"):
        h.lookup("x" * 1000 + "@example.com")
    assert FAKE.executed == [] and FAKE.connects == []


def test_domain_filter(tmp_path):
    patterns = write(tmp_path, "domains", "# listed\nfile.example, other.example\n")
    h = Harness(tmp_path, PgsqlTable, PGCONF + f"domain = Example.com, !bad.example, inline:{{bad.example=1, "
                                                f"table.example=1}}, {patterns}\n")
    FAKE.results = [[("v",)]]
    assert h.lookup("a@example.com") == "v"
    assert h.lookup("a@table.example") == "v"
    assert h.lookup("a@file.example") == "v"
    assert len(FAKE.executed) == 3
    for key in ("a@bad.example", "a@sub.example.com", "a@elsewhere.example", "@example.com", "example.com", "a"):
        assert h.lookup(key) is None, key
    assert len(FAKE.executed) == 3


def test_domain_table_failure_is_temporary(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF + "domain = socketmap:inet:127.0.0.1:1:x\n")

    class Broken:
        def lookup(self, key):
            d = Deferred()
            d.errback(TableTemporaryError("down"))
            return d

    h.table.domainFilter._items = [(False, Broken())]
    with pytest.raises(TableTemporaryError):
        h.lookup("a@example.com")


def test_connect_failure_tries_both_entries_then_waits_retry_interval(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF)
    FAKE.connectError = FakeError('could not connect to server: Connection refused\n\tIs the server running?')
    with capturedLogs() as events:
        with pytest.raises(TableTemporaryError, match="cannot connect to inet:127.0.0.1:5432"):
            h.lookup("k@example.com")
    assert len(FAKE.connects) == 2  # one host is listed twice, as Postfix
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert "Connection refused Is the server running?" in warnings[0]["reason"]
    assert "secret" not in repr(events)
    with pytest.raises(TableTemporaryError, match="no server available"):
        h.lookup("k@example.com")
    assert len(FAKE.connects) == 2  # not tried within retry_interval
    FAKE.connectError = None
    h.reactor.advance(60)
    assert h.lookup("k@example.com") == "value"


def test_stale_connection_after_a_restart_is_replaced_at_once(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF)
    assert h.lookup("k@example.com") == "value"
    FAKE.executeErrors = [FakeError("server closed the connection unexpectedly")]
    assert h.lookup("k@example.com") == "value"  # the other entry connects
    assert len(FAKE.connects) == 2 and FAKE.closed == 1
    # Both entries failing: temporary.
    FAKE.executeErrors = [FakeError("relation does not exist")] * 2
    with pytest.raises(TableTemporaryError, match="query failed"):
        h.lookup("k@example.com")


def test_timeout_interrupts_and_fails_over(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF + "connect_timeout = 2\nquery_timeout = 3\n")
    assert h.lookup("k@example.com") == "value"
    first = h.pools[0]
    first.threadpool.hold = True  # the server stops answering
    interrupted = []
    h.table.interrupt = interrupted.append
    results = []
    h.table.lookup("k@example.com").addBoth(results.append)
    assert results == []
    [(onResult, func, args, kw)] = first.threadpool.held
    holder = args[3]
    holder["connection"] = "the connection"  # as the thread records it once connected
    h.reactor.advance(4.9)
    assert results == [] and interrupted == []
    h.reactor.advance(0.1)
    # Timed out after connect_timeout + query_timeout: the socket is cut, the other entry answers.
    assert interrupted == ["the connection"]
    assert results == ["value"]
    # The held job ends later: only then is its pool closed (its threads joined).
    assert not first.threadpool.stopped
    onResult(True, ("query", "FakeError: interrupted"))
    assert first.threadpool.stopped


def test_timeout_everywhere_is_temporary(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF + "connect_timeout = 1\nquery_timeout = 1\n")
    SyncThreadPool.holdAll = True
    try:
        results = []
        h.table.lookup("k@example.com").addBoth(results.append)
        h.reactor.advance(2)
        assert results == []
        h.reactor.advance(2)
    finally:
        SyncThreadPool.holdAll = False
    assert len(results) == 1 and results[0].check(TableTemporaryError)
    assert "timeout on inet:127.0.0.1:5432" in str(results[0].value)
    assert len(h.pools) == 2


def test_idle_connections_close_and_reopen(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF + "idle_interval = 5\n")
    assert h.lookup("k@example.com") == "value"
    pool = h.pools[0]
    h.reactor.advance(4)
    assert not pool.threadpool.stopped
    h.reactor.advance(2)
    assert pool.threadpool.stopped and FAKE.closed == 1
    assert h.lookup("k@example.com") == "value"
    assert len(h.pools) == 2 and len(FAKE.connects) == 2


def test_close_then_lookup_reopens(tmp_path):
    h = Harness(tmp_path, PgsqlTable, PGCONF)
    assert h.lookup("k@example.com") == "value"
    h.table.close()
    assert h.pools[0].threadpool.stopped
    assert not h.reactor.getDelayedCalls()
    assert h.lookup("k@example.com") == "value"


def test_pgsql_hosts_forms_and_legacy(tmp_path):
    h = Harness(tmp_path, PgsqlTable, "hosts = postgresql://mta:pw@db.example/mail, unix:/run/postgresql, db2\n"
                                      "dbname = mail\nselect_function = lookup_alias\n")
    assert h.table.sql == "SELECT lookup_alias(%s)"
    names = [s.name for s in h.table.servers]
    assert names == ["db.example/mail", "unix:/run/postgresql", "db2"]  # the URI's password is not shown
    assert h.table.servers[0].connectArgs[0] == ("postgresql://mta:pw@db.example/mail",)
    assert h.table.servers[1].connectArgs[1]["host"] == "/run/postgresql"
    assert h.table.servers[2].connectArgs[1]["port"] == 5432
    legacy = Harness(tmp_path, PgsqlTable, "dbname = m\ntable = alias\nselect_field = goto\nwhere_field = address\n"
                                           "additional_conditions = AND active\n", name="legacy.cf")
    assert legacy.table.sql == "SELECT goto FROM alias WHERE address=%s AND active"
    assert [s.name for s in legacy.table.servers] == ["localhost", "localhost"]


def test_mysql_connection_arguments(tmp_path):
    h = Harness(tmp_path, MysqlTable, "hosts = localhost, unix:/tmp/my.sock, inet:db.example:3307\nuser = u\n"
                                      "password = p\ndbname = mail\nquery = SELECT a FROM t WHERE k='%s'\n"
                                      "tls_CAfile = /etc/ssl/ca.pem\ntls_verify_cert = yes\n"
                                      "option_file = /etc/mta/my.cnf\n")
    args = [s.connectArgs[1] for s in h.table.servers]
    assert args[0]["unix_socket"] == "/run/mysqld/mysqld.sock"
    assert args[1]["unix_socket"] == "/tmp/my.sock"
    assert (args[2]["host"], args[2]["port"]) == ("db.example", 3307)
    assert args[2]["ssl"] == {"ca": "/etc/ssl/ca.pem", "check_hostname": True}
    assert args[2]["read_default_file"] == "/etc/mta/my.cnf" and args[2]["read_default_group"] == "client"
    assert (args[2]["charset"], args[2]["database"], args[2]["read_timeout"]) == ("utf8mb4", "mail", 30)


def test_mysql_result_sets(tmp_path):
    h = Harness(tmp_path, MysqlTable, "dbname = mail\nquery = CALL lookup('%s')\n")
    FAKE.results = [[("a",)], None]
    assert h.lookup("k") == "a"
    FAKE.results = [[("a",)], [("b",)]]
    with pytest.raises(TableTemporaryError, match="query failed"):
        h.lookup("k")
    h.reactor.advance(60)  # past retry_interval
    FAKE.results = [None]
    with pytest.raises(TableTemporaryError, match="query failed"):
        h.lookup("k")
    h2 = Harness(tmp_path, MysqlTable, "dbname = mail\nquery = DO '%s'\nrequire_result_set = no\n", name="b.cf")
    FAKE.results = [None]
    assert h2.lookup("k") is None


# -- sqlite, on a real file -----------------------------------------------------------------


@pytest.fixture
def sqliteDb(tmp_path):
    import sqlite3

    path = tmp_path / "db.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE alias (address TEXT, goto TEXT, extra TEXT)")
    db.executemany("INSERT INTO alias VALUES (?, ?, ?)", [
        ("alice@example.com", "alice@mail.example.com", "ignored"),
        ("list@example.com", "bob@example.org", None),
        ("list@example.com", "carol@example.org", None),
        ("100%@example.com", "percent", None),
    ])
    db.commit()
    db.close()
    return str(path)


class SqliteHarness(Harness):
    def __init__(self, tmp_path, text, name="lite.cf"):
        FAKE.reset()
        self.reactor = FakeReactor()
        self.pools = []
        self.table = SqliteTable(write(tmp_path, name, text), self.reactor)
        original = self.table.makePool

        def makePool(server):
            pool = original(server)
            pool.threadpool = SyncThreadPool()
            self.pools.append(pool)
            return pool

        self.table.makePool = makePool


def test_sqlite_lookups(tmp_path, sqliteDb):
    h = SqliteHarness(tmp_path, f"dbpath = {sqliteDb}\nquery = SELECT goto, extra FROM alias WHERE address='%s'\n")
    assert h.lookup("ALICE@example.com") == "alice@mail.example.com"  # the first column only
    assert h.lookup("list@example.com") == "bob@example.org,carol@example.org"
    assert h.lookup("100%@example.com") == "percent"
    for key in ("' OR 1=1 --", "x' OR '1'='1", "alice@example.com' --"):
        assert h.lookup(key) is None
    legacy = SqliteHarness(tmp_path, f"dbpath = {sqliteDb}\ntable = alias\nselect_field = goto\n"
                                     f"where_field = address\nadditional_conditions = AND goto LIKE 'c%%'\n",
                           name="legacy.cf")
    assert legacy.lookup("list@example.com") == "carol@example.org"


def test_sqlite_open_checks_the_database_and_query(tmp_path, sqliteDb):
    clock = FakeReactor()
    with pytest.raises(TableError, match="cannot open database"):
        SqliteTable(write(tmp_path, "a.cf", f"dbpath = {tmp_path}/missing.sqlite\nquery = SELECT 1\n"), clock)
    with pytest.raises(TableError, match=r"b.cf:2: SQL prepare failed: no such table: nosuch"):
        SqliteTable(write(tmp_path, "b.cf", f"dbpath = {sqliteDb}\nquery = SELECT a FROM nosuch WHERE k='%s'\n"),
                    clock)
    with pytest.raises(TableError, match="missing parameter 'dbpath'"):
        SqliteTable(write(tmp_path, "c.cf", "query = SELECT 1\n"), clock)
    with pytest.raises(TableError, match="unknown parameter 'hosts'"):
        SqliteTable(write(tmp_path, "d.cf", f"dbpath = {sqliteDb}\nhosts = x\nquery = SELECT 1\n"), clock)


def test_sqlite_error_at_lookup_is_temporary_and_retried_next_time(tmp_path, sqliteDb):
    import sqlite3

    h = SqliteHarness(tmp_path, f"dbpath = {sqliteDb}\nquery = SELECT goto FROM alias WHERE address='%s'\n")
    assert h.lookup("alice@example.com") == "alice@mail.example.com"
    h.table.close()
    db = sqlite3.connect(sqliteDb)
    db.execute("ALTER TABLE alias RENAME TO gone")
    db.commit()
    with pytest.raises(TableTemporaryError, match="query failed"):
        h.lookup("alice@example.com")
    db.execute("ALTER TABLE gone RENAME TO alias")
    db.commit()
    db.close()
    assert h.lookup("alice@example.com") == "alice@mail.example.com"  # no retry_interval for a file


def test_plugins_are_registered(tmp_path, sqliteDb):
    factories = tableFactories()
    assert {"sqlite", "pgsql", "mysql"} <= set(factories)
    spec = "sqlite:" + write(tmp_path, "p.cf", f"dbpath = {sqliteDb}\nquery = SELECT goto FROM alias WHERE "
                                                f"address='%s'\n")
    table = Tables(FakeReactor()).open(spec)
    assert isinstance(table, SqliteTable) and table.spec == spec
    assert isinstance(Tables(FakeReactor()).open("pgsql:" + write(tmp_path, "q.cf", PGCONF)), PgsqlTable)


def test_connections_run_in_autocommit_so_a_lookup_is_one_round_trip():
    """No BEGIN before the SELECT and no ROLLBACK after it (psycopg2's attribute, PyMySQL's method)."""
    from mta.tables.sql import _autocommit, _inAutocommit

    class Psycopg:
        autocommit = False

    class PyMysql:
        def __init__(self):
            self.on = False

        def autocommit(self, value):
            self.on = value

        def get_autocommit(self):
            return self.on

    class Sqlite:
        pass

    for conn in (Psycopg(), PyMysql()):
        assert not _inAutocommit(conn)
        _autocommit(conn)
        assert _inAutocommit(conn)
    _autocommit(Sqlite())
    assert not _inAutocommit(Sqlite())
