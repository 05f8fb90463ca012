"""The command-line tools: mta-config (postconf), and the mta-queue and
mta-sendmail entry points (status without a daemon, the sendmail stub)."""

import os
import subprocess
import sys

import pytest
from twisted.internet import error as netError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from mta.cli import config as cliConfig
from mta.cli import queue as cliQueue
from mta.cli import sendmail as cliSendmail
from mta.config.schema import PARAMETERS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = """\
[main]
myhostname = mx.example.org
smtpd_banner = $myhostname ready
message_size_limit = 20m

[listener:smtp]
endpoint = tcp:port=2525:interface=127.0.0.1

[listener:submission]
endpoint = tcp:port=5870:interface=127.0.0.1
smtpd_recipient_limit = 100
myhostname = sub.example.org
"""


@pytest.fixture(autouse=True)
def noOutsideConfiguration(tmp_path, monkeypatch):
    """Neither $MTA_CONFIG nor an /etc/mta/mta.ini of this machine takes part."""
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(tmp_path / "no-such-default.ini"))


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "mta.ini"
    path.write_text(CONFIG)
    return str(path)


def run(capsys, *argv):
    code = cliConfig.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- mta-config: parameters --------------------------------------------------------------


def test_default_of_one_parameter(capsys):
    assert run(capsys, "-d", "message_size_limit") == (0, "message_size_limit = 10240000\n", "")


def test_all_parameters_sorted_raw(capsys, conf):
    code, out, err = run(capsys, "--config", conf)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    names = [line.split(" =", 1)[0] for line in lines]
    assert names == sorted(p.name for p in PARAMETERS)
    assert "smtpd_banner = $myhostname ready" in lines  # as written, unexpanded
    assert "message_size_limit = 20m" in lines
    assert "myorigin = $myhostname" in lines  # defaults too
    assert "relayhost =" in lines  # an empty value, no trailing blank


def test_embedded_defaults_without_config(capsys):
    code, out, err = run(capsys)
    assert (code, err) == (0, "")
    assert len(out.splitlines()) == len(PARAMETERS)
    assert "smtpd_banner = $myhostname ESMTP $mail_name\n" in out


def test_named_parameters_in_the_order_given(capsys, conf):
    assert run(capsys, "-c", conf, "smtpd_banner", "mail_name") == (
        0,
        "smtpd_banner = $myhostname ready\nmail_name = mta\n",
        "",
    )


def test_expand(capsys, conf):
    assert run(capsys, "-c", conf, "-x", "smtpd_banner", "myorigin") == (
        0,
        "smtpd_banner = mx.example.org ready\nmyorigin = mx.example.org\n",
        "",
    )


def test_values_only(capsys, conf):
    assert run(capsys, "-c", conf, "-h", "message_size_limit") == (0, "20m\n", "")
    assert run(capsys, "-c", conf, "-hx", "smtpd_banner") == (0, "mx.example.org ready\n", "")


def test_defaults_ignore_the_file(capsys, conf):
    assert run(capsys, "-c", conf, "-d", "smtpd_banner", "message_size_limit") == (
        0,
        "smtpd_banner = $myhostname ESMTP $mail_name\nmessage_size_limit = 10240000\n",
        "",
    )
    code, out, _ = run(capsys, "-d")
    assert code == 0
    assert len(out.splitlines()) == len(PARAMETERS)


def test_defaults_expanded(capsys, conf):
    code, out, err = run(capsys, "-c", conf, "-dx", "myorigin", "myhostname")
    assert (code, err) == (0, "")
    origin, hostname = out.splitlines()
    assert hostname != "myhostname = mx.example.org"
    assert origin == "myorigin = " + hostname.split(" = ", 1)[1]


def test_nondefault(capsys, conf):
    assert run(capsys, "-c", conf, "-n") == (
        0,
        "message_size_limit = 20m\nmyhostname = mx.example.org\nsmtpd_banner = $myhostname ready\n",
        "",
    )
    # named: only those that are set
    assert run(capsys, "-c", conf, "-n", "mail_name", "myhostname") == (0, "myhostname = mx.example.org\n", "")
    # the embedded defaults set nothing
    assert run(capsys, "-n") == (0, "", "")


def test_nondefault_expanded(capsys, conf):
    assert run(capsys, "-c", conf, "-nx", "smtpd_banner") == (0, "smtpd_banner = mx.example.org ready\n", "")


