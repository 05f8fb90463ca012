"""mta.sasl.builtin - the builtin SASL backend: PLAIN and LOGIN against a password table, on twisted.cred.

smtpd_sasl_type = builtin, for hosts without Dovecot.  The users are a
lookup table (smtpd_sasl_path, e.g. texthash:/etc/mta/sasl_passwd; see
mta.tables), one user a line with an argon2 hash (mta.sasl.passwords):

    alice@example.org   $argon2id$v=19$m=65536,t=3,p=4$...
    bob                 $argon2id$v=19$m=65536,t=3,p=4$...

made and changed with `mta-config sasl-passwd FILE USER` (mta.cli.saslpasswd).
A user name without "@" is looked up as user@$smtpd_sasl_local_domain
when that is set, else as it is.  PasswordTableChecker is a twisted.cred
ICredentialsChecker for IUsernamePassword: requestAvatarId() gives the
user name, or fails with UnauthorizedLogin; a table that cannot answer
fails with TemporaryAuthError (454 4.7.0).

SECURITY
    A user that does not exist costs the same argon2 work as a wrong
    password (dummyCheck) and gets the same failure; a table value that is
    not an argon2 hash never matches (and is logged, without the value).
    The hashing runs in the reactor's thread pool, never in the reactor
    thread.

CONFIGURATION
    smtpd_sasl_path (the table), smtpd_sasl_local_domain.

DEVIATIONS
    Postfix has no builtin backend (it needs Cyrus SASL or Dovecot).
"""

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from zope.interface import implementer

from mta.sasl import Failure, Success
from mta.sasl.mechanisms import BUILTIN_MECHANISMS, LoginExchange, PlainExchange
from mta.sasl.passwords import checkPassword, dummyCheck, isHash
from mta.tables import TableTemporaryError

__all__ = ["BuiltinBackend", "PasswordTableChecker", "TemporaryAuthError"]

log = Logger()


class TemporaryAuthError(Exception):
    """The password table cannot answer now."""


def _runner(clock):
    """f(callable, *args) -> Deferred: the reactor's thread pool, or inline for a test clock."""
    if hasattr(clock, "getThreadPool"):
        from twisted.internet.threads import deferToThreadPool

        return lambda f, *args: deferToThreadPool(clock, clock.getThreadPool(), f, *args)
    return lambda f, *args: maybeDeferred(f, *args)


@implementer(ICredentialsChecker)
class PasswordTableChecker:
    """Checks IUsernamePassword against C{table} (an ILookupTable of argon2 hashes)."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, table, runInThread, realm=""):
        self.table = table
        self.runInThread = runInThread
        self.realm = realm

    def requestAvatarId(self, credentials):
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials):
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8")
        password = credentials.password
        if isinstance(password, bytes):
            password = password.decode("utf-8")
        key = f"{username}@{self.realm}" if self.realm and "@" not in username else username
        try:
            stored = await self.table.lookup(key)
        except TableTemporaryError as e:
            raise TemporaryAuthError(str(e)) from None
        if stored is None:
            await self.runInThread(dummyCheck, password)
            raise UnauthorizedLogin()
        stored = stored.strip()
        if not isHash(stored):
            log.warn("sasl: the password table entry of {user} is not an argon2 hash; it never matches",
                     user=key)
        if not await self.runInThread(checkPassword, stored, password):
            raise UnauthorizedLogin()
        return key


class BuiltinBackend:
    """PLAIN and LOGIN (mta.sasl.mechanisms) checked by a PasswordTableChecker."""

    def __init__(self, table, clock, realm="", runInThread=None):
        self.checker = PasswordTableChecker(table, runInThread or _runner(clock), realm)

    def mechanisms(self, tls=False):
        return succeed(BUILTIN_MECHANISMS)

    def start(self, mechanism, client):
        exchange = {"PLAIN": PlainExchange, "LOGIN": LoginExchange}.get(mechanism)
        return exchange(self._verify) if exchange is not None else None

    def _verify(self, username, password):
        d = self.checker.requestAvatarId(UsernamePassword(username, password))

        def failed(failure):
            if failure.check(TemporaryAuthError):
                return Failure("Temporary lookup failure", temporary=True)
            if not failure.check(UnauthorizedLogin):
                log.failure("sasl: password check failed", failure)
            return Failure()

        return d.addCallbacks(Success, failed)
