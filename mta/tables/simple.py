"""mta.tables.simple - fail:name and unix:passwd.byname, unix:group.byname.

fail:name is Postfix's dict_fail: every lookup fails with a temporary error
(TableTemporaryError, so the caller answers 4xx), whatever the key; the name
is only a label.  Like Postfix's, it is a pattern table (callers ask it for
the whole string only).  Use it to make a lookup "try again later" on purpose,
e.g. as the last table of a list while another is being rebuilt.

unix:passwd.byname and unix:group.byname are Postfix's dict_unix: the system's
user and group databases (getpwnam(3), getgrnam(3), through NSS), the key a
user or group name (folded to lower case), the value formatted as Postfix
does:

    passwd.byname   name:passwd:uid:gid:gecos:dir:shell
    group.byname    name:passwd:gid:member,member,...

A name that is not found is None; when the database itself cannot be read
(Postfix's check: getpwuid(0) or getgrgid(0) fails too, tried until a first
lookup succeeds) the lookup fails with TableTemporaryError.  NSS may be slow
(LDAP, SSSD): with a real reactor the calls run in its thread pool, and a call
that does not return within TIMEOUT seconds fails the lookup with
TableTemporaryError (the thread finishes on its own); with a plain clock (the
unit tests) they run inline.

SECURITY
    Keys are untrusted: a key holding NUL or longer than MAX_KEY characters is
    "not found" without a call; other keys go to getpwnam()/getgrnam() as
    names, never interpreted.  The passwd value includes the password field
    (normally "x"); do not expose the table to clients.

CONFIGURATION
    None.  Fixed: TIMEOUT = 100 s, MAX_KEY = 256.

DEVIATIONS
    Postfix calls getpwnam() in the calling process, blocking it; mta uses a
    thread so the reactor never waits for NSS.
"""

import grp
import pwd

from twisted.internet.defer import fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError

log = Logger()

TIMEOUT = 100.0
MAX_KEY = 256


@implementer(ILookupTable)
class FailTable:
    pattern = True

    def __init__(self, name):
        self.spec = f"fail:{name}"

    def lookup(self, key):
        return fail(TableTemporaryError(f"{self.spec}: table lookup failed (fail: table)"))


def formatPasswd(entry):
    return (f"{entry.pw_name}:{entry.pw_passwd}:{entry.pw_uid}:{entry.pw_gid}:"
            f"{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}")


def formatGroup(entry):
    return f"{entry.gr_name}:{entry.gr_passwd}:{entry.gr_gid}:{','.join(entry.gr_mem)}"


MAPS = {
    # name: (lookup by name, sanity check, formatter, what)
    "passwd.byname": (pwd.getpwnam, lambda: pwd.getpwuid(0), formatPasswd, "password"),
    "group.byname": (grp.getgrnam, lambda: grp.getgrgid(0), formatGroup, "group"),
}


@implementer(ILookupTable)
class UnixTable:
    pattern = False

    def __init__(self, name, clock, fold=True, maps=MAPS):
        self.spec = f"unix:{name}"
        if name not in maps:
            raise TableError(f"{self.spec}: unknown table (known: {', '.join(sorted(maps))})")
        self._find, self._sanity, self._format, self._what = maps[name]
        self._clock = clock
        self._fold = fold
        self._checked = False

    def _lookupNow(self, key):
        try:
            entry = self._find(key)
        except KeyError:
            if not self._checked:
                try:
                    self._sanity()
                except (KeyError, OSError) as e:
                    log.warn("cannot access UNIX {what} database: {reason}", what=self._what, reason=str(e))
                    raise TableTemporaryError(f"{self.spec}: cannot access UNIX {self._what} database") from None
                self._checked = True
            return None
        except OSError as e:
            raise TableTemporaryError(f"{self.spec}: cannot access UNIX {self._what} database: {e}") from None
        self._checked = True
        return self._format(entry)

    def lookup(self, key):
        if self._fold:
            key = key.lower()
        if not key or "\0" in key or len(key) > MAX_KEY:
            return succeed(None)
        if not IReactorThreads.providedBy(self._clock):
            return maybeDeferred(self._lookupNow, key)
        from twisted.internet.threads import deferToThreadPool

        d = deferToThreadPool(self._clock, self._clock.getThreadPool(), self._lookupNow, key)
        d.addTimeout(TIMEOUT, self._clock)
        d.addErrback(self._timedOut)
        return d

    def _timedOut(self, failure):
        from twisted.internet.defer import TimeoutError

        if failure.check(TimeoutError):
            log.warn("{spec}: no answer from the UNIX {what} database in {timeout} s",
                     spec=self.spec, what=self._what, timeout=TIMEOUT)
            raise TableTemporaryError(f"{self.spec}: the UNIX {self._what} database did not answer")
        return failure
