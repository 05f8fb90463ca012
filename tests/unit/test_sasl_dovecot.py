"""mta.sasl.dovecot against a scripted Dovecot auth server (no sockets), and AUTH dialogs over it."""

import base64

from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from mta.sasl import Challenge, ClientInfo, Failure, Success
from mta.sasl.dovecot import DovecotBackend
from mta.testing import serverFactory
from tests.dialogs.harness import Dialog, MailLog

HANDSHAKE = (b"VERSION\t1\t2\nMECH\tPLAIN\tplaintext\nMECH\tLOGIN\tplaintext\nMECH\tANONYMOUS\tanonymous\n"
             b"MECH\tCRAM-MD5\tdictionary\tactive\nMECH\tSECRET\tprivate\nSPID\t1\nCUID\t7\nCOOKIE\tab\nDONE\n")


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "not fired"
    return out[0]


class ScriptedDovecot:
    """Answers AUTH/CONT as Dovecot would for one user, alice with password pw."""

    def __init__(self, handshake=HANDSHAKE, answer=True):
        self.handshake = handshake
        self.answer = answer
        self.lines = []
        self.connections = 0

    def connector(self, clock):
        def connect(factory):
            self.connections += 1
            protocol = factory.buildProtocol(None)
            server = self

            class Transport(StringTransport):
                def write(self, data):
                    StringTransport.write(self, data)
                    for line in data.split(b"\n"):
                        if line:
                            server.received(protocol, line)

                def writeSequence(self, seq):
                    self.write(b"".join(seq))

            protocol.makeConnection(Transport())
            protocol.dataReceived(self.handshake)
            return succeed(protocol)

        return connect

    def received(self, protocol, line):
        self.lines.append(line)
        fields = line.decode().split("\t")
        if not self.answer or fields[0] not in ("AUTH", "CONT"):
            return
        rid = fields[1]
        if fields[0] == "AUTH":
            resp = [f[5:] for f in fields if f.startswith("resp=")]
            if not resp:
                protocol.dataReceived(f"CONT\t{rid}\t\n".encode())
                return
            data = resp[0]
        else:
            data = fields[2]
        if base64.b64decode(data) == b"\0alice\0pw":
            protocol.dataReceived(f"OK\t{rid}\tuser=alice\n".encode())
        else:
            protocol.dataReceived(f"FAIL\t{rid}\tuser=alice\n".encode())


def backend(server, clock=None):
    clock = clock or Clock()
    return DovecotBackend(("unix", "/nonexistent"), clock, connector=server.connector(clock))


def test_handshake_gives_the_mechanisms_less_private_ones():
    server = ScriptedDovecot()
    mechs = result(backend(server).mechanisms())
    assert [m.name for m in mechs] == ["PLAIN", "LOGIN", "ANONYMOUS", "CRAM-MD5"]
    assert mechs[3].flags == frozenset({"dictionary", "active"})
    assert server.lines[0] == b"VERSION\t1\t2" and server.lines[1].startswith(b"CPID\t")


def test_mechanisms_are_cached():
    server, clock = ScriptedDovecot(), Clock()
    b = backend(server, clock)
    result(b.mechanisms())
    result(b.mechanisms())
    assert server.connections == 1
    clock.advance(61)
    result(b.mechanisms())
    assert server.connections == 2


def test_initial_response_and_success():
    server = ScriptedDovecot()
    client = ClientInfo(address="192.0.2.7", port=4000, tls=True, service="smtp", localAddress="127.0.0.1")
    ex = backend(server).start("PLAIN", client)
    assert result(ex.step(b"\0alice\0pw")) == Success("alice")
    auth = [line for line in server.lines if line.startswith(b"AUTH")][0].split(b"\t")
    assert auth[2:5] == [b"PLAIN", b"service=smtp", b"nologin"]
    assert b"rip=192.0.2.7" in auth and b"lip=127.0.0.1" in auth and b"secured" in auth
    assert b"resp=" + base64.b64encode(b"\0alice\0pw") in auth


