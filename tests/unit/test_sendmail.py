"""mta-sendmail: options, input handling, -t, addresses, size limit, atomic deposit, -bs."""

import errno
import io
import os
import signal
import stat

import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mta.cli import sendmail as S
from mta.config import load, openTables
from mta.queue.fileformat import readContent, readQueueFile
from mta.queue.queueid import isValidQueueId
from mta.queue.store import FileSystem
from mta.tables import Tables

ORIGIN = "origin.example"


@pytest.fixture(autouse=True)
def fixedUser(monkeypatch):
    """The invoking user is 'alice' with the full name 'Alice Liddell', whoever runs the tests."""
    monkeypatch.setattr(S.addresses, "loginName", lambda uid: "alice")
    monkeypatch.delenv("NAME", raising=False)
    monkeypatch.setattr(S.addresses, "defaultFullName", lambda uid: None)


@pytest.fixture(autouse=True)
def queueAndNoOutsideConfiguration(tmp_path, monkeypatch):
    """
    The queue's maildrop/ exists (mta-sendmail never creates it: the daemon
    does), and neither $MTA_CONFIG nor an /etc/mta/mta.ini of this machine
    takes part.
    """
    (tmp_path / "queue" / "maildrop").mkdir(parents=True, mode=0o700)
    monkeypatch.delenv("MTA_CONFIG", raising=False)
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(tmp_path / "no-such-default.ini"))


@pytest.fixture
def config(tmp_path):
    return load("<t>", f"[main]\nqueue_directory = {tmp_path}/queue\nmyhostname = mx.test\nmyorigin = {ORIGIN}\n"
                       "message_size_limit = 100000\n")


def maildrop(tmp_path):
    path = tmp_path / "queue" / "maildrop"
    return sorted(os.listdir(path)) if path.is_dir() else []


def deposited(tmp_path):
    """(envelope, content) of the one file in maildrop/."""
    names = maildrop(tmp_path)
    assert len(names) == 1, names
    assert isValidQueueId(names[0])
    path = str(tmp_path / "queue" / "maildrop" / names[0])
    queueFile = readQueueFile(path, verifyContent=True)
    content = b"".join(readContent(path, queueFile.contentOffset, queueFile.contentLength))
    return queueFile.envelope, content


def run(argv, config, tmp_path, message, monkeypatch=None, capsys=None):
    """main() with C{message} on stdin and the test configuration; (status, stderr)."""
    path = tmp_path / "mta.ini"
    if not path.exists():
        path.write_text(f"[main]\nqueue_directory = {tmp_path}/queue\nmyhostname = mx.test\nmyorigin = {ORIGIN}\n"
                        "message_size_limit = 100000\n")
    err = io.StringIO()
    status = S.main(["-C", str(path), *argv], stdin=io.BytesIO(message), stdout=io.StringIO(), stderr=err)
    return status, err.getvalue()


# -- options ----------------------------------------------------------------------------


def test_recipientsAndCommonFlags():
    o = S.parseArguments(["-t", "-i", "-f", "bob@example.org", "-F", "Bob B", "-C", "/etc/mta.ini", "a@x", "b@y"])
    assert (o.mode, o.extract, o.dotEnds, o.sender, o.fullName, o.config) == (
        "enqueue", True, False, "bob@example.org", "Bob B", "/etc/mta.ini")
    assert o.recipients == ["a@x", "b@y"]


@pytest.mark.parametrize("argv", [["-oi"], ["-i"], ["-ti"], ["-oi", "-odi"]])
def test_dotOptions(argv):
    assert S.parseArguments(argv + ["a@x"]).dotEnds is False


def test_dotEndsByDefault():
    assert S.parseArguments(["a@x"]).dotEnds is True


def test_attachedArgumentsAndClusters():
    o = S.parseArguments(["-fbob@example.org", "-tiFAl", "a@x"])
    assert (o.sender, o.extract, o.dotEnds, o.fullName) == ("bob@example.org", True, False, "Al")
    assert S.parseArguments(["-f<>", "a@x"]).sender == "<>"
    assert S.parseArguments(["-r", "c@d", "a@x"]).sender == "c@d"


def test_configLongOption():
    assert S.parseArguments(["--config", "f.ini", "a@x"]).config == "f.ini"
    assert S.parseArguments(["--config=g.ini", "a@x"]).config == "g.ini"


def test_optionsStopAtTheFirstRecipient():
    assert S.parseArguments(["a@x", "-f", "b@y"]).recipients == ["a@x", "-f", "b@y"]
    assert S.parseArguments(["--", "-weird@x"]).recipients == ["-weird@x"]


@pytest.mark.parametrize("argv", [
    ["-odi"], ["-odb"], ["-oem"], ["-om"], ["-o7"], ["-v"], ["-U"], ["-B", "8BITMIME"], ["-N", "never"],
    ["-R", "hdrs"], ["-V", "envid-1"], ["-Am"], ["-Ac"], ["-c"], ["-e", "x"], ["-G"], ["-h", "17"], ["-L", "lbl"],
    ["-m"], ["-O", "x=y"], ["-p", "esmtp"], ["-x"], ["-bm"], ["-oAfile"],
])
def test_harmlessOptionsAreAccepted(argv):
    o = S.parseArguments(argv + ["a@x"])
    assert o.mode == "enqueue" and o.recipients == ["a@x"]


@pytest.mark.parametrize("argv, mode", [
    (["-bs"], "stand-alone"), (["-bp"], "mailq"), (["-q"], "flush"), (["-bi"], "newaliases"), (["-I"], "newaliases"),
    (["-bh"], "ignore"), (["-bH"], "ignore"), (["-q30m"], "ignore"), (["-h"], "help"), (["--help"], "help"),
])
def test_modes(argv, mode):
    assert S.parseArguments(argv).mode == mode


