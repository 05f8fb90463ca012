"""check_policy_service in the session: the attributes sent and every action of the answer (a fake server)."""

from twisted.internet.defer import succeed

from mta.testing import FakeQueueStore, serverFactory
from tests.dialogs.harness import Dialog, MailLog

OUTSIDE = "192.0.2.10"


class FakePolicy:
    def __init__(self, *actions):
        self.actions = list(actions)
        self.queries = []

    def query(self, spec, attributes):
        self.queries.append((str(spec), attributes))
        return succeed(self.actions.pop(0) if len(self.actions) > 1 else self.actions[0])


def session(actions, after="permit", store=None):
    f = serverFactory(f"smtpd_recipient_restrictions = check_policy_service inet:127.0.0.1:10023, {after}\n",
                      store=store or FakeQueueStore())
    policy = f.policy.policyClients = FakePolicy(*actions)
    d = Dialog(f, peer=OUTSIDE)
    d.send("EHLO client.example\r\n")
    d.send("MAIL FROM:<a@example.org> SIZE=1234\r\n")
    return d, policy


def test_the_request_carries_postfix_attributes():
    d, policy = session(["DUNNO"])
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    spec, attributes = policy.queries[0]
    assert spec == "inet:127.0.0.1:10023"
    for name, value in {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
                        "helo_name": "client.example", "sender": "a@example.org", "recipient": "b@mx.test",
                        "recipient_count": 0, "client_address": OUTSIDE, "client_name": "unknown",
                        "reverse_client_name": "unknown", "size": 1234, "client_port": 40000}.items():
        assert attributes[name] == value, name
    assert attributes["instance"]
    d.send("RCPT TO:<c@mx.test>\r\n")
    assert policy.queries[1][1]["recipient_count"] == 1
    assert policy.queries[1][1]["instance"] == attributes["instance"]  # the same transaction


def test_actions():
    cases = [
        ("OK", "250 2.1.5 Ok"),
        ("REJECT no thanks", "554 5.7.1 <b@mx.test>: Recipient address rejected: no thanks"),
        ("550 5.7.0 go away", "550 5.7.0 <b@mx.test>: Recipient address rejected: go away"),
        ("DEFER_IF_PERMIT 4.2.0 Greylisted", "450 4.2.0 <b@mx.test>: Recipient address rejected: Greylisted"),
        ("DEFER_IF_REJECT later", "250 2.1.5 Ok"),  # the permit that follows wins
        ("451 4.3.5 Server configuration problem",
         "451 4.3.5 <b@mx.test>: Recipient address rejected: Server configuration problem"),
    ]
    for action, reply in cases:
        d, policy = session([action])
        assert d.send("RCPT TO:<b@mx.test>\r\n") == reply + "\r\n", action
    d, policy = session(["DEFER_IF_REJECT later"], after="reject")
    assert d.send("RCPT TO:<b@mx.test>\r\n") == "450 4.7.1 <b@mx.test>: Recipient address rejected: later\r\n"


def test_prepend_warn_and_info():
    store = FakeQueueStore()
    d, policy = session(["PREPEND X-Greylist: delayed 61 seconds", "WARN odd client", "INFO noted", "DUNNO"],
                        store=store)
    with MailLog() as log:
        for rcpt in ("a", "b", "c"):
            assert d.send(f"RCPT TO:<{rcpt}@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    assert log.matching(f"NOQUEUE: warn: RCPT from unknown[{OUTSIDE}]: odd client; from=<a@example.org> to=<b@mx.test>")
    assert log.matching(f"NOQUEUE: info: RCPT from unknown[{OUTSIDE}]: noted;")
    d.send("DATA\r\n")
    d.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert store.committed[0].content.startswith(b"X-Greylist: delayed 61 seconds\r\nReceived: from client.example")


def test_a_prepend_that_is_not_a_header_is_a_warning():
    store = FakeQueueStore()
    d, policy = session(["PREPEND not a header"], store=store)
    with MailLog() as log:
        assert d.send("RCPT TO:<b@mx.test>\r\n") == "250 2.1.5 Ok\r\n"
    assert log.matching("NOQUEUE: warn: RCPT from unknown[192.0.2.10]: access value 'PREPEND not a header' requires "
                        "header: text")
    d.send("DATA\r\n")
    d.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert store.committed[0].content.startswith(b"Received: ")


def test_prepends_do_not_outlive_their_transaction():
    store = FakeQueueStore()
    d, policy = session(["PREPEND X-One: 1", "DUNNO"], store=store)
    d.send("RCPT TO:<b@mx.test>\r\n")
    d.send("RSET\r\n")
    d.send("MAIL FROM:<a@example.org>\r\n")
    d.send("RCPT TO:<b@mx.test>\r\n")
    d.send("DATA\r\n")
    d.send("Subject: x\r\n\r\nbody\r\n.\r\n")
    assert store.committed[0].content.startswith(b"Received: ")
