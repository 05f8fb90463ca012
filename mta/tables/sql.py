"""mta.tables.sql - what the sqlite:, pgsql: and mysql: tables share (Postfix's db_common).

The lookups (key checks, domain filter, query, result formatting) and the
servers (failover, pools, timeouts) are here; the file parser, templates and
query compiler that run at open are in mta.tables.sqlconfig.

The table's configuration file, in Postfix's format (cfg_parser): one
``name = value`` per logical line, a line starting with white space continues
the one before, blank lines and lines whose first non-blank character is #
are ignored; a later setting of a name overrides an earlier one, with a
warning.  Parameters every type knows (sqlite_table(5), pgsql_table(5),
mysql_table(5)):

    query            the SQL query, with %s %u %d %S %U %D %[1-9] %% (below)
    result_format    how each result value is shown (default %s): %s %u %d
                     %S %U %D %[1-9] %%; several values (rows, columns) are
                     joined with commas
    domain           only keys user@domain whose domain is listed are
                     queried: names (exact, case-insensitive), !name, a
                     /file of such patterns, or type:table lookups
    expansion_limit  at most this many values (0 = no limit, the default);
                     more is a temporary error
    table, select_field, where_field, additional_conditions
                     the legacy form, used when there is no query: SELECT
                     select_field FROM table WHERE where_field='%s'
                     additional_conditions

Query escapes, on the (lower-cased) lookup key: %s the key, %u its local
part (the whole key when it has no @), %d its domain, %[1-9] the domain's
labels counted from the right (%1 the top-level domain); %S %U %D are the
same in a query.  In result_format the lower-case escapes apply to the
value and the upper-case ones to the key.  As in Postfix, a key that the
query cannot be filled for is not queried and is "not found": %d or %[1-9]
with a key without a domain, %u or %U with an empty local part
("@domain"), %N with fewer than N labels, an empty key, a key outside
``domain``.  Result values that a result_format cannot be filled for are
skipped; SQL NULL and empty values are skipped (an empty one with a
warning).

SECURITY
    Keys come from the network.  They are never formatted into SQL: the
    query template is compiled at open into SQL text with the driver's
    placeholders (? or %s) and a list of parameter templates; a quoted
    literal holding escapes ('%u@example.com') becomes one bound parameter
    with the expanded text, an unquoted escape one parameter too, so the
    driver's parameter binding does all quoting.  An escape inside a quoted
    identifier ("...", `...`, [...]) cannot be bound and is refused at
    open.  A key that is not valid UTF-8 or holds NUL is never sent ("not
    found", as Postfix skips non-UTF-8 keys); keys over MAX_KEY bytes are
    refused with a temporary error.  Values from the database are
    untrusted in shape: a value holding NUL, CR or LF gives a temporary
    error, never a reply line of its own.  The configuration file holds a
    password: mta never logs it.

CONFIGURATION
    None of its own in mta.ini: everything is in the table's file.  The
    parameters above plus each type's own (see mta.tables.sqlite, pgsql,
    mysql).  Servers: ``hosts`` lists them (commas or white space), tried
    in random order as Postfix (dict_pgsql/dict_mysql: a connected one
    first; a failed one is left alone for retry_interval seconds, default
    60; one host is listed twice so that a restarted server is retried at
    once on a fresh connection); an idle connection is closed after
    idle_interval seconds (default 60).  mta's own: connect_timeout
    (default 10 s) and query_timeout (default 30 s), after which the lookup
    fails with a temporary error.

DEVIATIONS
    Unknown parameters and lines that are not name = value are errors at
    open (TableError with file:line); Postfix ignores unknown names.  Only
    the file form of the table name (an absolute path or one starting with
    '.'); Postfix's main.cf-prefix form is refused.  An unquoted escape is
    bound as a string parameter (Postfix pastes the quoted text without
    quotes: WHERE id=%s with key 1 was a number there; use CAST, or
    quotes).  A value with NUL, CR or LF is a temporary error.
    connect_timeout and query_timeout are mta's (Postfix's libraries wait
    as long as the driver does).
"""

