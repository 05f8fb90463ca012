"""mta.tables.ldap - ldap:/etc/mta/file.cf, lookups in an LDAP directory (Postfix's ldap_table(5)).

The file has main.cf's format (``name = value``, a line that starts with
white space continues the previous one, ``#`` comments) and Postfix's
parameter names and defaults.  A lookup expands search_base (RFC 4514 DN
escaping of the key) and query_filter (RFC 4515 filter escaping), searches
with the configured scope, reads result_attribute, follows DNs and LDAP URLs
in special_result_attribute (to recursion_limit levels), honours
terminal_result_attribute and leaf_result_attribute exactly as dict_ldap
does, formats each value with result_format and joins the values with
commas.  No entry, or entries without result values, is "not found" (None);
a key that the templates cannot use (%d of a key without a domain, %u of
``@domain``, %3 of a two-label domain, a domain not in ``domain``) is "not
found" without a search, as in Postfix.

Expansions (search_base, query_filter, result_format), as db_common.c:
``%%`` a percent sign, ``%s`` the key, ``%u`` its local part (the whole key
without ``@``), ``%d`` its domain, ``%1``..``%9`` the domain's labels from
the right (``%1`` of user@mail.example.com is com); in result_format the
lower-case ones take the result value apart and ``%S %U %D %1..%9`` the key.

The client is ldaptor (a Twisted protocol, never a thread): one connection
per table, opened at the first lookup (never at load, so ``mta-config
--check`` parses the file and checks the templates without a server),
optionally StartTLS, a simple bind when ``bind = yes``, then reused by all
lookups (LDAP multiplexes them by message id; at most MAX_PENDING at once).
server_host lists servers tried in order until one connects.  A connection
lost during a lookup is reopened and the lookup tried once more; a search
error other than "no such object" closes the connection (dict_ldap does
the same), so the next lookup starts afresh.  Each wait (connect, StartTLS,
bind, every search) is bounded by ``timeout``.  Down, slow or refusing
servers, a failed bind, size_limit, expansion_limit or recursion_limit
exceeded, a malformed reply: a warning and TableTemporaryError.

SECURITY
    Keys come from the network.  In query_filter they are escaped as RFC
    4515 asks (``*``, ``(``, ``)``, ``\\``, NUL become ``\\XX``), in
    search_base as RFC 4514 (dict_ldap's set: space, tab, ``"``, ``#``,
    ``+``, ``,``, ``;``, ``<``, ``>``, ``\\`` and NUL, plus ``=``), so a key
    can match only itself, never widen the filter or move the base.  The
    filter is parsed by ldaptor into its BER form, never sent as text.
    Replies are untrusted: a message buffer over MAX_MESSAGE bytes, a reply
    that does not decode or answers no request closes the connection;
    values must be UTF-8 without NUL, CR or LF (else a temporary error).
    The file holds bind_pw: a warning is logged when it is readable by
    others.

CONFIGURATION
    In the table's file (ldap_table(5)): server_host (localhost; names,
    host:port, ldap://host:port, ldaps://host:port, ldapi://%2Fpath),
    server_port (389), timeout (10), search_base (empty), query_filter
    ((mailacceptinggeneralid=%s)), result_format (%s; result_filter is the
    old name), domain (empty), result_attribute (maildrop),
    special_result_attribute, terminal_result_attribute,
    leaf_result_attribute (empty), scope (sub; base, one), bind (yes; no,
    none, simple), bind_dn, bind_pw, recursion_limit (1000),
    expansion_limit (0, no limit), size_limit ($expansion_limit),
    dereference (0; 0-3), version (2; 3 is spoken either way), start_tls
    (no), tls_require_cert (no), tls_ca_cert_file, tls_cert, tls_key.
    Fixed: MAX_PENDING = 100 lookups at once, MAX_MESSAGE = 1 MiB,
    MAX_KEY = 4096 bytes, MAX_SEARCHES = 1000 DN or URL searches for one
    key (group cycles multiply them below recursion_limit).

DEVIATIONS
    Always LDAPv3 (ldaptor speaks nothing else): ``version = 2``, Postfix's
    default, is accepted and ignored.  ``bind = sasl`` is refused at open
    (TableError; ldaptor has no SASL client), as are tls_ca_cert_dir (use
    tls_ca_cert_file) and a ``domain`` list entry that is a file or
    type:table (only domain names).  chase_referrals, debuglevel,
    tls_random_file, tls_cipher_suite and the cache parameters are ignored
    with a warning; referrals are not followed.  Invalid values (scope,
    dereference, a number, a boolean) are a TableError naming the file and
    line where Postfix warns and uses the default.  Postfix shares one
    connection between tables with the same server and bind; mta opens one
    per table.  OpenLDAP tries the next server_host also when a server
    drops the connection mid-bind; mta tries the next only when the
    connection cannot be made.  Attribute descriptions with options
    (``attr;lang-en``) match a table attribute without options and
    otherwise only exactly.  Keys with a lone surrogate (not UTF-8) are
    "not found" without a search, as Postfix does; keys over MAX_KEY bytes
    are a temporary error.  Beyond MAX_SEARCHES nested searches a lookup
    fails (temporary); Postfix has only recursion_limit.
"""

