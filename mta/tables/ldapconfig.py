"""mta.tables.ldapconfig - the file of an ldap: table, its templates and its escaping.

Reads an ldap_table(5) file (main.cf format, read by mta.tables.dbcommon:
``name = value``, white space at the start of a line continues the previous
one, ``#`` comments; the last of repeated names wins) into an LdapConfig,
checking every value: a mistake is a TableError naming the file and line,
raised at open so that ``mta-config --check`` reports it.  The templates
(%s %u %d %S %U %D %1..%9 and %%) and the domain filter are dbcommon's
(db_common.c); here are RFC 4515 filter and RFC 4514 DN escaping of keys,
server_host and RFC 4516 URL parsing.  mta.tables.ldap is the client that
uses them.

SECURITY
    The file is configuration (it may hold bind_pw: a warning when others
    can read it).  Keys from the network reach the escaping functions and
    the templates only: escapeFilterValue turns ``*``, ``(``, ``)``, ``\\``
    and NUL into ``\\XX``, escapeDnValue does the same for dict_ldap's DN set
    (space, tab, ``"``, ``#``, ``+``, ``,``, ``;``, ``<``, ``>``, ``\\``) plus
    ``=`` and NUL.  The query_filter template is tried at load with a key
    that fills every expansion, so a filter that cannot parse fails there.

CONFIGURATION
    The parameters of ldap_table(5); see mta.tables.ldap for the list, the
    defaults and the deviations.
"""

import re
import stat
from urllib.parse import unquote

from twisted.logger import Logger

from mta.tables import TableError, printable
from mta.tables.dbcommon import DomainFilter, Templates, readConfigFile

log = Logger()

SCOPES = {"base": 0, "one": 1, "sub": 2}
BINDS = {"no": "none", "none": "none", "yes": "simple", "simple": "simple", "sasl": "sasl"}
BOOLEANS = {"yes": True, "true": True, "no": False, "false": False}

# The parameters that ldap_table(5) lists; anything else draws a warning.
KNOWN = {
    "server_host", "server_port", "timeout", "search_base", "query_filter", "result_format",
    "result_filter", "domain", "result_attribute", "special_result_attribute",
    "terminal_result_attribute", "leaf_result_attribute", "scope", "bind", "bind_dn", "bind_pw",
    "cache", "cache_expiry", "cache_size", "recursion_limit", "expansion_limit", "size_limit",
    "dereference", "chase_referrals", "version", "debuglevel", "sasl_mechs", "sasl_realm",
    "sasl_authz_id", "sasl_minssf", "start_tls", "tls_ca_cert_dir", "tls_ca_cert_file", "tls_cert",
    "tls_key", "tls_require_cert", "tls_random_file", "tls_cipher_suite",
}
IGNORED = ("chase_referrals", "debuglevel", "tls_random_file", "tls_cipher_suite", "cache", "cache_expiry",
           "cache_size")

_LIST_SPLIT = re.compile(r"[\s,]+")

# -- escaping ----------------------------------------------------------------------

_FILTER_SPECIAL = re.compile(r"[*()\\\x00]")
_DN_SPECIAL = re.compile(r"[ \t\"#+,;<>\\=\x00]")


def _hexEscape(match):
    return "".join("\\%02X" % b for b in match.group(0).encode("utf-8"))


def escapeFilterValue(value):
    """RFC 4515 escaping of an assertion value: ``*``, ``(``, ``)``, ``\\`` and NUL as \\XX."""
    return _FILTER_SPECIAL.sub(_hexEscape, value)


def escapeDnValue(value):
    """RFC 4514 escaping of an attribute value in a DN (dict_ldap's rfc2253_quote, plus = and NUL)."""
    return _DN_SPECIAL.sub(_hexEscape, value)


# -- the configuration file -----------------------------------------------------------


class Server:
    """One server_host entry: kind ("tcp", "tls" or "unix") and its address."""

    def __init__(self, kind, host=None, port=None, path=None):
        self.kind, self.host, self.port, self.path = kind, host, port, path

    def __repr__(self):
        if self.kind == "unix":
            return f"ldapi://{self.path}"
        scheme = "ldaps" if self.kind == "tls" else "ldap"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def _hostPort(text, defaultPort):
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad host {text!r}")
        port = rest[1:] if rest else ""
    else:
        host, _, port = text.partition(":")
    if not host:
        host = "localhost"
    if not re.fullmatch(r"[A-Za-z0-9._:-]+", host):
        raise ValueError(f"bad host {text!r}")
    if port:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad port in {text!r}")
        return host, int(port)
    return host, defaultPort