@pytest.mark.parametrize("argv, text", [
    (["-bd"], "-bd is not supported"),
    (["-bv", "a@x"], "-bv is not supported"),
    (["-n", "a@x"], "-n option not supported"),
    (["-XV", "a@x"], "VERP"),
    (["-V", "+=", "a@x"], "VERP"),
    (["-V+=", "a@x"], "VERP"),
    (["-Xlog", "a@x"], "unsupported: -Xl"),
    (["-qRexample.org"], "-qR is not supported"),
    (["-qIABC"], "-qI is not supported"),
    (["-qX"], "-qX is not implemented"),
    (["-B", "binary", "a@x"], "-B option needs 8BITMIME or 7BIT"),
    (["-Z", "a@x"], "unknown option -Z"),
    (["-f"], "option -f requires an argument"),
    (["--config"], "--config requires an argument"),
    (["-t", "-bs"], "-t can be used only in delivery mode"),
    (["-bp", "a@x"], "display queue mode requires no recipient"),
    (["-q", "a@x"], "flush queue mode requires no recipient"),
    (["-bs", "a@x"], "stand-alone mode requires no recipient"),
])
def test_refusedOptions(argv, text):
    with pytest.raises(S.Exit) as e:
        S.parseArguments(argv)
    assert e.value.status == 64 and text in e.value.message


def test_dsnOptions():
    o = S.parseArguments(["-N", "success, failure", "-V", "env-1", "-B", "8BITMIME", "a@x"])
    assert (o.notify, o.envid, o.body) == (("SUCCESS", "FAILURE"), "env-1", "8BITMIME")
    assert S.parseArguments(["-N", "NEVER", "a@x"]).notify == ("NEVER",)
    o = S.parseArguments(["-N", "never,success", "-V", "x" * 101, "a@x"])
    assert o.notify == () and o.envid is None
    assert o.warnings == ["bad -N option value -- ignored", "too long -V option value -- ignored"]
    assert S.parseArguments(["-V", "a b\x01", "a@x"]).warnings == ["bad syntax in -V option value -- ignored"]


def test_usage(capsys):
    assert S.main(["--help"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("usage: mta-sendmail") and err == ""
    for option in ("-t", "-i, -oi", "-f SENDER", "-F FULLNAME", "-bs", "-bp", "-q", "-C FILE"):
        assert option in out


def test_noRecipientsIsAUsageError(config, tmp_path):
    status, err = run([], config, tmp_path, b"Subject: x\n\nhi\n")
    assert status == 64
    assert err == ("mta-sendmail: fatal: Recipient addresses must be specified on the command line "
                   "or via the -t option\n")
    assert maildrop(tmp_path) == []


def test_ignoredModesExitZero(tmp_path):
    for argv in (["-bi"], ["-I"], ["-bh"], ["-q1h"]):
        assert S.main(argv, stdin=io.BytesIO(b""), stderr=io.StringIO()) == 0


def test_mailqAndFlushRunTheQueueTool(monkeypatch):
    calls = []
    from mta.cli import queue as cliQueue

    monkeypatch.setattr(cliQueue, "main", lambda argv: calls.append(argv) or 3)
    assert S.main(["-bp"]) == 3
    assert S.main(["-C", "/etc/m.ini", "-q"]) == 3
    assert S.main(["-C", "/etc/m.ini", "-bp"]) == 3
    assert calls == [["list"], ["-c", "/etc/m.ini", "flush"], ["-c", "/etc/m.ini", "list"]]


def test_configurationErrorIsTemporary(tmp_path):
    path = tmp_path / "bad.ini"
    path.write_text("[main]\nmesage_size_limit = 1\n")
    err = io.StringIO()
    assert S.main(["-C", str(path), "a@x"], stdin=io.BytesIO(b"hi\n"), stderr=err) == 75
    assert "mesage_size_limit: unknown parameter" in err.getvalue()
    assert err.getvalue().count("\n") == 1


def test_configDirectoryMeansMtaIni(tmp_path, config):
    (tmp_path / "mta.ini").write_text(f"[main]\nqueue_directory = {tmp_path}/queue\nmyorigin = d.example\n")
    assert S.main(["-C", str(tmp_path), "bob"], stdin=io.BytesIO(b"hi\n"), stderr=io.StringIO()) == 0
    envelope, _ = deposited(tmp_path)
    assert envelope.recipients[0].address == "bob@d.example"


# -- address lists ----------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("a@x.example", ["a@x.example"]),
    ("a@x, b@y", ["a@x", "b@y"]),
    ('"Bob B." <bob@example.org>, carol (the cook) , <dave@y>', ["bob@example.org", "carol", "dave@y"]),
    ("Team: a@x, Bob <b@y>; c@z", ["a@x", "b@y", "c@z"]),
    ("undisclosed-recipients:;", []),
    ("<>", []),
    ("", []),
    ('"john smith"@example.org', ['"john smith"@example.org']),
    ("<@relay.example,@r2.example:u@example.org>", ["u@example.org"]),
    ("u @ example . org", ["u@example.org"]),
    ("u@[192.0.2.1]", ["u@[192.0.2.1]"]),
    ("Name (comment, with: specials; ) <n@x>", ["n@x"]),
    ("=?utf-8?q?J=C3=B6rg?= <j@x>,\r\n\tk@y", ["j@x", "k@y"]),
])
def test_extractAddresses(text, expected):
    assert S.extractAddresses(text) == expected


def test_canonicalAddress():
    assert str(S.canonicalAddress("bob", ORIGIN, "recipient")) == f"bob@{ORIGIN}"
    assert str(S.canonicalAddress("Bob@Example.ORG", ORIGIN, "recipient")) == "Bob@example.org"
    assert str(S.canonicalAddress('"a@b"@x.example', ORIGIN, "recipient")) == '"a@b"@x.example'
    assert str(S.canonicalAddress('"john smith"', ORIGIN, "recipient")) == f'"john smith"@{ORIGIN}'
    for bad in ("a@", "a..b@x", "a@-x", "a@x y", "a@b_c"):
        with pytest.raises(S.Exit) as e:
            S.canonicalAddress(bad, ORIGIN, "recipient")
        assert e.value.status == 64 and "bad recipient address" in e.value.message


