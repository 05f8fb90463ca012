"""mta.rewrite - trivial-rewrite's "rewrite" step: addresses completed for cleanup.

NAME
    AddressRewriting, RewriteContext, HeaderRewriteClients - qualify
    envelope and header addresses as Postfix's cleanup(8) has
    trivial-rewrite(8) do it (src/trivial-rewrite/rewrite.c)

SYNOPSIS
    rewriting = AddressRewriting(settings)   # a RewriteSettings (config.settings.rewrite)
    rewriting.parsePath("<root>", allowNull=False)   # Address("root", "$myorigin")
    rewriting.envelopeAddress("root", allowNull=False)   # "root@$myorigin" (queue files)
    rewriting.headerContext(isLocal)       # rewriting.local, or rewriting.remote (None
                                           # when remote_header_rewrite_domain is empty)
    context.header(b"To: root\\r\\n")        # b"To: root@$myorigin\\r\\n"
    clients = HeaderRewriteClients(settings.localHeaderRewriteClients, mynetworks, tables)
    clients.static; clients.staticMatch(client, server); await clients.matches(client, server)

DESCRIPTION
    Two contexts, as in Postfix.  The local context completes addresses with
    $myorigin and $mydomain; the remote one with
    $remote_header_rewrite_domain for both.  In either, an address is
    rewritten by these rules, in this order (rewrite_tree()):
      - the empty address "" is left alone, and a lone "@" becomes "";
      - a source route is removed: <@a,@b:user@c> becomes <user@c>;
      - with append_at_myorigin = yes (the default), an address without
        "@" gets "@" and the context's origin: root becomes root@$myorigin;
      - with append_dot_mydomain = yes (default no, since Postfix 3.0), a
        domain without a dot, not a [literal] and not empty, gets "." and
        the context's domain: user@host becomes user@host.$mydomain;
      - a trailing dot is removed (user@host. is user@host), but not "..".
    The result's local part is quoted when it is not a dot-string
    (quote_822_local: "a..b"@x, "john smith"@x), as Postfix writes it.

    Envelope addresses are always rewritten in the local context (Postfix's
    cleanup_addr.c: "an unqualified envelope address is for all practical
    purposes equivalent to a fully qualified local address"): parsePath()
    completes an SMTP path before mta.address checks it, so MAIL FROM:<root>
    and RCPT TO:<root> are accepted as root@$myorigin, and the recipient
    checks (relay control, access tables, unlisted recipients) judge the
    completed address, as Postfix's smtpd resolves the address before its
    checks.  RCPT TO:<postmaster> becomes postmaster@$myorigin, as in
    Postfix (whose smtpd accepts the bare form without any restriction, as
    RFC 5321 4.5.1 asks; so does mta's).  envelopeAddress() does the same
    for an address read from a maildrop file (pickup(8)).

    Header addresses are rewritten only in mail from a client that matches
    local_header_rewrite_clients (local context; mail submitted with
    mta-sendmail always is), or in the remote context when
    remote_header_rewrite_domain is set; otherwise headers are left as they
    are.  The address headers are Postfix's (header_opts.c): From, Sender,
    Reply-To, To, Cc, Bcc, Resent-From, Resent-Sender, Resent-To, Resent-Cc,
    Resent-Bcc, Resent-Reply-To, Return-Path, Return-Receipt-To, Errors-To,
    Disposition-Notification-To, Mail-Followup-To and Apparently-To, in the
    primary header section only.  The addresses of one header are found as
    Postfix's tok822 parser finds them (mta.addrlist): display names, group
    names and comments are never addresses, "Name <root>" and "group: root;"
    give root, and words without a comma between them are separate
    addresses, as Postfix reads them ("To: John Smith" is John and Smith).
    Each address is rewritten by the rules above; when the result differs
    from the address as written (in Postfix's external form), the address's
    text is replaced by the result, and a comment written inside the
    address moves after it.  When nothing changes, the header is passed on
    byte for byte.

    HeaderRewriteClients decides whether a client is local, at MAIL FROM,
    as Postfix's smtpd_check_rewrite(): the list is tried left to right and
    the first match wins.
      permit_inet_interfaces   the client address is one of this host's: a
                               loopback address (127.0.0.0/8, ::1, also as
                               ::ffff:127.x.y.z) or the address of the
                               listener it connected to
      permit_mynetworks        the client address matches $mynetworks
      permit_sasl_authenticated  a client that logged in with AUTH
      permit_tls_all_clientcerts
                               the client's certificate verified (tls: the
                               session's mta.tls.info.TlsInfo)
      permit_tls_clientcerts   its fingerprint or public-key fingerprint is
                               a key of relay_clientcerts (the opened tables)
                               yet
      check_address_map type:table, or a bare type:table
                               the client address (IPv4, or IPv6 without
                               brackets) is a key in the table; the value is
                               ignored, no subnet lookup is done
    A table that cannot answer makes MAIL FROM fail with "451 4.3.0
    Temporary lookup error", as in Postfix.  The list is checked when the
    configuration is loaded (mta.config.types.RewriteClients).

DEVIATIONS
    Only what append_at_myorigin, append_dot_mydomain,
    local_header_rewrite_clients and remote_header_rewrite_domain need is
    implemented.  swap_bangpath and allow_percent_hack (Postfix's defaults:
    yes) are not: mta behaves as Postfix with both set to no, so "host!user"
    and "user%host" without "@" get "@$myorigin" like any other local part,
    and are never turned into user@host.  The mailer-daemon@$myorigin to <>
    replacement of cleanup_addr.c is not done either.

    Postfix re-emits a header it rewrites from its tokens: every address
    re-quoted, white space and comments rearranged ("John Q. Public" becomes
    "John Q.Public", "<a> (c)" becomes "<a>(c)"), missing commas added, and
    the header refolded at about 70 columns.  mta changes only the
    addresses that change and keeps every other byte (phrases, comments,
    white space, the original folding); it inserts the commas that Postfix
    adds (so "To: John Smith" becomes "To: John@$myorigin, Smith@$myorigin",
    as in Postfix), and folds only a line that rewriting made longer than 78
    columns, after a comma between addresses.  Postfix's removal of
    comments from an address with more than 250 bytes of them (for old
    Sendmail, CERT CA-2003-07) is not done: nothing is re-emitted.

    A header that cannot be read as an address list (an unterminated
    quoted string, comment or domain literal, a control character, a
    backslash at a line end, more than 10240 tokens) is left as it is;
    Postfix would close the string and rewrite what it parsed, or drop the
    tokens past its token_limit.  At most ten times header_size_limit bytes
    are added to one message by header rewriting (mta.cleanup.headers's
    REWRITE_GROWTH); past that, headers are left as they are and cleanup
    logs a warning (Postfix bounds the whole queue file by
    message_size_limit instead, and refuses a message that outgrows it).

    permit_inet_interfaces knows this host's addresses as loopback and the
    listener's own address; Postfix uses every address of
    $inet_interfaces, which mta does not have.  Unknown names in
    local_header_rewrite_clients are a configuration error (Postfix logs a
    warning and skips them).

    With append_at_myorigin = no, an envelope address without a domain
    (other than RCPT TO:<postmaster>) is refused as before (501 5.1.3 or
    5.1.7, "address has no domain"), where Postfix would queue it bare;
    Postfix says of that setting that it "must not be turned off".  A
    trailing dot in an envelope domain is refused by mta.address (Postfix
    removes it).  reject_non_fqdn_sender and reject_non_fqdn_recipient, and
    the addresses in reject log lines and replies, see the completed
    address (RCPT TO:<root> passes reject_non_fqdn_recipient when $myorigin
    has a dot); Postfix judges and logs the address as the client sent it.

SECURITY
    Header text and envelope paths are untrusted; see mta.addrlist for the
    limits of the header parser (linear work, 10240 tokens, no exception
    escapes).  The domains appended come from the configuration: one that
    holds white space, a control character or an address special (a typo
    could otherwise break every header it touches) is not used, with an
    error in the log, and addresses are then not completed with it (the
    settings, mta.config.settings.cleanup.RewriteSettings, decide that at
    load; AddressRewriting logs it).  The rewritten envelope address is checked by mta.address like any other.

CONFIGURATION
    RewriteSettings (mta.config.settings.cleanup): append_at_myorigin
    (yes), append_dot_mydomain (no), myorigin ($myhostname), mydomain,
    remote_header_rewrite_domain (empty), local_header_rewrite_clients
    (permit_inet_interfaces); and the caller's mynetworks matcher.
"""