def parseServers(text, defaultPort):
    """server_host to a list of Server; ValueError if an entry is bad."""
    servers = []
    for item in _LIST_SPLIT.split(text.strip()):
        if not item:
            continue
        scheme, sep, rest = item.partition("://")
        if not sep:
            host, port = _hostPort(item, defaultPort)
            servers.append(Server("tcp", host, port))
            continue
        scheme = scheme.lower()
        hostpart = rest.split("/", 1)[0]
        if scheme == "ldapi":
            path = unquote(hostpart)
            if not path.startswith("/"):
                raise ValueError(f"{item}: ldapi needs an absolute, %2F-encoded socket path")
            servers.append(Server("unix", path=path))
        elif scheme in ("ldap", "ldaps"):
            host, port = _hostPort(hostpart, 389 if scheme == "ldap" else 636)
            servers.append(Server("tcp" if scheme == "ldap" else "tls", host, port))
        else:
            raise ValueError(f"{item}: unknown URL scheme {scheme!r} (ldap, ldaps, ldapi)")
    if not servers:
        raise ValueError("no server")
    return servers


class LdapConfig:
    """The parsed, checked file; raise TableError naming file:line."""

    def __init__(self, path):
        self.path = path
        config = readConfigFile(path)
        self._config = config
        entries = config.entries
        st = config.stat

        for name, (_, number) in entries.items():
            if name not in KNOWN:
                log.warn("{path}:{line}: unknown LDAP table parameter {name!r} ignored", path=path, line=number,
                         name=name)
            elif name in IGNORED:
                log.warn("{path}:{line}: {name} is not supported and is ignored", path=path, line=number, name=name)

        self.serverPort = self._int("server_port", 389, 1, 65535)
        self.servers = self._parse("server_host", "localhost", lambda v: parseServers(v, self.serverPort))
        self.timeout = self._int("timeout", 10, 1)
        self.searchBase = self._str("search_base", "")
        self.queryFilter = self._str("query_filter", "(mailacceptinggeneralid=%s)")
        if "result_format" in entries:
            self.resultFormat = self._str("result_format", "%s")
        else:
            self.resultFormat = self._str("result_filter", "%s")
        self.templates = Templates()
        self.dynamicBase = self._parse("search_base", "", lambda v: self.templates.parse(v, True))
        if not self._parse("query_filter", self.queryFilter, lambda v: self.templates.parse(v, True)):
            log.warn("{path}: fixed query_filter {filter} is probably useless", path=path, filter=self.queryFilter)
        formatName = "result_format" if "result_format" in entries else "result_filter"
        self._parse(formatName, self.resultFormat, lambda v: self.templates.parse(v, False))
        self.domains = DomainFilter(config.where("domain"), self._str("domain", ""), namesOnly=True) or None

        def attrs(name, default=""):
            return [a for a in _LIST_SPLIT.split(self._str(name, default)) if a]

        terminal, leaf = attrs("terminal_result_attribute"), attrs("leaf_result_attribute")
        ordinary, special = attrs("result_attribute", "maildrop"), attrs("special_result_attribute")
        self.attributes = terminal + leaf + ordinary + special
        self.numTerminal = len(terminal)
        self.numLeaf = len(leaf)
        self.numAttributes = len(terminal) + len(leaf) + len(ordinary)
        for a in self.attributes:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9;.-]*", a):
                raise self._error("result_attribute", f"bad attribute name {printable(a)!r}")

        self.scope = self._choice("scope", "sub", SCOPES)
        self.bind = self._choice("bind", "yes", BINDS)
        if self.bind == "sasl":
            raise self._error("bind", "bind = sasl is not supported (no SASL in the LDAP client); use simple")
        self.bindDn = self._str("bind_dn", "")
        self.bindPw = self._str("bind_pw", "")
        if self.bindPw and st.st_mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warn("{path}: holds bind_pw and is readable by others than its owner", path=path)
        self.recursionLimit = self._int("recursion_limit", 1000, 1)
        self.expansionLimit = self._int("expansion_limit", 0, 0)
        self.sizeLimit = self._int("size_limit", self.expansionLimit, 0)
        self.dereference = self._int("dereference", 0, 0, 3)
        self.version = self._int("version", 2, 2, 3)
        self.startTls = self._bool("start_tls", False)
        self.tlsRequireCert = self._bool("tls_require_cert", False)
        if "tls_ca_cert_dir" in entries and entries["tls_ca_cert_dir"][0]:
            raise self._error("tls_ca_cert_dir", "tls_ca_cert_dir is not supported; use tls_ca_cert_file")
        self.tlsCaCertFile = self._str("tls_ca_cert_file", "")
        self.tlsCert = self._str("tls_cert", "")
        self.tlsKey = self._str("tls_key", "")
        self.tlsOptions = None
        if self.startTls or any(s.kind == "tls" for s in self.servers):
            self.tlsOptions = self._tls()

        # The filter must parse whatever the key: try it with a key that fills every template.
        probe = "user@" + ".".join(f"d{i}" for i in range(9, 0, -1))
        text = self.templates.expand(self.queryFilter, probe, quote=escapeFilterValue)
        try:
            parseQueryFilter(text or "(objectClass=*)")
        except ValueError as e:
            raise self._error("query_filter", str(e)) from None

    # -- value helpers ------------------------------------------------------------

    def _error(self, name, why):
        return TableError(f"{self._config.where(name)}: {name}: {why}")

    def _str(self, name, default):
        return self._config.value(name, default)

    def _parse(self, name, default, parser):
        try:
            return parser(self._str(name, default))
        except ValueError as e:
            raise self._error(name, str(e)) from None

    def _int(self, name, default, low, high=None):
        text = self._str(name, None)
        if text is None:
            return default
        if not re.fullmatch(r"[0-9]+", text):
            raise self._error(name, f"bad numerical value {printable(text)!r}")
        value = int(text)
        if value < low or (high is not None and value > high):
            span = f"{low}..{high}" if high is not None else f"at least {low}"
            raise self._error(name, f"{value} out of range ({span})")
        return value

    def _bool(self, name, default):
        text = self._str(name, None)
        if text is None:
            return default
        if text.lower() not in BOOLEANS:
            raise self._error(name, f"bad boolean {printable(text)!r} (yes or no)")
        return BOOLEANS[text.lower()]

    def _choice(self, name, default, choices):
        text = self._str(name, default).lower()
        if text not in choices:
            raise self._error(name, f"unsupported value {printable(text)!r} (one of {', '.join(choices)})")
        return choices[text]

    def _tls(self):
        from twisted.internet import ssl

        def read(name, value):
            try:
                with open(value, "rb") as f:
                    return f.read()
            except OSError as e:
                raise self._error(name, f"{value}: {e.strerror}") from None

        client = None
        if self.tlsCert or self.tlsKey:
            if not (self.tlsCert and self.tlsKey):
                raise self._error("tls_cert", "tls_cert and tls_key go together")
            try:
                client = ssl.PrivateCertificate.loadPEM(read("tls_cert", self.tlsCert) + b"\n"
                                                        + read("tls_key", self.tlsKey))
            except Exception as e:
                raise self._error("tls_cert", f"cannot load certificate and key: {e}") from None
        if not self.tlsRequireCert:
            kwargs = {"privateKey": client.privateKey.original, "certificate": client.original} if client else {}
            options = ssl.CertificateOptions(**kwargs)
            return lambda host: options
        if self.tlsCaCertFile:
            pem = read("tls_ca_cert_file", self.tlsCaCertFile)
            blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.S)
            try:
                trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(b) for b in blocks])
            except Exception as e:
                raise self._error("tls_ca_cert_file", f"cannot load certificates: {e}") from None
            if not blocks:
                raise self._error("tls_ca_cert_file", "no certificate in the file")
        else:
            trust = ssl.platformTrust()
        return lambda host: ssl.optionsForClientTLS(host, trustRoot=trust, clientCertificate=client)