def test_resolveSender():
    assert str(S.resolveSender(None, ORIGIN, 0)) == f"alice@{ORIGIN}"
    assert S.resolveSender("<>", ORIGIN, 0).isNull
    assert S.resolveSender("", ORIGIN, 0).isNull
    assert str(S.resolveSender("Bob <bob@example.org>", ORIGIN, 0)) == "bob@example.org"
    assert str(S.resolveSender("bob", ORIGIN, 0)) == f"bob@{ORIGIN}"
    with pytest.raises(S.Exit):
        S.resolveSender("a@x, b@y", ORIGIN, 0)


def test_fromHeader():
    sender = S.canonicalAddress("al@x.example", ORIGIN, "sender")
    assert S.fromHeader("Al Ice", sender) == b"From: Al Ice <al@x.example>\r\n"
    assert S.fromHeader('Al "The" I. Ce', sender) == b'From: "Al \\"The\\" I. Ce" <al@x.example>\r\n'
    assert S.fromHeader("J\u00f6rg", sender) == b"From: =?utf-8?b?SsO2cmc=?= <al@x.example>\r\n"
    assert S.fromHeader("Evil\r\nBcc: x@y", sender) == b'From: "Evil Bcc: x@y" <al@x.example>\r\n'
    assert S.fromHeader("", sender) is None
    assert S.fromHeader(None, sender) is None
    assert S.fromHeader("Al", S.resolveSender("<>", ORIGIN, 0)) is None


def test_defaultFullNameFromEnvironmentAndPasswordFile(monkeypatch):
    monkeypatch.undo()  # the real defaultFullName
    import pwd

    class Entry:
        pw_name = "alice"
        pw_gecos = "& Liddell,Room 1,,"

    monkeypatch.setattr(pwd, "getpwuid", lambda uid: Entry)
    monkeypatch.delenv("NAME", raising=False)
    assert S.defaultFullName(1000) == "Alice Liddell"
    monkeypatch.setenv("NAME", "Queen of Hearts")
    assert S.defaultFullName(1000) == "Queen of Hearts"


# -- reading the message ------------------------------------------------------------------


def read(message, chunks=None, **kwargs):
    out = []
    reader = S.MessageReader(out.append, **kwargs)
    for chunk in chunks(message) if chunks else [message]:
        reader.feed(chunk)
        if reader.done or reader.tooBig:
            break
    reader.finish()
    return b"".join(out), reader


def bytewise(data):
    return [data[i:i + 1] for i in range(len(data))]


@pytest.mark.parametrize("chunks", [None, bytewise])
def test_lineEndsBecomeCRLF(chunks):
    content, _ = read(b"Subject: a\nX: b\r\n\nline1\r\nline2\r\r\nbare\rcr\nlast", chunks)
    assert content == b"Subject: a\r\nX: b\r\n\r\nline1\r\nline2\r\nbare\rcr\r\nlast\r\n"


@pytest.mark.parametrize("chunks", [None, bytewise])
def test_loneDotEndsTheInput(chunks):
    content, reader = read(b"Subject: a\n\nbody\n..\n. \n.\nnot read\n", chunks)
    assert reader.done
    assert content == b"Subject: a\r\n\r\nbody\r\n..\r\n. \r\n"
    content, _ = read(b"Subject: a\n\nbody\r\n.\r\nnot read\r\n", chunks)
    assert content == b"Subject: a\r\n\r\nbody\r\n"


@pytest.mark.parametrize("chunks", [None, bytewise])
def test_minusIKeepsTheDot(chunks):
    content, reader = read(b"Subject: a\n\nbody\n.\nmore\n", chunks, dotEnds=False)
    assert not reader.done
    assert content == b"Subject: a\r\n\r\nbody\r\n.\r\nmore\r\n"


def test_dotAtTheStartEndsAtOnce():
    content, reader = read(b".\nSubject: a\n")
    assert reader.done and content == b""


def test_leadingFromLinesAreDropped():
    content, _ = read(b"From alice Sat Nov 21 08:00:00 2026\n>From x\nSubject: a\n\nFrom here\n")
    assert content == b"Subject: a\r\n\r\nFrom here\r\n"


def test_longLinesArePassedOnInPieces():
    line = b"x" * (S.PIECE * 3 + 17)
    message = b"Subject: a\n\n" + line + b"\r\n.\n" + line + b"\n"
    content, reader = read(message, lambda m: [m[i:i + 4096] for i in range(0, len(m), 4096)])
    assert reader.done
    assert content == b"Subject: a\r\n\r\n" + line + b"\r\n"


def test_crlfSplitAcrossALongPiece():
    head = b"Subject: a\n\n" + b"y" * (S.PIECE + 5) + b"\r"
    content, _ = read(b"", lambda m: [head, b"\nnext\n"])
    assert content == b"Subject: a\r\n\r\n" + b"y" * (S.PIECE + 5) + b"\r\nnext\r\n"


def test_aDotPieceOfALongLineDoesNotEndTheInput():
    content, reader = read(b"", lambda m: [b"Subject: a\n\n" + b"z" * (S.PIECE + 1), b".\n", b"tail\n"])
    assert not reader.done
    assert content.endswith(b"z.\r\ntail\r\n")


def test_sizeLimit():
    _, reader = read(b"Subject: a\n\n" + b"x" * 100 + b"\n", sizeLimit=100)
    assert reader.tooBig
    content, reader = read(b"Subject: a\n\n" + b"x" * 10 + b"\n", sizeLimit=26)
    assert not reader.tooBig and len(content) == 26