import ipaddress
import os
import re
import stat
from urllib.parse import unquote

from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError
from mta.tables.socketmap import printable

log = Logger()

MAX_PENDING = 100
MAX_MESSAGE = 1 << 20
MAX_KEY = 4096
MAX_SEARCHES = 1000

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


# -- templates (db_common.c) --------------------------------------------------------


class Templates:
    """
    The shared expansion context of search_base, query_filter and
    result_format, as db_common_parse() builds it.
    """

    def __init__(self):
        self.keyUser = self.keyDomain = self.valueUser = self.valueDomain = False
        self.nparts = 0

    def parse(self, fmt, query):
        """Note what C{fmt} uses; True when it depends on the key. ValueError for a bad %."""
        dynamic = False
        i = 0
        while i < len(fmt):
            if fmt[i] == "%":
                i += 1
                c = fmt[i] if i < len(fmt) else ""
                if c == "%":
                    pass
                elif c == "u":
                    if query:
                        self.keyUser = True
                    else:
                        self.valueUser = True
                    dynamic = True
                elif c == "d":
                    if query:
                        self.keyDomain = True
                    else:
                        self.valueDomain = True
                    dynamic = True
                elif c in ("s", "S"):
                    dynamic = True
                elif c == "U":
                    self.keyUser = True
                    dynamic = True
                elif c in "123456789" and c:
                    self.nparts = max(self.nparts, int(c))
                    self.keyDomain = True
                    dynamic = True
                elif c == "D":
                    self.keyDomain = True
                    dynamic = True
                else:
                    raise ValueError(f"invalid {'query' if query else 'result'} template: {fmt}")
            i += 1
        return dynamic

    def expand(self, fmt, value, key=None, quote=None):
        """
        db_common_expand(): C{fmt} with C{value} (the key, or with C{key}
        given, a result value); None when the value cannot fill the template.
        """
        if not value:
            return None
        quote = quote or (lambda v: v)
        vdomain = kdomain = None
        vuser = kuser = None
        if key is not None:
            if self.valueDomain or self.valueUser:
                at = value.rfind("@")
                if at >= 0:
                    vdomain, vuser = value[at + 1:], value[:at]
            if (not vdomain and self.valueDomain) or (vuser == "" and self.valueUser):
                return None
            if self.keyDomain or self.keyUser:
                at = key.rfind("@")
                if at >= 0:
                    kdomain, kuser = key[at + 1:], key[:at]
            if (not kdomain and self.keyDomain) or (kuser == "" and self.keyUser):
                return None
            labelsFrom = kdomain
        else:
            if self.keyDomain or self.keyUser:
                at = value.rfind("@")
                if at >= 0:
                    vdomain, vuser = value[at + 1:], value[:at]
            if (not vdomain and self.keyDomain) or (vuser == "" and self.keyUser):
                return None
            labelsFrom = vdomain
        labels = []
        if self.nparts:
            labels = labelsFrom.split(".")
            if len(labels) < self.nparts or any(not label for label in labels[-self.nparts:]):
                return None
        out = []
        i = 0
        while i < len(fmt):
            c = fmt[i]
            if c != "%":
                out.append(c)
                i += 1
                continue
            c = fmt[i + 1]
            i += 2
            if c == "%":
                out.append("%")
            elif c == "s":
                out.append(quote(value))
            elif c == "u":
                out.append(quote(vuser if vdomain is not None else value))
            elif c == "d":
                out.append(quote(vdomain))
            elif c == "S":
                out.append(quote(key if key is not None else value))
            elif c == "U":
                if key is not None:
                    out.append(quote(kuser if kdomain is not None else key))
                else:
                    out.append(quote(vuser if vdomain is not None else value))
            elif c == "D":
                out.append(quote(kdomain if key is not None else vdomain))
            else:
                out.append(quote(labels[len(labels) - int(c)]))
        return "".join(out)


