"""Scripted dialogs: commands, replies, pipelining, limits, smuggling."""

import pytest
from twisted.internet.task import Clock

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, replyCodes


@pytest.fixture
def store():
    return FakeQueueStore()


@pytest.fixture
def factory(store):
    return serverFactory(store=store)


def test_greetingAndEhlo(factory):
    d = Dialog(factory)
    assert d.banner == "220 mx.test ESMTP mta\r\n"
    out = d.send("EHLO client.example\r\n")
    assert out.splitlines() == [
        "250-mx.test",
        "250-PIPELINING",
        "250-SIZE 10240000",
        "250-VRFY",
        "250-ETRN",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250-BINARYMIME",
        "250-DSN",
        "250-SMTPUTF8",
        "250 CHUNKING",
    ]


def test_helo(factory):
    d = Dialog(factory)
    assert d.send("HELO client.example\r\n") == "250 mx.test\r\n"
    assert d.send("HELO\r\n") == "501 5.5.4 Syntax: HELO hostname\r\n"


def test_fullTransactionIsQueued(factory, store):
    d = Dialog(factory)
    d.send("EHLO c.example\r\n")
    assert d.send("MAIL FROM:<alice@example.org> SIZE=100\r\n") == "250 2.1.0 Ok\r\n"
    assert d.send("RCPT TO:<bob@mx.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@mx.test\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("DATA\r\n") == "354 End data with <CR><LF>.<CR><LF>\r\n"
    assert d.send("Subject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\n") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    message = store.committed[0]
    received, rest = message.content.split(b"\r\n", 1)[0], message.content
    assert received.startswith(b"Received: from c.example (unknown [127.0.0.1])")
    assert b"\tby mx.test (mta) with ESMTP id FAKE0000000001\r\n\tfor <bob@mx.test>;" in rest
    # From a client on this host, cleanup adds the missing headers (Postfix's permit_inet_interfaces).
    assert rest.endswith(
        b"Subject: x\r\nMessage-Id: <FAKE0000000001@mx.test>\r\nDate: Thu,  1 Jan 1970 00:00:00 +0000 (UTC)\r\n"
        b"From: alice@example.org\r\n\r\n.leading dot\r\nbody\r\n"
    )
    env = message.envelope
    assert env.sender == "alice@example.org"
    assert [r.address for r in env.recipients] == ["bob@mx.test"]
    assert env.recipients[0].notify == ("FAILURE", "DELAY")
    assert env.recipients[0].orcpt == "rfc822;bob@mx.test"
    assert env.protocol == "ESMTP" and env.helo == "c.example" and env.client_address == "127.0.0.1"
    assert env.size == len(message.content)
    assert d.send("QUIT\r\n") == "221 2.0.0 Bye\r\n"
    assert d.closed


PIPELINED = (
    "EHLO c.example\r\n"
)
GROUP = (
    "MAIL FROM:<a@example.org>\r\n"
    "RCPT TO:<x@mx.test>\r\n"
    "RCPT TO:<y@elsewhere.example>\r\n"
    "RCPT TO:<z@mx.test>\r\n"
    "DATA\r\n"
)


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-write", "byte-by-byte"])
def test_pipelinedGroupRepliesInOrder(store, bytewise):
    factory = serverFactory("mynetworks = 192.0.2.0/24\n", store=store)
    d = Dialog(factory, peer="198.51.100.7")
    d.send(PIPELINED)
    out = d.send(GROUP, bytewise)
    assert out.splitlines() == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "454 4.7.1 <y@elsewhere.example>: Relay access denied",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert d.send("hi\r\n.\r\nQUIT\r\n", bytewise).splitlines() == ["250 2.0.0 Ok: queued as FAKE0000000001", "221 2.0.0 Bye"]
    assert [r.address for r in store.committed[0].envelope.recipients] == ["x@mx.test", "z@mx.test"]


def test_repliesWaitForSlowCommit(factory, store):
    """A command pipelined behind a slow end-of-data is answered after it."""
    store.holdCommits = True
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert d.send("x\r\n.\r\nNOOP\r\n") == ""
    store.release()
    assert d.read() == "250 2.0.0 Ok: queued as FAKE0000000001\r\n250 2.0.0 Ok\r\n"


def test_commitFailureGives451(factory, store):
    store.failCommits = True
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert d.send("x\r\n.\r\n") == "451 4.3.0 Error: queue file write error\r\n"
    assert store.committed == []
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"


SMUGGLED = [
    b"x\r\n\n.\n\r\nMAIL FROM:<evil@example.org>\r\n",  # <LF>.<LF>
    b"x\r\n\n.\r\nMAIL FROM:<evil@example.org>\r\n",  # <LF>.<CR><LF>
    b"x\r\n\r.\r\nMAIL FROM:<evil@example.org>\r\n",  # <CR>.<CR><LF>
    b"x\n.\r\nMAIL FROM:<evil@example.org>\r\n",
    b"x\r\n.\nMAIL FROM:<evil@example.org>\r\n",  # .<LF>
    b"x\r\n.\rMAIL FROM:<evil@example.org>\r\n",
]


@pytest.mark.parametrize("smuggled", SMUGGLED)
def test_smugglingIsRejectedAndClosed(factory, store, smuggled):
    d = Dialog(factory, peer="198.51.100.7")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    out = d.send(smuggled + b".\r\n")
    assert out == "550 5.5.2 mx.test Error: bare <LF> received\r\n"
    assert d.closed
    assert store.committed == []


@pytest.mark.parametrize("smuggled", SMUGGLED)
def test_smugglingFromExcludedClientIsNormalizedIntoOneMessage(factory, store, smuggled):
    """mynetworks is in smtpd_forbid_bare_newline_exclusions: normalize, never a second message."""
    d = Dialog(factory, peer="127.0.0.1")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    out = d.send(smuggled + b".\r\n")
    assert out == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    assert len(store.committed) == 1
    content = store.committed[0].content
    assert b"MAIL FROM:<evil@example.org>\r\n" in content
    assert b"\r\n" in content and b"\n" not in content.replace(b"\r\n", b"")


def test_bareLineFeedInCommand(factory):
    d = Dialog(factory, peer="198.51.100.7")
    assert d.send("EHLO c\n") == "550 5.5.2 mx.test Error: bare <LF> received\r\n"
    assert d.closed


def test_bareLineFeedRejectCode(store):
    factory = serverFactory("smtpd_forbid_bare_newline_reject_code = 521\n", store=store)
    d = Dialog(factory, peer="198.51.100.7")
    assert d.send("EHLO c\n") == "521 5.5.2 mx.test Error: bare <LF> received\r\n"


def test_bareLineFeedAllowedWithNo(store):
    factory = serverFactory("smtpd_forbid_bare_newline = no\n", store=store)
    d = Dialog(factory, peer="198.51.100.7")
    assert d.send("EHLO c\n").startswith("250-mx.test")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    assert d.send("a\n.\nb\r\n.\r\n") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    assert store.committed[0].content.endswith(b"a\n.\nb\r\n")


def test_overlongLineNeverLeavesData(store):
    factory = serverFactory("line_length_limit = 100\n", store=store)
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    # A long line that contains what would be commands if the server left DATA.
    out = d.send("A" * 500 + "\r\nRSET\r\nMAIL FROM:<evil@example.org>\r\n")
    assert out == ""
    out = d.send(".\r\nNOOP\r\n")
    assert replyCodes(out) == [552, 250]
    assert "552 5.3.4 Error: message line longer than 100 bytes" in out
    assert store.committed == []


def test_messageTooBig(store):
    factory = serverFactory("message_size_limit = 1000\n", store=store)
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    assert d.send("MAIL FROM:<a@example.org> SIZE=1001\r\n") == "552 5.3.4 Message size exceeds fixed limit\r\n"
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    out = d.send(("x" * 70 + "\r\n") * 20 + ".\r\n")
    assert out == "552 5.3.4 Error: message file too big\r\n"
    assert store.committed == []


def test_contentBefore354IsForbiddenPipelining(factory, store):
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    out = d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert out.splitlines()[-1] == "554 5.5.0 Error: SMTP protocol synchronization"
    assert d.closed
    assert store.committed == []


@pytest.mark.parametrize("command", ["GET / HTTP/1.0", "POST /x HTTP/1.1", "CONNECT a:25 HTTP/1.0"])
def test_forbiddenCommands(factory, command):
    d = Dialog(factory)
    assert d.send(command + "\r\n") == "221 2.7.0 Error: I can break rules, too. Goodbye.\r\n"
    assert d.closed


def test_sequenceErrors(factory):
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "503 5.5.1 Error: need MAIL command\r\n"
    assert d.send("DATA\r\n") == "503 5.5.1 Error: need MAIL command\r\n"
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "503 5.5.1 Error: nested MAIL command\r\n"
    assert d.send("DATA\r\n") == "503 5.5.1 Error: need RCPT command\r\n"
    assert d.send("RSET\r\n") == "250 2.0.0 Ok\r\n"
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "503 5.5.1 Error: need MAIL command\r\n"
    assert d.send("XYZZY\r\n") == "502 5.5.2 Error: command not recognized\r\n"
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"


def test_badPathsAndParameters(factory):
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    assert d.send("MAIL FROM:<a@@b>\r\n").startswith("501 5.1.7 Bad sender address syntax")
    assert d.send("MAIL FROM:<a@example.org> FOO=BAR\r\n").startswith("555 5.5.4 ")
    assert d.send("MAIL FROM:<>\r\n") == "250 2.1.0 Ok\r\n"
    assert d.send("RCPT TO:<>\r\n").startswith("501 5.1.3 Bad recipient address syntax")
    assert d.send("RCPT TO:<b@mx.test> NOTIFY=SOMETIMES\r\n").startswith("555 5.5.4 ")


def test_esmtpParametersNeedEhlo(factory):
    d = Dialog(factory)
    d.send("HELO c\r\n")
    assert d.send("MAIL FROM:<a@example.org> BODY=8BITMIME\r\n").startswith("555 5.5.4 ")


@pytest.mark.parametrize(
    "recipient",
    [
        "<user%elsewhere.example@mx.test>",
        "<elsewhere.example!user@mx.test>",
        '<"user@elsewhere.example"@mx.test>',
        "<@mx.test:user@elsewhere.example>",
        "<user@[192.0.2.1]>",
        "<user@elsewhere.example>",
        "<user@MX.TEST.evil.example>",
        "<USER@ELSEWHERE.EXAMPLE>",
    ],
)
def test_relayTricksFromUntrustedClient(factory, recipient):
    d = Dialog(factory, peer="198.51.100.7")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    out = d.send(f"RCPT TO:{recipient}\r\n")
    assert out.startswith("454 4.7.1 <") and out.endswith(": Relay access denied\r\n"), out


def test_localDomainFromUntrustedClientIsAccepted(factory):
    d = Dialog(factory, peer="198.51.100.7")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<User@MX.Test>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("RCPT TO:<postmaster>\r\n") == "250 2.1.5 Ok\r\n"


def test_relayDomainsAndSubdomains(store):
    factory = serverFactory("relay_domains = example.net, inline:{ example.com=ok }\n", store=store)
    d = Dialog(factory, peer="198.51.100.7")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<u@example.net>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("RCPT TO:<u@sub.example.net>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("RCPT TO:<u@example.com>\r\n") == "250 2.1.5 Ok\r\n"
    assert d.send("RCPT TO:<u@notexample.net>\r\n").startswith("454 4.7.1 ")


def test_mynetworksMayRelay(factory):
    d = Dialog(factory, peer="127.0.0.1")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<u@elsewhere.example>\r\n") == "250 2.1.5 Ok\r\n"


def test_recipientLimit(store):
    factory = serverFactory("smtpd_recipient_limit = 2\n", store=store)
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    out = d.send("RCPT TO:<a@mx.test>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@mx.test>\r\n")
    assert out.splitlines()[-1] == "452 4.5.3 Error: too many recipients"


def test_bdat(store):
    factory = serverFactory("mynetworks = 192.0.2.0/24\n", store=store)
    d = Dialog(factory, peer="192.0.2.1")  # not this host: no headers added
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\n")
    body = b"Subject: x\r\n\r\n.not stuffed\r\n"
    out = d.send(b"BDAT 12\r\n" + body[:12] + b"BDAT %d LAST\r\n" % (len(body) - 12) + body[12:])
    assert out.splitlines() == ["250 2.0.0 Ok: 12 bytes", "250 2.0.0 Ok: queued as FAKE0000000001"]
    assert store.committed[0].content.endswith(body)


def test_bdatWithoutMailIsConsumedAndRefused(factory, store):
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    out = d.send("BDAT 10 LAST\r\nMAIL FROM:")
    assert out == "503 5.5.1 Error: need MAIL command\r\n"
    assert d.send("NOOP\r\n") == "250 2.0.0 Ok\r\n"


def test_timeout(store):
    clock = Clock()
    factory = serverFactory("smtpd_timeout = 10s\n", clock=clock, store=store)
    d = Dialog(factory)
    clock.advance(9)
    assert not d.closed
    clock.advance(2)
    assert d.read() == "421 4.4.2 mx.test Error: timeout exceeded\r\n"
    assert d.closed


def test_overlongCommandLine(factory):
    """As Postfix: the rest of the line is skipped and answered at its end (more in test_smtpd_input)."""
    d = Dialog(factory)
    assert d.send("NOOP " + "x" * 5000) == ""
    assert d.send("x" * 100 + "\r\nNOOP\r\n") == "500 5.5.2 mx.test Error: command too long\r\n250 2.0.0 Ok\r\n"


def test_vrfyAndHelp(factory):
    d = Dialog(factory)
    assert d.send("VRFY <bob@mx.test>\r\n") == "252 2.0.0 <bob@mx.test>\r\n"
    assert d.send("HELP\r\n").startswith("214 2.0.0 ")


def test_cleanupOnTheWayIn(store):
    """Dropped headers, hop count, and no added headers for a remote client."""
    factory = serverFactory("mynetworks = 192.0.2.0/24\nhopcount_limit = 5\n", store=store)
    d = Dialog(factory, peer="192.0.2.1")
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    out = d.send("Return-Path: <forged@example.org>\r\nBcc: secret@example.org,\r\n  other@example.org\r\nSubject: s\r\n\r\nbody\r\n.\r\n")
    assert out == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    content = store.committed[0].content
    assert content.endswith(b"\tThu,  1 Jan 1970 00:00:00 +0000 (UTC)\r\nSubject: s\r\n\r\nbody\r\n")
    assert b"Return-Path" not in content and b"secret" not in content and b"Message-Id" not in content
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    out = d.send("Received: x\r\n" * 4 + "Subject: loop\r\n\r\nbody\r\n.\r\n")
    assert out == "554 5.4.0 Error: too many hops\r\n"
    assert len(store.committed) == 1


@pytest.mark.parametrize("hello, options, tls, auth, name", [
    ("HELO", "", False, False, "SMTP"),
    ("EHLO", "", False, False, "ESMTP"),
    ("EHLO", " SMTPUTF8", False, False, "UTF8SMTP"),
    ("EHLO", "", True, False, "ESMTPS"),
    ("EHLO", "", True, True, "ESMTPSA"),
    ("EHLO", "", False, True, "ESMTPA"),
    ("EHLO", " SMTPUTF8", True, True, "UTF8SMTPSA"),
    ("HELO", "", True, True, "SMTP"),  # RFC 3848 names ESMTP only, as in Postfix
])
def test_receivedNamesTheProtocolAsRfc3848And6531(store, hello, options, tls, auth, name):
    """The 'with' of our Received header; the envelope and the log keep SMTP or ESMTP, as Postfix's do."""
    from tests.dialogs.harness import MailLog

    d = Dialog(serverFactory(store=store), peer="198.51.100.7")  # a stranger: relaying is refused
    d.send(f"{hello} c.example\r\n")
    d.protocol.session.tlsActive = tls  # what STARTTLS and AUTH will set
    d.protocol.session.saslUsername = "alice" if auth else None
    with MailLog() as log:
        d.send(f"MAIL FROM:<a@example.org>{options}\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<nobody@elsewhere.example>\r\n")
        d.send("DATA\r\n")
        assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    message = store.committed[0]
    assert f"\tby mx.test (mta) with {name} id FAKE0000000001".encode() in message.content.split(b";", 1)[0]
    base = "SMTP" if hello == "HELO" else "ESMTP"
    assert message.envelope.protocol == base
    rejects = log.matching("NOQUEUE: reject: RCPT")
    assert len(rejects) == 1 and f"proto={base} helo=<c.example>" in rejects[0]
    # The next transaction, without SMTPUTF8, is ESMTP again.
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    d.send("x\r\n.\r\n")
    assert f"with {name.replace('UTF8SMTP', 'ESMTP')} id FAKE0000000002".encode() in store.committed[1].content