def test_eightBitContentIsNoticed():
    assert read(b"Subject: a\n\nplain\n")[1].eightBit is False
    assert read(b"Subject: a\n\ncaf\xc3\xa9\n")[1].eightBit is True


TO_CC_BCC = (
    b"From: a@x\n"
    b"To: Bob <bob@example.org>,\n"
    b"  carol@example.org\n"
    b"Cc: Team: dave@example.org,\n"
    b"\terin@example.org;, frank\n"
    b"Bcc: hidden@example.org,\n"
    b" second.hidden@example.org\n"
    b"Subject: hello\n"
    b"\n"
    b"To: body@example.org\n"
)


@pytest.mark.parametrize("chunks", [None, bytewise])
def test_extractRecipientsFromHeaders(chunks):
    content, reader = read(TO_CC_BCC, chunks, extract=True)
    assert reader.headerRecipients() == [
        "bob@example.org", "carol@example.org", "dave@example.org", "erin@example.org", "frank",
        "hidden@example.org", "second.hidden@example.org",
    ]
    assert b"Bcc" not in content and b"hidden" not in content
    assert content == (
        b"From: a@x\r\nTo: Bob <bob@example.org>,\r\n  carol@example.org\r\n"
        b"Cc: Team: dave@example.org,\r\n\terin@example.org;, frank\r\nSubject: hello\r\n\r\n"
        b"To: body@example.org\r\n"
    )


def test_withoutMinusTBccStays():
    content, reader = read(TO_CC_BCC)
    assert b"Bcc: hidden@example.org,\r\n second.hidden@example.org\r\n" in content
    assert reader.headerRecipients() == []


def test_resentHeadersWin():
    message = (b"To: old@example.org\nResent-To: new@example.org\nCc: old2@example.org\n"
               b"Resent-Bcc: hidden@example.org\nSubject: fwd\n\nbody\n")
    content, reader = read(message, extract=True)
    assert reader.headerRecipients() == ["new@example.org", "hidden@example.org"]
    assert b"Resent-Bcc" not in content and b"To: old@example.org\r\n" in content


def test_headerSectionEndsAtANonHeaderLine():
    content, reader = read(b"To: a@x\nnot a header\nBcc: b@y\n", extract=True)
    assert reader.headerRecipients() == ["a@x"]
    assert content == b"To: a@x\r\nnot a header\r\nBcc: b@y\r\n"


def test_fromIsAddedWhenMissing():
    add = b"From: Al <al@x>\r\n"
    content, _ = read(b"Subject: a\n\nbody\n", addFrom=add)
    assert content == b"Subject: a\r\nFrom: Al <al@x>\r\n\r\nbody\r\n"
    content, _ = read(b"Subject: a\nFROM: me@y\n\nbody\n", addFrom=add)
    assert content == b"Subject: a\r\nFROM: me@y\r\n\r\nbody\r\n"
    content, _ = read(b"Subject: a\n", addFrom=add)
    assert content == b"Subject: a\r\nFrom: Al <al@x>\r\n"
    content, _ = read(b" indented first line\n", addFrom=add)  # never a continuation of our From:
    assert content == b"From: Al <al@x>\r\n\r\n indented first line\r\n"
    content, _ = read(b"", addFrom=add)
    assert content == b"From: Al <al@x>\r\n"


# -- submission ---------------------------------------------------------------------------


def test_depositIsACompleteQueueFile(config, tmp_path):
    status, err = run(["bob@example.org", "carol"], config, tmp_path, b"Subject: hi\n\nhello\n")
    assert (status, err) == (0, "")
    envelope, content = deposited(tmp_path)
    assert content == b"Subject: hi\r\n\r\nhello\r\n"
    assert envelope.sender == f"alice@{ORIGIN}"
    assert [r.address for r in envelope.recipients] == ["bob@example.org", f"carol@{ORIGIN}"]
    assert (envelope.protocol, envelope.client_name, envelope.client_address, envelope.helo) == (
        "local", "localhost", "", "")
    assert envelope.body == "7BIT" and not envelope.smtputf8 and envelope.size == len(content)
    drop = tmp_path / "queue" / "maildrop"
    assert stat.S_IMODE(drop.stat().st_mode) == 0o700
    name = maildrop(tmp_path)[0]
    assert stat.S_IMODE((drop / name).stat().st_mode) == 0o600


def test_depositMode(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)  # the daemon's user, not root
    assert S.depositMode(str(theirs), euid=0) == 0o644
    assert S.depositMode("/", euid=0) == 0o600  # root's own queue
    assert S.depositMode(str(theirs), euid=1000) == 0o600
    assert S.depositMode(str(tmp_path / "gone"), euid=0) == 0o600


def test_rootSubmitsSoThatTheDaemonsUserCanRead(config, tmp_path, monkeypatch):
    """As root (a root cron job) into a queue owned by the daemon's user: 0644 whatever the umask."""
    drop = tmp_path / "queue" / "maildrop"
    if os.geteuid() == 0:
        os.chown(drop, 65534, 65534)
    monkeypatch.setattr(S.os, "geteuid", lambda: 0)
    old = os.umask(0o077)
    try:
        status, err = run(["bob@example.org"], config, tmp_path, b"Subject: cron\n\nroot's mail\n")
    finally:
        os.umask(old)
    assert (status, err) == (0, "")
    [name] = maildrop(tmp_path)
    assert stat.S_IMODE((drop / name).stat().st_mode) == 0o644
    assert stat.S_IMODE(drop.stat().st_mode) == 0o700  # what keeps everyone else out


# -- finding the configuration and the queue; never creating a queue ------------------------


class Untouched:
    """A standard input that must not be read."""

    def read1(self, n):
        raise AssertionError("standard input was read")

    read = read1


