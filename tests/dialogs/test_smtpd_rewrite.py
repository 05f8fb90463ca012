"""Address rewriting in the server: envelope paths at MAIL/RCPT, headers by client (mta.rewrite)."""

import pytest
from twisted.internet.defer import fail, succeed
from twisted.logger import capturedLogs

from mta.config.types import TableSpec
from mta.rewrite import HeaderRewriteClients
from mta.tables import TableTemporaryError
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog

OUTSIDE = "198.51.100.7"
BARE = b"From: Charlie Root <root>\r\nTo: alice, bob@example.org\r\nSubject: s\r\n\r\nbody To: root\r\n"


def deliver(main="", peer="127.0.0.1", host=None, sender="<a@example.org>", recipients=("<u@mx.test>",),
            content=BARE, factory=None):
    """One transaction; (the committed FakeMessage, the factory, the replies)."""
    store = FakeQueueStore()
    factory = factory or serverFactory(main, store=store)
    store = factory.store
    d = Dialog(factory, peer=peer, host=host)
    replies = [d.send("EHLO c.example\r\n"), d.send(f"MAIL FROM:{sender}\r\n")]
    replies += [d.send(f"RCPT TO:{r}\r\n") for r in recipients]
    replies.append(d.send("DATA\r\n"))
    replies.append(d.send(content + b".\r\n"))
    assert replies[-1].startswith("250 2.0.0 Ok: queued as "), replies
    return store.committed[-1], factory, replies


def headers(message):
    """The message's header section after our Received: header."""
    lines = message.content.split(b"\r\n\r\n")[0].split(b"\r\n")
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def test_aLoopbackClientGetsItsHeadersQualified():
    """permit_inet_interfaces (the default): mail from this host is local mail."""
    message, _, _ = deliver()
    assert headers(message) == (
        b"From: Charlie Root <root@mx.test>\r\nTo: alice@mx.test, bob@example.org\r\nSubject: s\r\n"
        b"Message-Id: <FAKE0000000001@mx.test>\r\nDate: Thu,  1 Jan 1970 00:00:00 +0000 (UTC)"
    )
    assert message.content.endswith(b"\r\n\r\nbody To: root\r\n")


def test_aRemoteClientsHeadersStayAsTheyAre():
    """Not in local_header_rewrite_clients, no remote_header_rewrite_domain: nothing is touched or added."""
    message, _, _ = deliver(peer=OUTSIDE)
    assert headers(message) == b"From: Charlie Root <root>\r\nTo: alice, bob@example.org\r\nSubject: s"


def test_remoteHeaderRewriteDomain():
    message, _, _ = deliver("remote_header_rewrite_domain = domain.invalid\n", peer=OUTSIDE)
    assert headers(message) == (
        b"From: Charlie Root <root@domain.invalid>\r\nTo: alice@domain.invalid, bob@example.org\r\nSubject: s\r\n"
        b"Message-Id: <FAKE0000000001@mx.test>\r\nDate: Thu,  1 Jan 1970 00:00:00 +0000 (UTC)"
    )
    # a local client still gets $myorigin
    message, _, _ = deliver("remote_header_rewrite_domain = domain.invalid\n")
    assert headers(message).startswith(b"From: Charlie Root <root@mx.test>\r\nTo: alice@mx.test,")


def test_theListenersOwnAddressIsLocal():
    message, _, _ = deliver(peer="192.0.2.25", host="192.0.2.25")
    assert headers(message).startswith(b"From: Charlie Root <root@mx.test>")
    message, _, _ = deliver(peer="192.0.2.26", host="192.0.2.25")
    assert headers(message).startswith(b"From: Charlie Root <root>")


def test_permitMynetworks():
    main = "local_header_rewrite_clients = permit_mynetworks\nmynetworks = 192.0.2.0/24\n"
    message, _, _ = deliver(main, peer="192.0.2.77")
    assert headers(message).startswith(b"From: Charlie Root <root@mx.test>")
    message, _, _ = deliver(main, peer="127.0.0.1")  # loopback, but not in this mynetworks
    assert headers(message).startswith(b"From: Charlie Root <root>\r\n")


def test_checkAddressMap():
    main = f"local_header_rewrite_clients = check_address_map inline:{{ {OUTSIDE}=pop-before-smtp }}\n"
    message, _, _ = deliver(main, peer=OUTSIDE)
    assert headers(message).startswith(b"From: Charlie Root <root@mx.test>")
    message, _, _ = deliver(main, peer="198.51.100.8")
    assert headers(message).startswith(b"From: Charlie Root <root>\r\n")


def test_anEmptyListMakesEveryClientRemote():
    message, _, _ = deliver("local_header_rewrite_clients =\n")
    assert headers(message) == b"From: Charlie Root <root>\r\nTo: alice, bob@example.org\r\nSubject: s"


def test_alwaysAddMissingHeadersDoesNotRewrite():
    message, _, _ = deliver("always_add_missing_headers = yes\n", peer=OUTSIDE)
    assert headers(message).startswith(b"From: Charlie Root <root>\r\nTo: alice, bob@example.org\r\nSubject: s\r\n"
                                       b"Message-Id: <FAKE0000000001@mx.test>")


class FlakyTable:
    def __init__(self):
        self.down = True

    def lookup(self, key):
        return fail(TableTemporaryError("down")) if self.down else succeed("ok")