def test_unknown_name(capsys):
    code, out, err = run(capsys, "mesage_size_limit")
    assert (code, out) == (1, "")
    assert err == "mta-config: error: unknown parameter: mesage_size_limit (did you mean message_size_limit?)\n"


def test_unknown_names_each_reported_nothing_printed(capsys):
    code, out, err = run(capsys, "mail_name", "zzzzzz", "endpoint")
    assert (code, out) == (1, "")
    assert err.splitlines() == [
        "mta-config: error: unknown parameter: zzzzzz",
        "mta-config: error: unknown parameter: endpoint ('endpoint' is set in a [listener:NAME] section; "
        "see mta-config -M)",
    ]


# -- mta-config: listeners ---------------------------------------------------------------


def test_listeners(capsys, conf):
    assert run(capsys, "-c", conf, "-M") == (
        0,
        "[listener:smtp]\n"
        "endpoint = tcp:port=2525:interface=127.0.0.1\n"
        "\n"
        "[listener:submission]\n"
        "endpoint = tcp:port=5870:interface=127.0.0.1\n"
        "smtpd_recipient_limit = 100\n"
        "myhostname = sub.example.org\n",
        "",
    )


def test_listeners_by_name(capsys, conf):
    code, out, err = run(capsys, "-c", conf, "-M", "submission")
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "[listener:submission]"
    code, out, err = run(capsys, "-c", conf, "-M", "nosuch")
    assert (code, out) == (1, "")
    assert err == "mta-config: error: unknown listener: nosuch (listeners: smtp, submission)\n"


def test_listeners_default(capsys):
    assert run(capsys, "-M") == (0, "[listener:smtp]\nendpoint = tcp:port=2525:interface=127.0.0.1\n", "")


def test_listeners_loaded_config_is_loadable_again(capsys, conf, tmp_path):
    # -M output plus -n output is itself a configuration with the same meaning
    _, main, _ = run(capsys, "-c", conf, "-n")
    _, listeners, _ = run(capsys, "-c", conf, "-M")
    copy = tmp_path / "copy.ini"
    copy.write_text("[main]\n" + main + "\n" + listeners)
    assert run(capsys, "-c", str(copy), "-M") == run(capsys, "-c", conf, "-M")
    assert run(capsys, "-c", str(copy), "-n") == run(capsys, "-c", conf, "-n")


# -- mta-config: --check and errors -------------------------------------------------------


def test_check_good(capsys, tmp_path):
    relay = tmp_path / "relay"
    relay.write_text("example.com OK\n")
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\nrelay_domains = texthash:{relay}\nmynetworks = inline:{{ 192.0.2.1=OK }}\n")
    assert run(capsys, "-c", str(path), "--check") == (0, "", "")


def test_check_embedded_defaults(capsys):
    assert run(capsys, "--check") == (0, "", "")


def test_check_missing_table(capsys, tmp_path):
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\n\nrelay_domains = texthash:{tmp_path}/nosuch\n")
    code, out, err = run(capsys, "-c", str(path), "--check")
    assert (code, out) == (1, "")
    assert err == (
        f"mta-config: error: {path}:3: [main] relay_domains: {tmp_path}/nosuch: cannot open table: "
        "No such file or directory\n"
    )


@pytest.mark.parametrize("spec, message", [
    ("socketmap:inet:127.0.0.1:nosuchport:postfix", "bad port 'nosuchport'"),
    ("socketmap:inet:127.0.0.1:8461", "inet: needs host:port"),
    ("socketmap:unix:relative:postfix", "unix: needs an absolute socket path"),
])
def test_check_bad_socketmap_spec(capsys, tmp_path, spec, message):
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\ntransport_maps = {spec}\n")
    code, out, err = run(capsys, "-c", str(path), "--check")
    assert (code, out) == (1, "")
    assert err == f"mta-config: error: {path}:2: [main] transport_maps: {spec}: {message}\n"


def test_check_good_socketmap_spec_connects_to_nothing(capsys, tmp_path):
    # The server need not run: --check parses the spec, the first lookup connects.
    path = tmp_path / "mta.ini"
    path.write_text("[main]\ntransport_maps = socketmap:inet:127.0.0.1:9:postfix\n")
    assert run(capsys, "-c", str(path), "--check") == (0, "", "")


