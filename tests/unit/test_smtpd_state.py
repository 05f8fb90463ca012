"""SessionState and Transaction (mta.smtpd.session): the types, and what each reset keeps.

RFC 5321 4.1.1.5: RSET discards the sender, recipients and mail data and
keeps the HELO/EHLO state; 4.1.1.1: EHLO resets as RSET does and replaces
that state; Postfix's smtpd does the same (rset_cmd, helo_cmd: mail_reset,
rcpt_reset; helo_reset leaves TLS and SASL alone) and forgives a client's
errors when a message is queued (error_count, junk_cmds = 0).
"""

import os

import pytest

from mta.address import MailParameters, parsePath
from mta.queue.store import QueueStore
from mta.smtpd.session import SessionState, Transaction
from mta.testing import FakeQueueStore, SyncReactor, serverFactory
from tests.dialogs.harness import Dialog

OUTSIDE = "198.51.100.7"  # not in mynetworks: a relay attempt is refused (an error)


class Message:
    queueId = "Q1"

    def __init__(self):
        self.aborted = 0

    def abort(self):
        self.aborted += 1


class Reader:
    received = 42


# -- the types ---------------------------------------------------------------------------------

def test_a_new_session_knows_nothing_of_its_client_yet():
    s = SessionState()
    assert (s.clientAddress, s.clientPort, s.clientName, s.client) == ("", 0, "unknown", "unknown[]")
    assert (s.helo, s.protocol, s.extended, s.tlsActive, s.saslUsername) == (None, "SMTP", False, False, None)
    assert (s.bareNewline, s.earlyTalker, s.errors, s.junk, s.commands) == ("reject", False, 0, 0, {})


def test_hello_sets_the_name_and_the_protocol():
    s = SessionState(clientAddress="192.0.2.1", clientName="host.example")
    assert s.client == "host.example[192.0.2.1]"
    s.hello("c.example", "ESMTP")
    assert (s.helo, s.protocol, s.extended) == ("c.example", "ESMTP", True)
    s.hello("d.example", "SMTP")
    assert (s.helo, s.protocol, s.extended) == ("d.example", "SMTP", False)


@pytest.mark.parametrize("protocol, utf8, tls, sasl, name", [
    ("SMTP", False, False, None, "SMTP"),
    ("SMTP", True, True, "alice", "SMTP"),  # RFC 3848 names ESMTP only
    ("ESMTP", False, False, None, "ESMTP"),
    ("ESMTP", True, False, None, "UTF8SMTP"),
    ("ESMTP", False, True, None, "ESMTPS"),
    ("ESMTP", False, False, "alice", "ESMTPA"),
    ("ESMTP", True, True, "alice", "UTF8SMTPSA"),
])
def test_the_received_protocol_derives_from_the_session(protocol, utf8, tls, sasl, name):
    s = SessionState(protocol=protocol, tlsActive=tls, saslUsername=sasl)
    assert s.receivedProtocol(smtputf8=utf8) == name


def test_command_counts_make_postfixs_disconnect_summary():
    s = SessionState()
    assert s.commandSummary() == "commands=0/0"
    for verb, ok in [("EHLO", True), ("mail", True), ("RCPT", False), ("RCPT", True), ("quit", True)]:
        s.count(verb, ok)
    assert s.commands == {"ehlo": (1, 1), "mail": (1, 1), "rcpt": (1, 2), "quit": (1, 1)}
    assert s.commandSummary() == "ehlo=1 mail=1 rcpt=1/2 quit=1 commands=4/5"
    s2 = SessionState()
    s2.count("quit", True)
    assert s2.commandSummary() == "quit=1 commands=1"


def test_forgive_clears_the_error_and_junk_counts_only():
    s = SessionState(errors=3, junk=5, helo="c", commands={"rcpt": (0, 3)})
    s.forgive()
    assert (s.errors, s.junk, s.helo, s.commands) == (0, 0, "c", {"rcpt": (0, 3)})


def test_a_new_transaction_is_empty():
    t = Transaction()
    assert (t.sender, t.mailParams, t.recipients, t.hold, t.headerRewrite) == (None, None, [], None, None)
    assert (t.rcptTried, t.overshoot, t.message, t.reader, t.content) == (False, 0, None, None, None)
    assert (t.bdatBytes, t.bdatFailure, t.queueId, t.contentBytes, t.smtputf8) == (0, None, None, 0, False)
    assert Transaction().recipients is not t.recipients  # each its own list


def test_the_transaction_reports_its_message_and_content():
    t = Transaction(mailParams=MailParameters(smtputf8=True), message=Message(), bdatBytes=7)
    assert (t.smtputf8, t.queueId, t.contentBytes) == (True, "Q1", 7)
    t.reader = Reader()
    assert t.contentBytes == 42  # DATA's reader counts while in DATA


