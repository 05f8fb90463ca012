"""mta.config.settings.clientsasl - ClientSasl: the smtp_sasl_* (lmtp_sasl_*) parameters of the SMTP/LMTP client, compiled.

NAME
    ClientSasl          what mta.delivery.smtpsasl reads, frozen
    compileClientSasl   builds it from a SmtpClientSettings / LmtpClientSettings
                        (called by their check())

DESCRIPTION
    smtp_sasl_auth_enable, smtp_sasl_password_maps (TableSpecs, opened by
    the transport), smtp_sasl_password_result_delimiter (one character
    that is not white space), smtp_sender_dependent_authentication,
    smtp_sasl_mechanism_filter (compiled into (negated, kind, value)
    items: kind "name" with an upper-case mechanism name, "table" with a
    TableSpec; a /file/name item is read here, its words become more
    items, and a file that cannot be read is a load error with the line),
    smtp_sasl_security_options, smtp_sasl_tls_security_options,
    smtp_sasl_tls_verified_security_options, smtp_sasl_auth_soft_bounce,
    smtp_sasl_auth_cache_name (compiled into the SQLite path:
    "[proxy:]TYPE:/path" with TYPE btree, hash, lmdb, dbm or sdbm gives
    /path.sqlite; anything else is a load error), smtp_sasl_auth_cache_time,
    smtp_send_dummy_mail_auth.  smtp_sasl_type is accepted (cyrus only).

    With smtp_sasl_auth_enable = yes and no smtp_sasl_password_maps the
    load fails, as Postfix's smtp stops with "specify a password table via
    the `smtp_sasl_password_maps' configuration parameter".

SECURITY
    None: values were parsed by mta.config.types.

CONFIGURATION
    The smtp_sasl_* / lmtp_sasl_* parameters above, smtp_sender_dependent_authentication,
    smtp_send_dummy_mail_auth (and their lmtp_ twins).
"""

import os
import re

import attrs

from mta.config.errors import ConfigError
from mta.config.types import parseTableSpec

__all__ = ["CACHE_TYPES", "ClientSasl", "compileClientSasl"]

# Postfix's writable table types that a smtp_sasl_auth_cache_name may name.
CACHE_TYPES = ("btree", "hash", "lmdb", "dbm", "sdbm")
_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}\Z")  # RFC 4422 3.1: 1-20 of A-Z 0-9 - _


@attrs.frozen
class ClientSasl:
    """The client's SASL policy (see the module docstring)."""

    enabled: bool = False
    passwordMaps: tuple = ()  # TableSpecs
    delimiter: str = ":"
    senderDependent: bool = False
    mechanismFilter: tuple = ()  # ((negated, "name"|"table", NAME|TableSpec), ...); (): no filter
    securityOptions: frozenset = frozenset({"noplaintext", "noanonymous"})
    tlsSecurityOptions: frozenset = frozenset({"noplaintext", "noanonymous"})
    tlsVerifiedSecurityOptions: frozenset = frozenset({"noplaintext", "noanonymous"})
    softBounce: bool = True
    cachePath: str = ""  # the SQLite file of the 535 cache; "": none
    cacheName: str = ""  # as written (for log lines)
    cacheTime: float = 90 * 86400.0
    dummyMailAuth: bool = False

    @property
    def active(self):
        return self.enabled and bool(self.passwordMaps)


def _filterItems(text, where, fail):
    items = []
    for raw in text:
        item = raw.strip()
        negated = item.startswith("!")
        body = item[1:].strip() if negated else item
        if not body:
            fail(f"{raw!r} is not a mechanism name, /file/name or type:table")
        if body.startswith("/"):
            try:
                with open(body, encoding="utf-8") as f:
                    words = [w for line in f for w in re.split(r"[\s,]+", line.split("#", 1)[0]) if w]
            except (OSError, UnicodeDecodeError) as e:
                fail(f"cannot read {body!r}: {getattr(e, 'strerror', None) or e}")
            for word in _filterItems(words, where, fail):
                items.append((negated != word[0], word[1], word[2]) if negated else word)
        elif re.match(r"[a-z][a-z0-9_-]*:", body):
            try:
                items.append((negated, "table", parseTableSpec(body)))
            except ValueError as e:
                fail(str(e))
        elif _MECHANISM.match(body):
            items.append((negated, "name", body.upper()))
        else:
            fail(f"{raw!r} is not a mechanism name, /file/name or type:table")
    return tuple(items)


def compileClientSasl(settings, scope, prefix):
    """The ClientSasl of a SmtpClientSettings / LmtpClientSettings (its sasl* fields); ConfigError with file:line."""

    def failer(name):
        def fail(message):
            raise ConfigError(f"{scope.where(prefix + name)}: {message}")

        return fail

    delimiter = settings.saslPasswordResultDelimiter
    if len(delimiter) != 1 or delimiter.isspace():
        failer("_sasl_password_result_delimiter")(f"{delimiter!r} is not one non-space character")
    if settings.saslAuthEnable and not settings.saslPasswordMaps:
        failer("_sasl_auth_enable")(f"specify a password table via the `{prefix}_sasl_password_maps' "
                                    "configuration parameter")
    mechanismFilter = _filterItems(settings.saslMechanismFilter, prefix + "_sasl_mechanism_filter",
                                   failer("_sasl_mechanism_filter"))
    cacheName = settings.saslAuthCacheName.strip()
    cachePath = ""
    if cacheName:
        fail = failer("_sasl_auth_cache_name")
        if any(c.isspace() or c == "," for c in cacheName):
            fail(f'SASL authentication cache name "{cacheName}" contains multiple values')
        name = cacheName[len("proxy:"):] if cacheName.startswith("proxy:") else cacheName
        kind, colon, path = name.partition(":")
        if not colon or kind not in CACHE_TYPES or not path:
            fail(f"{cacheName!r} is not [proxy:]TYPE:/path with TYPE one of {', '.join(CACHE_TYPES)}")
        cachePath = path + ".sqlite"
        directory = os.path.dirname(os.path.abspath(cachePath))
        if not os.path.isdir(directory):
            fail(f"the directory {directory!r} of the cache does not exist")
    return ClientSasl(
        enabled=settings.saslAuthEnable, passwordMaps=tuple(settings.saslPasswordMaps), delimiter=delimiter,
        senderDependent=settings.senderDependentAuthentication, mechanismFilter=mechanismFilter,
        securityOptions=frozenset(settings.saslSecurityOptions),
        tlsSecurityOptions=frozenset(settings.saslTlsSecurityOptions),
        tlsVerifiedSecurityOptions=frozenset(settings.saslTlsVerifiedSecurityOptions),
        softBounce=settings.saslAuthSoftBounce, cachePath=cachePath, cacheName=cacheName,
        cacheTime=settings.saslAuthCacheTime, dummyMailAuth=settings.sendDummyMailAuth,
    )
