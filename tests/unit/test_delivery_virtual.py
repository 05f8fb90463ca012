"""mta.delivery.virtual and mta.delivery.mailbox: virtual(8) delivery into Maildirs and mbox files."""

import errno
import fcntl
import os
import re
import stat
import time

import attrs
import pytest
from twisted.internet.defer import fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from mta.config import ConfigError, load
from mta.delivery import mailbox
from mta.delivery.mailbox import FileSystem, MailboxText, splitMailboxPath
from mta.delivery.maildir import maildirHostname, uniqueName
from mta.delivery.virtual import VirtualTransport, makeVirtualTransport
from mta.interfaces import IDeliveryTransport, ILookupTable
from mta.model import DeliveryRecipient, DeliveryRequest, Envelope, Recipient
from mta.queue import fileformat
from mta.tables import Tables, TableTemporaryError
from mta.testing import SyncPool

NOW = 1700000000.25
ENVELOPE = Envelope(
    sender="alice@example.org",
    recipients=(Recipient("bob@example.com"),),
    arrival_time=NOW - 10,
    client_name="mail.example.org",
    client_address="192.0.2.7",
    client_port=40211,
    helo="mail.example.org",
    protocol="ESMTP",
)
CONTENT = b"Subject: hello\r\nFrom: Alice <alice@example.org>\r\n\r\nHello, world.\r\nFrom here on.\r\n>From there.\r\n"
CONTENT_LF = CONTENT.replace(b"\r\n", b"\n")
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.(.+)$")


# -- fakes: no threads, no real reactor, no sleeping -------------------------------


class FakeReactor:
    def __init__(self, now=NOW):
        self.pool = SyncPool()
        self.now = now

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def getThreadPool(self):
        return self.pool

    def seconds(self):
        return self.now


@implementer(ILookupTable)
class FakeTable:
    """A dict table that records the keys asked; C{error} makes every lookup fail with it."""

    def __init__(self, entries=None, error=None, spec="fake:table"):
        self.entries = {k.lower(): v for k, v in (entries or {}).items()}
        self.error = error
        self.spec = spec
        self.keys = []

    def lookup(self, key):
        self.keys.append(key)
        if self.error is not None:
            return fail(self.error)
        return succeed(self.entries.get(key.lower()))


class FakeMailLog:
    def __init__(self):
        self.lines = []

    def emit(self, text, queue_id=None, level=None, **fields):
        self.lines.append(text)


class RecordingFileSystem(FileSystem):
    """
    Records each call in C{log} as (op, name); C{failures} maps an op to a
    function of the call's details that returns an OSError to raise (or None).
    """

    def __init__(self):
        self.log = []
        self.failures = {}
        self.sleeps = []
        self.locks = {}  # style -> number of EAGAIN failures still to give
        self.names = {}
        self.clock = None

    def _fail(self, op, *details):
        check = self.failures.get(op)
        error = check(*details) if check is not None else None
        if error is not None:
            self.log.append((op + " FAILED",) + details)
            raise error

    def open(self, name, flags, mode=0o600, dirFd=None):
        self._fail("open", name, flags)
        fd = super().open(name, flags, mode, dirFd)
        self.names[fd] = os.path.basename(name.rstrip("/")) if dirFd is None else name
        self.log.append(("open", self.names[fd]))
        return fd

    def mkdir(self, name, mode, dirFd):
        self._fail("mkdir", name)
        self.log.append(("mkdir", name))
        super().mkdir(name, mode, dirFd)

    def fchown(self, fd, uid, gid):
        self._fail("fchown", self.names.get(fd), uid, gid)
        self.log.append(("fchown", self.names.get(fd), uid, gid))
        super().fchown(fd, uid, gid)

    def write(self, fd, data):
        self._fail("write", len(data))
        n = super().write(fd, data)
        self.log.append(("write", self.names.get(fd), n))
        return n

    def fsync(self, fd):
        self._fail("fsync", self.names.get(fd))
        self.log.append(("fsync", self.names.get(fd)))
        super().fsync(fd)

    def ftruncate(self, fd, length):
        self.log.append(("ftruncate", self.names.get(fd), length))
        super().ftruncate(fd, length)

    def close(self, fd):
        self.log.append(("close", self.names.get(fd)))
        super().close(fd)

    def link(self, src, srcDirFd, dst, dstDirFd):
        self._fail("link", src, dst)
        self.log.append(("link", self.names.get(srcDirFd), self.names.get(dstDirFd)))
        super().link(src, srcDirFd, dst, dstDirFd)

    def rename(self, src, srcDirFd, dst, dstDirFd):
        self.log.append(("rename", self.names.get(srcDirFd), self.names.get(dstDirFd)))
        super().rename(src, srcDirFd, dst, dstDirFd)

    def unlink(self, name, dirFd):
        self.log.append(("unlink", self.names.get(dirFd), name))
        super().unlink(name, dirFd)

    def lock(self, fd, style):
        self.log.append(("lock", style))
        if self.locks.get(style):
            self.locks[style] -= 1
            raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        super().lock(fd, style)

    def sleep(self, seconds):
        self.sleeps.append(seconds)

    def ops(self, *names):
        return [entry for entry in self.log if entry[0] in names]


# -- helpers ---------------------------------------------------------------------


