"""mta.sasl.mechanisms - the server side of PLAIN (RFC 4616) and LOGIN as state machines.

Each exchange is made with a C{verify(username, password)} that returns a
Deferred of Success or Failure (the builtin backend's password check), and
is driven by step(response) as mta.sasl describes:

    PLAIN   no initial response: an empty challenge; then
            "authzid NUL authcid NUL passwd" (UTF-8); an authzid other
            than empty or the authcid itself is refused (no proxy
            authorization)
    LOGIN   "Username:", then "Password:" (an initial response is the
            user name, as Postfix's and Dovecot's LOGIN take it)

SECURITY
    Responses are untrusted bytes: malformed ones (no NULs, bad UTF-8,
    NUL in a name, names over 255 octets) fail with the same reply as a
    wrong password, so nothing is learnt from them.

CONFIGURATION
    None.
"""

from twisted.internet.defer import succeed

from mta.sasl import Challenge, Failure, Mechanism

__all__ = ["BUILTIN_MECHANISMS", "LoginExchange", "PlainExchange"]

MAX_NAME = 255
MAX_PASSWORD = 1024

# PLAIN and LOGIN send the password in the clear: plaintext, and open to dictionary attacks.
BUILTIN_MECHANISMS = (Mechanism("PLAIN", frozenset({"plaintext", "dictionary"})),
                      Mechanism("LOGIN", frozenset({"plaintext", "dictionary"})))


def _text(data, limit):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\0" in text or len(data) > limit:
        return None
    return text


class PlainExchange:
    def __init__(self, verify):
        self._verify = verify
        self._done = False

    def step(self, response):
        if self._done:
            return succeed(Failure())
        if response is None:
            return succeed(Challenge(b""))
        self._done = True
        parts = response.split(b"\0")
        if len(parts) != 3:
            return succeed(Failure())
        authzid, authcid, password = (_text(parts[0], MAX_NAME), _text(parts[1], MAX_NAME),
                                      _text(parts[2], MAX_PASSWORD))
        if authzid is None or not authcid or password is None or authzid not in ("", authcid):
            return succeed(Failure())
        return self._verify(authcid, password)

    def abort(self):
        self._done = True


class LoginExchange:
    def __init__(self, verify):
        self._verify = verify
        self._username = None
        self._done = False

    def step(self, response):
        if self._done:
            return succeed(Failure())
        if self._username is None:
            if response is None:
                return succeed(Challenge(b"Username:"))
            username = _text(response, MAX_NAME)
            if not username:
                self._done = True
                return succeed(Failure())
            self._username = username
            return succeed(Challenge(b"Password:"))
        self._done = True
        password = _text(response or b"", MAX_PASSWORD)
        if password is None:
            return succeed(Failure())
        return self._verify(self._username, password)

    def abort(self):
        self._done = True
