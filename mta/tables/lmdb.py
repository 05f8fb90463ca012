"""mta.tables.lmdb - lmdb:/path, an LMDB database built by mta-postmap or Postfix's postmap.

As Postfix's lmdb_table(5): ``lmdb:/etc/mta/virtual`` reads the database
/etc/mta/virtual.lmdb, built from the text file /etc/mta/virtual by
``mta-postmap lmdb:/etc/mta/virtual`` (or Postfix's ``postmap``).  The file
format is Postfix's (dict_lmdb.c, slmdb.c): one LMDB environment in a single
file (MDB_NOSUBDIR), no LMDB lock file (MDB_NOLOCK: readers and writers
serialise with fcntl() locks on the database file, a shared lock per read, an
exclusive one per update), the unnamed database, keys folded to lower case.
A key and its value are stored with or without a trailing NUL byte: a
lookup tries the key with the NUL first, then without (Postfix's
DICT_FLAG_TRY1NULL, DICT_FLAG_TRY0NULL), and once one form is found it keeps
to that form, as Postfix does.  Writers (buildDatabase, updateDatabase,
deleteKeys) append the NUL unless told otherwise, as Postfix does on Linux
(it defines no LMDB_NO_TRAILING_NULL), so Postfix's ``postmap -q`` reads what
mta-postmap wrote and mta reads what Postfix wrote.  A value ends at its
first NUL byte, as the C string Postfix returns.

Lookups run in the reactor thread: LMDB reads are memory-mapped page reads,
with no system call for a page already in memory, so a lookup costs a few
microseconds, less than handing it to a thread would.  The fcntl() lock is
taken without waiting (F_SETLK); while a writer holds the file (Postfix's
``postmap -i`` or ``-d`` updating it in place) the lookup is tried again
every LOCK_RETRY seconds on the clock, up to LOCK_TIMEOUT, and then fails
with TableTemporaryError.

The database is opened at open (a missing or unreadable file raises
TableError naming it, so ``mta-config --check`` reports it) and opened again
when the file's inode, size or modification time change (checked at most
once a second, on lookup): mta-postmap renames a new file into place,
Postfix's postmap rewrites it in place.  A database that cannot be read any
more keeps the old one in force, with an error in the log; a read error
(a damaged file, a map that a writer grew past ours) adopts the file's map
size and tries once more, then fails with TableTemporaryError, never "not
found".  LMDB forbids opening one file twice in a process, so the tables
that name the same file (lmdb:/a and unionmap:{lmdb:/a, ...}) share one
read-only environment, closed when the last of them is closed.

SECURITY
    The database is configuration (as the text file it is built from);
    lookup keys are untrusted: they are folded to lower case and compared,
    never interpreted.  A key holding NUL or longer than LMDB's key limit
    (511 bytes) cannot be in a Postfix table and is "not found" without a
    database read.  A value that is not UTF-8 fails the lookup
    (TableTemporaryError, logged), it is never altered.

CONFIGURATION
    None of its own: the database's map size is taken from the file (at
    least DEFAULT_MAP_SIZE, Postfix's lmdb_map_size default of 16 MiB, for
    writers; grown as needed).  Fixed: LOCK_RETRY = 0.05 s, LOCK_TIMEOUT =
    10 s, CHECK_INTERVAL = 1 s.

DEVIATIONS
    Postfix waits for a lock without limit (F_SETLKW); mta waits at most
    LOCK_TIMEOUT without blocking the reactor.  Postfix's daemons notice a
    changed database by its modification time and restart; mta reopens it
    in place.  The lmdb_map_size parameter is not implemented (readers need
    none; writers start at 16 MiB and double it when the data does not
    fit).  Keys are folded with str.casefold(), the full Unicode case folding
    that Postfix applies (ICU) when SMTPUTF8 is on, its default since
    compatibility_level 1 ("Straße" is "strasse"); a Postfix at
    compatibility level 0 folds ASCII letters only, so its databases with
    non-ASCII upper-case keys differ.
"""