def queueFile(tmp_path, content=CONTENT, envelope=ENVELOPE):
    """Write a real queue file; return (path, contentOffset, contentLength) as the manager would."""
    path = tmp_path / "queue" / "4TbC0hR2x8Zq"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(fileformat.dumpQueueFile(envelope, content))
    parsed = fileformat.readQueueFile(str(path))
    return str(path), parsed.contentOffset, parsed.contentLength


def makeRequest(tmp_path, recipients, content=CONTENT, sender="alice@example.org", nexthop="example.com"):
    envelope = Envelope(sender=sender, recipients=tuple(Recipient(r if isinstance(r, str) else r[0])
                                                        for r in recipients), arrival_time=NOW - 10)
    path, offset, length = queueFile(tmp_path, content, envelope)
    rcpts = []
    for i, r in enumerate(recipients):
        address, original = (r, r) if isinstance(r, str) else r
        rcpts.append(DeliveryRecipient(index=i, address=address, original=original))
    return DeliveryRequest("4TbC0hR2x8Zq", "virtual", nexthop, envelope, tuple(rcpts), path, offset, length)


# The transport's keyword arguments that are settings: the parameter each comes from.
SETTINGS = {
    "base": "virtual_mailbox_base", "minimumUid": "virtual_minimum_uid", "mailboxLimit": "virtual_mailbox_limit",
    "delimiter": "recipient_delimiter", "lockStyles": "virtual_mailbox_lock", "lockAttempts": "deliver_lock_attempts",
    "lockDelay": "deliver_lock_delay", "staleLockTime": "stale_lock_time",
    "strictOwnership": "strict_mailbox_ownership", "followSymlinks": "virtual_mailbox_follow_symlinks",
}


def iniValue(value):
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(value)
    return str(value)


def virtualSettings(**params):
    """The VirtualSettings of a [main] with C{params} (Postfix's names)."""
    text = "".join(f"{name} = {iniValue(value)}\n" for name, value in params.items())
    return load("<test>", "[main]\n" + text).settings.virtual


def transport(tmp_path, mailboxes=None, tables=None, **kwargs):
    base = tmp_path / "vmail"
    base.mkdir(exist_ok=True)
    params = {"virtual_mailbox_base": str(base)}
    for name, parameter in SETTINGS.items():
        if name in kwargs:
            params[parameter] = kwargs.pop(name)
    limit = params.get("virtual_mailbox_limit")
    if limit:  # a mailbox limit may not be below the message size limit
        params["message_size_limit"] = min(limit, 10240000)
    options = dict(mailboxMaps=tables if tables is not None else [FakeTable(mailboxes or {})],
                   clock=FakeReactor(), hostname="mx.example.com", maillog=FakeMailLog())
    options.update(kwargs)
    return VirtualTransport(virtualSettings(**params), **options)


def deliver(t, request):
    results = []
    d = t.deliver(request)
    d.addBoth(results.append)
    assert results, "delivery did not finish synchronously"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return sorted(results[0], key=lambda r: r.index)


def newFiles(maildir):
    return sorted(os.listdir(os.path.join(maildir, "new")))


def headers(recipient="bob@example.com", original=None, sender="alice@example.org"):
    return (f"Return-Path: <{sender}>\nX-Original-To: {original or recipient}\n"
            f"Delivered-To: {recipient}\n").encode()


# -- Maildir ---------------------------------------------------------------------


def test_maildir_delivery_is_byte_exact(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "example.com/bob/"})
    assert IDeliveryTransport.providedBy(t)
    [result] = deliver(t, makeRequest(tmp_path, [("bob@example.com", "Bob@Example.COM")]))
    assert (result.index, result.status, result.dsn, result.text, result.relay) == (
        0, "sent", "2.0.0", "delivered to maildir", "virtual")
    maildir = tmp_path / "vmail" / "example.com" / "bob"
    [name] = newFiles(maildir)
    data = (maildir / "new" / name).read_bytes()
    # Return-Path, X-Original-To, Delivered-To (Postfix's order), then the message with LF line ends,
    # without From_ quoting: the bytes as queued, CRLF -> LF.
    assert data == headers(original="Bob@Example.COM") + CONTENT_LF
    assert os.listdir(maildir / "tmp") == []
    assert sorted(os.listdir(maildir)) == ["cur", "new", "tmp"]
    assert stat.S_IMODE(os.stat(maildir / "new" / name).st_mode) == 0o600
    for directory in (maildir, maildir / "new", maildir / "cur", maildir / "tmp", maildir.parent):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    match = NAME.match(name)
    assert match and match.group(1) == str(int(NOW)) and match.group(2) == "250000"
    assert match.group(3) == str(os.getpid()) and match.group(5) == "mx.example.com"


def test_maildir_uses_existing_directories_and_thread_pool(tmp_path):
    maildir = tmp_path / "vmail" / "bob"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "old").write_bytes(b"old")
    t = transport(tmp_path, {"bob@example.com": "bob/"})
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert len(newFiles(maildir)) == 1
    assert os.listdir(maildir / "cur") == ["old"]
    assert t.clock.pool.jobs == 1  # all file I/O in one pool job per recipient


