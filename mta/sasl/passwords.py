"""mta.sasl.passwords - salted password hashes for the builtin SASL backend (argon2id).

hashPassword(password) makes an argon2id hash in PHC string form
("$argon2id$v=19$m=65536,t=3,p=4$SALT$HASH", a fresh random salt each
time) with argon2-cffi's recommended parameters (RFC 9106's second
choice).  checkPassword(stored, password) checks one, in constant time
for a given hash; dummyCheck(password) spends the same time on a hash of
nothing, for a user who does not exist, so that the time taken does not
say whether a user exists.  Only argon2 hashes are accepted: a table value
in any other form (plain text, crypt(3), an unsalted digest) never
matches and is logged by the backend.

SECURITY
    Passwords are never logged or stored in clear.  argon2 is slow on
    purpose (about a quarter of a second here): the builtin backend runs
    the checks in the reactor's thread pool.

CONFIGURATION
    None.
"""

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

__all__ = ["checkPassword", "dummyCheck", "hashPassword", "isHash"]

_hasher = argon2.PasswordHasher()
_DUMMY = _hasher.hash("mta: a password no user has")


def hashPassword(password, hasher=None):
    """A new salted argon2id hash (str) of C{password} (str)."""
    return (hasher or _hasher).hash(password)


def isHash(value):
    """Does the table value C{value} look like an argon2 hash?"""
    return value.startswith(("$argon2id$", "$argon2i$", "$argon2d$"))


def checkPassword(stored, password):
    """True if C{password} matches the argon2 hash C{stored}; False otherwise (never raises)."""
    if not isHash(stored):
        dummyCheck(password)
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        return False


def dummyCheck(password):
    """Spend the time of a check for a user who does not exist; always False."""
    try:
        _hasher.verify(_DUMMY, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        pass
    return False