# -- the configuration file -----------------------------------------------------------


def readConfigFile(path):
    """main.cf-format lines to {name: (value, line number)}; TableError naming file:line."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as e:
        raise TableError(f"{path}: cannot open LDAP table configuration: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TableError(f"{path}: not UTF-8") from None
    entries = {}
    last = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t":
            if last is None:
                raise TableError(f"{path}:{number}: continuation line with no parameter before it")
            value, where = entries[last]
            entries[last] = ((value + " " + stripped).strip(), where)
            continue
        name, eq, value = stripped.partition("=")
        name = name.strip()
        if not eq or not re.fullmatch(r"[A-Za-z0-9_]+", name):
            raise TableError(f"{path}:{number}: expected 'name = value', found {printable(stripped, 60)!r}")
        entries[name] = (value.strip(), number)
        last = name
    return entries, st


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
        entries, st = readConfigFile(path)
        self._entries = entries

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
        self.domains = self._parse("domain", "", self._domains)

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
        where = f"{self.path}:{self._entries[name][1]}" if name in self._entries else self.path
        return TableError(f"{where}: {name}: {why}")

    def _str(self, name, default):
        return self._entries[name][0] if name in self._entries else default

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

    def _domains(self, text):
        domains = set()
        for item in _LIST_SPLIT.split(text.strip()):
            if not item:
                continue
            if "/" in item or ":" in item:
                raise ValueError(f"{item}: only domain names are supported in 'domain', not files or tables")
            domains.add(item.lower())
        return domains or None

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


# -- the protocol -----------------------------------------------------------------------


class LdapConnectionLost(Exception):
    """The connection went away under a request."""


def _client():
    from ldaptor.protocols import pureldap
    from ldaptor.protocols.ldap.ldapclient import LDAPClient
    from twisted.internet.interfaces import IHandshakeListener

    @implementer(IHandshakeListener)
    class LdapClient(LDAPClient):
        """ldaptor's client with bounded buffering; any decoding trouble closes the connection."""

        def __init__(self, table):
            super().__init__()
            self.table = table
            self.lost = False
            # Fires when a TLS handshake (ldaps:// or StartTLS) completes; fails if the connection
            # goes first, with the reason (a certificate that does not verify, say).
            self.handshake = Deferred()
            self.handshakeDone = False

        def handshakeCompleted(self):
            if not self.handshakeDone:
                self.handshakeDone = True
                self.handshake.callback(None)

        def dataReceived(self, data):
            if self.lost:
                return
            if len(self.buffer) + len(data) > MAX_MESSAGE:
                self.table._protocolError(self, f"reply over {MAX_MESSAGE} bytes")
                return
            try:
                super().dataReceived(data)
            except Exception as e:
                self.table._protocolError(self, f"undecodable reply: {printable(repr(e), 100)}")

        def handle(self, msg):
            if not isinstance(msg.value, pureldap.LDAPProtocolResponse) or (
                    msg.id != 0 and msg.id not in self.onwire):
                raise ValueError("reply to no request")
            super().handle(msg)

        def unsolicitedNotification(self, msg):
            self.table._protocolError(self, f"notice from the server: {printable(repr(msg), 100)}")

        def connectionLost(self, reason=None):
            self.lost = True
            if not self.handshakeDone:
                self.handshakeDone = True
                why = reason.getErrorMessage() if reason is not None else "connection lost"
                self.handshake.errback(TableTemporaryError(f"TLS handshake failed: {printable(why, 200)}"))
                self.handshake.addErrback(lambda failure: None)  # nobody waited: no TLS asked for
            super().connectionLost(reason)
            self.table._connectionLost(self)

        def abort(self):
            self.lost = True
            self.transport.abortConnection()

    return LdapClient