def test_maildir_names_are_unique_and_each_recipient_gets_a_copy(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "shared/", "carol@example.com": "shared/"})
    results = deliver(t, makeRequest(tmp_path, ["bob@example.com", "carol@example.com", "bob@example.com"]))
    assert [r.status for r in results] == ["sent"] * 3
    names = newFiles(tmp_path / "vmail" / "shared")
    assert len(set(names)) == 3
    contents = sorted((tmp_path / "vmail" / "shared" / "new" / n).read_bytes() for n in names)
    bob, carol = headers("bob@example.com") + CONTENT_LF, headers("carol@example.com") + CONTENT_LF
    assert contents == sorted([bob, bob, carol])
    counters = {int(NAME.match(n).group(4)) for n in names}
    assert len(counters) == 3


def test_unique_name_and_hostname_sanitizing():
    names = {uniqueName(NOW, "mx.example.com") for _ in range(1000)}
    assert len(names) == 1000
    assert maildirHostname("a/b:c.example") == "a\\057b\\072c.example"
    assert uniqueName(NOW, "a/b:c").endswith(".a\\057b\\072c")
    assert "/" not in uniqueName(NOW, "a/b")


def test_maildir_write_fsync_link_fsync_unlink_order(tmp_path):
    fs = RecordingFileSystem()
    t = transport(tmp_path, {"bob@example.com": "bob/"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    [name] = newFiles(tmp_path / "vmail" / "bob")
    log = fs.log
    created = log.index(("open", name))
    lastWrite = max(i for i, entry in enumerate(log) if entry[:2] == ("write", name))
    fsyncFile = log.index(("fsync", name))
    closeFile = log.index(("close", name))
    link = log.index(("link", "tmp", "new"))
    fsyncNew = log.index(("fsync", "new"))
    unlink = log.index(("unlink", "tmp", name))
    assert created < lastWrite < fsyncFile < closeFile < link < fsyncNew < unlink
    # Directories made on the way are fsynced into their parents.
    assert ("mkdir", "bob") in log and ("fsync", "vmail") in log


def test_maildir_falls_back_to_rename_without_hard_links(tmp_path):
    fs = RecordingFileSystem()
    fs.failures["link"] = lambda src, dst: OSError(errno.EPERM, os.strerror(errno.EPERM))
    t = transport(tmp_path, {"bob@example.com": "bob/"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert len(newFiles(tmp_path / "vmail" / "bob")) == 1
    assert os.listdir(tmp_path / "vmail" / "bob" / "tmp") == []
    assert fs.ops("rename") == [("rename", "tmp", "new")]
    assert not fs.ops("unlink")


# -- lookups ---------------------------------------------------------------------


def test_catch_all_and_specific_entries(tmp_path):
    table = FakeTable({"bob@example.com": "bob/", "@example.com": "catchall/"})
    t = transport(tmp_path, tables=[table])
    results = deliver(t, makeRequest(tmp_path, ["bob@example.com", "Someone@Example.com"]))
    assert [r.status for r in results] == ["sent", "sent"]
    assert len(newFiles(tmp_path / "vmail" / "bob")) == 1
    [name] = newFiles(tmp_path / "vmail" / "catchall")
    assert b"Delivered-To: Someone@Example.com\n" in (tmp_path / "vmail" / "catchall" / "new" / name).read_bytes()
    assert table.keys == ["bob@example.com", "someone@example.com", "@example.com"]


def test_extensions_follow_virtual8_search_order(tmp_path):
    table = FakeTable({"bob@example.com": "bob/", "bob+lists@example.com": "bob-lists/"})
    t = transport(tmp_path, tables=[table], delimiter="+")
    results = deliver(t, makeRequest(tmp_path, ["bob+lists@example.com", "bob+other@example.com"]))
    assert [r.status for r in results] == ["sent", "sent"]
    assert len(newFiles(tmp_path / "vmail" / "bob-lists")) == 1
    [name] = newFiles(tmp_path / "vmail" / "bob")
    # The whole address, extension included, is the Delivered-To.
    assert b"Delivered-To: bob+other@example.com\n" in (tmp_path / "vmail" / "bob" / "new" / name).read_bytes()
    assert table.keys == ["bob+lists@example.com", "bob+other@example.com", "bob@example.com"]


def test_extension_without_delimiter_is_part_of_the_name(tmp_path):
    table = FakeTable({"bob@example.com": "bob/"})
    t = transport(tmp_path, tables=[table])
    [result] = deliver(t, makeRequest(tmp_path, ["bob+lists@example.com"]))
    assert (result.status, result.dsn) == ("bounced", "5.1.1")
    assert table.keys == ["bob+lists@example.com", "@example.com"]


def test_each_key_is_tried_in_every_table_first(tmp_path):
    # Postfix's maps_find(): user@domain in all tables before @domain in any.
    first = FakeTable({"@example.com": "catchall/"})
    second = FakeTable({"bob@example.com": "bob/"})
    t = transport(tmp_path, tables=[first, second])
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert len(newFiles(tmp_path / "vmail" / "bob")) == 1
    assert not (tmp_path / "vmail" / "catchall").exists()


def test_unknown_recipient_bounces(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "bob/"})
    [result] = deliver(t, makeRequest(tmp_path, ["Nobody@Example.com"]))
    assert (result.status, result.dsn, result.text, result.relay) == (
        "bounced", "5.1.1", 'unknown user: "nobody@example.com"', "virtual")
    assert os.listdir(tmp_path / "vmail") == []


def test_temporary_table_failure_defers(tmp_path):
    t = transport(tmp_path, tables=[FakeTable(error=TableTemporaryError("texthash:/x: busy"))])
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn, result.text) == ("deferred", "4.3.0", "table lookup failure")
    assert any("virtual_mailbox_maps lookup failed" in line for line in t.maillog.lines)


def test_a_bug_defers_one_recipient_and_never_raises(tmp_path):
    class Broken(FakeTable):
        def lookup(self, key):
            if key.startswith("bob"):
                raise RuntimeError("bug")
            return super().lookup(key)

    t = transport(tmp_path, tables=[Broken({"carol@example.com": "carol/"})])
    results = deliver(t, makeRequest(tmp_path, ["bob@example.com", "carol@example.com"]))
    assert [(r.index, r.status, r.dsn) for r in results] == [(0, "deferred", "4.3.0"), (1, "sent", "2.0.0")]


def test_empty_base_defers_with_a_warning(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "bob/"}, base="")
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn, result.text) == ("deferred", "4.3.5", "mail system configuration error")
    assert any("virtual_mailbox_base" in line for line in t.maillog.lines)