def sendmailIn(directory, argv, monkeypatch, stdin=None):
    """main() run from the working directory C{directory}; (status, stderr)."""
    monkeypatch.chdir(directory)
    err = io.StringIO()
    status = S.main(argv, stdin=stdin or Untouched(), stdout=io.StringIO(), stderr=err)
    return status, err.getvalue()


def test_noQueueIsEverCreated(tmp_path, monkeypatch):
    """An absolute queue_directory whose maildrop/ is missing: 75 (start the daemon), nothing created."""
    (tmp_path / "ini").write_text(f"[main]\nqueue_directory = {tmp_path}/spool\n")
    status, err = sendmailIn(tmp_path, ["-C", str(tmp_path / "ini"), "bob@example.org"], monkeypatch)
    assert (status, err) == (75, f"mta-sendmail: fatal: there is no queue: {tmp_path}/spool/maildrop does not exist "
                                 f"(queue_directory of {tmp_path}/ini (from the command line)): mta has not been "
                                 "started on this queue yet; the message was not queued\n")
    assert not (tmp_path / "spool").exists()


def test_aQueueDirectoryWithoutMaildropIsNotCompleted(tmp_path, monkeypatch):
    (tmp_path / "spool").mkdir()
    (tmp_path / "ini").write_text(f"[main]\nqueue_directory = {tmp_path}/spool\n")
    status, err = sendmailIn(tmp_path, ["-C", str(tmp_path / "ini"), "bob@example.org"], monkeypatch)
    assert status == 75 and "there is no queue" in err
    assert os.listdir(tmp_path / "spool") == []


def test_embeddedDefaultsElsewhereAreAConfigurationError(tmp_path, monkeypatch):
    """No -C, no $MTA_CONFIG, no /etc/mta/mta.ini, and cwd has no var/spool/mta: 78, nothing created."""
    (tmp_path / "cron").mkdir()
    status, err = sendmailIn(tmp_path / "cron", ["bob@example.org"], monkeypatch)
    assert status == 78
    assert err == (f"mta-sendmail: fatal: there is no queue: {tmp_path}/cron/var/spool/mta/maildrop does not exist; "
                   f"no configuration file was found (no -C, $MTA_CONFIG or {tmp_path}/no-such-default.ini) and the "
                   f"embedded default queue_directory var/spool/mta is relative to the current directory {tmp_path}/cron; "
                   "the message was not queued\n")
    assert os.listdir(tmp_path / "cron") == []


def test_embeddedDefaultsWhereTheDaemonRuns(tmp_path, monkeypatch):
    """The Quick start: twistd -n mta made ./var/spool/mta here; mta-sendmail run here finds it."""
    (tmp_path / "var" / "spool" / "mta" / "maildrop").mkdir(parents=True, mode=0o700)
    status, err = sendmailIn(tmp_path, ["bob@example.org"], monkeypatch, stdin=io.BytesIO(b"hi\n"))
    assert (status, err) == (0, "")
    assert len(os.listdir(tmp_path / "var" / "spool" / "mta" / "maildrop")) == 1


def test_aRelativeQueueDirectoryFromAFile(tmp_path, monkeypatch):
    (tmp_path / "ini").write_text("[main]\nqueue_directory = spool\n")
    (tmp_path / "elsewhere").mkdir()
    status, err = sendmailIn(tmp_path / "elsewhere", ["-C", str(tmp_path / "ini"), "bob@example.org"], monkeypatch)
    assert status == 78
    assert err == (f"mta-sendmail: fatal: there is no queue: {tmp_path}/elsewhere/spool/maildrop does not exist; "
                   f"queue_directory spool in {tmp_path}/ini (from the command line) is relative to the current "
                   f"directory {tmp_path}/elsewhere: set an absolute path; the message was not queued\n")
    assert os.listdir(tmp_path / "elsewhere") == []


def test_theEnvironmentNamesTheConfiguration(tmp_path, monkeypatch):
    (tmp_path / "env.ini").write_text(f"[main]\nqueue_directory = {tmp_path}/queue\nmyorigin = env.example\n")
    monkeypatch.setenv("MTA_CONFIG", str(tmp_path / "env.ini"))
    (tmp_path / "work").mkdir()
    status, err = sendmailIn(tmp_path / "work", ["bob"], monkeypatch, stdin=io.BytesIO(b"hi\n"))
    assert (status, err) == (0, "")
    envelope, _ = deposited(tmp_path)
    assert envelope.recipients[0].address == "bob@env.example"


def test_minusCWinsOverTheEnvironment(tmp_path, monkeypatch):
    (tmp_path / "c.ini").write_text(f"[main]\nqueue_directory = {tmp_path}/queue\nmyorigin = c.example\n")
    monkeypatch.setenv("MTA_CONFIG", str(tmp_path / "nonexistent.ini"))
    status, err = sendmailIn(tmp_path, ["-C", str(tmp_path / "c.ini"), "bob"], monkeypatch, stdin=io.BytesIO(b"hi\n"))
    assert (status, err) == (0, "")
    assert deposited(tmp_path)[0].recipients[0].address == "bob@c.example"


def test_theDefaultLocation(tmp_path, monkeypatch):
    (tmp_path / "etc-mta.ini").write_text(f"[main]\nqueue_directory = {tmp_path}/queue\nmyorigin = etc.example\n")
    monkeypatch.setattr("mta.config.loader.DEFAULT_CONFIG", str(tmp_path / "etc-mta.ini"))
    (tmp_path / "work").mkdir()
    status, err = sendmailIn(tmp_path / "work", ["bob"], monkeypatch, stdin=io.BytesIO(b"hi\n"))
    assert (status, err) == (0, "")
    assert deposited(tmp_path)[0].recipients[0].address == "bob@etc.example"


