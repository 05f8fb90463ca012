"""mta.config.loader - read an INI configuration, expand and check it.

The file has a [main] section of Postfix parameters (main.cf) and any number
of [listener:NAME] sections (master.cf services): ``endpoint =`` plus
overrides of [main] parameters, as ``-o`` does in master.cf.

Syntax, as main.cf: ``name = value``; a line that starts with white space
continues the previous value; lines whose first non-blank character is # or
; are comments (only whole lines: a # inside a value is part of it).  Values
expand ``$name``, ``${name}``, ``$(name)``, ``${name?text}`` (text when name
is not empty), ``${name:text}`` (text when name is empty) and ``$$`` (a
dollar sign), lazily and against the scope in use: in a listener its
overrides win.  A raw parameter (a template such as default_rbl_reply,
whose $rbl_code and the like are filled in where it is used) is taken as
written, as Postfix's raw parameters are.

SECURITY
    The file is untrusted in shape: every error (unknown section or
    parameter, bad value, undefined or circular $name, unreadable file)
    becomes one ConfigError naming file, line, section and key; nothing
    here raises anything else.

FINDING THE FILE
    findConfig() is the one place where every program (twistd mta,
    mta-config, mta-queue, mta-sendmail) decides which file is in effect,
    in this order, as Postfix's -c, MAIL_CONFIG and /etc/postfix:

    1. the file named on the command line (-c/--config; sendmail's -C);
    2. else the file named by the environment variable MTA_CONFIG (when
       set and not empty);
    3. else /etc/mta/mta.ini, when it exists;
    4. else none: the embedded defaults.

    A directory in 1 or 2 means DIR/mta.ini (Postfix's -c and MAIL_CONFIG
    name a directory).  A file named in 1 or 2 that does not exist is an
    error, never a silent fall-back to the next step; only step 3 is
    skipped when its file is missing.  loadConfig() finds and loads;
    Config.source says how the file was found, for messages.

DEVIATIONS
    Postfix's -c and MAIL_CONFIG name the configuration directory (of
    main.cf and master.cf); mta's name the file, or a directory holding
    mta.ini.  Postfix always reads $config_directory/main.cf (default
    /etc/postfix) and has no embedded fall-back; mta runs on its embedded
    defaults when no file is found, so that ``twistd -n mta`` works in a
    scratch directory.

SECURITY
    MTA_CONFIG is trusted as the invoking user's own choice: none of the
    programs is set-uid or set-gid, so it gives no one more than they
    have.  (Postfix ignores MAIL_CONFIG in its set-gid programs unless the
    directory is listed in alternate_config_directories; a set-gid
    submission helper for mta would have to do the same.)

CONFIGURATION
    Reads what mta.config.schema declares.
"""

import difflib
import os
import re

import attrs

from mta.config.errors import ConfigError
from mta.config.schema import BY_NAME, DEFAULT_LISTENERS, LISTENER_KEYS, parameter
from mta.config.types import splitList


class ConfigNotFound(ConfigError):
    """The file named by -c or $MTA_CONFIG does not exist."""


@attrs.frozen
class Location:
    path: str
    line: int
    section: str
    key: str | None = None

    def __str__(self):
        where = f"{self.path}:{self.line}: [{self.section}]"
        return f"{where} {self.key}" if self.key else where


@attrs.frozen
class Entry:
    key: str
    value: str
    location: Location


@attrs.frozen
class Section:
    name: str
    location: Location
    entries: tuple


_SECTION = re.compile(r"\[\s*([^\]]*?)\s*\]\s*$")
_KEY = re.compile(r"([A-Za-z0-9_.-]+)\s*=(.*)$", re.S)


def readIni(path, text=None):
    """Parse the file at C{path} (or C{text}, named C{path}) into Sections; raise ConfigError."""
    try:
        if text is None:
            with open(path, encoding="utf-8-sig") as f:
                text = f.read()
        # Only line feeds end lines (universal newlines turned CR and CRLF
        # into LF); str.splitlines() would also split on FF, NEL, U+2028
        # and so misnumber the lines of every error message.
        lines = text.split("\n")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{path}: cannot read configuration file: {reason}") from None

    sections = []
    seen = {}
    name = location = None
    entries = []  # [key, [value parts], Location]

    def close():
        if name is not None:
            sections.append(
                Section(name, location, tuple(Entry(k, " ".join(v).strip(), loc) for k, v, loc in entries))
            )

    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in " \t":
            if not entries:
                raise ConfigError(f"{path}:{number}: continuation line with no parameter before it")
            entries[-1][1].append(stripped)
            continue
        if line[0] == "[":
            match = _SECTION.match(line)
            if not match:
                raise ConfigError(f"{path}:{number}: malformed section header: {stripped}")
            close()
            name, entries = match.group(1), []
            location = Location(path, number, name)
            if name in seen:
                raise ConfigError(f"{location}: section defined twice (first at line {seen[name]})")
            seen[name] = number
            continue
        match = _KEY.match(line)
        if not match:
            raise ConfigError(f"{path}:{number}: expected 'name = value', found: {stripped}")
        if name is None:
            raise ConfigError(f"{path}:{number}: '{match.group(1)}' is outside any section; start with [main]")
        key = match.group(1)
        for other in entries:
            if other[0] == key:
                raise ConfigError(
                    f"{Location(path, number, name, key)}: set twice in this section (first at line {other[2].line})"
                )
        entries.append([key, [match.group(2).strip()], Location(path, number, name, key)])
    close()
    return sections


