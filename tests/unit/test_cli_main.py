"""The mta command (mta.cli.main): reload, status, check, stop, flush against a
fake control channel (mta-queue's test doubles); no sockets."""

import configparser
import io
import os

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from mta import control
from mta.cli import main as cliMain
from mta.cli import queue as cliQueue
from mta.config import ConfigError
from mta.testing import resultOf
from tests.unit.test_cli_queue import FakeClient, connectTo, refused, socketStandIn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reloadAnswer(**changes):
    answer = {"configuration": "/etc/mta/mta.ini", "pid": 4242, "refused": False, "error": None,
              "warnings": [], "errors": []}
    answer.update(changes)
    return lambda command, arguments: answer


def runReload(tmp_path, answer):
    socketStandIn(str(tmp_path))
    client = FakeClient(answer)
    out, err = io.StringIO(), io.StringIO()
    code = resultOf(cliMain.reload(Clock(), str(tmp_path), out, err, connect=connectTo(client)))
    assert client.calls == [(control.Reload, {})] and client.transport.lost
    return code, out.getvalue(), err.getvalue()


def test_reloadPrintsWhatTheDaemonAnswered(tmp_path):
    assert runReload(tmp_path, reloadAnswer()) == (
        0, "mta: refreshing the mta mail system\nmta: mta (pid 4242) reloaded /etc/mta/mta.ini\n", "")


def test_refusedReloadExitsOneWithTheDaemonsError(tmp_path):
    answer = reloadAnswer(refused=True, error="/etc/mta/mta.ini:3: [main] mesage_size_limit: unknown parameter")
    assert runReload(tmp_path, answer) == (
        1, "mta: refreshing the mta mail system\n",
        "mta: reload refused, the configuration in force stays: "
        "/etc/mta/mta.ini:3: [main] mesage_size_limit: unknown parameter\n")


def test_listenerWarningsAndErrors(tmp_path):
    code, out, err = runReload(tmp_path, reloadAnswer(warnings=["listener a: still listening on x"]))
    assert (code, err) == (0, "mta: warning: listener a: still listening on x\n")
    code, out, err = runReload(tmp_path, reloadAnswer(errors=["listener b: not listening\x1b[2J"]))
    assert (code, err) == (1, "mta: error: listener b: not listening\\x1b[2J\n")
    assert out.endswith("reloaded /etc/mta/mta.ini\n")


def test_reloadWithAStaleSocket(tmp_path):
    socketStandIn(str(tmp_path))
    out, err = io.StringIO(), io.StringIO()
    assert resultOf(cliMain.reload(Clock(), str(tmp_path), out, err, connect=refused)) == 1
    assert out.getvalue() == ""
    assert err.getvalue() == (f"mta: mta is not running (stale control socket at "
                              f"{control.socketPath(str(tmp_path))}: connection refused)\n")


def test_noDaemonRunning(tmp_path, capsys):
    config = tmp_path / "mta.ini"
    config.write_text(f"[main]\nqueue_directory = {tmp_path}/q\n")
    socket = control.socketPath(f"{tmp_path}/q")
    for command in ("reload", "status", "stop"):
        assert cliMain.main(["-c", str(config), command]) == 1
        assert capsys.readouterr() == ("", f"mta: mta is not running (no control socket at {socket})\n")
    assert cliMain.main(["-c", str(config), "flush"]) == 1
    assert capsys.readouterr().err == (f"mta: cannot flush the queue: mta is not running (no control socket at "
                                       f"{socket}); deferred mail will be tried when it starts\n")


def test_statusAndFlushAreMtaQueues(tmp_path):
    socketStandIn(str(tmp_path))
    status = {"version": "0.1.0", "pid": 7, "uptime": 65.0, "queue_directory": str(tmp_path),
              "listeners": ["smtp tcp:port=25"]}
    out, err = io.StringIO(), io.StringIO()
    client = FakeClient(lambda command, arguments: status)
    assert resultOf(cliQueue.status(Clock(), str(tmp_path), out, err, connect=connectTo(client), prog="mta")) == 0
    assert out.getvalue() == cliQueue.formatStatus(status) + "\n"
    out, err = io.StringIO(), io.StringIO()
    assert resultOf(cliQueue.status(Clock(), str(tmp_path), out, err, connect=refused, prog="mta")) == 1
    assert err.getvalue().startswith("mta: mta is not running (stale control socket")
    out = io.StringIO()
    client = FakeClient(lambda command, arguments: {"count": 2})
    assert resultOf(cliQueue.flush(Clock(), str(tmp_path), out, err, connect=connectTo(client), prog="mta")) == 0
    assert out.getvalue() == "mta: Flushed: 2 deferred messages\n"


