"""mta.tables.sql - what the sqlite:, pgsql: and mysql: tables share (Postfix's db_common).

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
from mta.tables import TableError, TableTemporaryError

log = Logger()

MAX_KEY = 1000
MAX_CONNECTIONS = 4  # per server entry: the thread pool's bound

COMMON = ("query", "result_format", "domain", "expansion_limit",
          "table", "select_field", "where_field", "additional_conditions")
NETWORK = ("hosts", "user", "password", "dbname", "retry_interval", "idle_interval",
           "connect_timeout", "query_timeout")

_BAD_VALUE = re.compile(r"[\x00\r\n]")


def printable(text, limit=200):
    """Everything outside printable ASCII as '?', cut to C{limit} (Postfix's printable())."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


# -- the configuration file ---------------------------------------------------------


class TableConfig:
    """The parsed file: get/getInt/getBool with Postfix's cfg_get_* rules."""

    def __init__(self, path, values, lines):
        self.path = path
        self._values = values
        self._lines = lines

    def __contains__(self, name):
        return name in self._values

    def where(self, name):
        line = self._lines.get(name)
        return f"{self.path}:{line}" if line else self.path

    def get(self, name, default=None, minimum=0, required=False):
        value = self._values.get(name)
        if value is None:
            if required:
                raise TableError(f"{self.path}: missing parameter '{name}'")
            value = default
        if value is not None and len(value) < minimum:
            raise TableError(f"{self.where(name)}: '{name}' must not be empty")
        return value

    def getInt(self, name, default, minimum=0):
        text = self._values.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]+", text):
            raise TableError(f"{self.where(name)}: '{name}' is not a number: {printable(text)!r}")
        value = int(text)
        if value < minimum:
            raise TableError(f"{self.where(name)}: '{name}' must be at least {minimum}")
        return value

    def getBool(self, name, default):
        text = self._values.get(name)
        if text is None:
            return default
        if text.lower() in ("yes", "true", "1"):
            return True
        if text.lower() in ("no", "false", "0"):
            return False
        raise TableError(f"{self.where(name)}: '{name}' must be yes or no")


def parseTableConfig(path, text, known):
    """Parse Postfix cfg_parser lines; TableError names file and line for what is wrong."""
    logical = []
    for number, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if not logical:
                raise TableError(f"{path}:{number}: continuation line with nothing before it")
            logical[-1][1] += " " + stripped
        else:
            logical.append([number, stripped])
    values, lines = {}, {}
    for number, entry in logical:
        name, eq, value = entry.partition("=")
        name = name.strip()
        if not eq or not name or re.search(r"\s", name):
            raise TableError(f"{path}:{number}: expected 'name = value': {printable(entry, 80)!r}")
        if name not in known:
            raise TableError(f"{path}:{number}: unknown parameter '{printable(name, 80)}' "
                             f"(known: {', '.join(sorted(known))})")
        if name in values and values[name] != value.strip():
            log.warn("{path}, line {line}: overriding earlier entry: {name}", path=path, line=number, name=name)
        values[name] = value.strip()
        lines[name] = number
    return TableConfig(path, values, lines)


