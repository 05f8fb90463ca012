"""unionmap:, pipemap: (mta.tables.composite), fail: and unix: (mta.tables.simple)."""

import grp
import pwd
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from mta.interfaces import ILookupTable
from mta.tables import TableError, TableTemporaryError, Tables
from mta.tables.composite import PipeTable, UnionTable
from mta.tables.simple import TIMEOUT, FailTable, UnixTable, formatGroup, formatPasswd


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def failure(d):
    out = []
    d.addBoth(out.append)
    assert out and hasattr(out[0], "check"), f"expected a failure, got {out!r}"
    return out[0]


def open_(spec):
    return Tables(Clock()).open(spec)


# -- unionmap ------------------------------------------------------------------


def test_union_joins_every_value_in_order():
    table = open_("unionmap:{inline:{a=1, b=2}, inline:{a=3}, static:{x y}}")
    assert isinstance(table, UnionTable)
    assert verifyObject(ILookupTable, table)
    assert result(table.lookup("a")) == "1,3,x y"
    assert result(table.lookup("B")) == "2,x y"


def test_union_not_found_anywhere_is_none():
    table = open_("unionmap:{inline:{a=1}, inline:{b=2}}")
    assert result(table.lookup("c")) is None


def test_union_empty_values_as_postfix():
    # dict_union adds a comma before a value only when something came before it, and all empty
    # is "not found": an empty first value leaves no trace, an empty later one a trailing comma.
    table = open_("unionmap:{inline:{a=}, inline:{a=x}, inline:{a=}}")
    assert result(table.lookup("a")) == "x,"
    assert result(open_("unionmap:{inline:{a=}}").lookup("a")) is None


def test_union_temporary_error_names_the_component():
    table = open_("unionmap:{inline:{a=1}, fail:broken}")
    f = failure(table.lookup("a"))
    assert f.check(TableTemporaryError)
    assert "unionmap:{inline:{a=1}, fail:broken}" in str(f.value) and "fail:broken" in str(f.value)


def test_union_pattern_flag_from_the_first_component():
    assert open_("unionmap:{fail:x, inline:{a=1}}").pattern is True
    assert open_("unionmap:{inline:{a=1}, fail:x}").pattern is False


def test_union_of_unions_and_white_space_separators():
    table = open_("unionmap:{ unionmap:{inline:{a=1} inline:{a=2}}   inline:{a=3} }")
    assert result(table.lookup("a")) == "1,2,3"


def test_union_waits_for_slow_components():
    slow = Deferred()

    class Slow:
        spec = "slow:x"

        def lookup(self, key):
            return slow

    tables = Tables(Clock())
    tables._open["slow:x"] = Slow()
    table = UnionTable("{slow:x, inline:{k=2}}", Clock(), tables=tables)
    d = table.lookup("k")
    out = []
    d.addBoth(out.append)
    assert out == []
    slow.callback("1")
    assert out == ["1,2"]


@pytest.mark.parametrize("name", ["", "{}", "{ }", "inline:{a=1}", "{inline:{a=1}", "{inline:{a=1}}}",
                                  "{notatable}", "{:x}", "{x:}", "{a:b} {c:d}", "{a:b}x"])
def test_union_bad_syntax(name):
    with pytest.raises(TableError) as info:
        open_(f"unionmap:{name}")
    assert str(info.value).startswith(f"unionmap:{name}: bad syntax")


