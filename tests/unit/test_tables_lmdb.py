"""lmdb: tables (mta.tables.lmdb): Postfix's on-disk conventions, reopening, locks, errors, writers.

The databases written directly with the lmdb package here (not with
mta.tables.lmdb's writers) are in the shapes Postfix writes: keys and values
with a trailing NUL (postmap's default on Linux) or without (postmap -n).
tests/integration/test_postmap_lmdb.py checks both directions against
Postfix's own postmap.
"""

import os

import lmdb
import pytest
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError, Tables
from mta.tables import lmdb as mlmdb
from mta.tables.lmdb import (LOCK_RETRY, LOCK_TIMEOUT, TRY0NULL, TRY1NULL, LmdbTable, buildDatabase,
                             deleteKeys, updateDatabase)


def result(d):
    """The result of a Deferred that has fired (failures raise)."""
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def writeRaw(path, items):
    """A database as Postfix writes it: MDB_NOSUBDIR | MDB_NOLOCK, the unnamed database."""
    env = lmdb.open(path + ".lmdb", subdir=False, lock=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        for key, value in items:
            txn.put(key, value)
    env.close()


def rawItems(path):
    env = lmdb.open(path + ".lmdb", subdir=False, lock=False, readonly=True)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


@pytest.fixture
def base(tmp_path):
    return str(tmp_path / "virtual")


def test_reads_a_database_with_trailing_nul(base):
    writeRaw(base, [(b"user@example.com\0", b"local@here\0"), (b"other\0", b"x\0")])
    table = LmdbTable(base, Clock())
    assert verifyObject(ILookupTable, table)
    assert table.spec == f"lmdb:{base}" and table.pattern is False
    assert result(table.lookup("User@Example.COM")) == "local@here"
    assert result(table.lookup("missing")) is None
    assert result(table.lookup("user@example.com\0")) is None


def test_reads_a_database_without_trailing_nul(base):
    writeRaw(base, [(b"user@example.com", b"local@here"), (b"other", b"x")])
    table = LmdbTable(base, Clock())
    assert result(table.lookup("user@example.com")) == "local@here"
    assert result(table.lookup("other")) == "x"


def test_keeps_to_the_form_found_first(base):
    # A key stored in both forms: once the NUL form answered, the other is not tried (Postfix's flags).
    writeRaw(base, [(b"a\0", b"with\0"), (b"b", b"without")])
    table = LmdbTable(base, Clock())
    assert result(table.lookup("a")) == "with"
    assert result(table.lookup("b")) is None


def test_nul_option_restricts_the_form(base):
    writeRaw(base, [(b"a\0", b"with\0"), (b"b", b"without")])
    assert result(LmdbTable(base, Clock(), nul=TRY0NULL).lookup("a")) is None
    assert result(LmdbTable(base, Clock(), nul=TRY0NULL).lookup("b")) == "without"
    assert result(LmdbTable(base, Clock(), nul=TRY1NULL).lookup("b")) is None


def test_value_ends_at_its_first_nul(base):
    writeRaw(base, [(b"k\0", b"first\0second\0")])
    assert result(LmdbTable(base, Clock()).lookup("k")) == "first"


def test_unicode_case_folding_as_postfix(base):
    buildDatabase(base, [("Straße", "1"), ("ΣΑΣ", "2")])
    table = LmdbTable(base, Clock())
    assert result(table.lookup("STRASSE")) == "1" and result(table.lookup("straße")) == "1"
    assert result(table.lookup("σας")) == "2"


def test_no_folding(base):
    writeRaw(base, [(b"MiXed\0", b"v\0")])
    assert result(LmdbTable(base, Clock()).lookup("MiXed")) is None
    assert result(LmdbTable(base, Clock(), fold=False).lookup("MiXed")) == "v"


def test_untrusted_keys(base):
    writeRaw(base, [(b"a\0", b"v\0")])
    table = LmdbTable(base, Clock())
    assert result(table.lookup("x" * 600)) is None  # over LMDB's key limit: never in a table
    assert result(table.lookup("")) is None
    assert result(table.lookup("a\0b")) is None
    assert result(table.lookup("a\r\nRCPT TO:<x>")) is None
    assert result(table.lookup("\udcff")) is None  # not encodable as UTF-8: surrogateescape, not a traceback


def test_value_not_utf8_is_a_temporary_error(base):
    writeRaw(base, [(b"k\0", b"\xff\xfe\0")])
    with pytest.raises(TableTemporaryError):
        result(LmdbTable(base, Clock()).lookup("k"))


def test_missing_database_raises_table_error_naming_it(base):
    with pytest.raises(TableError) as info:
        LmdbTable(base, Clock())
    assert f"{base}.lmdb" in str(info.value) and "No such file" in str(info.value)


def test_garbage_file_raises_table_error(base):
    with open(base + ".lmdb", "wb") as f:
        f.write(b"not an lmdb file\n" * 1000)
    with pytest.raises(TableError) as info:
        LmdbTable(base, Clock())
    assert f"{base}.lmdb" in str(info.value)


def test_opened_through_tables(base):
    writeRaw(base, [(b"a\0", b"v\0")])
    table = Tables(Clock()).open(f"lmdb:{base}")
    assert isinstance(table, LmdbTable)
    assert result(table.lookup("a")) == "v"


def test_reopens_when_replaced(base):
    buildDatabase(base, [("k", "old")])
    clock = Clock()
    table = LmdbTable(base, clock)
    assert result(table.lookup("k")) == "old"
    buildDatabase(base, [("k", "new")])
    assert result(table.lookup("k")) == "old"  # checked at most once a second
    clock.advance(1)
    assert result(table.lookup("k")) == "new"


def test_one_file_shared_by_several_tables(base):
    # LMDB forbids opening one file twice in a process: two specs naming it share one environment.
    buildDatabase(base, [("k", "v")])
    first = LmdbTable(base, Clock())
    second = Tables(Clock()).open(f"unionmap:{{lmdb:{base}, lmdb:{os.path.dirname(base)}/./virtual}}")
    assert result(second.lookup("k")) == "v,v"
    first.close()
    assert result(second.lookup("k")) == "v,v"
    second.close()
    assert result(first.lookup("k")) == "v"  # opened again
    st = os.stat(base + ".lmdb")
    assert (st.st_dev, st.st_ino) in mlmdb._SHARED
    first.close()
    assert (st.st_dev, st.st_ino) not in mlmdb._SHARED


def test_a_rebuilt_database_may_use_the_other_form(base):
    buildDatabase(base, [("k", "with nul")])
    clock = Clock()
    table = LmdbTable(base, clock)
    assert result(table.lookup("k")) == "with nul"
    buildDatabase(base, [("k", "without")], nul=TRY0NULL)
    clock.advance(1)
    assert result(table.lookup("k")) == "without"


def test_keeps_the_old_database_when_the_new_one_is_bad(base):
    buildDatabase(base, [("k", "old")])
    clock = Clock()
    table = LmdbTable(base, clock)
    os.unlink(base + ".lmdb")
    with open(base + ".lmdb", "wb") as f:
        f.write(b"garbage" * 2000)
    clock.advance(1)
    assert result(table.lookup("k")) == "old"
    os.unlink(base + ".lmdb")
    clock.advance(1)
    assert result(table.lookup("k")) == "old"


def test_close_then_lookup_opens_again(base):
    buildDatabase(base, [("k", "v")])
    table = LmdbTable(base, Clock())
    table.close()
    assert result(table.lookup("k")) == "v"
    table.close()
    os.unlink(base + ".lmdb")
    with pytest.raises(TableTemporaryError):
        result(table.lookup("k"))


def test_read_error_reopens_once_then_fails_temporarily(base, monkeypatch):
    buildDatabase(base, [("k", "v")])
    table = LmdbTable(base, Clock())
    calls = []

    def broken(data):
        calls.append(data)
        raise lmdb.CorruptedError("damaged")

    monkeypatch.setattr(table, "_get", broken)
    with pytest.raises(TableTemporaryError) as info:
        result(table.lookup("k"))
    assert "damaged" in str(info.value) and len(calls) == 2


def test_read_error_cured_by_reopening(base, monkeypatch):
    buildDatabase(base, [("k", "v")])
    table = LmdbTable(base, Clock())
    original = LmdbTable._get
    failures = [lmdb.MapResizedError("grown")]

    def once(self, data):
        if failures:
            raise failures.pop()
        return original(self, data)

    monkeypatch.setattr(LmdbTable, "_get", once)
    assert result(table.lookup("k")) == "v"


def test_waits_for_a_writer_without_blocking(base, monkeypatch):
    buildDatabase(base, [("k", "v")])
    clock = Clock()
    table = LmdbTable(base, clock)
    busy = [True] * 3
    realLock = mlmdb._lock
    monkeypatch.setattr(mlmdb, "_lock", lambda fd, exclusive, wait: False if busy and busy.pop() else
                        realLock(fd, exclusive, wait))
    d = table.lookup("k")
    answers = []
    d.addBoth(answers.append)
    assert answers == []
    clock.advance(LOCK_RETRY)
    clock.advance(LOCK_RETRY)
    assert answers == []
    clock.advance(LOCK_RETRY)
    assert answers == ["v"]


def test_writer_holding_the_lock_too_long_is_a_temporary_error(base, monkeypatch):
    buildDatabase(base, [("k", "v")])
    clock = Clock()
    table = LmdbTable(base, clock)
    monkeypatch.setattr(mlmdb, "_lock", lambda fd, exclusive, wait: False)
    d = table.lookup("k")
    failures = []
    d.addErrback(failures.append)
    clock.pump([LOCK_RETRY] * int(LOCK_TIMEOUT / LOCK_RETRY + 2))
    assert len(failures) == 1 and failures[0].check(TableTemporaryError)
    assert "locked" in str(failures[0].value)


# -- writers ------------------------------------------------------------------


def test_build_writes_postfix_form(base):
    assert buildDatabase(base, [("User@Example.com", "v1"), ("b", "two words")]) == 2
    assert rawItems(base) == [(b"b\0", b"two words\0"), (b"user@example.com\0", b"v1\0")]
    assert not [n for n in os.listdir(os.path.dirname(base)) if n.endswith(".tmp")]


def test_build_without_nul_and_without_folding(base):
    buildDatabase(base, [("Key", "v")], fold=False, nul=TRY0NULL)
    assert rawItems(base) == [(b"Key", b"v")]


def test_build_duplicates(base):
    warnings = []
    buildDatabase(base, [("k", "first"), ("K", "second")], warn=warnings.append)
    assert rawItems(base) == [(b"k\0", b"first\0")]
    assert warnings == [f'lmdb:{base}: duplicate entry: "k"']
    warnings.clear()
    buildDatabase(base, [("k", "first"), ("K", "second")], duplicates="replace", warn=warnings.append)
    assert rawItems(base) == [(b"k\0", b"second\0")] and warnings == []
    buildDatabase(base, [("k", "first"), ("K", "second")], duplicates="ignore", warn=warnings.append)
    assert rawItems(base) == [(b"k\0", b"first\0")] and warnings == []


def test_build_failure_leaves_the_old_database(base):
    buildDatabase(base, [("k", "old")])
    with pytest.raises(TableError) as info:
        buildDatabase(base, [("k", "new"), ("x" * 600, "too long a key")])
    assert "cannot be stored" in str(info.value)
    assert rawItems(base) == [(b"k\0", b"old\0")]
    with pytest.raises(TableError):
        buildDatabase(base, [("k", "nul\0inside")])
    assert rawItems(base) == [(b"k\0", b"old\0")]


def test_build_in_a_missing_directory(tmp_path):
    with pytest.raises(TableError) as info:
        buildDatabase(str(tmp_path / "no" / "such"), [("k", "v")])
    assert "cannot write" in str(info.value)


def test_build_grows_the_map(base, monkeypatch):
    monkeypatch.setattr(mlmdb, "DEFAULT_MAP_SIZE", 64 * 1024)
    entries = [(f"key{i}", "v" * 400) for i in range(3000)]  # about 1.3 MB: the first estimate is too small
    monkeypatch.setattr(mlmdb, "sum", lambda values: 0, raising=False)
    assert buildDatabase(base, entries) == 3000
    assert result(LmdbTable(base, Clock()).lookup("key2999")) == "v" * 400


def test_build_sets_mode(base):
    buildDatabase(base, [("k", "v")], mode=0o640)
    assert os.stat(base + ".lmdb").st_mode & 0o777 == 0o640


def test_update_keeps_the_database_form(base):
    writeRaw(base, [(b"a", b"1")])  # postmap -n
    updateDatabase(base, [("B", "2")])
    assert rawItems(base) == [(b"a", b"1"), (b"b", b"2")]
    writeRaw(base + "2", [(b"a\0", b"1\0")])
    updateDatabase(base + "2", [("b", "2")])
    assert rawItems(base + "2") == [(b"a\0", b"1\0"), (b"b\0", b"2\0")]


def test_update_duplicates(base):
    buildDatabase(base, [("a", "1")])
    warnings = []
    updateDatabase(base, [("a", "2")], warn=warnings.append)
    assert rawItems(base) == [(b"a\0", b"1\0")] and len(warnings) == 1
    updateDatabase(base, [("a", "2")], duplicates="replace")
    assert rawItems(base) == [(b"a\0", b"2\0")]


def test_update_missing_database(base):
    with pytest.raises(TableError) as info:
        updateDatabase(base, [("a", "1")])
    assert f"{base}.lmdb" in str(info.value)


def test_delete_either_form(base):
    writeRaw(base, [(b"a\0", b"1\0"), (b"b", b"2"), (b"c\0", b"3\0")])
    assert deleteKeys(base, ["A", "b", "missing", "x" * 600]) == 2
    assert rawItems(base) == [(b"c\0", b"3\0")]
    assert deleteKeys(base, ["c"], nul=TRY0NULL) == 0


def test_items(base):
    writeRaw(base, [(b"a\0", b"1\0"), (b"b", b"2")])
    assert LmdbTable(base, Clock()).items() == [("a", "1"), ("b", "2")]