import os
import random
import re
import socket

from twisted.enterprise import adbapi
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableTemporaryError, printable
from mta.tables.dbcommon import DomainFilter
from mta.tables.sqlconfig import COMMON, NETWORK, Templates, compileQuery, legacyQuery, readTableConfig

log = Logger()

MAX_KEY = 1000
MAX_CONNECTIONS = 4  # per server entry: the thread pool's bound


_BAD_VALUE = re.compile(r"[\x00\r\n]")

# -- servers ------------------------------------------------------------------------


UNTRIED, ACTIVE, FAILED = "untried", "active", "failed"


class _Pool(adbapi.ConnectionPool):
    """adbapi's pool, its threads and per-thread connections; the job handles commit and errors."""

    def _runWithConnection(self, func, *args, **kw):
        return func(self, *args, **kw)


class Server:
    """One entry of 'hosts': its connection pool (made at first use) and Postfix's state."""

    def __init__(self, name, connectArgs):
        self.name = name
        self.connectArgs = connectArgs
        self.state = UNTRIED
        self.retryAt = 0.0
        self.pool = None
        self.inflight = 0
        self.idleTimer = None
        self.closing = False


def _inAutocommit(conn):
    setting = getattr(conn, "autocommit", None)
    if callable(setting):  # PyMySQL: get_autocommit()
        getter = getattr(conn, "get_autocommit", None)
        return bool(getter()) if callable(getter) else False
    return bool(setting)


def _autocommit(conn):
    """
    A new connection answers each lookup on its own: no BEGIN before the
    SELECT, no ROLLBACK after it (one round trip a lookup, as Postfix's).
    psycopg2 has an attribute, PyMySQL a method; sqlite3 commits nothing.
    """
    setting = getattr(conn, "autocommit", None)
    if callable(setting):
        setting(True)
    elif setting is not None:
        conn.autocommit = True


def _runQuery(pool, sql, params, holder, singleResult):
    """
    In a pool thread: connect if needed, run the query; (status, rows or
    message).  Rows are None for a statement without a result set; with
    C{singleResult}, a second result set is an error (Postfix's dict_mysql).
    """
    try:
        conn = pool.connect()
    except Exception as e:
        return "connect", _describe(e)
    holder["connection"] = conn
    try:
        cursor = conn.cursor()
        try:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.description is not None else None
            if singleResult:
                while cursor.nextset():
                    if cursor.description is not None:
                        raise _MultipleResults("multiple result sets returning data are not supported")
        finally:
            cursor.close()
        if not _inAutocommit(conn):
            conn.rollback()  # end the read-only transaction the driver may have begun
        return "ok", rows
    except Exception as e:
        try:
            pool.disconnect(conn)
        except Exception:
            pass
        return "query", _describe(e)


class _MultipleResults(Exception):
    pass