# -- paths that would leave the base -------------------------------------------------


@pytest.mark.parametrize("path", ["../outside/", "/etc/mail/", "a/../../outside/", "..", "a/b/../../../x",
                                  "", "/", "./", "a\0b/"])
def test_paths_escaping_the_base_bounce(tmp_path, path):
    t = transport(tmp_path, {"bob@example.com": path})
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn, result.text) == ("bounced", "5.3.5", "mail system configuration error")
    assert not (tmp_path / "outside").exists()
    assert os.listdir(tmp_path / "vmail") == []
    assert t.maillog.lines and "bob@example.com" in t.maillog.lines[0]


def test_split_mailbox_path():
    assert splitMailboxPath("example.com/bob/") == (("example.com", "bob"), True)
    assert splitMailboxPath("example.com//./bob") == (("example.com", "bob"), False)
    assert splitMailboxPath("a..b/c") == (("a..b", "c"), False)
    with pytest.raises(ValueError, match=r"'\.\.'"):
        splitMailboxPath("a/../b")


def test_symbolic_link_below_the_base_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "vmail").mkdir()
    (tmp_path / "vmail" / "evil").symlink_to(outside)
    (tmp_path / "vmail" / "real").mkdir()
    (tmp_path / "vmail" / "real" / "mbox").symlink_to(outside / "mbox")
    t = transport(tmp_path, {"a@example.com": "evil/bob/", "b@example.com": "evil/mbox",
                             "c@example.com": "real/mbox"})
    results = deliver(t, makeRequest(tmp_path, ["a@example.com", "b@example.com", "c@example.com"]))
    assert [(r.status, r.dsn) for r in results] == [("bounced", "5.3.5")] * 3
    assert os.listdir(outside) == []
    assert all("symbolic link" in line for line in t.maillog.lines)


def test_symbolic_links_followed_when_configured_and_base_may_be_one(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "vmail").mkdir()
    (tmp_path / "vmail" / "domain").symlink_to(real)
    (tmp_path / "link-to-base").symlink_to(tmp_path / "vmail")
    t = transport(tmp_path, {"bob@example.com": "domain/bob/"}, followSymlinks=True,
                  base=str(tmp_path / "link-to-base"))
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert len(newFiles(real / "bob")) == 1


def test_base_itself_may_be_a_symbolic_link(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "vmail").symlink_to(tmp_path / "store")
    t = transport(tmp_path, {"bob@example.com": "bob/"})
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert len(newFiles(tmp_path / "store" / "bob")) == 1


# -- mbox ------------------------------------------------------------------------


def fromLine(sender="alice@example.org", now=NOW):
    return f"From {sender}  {time.asctime(time.localtime(now))}\n".encode()


def test_mbox_delivery_from_line_quoting_and_blank_line(tmp_path):
    (tmp_path / "vmail" / "example.com").mkdir(parents=True)
    t = transport(tmp_path, {"bob@example.com": "example.com/bob"})
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn, result.text, result.relay) == (
        "sent", "2.0.0", "delivered to mailbox", "virtual")
    mbox = tmp_path / "vmail" / "example.com" / "bob"
    quoted = CONTENT_LF.replace(b"\nFrom here", b"\n>From here")
    assert mbox.read_bytes() == fromLine() + headers() + quoted + b"\n"
    assert re.match(rb"From alice@example\.org  \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\n", mbox.read_bytes())
    assert stat.S_IMODE(os.stat(mbox).st_mode) == 0o600
    assert not (tmp_path / "vmail" / "example.com" / "bob.lock").exists()
    # A second message is appended after the blank line.
    deliver(t, makeRequest(tmp_path, ["bob@example.com"], content=b"From nobody\r\nno end", sender=""))
    second = fromLine("MAILER-DAEMON") + headers(sender="") + b">From nobody\nno end\n\n"
    assert mbox.read_bytes() == fromLine() + headers() + quoted + b"\n" + second


def test_mbox_same_mailbox_twice_gets_two_copies(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "box", "carol@example.com": "box"})
    results = deliver(t, makeRequest(tmp_path, ["bob@example.com", "carol@example.com"]))
    assert [r.status for r in results] == ["sent", "sent"]
    assert (tmp_path / "vmail" / "box").read_bytes().count(b"\nFrom alice@example.org  ") == 1
    assert (tmp_path / "vmail" / "box").read_bytes().startswith(b"From alice@example.org  ")


def test_mbox_directory_must_exist(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "missing/bob"})
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert result.text == (f"delivery failed to mailbox {tmp_path}/vmail/missing/bob: cannot open file: "
                           "No such file or directory")