def test_aTableThatCannotAnswerDefersMail():
    factory = serverFactory(store=FakeQueueStore())
    table = FlakyTable()

    class OneTable:
        def open(self, spec):
            return table

    factory.headerRewriteClients = HeaderRewriteClients(
        (TableSpec("texthash", "/pop"),), factory.policy.mynetworks, OneTable())
    d = Dialog(factory, peer=OUTSIDE)
    d.send("EHLO c\r\n")
    with capturedLogs() as events:
        assert d.send("MAIL FROM:<a@example.org>\r\n") == "451 4.3.0 Temporary lookup error\r\n"
    assert [e["mail_line"] for e in events if "mail_line" in e] == [
        f"NOQUEUE: reject: MAIL from unknown[{OUTSIDE}]: 451 4.3.0 Temporary lookup error; proto=ESMTP helo=<c>"]
    assert d.send("RCPT TO:<u@mx.test>\r\n") == "503 5.5.1 Error: need MAIL command\r\n"
    table.down = False
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"


# -- envelope addresses --------------------------------------------------------------------


def test_unqualifiedEnvelopeAddressesGetMyorigin():
    message, _, replies = deliver(sender="<root>", recipients=("<alice>", "<postmaster>", '<"john doe">'))
    assert replies[1:5] == ["250 2.1.0 Ok\r\n"] + ["250 2.1.5 Ok\r\n"] * 3
    envelope = message.envelope
    assert envelope.sender == "root@mx.test"
    assert [r.address for r in envelope.recipients] == ["alice@mx.test", "postmaster@mx.test", '"john doe"@mx.test']
    assert b"From: Charlie Root <root@mx.test>" in message.content


def test_envelopeAddressesAreQualifiedForRemoteClientsToo():
    """The envelope is always rewritten in the local context; the headers of a remote client are not."""
    message, _, _ = deliver(peer=OUTSIDE, sender="<root>", recipients=("<alice>",))
    assert (message.envelope.sender, message.envelope.recipients[0].address) == ("root@mx.test", "alice@mx.test")
    assert headers(message).startswith(b"From: Charlie Root <root>\r\n")


def test_theRelayCheckSeesTheQualifiedAddress():
    """An untrusted client's <root> goes to root@$myorigin; when that domain is not ours, it is relaying."""
    d = Dialog(serverFactory("myorigin = example.com\n", store=FakeQueueStore()), peer=OUTSIDE)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    # The reply names the address as given, as Postfix's does; the decision was on root@example.com.
    assert d.send("RCPT TO:<root>\r\n") == "454 4.7.1 <root>: Relay access denied\r\n"
    d = Dialog(serverFactory(store=FakeQueueStore()), peer=OUTSIDE)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<root>\r\n") == "250 2.1.5 Ok\r\n"  # root@mx.test, a local domain


def test_appendAtMyoriginNo():
    factory = serverFactory("append_at_myorigin = no\n", store=FakeQueueStore())
    d = Dialog(factory)
    d.send("EHLO c\r\n")
    assert d.send("MAIL FROM:<root>\r\n") == "501 5.1.7 Bad sender address syntax: address has no domain\r\n"
    assert d.send("MAIL FROM:<a@example.org>\r\n") == "250 2.1.0 Ok\r\n"
    assert d.send("RCPT TO:<root>\r\n") == "501 5.1.3 Bad recipient address syntax: address has no domain\r\n"
    assert d.send("RCPT TO:<postmaster>\r\n") == "250 2.1.5 Ok\r\n"  # RFC 5321: always accepted
    message, _, _ = deliver("append_at_myorigin = no\n")
    assert headers(message).startswith(b"From: Charlie Root <root>\r\nTo: alice, bob@example.org\r\n")


def test_appendDotMydomain():
    main = "append_dot_mydomain = yes\nmydomain = example.net\nrelay_domains = host.example.net\n"
    message, _, _ = deliver(main, peer=OUTSIDE, recipients=("<u@host>",), content=b"To: u@host, root\r\n\r\n")
    assert message.envelope.recipients[0].address == "u@host.example.net"
    assert headers(message) == b"To: u@host, root"  # a remote client: headers untouched
    message, _, _ = deliver(main, recipients=("<u@host>",), content=b"To: u@host, root\r\n\r\n")
    assert headers(message).startswith(b"To: u@host.example.net, root@mx.test\r\n")


def test_theDefaultDoesNotAppendDotMydomain():
    message, _, _ = deliver(recipients=("<u@localhost>",), content=b"To: u@localhost\r\n\r\n")
    assert message.envelope.recipients[0].address == "u@localhost"
    assert headers(message).startswith(b"To: u@localhost\r\n")


@pytest.mark.parametrize("command", ["MAIL FROM:<@a.example:root>", "MAIL FROM:<root> SIZE=10"])
def test_sourceRoutesAndParametersStillWork(command):
    d = Dialog(serverFactory(store=FakeQueueStore()))
    d.send("EHLO c\r\n")
    assert d.send(command + "\r\n") == "250 2.1.0 Ok\r\n"
    assert d.protocol.transaction.sender.domain == "mx.test"


def test_barePostmasterIsAlwaysAccepted():
    """RFC 5321 4.5.1; Postfix skips the recipient restrictions for it, then cleanup adds @$myorigin."""
    main = "myorigin = example.com\nsmtpd_recipient_restrictions = reject_non_fqdn_recipient, reject\nsmtpd_relay_restrictions =\n"
    message, _, replies = deliver(main, peer=OUTSIDE, recipients=("<PostMaster>",))
    assert replies[2] == "250 2.1.5 Ok\r\n"
    assert message.envelope.recipients[0].address == "PostMaster@example.com"
    d = Dialog(serverFactory(main, store=FakeQueueStore()), peer=OUTSIDE)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    assert d.send("RCPT TO:<postmaster@example.com>\r\n").startswith("554 5.7.1 ")
