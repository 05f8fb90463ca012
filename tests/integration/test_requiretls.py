"""
REQUIRETLS (RFC 8689) end to end on loopback: Python's smtplib submits to mta over STARTTLS with
MAIL FROM ... REQUIRETLS (swaks cannot send the parameter); mta relays under
smtp_tls_security_level = verify (the test CA) to mta's own server, which offers REQUIRETLS
inside TLS: delivered, with REQUIRETLS on the wire and in the next hop's queue file.  The same
message to smtp-sink (no TLS at all) bounces with 5.7.30, and the bounce, redacted as RFC 8689
section 5 and requiretls_redact_dsn = yes say (headers only, sent without REQUIRETLS), reaches
the sender's domain (mta's own server again).
"""

import email
import email.policy
import os
import smtplib
import ssl
import uuid

import pytest

from tests.integration.peers import readQueued, waitFor
from tests.integration.test_client_peers import waitDelivery, waitLog
from tests.integration.test_client_tls import certs, mtaNexthop  # noqa: F401 - the fixture
from tests.integration.test_smtp_client import sink  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration

SENDER = "sender@back.example"


def submit(daemon, recipient, token):
    """smtplib over STARTTLS with MAIL FROM ... REQUIRETLS; the queue id."""
    body = f"Subject: secret {token}\r\nX-Token: {token}\r\n\r\nthe secret body {token}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as s:
        s.ehlo("client.test")
        assert "requiretls" not in s.esmtp_features  # never offered in plaintext
        s.starttls(context=ssl._create_unverified_context())
        s.ehlo("client.test")
        assert "requiretls" in s.esmtp_features, s.esmtp_features
        code, text = s.mail(SENDER, ["REQUIRETLS"])
        assert code == 250, (code, text)
        code, text = s.rcpt(recipient)
        assert code == 250, (code, text)
        code, text = s.data(body)
        assert code == 250, (code, text)
    return text.decode().rsplit(" ", 1)[-1]


@pytest.fixture
def relay(makeDaemon, certs, sink):  # noqa: F811
    """(sender mta, the TLS next hop mta, the smtp-sink dump directory)."""
    nexthop = mtaNexthop(makeDaemon, certs.serverMain("may", "smtpd_tls_received_header = yes\n"))
    dump, start = sink
    plain = start()
    main = (certs.serverMain("may")
            + f"transport_maps = inline:{{ tls.example=smtp:[localhost]:{nexthop.port}, "
              f"plain.example=smtp:[localhost]:{plain}, back.example=smtp:[localhost]:{nexthop.port} }}\n"
              "smtp_host_lookup = native\ninet_protocols = ipv4\nsmtp_tls_loglevel = 1\n"
              f"smtp_tls_security_level = verify\nsmtp_tls_CAfile = {certs['ca.pem']}\n")
    return makeDaemon(main=main, hold=False).start(), nexthop, dump


def test_requiretls_is_relayed_over_verified_tls_to_a_server_that_offers_it(relay):
    d, nexthop, _ = relay
    token = uuid.uuid4().hex
    qid = submit(d, "rcpt@tls.example", token)
    waitLog(d, f"{qid}: sender requested REQUIRETLS")
    [line] = waitDelivery(d, qid, "rcpt@tls.example")
    assert line[3] == "sent", line
    assert f"Verified TLS connection established to localhost[127.0.0.1]:{nexthop.port}" in d.maillogText()
    [held] = waitFor(lambda: nexthop.incoming(), timeout=15, what="the message at the next hop")
    envelope, content = readQueued(nexthop, held)
    # The next hop got MAIL FROM ... REQUIRETLS inside TLS: the flag is in its queue file.
    assert envelope.requiretls is True and envelope.sender == SENDER
    assert token.encode() in content and b"with ESMTPS id" in content


def test_requiretls_to_a_next_hop_without_tls_bounces_with_5_7_30_and_a_redacted_dsn(relay):
    d, nexthop, dump = relay
    token = uuid.uuid4().hex
    qid = submit(d, "rcpt@plain.example", token)
    [line] = waitDelivery(d, qid, "rcpt@plain.example")
    assert line[2:] == ("5.7.30", "bounced",
                        "Sender requested REQUIRETLS, but TLS service was not offered by host "
                        "localhost[127.0.0.1]"), line
    assert os.listdir(dump) == []  # never sent in plaintext
    waitLog(d, f"{qid}: sender non-delivery notification:")
    # The bounce went to back.example (the TLS next hop) without REQUIRETLS, headers only.
    [held] = waitFor(lambda: nexthop.incoming(), timeout=30, what="the bounce at the sender's domain")
    envelope, content = readQueued(nexthop, held)
    assert envelope.sender == "" and envelope.requiretls is False
    assert [r.address for r in envelope.recipients] == [SENDER]
    msg = email.message_from_bytes(content, policy=email.policy.compat32)
    types = [part.get_content_type() for part in msg.walk()]
    assert "message/delivery-status" in types and "text/rfc822-headers" in types, types
    assert "message/rfc822" not in types
    text = content.decode("utf-8", "replace")
    assert "Status: 5.7.30" in text, text
    assert f"Subject: secret {token}" in text  # the headers come back ...
    assert f"the secret body {token}" not in text  # ... the body does not
