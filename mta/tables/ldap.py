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

The file and the escaping are mta.tables.ldapconfig's, the templates and
the domain filter mta.tables.dbcommon's (shared with the SQL tables); this
module is the client.
It is ldaptor (a Twisted protocol, never a thread): one connection
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
    type:table (only domain names and ``!name``).  chase_referrals, debuglevel,
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

from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeoutError
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError, printable
from mta.tables.ldapconfig import (
    SCOPES, LdapConfig, escapeDnValue, escapeFilterValue, isLdapUrl, parseLdapUrl, parseQueryFilter,
)

log = Logger()

MAX_PENDING = 100
MAX_MESSAGE = 1 << 20
MAX_KEY = 4096
MAX_SEARCHES = 1000

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
        if config.domains is not None and not await config.domains.admits(key):
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