import ipaddress
import re

from twisted.logger import Logger

from mta.address import parsePath
from mta.addrlist import Malformed, Token, external, internal, parse, quoteLocal, scan
from mta.config.types import TableSpec
from mta.model import Address

log = Logger()

ADDRESS_HEADERS = frozenset(
    b"apparently-to bcc cc disposition-notification-to errors-to from mail-followup-to reply-to "
    b"resent-bcc resent-cc resent-from resent-reply-to resent-sender resent-to return-path "
    b"return-receipt-to sender to".split()
)
"""Postfix's sender and recipient address headers (header_opts.c), lower case."""

FOLD_LIMIT = 78


# The fast path of AddressRewritingContext.header(): a header value made only of
# plain, qualified addresses, comma-separated, each alone or as "Display Name
# <address>", with no quotes, comments, groups, literals, escapes or non-ASCII.
# The rules above change none of them (each has an "@", a dotted domain without
# a trailing dot and a dot-atom local part, so it is written back as it was),
# so the tokenizer is not run.  tests/unit/test_rewrite.py checks by property
# that a value the fast path passes is one the full path leaves alone.
_ATEXT = rb"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_PLAIN_ADDRESS = re.compile(
    rb"[%s]+(?:\.[%s]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+" % (_ATEXT, _ATEXT))
