"""mta.tables.sqlconfig - the SQL tables' configuration file, templates and query compiler (db_common).

Everything decided when an sqlite:, pgsql: or mysql: table is opened: the
file parsed (Postfix's cfg_parser format, read by mta.tables.dbcommon, every
name checked here), the query and result_format templates (dbcommon's
db_common_parse and db_common_expand), the query compiled into SQL with the
driver's placeholders, the domain filter (dbcommon's), and the hosts list.
mta.tables.sql has the format, the escapes and the lookups.

SECURITY
    The file is configuration; a mistake in it is a TableError naming the
    file and line.  Keys are untrusted: they are only ever expanded into
    parameter values, never into SQL text (compileQuery).

CONFIGURATION
    None of its own.
"""

import re

from mta.tables import TableError, printable
from mta.tables import dbcommon

COMMON = ("query", "result_format", "domain", "expansion_limit",
          "table", "select_field", "where_field", "additional_conditions")
NETWORK = ("hosts", "user", "password", "dbname", "retry_interval", "idle_interval",
           "connect_timeout", "query_timeout")


# -- the configuration file ---------------------------------------------------------


class TableConfig:
    """The parsed file: get/getInt/getBool with Postfix's cfg_get_* rules."""

    def __init__(self, config):
        self.path = config.path
        self._config = config

    def __contains__(self, name):
        return name in self._config

    def where(self, name):
        return self._config.where(name)

    def get(self, name, default=None, minimum=0, required=False):
        value = self._config.value(name)
        if value is None:
            if required:
                raise TableError(f"{self.path}: missing parameter '{name}'")
            value = default
        if value is not None and len(value) < minimum:
            raise TableError(f"{self.where(name)}: '{name}' must not be empty")
        return value

    def getInt(self, name, default, minimum=0):
        text = self._config.value(name)
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]+", text):
            raise TableError(f"{self.where(name)}: '{name}' is not a number: {printable(text)!r}")
        value = int(text)
        if value < minimum:
            raise TableError(f"{self.where(name)}: '{name}' must be at least {minimum}")
        return value

    def getBool(self, name, default):
        text = self._config.value(name)
        if text is None:
            return default
        if text.lower() in ("yes", "true", "1"):
            return True
        if text.lower() in ("no", "false", "0"):
            return False
        raise TableError(f"{self.where(name)}: '{name}' must be yes or no")


def _checkNames(config, known):
    for name, (_, number) in config.entries.items():
        if name not in known:
            raise TableError(f"{config.path}:{number}: unknown parameter '{printable(name, 80)}' "
                             f"(known: {', '.join(sorted(known))})")
    return TableConfig(config)


def parseTableConfig(path, text, known):
    """Parse Postfix cfg_parser lines; TableError names file and line for what is wrong."""
    return _checkNames(dbcommon.parseConfigText(path, text), known)


def readTableConfig(spec, path, known):
    if not path.startswith(("/", ".")):
        raise TableError(f"{spec}: the table name must be the path of its configuration file")
    return _checkNames(dbcommon.readConfigFile(path), frozenset(known))


def legacyQuery(config):
    """Postfix's db_common_sql_build_query, for a file without query."""
    table = config.get("table", required=True, minimum=1)
    select = config.get("select_field", required=True, minimum=1)
    where = config.get("where_field", required=True, minimum=1)
    extra = config.get("additional_conditions", "")
    return f"SELECT {select} FROM {table} WHERE {where}='%s' {extra}"


# -- templates (dbcommon's db_common_parse and db_common_expand) --------------------


class Templates(dbcommon.Templates):
    """The query and result_format templates of one table; TableError at C{where} for a bad one."""

    def __init__(self, where, query, resultFormat):
        super().__init__()
        for template, kind in ((query, "query"), (resultFormat, "result_format")):
            try:
                self.parse(template, kind == "query", kind)
            except ValueError as e:
                raise TableError(f"{where}: {e}") from None
        self.resultFormat = resultFormat

    def keyFits(self, key):
        """Can the query be filled for C{key}? (db_common_expand's checks before a query)."""
        return self.fits(key)

    def formatResult(self, value, key):
        """The result_format expansion of one value, or None when it is skipped."""
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