@pytest.mark.parametrize("kind", ["pgsql", "mysql"])
def test_check_sql_table_file(capsys, tmp_path, kind):
    # A mistake in the table's file is reported with its file:line; a good file needs no server.
    table = tmp_path / "alias.cf"
    table.write_text("hosts = inet:127.0.0.1:9\ndbname = mail\nquery = SELECT goto FROM alias WHERE a='%s'\n"
                     "retry_intervall = 5\n")
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\nvirtual_alias_maps = {kind}:{table}\n")
    code, out, err = run(capsys, "-c", str(path), "--check")
    assert (code, out) == (1, "")
    assert err.startswith(f"mta-config: error: {path}:2: [main] virtual_alias_maps: {table}:4: unknown parameter "
                          "'retry_intervall'")
    table.write_text("hosts = inet:127.0.0.1:9\ndbname = mail\nquery = SELECT goto FROM alias WHERE a='%s'\n")
    assert run(capsys, "-c", str(path), "--check") == (0, "", "")


def test_check_bad_config(capsys, tmp_path):
    path = tmp_path / "mta.ini"
    path.write_text("[main]\nmesage_size_limit = 5\n")
    code, out, err = run(capsys, "-c", str(path), "--check")
    assert (code, out) == (1, "")
    assert err == (
        f"mta-config: error: {path}:2: [main] mesage_size_limit: unknown parameter "
        "(did you mean message_size_limit?)\n"
    )


@pytest.mark.parametrize("mode", [[], ["-n"], ["-x"], ["-M"], ["mail_name"]])
def test_config_error_in_every_mode(capsys, tmp_path, mode):
    path = tmp_path / "mta.ini"
    path.write_text("[main]\nmessage_size_limit = lots\n")
    code, out, err = run(capsys, "-c", str(path), *mode)
    assert (code, out) == (1, "")
    assert err.startswith(f"mta-config: error: {path}:2: [main] message_size_limit: 'lots' is not a size")
    assert "Traceback" not in err


def test_missing_config_file(capsys, tmp_path):
    path = tmp_path / "nosuch.ini"
    assert run(capsys, "-c", str(path)) == (
        1, "", f"mta-config: error: {path}: configuration file not found (named on the command line)\n")


