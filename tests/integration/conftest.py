import pytest

from tests.integration.daemon import Daemon


@pytest.fixture
def daemon(tmp_path):
    """A started ``twistd mta`` on a free loopback port; stopped (SIGTERM, exit 0) after the test."""
    d = Daemon(tmp_path).start()
    yield d
    code, out, err = d.stop()
    assert code == 0, f"mta exited with {code} on SIGTERM:\n{out}\n{err}"
    assert "Traceback" not in out + err, out + err


@pytest.fixture
def makeDaemon(tmp_path):
    """A factory for daemons with extra [main] text; all are stopped after the test."""
    started = []

    def make(main="", listeners=None, subdir="d", hold=True):
        directory = tmp_path / f"{subdir}{len(started)}"
        directory.mkdir()
        d = Daemon(directory, main, listeners, hold=hold)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.process is not None and d.process.poll() is None:
            code, out, err = d.stop()
            assert code == 0, f"mta exited with {code} on SIGTERM:\n{out}\n{err}"
            assert "Traceback" not in out + err, out + err


@pytest.fixture
def makeMailhost(makeDaemon, tmp_path):
    """
    A factory for daemons (not started) with virtual(8) Maildir delivery for
    u@box.example and v@box.example under C{daemon.base}; extra [main] text
    may follow.
    """

    def make(main=""):
        base = tmp_path / "mail"
        base.mkdir(exist_ok=True)
        maps = tmp_path / "vmailbox"
        maps.write_text("u@box.example box.example/u/\nv@box.example box.example/v/\n")
        d = makeDaemon(
            main=(
                "virtual_mailbox_domains = box.example\n"
                f"virtual_mailbox_base = {base}\n"
                f"virtual_mailbox_maps = texthash:{maps}\n" + main
            ),
            hold=False,
        )
        d.base = str(base)
        return d

    return make