def test_continuation_and_failure():
    server = ScriptedDovecot()
    ex = backend(server).start("PLAIN", ClientInfo())
    assert result(ex.step(None)) == Challenge(b"")
    assert result(ex.step(b"\0alice\0wrong")) == Failure("authentication failure")


def test_fail_reason_and_temp():
    server = ScriptedDovecot(answer=False)
    ex = backend(server).start("PLAIN", ClientInfo())
    d = ex.step(b"x")
    ex.protocol.dataReceived(b"FAIL\t1\treason=Password expired\ttemp\n")
    assert result(d) == Failure("Password expired", temporary=True)


def test_no_answer_times_out_as_temporary():
    server, clock = ScriptedDovecot(answer=False), Clock()
    ex = backend(server, clock).start("PLAIN", ClientInfo())
    d = ex.step(b"x")
    clock.advance(10)
    f = result(d)
    assert f.temporary and "timeout" in f.reason


def test_unreachable_is_temporary():
    def refuse(factory):
        return fail(ConnectionRefusedError("refused"))

    with MailLog() as log:
        b = DovecotBackend(("inet", "127.0.0.1", 1), Clock(), maillog=None, connector=refuse)
        assert result(b.start("PLAIN", ClientInfo()).step(b"x")) == Failure(
            "Connection lost to authentication server", temporary=True)
    assert log.lines == []


def test_wrong_version_is_refused():
    server = ScriptedDovecot(handshake=b"VERSION\t2\t0\nDONE\n")
    f = result(backend(server).mechanisms())
    assert "unsupported protocol version" in str(f.value)


# -- AUTH dialogs over the Dovecot backend --------------------------------------------------


def dovecotDialog(server, main=""):
    f = serverFactory("smtpd_sasl_auth_enable = yes\nsmtpd_sasl_path = inet:127.0.0.1:12345\n" + main)
    f.sasl = backend(server, f.clock)
    return Dialog(f, peer="192.0.2.7")


def test_ehlo_offers_what_dovecot_lists_less_the_security_options():
    assert "250-AUTH PLAIN LOGIN CRAM-MD5\r\n" in dovecotDialog(ScriptedDovecot()).send("EHLO c\r\n")
    d = dovecotDialog(ScriptedDovecot(), "smtpd_sasl_security_options = noplaintext, noanonymous, noactive\n")
    assert "AUTH" not in d.send("EHLO c\r\n")


def test_dialog_success_and_failure():
    d = dovecotDialog(ScriptedDovecot())
    d.send("EHLO c\r\n")
    assert d.send("AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode() + "\r\n") == (
        "535 5.7.8 Error: authentication failed: authentication failure\r\n")
    assert d.send("AUTH PLAIN\r\n") == "334 \r\n"
    assert d.send(base64.b64encode(b"\0alice\0pw").decode() + "\r\n") == "235 2.7.0 Authentication successful\r\n"
    assert d.protocol.session.saslUsername == "alice"


def test_dialog_dovecot_down():
    def refuse(factory):
        return fail(ConnectionRefusedError("refused"))

    d = dovecotDialog(ScriptedDovecot())
    d.send("EHLO c\r\n")  # the list is cached from this handshake
    d.factory.sasl._connector = refuse
    assert d.send("AUTH PLAIN " + base64.b64encode(b"\0alice\0pw").decode() + "\r\n") == (
        "454 4.7.0 Temporary authentication failure: Connection lost to authentication server\r\n")
    d2 = dovecotDialog(ScriptedDovecot())
    d2.factory.sasl._connector = refuse
    assert "AUTH" not in d2.send("EHLO c\r\n")  # never seen: nothing to offer
    assert d2.send("AUTH PLAIN\r\n").startswith("454 4.7.0 Temporary authentication failure")
