"""
Address rewriting with the real daemon: unqualified header and envelope addresses from a
client on this host get @$myorigin; from a client that is not local (a second loopback
address, 127.0.0.2, outside a narrowed $mynetworks, with local_header_rewrite_clients =
permit_mynetworks) the headers stay as they are, unless remote_header_rewrite_domain is set.
"""

import pytest

from tests.integration.daemon import waitFor
from tests.integration.peers import RecordingSMTP, readQueued, splitReceived, swaks
from tests.integration.test_delivery import maildirFiles
from tests.integration.test_sendmail import sendmail

pytestmark = pytest.mark.integration

MESSAGE = (
    b"From: Charlie Root <root>\r\n"
    b"To: root, Bob <bob@example.org>\r\n"
    b"Cc: undisclosed:;\r\n"
    b"Subject: unqualified\r\n"
    b"Date: Sat, 21 Nov 2026 07:48:25 +0000\r\n"
    b"Message-ID: <rewrite-test@example.org>\r\n"
    b"\r\n"
    b"To: root is body text\r\n"
)
NARROW = "local_header_rewrite_clients = permit_mynetworks\nmynetworks = 127.0.0.1/32\n"


def send(daemon, source="127.0.0.1", sender="root", recipients=("root",)):
    """smtplib from C{source}, bare envelope addresses; (Envelope, content after our Received:)."""
    with RecordingSMTP(port=daemon.port, local_hostname="client.example", source_address=(source, 0)) as s:
        assert s.sendmail(sender, list(recipients), MESSAGE) == {}
        queueId = s.lastQueueId
    envelope, content = readQueued(daemon, queueId)
    received, rest = splitReceived(content)
    assert f"[{source}])".encode() in received
    return envelope, rest


def test_aLocalClientsHeadersAndEnvelopeGetMyorigin(makeDaemon):
    daemon = makeDaemon().start()  # permit_inet_interfaces; myorigin = $myhostname = mta.test
    envelope, rest = send(daemon)
    assert envelope.sender == "root@mta.test"
    assert [r.address for r in envelope.recipients] == ["root@mta.test"]
    assert rest == (
        b"From: Charlie Root <root@mta.test>\r\n"
        b"To: root@mta.test, Bob <bob@example.org>\r\n"
        b"Cc: undisclosed:;\r\n"
        b"Subject: unqualified\r\n"
        b"Date: Sat, 21 Nov 2026 07:48:25 +0000\r\n"
        b"Message-ID: <rewrite-test@example.org>\r\n"
        b"\r\n"
        b"To: root is body text\r\n"
    )


def test_aRemoteClientsHeadersStayBare(makeDaemon):
    daemon = makeDaemon(NARROW).start()
    envelope, rest = send(daemon, source="127.0.0.2")
    assert envelope.sender == "root@mta.test"  # the envelope is always completed
    assert [r.address for r in envelope.recipients] == ["root@mta.test"]
    assert rest == MESSAGE
    # the same daemon, from 127.0.0.1 (in this mynetworks): local
    _, rest = send(daemon, source="127.0.0.1")
    assert rest.startswith(b"From: Charlie Root <root@mta.test>\r\nTo: root@mta.test, Bob <bob@example.org>\r\n")


def test_remoteHeaderRewriteDomainWithSwaks(makeDaemon):
    daemon = makeDaemon(NARROW + "remote_header_rewrite_domain = domain.invalid\n").start()
    result = swaks(daemon.port, "--local-interface", "127.0.0.2", "--helo", "client.example",
                   "--from", "alice@example.org", "--to", "root",
                   "--data", "From: Alice <alice>\nTo: root\nSubject: remote\n\nbody\n")
    assert result.returncode == 0, result.stdout + result.stderr
    [queueId] = daemon.incoming()
    envelope, content = readQueued(daemon, queueId)
    assert [r.address for r in envelope.recipients] == ["root@mta.test"]
    _, rest = splitReceived(content)
    headers = rest.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert headers[:3] == [b"From: Alice <alice@domain.invalid>", b"To: root@domain.invalid", b"Subject: remote"]
    assert any(h.startswith(b"Message-Id: <") for h in headers)  # and the missing headers are added
    assert b"(unknown [127.0.0.2])" in content


def test_bareNamesAreDeliveredToTheirMailbox(makeMailhost):
    """RCPT TO:<u> and To: u from this host: u@$myorigin, delivered by virtual(8) to its Maildir."""
    daemon = makeMailhost("myorigin = box.example\n").start()
    with RecordingSMTP(port=daemon.port, local_hostname="client.example") as s:
        assert s.sendmail("v", ["u"], b"From: v\r\nTo: u\r\nSubject: s\r\n\r\nhello\r\n") == {}
    [path] = waitFor(lambda: maildirFiles(daemon.base, "box.example/u"), what="the Maildir delivery")
    data = open(path, "rb").read()
    assert data.startswith(b"Return-Path: <v@box.example>\n")
    assert b"\nFrom: v@box.example\nTo: u@box.example\nSubject: s\n" in data
    assert b"\nDelivered-To: u@box.example\n" in data


def test_sendmailSubmissionsAreAlwaysLocal(makeMailhost):
    """mta-sendmail -> pickup: the local context whatever local_header_rewrite_clients says."""
    daemon = makeMailhost("myorigin = box.example\nlocal_header_rewrite_clients =\n").start()
    result = sendmail(daemon, "-f", "v@box.example", "u@box.example",
                      stdin=b"From: Vee <v>\nTo: u, (group) other\nSubject: local\n\nhi\n")
    assert result.returncode == 0, result.stderr
    [path] = waitFor(lambda: maildirFiles(daemon.base, "box.example/u"), what="the Maildir delivery")
    data = open(path, "rb").read()
    assert b"\nFrom: Vee <v@box.example>\nTo: u@box.example, (group) other@box.example\nSubject: local\n" in data