def _describe(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return printable(f"{type(e).__name__}: {text}", 300)


@implementer(ILookupTable)
class SqlTable:
    """
    The lookup logic of db_common and the server handling of dict_pgsql and
    dict_mysql; each type gives its dialect, its driver module and how each
    host connects.  See the module docstring.
    """

    pattern = False
    tableType = None
    dialect = None
    driver = None  # the DB-API module's import name
    allColumns = True  # Postfix's sqlite uses the first column only
    singleResult = False  # refuse a second result set (mysql)
    requireResultSet = False  # a statement without a result set is an error (mysql)
    known = COMMON + NETWORK

    def __init__(self, name, reactor, tables=None):
        self.spec = f"{self.tableType}:{name}"
        self._reactor = reactor
        config = readTableConfig(self.spec, name, self.known)
        self.config = config
        self.path = name
        query = config.get("query")
        if query is None:
            query = self.legacyQuery(config)
        where = config.where("query")
        self.templates = Templates(where, query, config.get("result_format", "%s", minimum=1))
        self.sql, self.paramTemplates = compileQuery(where, query, self.dialect)
        self.expansionLimit = config.getInt("expansion_limit", 0)
        self.retryInterval = config.getInt("retry_interval", 60, minimum=1)
        self.idleInterval = config.getInt("idle_interval", 60, minimum=1)
        self.connectTimeout = config.getInt("connect_timeout", 10, minimum=1)
        self.queryTimeout = config.getInt("query_timeout", 30, minimum=1)
        domain = config.get("domain", "")
        self.domainFilter = None
        if domain.strip():
            if tables is None:
                from mta.tables import Tables

                tables = Tables(reactor)
            self.domainFilter = DomainFilter(config.where("domain"), domain, tables)
        self.servers = self.makeServers(config)

    # -- what each type supplies --------------------------------------------------

    def legacyQuery(self, config):
        return legacyQuery(config)

    def makeServers(self, config):
        """The Server entries (Postfix lists a single host twice)."""
        raise NotImplementedError

    def makePool(self, server):
        return _Pool(self.driver, *server.connectArgs[0], cp_min=0, cp_max=MAX_CONNECTIONS,
                     cp_reactor=self._reactor, cp_noisy=False, cp_openfun=_autocommit, **server.connectArgs[1])

    def interrupt(self, connection):
        """After a timeout: make the thread's blocked call on C{connection} return, if possible."""
        try:
            fd = connection.fileno()
        except Exception:
            return
        try:
            s = socket.socket(fileno=os.dup(fd))
        except OSError:
            return
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            s.close()  # the duplicate only

    # -- lookups ------------------------------------------------------------------

    def lookup(self, key):
        return Deferred.fromCoroutine(self._lookup(key))

    async def _lookup(self, key):
        key = key.lower()
        if "\0" in key or not _encodable(key):
            log.info("{spec}: skipping the lookup of a key with NUL or not UTF-8: {key}",
                     spec=self.spec, key=printable(key, 100))
            return None
        if len(key.encode("utf-8")) > MAX_KEY:
            log.warn("{spec}: lookup refused, not sent: key over {limit} bytes", spec=self.spec, limit=MAX_KEY)
            raise TableTemporaryError(f"{self.spec}: key over {MAX_KEY} bytes")
        if self.domainFilter is not None and not await self.domainFilter.admits(key):
            return None
        if not self.templates.keyFits(key):
            return None
        params = tuple(self.templates.expand(t, key) for t in self.paramTemplates)
        rows = await self._query(key, params)
        return self._formatRows(key, rows)

    def _formatRows(self, key, rows):
        results = []
        for row in rows or ():
            columns = row if self.allColumns else row[:1]
            for value in columns:
                if value is None:
                    continue
                if isinstance(value, (bytes, bytearray, memoryview)):
                    try:
                        value = bytes(value).decode("utf-8")
                    except UnicodeDecodeError:
                        log.warn("{spec}: result for {key} is not UTF-8", spec=self.spec, key=printable(key, 100))
                        raise TableTemporaryError(f"{self.spec}: result not UTF-8") from None
                value = str(value)
                if not value:
                    log.warn('table "{spec}": empty lookup result for: "{key}" -- ignored',
                             spec=self.spec, key=printable(key, 100))
                    continue
                if _BAD_VALUE.search(value):
                    log.warn("{spec}: result for {key} holds NUL, CR or LF: {value}", spec=self.spec,
                             key=printable(key, 100), value=printable(value))
                    raise TableTemporaryError(f"{self.spec}: result with NUL, CR or LF")
                formatted = self.templates.formatResult(value, key)
                if formatted is None:
                    continue
                results.append(formatted)
                if self.expansionLimit and len(results) > self.expansionLimit:
                    log.warn("{spec}: Expansion limit exceeded for key: '{key}'", spec=self.spec,
                             key=printable(key, 100))
                    raise TableTemporaryError(f"{self.spec}: expansion limit exceeded")
        return ",".join(results) if results else None

    # -- servers ------------------------------------------------------------------

    def _eligible(self, tried):
        now = self._reactor.seconds()
        servers = [s for s in self.servers if s not in tried]
        active = [s for s in servers if s.state == ACTIVE]
        if active:
            return active
        return [s for s in servers if s.state == UNTRIED or (s.state == FAILED and s.retryAt <= now)]

    async def _query(self, key, params):
        tried = set()
        last = "no server available"
        while True:
            candidates = self._eligible(tried)
            if not candidates:
                log.warn("{spec}: lookup error for {key}: {reason}", spec=self.spec,
                         key=printable(key, 100), reason=last)
                raise TableTemporaryError(f"{self.spec}: {last}")
            server = random.choice(candidates)
            tried.add(server)
            status, result = await self._run(server, params)
            if status == "ok" and result is None and self.requireResultSet:
                status, result = "query", "query returned no result set (require_result_set = yes)"
            if status == "ok":
                server.state = ACTIVE
                return result
            if status == "connect":
                log.warn("{spec}: connect to {type} server {server}: {reason}", spec=self.spec,
                         type=self.tableType, server=server.name, reason=result)
                last = f"cannot connect to {server.name}"
            elif status == "timeout":
                log.warn("{spec}: query to {server}: {reason}", spec=self.spec, server=server.name, reason=result)
                last = f"timeout on {server.name}"
            else:
                log.warn("{spec}: query failed on {server}: {reason}", spec=self.spec, server=server.name,
                         reason=result)
                last = f"query failed on {server.name}"
            self._down(server)

    def _run(self, server, params):
        """One query on C{server}; a Deferred of (status, rows or reason), never an errback."""
        self._cancelIdle(server)
        if server.pool is None:
            server.pool = self.makePool(server)
            server.pool.start()
        server.inflight += 1
        holder = {}
        done = Deferred()
        timeout = self.queryTimeout + self.connectTimeout

        def expired():
            connection = holder.get("connection")
            if connection is not None:
                self.interrupt(connection)
            if not done.called:
                done.callback(("timeout", f"timeout after {timeout:g}s"))

        timer = self._reactor.callLater(timeout, expired)

        def finished(result):
            server.inflight -= 1
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                if not result.check(CancelledError):
                    log.failure("{spec}: query job failed", failure=result, spec=self.spec)
                result = ("query", _describe(result.value))
            if not done.called:
                done.callback(result)
            self._afterRun(server)

        server.pool.runWithConnection(_runQuery, self.sql, params, holder, self.singleResult).addBoth(finished)
        return done

    def _down(self, server):
        server.state = FAILED
        server.retryAt = self._reactor.seconds() + self.retryInterval
        self._cancelIdle(server)
        self._retire(server)

    def _retire(self, server):
        """Close the server's pool once nothing runs on it (its threads are joined)."""
        server.closing = True
        self._afterRun(server)

    def _afterRun(self, server):
        if server.inflight:
            return
        if server.closing:
            server.closing = False
            pool, server.pool = server.pool, None
            if pool is not None:
                pool.close()
            if server.state == ACTIVE:
                server.state = UNTRIED
            return
        if server.pool is not None and server.idleTimer is None:
            server.idleTimer = self._reactor.callLater(self.idleInterval, self._idle, server)

    def _cancelIdle(self, server):
        if server.idleTimer is not None and server.idleTimer.active():
            server.idleTimer.cancel()
        server.idleTimer = None

    def _idle(self, server):
        server.idleTimer = None
        log.debug("{spec}: closing the idle connection to {server}", spec=self.spec, server=server.name)
        self._retire(server)

    def close(self):
        """Close every connection (at once, or when its running query ends); lookups reopen them."""
        for server in self.servers:
            self._cancelIdle(server)
            self._retire(server)
        return succeed(None)


def _encodable(text):
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