import errno
import fcntl
import os
import stat

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError

log = Logger()

SUFFIX = ".lmdb"
CHECK_INTERVAL = 1.0
LOCK_RETRY = 0.05
LOCK_TIMEOUT = 10.0
DEFAULT_MAP_SIZE = 16 * 1024 * 1024
MAX_KEY = 511  # LMDB's compiled-in key limit (mdb_env_get_maxkeysize)
FUDGE = 10240  # slmdb.c's SLMDB_FUDGE: room above the file size for a reader's map

# Which key forms to try (Postfix's DICT_FLAG_TRY1NULL / DICT_FLAG_TRY0NULL).
TRY1NULL = "1"
TRY0NULL = "0"
BOTH = frozenset({TRY1NULL, TRY0NULL})


def _lmdb():
    try:
        import lmdb
    except ImportError:  # pragma: no cover - the lmdb extra is not installed
        raise TableError("lmdb tables need the 'lmdb' Python package (pip install 'mta[lmdb]')") from None
    return lmdb


def _signature(st):
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _reason(e):
    return e.strerror if isinstance(e, OSError) and e.strerror else str(e)


def encodeKey(key, fold=True):
    """The key as stored (folded, UTF-8), or None when no table can hold it."""
    if fold:
        key = key.casefold()  # Postfix's casefold_utf8() with SMTPUTF8 on (its default since compatibility level 1)
    data = key.encode("utf-8", "surrogateescape")
    if not data or b"\0" in data or len(data) + 1 > MAX_KEY:
        return None
    return data


def _cString(data):
    """What Postfix's SCOPY gives: the bytes up to the first NUL."""
    return bytes(data).split(b"\0", 1)[0]


def _openEnvironment(dbPath, readonly, mapSize=None):
    lmdb = _lmdb()
    if mapSize is None:
        try:
            size = os.stat(dbPath).st_size
        except OSError:
            size = 0
        mapSize = max(DEFAULT_MAP_SIZE, size + FUDGE)
    return lmdb.open(dbPath, subdir=False, lock=False, readonly=readonly, create=not readonly,
                     map_size=mapSize, max_dbs=0, readahead=False, meminit=False, mode=0o644)


def _lock(fd, exclusive, wait):
    """fcntl() lock on the whole file, as Postfix's myflock(MYFLOCK_STYLE_FCNTL); False if busy."""
    op = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if not wait:
        op |= fcntl.LOCK_NB
    try:
        fcntl.lockf(fd, op)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd):
    fcntl.lockf(fd, fcntl.LOCK_UN)


