"""mta.tables.sqlconfig - the SQL tables' configuration file, templates and query compiler (db_common).

Everything decided when an sqlite:, pgsql: or mysql: table is opened: the
file parsed (Postfix's cfg_parser format, every name checked), the query and
result_format templates and what they need of a key (db_common_parse), their
expansion (db_common_expand), the query compiled into SQL with the driver's
placeholders, the domain filter, and the hosts list.  mta.tables.sql has the
format, the escapes and the lookups.

SECURITY
    The file is configuration; a mistake in it is a TableError naming the
    file and line.  Keys are untrusted: they are only ever expanded into
    parameter values, never into SQL text (compileQuery).

CONFIGURATION
    None of its own.
"""

import re

from twisted.logger import Logger

from mta.tables import TableError

log = Logger()

COMMON = ("query", "result_format", "domain", "expansion_limit",
          "table", "select_field", "where_field", "additional_conditions")
NETWORK = ("hosts", "user", "password", "dbname", "retry_interval", "idle_interval",
           "connect_timeout", "query_timeout")


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