@pytest.mark.parametrize("where", ["option", "environment"])
def test_aNamedFileThatDoesNotExist(tmp_path, monkeypatch, where):
    missing = str(tmp_path / "missing.ini")
    argv = ["-C", missing, "bob@example.org"] if where == "option" else ["bob@example.org"]
    if where == "environment":
        monkeypatch.setenv("MTA_CONFIG", missing)
    status, err = sendmailIn(tmp_path, argv, monkeypatch)
    how = "on the command line" if where == "option" else "by $MTA_CONFIG"
    assert (status, err) == (78, f"mta-sendmail: fatal: {missing}: configuration file not found (named {how}); "
                                 "the message was not queued\n")


def test_senderOptionsAndFullName(config, tmp_path, monkeypatch):
    assert run(["-f", "<>", "-F", "Robot", "a@x.example"], config, tmp_path, b"Subject: n\n\nb\n")[0] == 0
    envelope, content = deposited(tmp_path)
    assert envelope.sender == "" and b"From:" not in content  # pickup's cleanup adds From: MAILER-DAEMON
    os.unlink(tmp_path / "queue" / "maildrop" / maildrop(tmp_path)[0])

    assert run(["-f", "Bob <bob@example.org>", "-F", "Bob Dobbs", "a@x.example"], config, tmp_path,
               b"Subject: n\n\nb\n")[0] == 0
    envelope, content = deposited(tmp_path)
    assert envelope.sender == "bob@example.org"
    assert content == b"Subject: n\r\nFrom: Bob Dobbs <bob@example.org>\r\n\r\nb\r\n"
    os.unlink(tmp_path / "queue" / "maildrop" / maildrop(tmp_path)[0])

    monkeypatch.setattr(S.addresses, "defaultFullName", lambda uid: "Alice Liddell")
    assert run(["a@x.example"], config, tmp_path, b"Subject: n\n\nb\n")[0] == 0
    assert deposited(tmp_path)[1] == f"Subject: n\r\nFrom: Alice Liddell <alice@{ORIGIN}>\r\n\r\nb\r\n".encode()


def test_minusT(config, tmp_path):
    status, err = run(["-t", "extra@example.net", "bob@example.org"], config, tmp_path, TO_CC_BCC)
    assert (status, err) == (0, "")
    envelope, content = deposited(tmp_path)
    assert [r.address for r in envelope.recipients] == [
        "extra@example.net", "bob@example.org", "carol@example.org", "dave@example.org", "erin@example.org",
        f"frank@{ORIGIN}", "hidden@example.org", "second.hidden@example.org",
    ]  # duplicates dropped, bare names get $myorigin
    assert b"hidden" not in content


def test_minusTWithoutRecipients(config, tmp_path):
    status, err = run(["-t"], config, tmp_path, b"Subject: nobody\n\nhi\n")
    assert status == 64 and err == "mta-sendmail: fatal: No recipient addresses found in message header\n"
    assert os.listdir(tmp_path / "queue" / "maildrop") == []


@pytest.mark.parametrize("argv, message, text", [
    (["bob@"], b"hi\n", "bad recipient address 'bob@'"),
    (["a..b@example.org"], b"hi\n", "bad recipient address"),
    (["-f", "x@@y", "a@x.example"], b"hi\n", "bad sender address"),
    (["-t"], b"To: ok@example.org, broken@exa mple.org\n\nhi\n", "bad recipient address"),
    ([","], b"hi\n", "no address in it"),
])
def test_badAddresses(config, tmp_path, argv, message, text):
    status, err = run(argv, config, tmp_path, message)
    assert status == 64
    assert err.startswith("mta-sendmail: fatal: ") and text in err and err.count("\n") == 1
    drop = tmp_path / "queue" / "maildrop"
    assert not drop.exists() or os.listdir(drop) == []


def test_tooBig(config, tmp_path):
    status, err = run(["a@x.example"], config, tmp_path, b"Subject: big\n\n" + b"x" * 200000 + b"\n")
    assert status == 75
    assert "message file too big" in err and err.count("\n") == 1
    assert os.listdir(tmp_path / "queue" / "maildrop") == []


def test_dsnAndBodyInTheEnvelope(config, tmp_path):
    assert run(["-N", "success,delay", "-V", "ENV-7", "a@x.example"], config, tmp_path, b"S: 1\n\ncaf\xc3\xa9\n")[0] == 0
    envelope, _ = deposited(tmp_path)
    assert envelope.recipients[0].notify == ("SUCCESS", "DELAY")
    assert envelope.envid == "ENV-7" and envelope.body == "8BITMIME" and not envelope.smtputf8


def test_utf8AddressesAskForSmtputf8(config, tmp_path):
    assert run(["j\u00f6rg@example.org"], config, tmp_path, b"hi\n")[0] == 0
    envelope, _ = deposited(tmp_path)
    assert envelope.smtputf8 and envelope.recipients[0].address == "j\u00f6rg@example.org"


def test_inputReadErrorIsADataError(config, tmp_path):
    class Broken:
        def read1(self, n):
            raise OSError(errno.EIO, "Input/output error")

    err = io.StringIO()
    path = tmp_path / "m.ini"
    path.write_text(f"[main]\nqueue_directory = {tmp_path}/queue\n")
    assert S.main(["-C", str(path), "a@x.example"], stdin=Broken(), stderr=err) == 65
    assert "error reading input: Input/output error" in err.getvalue()
    assert os.listdir(tmp_path / "queue" / "maildrop") == []


