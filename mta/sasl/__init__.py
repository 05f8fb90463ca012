"""mta.sasl - SASL authentication for the SMTP server's AUTH command (RFC 4422, RFC 4954).

The server's AUTH command (mta.smtpd.auth) speaks SMTP and base64; the
mechanisms' state machines and the backends that judge credentials live
here, behind one small contract:

    backend.mechanisms(tls) -> Deferred[tuple of Mechanism]
        what the backend offers (name and flags), before the security
        options are applied (allowed() does that)
    backend.start(mechanism, client) -> an exchange
        client: ClientInfo (address, port, TLS, service)
    exchange.step(response) -> Deferred[Challenge | Success | Failure]
        response: the decoded client bytes, or None for "no initial
        response"; a Challenge asks for the next response
    exchange.abort()
        the client gave up (*) or left

Backends (smtpd_sasl_type):

    builtin   mta.sasl.builtin: PLAIN and LOGIN (mta.sasl.mechanisms)
              against a lookup table of argon2 password hashes, through
              twisted.cred (mta.sasl.passwords makes and checks hashes)
    dovecot   mta.sasl.dovecot: the client side of Dovecot's
              authentication protocol; the mechanisms are Dovecot's

Security options (smtpd_sasl_security_options, _tls_security_options):
noanonymous, noplaintext, noactive, nodictionary, mutual_auth and
forward_secrecy drop the mechanisms whose flags (Dovecot's MECH flags, the
same words) say they are so, as Postfix's xsasl does.

SECURITY
    Credentials never reach a log: Failure reasons are fixed texts (or
    Dovecot's reason=), and a failure says nothing of whether the user
    exists.

CONFIGURATION
    mta.config.settings.sasl.SaslSettings.
"""

import attrs

__all__ = ["Challenge", "ClientInfo", "Failure", "Mechanism", "Success", "allowed", "makeBackend"]

AUTH_FAILURE = "authentication failure"


@attrs.frozen
class Mechanism:
    """A mechanism a backend offers: its name (upper case) and Dovecot's flag words."""

    name: str
    flags: frozenset = frozenset()


@attrs.frozen
class ClientInfo:
    address: str = ""
    port: int = 0
    tls: bool = False
    service: str = "smtp"
    localAddress: str = ""


@attrs.frozen
class Challenge:
    data: bytes


@attrs.frozen
class Success:
    username: str


@attrs.frozen
class Failure:
    """C{reason}: safe to show and log; C{temporary}: 454 4.7.0, not 535; C{malformed}: 501 5.5.2."""

    reason: str = AUTH_FAILURE
    temporary: bool = False
    malformed: bool = False


# security option -> the flag that excludes a mechanism, or the flag a mechanism must have.
_EXCLUDE = {"noanonymous": "anonymous", "noplaintext": "plaintext", "noactive": "active",
            "nodictionary": "dictionary"}
_REQUIRE = {"mutual_auth": "mutual-auth", "forward_secrecy": "forward-secrecy"}


def allowed(mechanisms, options):
    """The names of C{mechanisms} that the security C{options} (a set of words) allow, in order."""
    result = []
    for mech in mechanisms:
        if any(flag in mech.flags for option, flag in _EXCLUDE.items() if option in options):
            continue
        if any(flag not in mech.flags for option, flag in _REQUIRE.items() if option in options):
            continue
        result.append(mech.name)
    return tuple(result)


def makeBackend(settings, tables, clock, maillog):
    """The backend that C{settings} (SaslSettings) names, or None when AUTH is off."""
    if not settings.enabled:
        return None
    if settings.type == "builtin":
        from mta.sasl.builtin import BuiltinBackend

        return BuiltinBackend(tables.open(settings.table), clock, realm=settings.localDomain)
    from mta.sasl.dovecot import DovecotBackend

    return DovecotBackend(settings.socket, clock, maillog, service=settings.service)