@implementer(ILookupTable)
class LmdbTable:
    """
    An lmdb: table, read-only.  C{fold} case-folds keys (postmap's
    default; -f turns it off); C{nul} is TRY1NULL, TRY0NULL or None (both,
    the default: whichever form the database uses).
    """

    pattern = False

    def __init__(self, path, clock, fold=True, nul=None):
        self.spec = f"lmdb:{path}"
        self.path = path
        self.dbPath = path + SUFFIX
        self._clock = clock
        self._fold = fold
        self._forms = BOTH if nul is None else frozenset({nul})
        self._try = self._forms
        self._env = self._fd = None
        self._open()
        self._checked = clock.seconds()

    # -- opening ---------------------------------------------------------

    def _open(self):
        """Open (or reopen) the database; TableError when it cannot be read."""
        lmdb = _lmdb()
        try:
            fd = os.open(self.dbPath, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise TableError(f"{self.spec}: cannot open database {self.dbPath}: {_reason(e)}") from None
        try:
            st = os.fstat(fd)
            env = _acquire(self.dbPath, st)
        except (OSError, lmdb.Error) as e:
            os.close(fd)
            raise TableError(f"{self.spec}: cannot open database {self.dbPath}: {_reason(e)}") from None
        self._closeHandles()
        self._env, self._fd, self._signature = env, fd, _signature(st)
        self._try = self._forms  # a new database may use the other form (postmap -n)

    def _closeHandles(self):
        if self._env is not None:
            _release(self._env)
        if self._fd is not None:
            os.close(self._fd)
        self._env = self._fd = None

    def close(self):
        """Release the map and the file; a later lookup opens it again."""
        self._closeHandles()

    def _maybeReopen(self):
        now = self._clock.seconds()
        if self._env is not None and now - self._checked < CHECK_INTERVAL:
            return
        self._checked = now
        try:
            current = _signature(os.stat(self.dbPath))
        except OSError as e:
            if self._env is None:
                raise TableTemporaryError(f"{self.spec}: cannot open database {self.dbPath}: {e.strerror}") from None
            log.error("{spec}: cannot stat {path}, keeping the open database: {reason}",
                      spec=self.spec, path=self.dbPath, reason=e.strerror)
            return
        if self._env is not None and current == self._signature:
            return
        try:
            self._open()
        except TableError as e:
            if self._env is None:
                raise TableTemporaryError(str(e)) from None
            log.error("{error}; keeping the open database", error=str(e))
            self._signature = current
        else:
            log.info("{spec}: database reopened", spec=self.spec)

    # -- lookups ---------------------------------------------------------

    def lookup(self, key):
        data = encodeKey(key, self._fold)
        if data is None:
            return succeed(None)
        try:
            self._maybeReopen()
            answer = self._tryLookup(data, key)
        except TableTemporaryError as e:
            return fail(e)
        if answer is not _BUSY:
            return succeed(answer)
        return Deferred.fromCoroutine(self._waitForLock(data, key))

    async def _waitForLock(self, data, key):
        deadline = self._clock.seconds() + LOCK_TIMEOUT
        while True:
            if self._clock.seconds() >= deadline:
                log.warn("{spec}: database {path} locked by a writer for {timeout} s",
                         spec=self.spec, path=self.dbPath, timeout=LOCK_TIMEOUT)
                raise TableTemporaryError(f"{self.spec}: database is locked by a writer")
            await deferLater(self._clock, LOCK_RETRY, lambda: None)
            self._maybeReopen()
            answer = self._tryLookup(data, key)
            if answer is not _BUSY:
                return answer

    def _tryLookup(self, data, key):
        """The value, None, or _BUSY when a writer holds the lock."""
        lmdb = _lmdb()
        for attempt in (1, 2):
            try:
                if not _lock(self._fd, exclusive=False, wait=False):
                    return _BUSY
                try:
                    raw = self._get(data)
                finally:
                    _unlock(self._fd)
                break
            except (OSError, lmdb.Error) as e:
                if attempt == 2:
                    log.error("{spec}: cannot read {path}: {reason}", spec=self.spec, path=self.dbPath,
                              reason=_reason(e))
                    raise TableTemporaryError(f"{self.spec}: cannot read database: {_reason(e)}") from None
                try:  # a map grown past ours by a writer: adopt its size, once
                    self._env.env.set_mapsize(0)
                except lmdb.Error:
                    pass
        if raw is None:
            return None
        try:
            return _cString(raw).decode("utf-8")
        except UnicodeDecodeError:
            log.error("{spec}: the value of {key!r} is not UTF-8", spec=self.spec, key=key[:100])
            raise TableTemporaryError(f"{self.spec}: the value of the key is not UTF-8") from None

    def _get(self, data):
        with self._env.env.begin(buffers=False) as txn:
            if TRY1NULL in self._try:
                value = txn.get(data + b"\0")
                if value is not None:
                    self._try = frozenset({TRY1NULL})
                    return value
            if TRY0NULL in self._try:
                value = txn.get(data)
                if value is not None:
                    self._try = frozenset({TRY0NULL})
                    return value
        return None

    def items(self):
        """Every (key, value) in database order, as postmap -s prints them."""
        if self._env is None:
            self._open()
        lmdb = _lmdb()
        entries = []
        try:
            _lock(self._fd, exclusive=False, wait=True)
            try:
                with self._env.env.begin() as txn:
                    for key, value in txn.cursor():
                        entries.append((_cString(key).decode("utf-8", "replace"),
                                        _cString(value).decode("utf-8", "replace")))
            finally:
                _unlock(self._fd)
        except (OSError, lmdb.Error) as e:
            raise TableError(f"{self.spec}: cannot read database {self.dbPath}: {_reason(e)}") from None
        return entries


_BUSY = object()


class _Shared:
    """One read-only environment per database file (inode) in the process, shared by its tables."""

    def __init__(self, key, env):
        self.key = key
        self.env = env
        self.users = 1


_SHARED = {}  # (st_dev, st_ino) -> _Shared; LMDB forbids opening one file twice in a process


def _acquire(dbPath, st):
    key = (st.st_dev, st.st_ino)
    shared = _SHARED.get(key)
    if shared is not None:
        shared.users += 1
        return shared
    shared = _SHARED[key] = _Shared(key, _openEnvironment(dbPath, readonly=True))
    return shared


def _release(shared):
    shared.users -= 1
    if shared.users == 0:
        if _SHARED.get(shared.key) is shared:
            del _SHARED[shared.key]
        shared.env.close()


# -- writers (mta-postmap) ------------------------------------------------


def _encodeEntry(spec, key, value, fold, nul):
    data = encodeKey(key, fold)
    if data is None:
        raise TableError(f"{spec}: key {key[:60]!r} cannot be stored (empty, NUL or over {MAX_KEY - 1} bytes)")
    payload = value.encode("utf-8", "surrogateescape")
    if b"\0" in payload:
        raise TableError(f"{spec}: the value of {key[:60]!r} holds a NUL byte")
    if nul != TRY0NULL:
        return data + b"\0", payload + b"\0"
    return data, payload


def _put(txn, key, value, duplicates, spec, warn):
    """Store one entry; C{duplicates} is 'warn' (keep the first), 'ignore' or 'replace'."""
    stored = txn.put(key, value, overwrite=(duplicates == "replace"))
    if not stored and duplicates == "warn":
        warn(f"{spec}: duplicate entry: \"{_cString(key).decode('utf-8', 'replace')}\"")


def buildDatabase(path, entries, fold=True, nul=None, duplicates="warn", warn=lambda message: None, mode=None,
                  owner=None):
    """
    Write C{path}.lmdb from C{entries} (an iterable of (key, value)), as
    postmap does, atomically: a temporary file in the same directory,
    written, fsynced, renamed over the old database, and the directory
    fsynced.  A reader holding the old file sees its modification time
    change (so Postfix's daemons notice the new one).  TableError on any
    failure (the old database stays as it was).
    """
    lmdb = _lmdb()
    spec = f"lmdb:{path}"
    dbPath = path + SUFFIX
    directory = os.path.dirname(os.path.abspath(dbPath))
    encoded = [_encodeEntry(spec, key, value, fold, nul) for key, value in entries]
    mapSize = max(DEFAULT_MAP_SIZE, 2 * sum(len(k) + len(v) + 64 for k, v in encoded) + 1024 * 1024)
    tmpPath = os.path.join(directory, f".{os.path.basename(dbPath)}.{os.getpid()}.tmp")
    try:
        while True:
            try:
                os.unlink(tmpPath)
            except FileNotFoundError:
                pass
            env = _openEnvironment(tmpPath, readonly=False, mapSize=mapSize)
            try:
                with env.begin(write=True) as txn:
                    for key, value in encoded:
                        _put(txn, key, value, duplicates, spec, warn)
                env.sync(True)
            except lmdb.MapFullError:
                env.close()
                mapSize *= 2
                continue
            env.close()
            break
        fd = os.open(tmpPath, os.O_RDONLY)
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            old = os.open(dbPath, os.O_RDONLY)
        except OSError:
            old = None
        try:
            os.rename(tmpPath, dbPath)
            if old is not None:
                try:
                    os.utime(old)
                except OSError:
                    pass  # not ours to touch; readers notice the new inode anyway
        finally:
            if old is not None:
                os.close(old)
        dirFd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dirFd)
        finally:
            os.close(dirFd)
    except (OSError, lmdb.Error) as e:
        try:
            os.unlink(tmpPath)
        except OSError:
            pass
        raise TableError(f"{spec}: cannot write {dbPath}: {_reason(e)}") from None
    return len(encoded)


