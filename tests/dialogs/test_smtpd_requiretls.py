"""REQUIRETLS (RFC 8689) in the SMTP server: offered and accepted inside TLS only, kept in the envelope.

The client is pyOpenSSL over tests.tlssupport.TLSDialog (in-memory TLS), as in
test_smtpd_starttls.py; the queue is mta.testing.FakeQueueStore, and the
queue-file round trip goes through mta.queue.fileformat.
"""

import io

import pytest

from mta.queue import fileformat as ff
from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import MailLog
from tests.tlssupport import Certificates, TLSDialog, clientContext

RCPT = "RCPT TO:<bob@mx.test>\r\n"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def store():
    return FakeQueueStore()


def dialog(certs, extra="", store=None):
    factory = serverFactory(certs.serverMain("may", extra, 1), store=store)
    return TLSDialog(factory, context=clientContext(certs))


def keywords(reply):
    return [line[4:] for line in reply.split("\r\n") if line]


def test_requiretls_is_never_offered_in_plaintext(certs):
    d = dialog(certs)
    assert "REQUIRETLS" not in keywords(d.send("EHLO c.test\r\n"))


def test_requiretls_is_offered_inside_tls_last_as_in_postfix(certs):
    d = dialog(certs)
    d.send("EHLO c.test\r\n")
    d.starttls()
    words = keywords(d.send("EHLO c.test\r\n"))
    assert words[-1] == "REQUIRETLS" and "STARTTLS" not in words


@pytest.mark.parametrize("extra", ["requiretls_enable = no\n", "smtpd_discard_ehlo_keywords = requiretls\n"])
def test_requiretls_disabled_or_discarded_is_neither_offered_nor_accepted(certs, extra):
    d = dialog(certs, extra)
    d.send("EHLO c.test\r\n")
    d.starttls()
    assert "REQUIRETLS" not in keywords(d.send("EHLO c.test\r\n"))
    assert d.send("MAIL FROM:<alice@example.org> REQUIRETLS\r\n").startswith("555 5.5.4 Unsupported option: ")


def test_mail_from_requiretls_in_plaintext_is_refused_as_postfix_does(certs):
    d = dialog(certs)
    d.send("EHLO c.test\r\n")
    reply = d.send("MAIL FROM:<alice@example.org> REQUIRETLS\r\n")
    assert reply == "555 5.5.4 Unsupported option: REQUIRETLS not offered\r\n"
    assert d.protocol.transaction.sender is None  # no transaction was opened


def test_requiretls_takes_no_value(certs):
    d = dialog(certs)
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    assert d.send("MAIL FROM:<alice@example.org> REQUIRETLS=YES\r\n") == (
        "555 5.5.4 Unsupported option: REQUIRETLS takes no value\r\n")


def _queue(d, mail, body="Subject: x\r\n\r\nhi\r\n"):
    assert d.send(mail + RCPT + "DATA\r\n").endswith("354 End data with <CR><LF>.<CR><LF>\r\n")
    return d.send(body + ".\r\n")


def test_mail_from_requiretls_inside_tls_is_kept_in_the_envelope_and_the_queue_file(certs, store):
    d = dialog(certs, store=store)
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    with MailLog() as log:
        assert _queue(d, "MAIL FROM:<alice@example.org> REQUIRETLS\r\n").startswith("250 2.0.0 Ok: queued as")
    envelope = store.committed[0].envelope
    assert envelope.requiretls is True and envelope.tls_required_no is False
    assert log.matching("sender requested REQUIRETLS")
    # The queue file keeps it: written, parsed back, the same envelope.
    back = ff.parseQueueFile(io.BytesIO(ff.dumpQueueFile(envelope, store.committed[0].content))).envelope
    assert back.requiretls is True and back == envelope


def test_without_the_parameter_the_envelope_has_no_requiretls(certs, store):
    d = dialog(certs, store=store)
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    _queue(d, "MAIL FROM:<alice@example.org>\r\n")
    assert store.committed[0].envelope.requiretls is False


@pytest.mark.parametrize("header, found", [
    ("TLS-Required: No", True), ("tls-required:  no ", True), ("TLS-Required:\r\n No", True),
    ("TLS-Required: Yes", False), ("X-TLS-Required: No", False),
])
def test_a_tls_required_no_header_is_noted_and_kept(certs, store, header, found):
    d = dialog(certs, store=store)
    d.send("EHLO c.test\r\n")
    _queue(d, "MAIL FROM:<alice@example.org>\r\n", f"{header}\r\nSubject: x\r\n\r\nhi\r\n")
    committed = store.committed[0]
    assert committed.envelope.tls_required_no is found
    assert header.encode() in committed.content  # the header stays in the message


def test_requiretls_and_tls_required_no_together_are_both_recorded(certs, store):
    # RFC 8689: REQUIRETLS takes precedence at delivery (mta.delivery.requiretls); both are kept.
    d = dialog(certs, store=store)
    d.send("EHLO c.test\r\n")
    d.starttls()
    d.send("EHLO c.test\r\n")
    _queue(d, "MAIL FROM:<alice@example.org> REQUIRETLS\r\n", "TLS-Required: No\r\n\r\nhi\r\n")
    envelope = store.committed[0].envelope
    assert (envelope.requiretls, envelope.tls_required_no) == (True, True)