def parseQueryFilter(text):
    """The filter text to ldaptor's filter object (OpenLDAP adds missing parentheses too)."""
    from ldaptor import ldapfilter

    if not text.startswith("("):
        text = f"({text})"
    try:
        return ldapfilter.parseFilter(text)
    except Exception as e:
        raise ValueError(f"bad LDAP filter {printable(text, 100)!r}: {printable(str(e), 100)}") from None


def parseLdapUrl(url):
    """RFC 4516 URL to (dn, attributes, scope, filter); ValueError when malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("ldap", "ldaps", "ldapi"):
        raise ValueError("not an LDAP URL")
    _, slash, rest = rest.partition("/")
    if not slash:
        return "", [], SCOPES["base"], "(objectClass=*)"
    parts = rest.split("?")
    if len(parts) > 5:
        raise ValueError("too many '?' parts")
    parts += [""] * (5 - len(parts))
    dn = unquote(parts[0])
    attributes = [unquote(a) for a in parts[1].split(",") if a]
    scope = SCOPES.get(parts[2].lower() or "base")
    if scope is None:
        raise ValueError(f"bad scope {parts[2]!r}")
    filterText = unquote(parts[3]) or "(objectClass=*)"
    if any(e.startswith("!") for e in parts[4].split(",") if e):
        raise ValueError("critical extension")
    return dn, attributes, scope, filterText


def isLdapUrl(value):
    return value[:8].lower().startswith(("ldap://", "ldaps://", "ldapi://"))
