"""mta.delivery.saslmech - the SMTP/LMTP client's SASL mechanisms: PLAIN, LOGIN, XOAUTH2, OAUTHBEARER.

NAME
    MECHANISMS      name -> mechanism class, in the client's order of preference
    acceptable(name, options)   may C{name} be used under these security options?
    b64encode / b64decode       RFC 4954's base64 (strict decoding)

DESCRIPTION
    Each mechanism is made with (user, secret, host, port) and gives
    initial() (the initial response, bytes, or None to wait for a
    challenge) and step(challenge) (bytes to send, or raises SaslError);
    the session base64-encodes both and sends "*" to cancel.

      PLAIN        RFC 4616: initial response "\\0user\\0password" (no authzid)
      LOGIN        no initial response; the first challenge gets the user
                   name, the second the password, as Cyrus's login plugin
      XOAUTH2      Google's/Microsoft's: initial response
                   "user=USER\\1auth=Bearer TOKEN\\1\\1"; an error challenge
                   (base64 JSON) gets an empty response, and the server then
                   sends its 5xx
      OAUTHBEARER  RFC 7628: "n,a=USER,\\1host=HOST\\1port=PORT\\1auth=Bearer
                   TOKEN\\1\\1" (the user name a saslname: "," and "=" as
                   =2C and =3D); an error challenge gets "\\1" (RFC 7628
                   3.2.3), then the server's 5xx

    Security properties, as Cyrus's plugins declare them: every one of
    these four satisfies noanonymous only.  It sends the secret as it is
    (plaintext), can be replayed by an active attacker, and is open to a
    dictionary attack; it neither authenticates the server nor gives
    forward secrecy.  So noplaintext, noactive, nodictionary, mutual_auth
    or forward_secrecy in the options in force rule all four out.

SECURITY
    Challenges come from the server: base64 decoding is strict (a bad one
    raises SaslError: "bad protocol / cancel", Cyrus's words), and at most
    two challenges are answered by LOGIN, one error challenge by the token
    mechanisms; anything more raises SaslError.  The user name and secret
    come from a configured table; a user name holding NUL (PLAIN) or
    \\1 (XOAUTH2, OAUTHBEARER) is refused, so it cannot forge fields.

CONFIGURATION
    None (the session chooses by smtp_sasl_mechanism_filter and the
    security options: mta.delivery.smtpsasl).
"""

import base64
import binascii

__all__ = ["MECHANISMS", "SaslError", "acceptable", "b64decode", "b64encode"]

# What each mechanism satisfies (Cyrus's security_flags): noanonymous only.
_PROPERTIES = frozenset({"noanonymous"})


class SaslError(Exception):
    """The mechanism cannot go on; the text is the reason (Cyrus's words where it has them)."""


def b64encode(data):
    return base64.b64encode(data).decode("ascii")


def b64decode(text):
    try:
        return base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SaslError("bad protocol / cancel") from None


def acceptable(name, options):
    """May mechanism C{name} be used when C{options} (smtp_sasl_*security_options) are in force?"""
    return name in MECHANISMS and not (frozenset(options) - _PROPERTIES)


class _Mechanism:
    name = ""

    def __init__(self, user, secret, host="", port=None):
        self.user = user
        self.secret = secret
        self.host = host
        self.port = port
        self.steps = 0

    def initial(self):
        return None

    def step(self, challenge):
        raise SaslError("unexpected server challenge")


class Plain(_Mechanism):
    name = "PLAIN"

    def initial(self):
        if "\0" in self.user or "\0" in self.secret:
            raise SaslError("invalid parameter supplied")
        return b"\0" + self.user.encode("utf-8") + b"\0" + self.secret.encode("utf-8")


class Login(_Mechanism):
    name = "LOGIN"

    def step(self, challenge):
        self.steps += 1
        if self.steps == 1:
            return self.user.encode("utf-8")
        if self.steps == 2:
            return self.secret.encode("utf-8")
        raise SaslError("unexpected server challenge")


class _Token(_Mechanism):
    abort = b""

    def step(self, challenge):
        # An error report (JSON) from the server: answer as the mechanism says, once.
        self.steps += 1
        if self.steps == 1:
            return self.abort
        raise SaslError("unexpected server challenge")

    def _check(self):
        if "\1" in self.user or "\1" in self.secret:
            raise SaslError("invalid parameter supplied")


class XOAuth2(_Token):
    name = "XOAUTH2"
    abort = b""

    def initial(self):
        self._check()
        return f"user={self.user}\1auth=Bearer {self.secret}\1\1".encode("utf-8")


class OAuthBearer(_Token):
    name = "OAUTHBEARER"
    abort = b"\1"

    def initial(self):
        self._check()
        user = self.user.replace("=", "=3D").replace(",", "=2C")
        fields = f"n,a={user},\1"
        if self.host:
            fields += f"host={self.host}\1"
        if self.port:
            fields += f"port={self.port}\1"
        return (fields + f"auth=Bearer {self.secret}\1\1").encode("utf-8")


# The client's order of preference: the password mechanisms first; the token mechanisms are used
# only when the filter (or the server) leaves no password mechanism (mta.delivery.smtpsasl).
MECHANISMS = {m.name: m for m in (Plain, Login, OAuthBearer, XOAuth2)}
TOKEN_MECHANISMS = frozenset({"OAUTHBEARER", "XOAUTH2"})