def test_component_that_cannot_open_is_named(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(TableError) as info:
        open_(f"unionmap:{{inline:{{a=1}}, texthash:{missing}}}")
    message = str(info.value)
    assert message.startswith("unionmap:{") and f"texthash:{missing}" in message and "No such file" in message
    with pytest.raises(TableError) as info:
        open_("pipemap:{inline:{a=1}, nosuch:x}")
    assert "pipemap:{inline:{a=1}, nosuch:x}: nosuch:x: unsupported table type 'nosuch'" in str(info.value)


def test_close_closes_each_component_once():
    closed = []

    class Closable:
        spec = "c:x"
        pattern = False

        def lookup(self, key):
            return succeed(None)

        def close(self):
            closed.append(self)
            return succeed(None)

    tables = Tables(Clock())
    tables._open["c:x"] = Closable()
    table = UnionTable("{c:x, inline:{a=1}, c:x}", Clock(), tables=tables)
    result(table.close())
    assert len(closed) == 1


def test_close_without_closable_components():
    assert open_("unionmap:{inline:{a=1}}").close() is None


# -- pipemap -------------------------------------------------------------------


def test_pipe_feeds_each_value_to_the_next():
    table = open_("pipemap:{inline:{user=alias}, inline:{alias=mailbox}, inline:{mailbox=/var/mail/x}}")
    assert isinstance(table, PipeTable)
    assert verifyObject(ILookupTable, table)
    assert result(table.lookup("USER")) == "/var/mail/x"


def test_pipe_not_found_at_any_step_is_none():
    table = open_("pipemap:{inline:{a=b}, inline:{b=c}}")
    assert result(table.lookup("x")) is None
    assert result(open_("pipemap:{inline:{a=b}, inline:{c=d}}").lookup("a")) is None


def test_pipe_temporary_error_names_the_component():
    f = failure(open_("pipemap:{inline:{a=b}, fail:down}").lookup("a"))
    assert f.check(TableTemporaryError) and "fail:down" in str(f.value)
    # not found before the failing step: None, as Postfix stops there
    assert result(open_("pipemap:{inline:{a=b}, fail:down}").lookup("z")) is None


def test_pipe_passes_untrusted_values_only_as_keys():
    # A value holding CR LF becomes the next key, compared, never interpreted.
    table = open_("pipemap:{static:{x\r\nRCPT TO:<y>}, inline:{a=b}}")
    assert result(table.lookup("a")) is None


def test_pipe_pattern_flag_from_the_first_component():
    assert open_("pipemap:{fail:x, inline:{a=1}}").pattern is True


# -- fail ------------------------------------------------------------------


def test_fail_always_temporary():
    table = open_("fail:anything")
    assert isinstance(table, FailTable)
    assert verifyObject(ILookupTable, table)
    assert table.pattern is True
    for key in ("a", "", "x" * 10000):
        f = failure(table.lookup(key))
        assert f.check(TableTemporaryError) and "fail:anything" in str(f.value)


# -- unix ------------------------------------------------------------------


def test_unix_passwd_of_root():
    table = open_("unix:passwd.byname")
    assert isinstance(table, UnixTable) and verifyObject(ILookupTable, table)
    entry = pwd.getpwnam("root")
    expected = f"root:{entry.pw_passwd}:0:{entry.pw_gid}:{entry.pw_gecos}:{entry.pw_dir}:{entry.pw_shell}"
    assert result(table.lookup("ROOT")) == expected


def test_unix_group_of_root():
    entry = grp.getgrnam("root")
    assert result(open_("unix:group.byname").lookup("root")) == \
        f"root:{entry.gr_passwd}:{entry.gr_gid}:{','.join(entry.gr_mem)}"


def test_unix_formats():
    assert formatPasswd(SimpleNamespace(pw_name="u", pw_passwd="x", pw_uid=1000, pw_gid=100, pw_gecos="U, ,",
                                        pw_dir="/home/u", pw_shell="/bin/sh")) == "u:x:1000:100:U, ,:/home/u:/bin/sh"
    assert formatGroup(SimpleNamespace(gr_name="g", gr_passwd="x", gr_gid=5, gr_mem=["a", "b"])) == "g:x:5:a,b"
    assert formatGroup(SimpleNamespace(gr_name="g", gr_passwd="x", gr_gid=5, gr_mem=[])) == "g:x:5:"


def test_unix_unknown_names_and_keys():
    table = open_("unix:passwd.byname")
    assert result(table.lookup("no-such-user-here")) is None
    assert result(table.lookup("")) is None
    assert result(table.lookup("root\0")) is None
    assert result(table.lookup("r" * 10000)) is None


def test_unix_unknown_map():
    with pytest.raises(TableError) as info:
        open_("unix:shadow.byname")
    assert "unix:shadow.byname: unknown table" in str(info.value)


def fakeMaps(find, sanity):
    return {"passwd.byname": (find, sanity, lambda entry: f"found:{entry}", "password")}


def missing(key):
    raise KeyError(key)


def test_unix_database_unreadable_is_temporary():
    table = UnixTable("passwd.byname", Clock(), maps=fakeMaps(missing, lambda: missing(0)))
    f = failure(table.lookup("someone"))
    assert f.check(TableTemporaryError) and "cannot access UNIX password database" in str(f.value)


def test_unix_sanity_check_only_until_a_success():
    checks = []

    def sanity():
        checks.append(1)

    table = UnixTable("passwd.byname", Clock(), maps=fakeMaps(missing, sanity))
    assert result(table.lookup("a")) is None
    assert result(table.lookup("b")) is None
    assert checks == [1]


def test_unix_no_fold():
    seen = []

    def find(key):
        seen.append(key)
        return key

    table = UnixTable("passwd.byname", Clock(), fold=False, maps=fakeMaps(find, lambda: None))
    assert result(table.lookup("MiXed")) == "found:MiXed" and seen == ["MiXed"]


@implementer(IReactorThreads)
class ThreadedClock(Clock):
    """A Clock with a thread pool that runs calls when told (run=True) or never."""

    def __init__(self, run):
        super().__init__()
        self.run = run
        self.pending = []

    def getThreadPool(self):
        return self

    def callInThreadWithCallback(self, onResult, f, *args, **kwargs):
        if not self.run:
            self.pending.append(f)
            return
        try:
            onResult(True, f(*args, **kwargs))
        except Exception as e:
            from twisted.python.failure import Failure

            onResult(False, Failure(e))

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def callInThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def suggestThreadPoolSize(self, size):
        pass


def test_unix_in_a_thread_with_a_real_reactor():
    table = UnixTable("passwd.byname", ThreadedClock(run=True), maps=fakeMaps(lambda key: key, lambda: None))
    assert result(table.lookup("x")) == "found:x"
    table = UnixTable("passwd.byname", ThreadedClock(run=True), maps=fakeMaps(missing, lambda: missing(0)))
    assert failure(table.lookup("x")).check(TableTemporaryError)


def test_unix_nss_that_never_answers_times_out():
    clock = ThreadedClock(run=False)
    table = UnixTable("passwd.byname", clock, maps=fakeMaps(lambda key: key, lambda: None))
    d = table.lookup("x")
    out = []
    d.addBoth(out.append)
    clock.advance(TIMEOUT - 1)
    assert out == [] and len(clock.pending) == 1
    clock.advance(1)
    assert out[0].check(TableTemporaryError) and "did not answer" in str(out[0].value)