_PLAIN_ITEM = re.compile(
    rb"[ \t\r\n]*(?:(?:[.%s]+[ \t\r\n]+)*<(?P<angle>[^<>@ \t\r\n]+@[^<> \t\r\n]+)>"
    rb"|(?P<bare>[^<>, \t\r\n]+))[ \t\r\n]*" % _ATEXT)


def _plainlyQualified(value):
    """Whether the header value C{value} (bytes) holds only plain qualified addresses."""
    for item in value.split(b","):
        match = _PLAIN_ITEM.fullmatch(item)
        if match is None:
            return False
        address = match.group("angle") or match.group("bare")
        if _PLAIN_ADDRESS.fullmatch(address) is None:
            return False
    return True


def _rewriteTokens(tokens, origin, domain):
    """rewrite_tree(): the tokens of one address; C{origin}, C{domain}: token lists, or None."""
    if len(tokens) == 1 and tokens[0].kind == "qstring" and not tokens[0].value:
        return tokens
    if len(tokens) == 1 and tokens[0].kind == "@":
        return [Token("qstring", b"")]
    result = list(tokens)
    if result[0].kind == "@":  # a source route
        colon = next((k for k, t in enumerate(result) if t.kind == ":"), None)
        if colon is not None and colon != len(result) - 1:
            del result[:colon + 1]
    at = next((k for k in range(len(result) - 1, -1, -1) if result[k].kind == "@"), None)
    if at is None and origin:
        at = len(result)
        result += [Token("@", b"@")] + origin
    if (domain and at is not None and at != len(result) - 1
            and not any(t.kind in ("domlit", ".") for t in result[at:])):
        result += [Token(".", b".")] + domain
    if result[-1].kind == "." and len(result) > 1 and result[-2].kind not in (".", "@"):
        del result[-1]
    return result


def hasUnquotedAt(text):
    """Whether C{text} (an address as written) has an @ outside quotes and backslash escapes."""
    quoted = escaped = False
    for c in text:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "@" and not quoted:
            return True
    return False


