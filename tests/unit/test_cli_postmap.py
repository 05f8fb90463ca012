"""mta-postmap (mta.cli.postmap): build, -q, -q -, -s, -i, -d, -f, -N/-n, -r/-w, errors and exit statuses."""

import io
import os

import lmdb
import pytest
from twisted.internet.task import Clock

from mta.cli.postmap import main


class Run:
    def __init__(self, status, out, err):
        self.status, self.out, self.err = status, out, err


def postmap(*argv, stdin=""):
    out, err = io.StringIO(), io.StringIO()
    data = stdin if isinstance(stdin, bytes) else stdin.encode()
    status = main(list(argv), stdin=io.TextIOWrapper(io.BytesIO(data)), stdout=out, stderr=err,
                  reactor=Clock())
    return Run(status, out.getvalue(), err.getvalue())


def rawItems(path):
    env = lmdb.open(path + ".lmdb", subdir=False, lock=False, readonly=True)
    with env.begin() as txn:
        items = list(txn.cursor())
    env.close()
    return items


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "virtual"
    path.write_text("# a comment\n"
                    "User@Example.COM   local@here\n"
                    "\n"
                    "multi  first part\n"
                    "   second part\n"
                    "user@example.com   duplicate\n")
    os.chmod(path, 0o640)
    return str(path)


def test_build(source):
    run = postmap(f"lmdb:{source}")
    assert run.status == 0 and run.out == ""
    assert run.err == f'mta-postmap: warning: lmdb:{source}: duplicate entry: "user@example.com"\n'
    assert rawItems(source) == [(b"multi\0", b"first part   second part\0"), (b"user@example.com\0", b"local@here\0")]
    assert os.stat(source + ".lmdb").st_mode & 0o777 == 0o640
    assert sorted(os.listdir(os.path.dirname(source))) == ["virtual", "virtual.lmdb"]


def test_build_without_type_is_lmdb(source):
    assert postmap(source).status == 0
    assert os.path.exists(source + ".lmdb")


def test_build_options(source):
    assert postmap("-f", "-n", "-w", "-p", f"lmdb:{source}").err == ""
    assert rawItems(source) == [(b"User@Example.COM", b"local@here"), (b"multi", b"first part   second part"),
                                (b"user@example.com", b"duplicate")]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(source + ".lmdb").st_mode & 0o777 == 0o644 & ~umask  # Postfix's mode, not the source's
    postmap("-r", f"lmdb:{source}")
    assert dict(rawItems(source))[b"user@example.com\0"] == b"duplicate\0"


def test_build_syntax_error_names_the_line_and_keeps_the_old_database(source, tmp_path):
    postmap(f"lmdb:{source}")
    before = rawItems(source)
    with open(source, "a") as f:
        f.write("lonely\n")
    run = postmap(f"lmdb:{source}")
    assert run.status == 1
    assert run.err.endswith(f"mta-postmap: error: {source}:7: expected 'key value', found only 'lonely'\n")
    assert rawItems(source) == before


def test_build_errors(tmp_path):
    run = postmap(f"lmdb:{tmp_path}/missing")
    assert run.status == 1 and run.err == f"mta-postmap: error: open source file {tmp_path}/missing: No such file or directory\n"
    (tmp_path / "bin").write_bytes(b"key \xff\n")
    run = postmap(f"lmdb:{tmp_path}/bin")
    assert run.status == 1 and "not UTF-8" in run.err
    run = postmap(f"texthash:{tmp_path}/bin")
    assert run.status == 1 and "cannot build a texthash table" in run.err
    run = postmap(":x")
    assert run.status == 1 and "expected TYPE:NAME" in run.err


def test_query(source):
    postmap(f"lmdb:{source}")
    run = postmap("-q", "USER@example.com", f"lmdb:{source}")
    assert (run.status, run.out, run.err) == (0, "local@here\n", "")
    run = postmap("-q", "nobody", f"lmdb:{source}")
    assert (run.status, run.out, run.err) == (1, "", "")


def test_query_first_table_that_has_it(source, tmp_path):
    postmap(f"lmdb:{source}")
    run = postmap("-q", "multi", "inline:{multi=inline}", f"lmdb:{source}")
    assert run.out == "inline\n"
    run = postmap("-q", "multi", "inline:{x=y}", f"lmdb:{source}")
    assert run.out == "first part   second part\n"


def test_query_any_table_type(source):
    assert postmap("-q", "user@example.com", f"texthash:{source}").out == "local@here\n"
    assert postmap("-q", "a", "unionmap:{inline:{a=1}, static:2}").out == "1,2\n"
    assert postmap("-q", "root", "unix:passwd.byname").out.startswith("root:")


def test_query_temporary_error(source):
    run = postmap("-q", "x", "fail:down")
    assert run.status == 1 and run.out == ""
    assert run.err == "mta-postmap: error: table fail:down: query error: fail:down: table lookup failed (fail: table)\n"


def test_query_open_error(tmp_path):
    run = postmap("-q", "x", f"lmdb:{tmp_path}/none")
    assert run.status == 1 and f"{tmp_path}/none.lmdb" in run.err and "Traceback" not in run.err
    run = postmap("-q", "x", "nosuch:type")
    assert run.status == 1 and "unsupported table type 'nosuch'" in run.err


