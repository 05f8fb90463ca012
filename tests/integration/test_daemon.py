"""The real ``twistd mta``: start, stop, configuration errors, control channel."""

import os
import shutil
import socket
import subprocess
import sys

import pytest

from tests.integration.daemon import (
    ROOT,
    TWISTD,
    Daemon,
    environment,
    freePort,
    stop,
    twistd,
    waitFor,
    waitForBanner,
)

pytestmark = pytest.mark.integration


def portFree(port):
    """
    Whether mta could listen on 127.0.0.1:PORT.  Bound as twistd binds it
    (SO_REUSEADDR), so that only a listener counts, not the connections of an
    earlier daemon on the port in TIME_WAIT (mta closes first after QUIT, so
    its end of waitForBanner's probe stays in TIME_WAIT for a minute).
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def portHolder(port):
    """What ss(8) says listens on 127.0.0.1:PORT (the process, when it is ours), or why it cannot say."""
    if not shutil.which("ss"):
        return "ss(8) is not installed"
    result = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=30)
    return result.stdout.strip() or result.stderr.strip() or "nothing listens (any more)"


def waitForPortFree(port, timeout=15.0):
    """Wait for 127.0.0.1:PORT to be free (a daemon of an earlier test may still be stopping), else fail clearly."""
    try:
        waitFor(lambda: portFree(port), timeout=timeout, what=f"127.0.0.1:{port} to be free")
    except AssertionError:
        pytest.fail(f"127.0.0.1:{port} is busy for {timeout}s; the embedded defaults need it. A daemon left over "
                    f"from a killed run, or another test run at the same time? Listening: {portHolder(port)}")


# twistd with the default location (/etc/mta/mta.ini) pointed elsewhere (the
# first argument), so that a configuration of this machine cannot take part.
TWISTD_WITH_DEFAULT = ("import sys, mta.config.loader as loader; loader.DEFAULT_CONFIG = sys.argv.pop(1); "
                       "sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()")


def twistdWith(args, cwd, default="/nonexistent/mta/mta.ini", mtaConfig=None):
    env = environment()
    env.pop("MTA_CONFIG", None)
    if mtaConfig is not None:
        env["MTA_CONFIG"] = mtaConfig
    return subprocess.Popen([sys.executable, "-c", TWISTD_WITH_DEFAULT, default, "-n", "--pidfile=", *args],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("config", [None, "etc/mta.ini"], ids=["embedded-defaults", "etc-mta-ini"])
def test_startsOnDefaultsAndStopsCleanly(tmp_path, config):
    """
    `twistd -n mta` and `twistd -n mta -c etc/mta.ini` listen on
    127.0.0.1:2525, create ./var/spool/mta, and exit 0 on SIGTERM.
    """
    waitForPortFree(2525)
    args = ["mta"] + (["-c", os.path.join(ROOT, config)] if config else [])
    process = twistdWith(args, cwd=tmp_path)
    banner = waitForBanner(2525, process)
    assert banner.startswith(b"220 ") and b"ESMTP mta" in banner
    assert os.path.isdir(tmp_path / "var" / "spool" / "mta" / "incoming")
    mode = os.stat(tmp_path / "var" / "spool" / "mta" / "private").st_mode & 0o777
    assert mode == 0o700
    code, out, err = stop(process)
    assert code == 0, err
    assert "daemon started" in out and "daemon stopped" in out
    assert "Traceback" not in out + err
    named = os.path.join(ROOT, config) if config else "(embedded defaults)"
    assert f"daemon started -- version {__import__('mta').__version__}, configuration {named}" in out


@pytest.mark.parametrize("how", ["environment", "default"])
def test_findsItsConfigurationWithoutMinusC(tmp_path, how):
    """$MTA_CONFIG, else the default location: found from any working directory, named in the start line."""
    (tmp_path / "etc").mkdir()
    d = Daemon(tmp_path / "etc")  # writes etc/mta.ini, with its queue in etc/spool
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if how == "environment":
        process = twistdWith(["mta"], cwd=elsewhere, mtaConfig=str(tmp_path / "etc"))  # a directory: DIR/mta.ini
    else:
        process = twistdWith(["mta"], cwd=elsewhere, default=d.config)
    assert waitForBanner(d.port, process).startswith(b"220 mta.test ESMTP mta")
    assert os.path.isdir(os.path.join(d.queue, "maildrop"))
    code, out, err = stop(process)
    assert code == 0, err
    assert f"daemon started -- version {__import__('mta').__version__}, configuration {d.config}" in out
    assert os.listdir(elsewhere) == []  # no ./var/spool/mta where it was started


def test_aMissingFileNamedByMtaConfigRefusesToStart(tmp_path):
    """Never a silent fall-back to the embedded defaults when the file asked for is missing."""
    process = twistdWith(["mta"], cwd=tmp_path, mtaConfig=str(tmp_path / "missing.ini"))
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.decode() == f"mta: fatal: {tmp_path}/missing.ini: configuration file not found (named by $MTA_CONFIG)\n"
    assert os.listdir(tmp_path) == []


def test_sigtermExitsZeroWithSessionOpen(daemon):
    """An open SMTP session does not keep the daemon from stopping."""
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        assert s.recv(512).startswith(b"220 ")
        code, out, err = daemon.stop()
    assert code == 0, err


def test_misspeltParameterRefusesToStart(tmp_path):
    config = tmp_path / "bad.ini"
    config.write_text("[main]\nmesage_size_limit = 5\n")
    process = twistd(["mta", "-c", str(config)], cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    err = err.decode()
    assert f"{config}:2: [main] mesage_size_limit: unknown parameter (did you mean message_size_limit?)" in err
    assert "Traceback" not in err + out.decode()


def test_missingConfigFile(tmp_path):
    process = twistd(["mta", "-c", str(tmp_path / "nope.ini")], cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "nope.ini: configuration file not found" in err.decode()
    assert "Traceback" not in err.decode()


def test_missingTableFileRefusesToStart(tmp_path):
    config = tmp_path / "t.ini"
    config.write_text(f"[main]\nqueue_directory = {tmp_path}/q\nrelay_domains = texthash:{tmp_path}/absent\n")
    process = twistd(["mta", "-c", str(config)], cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"{config}:3: [main] relay_domains: {tmp_path}/absent: cannot open table" in err.decode()


def test_portInUseGivesOneClearLine(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        d = Daemon(tmp_path, listeners=f"[listener:smtp]\nendpoint = tcp:port={port}:interface=127.0.0.1\n")
        process = twistd(["mta", "-c", d.config], cwd=tmp_path)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    err = err.decode()
    assert f"listener smtp (tcp:port={port}:interface=127.0.0.1): cannot listen" in err
    assert "Traceback" not in err


def test_secondDaemonOnSameQueueIsRefused(daemon, tmp_path):
    other = tmp_path / "other.ini"
    port = freePort()
    other.write_text(
        f"[main]\nqueue_directory = {daemon.queue}\n[listener:smtp]\nendpoint = tcp:port={port}:interface=127.0.0.1\n"
    )
    process = twistd(["mta", "-c", str(other)], cwd=tmp_path)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"another mta is running on queue directory {daemon.queue}" in err.decode()


def test_severalListenersWithOverrides(makeDaemon):
    d = makeDaemon()
    second = freePort()
    d2 = makeDaemon(
        listeners=(
            f"[listener:smtp]\nendpoint = tcp:port={d.port}:interface=127.0.0.1\n"
            f"[listener:submission]\nendpoint = tcp:port={second}:interface=127.0.0.1\n"
            "myhostname = submit.test\n"
        )
    )
    d2.port = d.port
    d2.start()
    assert d2.banner.startswith(b"220 mta.test ESMTP mta")
    assert waitForBanner(second, d2.process).startswith(b"220 submit.test ESMTP mta")
    code, out, err = d2.stop()
    assert code == 0, err


def test_controlChannelStatus(daemon):
    """mta-queue status reaches the daemon over the control socket."""
    mode = os.stat(os.path.join(daemon.queue, "private", "control")).st_mode & 0o777
    assert mode == 0o600
    result = subprocess.run(
        [sys.executable, "-m", "mta.cli.queue", "--config", daemon.config, "status"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"pid {daemon.process.pid}" in result.stdout
    assert f"smtp tcp:port={daemon.port}:interface=127.0.0.1" in result.stdout


def test_controlChannelStatusWhenStopped(tmp_path):
    d = Daemon(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mta.cli.queue", "--config", d.config, "status"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "not running" in result.stderr


def test_consoleScriptsAreInstalled():
    """The package installs mta, mta-config, mta-queue and mta-sendmail."""
    for script in ("mta", "mta-config", "mta-queue", "mta-sendmail"):
        assert shutil.which(script), f"{script} is not on PATH: run pip install ."
    result = subprocess.run(["mta-config", "-d", "message_size_limit"], capture_output=True, text=True, timeout=60)
    assert result.stdout == "message_size_limit = 10240000\n"
    for script in ("mta", "mta-queue", "mta-sendmail"):
        result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "usage" in result.stdout.lower()


def test_twistdFindsThePlugin():
    result = subprocess.run(
        [sys.executable, "-c", TWISTD, "--help"], env=environment(), capture_output=True, text=True, timeout=60
    )
    assert "mta" in result.stdout and "A mail transfer agent modelled on Postfix." in result.stdout