def readTableConfig(spec, path, known):
    if not path.startswith(("/", ".")):
        raise TableError(f"{spec}: the table name must be the path of its configuration file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TableError(f"{path}: cannot open table: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parseTableConfig(path, text, frozenset(known))


def legacyQuery(config):
    """Postfix's db_common_sql_build_query, for a file without query."""
    table = config.get("table", required=True, minimum=1)
    select = config.get("select_field", required=True, minimum=1)
    where = config.get("where_field", required=True, minimum=1)
    extra = config.get("additional_conditions", "")
    return f"SELECT {select} FROM {table} WHERE {where}='%s' {extra}"


# -- templates (db_common_parse and db_common_expand) -------------------------------

KEY_DOMAIN, KEY_USER, VALUE_DOMAIN, VALUE_USER = 1, 2, 4, 8


class Templates:
    """The query and result templates of one table: their needs (flags, labels) and expansion."""

    def __init__(self, where, query, resultFormat):
        self.flags = 0
        self.labels = 0
        self._parse(where, query, True)
        self._parse(where, resultFormat, False)
        self.resultFormat = resultFormat

    def _parse(self, where, template, isQuery):
        i = 0
        while i < len(template):
            if template[i] != "%":
                i += 1
                continue
            c = template[i + 1:i + 2]
            i += 2
            if c in ("%", "s", "S"):
                continue
            if c == "u":
                self.flags |= KEY_USER if isQuery else VALUE_USER
            elif c == "d":
                self.flags |= KEY_DOMAIN if isQuery else VALUE_DOMAIN
            elif c == "U":
                self.flags |= KEY_USER
            elif c == "D":
                self.flags |= KEY_DOMAIN
            elif c and c in "123456789":
                self.labels = max(self.labels, int(c))
                self.flags |= KEY_DOMAIN
            else:
                kind = "query" if isQuery else "result_format"
                raise TableError(f"{where}: invalid {kind} template (bad escape %{printable(c)}): "
                                 f"{printable(template)}")

    @staticmethod
    def _split(text):
        """(text, user, domain): domain is None without an @."""
        user, at, domain = text.rpartition("@")
        if not at:
            return text, text, None
        return text, user, domain

    def _fits(self, text, domainFlag, userFlag):
        _, user, domain = self._split(text)
        if self.flags & domainFlag and not domain:
            return False
        if self.flags & userFlag and domain is not None and not user:
            return False
        return True

    def keyFits(self, key):
        """Can the query be filled for C{key}? (db_common_expand's checks before a query)."""
        if not key:
            return False
        if not self._fits(key, KEY_DOMAIN, KEY_USER):
            return False
        if self.labels:
            _, _, domain = self._split(key)
            if len([p for p in domain.split(".") if p]) < self.labels:
                return False
        return True

    def expand(self, template, value, key=None):
        """Expand C{template}: the query's for C{value} (the key), or a result's (value, key)."""
        vtext, vuser, vdomain = self._split(value)
        if key is None:
            ktext, kuser, kdomain = vtext, vuser, vdomain
        else:
            ktext, kuser, kdomain = self._split(key)
        parts = [p for p in (kdomain or "").split(".") if p]
        out = []
        i = 0
        while i < len(template):
            ch = template[i]
            if ch != "%":
                out.append(ch)
                i += 1
                continue
            c = template[i + 1]
            i += 2
            if c == "%":
                out.append("%")
            elif c == "s":
                out.append(vtext)
            elif c == "u":
                out.append(vuser)
            elif c == "d":
                out.append(vdomain or "")
            elif c == "S":
                out.append(ktext)
            elif c == "U":
                out.append(kuser)
            elif c == "D":
                out.append(kdomain or "")
            else:
                out.append(parts[len(parts) - int(c)])
        return "".join(out)

    def formatResult(self, value, key):
        """The result_format expansion of one value, or None when it is skipped."""
        if not self._fits(value, VALUE_DOMAIN, VALUE_USER):
            return None
        return self.expand(self.resultFormat, value, key)


# -- the query compiler ---------------------------------------------------------------


class Dialect:
    """How one database quotes: string literal and identifier delimiters, its placeholder."""

    def __init__(self, placeholder, strings, identifiers, backslash):
        self.placeholder = placeholder  # "?" (qmark) or "%s" (format: literal % doubled)
        self.strings = strings  # opening quote characters of string literals
        self.identifiers = identifiers  # {opening: closing} of quoted identifiers
        self.backslash = backslash  # backslash escapes inside string literals

    def literalPercent(self):
        return "%%" if self.placeholder == "%s" else "%"


_BACKSLASH = {"0": "\0", "n": "\n", "r": "\r", "t": "\t", "b": "\b", "Z": "\x1a"}


def compileQuery(where, query, dialect):
    """
    Turn a Postfix query template into (sql, [parameter templates]).

    Each parameter template is Postfix template text (escapes and literal
    characters) whose expansion is bound to the placeholder at its place.
    """
    sql, params = [], []
    i, n = 0, len(query)
    while i < n:
        ch = query[i]
        if ch in dialect.strings:
            j = i + 1
            content = []
            while True:
                if j >= n:
                    raise TableError(f"{where}: unterminated string literal in query: {printable(query)}")
                c = query[j]
                if dialect.backslash and c == "\\" and j + 1 < n:
                    nxt = query[j + 1]
                    # MySQL keeps the backslash of \% and \_ (LIKE escapes).
                    content.append("\\" + nxt if nxt in "%_" else _BACKSLASH.get(nxt, nxt))
                    j += 2
                    continue
                if c == ch:
                    if query[j + 1:j + 2] == ch:
                        content.append(ch)
                        j += 2
                        continue
                    break
                content.append(c)
                j += 1
            literal = query[i:j + 1]
            text = "".join(content)
            if re.search(r"%[^%]", text.replace("%%", "")):
                sql.append(dialect.placeholder)
                params.append(text)
            else:
                sql.append(literal.replace("%%", "%").replace("%", dialect.literalPercent()))
            i = j + 1
        elif ch in dialect.identifiers:
            close = dialect.identifiers[ch]
            j = query.find(close, i + 1)
            if j < 0:
                raise TableError(f"{where}: unterminated quoted identifier in query: {printable(query)}")
            ident = query[i:j + 1]
            if re.search(r"%[^%]", ident.replace("%%", "")):
                raise TableError(f"{where}: a % escape inside a quoted identifier cannot be bound as a "
                                 f"parameter: {printable(ident)}")
            sql.append(ident.replace("%%", "%").replace("%", dialect.literalPercent()))
            i = j + 1
        elif ch == "%":
            c = query[i + 1:i + 2]
            if c == "%":
                sql.append(dialect.literalPercent())
            else:
                sql.append(dialect.placeholder)
                params.append(query[i:i + 2])
            i += 2
        else:
            sql.append(ch)
            i += 1
    return "".join(sql), params


# -- the domain filter ----------------------------------------------------------------


class DomainFilter:
    """Postfix's string_list of the 'domain' parameter: names, !names, /files, type:tables."""

    def __init__(self, where, text, tables):
        from mta.config.types import parseTableSpec, splitList

        self._items = []  # (negated, name or table)
        for item in self._expandFiles(where, splitList(text)):
            negated = item.startswith("!")
            if negated:
                item = item[1:]
            if not item:
                raise TableError(f"{where}: empty pattern in 'domain'")
            if re.match(r"[a-z][a-z0-9_-]*:", item):
                try:
                    table = tables.open(parseTableSpec(item))
                except ValueError as e:
                    raise TableError(f"{where}: domain: {e}") from None
                self._items.append((negated, table))
            else:
                self._items.append((negated, item.lower()))

    @staticmethod
    def _expandFiles(where, items):
        for item in items:
            if not item.startswith("/"):
                yield item
                continue
            try:
                with open(item, encoding="utf-8") as f:
                    lines = f.read().split("\n")
            except (OSError, UnicodeDecodeError) as e:
                raise TableError(f"{where}: domain: cannot read {item}: {getattr(e, 'strerror', e)}") from None
            for line in lines:
                line = line.split("#", 1)[0]
                yield from (w for w in re.split(r"[\s,]+", line) if w)

    async def matches(self, domain):
        for negated, item in self._items:
            if isinstance(item, str):
                hit = item == domain
            else:
                hit = (await item.lookup(domain)) is not None
            if hit:
                return not negated
        return False


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
                     cp_reactor=self._reactor, cp_noisy=False, **server.connectArgs[1])

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
        if self.domainFilter is not None:
            user, at, domain = key.rpartition("@")
            if not at or not user or not domain:
                return None
            if not await self.domainFilter.matches(domain):
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