def _fold(data, changed, breaks, limit=FOLD_LIMIT):
    """Fold the lines of C{data} that hold a change (output ranges) and are over C{limit}."""
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    out = bytearray()
    start, n = 0, len(data)
    while start < n:
        nl = data.find(b"\n", start)
        stop = n if nl < 0 else nl + 1
        end = stop - (1 if nl >= 0 else 0)
        if end > start and data[end - 1:end] == b"\r":
            end -= 1
        if end - start > limit and any(s < end and e > start for s, e in changed):
            points = [start] + [b for b in breaks if start < b < end] + [end]
            length = points[1] - start
            out += data[start:points[1]]
            for k in range(1, len(points) - 1):
                segment = data[points[k]:points[k + 1]]
                rest = segment.lstrip(b" \t")
                if length + len(segment) > limit and rest:
                    out += eol + b"\t" + rest
                    length = 1 + len(rest)
                else:
                    out += segment
                    length += len(segment)
            out += data[end:stop]
        else:
            out += data[start:stop]
        start = stop
    return bytes(out)


class RewriteContext:
    """
    One rewriting context: C{name} "local" or "remote"; C{origin} is appended
    after "@" to addresses without one, C{domain} after "." to domains
    without a dot ("" for either: not done).
    """

    def __init__(self, name, origin="", domain=""):
        self.name = name
        self.origin = origin
        self.domain = domain
        self._origin = scan(origin.encode("utf-8")) if origin else None
        self._domain = scan(domain.encode("utf-8")) if domain else None

    def __repr__(self):
        return f"RewriteContext({self.name!r}, {self.origin!r}, {self.domain!r})"

    # -- envelope -----------------------------------------------------------------

    def qualifyPath(self, path):
        """The SMTP path text C{path} ("<...>") with "@origin" added when it has no domain."""
        if not self.origin or len(path) < 3 or path[0] != "<" or path[-1] != ">":
            return path
        inner = path[1:-1]
        mailbox = inner
        if inner.startswith("@"):  # a source route: the mailbox follows the colon
            colon = inner.find(":")
            if colon < 0 or colon == len(inner) - 1:
                return path
            mailbox = inner[colon + 1:]
        if hasUnquotedAt(mailbox):
            return path
        return f"<{inner}@{self.origin}>"

    def address(self, address, smtputf8=False):
        """An envelope Address rewritten (origin for an empty domain, then .domain)."""
        if address.isNull:
            return address
        domain = address.domain
        if not domain and self.origin:
            domain = self.origin.lower()
        if (domain and self.domain and not domain.startswith("[") and "." not in domain
                and (smtputf8 or self.domain.isascii())):
            domain = f"{domain}.{self.domain.lower()}"
        return address if domain == address.domain else Address(address.local, domain)

    # -- headers --------------------------------------------------------------------

    def header(self, header):
        """
        One address header (bytes: name, colon, value and its line ends) with
        its addresses rewritten; the very same object when nothing changes.
        """
        colon = header.find(b":")
        if colon < 0 or _plainlyQualified(header[colon + 1:]):
            return header
        try:
            tokens = scan(header, colon + 1)
        except Malformed:
            return header
        found = parse(tokens)
        edits = []
        for indices in found.addresses:
            old = [tokens[k] for k in indices]
            written = b"".join(external(t) for t in old)
            new = quoteLocal(internal(_rewriteTokens(old, self._origin, self._domain)))
            if new != written:
                moved = b"".join(b" " + t.value for t in tokens[indices[0]:indices[-1]] if t.kind == "comment")
                edits.append((old[0].start, old[-1].end, new + moved))
        if not edits:
            return header
        edits.extend((tokens[k].end, tokens[k].end, b",") for k in found.missingCommas)
        edits.sort(key=lambda edit: (edit[0], edit[1]))
        commaEnds = [tokens[k].end for k in found.commas]
        out, changed, breaks = bytearray(), [], []
        pos = ci = 0
        for start, end, text in edits:
            while ci < len(commaEnds) and commaEnds[ci] <= start:
                breaks.append(len(out) + commaEnds[ci] - pos)
                ci += 1
            out += header[pos:start]
            changed.append((len(out), len(out) + len(text)))
            out += text
            if text == b",":
                breaks.append(len(out))
            pos = end
        breaks.extend(len(out) + c - pos for c in commaEnds[ci:])
        out += header[pos:]
        return _fold(bytes(out), changed, sorted(breaks))


