"""twistd --uid/--gid: the queue directory is given to that user at start (as root), and a daemon
that cannot use its queue or open maillog_file stops with one clear message, not a broken loop."""

import os

import pytest

from mta import service as mtaservice
from mta import tap
from mta.service import MTAService, StartupError, chownTree, queueAccessProblem
from mta.smtpd import serverFactory
from tests.unit.test_reload import Daemon


def loaded(daemon):
    """(config, tables) of the test daemon's file, as the service is given them."""
    from mta.config import load, openTables
    from mta.tables import Tables

    config = load(daemon.path)
    tables = Tables(daemon.reactor)
    openTables(config, tables)
    return config, tables


def test_runAs_from_twistds_options():
    assert tap.runAs(None) is None
    assert tap.runAs({"uid": None, "gid": None}) is None
    assert tap.runAs({"uid": 65534, "gid": 100}) == (65534, 100)
    uid, gid = tap.runAs({"uid": 0, "gid": None})
    assert (uid, gid) == (0, 0)  # the gid: the uid's group, as twistd's


def test_chownTree_gives_what_is_owned_otherwise_and_not_through_links(tmp_path, monkeypatch):
    queue = tmp_path / "spool"
    (queue / "deferred" / "A").mkdir(parents=True)
    (queue / "deferred" / "A" / "8E3xyz").write_text("queue file")
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    (queue / "link").symlink_to(outside)
    (queue / "mta-sts.sqlite").write_text("")
    (queue / "elsewhere" / "deep").mkdir(parents=True)  # not a queue directory: left alone
    calls = []
    me = os.stat(queue)

    def lchown(path, uid, gid):
        calls.append(os.path.relpath(path, tmp_path))

    monkeypatch.setattr(mtaservice.os, "lchown", lchown)
    assert chownTree(str(queue), me.st_uid + 1, me.st_gid) == 6
    assert sorted(calls) == ["spool", "spool/deferred", "spool/deferred/A", "spool/deferred/A/8E3xyz", "spool/link",
                             "spool/mta-sts.sqlite"]
    calls.clear()
    assert chownTree(str(queue), me.st_uid, me.st_gid) == 0 and calls == []  # already theirs: nothing done


def test_queueAccessProblem(tmp_path, monkeypatch):
    queue = tmp_path / "spool"
    (queue / "active").mkdir(parents=True)
    assert queueAccessProblem(str(queue)) is None
    real = os.access
    monkeypatch.setattr(mtaservice.os, "access", lambda path, mode: not str(path).endswith("active") and real(path, mode))
    problem = queueAccessProblem(str(queue))
    assert problem.startswith(f"queue directory {queue}/active is not readable and writable by uid ")
    assert "chown -R" in problem


def test_start_as_root_gives_the_queue_to_the_twistd_user(tmp_path, monkeypatch):
    d = Daemon(tmp_path)
    d.write()
    given = []
    monkeypatch.setattr(mtaservice.os, "geteuid", lambda: 0)
    monkeypatch.setattr(mtaservice, "chownTree", lambda path, uid, gid: given.append((path, uid, gid)) or 3)
    config, tables = loaded(d)
    service = MTAService(config, d.reactor, tables, serverFactory, runAs=(65534, 65534))
    service.privilegedStartService()
    assert given == [(f"{tmp_path}/q", 65534, 65534)]
    service.startService()
    assert service.running
    service.stopService()


def test_a_queue_the_daemon_cannot_use_stops_the_start_with_one_message(tmp_path, monkeypatch):
    d = Daemon(tmp_path)
    d.write()
    config, tables = loaded(d)
    errors = []
    service = MTAService(config, d.reactor, tables, serverFactory, onStartupError=errors.append)
    service.privilegedStartService()
    monkeypatch.setattr(mtaservice, "queueAccessProblem", lambda path: f"queue directory {path} is not writable")
    service.startService()
    assert errors == [f"queue directory {tmp_path}/q is not writable"]
    assert not service.running
    daemonized = MTAService(config, d.reactor, tables, serverFactory)
    with pytest.raises(StartupError):
        daemonized.startService()


def test_a_maillog_file_that_cannot_be_opened_stops_the_start(tmp_path):
    d = Daemon(tmp_path)
    d.maillog = tmp_path / "no" / "such" / "dir" / "maillog"
    d.write()
    config, tables = loaded(d)
    errors = []
    service = MTAService(config, d.reactor, tables, serverFactory, onStartupError=errors.append)
    service.privilegedStartService()
    service.startService()
    assert errors == [f"maillog_file {tmp_path}/no/such/dir/maillog: cannot open: No such file or directory"]
