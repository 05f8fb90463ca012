"""mta.tables.dbcommon - what the database tables share: their file, templates and domain filter.

Postfix's cfg_parser and db_common.c, used by the ldap: table
(mta.tables.ldapconfig) and the sqlite:, pgsql: and mysql: tables
(mta.tables.sqlconfig):

readConfigFile, parseConfigText
    The table's configuration file, in main.cf format as dict_load_fp()
    reads it: ``name = value`` lines, a line that starts with white space
    continues the one before, blank lines and ``#`` comments are skipped, a
    repeated name overrides the earlier one (with Postfix's warning
    "overriding earlier entry" when the value differs).  The result is a
    ConfigFile: each value with its line, so that every later error names
    the file and line.  The callers check the names and the values.

Templates
    db_common_parse() and db_common_expand(): %s (the key, or the result
    value), %u and %d (its local part and domain), %S %U %D (the same of
    the key, in a result template), %1 .. %9 (the key's domain labels, from
    the right) and %%.  A key that cannot fill the templates is skipped
    (no query, "not found"): %d or %D, or a label, of a key without a
    domain (or with an empty one), %u or %U of a key with an empty local
    part, fewer domain labels than the highest %N (empty labels do not
    count, as Postfix's argv_split()), an empty key.  The same rules apply
    to a result value and result_format's %u and %d: an unfit value is
    skipped.  Each expansion goes through the caller's quote function (LDAP
    escaping); SQL binds the expansions as parameters instead.

DomainFilter
    The ``domain`` parameter (db_common_parse_domain and
    db_common_check_domain): a list of domain names, ``!name`` exclusions,
    ``/file`` names (their words are list items) and ``type:table`` lookups;
    the first item that matches decides.  Only keys of the form
    ``user@domain`` (both parts non-empty) whose domain matches are looked
    up; every other key is "not found" without a query.

SECURITY
    The file is configuration: a mistake is a TableError naming the file
    and line, at open.  Keys are untrusted: they are only split at the
    last ``@`` and ``.`` and copied into the expansion, through the quote
    function when one is given; no key can add a template escape.

CONFIGURATION
    None of its own: the parameters are the tables' (ldap_table(5),
    pgsql_table(5), mysql_table(5), sqlite_table(5)).

DEVIATIONS
    The file must be UTF-8.  Postfix's cfg_parser also reads main.cf
    parameters (``ldapsource_server_host``) when the table name is not a
    path; mta reads only files.
"""

import os
import re

from twisted.logger import Logger

from mta.tables import TableError, printable

log = Logger()

_NAME = re.compile(r"[A-Za-z0-9_]+")

# -- the configuration file (cfg_parser, dict_load_fp) ---------------------------------


class ConfigFile:
    """The entries of one file: {name: (value, line number)}, and the file's stat."""

    def __init__(self, path, entries, st=None):
        self.path = path
        self.entries = entries
        self.stat = st

    def __contains__(self, name):
        return name in self.entries

    def value(self, name, default=None):
        entry = self.entries.get(name)
        return default if entry is None else entry[0]

    def where(self, name):
        """C{path:line} of C{name}, or the path alone when the file does not set it."""
        entry = self.entries.get(name)
        return f"{self.path}:{entry[1]}" if entry else self.path


def parseConfigText(path, text):
    """The lines of a main.cf-format file to a ConfigFile; TableError naming file:line."""
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
    entries = {}
    for number, entry in logical:
        name, eq, value = entry.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not _NAME.fullmatch(name):
            raise TableError(f"{path}:{number}: expected 'name = value': {printable(entry, 80)!r}")
        if name in entries and entries[name][0] != value:
            log.warn("{path}, line {line}: overriding earlier entry: {name}", path=path, line=number, name=name)
        entries[name] = (value, number)
    return ConfigFile(path, entries)