class AddressRewriting:
    """
    The local and remote contexts of a RewriteSettings
    (mta.config.settings.cleanup), and envelope rewriting.  The settings
    have left out a domain that is not a domain name (C{refused}); it is
    logged here, once per service that rewrites.
    """

    def __init__(self, settings):
        self.settings = settings
        for name, value in settings.refused:
            log.error("{name} = {value!r} is not a domain name: addresses are not completed with it",
                      name=name, value=value)
        self.local = RewriteContext("local", settings.localOrigin, settings.localDomain)
        self.remote = None
        if settings.remote:
            self.remote = RewriteContext("remote", settings.remoteOrigin, settings.remoteDomain)

    def headerContext(self, isLocal):
        """The context for the headers of a client that is local or not (None: no rewriting)."""
        return self.local if isLocal else self.remote

    def parsePath(self, path, allowNull, smtputf8=False, *, allowPostmaster=None):
        """mta.address.parsePath() of C{path} completed in the local context; PathError as there."""
        address = parsePath(self.local.qualifyPath(path), allowNull, smtputf8, allowPostmaster=allowPostmaster)
        return self.local.address(address, smtputf8)

    def envelopeAddress(self, text, allowNull, smtputf8=False):
        """An envelope address as a queue file holds it (no brackets), rewritten; PathError if bad."""
        return str(self.parsePath(f"<{text}>", allowNull, smtputf8))


# -- which clients are local -------------------------------------------------------------


def _ip(address):
    """C{address} as an ipaddress object (an IPv4-mapped IPv6 address as IPv4), or None."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def isOwnAddress(client, server):
    """permit_inet_interfaces: C{client} is a loopback address or the listener's own (C{server})."""
    ip = _ip(client or "")
    if ip is None:
        return False
    return ip.is_loopback or (server is not None and ip == _ip(server))


class HeaderRewriteClients:
    """
    local_header_rewrite_clients: C{items} as mta.config.types.RewriteClients
    gives them (names, and TableSpecs for check_address_map), C{mynetworks} a
    NetworkMatcher, C{tables} opens the TableSpecs.
    """

    NEVER = frozenset()

    def __init__(self, items, mynetworks, tables, relayClientcerts=()):
        self._items = [tables.open(i) if isinstance(i, TableSpec) else i for i in items]
        self._mynetworks = mynetworks
        self._relayClientcerts = tuple(relayClientcerts)  # opened relay_clientcerts tables
        self.static = all(isinstance(i, str) for i in self._items) and (
            mynetworks.static or "permit_mynetworks" not in self._items) and (
            not self._relayClientcerts or "permit_tls_clientcerts" not in self._items)

    @staticmethod
    def _trusted(tls):
        return tls is not None and tls.peer is not None and tls.peer.trusted

    def staticMatch(self, client, server, tls=None, saslUsername=None):
        """Does the client match (tables, and tables in mynetworks, not consulted)?"""
        for item in self._items:
            if item == "permit_sasl_authenticated" and saslUsername:
                return True
            if item == "permit_inet_interfaces" and isOwnAddress(client, server):
                return True
            if item == "permit_mynetworks" and self._mynetworks.staticMatch(client):
                return True
            if item == "permit_tls_all_clientcerts" and self._trusted(tls):
                return True
        return False

    async def matches(self, client, server, tls=None, saslUsername=None):
        """Does the client match?  TableTemporaryError when a table cannot answer."""
        for item in self._items:
            if item == "permit_sasl_authenticated":
                if saslUsername:
                    return True
            elif item == "permit_tls_all_clientcerts":
                if self._trusted(tls):
                    return True
            elif item == "permit_tls_clientcerts":
                peer = tls.peer if tls is not None else None
                if peer is not None:
                    for table in self._relayClientcerts:
                        for key in (peer.fingerprint, peer.pkeyFingerprint):
                            if await table.lookup(key) is not None:
                                return True
            elif item == "permit_inet_interfaces":
                if isOwnAddress(client, server):
                    return True
            elif item == "permit_mynetworks":
                if await self._mynetworks.matches(client):
                    return True
            elif not isinstance(item, str):
                ip = _ip(client or "")
                if ip is not None and await item.lookup(str(ip)) is not None:
                    return True
        return False