def test_mbox_not_a_regular_file_bounces(tmp_path):
    (tmp_path / "vmail").mkdir()
    fifo = tmp_path / "vmail" / "bob"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        t = transport(tmp_path, {"bob@example.com": "bob"})
        [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    finally:
        os.close(reader)
    assert (result.status, result.dsn) == ("bounced", "5.3.5")
    assert result.text.endswith(": mail system configuration error")


def test_mbox_with_two_hard_links_defers(tmp_path):
    (tmp_path / "vmail").mkdir()
    (tmp_path / "vmail" / "bob").write_bytes(b"")
    os.link(tmp_path / "vmail" / "bob", tmp_path / "other")
    t = transport(tmp_path, {"bob@example.com": "bob"})
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert result.text.endswith("file has 2 hard links")
    assert (tmp_path / "other").read_bytes() == b""


def test_mbox_locks_before_writing(tmp_path):
    fs = RecordingFileSystem()
    t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs, lockStyles=("fcntl", "flock", "dotlock"))
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    log = fs.log
    dotlock = log.index(("open", "bob.lock"))
    opened = log.index(("open", "bob"))
    fcntlLock = log.index(("lock", "fcntl"))
    flockLock = log.index(("lock", "flock"))
    firstWrite = min(i for i, entry in enumerate(log) if entry[0] == "write")
    fsync = log.index(("fsync", "bob"))
    close = log.index(("close", "bob"))
    removeLock = log.index(("unlink", "vmail", "bob.lock"))
    assert dotlock < opened < fcntlLock < flockLock < firstWrite < fsync < close < removeLock


def test_mbox_lock_retries_then_defers_without_sleeping(tmp_path):
    fs = RecordingFileSystem()
    fs.locks["fcntl"] = 3
    t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs, lockAttempts=3, lockDelay=0.5)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert result.text.endswith("unable to lock for exclusive access: Resource temporarily unavailable")
    assert fs.sleeps == [0.5, 0.5]
    assert (tmp_path / "vmail" / "bob").read_bytes() == b""
    assert not (tmp_path / "vmail" / "bob.lock").exists()
    # A lock that frees up in time is taken.
    fs.locks["fcntl"] = 2
    fs.sleeps.clear()
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent" and fs.sleeps == [0.5, 0.5]