def readConfigFile(path):
    """Read and parse the file at C{path}; TableError when it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise TableError(f"{path}: cannot open table configuration: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TableError(f"{path}: not UTF-8 text (byte {e.start})") from None
    config = parseConfigText(path, text)
    config.stat = st
    return config


# -- templates (db_common_parse, db_common_expand) -------------------------------------


class Templates:
    """
    The shared expansion context of one table's templates (query, search
    base, result format): what they need of a key and of a result value.
    """

    def __init__(self):
        self.keyUser = self.keyDomain = self.valueUser = self.valueDomain = False
        self.labels = 0  # the highest %1..%9

    def parse(self, template, query, kind=None):
        """
        Note what C{template} (a query template, or a result one) uses;
        True when it depends on the key.  ValueError for a bad escape,
        naming the template as C{kind} ("query" or "result" by default).
        """
        dynamic = False
        i = 0
        while i < len(template):
            if template[i] != "%":
                i += 1
                continue
            c = template[i + 1:i + 2]
            i += 2
            if c == "%":
                continue
            dynamic = True
            if c in ("s", "S"):
                pass
            elif c == "u":
                if query:
                    self.keyUser = True
                else:
                    self.valueUser = True
            elif c == "d":
                if query:
                    self.keyDomain = True
                else:
                    self.valueDomain = True
            elif c == "U":
                self.keyUser = True
            elif c == "D":
                self.keyDomain = True
            elif c and c in "123456789":
                self.labels = max(self.labels, int(c))
                self.keyDomain = True
            else:
                kind = kind or ("query" if query else "result")
                raise ValueError(f"invalid {kind} template (bad escape %{printable(c)}): {printable(template)}")
        return dynamic

    @staticmethod
    def _split(text):
        """(user, domain) at the last @; domain None without one."""
        user, at, domain = text.rpartition("@")
        return (user, domain) if at else (text, None)

    def _labels(self, domain):
        """The non-empty labels of C{domain}, or None when there are fewer than the templates use."""
        labels = [label for label in (domain or "").split(".") if label]
        return labels if len(labels) >= self.labels else None

    @staticmethod
    def _fits(text, needDomain, needUser):
        user, domain = Templates._split(text)
        return not (needDomain and not domain) and not (needUser and domain is not None and not user)

    def fits(self, value, key=None):
        """Can the templates be filled for C{value} (the key; or a result value of C{key})?"""
        if not value:
            return False
        if key is not None and not self._fits(value, self.valueDomain, self.valueUser):
            return False
        key = value if key is None else key
        if not self._fits(key, self.keyDomain, self.keyUser):
            return False
        return not self.labels or self._labels(self._split(key)[1]) is not None

    def expand(self, template, value, key=None, quote=None):
        """
        db_common_expand(): C{template} for C{value} (the key, or with
        C{key} given, a result value of that key), each expansion through
        C{quote}; None when the value cannot fill the templates.
        """
        if not self.fits(value, key):
            return None
        quote = quote or (lambda text: text)
        vuser, vdomain = self._split(value)
        ktext = value if key is None else key
        kuser, kdomain = self._split(ktext)
        labels = self._labels(kdomain) if self.labels else []
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
                out.append(quote(value))
            elif c == "u":
                out.append(quote(vuser))
            elif c == "d":
                out.append(quote(vdomain or ""))
            elif c == "S":
                out.append(quote(ktext))
            elif c == "U":
                out.append(quote(kuser))
            elif c == "D":
                out.append(quote(kdomain or ""))
            else:
                out.append(quote(labels[len(labels) - int(c)]))
        return "".join(out)


# -- the domain filter (db_common_parse_domain, db_common_check_domain) ----------------


class DomainFilter:
    """
    Postfix's string_list of the 'domain' parameter: names, !names, /files,
    type:tables (opened through C{tables}).  With C{namesOnly}, files and
    tables are refused (a table type that does not support them).
    """

    def __init__(self, where, text, tables=None, namesOnly=False):
        from mta.config.types import parseTableSpec, splitList

        self._items = []  # (negated, name or table)
        items = splitList(text)
        if not namesOnly:
            items = self._expandFiles(where, items)
        for item in items:
            negated = item.startswith("!")
            if negated:
                item = item[1:]
            if not item:
                raise TableError(f"{where}: empty pattern in 'domain'")
            if namesOnly and ("/" in item or ":" in item):
                raise TableError(f"{where}: domain: {printable(item)}: only domain names are supported in "
                                 "'domain', not files or tables")
            if re.match(r"[a-z][a-z0-9_-]*:", item):
                try:
                    table = tables.open(parseTableSpec(item))
                except ValueError as e:
                    raise TableError(f"{where}: domain: {e}") from None
                self._items.append((negated, table))
            else:
                self._items.append((negated, item.lower()))

    def __bool__(self):
        return bool(self._items)

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
        """Does C{domain} (lower case) pass? The first matching item decides; none: no."""
        for negated, item in self._items:
            if isinstance(item, str):
                hit = item == domain
            else:
                hit = (await item.lookup(domain)) is not None
            if hit:
                return not negated
        return False

    async def admits(self, key):
        """db_common_check_domain(): is C{key} user@domain, both non-empty, with a matching domain?"""
        user, at, domain = key.rpartition("@")
        if not at or not user or not domain:
            return False
        return await self.matches(domain.lower())
