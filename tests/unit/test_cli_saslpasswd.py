"""mta-config sasl-passwd: the builtin SASL backend's password table."""

import io
import os
import stat

from mta.cli.config import main as mtaConfig
from mta.sasl.passwords import checkPassword
from mta.tables.texthash import parseTextTable


class Input(io.StringIO):
    def isatty(self):
        return False


def run(argv, text=""):
    out, err = io.StringIO(), io.StringIO()
    from mta.cli.saslpasswd import main

    code = main(argv, stdin=Input(text), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def table(path):
    return parseTextTable(str(path), path.read_text().splitlines())


def test_add_change_delete(tmp_path):
    path = tmp_path / "sasl_passwd"
    code, out, err = run([str(path), "alice@example.org"], "first secret\n")
    assert code == 0 and "added alice@example.org" in out and "secret" not in out + err
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_text("# users\n" + path.read_text() + "bob  $argon2id$x\n")
    first = table(path)["alice@example.org"]
    assert checkPassword(first, "first secret") and "first secret" not in path.read_text()
    code, out, _ = run([str(path), "Alice@Example.org"], "second\n")  # keys are case-insensitive
    assert code == 0 and "password changed" in out
    entries = table(path)
    assert list(entries) == ["alice@example.org", "bob"] and checkPassword(entries["alice@example.org"], "second")
    assert path.read_text().startswith("# users\n")
    assert run(["-d", str(path), "bob"])[0] == 0
    assert list(table(path)) == ["alice@example.org"]
    assert run(["-d", str(path), "bob"])[0] == 1


def test_refusals(tmp_path):
    path = tmp_path / "p"
    assert run([str(path), "a b"], "x\n")[0] == 64
    assert run([str(path), "a#b"], "x\n")[0] == 64
    assert run([str(path), "alice"], "\n")[:1] == (1,)
    assert run([str(path)])[0] == 64
    assert not path.exists()
    assert run([str(tmp_path / "no" / "dir"), "alice"], "pw\n")[0] == 1


def test_wired_as_an_mta_config_subcommand(tmp_path, monkeypatch):
    path = tmp_path / "p"
    monkeypatch.setattr("sys.stdin", Input("pw\n"))
    assert mtaConfig(["sasl-passwd", str(path), "carol"]) == 0
    assert checkPassword(table(path)["carol"], "pw")