def test_aSignalRemovesTheTemporaryFile(config, tmp_path):
    class Killing:
        def read1(self, n):
            os.kill(os.getpid(), signal.SIGTERM)
            return b"never reached\n"

    handler = signal.getsignal(signal.SIGTERM)
    path = tmp_path / "m.ini"
    path.write_text(f"[main]\nqueue_directory = {tmp_path}/queue\n")
    err = io.StringIO()
    assert S.main(["-C", str(path), "a@x.example"], stdin=Killing(), stderr=err) == 75
    assert err.getvalue() == (f"mta-sendmail: fatal: interrupted by signal {int(signal.SIGTERM)}; "
                              "the message was not queued\n")
    assert os.listdir(tmp_path / "queue" / "maildrop") == []
    assert signal.getsignal(signal.SIGTERM) is handler


# -- atomic deposit: failures leave nothing behind ------------------------------------------


class FailingFileSystem(FileSystem):
    def __init__(self, failOn, error=errno.EIO):
        self.failOn = failOn
        self.error = error
        self.calls = []

    def _maybeFail(self, name):
        self.calls.append(name)
        if name == self.failOn:
            raise OSError(self.error, os.strerror(self.error))

    def open(self, path, flags, mode):
        self._maybeFail("open")
        return super().open(path, flags, mode)

    def write(self, fd, data):
        self._maybeFail("write")
        return super().write(fd, data)

    def pwrite(self, fd, data, offset):
        self._maybeFail("pwrite")
        return super().pwrite(fd, data, offset)

    def fsync(self, fd):
        self._maybeFail("fsync")
        super().fsync(fd)

    def rename(self, src, dst):
        self._maybeFail("rename")
        super().rename(src, dst)

    def fsyncDirectory(self, path):
        if path.endswith("maildrop"):
            self._maybeFail("fsyncDirectory")
        super().fsyncDirectory(path)


@pytest.mark.parametrize("failOn, size", [
    (step, size) for step in ("open", "write", "pwrite", "fsync", "rename", "fsyncDirectory") for size in (10, 300000)
    if not (step == "pwrite" and size == 10)  # a small file is written whole, its header included
])
def test_storageFailuresLeaveNothing(config, tmp_path, failOn, size):
    fs = FailingFileSystem(failOn, errno.ENOSPC)
    options = S.parseArguments(["a@x.example"])
    big = load("<t>", f"[main]\nqueue_directory = {tmp_path}/queue\nmessage_size_limit = 0\n")
    with pytest.raises(S.Exit) as e:
        S.submit(options, big, io.BytesIO(b"Subject: x\n\n" + b"y" * size + b"\n"), fs=fs)
    assert e.value.status == 75
    assert "No space left on device" in e.value.message and "not queued" in e.value.message
    assert failOn in fs.calls
    assert os.listdir(tmp_path / "queue" / "maildrop") == []


def test_failureThroughMain(config, tmp_path, monkeypatch):
    monkeypatch.setattr(S.maildrop, "FileSystem", lambda: FailingFileSystem("fsync"))
    status, err = run(["a@x.example"], config, tmp_path, b"hi\n")
    assert status == 75
    assert err == ("mta-sendmail: fatal: cannot store the message: fsync failed: Input/output error; "
                   "the message was not queued\n")
    assert maildrop(tmp_path) == []


def test_maildropThatIsNotADirectory(config, tmp_path):
    (tmp_path / "queue" / "maildrop").rmdir()
    (tmp_path / "queue" / "maildrop").write_text("not a directory")
    status, err = run(["a@x.example"], config, tmp_path, b"hi\n")
    assert (status, err) == (75, f"mta-sendmail: fatal: cannot use {tmp_path}/queue/maildrop: it is not a directory; "
                                 "the message was not queued\n")


def test_maildropThatIsASymbolicLink(config, tmp_path):
    (tmp_path / "queue" / "maildrop").rmdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "queue" / "maildrop")
    status, err = run(["a@x.example"], config, tmp_path, b"hi\n")
    assert status == 75 and "it is not a directory" in err
    assert os.listdir(tmp_path / "elsewhere") == []


def test_noTemporaryFileDuringAFailedRead(config, tmp_path):
    """The temporary file exists while reading (QUEUEID.tmp, never a queue id) and is gone after a failure."""
    seen = []

    class Watching:
        def __init__(self):
            self.chunks = [b"Subject: a\n\n", b"more\n"]

        def read1(self, n):
            seen.append(sorted(os.listdir(tmp_path / "queue" / "maildrop")))
            if self.chunks:
                return self.chunks.pop(0)
            raise OSError(errno.EIO, "gone")

    with pytest.raises(S.Exit):
        S.submit(S.parseArguments(["a@x.example"]), config, Watching())
    assert all(len(names) == 1 and names[0].endswith(".tmp") and not isValidQueueId(names[0]) for names in seen)
    assert maildrop(tmp_path) == []


# -- -bs: the SMTP server over standard input and output ------------------------------------


def standalone(config, tmp_path):
    clock = Clock()
    tables = Tables(clock)
    openTables(config, tables)
    server = S.standaloneServer(config, clock, tables, S.MaildropStore(config["queue_directory"]))
    transport = StringTransport()
    server.makeConnection(transport)
    return server, transport


def test_standaloneSessionDepositsIntoMaildrop(config, tmp_path):
    server, transport = standalone(config, tmp_path)
    # A whole dialogue at once, bare LFs in the commands: a script may do that.
    server.dataReceived(b"EHLO me\nMAIL FROM:<a@b.example>\nRCPT TO:<x@far.example>\nRCPT TO:<y@other.example>\n"
                        b"DATA\n")
    server.dataReceived(b"Subject: bs\r\n\r\nhello\r\n.\r\nQUIT\r\n")
    out = transport.value().decode()
    assert out.startswith("220 mx.test ESMTP mta\r\n")
    assert out.count("250 2.1.5 Ok") == 2  # no relay control in stand-alone mode
    assert "250 2.0.0 Ok: queued as " in out and out.endswith("221 2.0.0 Bye\r\n")
    queueId = out.split("queued as ")[1].split("\r\n")[0]
    assert maildrop(tmp_path) == [queueId]
    envelope, content = deposited(tmp_path)
    assert envelope.sender == "a@b.example"
    assert [r.address for r in envelope.recipients] == ["x@far.example", "y@other.example"]
    assert content.startswith(b"Received: from me (localhost [127.0.0.1])\r\n\tby mx.test (mta) with ESMTP id "
                              + queueId.encode())
    assert b"\r\nSubject: bs\r\n" in content and content.endswith(b"\r\n\r\nhello\r\n")