def _unknown(key):
    if key in LISTENER_KEYS:
        return "unknown parameter"
    hint = difflib.get_close_matches(key, list(BY_NAME) + list(LISTENER_KEYS), n=1)
    return "unknown parameter" + (f" (did you mean {hint[0]}?)" if hint else "")


def expandMacros(text, lookup):
    """
    Postfix's mac_expand: ``$name``, ``${name}``, ``$(name)``,
    ``${name?text}`` (text when the value is not empty), ``${name:text}``
    (text when it is empty) and ``$$``; C{lookup(name)} gives a value or
    raises ValueError.  ValueError for a malformed expression.  (The
    configuration's values, and the smtpd reply templates of
    mta.smtpd.dnsxl, with their own lookups.)
    """
    if "$" not in text:
        return text
    out = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            j = text.find("$", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
            continue
        i += 1
        if i < n and text[i] == "$":
            out.append("$")
            i += 1
        elif i < n and text[i] in "{(":
            opener, closer = text[i], "}" if text[i] == "{" else ")"
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {opener: 1, closer: -1}.get(text[j], 0)
                j += 1
            if depth:
                raise ValueError(f"unbalanced '{opener}' after '$'")
            match = re.fullmatch(r"([A-Za-z0-9_]+)\s*(?:([?:])(.*))?", text[i + 1 : j - 1], re.S)
            if not match:
                raise ValueError(f"malformed expression ${text[i:j]}")
            i = j
            value = lookup(match.group(1))
            if match.group(2) is None:
                out.append(value)
            elif bool(value) == (match.group(2) == "?"):
                arg = match.group(3).strip()
                if arg.startswith("{") and arg.endswith("}"):
                    arg = arg[1:-1]
                out.append(expandMacros(arg, lookup))
        else:
            match = re.match(r"[A-Za-z0-9_]+", text[i:])
            if not match:
                raise ValueError("'$' is not followed by a parameter name (write $$ for a dollar sign)")
            i += match.end()
            out.append(lookup(match.group()))
    return "".join(out)


class Scope:
    """
    The parameters in force in one place: [main], or a listener over [main].

    C{scope[name]} is the typed value; C{raw(name)} the text as written (or
    the default), C{expanded(name)} the text after $name expansion.
    """

    def __init__(self, entries=(), parent=None, origin="embedded defaults", classes=()):
        self.origin = origin  # "FILE: [section]", for errors about defaults
        self._entries = {e.key: e for e in entries}
        self._parent = parent
        self._values = {}
        self._classes = {e.key: e for e in classes}  # smtpd_restriction_classes' definitions ([main] only)

    def restrictionClass(self, name):
        """
        The Entry that defines the restriction class C{name} ([main]), or None;
        its text with $name expanded is C{expandedClass(name)}.
        """
        if self._parent is not None:
            return self._parent.restrictionClass(name)
        return self._classes.get(name)

    def expandedClass(self, name):
        return self._expand(self.restrictionClass(name).value, [])

    def entry(self, name):
        """The Entry that sets C{name} here or in an enclosing scope, or None."""
        if name in self._entries:
            return self._entries[name]
        return self._parent.entry(name) if self._parent else None

    def setHere(self):
        """Entries set in this scope itself, in file order."""
        return tuple(self._entries.values())

    def setNames(self):
        """The names of the parameters set here or in an enclosing scope."""
        names = dict.fromkeys(self._parent.setNames()) if self._parent else {}
        names.update(dict.fromkeys(self._entries))
        return tuple(names)

    def raw(self, name):
        entry = self.entry(name)
        return entry.value if entry else parameter(name).defaultText()

    def expanded(self, name):
        """The text after $name expansion (a raw parameter's template as written: schema Parameter.raw)."""
        spec = parameter(name)
        if spec is not None and spec.raw:
            return self.raw(name)
        return self._expand(self.raw(name), [name])

    def __getitem__(self, name):
        try:
            return self._values[name]
        except KeyError:
            pass
        value = parameter(name).type.parse(self.expanded(name))
        self._values[name] = value
        return value

    def _lookup(self, name, stack):
        if parameter(name) is None:
            raise ValueError(f"${name} is not a known parameter")
        if name in stack:
            raise ValueError("circular reference: " + " -> ".join(f"${n}" for n in stack + [name]))
        if parameter(name).raw:  # a template: its text as written
            return self.raw(name)
        return self._expand(self.raw(name), stack + [name])

    def _expand(self, text, stack):
        return expandMacros(text, lambda name: self._lookup(name, stack))

    def check(self):
        """Compute every parameter, set ones first; raise ConfigError with the location."""
        for name in list(self._entries) + [n for n in BY_NAME if n not in self._entries]:
            try:
                self[name]
            except ValueError as e:
                raise ConfigError(f"{self.where(name)}: {e}") from None

    def where(self, name):
        """Where C{name} gets its value: the file location, or its default."""
        entry = self.entry(name)
        if entry is not None:
            return str(entry.location)
        return f"{self.origin}: {name} (default {parameter(name).defaultText()!r})"


@attrs.frozen
class Listener:
    """
    One [listener:NAME] (a master.cf service): its endpoint, its parameter
    scope, and C{settings}, the listener's own settings objects
    (mta.config.settings: .smtpd, ...), compiled from that scope.
    """

    name: str
    endpoint: str
    params: Scope
    location: Location | None
    settings: object = None


@attrs.frozen
class Config:
    """
    A checked configuration: [main] and the listeners.  C{path} is the
    file (None: the embedded defaults); C{source} says how it was found
    (see findConfig), e.g. "-c", "$MTA_CONFIG", "default".
    """

    path: str | None
    main: Scope
    listeners: tuple
    source: str | None = None
    settings: object = None  # the settings objects compiled from [main] (mta.config.settings)

    def describe(self):
        """The configuration in effect, for a message: 'FILE (from $MTA_CONFIG)' or the embedded defaults."""
        return _describe(self.path, self.source)

    def __getitem__(self, name):
        return self.main[name]


def _checkEndpoint(description, location):
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(None, description)
    except Exception as e:  # endpoint parsers raise many types
        raise ConfigError(f"{location}: invalid endpoint {description!r}: {e}") from None


def load(path=None, text=None, checkEndpoints=True):
    """
    Load and check the configuration at C{path}; None gives the embedded
    defaults.  With C{text}, parse that instead of reading the file (tests).
    Raise ConfigError on any problem.
    """
    sections = readIni(path or "<text>", text) if path is not None or text is not None else []
    mainEntries = ()
    listenerSections = []
    for section in sections:
        if section.name == "main":
            mainEntries = section.entries
        elif re.fullmatch(r"listener:[A-Za-z0-9_.-]+", section.name):
            listenerSections.append(section)
        else:
            raise ConfigError(f"{section.location}: unknown section (expected [main] or [listener:NAME])")

    # smtpd_restriction_classes: each name it lists is a [main] parameter of its own, a restriction list.
    classNames = set()
    for entry in mainEntries:
        if entry.key == "smtpd_restriction_classes":
            classNames = {name.lower() for name in splitList(entry.value)}
    classEntries = [e for e in mainEntries if e.key in classNames and parameter(e.key) is None]
    mainEntries = [e for e in mainEntries if not (e.key in classNames and parameter(e.key) is None)]
    for entry in mainEntries:
        if parameter(entry.key) is None:
            extra = "; it belongs in a [listener:NAME] section" if entry.key in LISTENER_KEYS else ""
            raise ConfigError(f"{entry.location}: {_unknown(entry.key)}{extra}")
    origin = f"{path}: [main]" if path else "embedded defaults"
    main = Scope(mainEntries, origin=origin, classes=classEntries)
    main.check()

    listeners = []
    for section in listenerSections:
        endpoint = None
        overrides = []
        for entry in section.entries:
            if entry.key == "endpoint":
                endpoint = entry
            elif parameter(entry.key) is not None:
                overrides.append(entry)
            else:
                raise ConfigError(f"{entry.location}: {_unknown(entry.key)}")
        if endpoint is None:
            raise ConfigError(f"{section.location}: no endpoint (e.g. endpoint = tcp:port=25:interface=127.0.0.1)")
        if checkEndpoints:  # mta-sendmail skips it: Twisted's endpoints cost it 0.17 s a run
            _checkEndpoint(endpoint.value, endpoint.location)
        scope = Scope(overrides, parent=main, origin=f"{path}: [{section.name}]")
        scope.check()
        listeners.append((section.name.split(":", 1)[1], endpoint.value, scope, section.location))
    if not listenerSections:
        listeners = [(name, endpoint, Scope(parent=main), None) for name, endpoint in DEFAULT_LISTENERS]
    # The compile step: every service's settings, so that a bad value fails here.
    from mta.config.settings import compile, listenerSettings, mainSettings

    compiled = compile(main, mainSettings())
    listeners = tuple(
        Listener(name, endpoint, scope, location, compile(scope, listenerSettings()))
        for name, endpoint, scope, location in listeners
    )
    return Config(os.path.abspath(path) if path and text is None else path, main, listeners, settings=compiled)


CONFIG_ENVIRONMENT = "MTA_CONFIG"
DEFAULT_CONFIG = "/etc/mta/mta.ini"
CONFIG_FILE_NAME = "mta.ini"  # in a directory named by -c or $MTA_CONFIG

# Config.source values, and how messages name them.
SOURCE_TEXT = {
    "option": "from the command line",
    "environment": f"from ${CONFIG_ENVIRONMENT}",
    "default": "the default location",
}


def embeddedDescription():
    """How messages name the embedded defaults: why no file is in effect."""
    return f"the embedded defaults (no -c, ${CONFIG_ENVIRONMENT} or {DEFAULT_CONFIG})"


@attrs.frozen
class ConfigSource:
    """Which configuration file is in effect: C{path} (None: the embedded defaults) and C{source}."""

    path: str | None
    source: str | None  # "option", "environment", "default"; None with path None

    @property
    def named(self):
        """True when the file was asked for (-c or $MTA_CONFIG): then it must exist."""
        return self.source in ("option", "environment")

    def describe(self):
        return _describe(self.path, self.source)


def _describe(path, source):
    if path is None:
        return embeddedDescription()
    return f"{path} ({SOURCE_TEXT[source]})" if source in SOURCE_TEXT else path


def _fileIn(path):
    return os.path.join(path, CONFIG_FILE_NAME) if os.path.isdir(path) else path


def findConfig(explicit=None, environ=None, default=None):
    """
    The configuration file in effect (a ConfigSource): C{explicit} (the
    -c/--config argument), else $MTA_CONFIG from C{environ} (default
    os.environ), else C{default} (DEFAULT_CONFIG) if it exists, else the
    embedded defaults.  A directory means DIR/mta.ini.  Nothing is read.
    """
    environ = os.environ if environ is None else environ
    if explicit is not None:
        return ConfigSource(os.path.abspath(_fileIn(explicit)), "option")
    named = environ.get(CONFIG_ENVIRONMENT)
    if named:
        return ConfigSource(os.path.abspath(_fileIn(named)), "environment")
    default = DEFAULT_CONFIG if default is None else default
    if os.path.exists(default):
        return ConfigSource(os.path.abspath(default), "default")
    return ConfigSource(None, None)


def loadConfig(explicit=None, environ=None, default=None, **options):
    """
    findConfig(), then load() it; C{options} go to load().  Raise
    ConfigError on any problem (a named file that does not exist is one).
    """
    found = findConfig(explicit, environ, default)
    if found.path is None:
        return attrs.evolve(load(None, **options), source=None)
    if found.named and not os.path.lexists(found.path):
        how = "on the command line" if found.source == "option" else f"by ${CONFIG_ENVIRONMENT}"
        raise ConfigNotFound(f"{found.path}: configuration file not found (named {how})")
    return attrs.evolve(load(found.path, **options), source=found.source)


def tableSpecs(scope):
    """(parameter name, TableSpec) for every table that C{scope} names."""
    from mta.config.schema import PARAMETERS
    from mta.config.types import TableSpec

    for declared in PARAMETERS:
        value = scope[declared.name]
        if isinstance(value, tuple):
            for item in value:
                if isinstance(item, TableSpec):
                    yield declared.name, item


def openTables(config, tables):
    """
    Open every table the configuration names; raise ConfigError naming the
    key.  C{tables} (an mta.tables.Tables) says in C{openErrors} which of its
    exceptions mean "this table cannot be opened" (mta.tables.TableError):
    mta.config imports nothing of mta above itself.
    """
    errors = tuple(getattr(tables, "openErrors", ()))
    for scope in [config.main] + [listener.params for listener in config.listeners]:
        for name, spec in tableSpecs(scope):
            try:
                tables.open(spec)
            except errors as e:
                raise ConfigError(f"{scope.where(name)}: {e}") from None