@implementer(ILookupTable)
class LdapTable:
    """ldap:/path/to/file.cf; see the module docstring."""

    pattern = False  # dict_ldap is DICT_FLAG_FIXED: callers may try partial keys

    def __init__(self, name, reactor):
        self.spec = f"ldap:{name}"
        if not name.startswith("/"):
            raise TableError(f"{self.spec}: ldap needs the absolute path of its configuration file "
                             "(main.cf-style ldap:name parameters are not supported)")
        self.config = LdapConfig(name)
        self._reactor = reactor
        self._protocol = None
        self._opening = None
        self._waiters = []
        self._pending = 0
        self._closed = False

    # -- lookups ------------------------------------------------------------------

    def lookup(self, key):
        return Deferred.fromCoroutine(self._lookup(key))

    async def _lookup(self, key):
        try:
            encoded = key.encode("utf-8")
        except UnicodeEncodeError:
            log.debug("{spec}: skipping lookup of a key that is not UTF-8", spec=self.spec)
            return None
        if len(encoded) > MAX_KEY:
            raise self._temporary(f"key over {MAX_KEY} bytes", key)
        config = self.config
        if config.domains is not None:
            at = key.rfind("@")
            if at <= 0 or key[at + 1:].lower() not in config.domains:
                return None
        base = config.templates.expand(config.searchBase, key, quote=escapeDnValue) if config.searchBase else ""
        if base is None:
            return None
        filterText = config.templates.expand(config.queryFilter, key, quote=escapeFilterValue)
        if filterText is None:
            return None
        try:
            searchFilter = parseQueryFilter(filterText)
        except ValueError as e:
            raise self._temporary(str(e), key) from None
        if self._pending >= MAX_PENDING:
            raise self._temporary(f"more than {MAX_PENDING} lookups at once", key)
        self._pending += 1
        try:
            for attempt in (1, 2):
                try:
                    client = await self._connection()
                    return await self._search(client, key, base, searchFilter)
                except LdapConnectionLost:
                    if attempt == 2:
                        raise self._temporary("connection lost, twice", key) from None
                    log.info("{spec}: connection lost during a lookup; reconnecting to try again", spec=self.spec)
        except (TableTemporaryError, CancelledError):
            raise
        except Exception:
            log.failure("{spec}: lookup failed", spec=self.spec)
            raise self._temporary("internal error", key) from None
        finally:
            self._pending -= 1

    def _temporary(self, why, key=None):
        if key is not None:
            log.warn("{spec}: lookup error for key {key}: {why}", spec=self.spec, key=printable(key, 100), why=why)
        return TableTemporaryError(f"{self.spec}: {why}")

    async def _search(self, client, key, base, searchFilter):
        state = _Expansion()
        code, message, entries = await self._request(client, base, self.config.scope, searchFilter)
        if code == 32:  # noSuchObject
            if self.config.dynamicBase:
                return None
            raise self._temporary(f"search base {base!r} not found: {printable(message, 100)}", key)
        if code != 0:
            self._dropConnection(client)
            raise self._temporary(f"search error {code}: {printable(message, 100)}", key)
        parts = []
        await self._values(client, entries, key, parts, state, 1)
        return ",".join(parts) if parts else None

    async def _request(self, client, base, scope, searchFilter, attributes=None):
        """One search; (resultCode, message, entries) with entries [(dn, [(attr, [values])])]."""
        from ldaptor.protocols import pureldap

        config = self.config
        request = pureldap.LDAPSearchRequest(
            baseObject=base, scope=scope, derefAliases=config.dereference, sizeLimit=config.sizeLimit,
            timeLimit=config.timeout, typesOnly=0, filter=searchFilter,
            attributes=config.attributes if attributes is None else attributes)
        entries = []
        done = Deferred()

        def handler(response):
            if isinstance(response, pureldap.LDAPSearchResultEntry):
                entries.append((response.objectName, response.attributes))
                if config.sizeLimit and len(entries) > config.sizeLimit:
                    if not done.called:
                        done.errback(self._temporary(f"query size limit ({config.sizeLimit}) exceeded"))
                return False
            if isinstance(response, pureldap.LDAPSearchResultReference):
                return False
            if isinstance(response, pureldap.LDAPSearchResultDone):
                if not done.called:
                    done.callback((response.resultCode, _text(response.errorMessage)))
                return True
            if not done.called:
                done.errback(self._temporary(f"unexpected reply {type(response).__name__}"))
            return True

        try:
            sent = client.send_multiResponse(request, handler)
        except Exception:
            raise LdapConnectionLost() from None
        sent.addErrback(lambda f: done.called or done.errback(LdapConnectionLost()))
        code, message = await self._wait(client, done, "search")
        return code, message, entries

    async def _wait(self, client, d, what):
        """C{d} within the timeout; a timeout drops C{client} and is a temporary error."""
        d.addTimeout(self.config.timeout, self._reactor)
        try:
            return await d
        except DeferredTimeoutError:
            self._dropConnection(client)
            raise self._temporary(f"{what} timeout after {self.config.timeout}s") from None

    async def _values(self, client, entries, key, parts, state, recursion):
        """dict_ldap_get_values() over C{entries}, appending formatted values to C{parts}."""
        config = self.config
        attrs = config.attributes
        for dn, attributes in entries:
            values = {}
            order = []
            for name, vals in attributes:
                name = _text(name)
                order.append(name)
                values[name] = [_value(self, v) for v in vals]
            isTerminal = False
            isLeaf = True
            for a in attrs[:config.numTerminal]:
                if any(values.get(n) for n in order if _attrMatches(a, n)):
                    isTerminal = True
                    break
            if not isTerminal and config.numLeaf:
                for a in attrs[config.numAttributes:]:
                    if any(values.get(n) for n in order if _attrMatches(a, n)):
                        isLeaf = False
                        break
            for name in order:
                vals = values[name]
                if not vals:
                    continue
                i = next((j for j, a in enumerate(attrs) if _attrMatches(a, name)), len(attrs))
                if i < config.numAttributes or isTerminal:
                    if (isTerminal and i >= config.numTerminal) or (
                            not isLeaf and i < config.numTerminal + config.numLeaf):
                        continue
                    for v in vals:
                        formatted = config.templates.expand(config.resultFormat, v, key=key)
                        if formatted is None:
                            if not v:
                                log.warn("{spec}: empty lookup result for {key} ignored", spec=self.spec,
                                         key=printable(key, 100))
                            continue
                        parts.append(formatted)
                        state.expansions += 1
                        if config.expansionLimit and state.expansions > config.expansionLimit:
                            raise self._temporary("expansion limit exceeded", key)
                elif i < len(attrs):
                    if recursion >= config.recursionLimit:
                        raise self._temporary(f"recursion limit exceeded for special attribute {name}", key)
                    for v in vals:
                        await self._follow(client, v, key, parts, state, recursion)

    async def _follow(self, client, value, key, parts, state, recursion):
        config = self.config
        state.searches += 1
        if state.searches > MAX_SEARCHES:
            raise self._temporary(f"more than {MAX_SEARCHES} DN or URL searches for one key", key)
        if isLdapUrl(value):
            try:
                dn, urlAttrs, scope, filterText = parseLdapUrl(value)
                searchFilter = parseQueryFilter(filterText)
            except ValueError as e:
                raise self._temporary(f"malformed URL {printable(value, 100)}: {e}", key) from None
            if urlAttrs:
                wanted = [a for a in config.attributes if any(_attrMatches(a, u) or _attrMatches(u, a)
                                                              for u in urlAttrs)]
            else:
                wanted = list(config.attributes)
            if not wanted:
                return
        else:
            dn, scope, wanted = value, SCOPES["base"], None
            searchFilter = parseQueryFilter("(objectclass=*)")
        code, message, entries = await self._request(client, dn, scope, searchFilter, wanted)
        if code == 32:
            log.warn("{spec}: DN {dn} not found, skipping", spec=self.spec, dn=printable(dn, 100))
            return
        if code != 0:
            raise self._temporary(f"search error {code} following {printable(dn, 100)}: "
                                  f"{printable(message, 100)}", key)
        await self._values(client, entries, key, parts, state, recursion + 1)

    # -- the connection -----------------------------------------------------------------

    async def _connection(self):
        if self._closed:
            raise self._temporary("table closed")
        if self._protocol is not None and not self._protocol.lost:
            return self._protocol
        if self._opening is None:
            self._opening = Deferred.fromCoroutine(self._open())
            self._opening.addBoth(self._opened)
        waiter = Deferred()
        self._waiters.append(waiter)
        return await waiter

    def _opened(self, result):
        self._opening = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            error = result.value
            if not isinstance(error, TableTemporaryError):
                error = self._temporary(f"cannot connect: {error}")
            for w in waiters:
                w.errback(error)
            return None
        self._protocol = result
        for w in waiters:
            w.callback(result)
        return None

    def _endpoint(self, server):
        from twisted.internet import endpoints

        timeout = self.config.timeout
        if server.kind == "unix":
            return endpoints.UNIXClientEndpoint(self._reactor, server.path, timeout=timeout)
        try:
            version = ipaddress.ip_address(server.host).version
        except ValueError:
            version = None
        if version == 4:
            endpoint = endpoints.TCP4ClientEndpoint(self._reactor, server.host, server.port, timeout=timeout)
        elif version == 6:
            endpoint = endpoints.TCP6ClientEndpoint(self._reactor, server.host, server.port, timeout=timeout)
        else:
            endpoint = endpoints.HostnameEndpoint(self._reactor, server.host, server.port, timeout=timeout)
        if server.kind == "tls":
            endpoint = endpoints.wrapClientTLS(self.config.tlsOptions(server.host), endpoint)
        return endpoint

    async def _open(self):
        config = self.config
        factoryClass = _client()
        reasons = []
        for server in config.servers:
            factory = Factory.forProtocol(lambda: factoryClass(self))
            d = self._endpoint(server).connect(factory)
            d.addTimeout(config.timeout, self._reactor)
            try:
                client = await d
            except (DeferredTimeoutError, ConnectingCancelledError, CancelledError):
                if self._closed:
                    raise self._temporary("table closed") from None
                reasons.append(f"{server!r}: connect timeout after {config.timeout}s")
                continue
            except Exception as e:
                reasons.append(f"{server!r}: {printable(str(e) or type(e).__name__, 100)}")
                continue
            try:
                if server.kind == "tls":
                    await self._handshake(client, server)
                if config.startTls and server.kind != "tls":
                    await self._startTls(client, server)
                if config.bind == "simple":
                    await self._bind(client, server)
            except LdapConnectionLost:
                self._dropConnection(client)
                raise self._temporary(f"{server!r}: connection lost while setting it up") from None
            except BaseException:
                self._dropConnection(client)
                raise
            log.debug("{spec}: connected to {server}", spec=self.spec, server=repr(server))
            return client
        reason = "; ".join(reasons)
        log.warn("{spec}: cannot connect to any LDAP server: {reason}", spec=self.spec, reason=reason)
        raise TableTemporaryError(f"{self.spec}: cannot connect: {reason}")

    async def _bind(self, client, server):
        from ldaptor.protocols import pureldap

        try:
            d = client.send(pureldap.LDAPBindRequest(version=3, dn=self.config.bindDn, auth=self.config.bindPw))
        except Exception:
            raise LdapConnectionLost() from None
        d.addErrback(_lostConnection)
        response = await self._wait(client, d, "bind")
        if response.resultCode != 0:
            message = f"{server!r}: bind as {self.config.bindDn!r} failed: {response.resultCode} " \
                      f"{printable(_text(response.errorMessage), 100)}"
            log.warn("{spec}: {message}", spec=self.spec, message=message)
            raise TableTemporaryError(f"{self.spec}: {message}")

    async def _startTls(self, client, server):
        from ldaptor.protocols import pureldap

        try:
            d = client.send(pureldap.LDAPStartTLSRequest())
        except Exception:
            raise LdapConnectionLost() from None
        d.addErrback(_lostConnection)
        response = await self._wait(client, d, "StartTLS")
        if response.resultCode != 0:
            message = f"{server!r}: StartTLS refused: {response.resultCode} " \
                      f"{printable(_text(response.errorMessage), 100)}"
            log.warn("{spec}: {message}", spec=self.spec, message=message)
            raise TableTemporaryError(f"{self.spec}: {message}")
        client.transport.startTLS(self.config.tlsOptions(server.host))
        await self._handshake(client, server)

    async def _handshake(self, client, server):
        try:
            await self._wait(client, client.handshake, "TLS handshake")
        except TableTemporaryError as e:
            message = f"{server!r}: {e}"
            log.warn("{spec}: {message}", spec=self.spec, message=message)
            raise TableTemporaryError(f"{self.spec}: {message}") from None

    def _protocolError(self, client, why):
        log.warn("{spec}: LDAP protocol error: {why}; closing the connection", spec=self.spec, why=why)
        self._dropConnection(client)

    def _connectionLost(self, client):
        if client is self._protocol:
            self._protocol = None

    def _dropConnection(self, client):
        if client is self._protocol:
            self._protocol = None
        if client is not None and not client.lost:
            client.abort()

    def close(self):
        """Close the connection; lookups in progress fail with TableTemporaryError."""
        self._closed = True
        if self._opening is not None:
            self._opening.cancel()
        self._dropConnection(self._protocol)


class _Expansion:
    def __init__(self):
        self.expansions = 0
        self.searches = 0


def _lostConnection(failure):
    if failure.check(TableTemporaryError, CancelledError):
        return failure
    raise LdapConnectionLost()


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if value is not None else ""


def _value(table, value):
    if isinstance(value, str):
        text = value
    else:
        try:
            text = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise table._temporary(f"result value not UTF-8: {printable(bytes(value).decode('latin-1'), 60)}") from None
    if "\x00" in text or "\r" in text or "\n" in text:
        raise table._temporary(f"result value with NUL, CR or LF: {printable(text, 60)}")
    return text


def _attrMatches(tableAttr, returned):
    """dict_ldap's attrdesc_subtype(), simplified: equal, or C{returned} adds options."""
    a, r = tableAttr.lower(), returned.lower()
    return a == r or (";" not in a and r.startswith(a + ";"))