def test_query_no_fold(tmp_path):
    (tmp_path / "t").write_text("MiXed value\n")
    postmap("-f", f"lmdb:{tmp_path}/t")
    assert postmap("-q", "MiXed", f"lmdb:{tmp_path}/t").status == 1  # folded to mixed
    assert postmap("-f", "-q", "MiXed", f"lmdb:{tmp_path}/t").out == "value\n"


def test_query_nul_forms(source):
    postmap("-n", f"lmdb:{source}")
    assert postmap("-N", "-q", "multi", f"lmdb:{source}").status == 1
    assert postmap("-n", "-q", "multi", f"lmdb:{source}").status == 0
    assert postmap("-q", "multi", f"lmdb:{source}").status == 0


def test_query_from_stdin(source):
    postmap(f"lmdb:{source}")
    run = postmap("-q", "-", "inline:{extra=1}", f"lmdb:{source}", stdin="multi\nnobody\nUSER@EXAMPLE.COM\nextra\n")
    assert run.status == 0
    assert run.out == "multi\tfirst part   second part\nUSER@EXAMPLE.COM\tlocal@here\nextra\t1\n"
    run = postmap("-q", "-", f"lmdb:{source}", stdin="nobody\n\n")
    assert (run.status, run.out) == (1, "")


def test_query_from_stdin_untrusted_keys(source):
    postmap(f"lmdb:{source}")
    run = postmap("-q", "-", f"lmdb:{source}", stdin=b"multi\r\n" + b"x" * 5000 + b"\nmulti\0\n\xff\n")
    assert run.status == 1 and run.err == ""


def test_dump(source):
    postmap(f"lmdb:{source}")
    run = postmap("-s", f"lmdb:{source}")
    assert (run.status, run.out) == (0, "multi\tfirst part   second part\nuser@example.com\tlocal@here\n")
    run = postmap("-s", f"texthash:{source}")
    assert run.out == "user@example.com\tlocal@here\nmulti\tfirst part   second part\n"
    run = postmap("-s", "inline:{a=b}")
    assert run.status == 1 and "cannot list a inline table" in run.err
    assert postmap("-s", f"lmdb:{source}", f"lmdb:{source}").status == 2


def test_incremental(source):
    postmap(f"lmdb:{source}")
    run = postmap("-i", f"lmdb:{source}", stdin="New@Key  new value\nmulti replaced\n")
    assert run.status == 0 and "duplicate entry: \"multi\"" in run.err
    items = dict(rawItems(source))
    assert items[b"new@key\0"] == b"new value\0" and items[b"multi\0"] == b"first part   second part\0"
    postmap("-i", "-r", f"lmdb:{source}", stdin="multi replaced\n")
    assert dict(rawItems(source))[b"multi\0"] == b"replaced\0"


def test_incremental_creates_a_missing_database(tmp_path):
    assert postmap("-i", f"lmdb:{tmp_path}/fresh", stdin="a b\n").status == 0
    assert rawItems(str(tmp_path / "fresh")) == [(b"a\0", b"b\0")]


def test_incremental_syntax_error(source):
    postmap(f"lmdb:{source}")
    before = rawItems(source)
    run = postmap("-i", f"lmdb:{source}", stdin="good line\nbad\n")
    assert run.status == 1 and run.err == "mta-postmap: error: stdin:2: expected 'key value', found only 'bad'\n"
    assert rawItems(source) == before


def test_delete(source):
    postmap(f"lmdb:{source}")
    assert postmap("-d", "MULTI", f"lmdb:{source}").status == 0
    assert postmap("-d", "multi", f"lmdb:{source}").status == 1
    assert rawItems(source) == [(b"user@example.com\0", b"local@here\0")]
    run = postmap("-d", "-", f"lmdb:{source}", stdin="nobody\nuser@example.com\n")
    assert run.status == 0 and rawItems(source) == []
    assert postmap("-d", "-", f"lmdb:{source}", stdin="nobody\n").status == 1


def test_delete_errors(source, tmp_path):
    run = postmap("-d", "x", f"texthash:{source}")
    assert run.status == 1 and "cannot delete from a texthash table" in run.err
    run = postmap("-d", "x", f"lmdb:{tmp_path}/none")
    assert run.status == 1 and f"{tmp_path}/none.lmdb" in run.err


def test_usage_errors():
    assert postmap().status == 2
    assert postmap("-q", "a", "-s", "lmdb:/x").status == 2
    assert postmap("-N", "-n", "lmdb:/x").status == 2
    assert postmap("--help").status == 0


def test_config_file_is_checked(source, tmp_path):
    run = postmap("-c", str(tmp_path / "nonexistent.ini"), f"lmdb:{source}")
    assert run.status == 1 and run.err.startswith("mta-postmap: error: ") and "nonexistent.ini" in run.err
    (tmp_path / "mta.ini").write_text("[main]\nmyhostname = mta.test\n")
    assert postmap("-c", str(tmp_path / "mta.ini"), f"lmdb:{source}").status == 0