def test_take_message_hands_the_message_over_and_abort_gives_it_up():
    message = Message()
    t = Transaction(message=message)
    assert t.takeMessage() is message and t.message is None
    t.abort()
    assert message.aborted == 0  # handed over: no longer the transaction's
    t.message = message
    t.abort()
    t.abort()
    assert message.aborted == 1 and t.message is None


# -- what each reset keeps, in a session ---------------------------------------------------------

@pytest.fixture
def store():
    return FakeQueueStore()


def session(store, peer=OUTSIDE, hello="EHLO c.example\r\n", main=""):
    d = Dialog(serverFactory(main, store=store), peer=peer)
    if hello:
        d.send(hello)
    return d


def envelope(d, recipients=("<b@mx.test>",)):
    out = d.send("MAIL FROM:<a@example.org> SMTPUTF8\r\n" + "".join(f"RCPT TO:{r}\r\n" for r in recipients))
    assert d.protocol.transaction.sender is not None
    return out


def test_the_session_learns_its_client_at_connect(store):
    d = session(store, hello=None)
    s = d.protocol.session
    assert (s.clientAddress, s.clientPort, s.clientName, s.client) == (OUTSIDE, 40000, "unknown", f"unknown[{OUTSIDE}]")
    assert s.bareNewline == "reject"
    assert session(store, peer="127.0.0.1", hello=None).protocol.session.bareNewline == "normalize"  # excluded


def test_mail_and_rcpt_build_the_transaction(store):
    d = session(store)
    envelope(d, ("<b@mx.test>", "<c@elsewhere.example>", "<d@mx.test>"))
    t = d.protocol.transaction
    assert t.sender == parsePath("<a@example.org>", allowNull=True)
    assert t.mailParams.smtputf8 and t.rcptTried
    assert [r.address for r in t.recipients] == ["b@mx.test", "d@mx.test"]  # the relay attempt was refused
    assert d.protocol.session.errors == 1


def test_rset_starts_a_fresh_transaction_and_keeps_the_session(store):
    d = session(store)
    envelope(d, ("<b@mx.test>", "<c@elsewhere.example>"))
    before = d.protocol.transaction
    s = d.protocol.session
    s.tlsActive, s.saslUsername = True, "alice"  # as STARTTLS and AUTH will set them
    assert d.send("RSET\r\n") == "250 2.0.0 Ok\r\n"
    assert d.protocol.transaction is not before and d.protocol.transaction == Transaction()
    assert d.protocol.session is s
    assert (s.helo, s.protocol, s.tlsActive, s.saslUsername) == ("c.example", "ESMTP", True, "alice")
    assert (s.errors, s.junk) == (1, 1)  # RSET is a junk command; nothing is forgiven
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "503 5.5.1 Error: need MAIL command\r\n"


def test_rset_gives_up_a_bdat_message_in_progress(store):
    d = session(store)
    envelope(d)
    assert d.send("BDAT 3\r\nabc") == "250 2.0.0 Ok: 3 bytes\r\n"
    t = d.protocol.transaction
    assert (t.bdatBytes, t.queueId) == (3, "FAKE0000000001") and t.content is not None
    d.send("RSET\r\n")
    assert store.messages[0].aborted and d.protocol.transaction == Transaction()
    assert d.send("BDAT 1 LAST\r\nx") == "503 5.5.1 Error: need MAIL command\r\n"
    assert store.committed == []


@pytest.mark.parametrize("first, second, protocol", [
    ("EHLO c.example", "EHLO d.example", "ESMTP"),
    ("EHLO c.example", "HELO d.example", "SMTP"),
    ("HELO c.example", "EHLO d.example", "ESMTP"),
])
def test_helo_and_ehlo_reset_as_rset_and_replace_the_hello(store, first, second, protocol):
    d = session(store, hello=first + "\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@elsewhere.example>\r\n")
    s = d.protocol.session
    s.tlsActive, s.saslUsername = True, "alice"
    d.send(second + "\r\n")
    assert d.protocol.transaction == Transaction()
    assert (s.helo, s.protocol) == ("d.example", protocol)
    assert (s.tlsActive, s.saslUsername, s.errors) == (True, "alice", 1)  # helo_reset leaves them alone
    assert (s.clientAddress, s.clientName) == (OUTSIDE, "unknown")


def test_a_refused_hello_changes_nothing(store):
    d = session(store)
    envelope(d)
    before = d.protocol.transaction
    assert d.send("EHLO\r\n") == "501 5.5.4 Syntax: EHLO hostname\r\n"
    assert d.protocol.transaction is before and d.protocol.session.helo == "c.example"