def test_stopWaitsUntilTheProcessHasGone(tmp_path):
    socketStandIn(str(tmp_path))
    clock, alive = Clock(), [True, True, True]
    client = FakeClient(lambda command, arguments: {"pid": 4242})
    out, err = io.StringIO(), io.StringIO()

    def exists(pid):
        assert pid == 4242
        return alive.pop() if alive else False

    d = Deferred.fromCoroutine(cliMain.stop(clock, str(tmp_path), out, err, connect=connectTo(client), exists=exists))
    assert client.calls == [(control.Stop, {})]
    assert not d.called
    clock.advance(cliMain.POLL)
    clock.advance(cliMain.POLL)
    assert not d.called
    clock.advance(cliMain.POLL)
    assert resultOf(d) == 0
    assert (out.getvalue(), err.getvalue()) == ("mta: stopping the mta mail system\n", "")


def test_stopThatDoesNotEndIsReported(tmp_path):
    socketStandIn(str(tmp_path))
    clock = Clock()
    client = FakeClient(lambda command, arguments: {"pid": 4242})
    out, err = io.StringIO(), io.StringIO()
    d = Deferred.fromCoroutine(cliMain.stop(clock, str(tmp_path), out, err, connect=connectTo(client),
                                            exists=lambda pid: True, wait=0.5))
    for _ in range(10):
        clock.advance(cliMain.POLL)
    assert resultOf(d) == 1
    assert err.getvalue() == "mta: mta (pid 4242) has not stopped after 0.5s\n"


def test_processExists():
    assert cliMain.processExists(os.getpid())
    assert not cliMain.processExists(2**22 + 12345)  # above Linux's pid_max
    # A zombie (exited, not reaped) has gone: see test_reload.py::test_mtaStopStopsTheDaemonCleanly,
    # whose daemon is a child of the test process.


def test_check(tmp_path, capsys):
    good = tmp_path / "good.ini"
    good.write_text("[main]\nmyhostname = mx.test\n")
    assert cliMain.main(["-c", str(good), "check"]) == 0
    assert capsys.readouterr() == ("", "")
    bad = tmp_path / "bad.ini"
    bad.write_text(f"[main]\nrelay_domains = texthash:{tmp_path}/absent\n")
    assert cliMain.main(["-c", str(bad), "check"]) == 1
    assert capsys.readouterr().err == (f"mta: error: {bad}:2: [main] relay_domains: {tmp_path}/absent: "
                                       "cannot open table: No such file or directory\n")


def test_queueDirectoryOfABrokenFile(tmp_path):
    config = tmp_path / "mta.ini"
    config.write_text(f"[main]\nqueue_directory = {tmp_path}/$mail_name\n  /q\nmail_name = box\nmesage_size_limit = 1\n"
                      "this is junk\n[listener:smtp]\nqueue_directory = /elsewhere\n")
    with pytest.raises(ConfigError):
        cliMain.loadConfig(str(config))
    assert cliMain.queueDirectoryOf(str(config)) == f"{tmp_path}/box /q"  # the daemon can still be asked


def test_queueDirectoryThatCannotBeFound(tmp_path):
    config = tmp_path / "mta.ini"
    config.write_text("[main]\nqueue_directory = $nowhere/q\n")
    with pytest.raises(ConfigError, match="nowhere"):
        cliMain.queueDirectoryOf(str(config))
    with pytest.raises(ConfigError, match="configuration file not found"):
        cliMain.queueDirectoryOf(str(tmp_path / "absent.ini"))


def test_usage(capsys):
    assert cliMain.main([]) == 0
    assert "reload" in capsys.readouterr().out
    assert cliMain.main(["--help"]) == 0
    assert cliMain.main(["frobnicate"]) == 2


def test_consoleScriptIsDeclared():
    """setup.cfg installs mta next to mta-config, mta-queue and mta-sendmail (see test_daemon for the installed ones)."""
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    scripts = dict(line.split(" = ") for line in parser["options.entry_points"]["console_scripts"].split("\n") if line)
    assert scripts["mta"] == "mta.cli.main:main"
    module, function = scripts["mta"].split(":")
    assert getattr(__import__(module, fromlist=[function]), function) is cliMain.main


def test_theConfigurationIsFoundAsEveryProgramFindsIt(tmp_path, monkeypatch):
    """Without -c, mta reaches the daemon of $MTA_CONFIG's queue, as mta-queue and twistd mta do."""
    config = tmp_path / "mta.ini"
    config.write_text(f"[main]\nqueue_directory = {tmp_path}/queue\n")
    monkeypatch.setenv("MTA_CONFIG", str(config))
    assert cliMain.queueDirectoryOf(None) == f"{tmp_path}/queue"