def test_help(capsys):
    code, out, err = run(capsys, "--help")
    assert (code, err) == (0, "")
    assert out.startswith("usage: mta-config")
    for option in ("-d", "-n", "-x", "-M", "-h", "--check", "-c FILE, --config FILE"):
        assert f"\n  {option}" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-d", "-n"], "argument -n: not allowed with argument -d"),
        (["--check", "mail_name"], "--check takes no parameter names"),
        (["-M", "-h"], "-h applies to parameters, not to -M"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_usage_errors(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code in (1, 2)
    assert out == ""
    assert message in err
    assert err.rstrip().splitlines()[-1].startswith("mta-config: error: ")


def test_python_dash_m():
    done = subprocess.run(
        [sys.executable, "-m", "mta.cli.config", "-d", "message_size_limit"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "message_size_limit = 10240000\n", "")


# -- mta-queue --------------------------------------------------------------------------


def test_queue_without_command_prints_usage(capsys):
    assert cliQueue.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mta-queue")
    assert "status" in out
    assert "list, show, flush, delete, hold, release and requeue" in out
    assert "queue manager" in out


def test_queue_status_not_running(capsys, tmp_path):
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\nqueue_directory = {tmp_path}/queue\n")
    (tmp_path / "queue").mkdir()
    assert cliQueue.main(["--config", str(path), "status"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"mta-queue: mta is not running (no control socket at {tmp_path}/queue/private/control)\n"


@pytest.mark.parametrize("command", [["status"], ["list"], ["list", "--json"], ["show", "8E2cJtyNLAllsv"],
                                     ["flush"], ["delete", "ALL"], ["release", "8E2cJtyNLAllsv"]])
def test_queue_without_a_queue_directory_names_the_configuration(capsys, tmp_path, command):
    path = tmp_path / "mta.ini"
    path.write_text(f"[main]\nqueue_directory = {tmp_path}/queue\n")
    assert cliQueue.main(["--config", str(path), *command]) == 1
    problem = f"no queue directory {tmp_path}/queue (configuration: {path} (from the command line))"
    expected = f"mta is not running ({problem})" if command == ["status"] else problem
    assert capsys.readouterr() == ("", f"mta-queue: {expected}\n")
    assert not (tmp_path / "queue").exists()


def test_queue_config_error(capsys, tmp_path):
    path = tmp_path / "nosuch.ini"
    assert cliQueue.main(["-c", str(path), "status"]) == 1
    assert capsys.readouterr().err == (
        f"mta-queue: error: {path}: configuration file not found (named on the command line)\n")


class _Transport:
    lost = False

    def loseConnection(self):
        self.lost = True


class _Client:
    def __init__(self, answer):
        self.answer = answer
        self.transport = _Transport()
        self.commands = []

    def callRemote(self, command, **kwargs):
        self.commands.append(command)
        return self.answer


def _status(tmp_path, connect):
    from io import StringIO

    from mta import control

    os.makedirs(tmp_path / "private")
    open(control.socketPath(str(tmp_path)), "w").close()  # stands for the socket
    out, err = StringIO(), StringIO()
    results = []
    d = Deferred.fromCoroutine(cliQueue.status(Clock(), str(tmp_path), out, err, connect=connect))
    d.addBoth(results.append)
    assert results, "status() did not finish"
    return results[0], out.getvalue(), err.getvalue()


def test_queue_status_running(tmp_path):
    from mta import control

    client = _Client(succeed({
        "version": "0.1.0", "pid": 123, "uptime": 12.4, "queue_directory": "/x/y",
        "listeners": ["smtp tcp:port=2525:interface=127.0.0.1", "submission tcp:port=5870"],
    }))
    connected = []

    def connect(reactor, queueDirectory, timeout):
        connected.append(queueDirectory)
        return succeed(client)

    assert _status(tmp_path, connect) == (
        0,
        "mta is running: pid 123, version 0.1.0, up 12s, queue /x/y, "
        "listeners: smtp tcp:port=2525:interface=127.0.0.1, submission tcp:port=5870\n",
        "",
    )
    assert connected == [str(tmp_path)]
    assert client.commands == [control.Status]
    assert client.transport.lost


def test_queue_status_lists_the_workers(tmp_path):
    client = _Client(succeed({
        "version": "0.1.0", "pid": 123, "uptime": 1.0, "queue_directory": "/q", "listeners": [],
        "workers": ["worker 1[124] ready", "worker 2[125] starting"],
    }))
    assert _status(tmp_path, lambda reactor, queueDirectory, timeout: succeed(client))[1] == (
        "mta is running: pid 123, version 0.1.0, up 1s, queue /q, listeners: none, "
        "workers: worker 1[124] ready, worker 2[125] starting\n")


def test_queue_status_stale_socket(tmp_path):
    def connect(reactor, queueDirectory, timeout):
        raise netError.ConnectionRefusedError()

    code, out, err = _status(tmp_path, connect)
    assert (code, out) == (1, "")
    assert err == (
        f"mta-queue: mta is not running (stale control socket at {tmp_path}/private/control: connection refused)\n"
    )


def test_queue_status_connect_error(tmp_path):
    def connect(reactor, queueDirectory, timeout):
        raise netError.ConnectError("Permission denied")

    code, out, err = _status(tmp_path, connect)
    assert (code, out) == (1, "")
    assert err.startswith(f"mta-queue: mta is not reachable at {tmp_path}/private/control: ")
    assert "Permission denied" in err


@pytest.mark.parametrize(
    "seconds, text", [(0, "0s"), (12.7, "12s"), (60, "1m"), (303, "5m3s"), (7440, "2h4m"), (259203, "3d"), (93600, "1d2h")]
)
def test_formatDuration(seconds, text):
    assert cliQueue.formatDuration(seconds) == text


def test_formatStatus_escapes_control_characters():
    line = cliQueue.formatStatus(
        {"version": "1\n", "pid": 1, "uptime": 1, "queue_directory": "/q\r", "listeners": []}
    )
    assert line == "mta is running: pid 1, version 1\\x0a, up 1s, queue /q\\x0d, listeners: none"


# -- mta-sendmail --------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["-h"], ["--help"]])
def test_sendmail_usage(capsys, argv):
    assert cliSendmail.main(argv) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("usage: mta-sendmail")
    for option in ("-t", "-i, -oi", "-f SENDER", "-F FULLNAME", "-bs", "-bp", "-q"):
        assert option in out


def test_sendmail_without_recipients_is_a_usage_error(capsys):
    """As Postfix: a script that forgot its recipients must not believe its mail was sent."""
    assert cliSendmail.main([]) == 64
    out, err = capsys.readouterr()
    assert "Recipient addresses must be specified" in err


# -- every program finds the configuration the same way (mta.config.findConfig) ------------------


def _inEffect(capsys, tmp_path, argvConfig=()):
    """The configuration file each program uses: (twistd mta, mta-config, mta-queue, mta-sendmail)."""
    from mta import tap

    options = tap.Options()
    options.parseOptions(list(argvConfig))
    assert cliConfig.main([*argvConfig, "--which"]) == 0
    which = capsys.readouterr().out.strip()
    # mta-queue names the configuration when its queue directory is missing
    assert cliQueue.main([*argvConfig, "list"]) == 1
    queueErr = capsys.readouterr().err
    sendmailConfig = cliSendmail.loadConfig(dict(zip(argvConfig[::2], argvConfig[1::2])).get("-c"))
    return options.mtaConfig, which, queueErr, sendmailConfig


@pytest.mark.parametrize("how", ["option", "environment", "default"])
def test_every_program_finds_the_same_file(capsys, tmp_path, monkeypatch, how):
    path = tmp_path / f"{how}.ini"
    path.write_text(f"[main]\nqueue_directory = {tmp_path}/{how}-queue\nmyhostname = {how}.example\n")
    argv = ()
    if how == "option":
        argv = ("-c", str(path))
        monkeypatch.setenv("MTA_CONFIG", str(tmp_path / "not-this.ini"))
    elif how == "environment":
        monkeypatch.setenv("MTA_CONFIG", str(path))
    else:
        monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(path))
    daemon, which, queueErr, sendmail = _inEffect(capsys, tmp_path, argv)
    described = {"option": "from the command line", "environment": "from $MTA_CONFIG",
                 "default": "the default location"}[how]
    assert (daemon.path, daemon["myhostname"]) == (str(path), f"{how}.example")
    assert which == f"{path} ({described})"
    assert queueErr == f"mta-queue: no queue directory {tmp_path}/{how}-queue (configuration: {path} ({described}))\n"
    assert (sendmail.path, sendmail["myhostname"]) == (str(path), f"{how}.example")


def test_every_program_falls_back_to_the_embedded_defaults(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    daemon, which, queueErr, sendmail = _inEffect(capsys, tmp_path)
    assert daemon.path is None and sendmail.path is None
    nowhere = f"the embedded defaults (no -c, $MTA_CONFIG or {tmp_path}/no-such-default.ini)"
    assert which == nowhere
    assert queueErr == f"mta-queue: no queue directory {tmp_path}/var/spool/mta (configuration: {nowhere})\n"
    assert daemon["queue_directory"] == sendmail["queue_directory"] == f"{tmp_path}/var/spool/mta"


def test_twistd_options_refuse_a_missing_named_file(tmp_path, monkeypatch, capsys):
    from mta import tap

    monkeypatch.setenv("MTA_CONFIG", str(tmp_path / "missing.ini"))
    monkeypatch.setattr("sys.__stderr__", sys.stderr)
    with pytest.raises(SystemExit) as e:
        tap.Options().parseOptions([])
    assert e.value.code == 1
    assert capsys.readouterr().err == (
        f"mta: fatal: {tmp_path}/missing.ini: configuration file not found (named by $MTA_CONFIG)\n")


def test_config_which(capsys, tmp_path, monkeypatch, conf):
    assert run(capsys, "--which") == (
        0, f"the embedded defaults (no -c, $MTA_CONFIG or {tmp_path}/no-such-default.ini)\n", "")
    assert run(capsys, "-c", conf, "--which") == (0, f"{conf} (from the command line)\n", "")
    (tmp_path / "broken.ini").write_text("[main]\nno_such_thing = 1\n")
    # --which names the file without loading it: it helps most when the file is broken
    assert run(capsys, "-c", str(tmp_path / "broken.ini"), "--which") == (
        0, f"{tmp_path}/broken.ini (from the command line)\n", "")
    monkeypatch.setenv("MTA_CONFIG", str(tmp_path / "missing"))
    assert run(capsys, "--which") == (
        1, "", f"mta-config: error: {tmp_path}/missing: configuration file not found (named by $MTA_CONFIG)\n")
    assert run(capsys, "--which", "myhostname")[0] == 1


def test_config_uses_the_environment(capsys, tmp_path, monkeypatch, conf):
    monkeypatch.setenv("MTA_CONFIG", conf)
    assert run(capsys, "-n", "myhostname") == (0, "myhostname = mx.example.org\n", "")