class _Writer:
    """An existing database opened for update in place, under an exclusive fcntl() lock."""

    def __init__(self, path):
        self.spec = f"lmdb:{path}"
        self.dbPath = path + SUFFIX

    def __enter__(self):
        lmdb = _lmdb()
        try:
            self.fd = os.open(self.dbPath, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise TableError(f"{self.spec}: cannot open database {self.dbPath}: {_reason(e)}") from None
        try:
            _lock(self.fd, exclusive=True, wait=True)
            self.env = _openEnvironment(self.dbPath, readonly=False)
        except (OSError, lmdb.Error) as e:
            os.close(self.fd)
            raise TableError(f"{self.spec}: cannot open database {self.dbPath}: {_reason(e)}") from None
        return self

    def __exit__(self, *exc):
        try:
            self.env.close()
        finally:
            os.close(self.fd)  # releases the lock
        return False

    def nulForm(self, txn):
        """The form the database uses (from its first key), or None when it is empty."""
        first = txn.cursor()
        if not first.first():
            return None
        return TRY1NULL if first.key().endswith(b"\0") else TRY0NULL


def updateDatabase(path, entries, fold=True, nul=None, duplicates="warn", warn=lambda message: None):
    """Add C{entries} to the existing C{path}.lmdb in one transaction (postmap -i); the count."""
    lmdb = _lmdb()
    with _Writer(path) as writer:
        mapSize = None
        while True:
            try:
                if mapSize is not None:
                    writer.env.set_mapsize(mapSize)
                with writer.env.begin(write=True) as txn:
                    form = nul or writer.nulForm(txn) or TRY1NULL
                    count = 0
                    for key, value in entries:
                        k, v = _encodeEntry(writer.spec, key, value, fold, form)
                        _put(txn, k, v, duplicates, writer.spec, warn)
                        count += 1
                writer.env.sync(True)
                return count
            except lmdb.MapFullError:
                mapSize = 2 * (mapSize or writer.env.info()["map_size"])
            except lmdb.Error as e:
                raise TableError(f"{writer.spec}: cannot update {writer.dbPath}: {e}") from None


def deleteKeys(path, keys, fold=True, nul=None):
    """Delete C{keys} from C{path}.lmdb (postmap -d); the number deleted."""
    lmdb = _lmdb()
    tryForms = BOTH if nul is None else {nul}
    with _Writer(path) as writer:
        try:
            deleted = 0
            with writer.env.begin(write=True) as txn:
                for key in keys:
                    data = encodeKey(key, fold)
                    if data is None:
                        continue
                    if (TRY1NULL in tryForms and txn.delete(data + b"\0")) or \
                            (TRY0NULL in tryForms and txn.delete(data)):
                        deleted += 1
            writer.env.sync(True)
            return deleted
        except lmdb.Error as e:
            raise TableError(f"{writer.spec}: cannot update {writer.dbPath}: {e}") from None


def sourceOwnership(path):
    """(mode, owner) for a database built from C{path}: its permissions, and its owner when we are root."""
    st = os.stat(path)
    owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
    return stat.S_IMODE(st.st_mode), owner
