"""mta.smtpd.policyclient: the policy delegation protocol and its connections, on a Clock without sockets."""

from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mta.config.types import parsePolicy
from mta.smtpd.policyclient import LINE_LIMIT, PolicyClients

SPEC = parsePolicy("inet:127.0.0.1:10023")


class Lines:
    def __init__(self):
        self.lines = []

    def emit(self, line, **kw):
        self.lines.append(line)


class FakeEndpoint:
    """Each connect() makes the protocol over a StringTransport (or fails with C{refuse})."""

    def __init__(self, refuse=0):
        self.connections = []
        self.refuse = refuse

    def connect(self, factory):
        if self.refuse:
            self.refuse -= 1
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


def settings(**overrides):
    values = dict(policyTimeout=100.0, policyMaxIdle=300.0, policyMaxTtl=1000.0, policyRequestLimit=0,
                  policyTryLimit=2, policyRetryDelay=1.0, policyDefaultAction="451 4.3.5 Server configuration problem")
    values.update(overrides)
    return SimpleNamespace(**values)


def client(refuse=0, **overrides):
    clock = Clock()
    log = Lines()
    clients = PolicyClients(clock, settings(**overrides), "/var/spool/mta", log)
    endpoint = FakeEndpoint(refuse)
    clients.endpoint = lambda spec: endpoint
    return clients, clock, endpoint, log


def ask(clients, attributes=None):
    result = []
    Deferred.fromCoroutine(clients.query(SPEC, attributes or {"request": "smtpd_access_policy", "sender": "a@b"})
                           ).addBoth(result.append)
    return result


def answer(endpoint, data, index=-1):
    protocol, transport = endpoint.connections[index]
    protocol.dataReceived(data)


def test_request_and_answer():
    clients, clock, endpoint, log = client()
    result = ask(clients, {"request": "smtpd_access_policy", "helo_name": "bad\r\nname", "recipient_count": 0})
    protocol, transport = endpoint.connections[0]
    assert transport.value() == b"request=smtpd_access_policy\nhelo_name=bad  name\nrecipient_count=0\n\n"
    answer(endpoint, b"action=DEFER_IF_PERMIT Greylisted\nother=ignored\n\n")
    assert result == ["DEFER_IF_PERMIT Greylisted"]
    assert log.lines == []


def test_a_connection_is_reused_until_idle_too_long():
    clients, clock, endpoint, log = client()
    first = ask(clients)
    answer(endpoint, b"action=DUNNO\n\n")
    second = ask(clients)
    answer(endpoint, b"action=OK\n\n")
    assert (first, second, len(endpoint.connections)) == (["DUNNO"], ["OK"], 1)
    clock.advance(300)  # smtpd_policy_service_max_idle
    assert endpoint.connections[0][1].disconnecting
    third = ask(clients)
    answer(endpoint, b"action=DUNNO\n\n")
    assert third == ["DUNNO"] and len(endpoint.connections) == 2


def test_request_limit_and_ttl():
    clients, clock, endpoint, log = client(policyRequestLimit=1)
    for _ in range(2):
        ask(clients)
        answer(endpoint, b"action=DUNNO\n\n")
    assert len(endpoint.connections) == 2 and endpoint.connections[0][1].disconnecting
    clients, clock, endpoint, log = client(policyMaxTtl=10)
    ask(clients)
    clock.advance(11)
    answer(endpoint, b"action=DUNNO\n\n")  # answered after the ttl: closed, not kept
    assert endpoint.connections[0][1].disconnecting


def test_a_refused_connection_is_tried_again_then_the_default_action():
    clients, clock, endpoint, log = client(refuse=2)
    result = ask(clients)
    assert result == []
    clock.advance(1)  # smtpd_policy_service_retry_delay
    assert result == ["451 4.3.5 Server configuration problem"]
    assert log.lines == ["warning: problem talking to server inet:127.0.0.1:10023: Connection refused"] * 2


def test_the_second_attempt_may_succeed():
    clients, clock, endpoint, log = client(refuse=1)
    result = ask(clients)
    clock.advance(1)
    answer(endpoint, b"action=REJECT no\n\n")
    assert result == ["REJECT no"] and len(log.lines) == 1


def test_a_server_that_does_not_answer_meets_the_timeout():
    clients, clock, endpoint, log = client(policyTryLimit=1, policyDefaultAction="DUNNO")
    result = ask(clients)
    clock.advance(99)
    assert result == []
    clock.advance(1)
    assert result == ["DUNNO"]
    assert log.lines == ["warning: problem talking to server inet:127.0.0.1:10023: timeout"]
    assert endpoint.connections[0][1].disconnecting


@pytest.mark.parametrize("data, warning", [
    (b"nothing=here\n\n", "warning: inet:127.0.0.1:10023: the policy server's answer has no action"),
    (b"action=" + b"x" * LINE_LIMIT + b"\n", "warning: problem talking to server inet:127.0.0.1:10023: "
                                             "answer line too long"),
])
def test_bad_answers(data, warning):
    clients, clock, endpoint, log = client(policyTryLimit=1)
    result = ask(clients)
    answer(endpoint, data)
    assert result == ["451 4.3.5 Server configuration problem"]
    assert log.lines == [warning]


def test_a_connection_lost_mid_answer_is_a_failed_attempt():
    clients, clock, endpoint, log = client(policyTryLimit=1)
    result = ask(clients)
    endpoint.connections[0][0].connectionLost(None)
    assert result == ["451 4.3.5 Server configuration problem"]
    assert log.lines == ["warning: problem talking to server inet:127.0.0.1:10023: lost connection"]


@pytest.mark.parametrize("text, expected", [
    ("inet:127.0.0.1:10023", "inet:127.0.0.1:10023"), ("inet:[::1]:9998", "inet:[::1]:9998"),
    ("unix:private/policy", "unix:private/policy"),
])
def test_parse_policy(text, expected):
    assert str(parsePolicy(text)) == expected


@pytest.mark.parametrize("text", ["inet:host", "inet:host:0", "inet::25", "tcp:1.2.3.4:25", "unix:"])
def test_bad_policy_servers(text):
    with pytest.raises(ValueError):
        parsePolicy(text)