def test_standaloneStorageFailureIs451(config, tmp_path, monkeypatch):
    monkeypatch.setattr(S.maildrop, "FileSystem", lambda: FailingFileSystem("rename"))
    server, transport = standalone(config, tmp_path)
    server.dataReceived(b"HELO me\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@far.example>\r\nDATA\r\n")
    server.dataReceived(b"Subject: bs\r\n\r\nhello\r\n.\r\n")
    assert transport.value().decode().endswith("451 4.3.0 Error: queue file write error\r\n")
    assert maildrop(tmp_path) == []


def test_standaloneParametersKeepTheRest(config):
    params = S.standaloneParameters(config.main)
    assert params["smtpd_recipient_restrictions"] == ()
    assert params["smtpd_forbid_bare_newline"] == "normalize"
    assert params["message_size_limit"] == 100000 and params["myhostname"] == "mx.test"


# -- control characters in arguments (refused before any parsing) ---------------------------


@pytest.mark.parametrize("argv, number, shown", [
    # The injection: the address-list parser would have made x@y a second envelope address.
    (["-f", "a@b\r\nRCPT TO:<x@y>", "bob@example.org"], 2, "a@b\\r\\nRCPT TO:<x@y>"),
    (["-fa@b\nx@y", "bob@example.org"], 1, "-fa@b\\nx@y"),
    (["bob@example.org", "carol@example.org\r\nDATA"], 2, "carol@example.org\\r\\nDATA"),
    (["-F", "Eve\r\nBcc: all@example.org", "bob@example.org"], 2, "Eve\\r\\nBcc: all@example.org"),
    (["bob@example.org\x00x@y"], 1, "bob@example.org\\x00x@y"),
    (["-t", "-V", "env\x7f"], 3, "env\\x7f"),
    (["-C", "/tmp/x\n.ini", "bob@example.org"], 2, "/tmp/x\\n.ini"),
    (["-N", "success\tfailure", "bob@example.org"], 2, "success\\tfailure"),
    (["bob@example.org\x85"], 1, "bob@example.org\\x85"),  # C1 NEL
    (["bob@example.org\u2028x@y"], 1, "bob@example.org\\u2028x@y"),
    (["-bs", "\x1b[2J"], 2, "\\x1b[2J"),  # in any argument, whatever the mode
])
def test_controlCharactersInAnyArgumentAreRefused(tmp_path, argv, number, shown):
    err = io.StringIO()
    status = S.main(argv, stdin=Untouched(), stdout=io.StringIO(), stderr=err)
    character = next(c for c in "".join(argv) if ord(c) < 32 or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029")
    escaped = character.encode("unicode_escape").decode("ascii")
    assert (status, err.getvalue()) == (
        64, f"mta-sendmail: fatal: argument {number} ({shown}) contains the control character {escaped}; "
            "refused, nothing was queued\n")
    assert maildrop(tmp_path) == []


def test_argumentsThatAreNotUtf8AreRefused(tmp_path):
    arg = os.fsdecode(b"bob@example.org\xff")  # as Python decodes such bytes in sys.argv
    err = io.StringIO()
    assert S.main([arg], stdin=Untouched(), stdout=io.StringIO(), stderr=err) == 64
    assert err.getvalue() == ("mta-sendmail: fatal: argument 1 (bob@example.org\\udcff) contains bytes that are "
                              "not UTF-8; refused, nothing was queued\n")
    assert maildrop(tmp_path) == []


def test_theCheckComesBeforeAnyParsing():
    """A bad character after an option that would stop the parse (--help, -bi) is still refused."""
    for argv in (["-bi", "x\ry"], ["-q", "\n"], ["--", "a\nb"]):
        assert S.main(argv, stdin=Untouched(), stdout=io.StringIO(), stderr=io.StringIO()) == 64


def test_longArgumentsAreShortenedInTheMessage():
    err = io.StringIO()
    assert S.main(["x" * 100 + "\n"], stdin=Untouched(), stdout=io.StringIO(), stderr=err) == 64
    assert f"argument 1 ({'x' * 60}...) contains the control character \\n" in err.getvalue()


# -- invoked as mailq or newaliases ---------------------------------------------------------


def test_invokedAsMailq(monkeypatch):
    calls = []
    monkeypatch.setattr(S, "_queueTool", lambda options, command: calls.append((options.mode, command)) or 0)
    assert S.main([], program="/usr/bin/mailq", stdout=io.StringIO(), stderr=io.StringIO()) == 0
    assert calls == [("mailq", "list")]


def test_invokedAsMailqWithARecipientIsRefused():
    err = io.StringIO()
    assert S.main(["bob@example.org"], program="mailq", stdout=io.StringIO(), stderr=err) == 64
    assert err.getvalue() == "mta-sendmail: fatal: display queue mode requires no recipient\n"


def test_invokedAsNewaliases():
    assert S.main([], program="/usr/bin/newaliases", stdin=Untouched(), stdout=io.StringIO(),
                  stderr=io.StringIO()) == 0


def test_otherNamesAreSendmail(tmp_path):
    err = io.StringIO()
    status = S.main(["-C", str(tmp_path / "m.ini"), "bob@example.org"], program="/usr/sbin/sendmail",
                    stdin=io.BytesIO(b"hi\n"), stdout=io.StringIO(), stderr=err)
    assert status == 78 and "configuration file not found" in err.getvalue()