def test_the_end_of_data_starts_a_fresh_transaction_and_forgives_errors(store):
    d = session(store)
    envelope(d, ("<b@mx.test>", "<c@elsewhere.example>"))
    d.send("NOOP\r\n")
    s = d.protocol.session
    assert (s.errors, s.junk) == (1, 1)
    d.send("DATA\r\n")
    assert d.protocol.transaction.queueId == "FAKE0000000001" and d.protocol.transaction.reader is not None
    assert d.send("Subject: x\r\n\r\nhi\r\n.\r\n") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    assert d.protocol.transaction == Transaction()
    assert (s.errors, s.junk) == (0, 0)  # Postfix forgives a client that delivers mail
    assert (s.helo, s.protocol) == ("c.example", "ESMTP")
    assert store.committed[0].envelope.recipients[0].address == "b@mx.test"


def test_a_refused_message_ends_the_transaction_without_forgiving(store):
    d = session(store, main="message_size_limit = 100\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nRCPT TO:<c@elsewhere.example>\r\nDATA\r\n")
    assert d.send("x" * 50 + "\r\n" + "y" * 60 + "\r\n.\r\n") == "552 5.3.4 Error: message file too big\r\n"
    assert d.protocol.transaction == Transaction()
    assert store.messages[0].aborted and d.protocol.session.errors == 2


def test_bdat_chunks_keep_the_transaction_until_last(store):
    d = session(store)
    envelope(d)
    d.send("BDAT 5\r\nSubje")
    t = d.protocol.transaction
    assert d.send("BDAT 7\r\nct: x\r\n") == "250 2.0.0 Ok: 12 bytes\r\n"
    assert d.protocol.transaction is t and t.bdatBytes == 12 and t.queueId == "FAKE0000000001"
    assert [r.address for r in t.recipients] == ["b@mx.test"]
    assert d.send("BDAT 4 LAST\r\n\r\nhi") == "250 2.0.0 Ok: queued as FAKE0000000001\r\n"
    assert d.protocol.transaction == Transaction()
    assert d.protocol.session.helo == "c.example"
    assert store.committed[0].content.endswith(b"Subject: x\r\n\r\nhi")


def test_a_failed_bdat_transaction_is_discarded_up_to_last(store):
    d = session(store, main="line_length_limit = 80\n")
    envelope(d)
    assert d.send(b"BDAT 90\r\n" + b"x" * 90) == "552 5.3.4 Error: message line longer than 80 bytes\r\n"
    t = d.protocol.transaction
    assert t.bdatFailure is not None and t.message is None and store.messages[0].aborted
    assert d.send("BDAT 2 LAST\r\nok") == "551 5.0.0 Discarded 2 bytes after earlier error\r\n"
    assert d.protocol.transaction == Transaction()


def test_regression_a_message_with_too_many_hops_is_aborted(store):
    """The refused message's queue file was left open in tmp/ (never aborted) until the next start."""
    d = session(store, main="hopcount_limit = 2\n")
    envelope(d)
    d.send("DATA\r\n")
    assert d.send("Received: x\r\nReceived: y\r\n\r\nloop\r\n.\r\n") == "554 5.4.0 Error: too many hops\r\n"
    assert store.messages[0].aborted and store.committed == []
    assert d.protocol.transaction == Transaction()


def test_regression_too_many_hops_leaves_nothing_in_tmp(tmp_path):
    """A big looping message's file stayed in tmp/, its descriptor open, until the daemon restarted."""
    reactor = SyncReactor()
    store = QueueStore(str(tmp_path / "queue"), reactor)
    store.prepare()
    d = Dialog(serverFactory("hopcount_limit = 2\n", clock=reactor, store=store), peer=OUTSIDE)
    d.send("EHLO c\r\n")
    d.send("MAIL FROM:<a@example.org>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n")
    d.send("Received: x\r\nReceived: y\r\n\r\n" + ("z" * 1000 + "\r\n") * 100)
    assert os.listdir(store.queuePath("tmp")) != []  # past the write buffer: the file exists
    assert d.send(".\r\n") == "554 5.4.0 Error: too many hops\r\n"
    assert os.listdir(store.queuePath("tmp")) == []


def test_a_lost_connection_gives_up_the_message(store):
    d = session(store)
    envelope(d)
    d.send("DATA\r\n")
    d.send("Subject: x\r\n")
    d.protocol.connectionLost(None)
    assert store.messages[0].aborted and store.committed == []


# -- the compatibility names (read by mta.smtpd.message and mta-sendmail -bs) ------------------------
