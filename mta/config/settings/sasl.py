"""mta.config.settings.sasl - SaslSettings: SMTP AUTH in the server (mta.smtpd.auth, mta.sasl), per listener.

The parameters of this area (mta.config.schema, group "sasl"):

    smtpd_sasl_auth_enable, smtpd_sasl_type, smtpd_sasl_path,
    smtpd_sasl_security_options, smtpd_sasl_tls_security_options,
    smtpd_tls_auth_only, smtpd_sasl_local_domain,
    smtpd_sasl_exceptions_networks, smtpd_sasl_response_limit,
    smtpd_sasl_authenticated_header, smtpd_sasl_service,
    broken_sasl_auth_clients, smtpd_client_auth_rate_limit,
    queue_directory (a relative Dovecot socket path
    is taken from it, as Postfix takes private/auth)

smtpd_sasl_path is compiled into ``socket`` (dovecot: ("unix", PATH) or
("inet", HOST, PORT)) or ``table`` (builtin: the TableSpec of the password
table).  With smtpd_sasl_auth_enable = yes a path that does not fit
smtpd_sasl_type is an error at load.

SECURITY
    None: values were parsed by mta.config.types.

CONFIGURATION
    As listed above.

DEVIATIONS
    smtpd_sasl_type has no cyrus; its default is dovecot (Postfix: cyrus)
    and smtpd_sasl_path's is private/auth (Postfix: smtpd, Cyrus's
    application name), the path of Postfix's own Dovecot examples.
"""

import os

import attrs

from mta.config.errors import ConfigError
from mta.config.settings import Settings, setting, settingsClass
from mta.config.types import TableSpec

__all__ = ["SaslSettings"]


def _nonNegative(value):
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _port(text):
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a port number")
    return int(text)


@settingsClass
class SaslSettings(Settings):
    """What one listener's AUTH reads of its scope (see the module docstring)."""

    enabled: bool = setting("smtpd_sasl_auth_enable")
    type: str = setting("smtpd_sasl_type")  # dovecot or builtin
    path: tuple = setting("smtpd_sasl_path")  # (TableSpec,) or (text,): see socket and table
    securityOptions: frozenset = setting("smtpd_sasl_security_options", frozenset)  # before TLS
    tlsSecurityOptions: frozenset = setting("smtpd_sasl_tls_security_options", frozenset)  # under TLS
    tlsAuthOnly: bool = setting("smtpd_tls_auth_only")  # AUTH neither offered nor accepted before TLS
    localDomain: str = setting("smtpd_sasl_local_domain")  # builtin: the realm of names without @
    exceptionsNetworks: tuple = setting("smtpd_sasl_exceptions_networks")  # EHLO hides AUTH from these
    responseLimit: int = setting("smtpd_sasl_response_limit")  # octets of one response (500 5.5.6)
    authenticatedHeader: bool = setting("smtpd_sasl_authenticated_header")  # Received's comment
    service: str = setting("smtpd_sasl_service")  # Dovecot's service=
    brokenClients: bool = setting("broken_sasl_auth_clients")  # also "AUTH=MECH ..." in EHLO
    queueDirectory: str = setting("queue_directory")  # a relative socket path is under it
    authRateLimit: int = setting("smtpd_client_auth_rate_limit", _nonNegative)  # AUTHs per client per unit; 0: any

    socket: tuple | None = attrs.field(init=False)  # dovecot: ("unix", path) or ("inet", host, port)
    table: TableSpec | None = attrs.field(init=False)  # builtin: the password table

    def __attrs_post_init__(self):
        item = self.path[0]
        socket = table = None
        if isinstance(item, TableSpec):
            table = item
        elif item.startswith("inet:"):
            host, _, port = item[5:].rpartition(":")
            try:
                socket = ("inet", host.strip("[]"), _port(port)) if host else None
            except ValueError:
                socket = None
        else:
            path = item[5:] if item.startswith("unix:") else item
            socket = ("unix", os.path.join(self.queueDirectory, path))
        object.__setattr__(self, "socket", socket)
        object.__setattr__(self, "table", table)

    def check(self, scope):
        if not self.enabled:
            return
        # Name the line that made the mismatch: the path when it is set, else the type.
        where = scope.where("smtpd_sasl_path" if "smtpd_sasl_path" in scope.setNames() else "smtpd_sasl_type")
        if self.type == "builtin" and self.table is None:
            raise ConfigError(f"{where}: smtpd_sasl_type = builtin needs a table (e.g. texthash:/etc/mta/sasl_passwd)")
        if self.type == "dovecot" and self.socket is None:
            raise ConfigError(f"{where}: smtpd_sasl_type = dovecot needs a socket path or inet:host:port")


LISTENER = {"sasl": SaslSettings}