def test_mbox_threads_of_this_process_exclude_each_other(tmp_path):
    # fcntl() locks do not keep two threads of one process apart: the process lock does.
    from mta.delivery import mbox

    (tmp_path / "vmail").mkdir()
    box = tmp_path / "vmail" / "bob"
    box.write_bytes(b"")
    st = os.stat(box)
    fs = RecordingFileSystem()
    t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs, lockStyles=("fcntl",), lockAttempts=3)
    job = attrs.evolve(_job(tmp_path), lockAttempts=3)
    with mbox._ProcessLock(fs, job, (st.st_dev, st.st_ino), "held: "):
        [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
        assert (result.status, result.dsn) == ("deferred", "4.2.0")
        assert box.read_bytes() == b""
        assert fs.sleeps == [1.0, 1.0]
    assert mbox._ProcessLock._locks == {}
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert mbox._ProcessLock._locks == {}


def test_mbox_concurrent_threads_never_interleave(tmp_path):
    import threading

    from mta.delivery.virtual import deliverMailbox

    class Yielding(FileSystem):
        def sleep(self, seconds):
            time.sleep(0)  # only yields the processor

    (tmp_path / "vmail").mkdir()
    path, offset, length = queueFile(tmp_path, b"Subject: x\r\n\r\n" + b"line\r\n" * 40000)
    job = attrs.evolve(_job(tmp_path), contentPath=path, contentOffset=offset, contentLength=length,
                       lockStyles=("fcntl",), lockAttempts=10**9, limit=0)
    outcomes = []

    def work():
        for _ in range(5):
            outcomes.append(deliverMailbox(job, Yielding()))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [o.status for o in outcomes] == ["sent"] * 40
    data = (tmp_path / "vmail" / "bob").read_bytes()
    one = fromLine("MAILER-DAEMON") + b"Return-Path: <>\nDelivered-To: bob@example.com\n" \
        + b"Subject: x\n\n" + b"line\n" * 40000 + b"\n"
    assert data == one * 40


def _job(tmp_path):
    return mailbox.MailboxJob(base=str(tmp_path / "vmail"), components=("bob",), maildir=False, sender="",
                              recipient="bob@example.com", original="", contentPath="", contentOffset=0,
                              contentLength=0, now=NOW)


def test_mbox_held_flock_defers(tmp_path):
    (tmp_path / "vmail").mkdir()
    mbox = tmp_path / "vmail" / "bob"
    mbox.write_bytes(b"From x  Thu Jan  1 00:00:00 1970\n\nold\n\n")
    holder = os.open(mbox, os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        fs = RecordingFileSystem()
        t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs, lockStyles=("flock",), lockAttempts=2)
        [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    finally:
        os.close(holder)
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert mbox.read_bytes() == b"From x  Thu Jan  1 00:00:00 1970\n\nold\n\n"
    assert len(fs.sleeps) == 1


def test_mbox_dot_lock_held_and_stale(tmp_path):
    (tmp_path / "vmail").mkdir()
    lock = tmp_path / "vmail" / "bob.lock"
    lock.write_bytes(b"")
    fs = RecordingFileSystem()
    t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs, lockAttempts=2, staleLockTime=500)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert "cannot create lock file" in result.text
    assert lock.exists()  # someone else's lock stays
    assert not (tmp_path / "vmail" / "bob").exists()
    old = time.time() - 600
    os.utime(lock, (old, old))
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert result.status == "sent"
    assert not lock.exists()


def test_mbox_write_error_truncates_to_the_original_size(tmp_path):
    (tmp_path / "vmail").mkdir()
    mbox = tmp_path / "vmail" / "bob"
    mbox.write_bytes(b"From x  Thu Jan  1 00:00:00 1970\n\nold\n\n")
    fs = RecordingFileSystem()
    writes = []

    def failSecondWrite(size):
        writes.append(size)
        return OSError(errno.EIO, os.strerror(errno.EIO)) if len(writes) == 2 else None

    fs.failures["write"] = failSecondWrite
    content = b"Subject: big\r\n\r\n" + b"x" * 100 + b"\r\n" * 70000  # more than one write buffer
    t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"], content=content))
    assert (result.status, result.dsn) == ("deferred", "4.3.0")
    assert result.text == f"delivery failed to mailbox {tmp_path}/vmail/bob: error writing message: Input/output error"
    assert ("ftruncate", "bob", 39) in fs.log
    assert mbox.read_bytes() == b"From x  Thu Jan  1 00:00:00 1970\n\nold\n\n"


def test_mbox_full_disk_defers_with_4_3_1(tmp_path):
    fs = RecordingFileSystem()
    fs.failures["fsync"] = lambda name: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if name == "bob" else None
    t = transport(tmp_path, {"bob@example.com": "bob"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.3.1")
    assert (tmp_path / "vmail" / "bob").read_bytes() == b""


def test_mbox_limit_counts_the_whole_mailbox(tmp_path):
    (tmp_path / "vmail").mkdir()
    mbox = tmp_path / "vmail" / "bob"
    t = transport(tmp_path, {"bob@example.com": "bob"}, mailboxLimit=400)
    [first] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    size = len(mbox.read_bytes())
    assert first.status == "sent" and size < 400 < 2 * size
    [second] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (second.status, second.dsn) == ("bounced", "5.2.2")
    assert second.text.endswith("error writing message: File too large")
    assert len(mbox.read_bytes()) == size
    unlimited = transport(tmp_path, {"bob@example.com": "bob"}, mailboxLimit=0)
    assert deliver(unlimited, makeRequest(tmp_path, ["bob@example.com"]))[0].status == "sent"


# -- limits and errors in Maildirs -------------------------------------------------------


def test_maildir_limit_bounces_and_leaves_nothing(tmp_path):
    size = len(headers() + CONTENT_LF)
    t = transport(tmp_path, {"bob@example.com": "bob/"}, mailboxLimit=size - 1)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn, result.text) == (
        "bounced", "5.2.2", "maildir delivery failed: error writing message: File too large")
    assert newFiles(tmp_path / "vmail" / "bob") == []
    assert os.listdir(tmp_path / "vmail" / "bob" / "tmp") == []
    exact = transport(tmp_path, {"bob@example.com": "bob/"}, mailboxLimit=size)
    assert deliver(exact, makeRequest(tmp_path, ["bob@example.com"]))[0].status == "sent"


@pytest.mark.parametrize("op, err, dsn", [
    ("write", errno.EIO, "4.3.0"),
    ("write", errno.ENOSPC, "4.3.1"),
    ("write", errno.EDQUOT, "5.2.2"),
    ("fsync", errno.EIO, "4.3.0"),
    ("link", errno.EIO, "4.2.0"),
])
def test_maildir_io_errors_leave_no_file(tmp_path, op, err, dsn):
    fs = RecordingFileSystem()
    if op == "fsync":
        fs.failures[op] = lambda name: OSError(err, os.strerror(err)) if NAME.match(name or "") else None
    else:
        fs.failures[op] = lambda *args: OSError(err, os.strerror(err))
    t = transport(tmp_path, {"bob@example.com": "bob/"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ({"4": "deferred", "5": "bounced"}[dsn[0]], dsn)
    assert os.strerror(err) in result.text and result.text.startswith("maildir delivery failed: ")
    assert newFiles(tmp_path / "vmail" / "bob") == []
    assert os.listdir(tmp_path / "vmail" / "bob" / "tmp") == []


def test_maildir_new_directory_fsync_failure_removes_the_new_entry(tmp_path):
    fs = RecordingFileSystem()
    fs.failures["fsync"] = lambda name: OSError(errno.EIO, os.strerror(errno.EIO)) if name == "new" else None
    (tmp_path / "vmail" / "bob" / "new").mkdir(parents=True)
    (tmp_path / "vmail" / "bob" / "tmp").mkdir()
    t = transport(tmp_path, {"bob@example.com": "bob/"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.3.0")
    assert newFiles(tmp_path / "vmail" / "bob") == []
    assert os.listdir(tmp_path / "vmail" / "bob" / "tmp") == []


def test_maildir_cannot_create_directories_defers(tmp_path):
    fs = RecordingFileSystem()
    fs.failures["mkdir"] = lambda name: OSError(errno.EACCES, os.strerror(errno.EACCES))
    t = transport(tmp_path, {"bob@example.com": "bob/"}, fileSystem=fs)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert result.text == f"maildir delivery failed: create maildir file {tmp_path}/vmail/bob/: Permission denied"


def test_queue_file_read_error_defers_and_leaves_nothing(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "bob/", "carol@example.com": "carol"})
    request = makeRequest(tmp_path, ["bob@example.com", "carol@example.com"])
    request = attrs.evolve(request, content_length=request.content_length + 10**6)  # the file is shorter
    results = deliver(t, request)
    assert [(r.status, r.dsn) for r in results] == [("deferred", "4.3.0")] * 2
    assert "error reading message" in results[0].text and "error reading message" in results[1].text
    assert newFiles(tmp_path / "vmail" / "bob") == []
    assert os.listdir(tmp_path / "vmail" / "bob" / "tmp") == []
    assert (tmp_path / "vmail" / "carol").read_bytes() == b""


# -- ownership ---------------------------------------------------------------------


def test_uid_and_gid_maps_checked_before_delivery(tmp_path):
    cases = {
        "low@example.com": ({"low@example.com": "99"}, {"low@example.com": "1000"}),
        "nouid@example.com": ({}, {"nouid@example.com": "1000"}),
        "junk@example.com": ({"junk@example.com": "12ab"}, {"junk@example.com": "1000"}),
        "gid0@example.com": ({"gid0@example.com": "1000"}, {"gid0@example.com": "0"}),
        "nogid@example.com": ({"nogid@example.com": "1000"}, {}),
    }
    uids = FakeTable({k: v for u, _ in cases.values() for k, v in u.items()})
    gids = FakeTable({k: v for _, g in cases.values() for k, v in g.items()})
    t = transport(tmp_path, {"@example.com": "box/"}, uidMaps=[uids], gidMaps=[gids], minimumUid=100)
    results = deliver(t, makeRequest(tmp_path, list(cases)))
    assert [(r.status, r.dsn, r.text) for r in results] == [
        ("deferred", "4.3.5", "mail system configuration error")] * len(cases)
    assert os.listdir(tmp_path / "vmail") == []
    assert len(t.maillog.lines) == len(cases)
    assert "bad uid '99' in virtual_uid_maps" in t.maillog.lines[0]
    assert "not found in virtual_uid_maps" in t.maillog.lines[1]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_uid_and_gid_maps_set_owners_when_root(tmp_path):
    t = transport(tmp_path, {"bob@example.com": "example.com/bob/", "carol@example.com": "example.com/carol"},
                  uidMaps=[FakeTable({"@example.com": "1234"})], gidMaps=[FakeTable({"@example.com": "2345"})])
    (tmp_path / "vmail" / "example.com").mkdir(parents=True)
    results = deliver(t, makeRequest(tmp_path, ["bob@example.com", "carol@example.com"]))
    assert [r.status for r in results] == ["sent", "sent"]
    maildir = tmp_path / "vmail" / "example.com" / "bob"
    [name] = newFiles(maildir)
    for path in (maildir, maildir / "new", maildir / "cur", maildir / "tmp", maildir / "new" / name,
                 tmp_path / "vmail" / "example.com" / "carol"):
        st = os.stat(path)
        assert (st.st_uid, st.st_gid) == (1234, 2345), path
    # A directory that already existed keeps its owner.
    assert os.stat(tmp_path / "vmail" / "example.com").st_uid == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_strict_mailbox_ownership(tmp_path):
    (tmp_path / "vmail").mkdir()
    mbox = tmp_path / "vmail" / "bob"
    mbox.write_bytes(b"")
    os.chown(mbox, 4321, 4321)
    maps = dict(uidMaps=[FakeTable({"@example.com": "1234"})], gidMaps=[FakeTable({"@example.com": "1234"})])
    t = transport(tmp_path, {"bob@example.com": "bob"}, **maps)
    [result] = deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    assert (result.status, result.dsn) == ("deferred", "4.2.0")
    assert result.text.endswith(f"destination {tmp_path}/vmail/bob is not owned by recipient")
    relaxed = transport(tmp_path, {"bob@example.com": "bob"}, strictOwnership=False, **maps)
    assert deliver(relaxed, makeRequest(tmp_path, ["bob@example.com"]))[0].status == "sent"


def test_without_maps_files_belong_to_the_daemon(tmp_path):
    fs = RecordingFileSystem()
    t = transport(tmp_path, {"bob@example.com": "bob/"}, fileSystem=fs)
    deliver(t, makeRequest(tmp_path, ["bob@example.com"]))
    [name] = newFiles(tmp_path / "vmail" / "bob")
    assert os.stat(tmp_path / "vmail" / "bob" / "new" / name).st_uid == os.geteuid()
    assert not fs.ops("fchown")


def test_owner_change_refused_defers_and_leaves_nothing(tmp_path):
    # As without root privileges: fchown to another user fails with EPERM.
    fs = RecordingFileSystem()
    fs.failures["fchown"] = lambda *args: OSError(errno.EPERM, os.strerror(errno.EPERM))
    t = transport(tmp_path, {"bob@example.com": "bob/", "carol@example.com": "carol"}, fileSystem=fs,
                  uidMaps=[FakeTable({"@example.com": "1234"})])
    (tmp_path / "vmail" / "bob" / "new").mkdir(parents=True)
    (tmp_path / "vmail" / "bob" / "tmp").mkdir()
    results = deliver(t, makeRequest(tmp_path, ["bob@example.com", "carol@example.com"]))
    assert [(r.status, r.dsn) for r in results] == [("deferred", "4.3.5")] * 2
    assert os.listdir(tmp_path / "vmail" / "bob" / "tmp") == []
    assert newFiles(tmp_path / "vmail" / "bob") == []
    assert not (tmp_path / "vmail" / "carol").exists()
    assert any("cannot give" in line and "uid 1234" in line for line in t.maillog.lines)


# -- text conversion -----------------------------------------------------------------


def convert(data, quote, sizes):
    text = MailboxText(quote)
    out, i, n = [], 0, 0
    while i < len(data):
        size = sizes[n % len(sizes)]
        out.append(text.feed(data[i:i + size]))
        i += size
        n += 1
    out.append(text.finish())
    return b"".join(out)


SAMPLES = [
    b"From a\r\nb\r\nFrom c\r\n>From d\r\nFrom: e\r\nFrom\r\n",
    b"x\r\ny\rz\r\r\nFrom ",
    b"From",
    b"no end",
    b"\r\n\r\nFrom x\r\n",
    b"bare\nlf\nFrom y\n",
    b"",
]


@pytest.mark.parametrize("sample", SAMPLES)
@pytest.mark.parametrize("quote", [True, False])
def test_mailbox_text_is_independent_of_chunking(sample, quote):
    expected = convert(sample, quote, [max(len(sample), 1)])
    for sizes in ([1], [2], [3], [5], [7], [1, 4], [6, 1]):
        assert convert(sample, quote, sizes) == expected, sizes


def test_mailbox_text_conversion():
    assert convert(SAMPLES[0], True, [100]) == b">From a\nb\n>From c\n>From d\nFrom: e\nFrom\n"
    assert convert(SAMPLES[0], False, [100]) == b"From a\nb\nFrom c\n>From d\nFrom: e\nFrom\n"
    assert convert(SAMPLES[1], True, [100]) == b"x\ny\rz\r\n>From \n"  # a bare CR stays
    assert convert(b"no end", True, [100]) == b"no end\n"
    assert convert(b"", True, [100]) == b""
    # A long line split across chunks is not quoted in the middle.
    assert convert(b"abc From x\r\n", True, [4]) == b"abc From x\n"


# -- the plugin factory --------------------------------------------------------------


def settings(**overrides):
    """The settings compiled from a [main] with these parameters (and a base and a delimiter)."""
    values = dict(virtual_mailbox_base="/var/mail/vhosts", recipient_delimiter="+")
    values.update(overrides)
    text = "".join(f"{name} = {iniValue(value)}\n" for name, value in values.items())
    return load("<test>", "[main]\n" + text).settings


class Context:
    def __init__(self):
        self.clock = FakeReactor()
        self.tables = Tables(self.clock)
        self.store = None


def test_plugin_makes_a_virtual_transport():
    from twisted.plugin import getPlugins

    import mta.plugins
    from mta.interfaces import IDeliveryTransportFactory

    factories = {f.transportType: f for f in getPlugins(IDeliveryTransportFactory, mta.plugins)}
    assert {"virtual", "discard", "error", "retry"} <= set(factories)
    t = factories["virtual"].makeTransport("virtual", settings(
        virtual_mailbox_maps="inline:{ bob@example.com=bob/ }", virtual_uid_maps="static:5000"), Context())
    assert isinstance(t, VirtualTransport)
    assert (t.base, t.delimiter, t.mailboxLimit, t.lockStyles, t.name) == (
        "/var/mail/vhosts", "+", 51200000, ("fcntl", "dotlock"), "virtual")
    assert [table.spec for table in t.mailboxMaps] == ["inline:{ bob@example.com=bob/ }"]
    assert [table.spec for table in t.uidMaps] == ["static:5000"] and t.gidMaps == ()
    results = []
    t.stop().addCallback(results.append)
    assert results == [None]


@pytest.mark.parametrize("overrides, message", [
    # (with virtual mailbox domains: a configuration that sends mail to virtual)
    (dict(virtual_mailbox_limit=1000, message_size_limit=2000, virtual_mailbox_domains="example.com"),
     "smaller than message_size_limit"),
    (dict(virtual_mailbox_limit=1000, message_size_limit=0, virtual_mailbox_domains="example.com"),
     "message_size_limit is unlimited"),
    (dict(virtual_mailbox_base="relative/path"), "relative"),
    # The schema's type refuses an unknown lock style before the settings are built.
    (dict(virtual_mailbox_lock=("fcntl", "lockf")), "'lockf' is not one of fcntl, flock, dotlock"),
])
def test_plugin_refuses_bad_configuration(overrides, message):
    # Refused when the configuration is loaded (so mta-config --check refuses it too), at the line.
    with pytest.raises(ConfigError, match=r"^<test>:\d+: \[main\] \w+: .*" + message):
        makeVirtualTransport("virtual", settings(**overrides).virtual, Context())


def test_plugin_accepts_unlimited_mailboxes_and_empty_base():
    t = makeVirtualTransport("virtual", settings(virtual_mailbox_limit=0, message_size_limit=0,
                                                 virtual_mailbox_base="").virtual, Context())
    assert t.mailboxLimit == 0 and t.base == ""


def test_unknown_lock_style_refused_by_the_settings(tmp_path):
    with pytest.raises(ConfigError, match="lock"):
        transport(tmp_path, {}, lockStyles=("dotlock", "posix"))