def splitHosts(config):
    """The 'hosts' list (default localhost), a single host listed twice, as Postfix."""
    from mta.config.types import splitList

    hosts = list(splitList(config.get("hosts", "")))
    if not hosts:
        hosts = ["localhost"]
    for host in hosts:
        if re.search(r"[\x00-\x20\x7f]", host):
            raise TableError(f"{config.where('hosts')}: bad host {printable(host)!r}")
    if len(hosts) == 1:
        hosts.append(hosts[0])
    return hosts


def parseHost(where, text, defaultPort):
    """unix:/path, inet:host:port, host:port, host, [ipv6]:port → ("unix", path) or ("inet", host, port)."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise TableError(f"{where}: unix: needs an absolute socket path: {printable(text)!r}")
        return "unix", path, None
    if text.startswith("inet:"):
        text = text[5:]
    if text.startswith("/"):
        return "unix", text, None
    port = defaultPort
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise TableError(f"{where}: bad host {printable(text)!r}")
        portText = rest[1:] if rest else ""
    else:
        host, colon, portText = text.rpartition(":")
        if not colon:
            host, portText = text, ""
    if portText:
        if not portText.isdigit() or not 0 < int(portText) < 65536:
            raise TableError(f"{where}: bad port {printable(portText)!r} in {printable(text)!r}")
        port = int(portText)
    if not host or not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise TableError(f"{where}: bad host {printable(text)!r}")
    return "inet", host, port
