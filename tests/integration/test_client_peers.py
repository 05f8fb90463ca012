"""The smtp and lmtp transports against real peers on loopback.

1. MX routing through a real DNS server (dnsmasq on 127.0.0.1:PORT, the
   daemon's dns_servers): preference order (best MX up, down, 4xx, 5xx),
   implicit MX, null MX (bounced, nothing connects), SERVFAIL, REFUSED and
   an unanswered query deferred, NXDOMAIN bounced; an MX record whose
   target is an address ("127.0.0.1") skipped, never connected to; a tcp6
   listener on [::1] is "myself" for loop detection; the MX hosts are
   smtp-sink on port 25 of 127.x.y.z addresses; end to end with swaks, 50
   messages, each arriving once.
2. Postfix's smtp-sink refusing MAIL, RCPT, DATA or "." with 4xx or 5xx:
   per-recipient results in the mail log, bounces back to the sender (whose
   domain is routed to another sink); success notices with and without DSN
   at the next hop.
3. A real Postfix (bench/postfix_instance.py) as the next hop: the message
   in its hold queue under the id of the "queued as" reply, DSN parameters
   passed on, PIPELINING, SIZE honoured.
4. Dovecot's LMTP server (UNIX socket and TCP): one answer per recipient,
   at RCPT and after the final "." (quota), each recorded on its own and
   retried on its own; the Maildirs hold the message.
5. A server that stalls at each phase: the phase's 2 s timeout, "timed out
   while ...", deferred and retried by the queue manager.
6. A server that drops the connection (greeting, message body, after "."):
   deferred, and delivered after mta-queue flush once the server is fixed.
7. Scripted servers (and smtp-sink -f RCPT -B 552...): 552 "too many
   recipients" after RCPT defers the rest, which later attempts deliver,
   each once; a multi-line reply with different codes in each phase (and
   in LMTP's per-recipient answers) defers 4.5.0; an endless reply to EHLO
   (multi-line, or one line without LF) is read in bounded memory (the
   daemon's RSS is measured) until smtp_helo_timeout.

Every peer is a child process or a thread of the test (peerservers.py), on
loopback only, stopped by its own id; every wait is bounded.
"""

import collections
import os
import re
import smtplib
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from tests.integration.daemon import environment
from tests.integration.peerservers import (
    PHASES,
    Dnsmasq,
    Dovecot,
    FakeSMTPServer,
    RcodeResponder,
    ScriptedSMTPServer,
    SmtpSink,
    envelopeOf,
    freePort,
    loopbackNet,
    maildirMessages,
    waitFor,
)

pytestmark = pytest.mark.integration

SENDER = "sender@back.example"
QUEUED = re.compile(r"\b2\.0\.0 Ok: queued as ([0-9A-Za-z]+)\b")


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def peers():
    """An ExitStack for the peers of a test; requested before makeDaemon, it is closed after the daemon stopped."""
    with ExitStack() as stack:
        yield stack


def start(stack, peer):
    """Start a peer and stop it when the test ends."""
    stack.callback(peer.stop)
    return peer.start()


def send(daemon, recipients, body=None, sender=SENDER, mailOptions=(), rcptOptions=(), token=None):
    """Submit one message to the daemon with smtplib; its queue id."""
    token = token or uuid.uuid4().hex
    if body is None:
        body = f"Subject: test {token}\r\nX-Token: {token}\r\n\r\nhello {token}\r\n".encode()
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=30) as s:
        s.ehlo("client.test")
        code, text = s.mail(sender, list(mailOptions))
        assert code == 250, (code, text)
        for rcpt in recipients:
            code, text = s.rcpt(rcpt, list(rcptOptions))
            assert code == 250, (rcpt, code, text)
        code, text = s.data(body)
        assert code == 250, (code, text)
    match = re.search(rb"queued as ([0-9A-Za-z]+)", text)
    assert match, text
    return match.group(1).decode()


def deliveries(daemon, queueId, recipient=None):
    """(recipient, relay, dsn, status, text) of every delivery line of a message."""
    found = []
    pattern = re.compile(
        rf"{re.escape(queueId)}: to=<([^>]*)>, (?:orig_to=<[^>]*>, )?relay=([^,]*), .*?dsn=([0-9.]+), "
        r"status=(\w+) \((.*)\)$"
    )
    for line in daemon.maillogText().splitlines():
        m = pattern.search(line)
        if m and (recipient is None or m.group(1) == recipient):
            found.append(m.groups())
    return found


def waitDelivery(daemon, queueId, recipient, status=None, count=1, timeout=30):
    """Wait for the C{count}th delivery line of C{recipient} (with C{status}); the list of lines so far."""

    def done():
        lines = [d for d in deliveries(daemon, queueId, recipient) if status is None or d[3] == status]
        return lines if len(lines) >= count else None

    try:
        return waitFor(done, timeout, f"{count} {status or 'any'} line(s) for {recipient} of {queueId}")
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- maillog ---\n{daemon.maillogText()}") from None


def waitLog(daemon, text, timeout=30):
    try:
        return waitFor(lambda: text in daemon.maillogText(), timeout, repr(text))
    except AssertionError as e:
        raise AssertionError(f"{e}\n--- maillog ---\n{daemon.maillogText()}") from None


def queued(daemon, queueId):
    """The queue directories that hold the message now."""
    return [q for q in ("incoming", "active", "deferred", "hold")
            if os.path.exists(os.path.join(daemon.queue, q, queueId))]


def waitRemoved(daemon, queueId, timeout=30):
    waitLog(daemon, f"{queueId}: removed", timeout)
    assert queued(daemon, queueId) == []


def waitDeferredFile(daemon, queueId, timeout=15):
    """The message's file reaches deferred/ (after its attempt ended)."""
    waitFor(lambda: queued(daemon, queueId) == ["deferred"], timeout, f"{queueId} in deferred/")


def flush(daemon):
    result = subprocess.run([sys.executable, "-m", "mta.cli.queue", "-c", daemon.config, "flush"],
                            env=environment(), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def bouncesFor(sink, sender=SENDER):
    """The non-delivery notifications (MAIL FROM:<>) a sink received for C{sender}."""
    found = []
    for message in sink.messages():
        mail, rcpts = envelopeOf(message)
        if mail is not None and mail.split()[:1] == ["<>"] and any(r.startswith(f"<{sender}>") for r in rcpts):
            found.append(message)
    return found


def waitBounces(daemon, sink, count=1, timeout=30):
    """Wait until C{sink} got C{count} bounces for SENDER; the list."""
    try:
        return waitFor(lambda: len(bouncesFor(sink)) >= count and bouncesFor(sink), timeout, "the bounce")
    except AssertionError as e:
        dumps = "\n".join(m.decode("utf-8", "replace")[:1500] for m in sink.messages())
        raise AssertionError(f"{e}\n--- maillog ---\n{daemon.maillogText()}\n--- at the sink ---\n{dumps}") from None


def tokenCount(sink, token):
    return sum(m.count(f"X-Token: {token}".encode()) for m in sink.messages())


def transportMaps(**routes):
    """transport_maps = inline:{ {domain = transport:nexthop}, ... } (domain_example -> domain.example)."""
    entries = ", ".join(f"{{{d.replace('_', '.')} = {v}}}" for d, v in routes.items())
    return f"transport_maps = inline:{{ {entries} }}\n"


# -- 1. MX routing through dnsmasq ------------------------------------------------------


class MxWorld:
    """
    dnsmasq serving, for a random 127.A.B.0/24 (P):

        dest.example        MX 10 mx1.dest.example (P.2), MX 20 mx2.dest.example (P.3)
        implicit.example    A P.4 and no MX
        null.example        MX 0 "." (RFC 7505), and an A record P.5 that must not be used
        back.example        MX 10 mx.back.example (P.6): the sender's domain, for bounces
        badmx.example       MX 10 mx.broken.example: the MX host's address lookup fails
        broken.example      forwarded to a server that answers SERVFAIL
        refused.example     forwarded to "the default servers", of which there are none: REFUSED
        nowhere.example     NXDOMAIN (in the local zone "example", unknown)
        self.example        MX 10 me.self.example (127.0.0.1: the daemon itself)
        numeric.example     MX 10 "P.7" (an address where a host name belongs: a trap
                            listens there), MX 20 mx.numeric.example (P.8)
        onlynumeric.example MX 10 "127.0.0.1", and nothing else
        self6.example       MX 10 me6.self.example (AAAA ::1 only)

    MX hosts are smtp-sink on port 25 of their address, started by sink(name).
    """

    HOSTS = {"mx1": 2, "mx2": 3, "implicit": 4, "null": 5, "back": 6, "trap": 7, "numeric": 8}

    def __init__(self, stack):
        self.stack = stack
        self.prefix = loopbackNet(hosts=len(self.HOSTS))
        self.address = {name: f"{self.prefix}.{n}" for name, n in self.HOSTS.items()}
        self.servfail = start(stack, RcodeResponder())
        self.dns = start(stack, Dnsmasq(
            mx=[("dest.example", "mx1.dest.example", 10), ("dest.example", "mx2.dest.example", 20),
                ("null.example", ".", 0), ("back.example", "mx.back.example", 10),
                ("badmx.example", "mx.broken.example", 10), ("self.example", "me.self.example", 10),
                ("numeric.example", self.address["trap"], 10), ("numeric.example", "mx.numeric.example", 20),
                ("onlynumeric.example", "127.0.0.1", 10), ("self6.example", "me6.self.example", 10)],
            hosts=[("mx1.dest.example", self.address["mx1"]), ("mx2.dest.example", self.address["mx2"]),
                   ("implicit.example", self.address["implicit"]), ("null.example", self.address["null"]),
                   ("mx.back.example", self.address["back"]), ("mx.numeric.example", self.address["numeric"]),
                   ("me.self.example", "127.0.0.1"),  # the daemon's own listener address
                   ("me6.self.example", "::1")],
            local=["example"],
            servers=[("broken.example", f"127.0.0.1#{self.servfail.port}"), ("refused.example", "#")],
        ))
        self.sinks = {}
        self.back = self.sink("back")

    def sink(self, name, *options):
        sink = start(self.stack, SmtpSink(self.address[name], 25, options))
        self.sinks[name] = sink
        return sink

    @property
    def config(self):
        return f"dns_servers = 127.0.0.1:{self.dns.port}\nsmtp_connect_timeout = 5s\n"

    def relay(self, name, host):
        return f"{host}[{self.address[name]}]:25"


@pytest.fixture
def world(peers):
    return MxWorld(peers)


def test_dnsmasqServesTheZone(world):
    """The DNS server answers as the other tests assume (a broken test setup shows here first)."""
    dns = world.dns
    assert dns.query("dest.example", "MX")[0] == "NOERROR"
    assert sorted(dns.query("dest.example", "MX")[1][0].split("\n")) == [
        "dest.example. 0 IN MX 10 mx1.dest.example.", "dest.example. 0 IN MX 20 mx2.dest.example."]
    assert dns.query("null.example", "MX") == ("NOERROR", ["null.example. 0 IN MX 0 ."])
    assert dns.query("implicit.example", "MX") == ("NOERROR", [])
    assert dns.query("broken.example", "MX")[0] == "SERVFAIL"
    assert dns.query("refused.example", "MX")[0] == "REFUSED"
    assert dns.query("nowhere.example", "MX")[0] == "NXDOMAIN"
    assert dns.query("onlynumeric.example", "MX") == ("NOERROR", ["onlynumeric.example. 0 IN MX 10 127.0.0.1."])
    assert f"MX 10 {world.address['trap']}." in dns.query("numeric.example", "MX")[1][0]


def test_bestMxTakesTheMail(world, makeDaemon):
    mx1, mx2 = world.sink("mx1"), world.sink("mx2")
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@dest.example"])
    [line] = waitDelivery(d, qid, "u@dest.example")
    assert line[1:4] == (world.relay("mx1", "mx1.dest.example"), "2.0.0", "sent"), line
    waitRemoved(d, qid)
    assert len(mx1.messages()) == 1 and mx2.messages() == []


def test_bestMxDownGoesToTheNext(world, makeDaemon):
    """Nothing listens on mx1's port 25 (connection refused): mx2 takes it."""
    mx2 = world.sink("mx2")
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@dest.example"])
    [line] = waitDelivery(d, qid, "u@dest.example")
    assert line[1:4] == (world.relay("mx2", "mx2.dest.example"), "2.0.0", "sent"), line
    waitRemoved(d, qid)
    assert len(mx2.messages()) == 1


@pytest.mark.parametrize("options", [("-r", "CONNECT"), ("-f", "CONNECT"), ("-r", "RCPT")],
                         ids=["4xx-greeting", "5xx-greeting", "4xx-rcpt"])
def test_bestMxTempfailGoesToTheNext(world, makeDaemon, options):
    """A 4xx (or, with smtp_skip_5xx_greeting, a 5xx greeting) at mx1: the recipient is tried at mx2."""
    world.sink("mx1", *options)
    mx2 = world.sink("mx2")
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@dest.example"])
    [line] = waitDelivery(d, qid, "u@dest.example")
    assert line[1:4] == (world.relay("mx2", "mx2.dest.example"), "2.0.0", "sent"), line
    waitRemoved(d, qid)
    assert len(mx2.messages()) == 1


def test_bestMxHardRejectIsFinal(world, makeDaemon):
    """A 5xx to RCPT at mx1 bounces: mx2 is not asked; the bounce goes to the sender's MX."""
    world.sink("mx1", "-f", "RCPT", "-B", "550 5.1.1 Error: no such user")
    mx2 = world.sink("mx2")
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["nobody@dest.example"])
    [line] = waitDelivery(d, qid, "nobody@dest.example")
    assert line[1:] == (world.relay("mx1", "mx1.dest.example"), "5.1.1", "bounced",
                        f"host mx1.dest.example[{world.address['mx1']}] said: 550 5.1.1 Error: no such user "
                        "(in reply to RCPT TO command)"), line
    waitLog(d, f"{qid}: sender non-delivery notification:")
    waitRemoved(d, qid)
    [bounce] = waitBounces(d, world.back)
    assert b"Final-Recipient: rfc822; nobody@dest.example" in bounce, bounce
    assert b"Diagnostic-Code: smtp; 550 5.1.1 Error: no such user" in bounce, bounce
    assert mx2.messages() == []


def test_implicitMx(world, makeDaemon):
    """No MX record: the domain's own A record."""
    sink = world.sink("implicit")
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@implicit.example"])
    [line] = waitDelivery(d, qid, "u@implicit.example")
    assert line[1:4] == (world.relay("implicit", "implicit.example"), "2.0.0", "sent"), line
    waitRemoved(d, qid)
    assert len(sink.messages()) == 1


def test_nullMxBouncesWithoutConnecting(world, makeDaemon, peers):
    """RFC 7505: bounced at once (5.1.10); the domain's A record is not used, nothing connects."""
    trap = start(peers, FakeSMTPServer("dot", address=world.address["null"], port=25))
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@null.example"])
    [line] = waitDelivery(d, qid, "u@null.example")
    assert line[2:] == ("5.1.10", "bounced", "Domain null.example does not accept mail (nullMX)"), line
    waitLog(d, f"{qid}: sender non-delivery notification:")
    waitRemoved(d, qid)
    waitBounces(d, world.back)
    assert trap.connections == 0


def test_mailLoopsBackToMyself(world, makeDaemon):
    """The best MX is this host: 5.4.6 bounce, or best_mx_transport takes the mail."""
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@self.example"])
    [line] = waitDelivery(d, qid, "u@self.example")
    assert line[2:4] == ("5.4.6", "bounced"), line
    assert "loops back to myself" in line[4], line
    d2 = makeDaemon(main=world.config + "best_mx_transport = discard:best MX is this host\n", hold=False).start()
    qid = send(d2, ["u@self.example"])
    [line] = waitDelivery(d2, qid, "u@self.example")
    assert line[2:] == ("2.0.0", "sent", "best MX is this host"), line


def test_numericMxHostIsSkipped(world, makeDaemon, peers):
    """MX 10 "P.7" is a name that looks like an address: never connected to; MX 20 takes the mail."""
    trap = start(peers, FakeSMTPServer("dot", address=world.address["trap"], port=25))
    sink = world.sink("numeric")
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@numeric.example"])
    [line] = waitDelivery(d, qid, "u@numeric.example")
    assert line[1:4] == (world.relay("numeric", "mx.numeric.example"), "2.0.0", "sent"), line
    waitRemoved(d, qid)
    assert len(sink.messages()) == 1
    assert trap.connections == 0
    assert (f"warning: numeric domain name in resource data of MX record for numeric.example: "
            f"{world.address['trap']}") in d.maillogText()


def test_onlyNumericMxBounces(world, makeDaemon):
    """MX 10 "127.0.0.1" alone: no valid MX host, 5.4.4 as Postfix's malformed reply; not 127.0.0.1, not a loop."""
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@onlynumeric.example"])
    [line] = waitDelivery(d, qid, "u@onlynumeric.example")
    assert line[1:] == ("none", "5.4.4", "bounced", "Name service error for name=onlynumeric.example type=MX: "
                        "Malformed or unexpected name server reply"), line
    assert ("warning: numeric domain name in resource data of MX record for onlynumeric.example: 127.0.0.1"
            in d.maillogText())
    waitLog(d, f"{qid}: sender non-delivery notification:")
    waitRemoved(d, qid)
    waitBounces(d, world.back)


def test_ipv6ListenerIsMyself(world, makeDaemon):
    """
    A listener on tcp6 [::1] (colons escaped in the endpoint string) makes
    ::1 "myself": an MX host whose only address is ::1 loops back (5.4.6).
    """
    with socket.socket(socket.AF_INET6) as s6:
        s6.bind(("::1", 0))
        port6 = s6.getsockname()[1]
    port = freePort()
    d = makeDaemon(main=world.config, hold=False,
                   listeners=f"[listener:smtp]\nendpoint = tcp:port={port}:interface=127.0.0.1\n"
                             f"[listener:smtp6]\nendpoint = tcp6:port={port6}:interface=\\:\\:1\n")
    d.port = port
    d.start()
    qid = send(d, ["u@self6.example"])
    [line] = waitDelivery(d, qid, "u@self6.example")
    assert line[2:] == ("5.4.6", "bounced", "mail for self6.example loops back to myself"), line


@pytest.mark.parametrize("domain", ["broken.example", "refused.example", "badmx.example"])
def test_dnsTryAgainDefers(world, makeDaemon, domain):
    """SERVFAIL or REFUSED for the MX lookup, or for the MX host's address: deferred (4.4.3), never bounced."""
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, [f"u@{domain}"])
    [line] = waitDelivery(d, qid, f"u@{domain}")
    name, rdtype = (domain, "MX") if domain != "badmx.example" else ("mx.broken.example", "A")
    assert line[2:4] == ("4.4.3", "deferred"), line
    assert f"Name service error for name={name} type={rdtype}: Host not found, try again" in line[4], line
    waitDeferredFile(d, qid)
    assert "non-delivery notification" not in d.maillogText()
    if domain == "broken.example":
        assert world.servfail.queries, "dnsmasq did not forward to the SERVFAIL server"


def test_dnsTimeoutDefers(peers, makeDaemon):
    """A name server that never answers: the lookup times out (5 s, 2 attempts) and the mail is deferred."""
    silent = start(peers, RcodeResponder(rcode=None))
    d = makeDaemon(main=f"dns_servers = 127.0.0.1:{silent.port}\n", hold=False).start()
    qid = send(d, ["u@silent.example"])
    [line] = waitDelivery(d, qid, "u@silent.example", timeout=40)
    assert line[2:4] == ("4.4.3", "deferred"), line
    assert "Name service error for name=silent.example type=MX: Host not found, try again" in line[4], line
    waitDeferredFile(d, qid)
    assert len(silent.queries) >= 2, silent.queries


def test_nxdomainBounces(world, makeDaemon):
    """NXDOMAIN is permanent: 5.4.4 "Host or domain name not found", bounced."""
    d = makeDaemon(main=world.config, hold=False).start()
    qid = send(d, ["u@nowhere.example"])
    [line] = waitDelivery(d, qid, "u@nowhere.example")
    assert line[2:4] == ("5.4.4", "bounced"), line
    assert "Host or domain name not found. Name service error for name=nowhere.example" in line[4], line
    waitLog(d, f"{qid}: sender non-delivery notification:")
    waitRemoved(d, qid)


def test_endToEndSwaks(world, makeDaemon):
    """swaks -> mta -> MX found through dnsmasq -> smtp-sink: 50 messages, 5 clients at a time, each arrives once."""
    mx1 = world.sink("mx1")
    d = makeDaemon(main=world.config, hold=False).start()
    tokens = [f"e2e-{n:02d}-{uuid.uuid4().hex[:8]}" for n in range(50)]

    def swaks(token):
        return subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(d.port), "--helo", "client.test",
             "--from", SENDER, "--to", f"{token}@dest.example",
             "--header", f"Subject: {token}", "--add-header", f"X-Token: {token}", "--body", f"body of {token}"],
            capture_output=True, text=True, timeout=60)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(swaks, tokens))
    for token, result in zip(tokens, results):
        assert result.returncode == 0, (token, result.stdout[-2000:], result.stderr)
        assert QUEUED.search(result.stdout), result.stdout[-1000:]

    def allSent():
        sent = [line for line in d.maillogText().splitlines() if "status=sent" in line]
        return len(sent) >= 50 and sent

    try:
        sent = waitFor(allSent, 90, "50 status=sent lines")
    except AssertionError as e:
        raise AssertionError(f"{e}\n{d.maillogText()[-3000:]}") from None
    assert len(sent) == 50, sent
    waitFor(lambda: d.maillogText().count(": removed") >= 50, 30, "50 removed lines")
    counts = collections.Counter()
    for message in mx1.messages():
        for token in re.findall(rb"^X-Token: (\S+)$", message, re.M):
            counts[token.decode()] += 1
    assert counts == {token: 1 for token in tokens}
    assert all(f"relay={world.relay('mx1', 'mx1.dest.example')}," in line for line in sent)
    assert not any(os.listdir(os.path.join(d.queue, q)) for q in ("incoming", "active", "deferred")
                   if os.path.isdir(os.path.join(d.queue, q)))


# -- 2. smtp-sink refusing commands --------------------------------------------------------


def backSink(peers):
    """A sink for back.example, the sender's domain, where bounces arrive."""
    return start(peers, SmtpSink())


REFUSALS = [
    # option, command, status, dsn, reply, in reply to
    ("-f", "MAIL", "bounced", "5.3.0", "500 5.3.0 Error: command failed", "MAIL FROM command"),
    ("-r", "MAIL", "deferred", "4.3.0", "450 4.3.0 Error: command failed", "MAIL FROM command"),
    ("-f", "RCPT", "bounced", "5.3.0", "500 5.3.0 Error: command failed", "RCPT TO command"),
    ("-r", "RCPT", "deferred", "4.3.0", "450 4.3.0 Error: command failed", "RCPT TO command"),
    ("-f", "DATA", "bounced", "5.3.0", "500 5.3.0 Error: command failed", "DATA command"),
    ("-r", "DATA", "deferred", "4.3.0", "450 4.3.0 Error: command failed", "DATA command"),
    ("-f", ".", "bounced", "5.3.0", "500 5.3.0 Error: command failed", "end of DATA command"),
    ("-r", ".", "deferred", "4.3.0", "450 4.3.0 Error: command failed", "end of DATA command"),
]


@pytest.mark.parametrize("option, command, status, dsn, reply, after", REFUSALS,
                         ids=[f"{o}{c}" for o, c, *_ in REFUSALS])
def test_sinkRefuses(peers, makeDaemon, option, command, status, dsn, reply, after):
    back = backSink(peers)
    sink = start(peers, SmtpSink(options=(option, command)))
    d = makeDaemon(main=transportMaps(refuse_example=f"smtp:[127.0.0.1]:{sink.port}",
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    qid = send(d, ["a@refuse.example", "b@refuse.example"])
    text = f"host 127.0.0.1[127.0.0.1] said: {reply} (in reply to {after})"
    for rcpt in ("a@refuse.example", "b@refuse.example"):
        [line] = waitDelivery(d, qid, rcpt)
        assert line[1:] == (f"127.0.0.1[127.0.0.1]:{sink.port}", dsn, status, text), line
    if status == "bounced":
        waitLog(d, f"{qid}: sender non-delivery notification:")
        waitRemoved(d, qid)
        [bounce] = waitBounces(d, back)
        for rcpt in ("a@refuse.example", "b@refuse.example"):
            assert f"Final-Recipient: rfc822; {rcpt}".encode() in bounce, bounce
        assert f"Diagnostic-Code: smtp; {reply}".encode() in bounce, bounce
        assert f"Status: {dsn}".encode() in bounce, bounce
    else:
        waitDeferredFile(d, qid)
        assert "notification" not in d.maillogText()
        assert back.messages() == []
    assert sink.messages() == [] or command == "."  # smtp-sink dumps what it got before "."


@pytest.mark.parametrize("dsn", [True, False], ids=["server-dsn", "server-no-dsn"])
def test_successNotice(peers, makeDaemon, dsn):
    """
    NOTIFY=SUCCESS: a next hop that announces DSN gets NOTIFY and ORCPT and
    sends the success notice itself, so we send none (Postfix's
    smtp_rcpt_done() clears DSN_NOTIFY_SUCCESS); one without DSN gets
    neither, and we send a "relayed" notice.
    """
    back = backSink(peers)
    sink = start(peers, SmtpSink(options=() if dsn else ("-N",)))
    d = makeDaemon(main=transportMaps(notify_example=f"smtp:[127.0.0.1]:{sink.port}",
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    qid = send(d, ["u@notify.example"], rcptOptions=["NOTIFY=SUCCESS", "ORCPT=rfc822;orig@notify.example"])
    [line] = waitDelivery(d, qid, "u@notify.example")
    assert line[3] == "sent", line
    waitRemoved(d, qid)
    [message] = sink.messages()
    [rcpt] = envelopeOf(message)[1]
    if dsn:
        assert sorted(rcpt.split()) == ["<u@notify.example>", "NOTIFY=SUCCESS",
                                        "ORCPT=rfc822;orig@notify.example"], rcpt
        assert "delivery status notification" not in d.maillogText(), d.maillogText()
        time.sleep(0.5)
        assert back.messages() == []
    else:
        assert rcpt == "<u@notify.example>", rcpt
        waitLog(d, f"{qid}: sender delivery status notification:")
        [notice] = waitBounces(d, back)
        assert b"Action: relayed" in notice and b"Status: 2.0.0" in notice, notice


def test_perRecipientResults(peers, makeDaemon):
    """One message, three destinations: a 5xx, a 4xx and a 2xx recipient, each recorded on its own."""
    back = backSink(peers)
    hard = start(peers, SmtpSink(options=("-f", "RCPT", "-B", "550 5.1.1 Error: no such user")))
    soft = start(peers, SmtpSink(options=("-r", "RCPT", "-b", "452 4.2.2 Error: mailbox full")))
    good = start(peers, SmtpSink())
    d = makeDaemon(main=transportMaps(hard_example=f"smtp:[127.0.0.1]:{hard.port}",
                                      soft_example=f"smtp:[127.0.0.1]:{soft.port}",
                                      good_example=f"smtp:[127.0.0.1]:{good.port}",
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    token = uuid.uuid4().hex
    qid = send(d, ["x@hard.example", "y@soft.example", "z@good.example"], token=token)
    [h] = waitDelivery(d, qid, "x@hard.example")
    [s] = waitDelivery(d, qid, "y@soft.example")
    [g] = waitDelivery(d, qid, "z@good.example")
    assert h[2:] == ("5.1.1", "bounced",
                     "host 127.0.0.1[127.0.0.1] said: 550 5.1.1 Error: no such user (in reply to RCPT TO command)")
    assert s[2:] == ("4.2.2", "deferred",
                     "host 127.0.0.1[127.0.0.1] said: 452 4.2.2 Error: mailbox full (in reply to RCPT TO command)")
    assert g[2:4] == ("2.0.0", "sent")
    waitLog(d, f"{qid}: sender non-delivery notification:")
    waitDeferredFile(d, qid)
    [bounce] = waitBounces(d, back)
    assert b"Final-Recipient: rfc822; x@hard.example" in bounce
    assert b"y@soft.example" not in bounce and b"z@good.example" not in bounce
    [delivered] = good.messages()
    [rcpt] = envelopeOf(delivered)[1]
    assert rcpt.startswith("<z@good.example>"), rcpt
    # A retry is for the deferred recipient only: nothing again for the others.
    flush(d)
    waitDelivery(d, qid, "y@soft.example", count=2)
    waitDeferredFile(d, qid)
    assert len(deliveries(d, qid, "x@hard.example")) == 1
    assert len(deliveries(d, qid, "z@good.example")) == 1
    assert tokenCount(good, token) == 1
    assert len(bouncesFor(back)) == 1


# -- 3. a real Postfix as the next hop --------------------------------------------------------


@pytest.fixture
def postfix(peers):
    """A private Postfix (bench/postfix_instance.py) on a free port that HOLDs bench.example mail, SIZE 40000."""
    from bench.postfix_instance import PostfixInstance
    from tests.integration.peerservers import freePort

    instance = PostfixInstance(freePort())
    peers.callback(instance.stop)
    instance.create()
    with open(instance.config_dir / "main.cf", "a") as f:
        f.write("message_size_limit = 40000\n")
    instance.start()
    return instance


def postcat(instance, queueId):
    # -c: the instance's own configuration, never the machine's (which may have no main.cf at all)
    result = subprocess.run(["postcat", "-c", str(instance.config_dir), "-e", str(instance.queue_dir / "hold" / queueId)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_relayToPostfix(peers, postfix, makeDaemon):
    back = backSink(peers)
    d = makeDaemon(main=transportMaps(bench_example=f"smtp:[127.0.0.1]:{postfix.port}",
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    qid = send(d, ["rcpt@bench.example"], mailOptions=["RET=HDRS", "ENVID=env-42"],
               rcptOptions=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig@bench.example"])
    [line] = waitDelivery(d, qid, "rcpt@bench.example")
    assert line[1:4] == (f"127.0.0.1[127.0.0.1]:{postfix.port}", "2.0.0", "sent"), line
    match = QUEUED.match(line[4][len("250 "):])
    assert line[4].startswith("250 2.0.0 Ok: queued as ") and match, line
    postfixId = match.group(1)
    waitRemoved(d, qid)
    # The message is in Postfix's hold queue under the id it gave.
    assert os.listdir(postfix.queue_dir / "hold") == [postfixId]
    assert postfix.postqueueCount() == 1
    envelope = postcat(postfix, postfixId)
    assert "sender: sender@back.example" in envelope
    assert "recipient: rcpt@bench.example" in envelope
    # DSN passed on: ENVID, RET=HDRS (ret_flags 2), NOTIFY=SUCCESS,FAILURE (notify_flags 2|4), ORCPT.
    for record in ("envelope_id=env-42", "ret_flags=2", "notify_flags=6", "dsn_orig_rcpt=rfc822;orig@bench.example"):
        assert f"named_attribute: {record}" in envelope, envelope
    # One pipelined session as Postfix's smtpd saw it.
    log = waitFor(lambda: "disconnect from" in postfix.maillog.read_text().split("client=", 1)[-1]
                  and postfix.maillog.read_text(), 10, "Postfix's disconnect line")
    assert "improper command pipelining" not in log, log
    assert "disconnect from localhost[127.0.0.1] ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5" in log, log
    # The next hop announced DSN and got NOTIFY=SUCCESS: it reports success, we must not
    # (Postfix's smtp_rcpt_done() clears DSN_NOTIFY_SUCCESS when the server offers DSN).
    assert "delivery status notification" not in d.maillogText(), d.maillogText()


def test_postfixSizeLimit(peers, postfix, makeDaemon):
    """Postfix says SIZE 40000: a larger message is bounced (5.3.4) without MAIL FROM."""
    back = backSink(peers)
    d = makeDaemon(main=transportMaps(bench_example=f"smtp:[127.0.0.1]:{postfix.port}",
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    body = b"Subject: big\r\n\r\n" + b"".join(b"%06d" % n + b"x" * 70 + b"\r\n" for n in range(700))
    qid = send(d, ["big@bench.example"], body=body)
    [line] = waitDelivery(d, qid, "big@bench.example")
    assert line[2:4] == ("5.3.4", "bounced"), line
    assert re.fullmatch(r"message size \d+ exceeds size limit 40000 of server 127\.0\.0\.1\[127\.0\.0\.1\]",
                        line[4]), line
    waitRemoved(d, qid)
    waitBounces(d, back)
    assert postfix.queueCount() == 0
    # Postfix saw EHLO and QUIT only (the first session is the start-up probe's).
    disconnects = waitFor(lambda: len(re.findall(r"disconnect from .*", postfix.maillog.read_text())) >= 2
                          and re.findall(r"disconnect from .*", postfix.maillog.read_text()), 10,
                          "Postfix's disconnect line")
    assert disconnects[-1] == "disconnect from localhost[127.0.0.1] ehlo=1 quit=1 commands=2", disconnects


# -- 4. Dovecot's LMTP server -----------------------------------------------------------


def lmtpNexthop(dovecot, kind):
    return f"lmtp:unix:{dovecot.socketPath}" if kind == "unix" else f"lmtp:inet:127.0.0.1:{dovecot.port}"


def lmtpRelay(dovecot, kind):
    """The relay= of a delivery to Dovecot, as Postfix's lmtp(8) logs it: myhostname[path] for a UNIX socket."""
    return f"mta.test[{dovecot.socketPath}]" if kind == "unix" else f"127.0.0.1[127.0.0.1]:{dovecot.port}"


@pytest.mark.parametrize("kind", ["unix", "inet"])
def test_lmtpDovecot(peers, makeDaemon, kind):
    back = backSink(peers)
    dovecot = start(peers, Dovecot(["alice@lmtp.example", "bob@lmtp.example"]))
    d = makeDaemon(main=transportMaps(lmtp_example=lmtpNexthop(dovecot, kind),
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    token = uuid.uuid4().hex
    qid = send(d, ["alice@lmtp.example", "carol@lmtp.example", "bob@lmtp.example"], token=token)
    for user in ("alice", "bob"):
        [line] = waitDelivery(d, qid, f"{user}@lmtp.example")
        assert line[2:4] == ("2.0.0", "sent"), line
        assert f"<{user}@lmtp.example>" in line[4] and "Saved" in line[4], line
    [line] = waitDelivery(d, qid, "carol@lmtp.example")
    assert line[2:4] == ("5.1.1", "bounced"), line
    assert line[4].endswith("550 5.1.1 <carol@lmtp.example> User doesn't exist: carol@lmtp.example "
                            "(in reply to RCPT TO command)"), line
    waitLog(d, f"{qid}: sender non-delivery notification:")
    waitRemoved(d, qid)
    for user in ("alice", "bob"):
        [message] = maildirMessages(dovecot.maildir(f"{user}@lmtp.example"))
        assert f"X-Token: {token}".encode() in message
    [bounce] = waitBounces(d, back)
    assert b"carol@lmtp.example" in bounce and b"alice@lmtp.example" not in bounce
    # relay= as Postfix's lmtp(8) logs it (last: the checks above are independent of it).
    for user in ("alice", "bob", "carol"):
        [line] = deliveries(d, qid, f"{user}@lmtp.example")
        assert line[1] == lmtpRelay(dovecot, kind), line


@pytest.mark.parametrize("assumeFinal, action", [("no", "relayed"), ("yes", "delivered")])
def test_lmtpSuccessNotice(peers, makeDaemon, assumeFinal, action):
    """Dovecot announces no DSN: NOTIFY=SUCCESS gets our notice, "delivered" with lmtp_assume_final (Postfix)."""
    back = backSink(peers)
    dovecot = start(peers, Dovecot(["alice@lmtp.example"]))
    d = makeDaemon(main=f"lmtp_assume_final = {assumeFinal}\n"
                   + transportMaps(lmtp_example=lmtpNexthop(dovecot, "unix"),
                                   back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    qid = send(d, ["alice@lmtp.example"], rcptOptions=["NOTIFY=SUCCESS"])
    [line] = waitDelivery(d, qid, "alice@lmtp.example")
    assert line[3] == "sent", line
    waitLog(d, f"{qid}: sender delivery status notification:")
    [notice] = waitBounces(d, back)
    assert f"Action: {action}".encode() in notice, notice


def test_lmtpAnswersAfterDataPerRecipient(peers, makeDaemon):
    """After ".", Dovecot saves for alice (250) and not for bob, over quota (452): each recorded, bob retried alone."""
    dovecot = start(peers, Dovecot(["alice@lmtp.example", "bob@lmtp.example"], quotas={"bob@lmtp.example": "1K"},
                                   quotaTempfail=True))
    d = makeDaemon(main=transportMaps(lmtp_example=lmtpNexthop(dovecot, "unix")), hold=False).start()
    token = uuid.uuid4().hex
    qid = send(d, ["alice@lmtp.example", "bob@lmtp.example"], body=bigBody(token, 4000))
    [a] = waitDelivery(d, qid, "alice@lmtp.example")
    [b] = waitDelivery(d, qid, "bob@lmtp.example")
    assert a[2:4] == ("2.0.0", "sent"), a
    assert b[2:4] == ("4.2.2", "deferred"), b
    assert b[4].endswith("(in reply to end of DATA command)") and "Quota exceeded" in b[4], b
    waitDeferredFile(d, qid)
    flush(d)
    waitDelivery(d, qid, "bob@lmtp.example", count=2)
    waitDeferredFile(d, qid)
    assert len(deliveries(d, qid, "alice@lmtp.example")) == 1
    assert len(maildirMessages(dovecot.maildir("alice@lmtp.example"))) == 1
    assert maildirMessages(dovecot.maildir("bob@lmtp.example")) == []
    assert dovecot.logText().count("lmtp(alice@lmtp.example)") == 1, dovecot.logText()


# -- 5. a server that stalls ----------------------------------------------------------------

STALL_CONFIG = "".join(f"{p} = 2s\n" for p in sorted(set(PHASES.values()))) + (
    "smtp_quit_timeout = 2s\nsmtp_rset_timeout = 2s\n"
    "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n"
)

STAGES = {
    "greeting": "receiving the initial server greeting",
    "ehlo": "performing the EHLO handshake",
    "mail": "sending MAIL FROM",
    "rcpt": "sending RCPT TO",
    "data": "sending DATA command",
    "body": "sending message body",
    "dot": "sending end of data -- message may be sent more than once",
}

STALLS = [(p, False) for p in STAGES] + [("mail", True), ("rcpt", True), ("data", True)]


def tcpSendBufferMax():
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            return int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 1024 * 1024


def bigBody(token, size):
    line = b"z" * 76 + b"\r\n"
    return f"Subject: big {token}\r\nX-Token: {token}\r\n\r\n".encode() + line * (size // len(line))


@pytest.mark.parametrize("phase, pipelining", STALLS,
                         ids=[p + ("-pipelining" if pl else "") for p, pl in STALLS])
def test_stallingServer(peers, makeDaemon, phase, pipelining):
    server = start(peers, FakeSMTPServer(phase, "stall", pipelining=pipelining))
    # "body": more than the kernel buffers can take between us and a server that reads nothing.
    size = max(6_000_000, tcpSendBufferMax() + 2_000_000) if phase == "body" else 0
    d = makeDaemon(main=STALL_CONFIG + f"message_size_limit = {max(10240000, 2 * size)}\n"
                   + transportMaps(stall_example=f"smtp:[127.0.0.1]:{server.port}"), hold=False).start()
    token = uuid.uuid4().hex
    body = bigBody(token, size) if phase == "body" else None
    began = time.monotonic()
    qid = send(d, ["u@stall.example"], body=body, token=token)
    [line] = waitDelivery(d, qid, "u@stall.example", timeout=30)
    elapsed = time.monotonic() - began
    assert line[1:] == (f"127.0.0.1[127.0.0.1]:{server.port}", "4.4.2", "deferred",
                        f"conversation with 127.0.0.1[127.0.0.1] timed out while {STAGES[phase]}"), line
    assert server.phasesReached >= 1
    assert 1.5 <= elapsed < 15, elapsed
    # Retried later (backoff 1-2 s here), and never reported as sent or bounced.
    waitFor(lambda: server.connections >= 2, 20, "a second attempt")
    assert {line[3] for line in deliveries(d, qid)} == {"deferred"}
    assert queued(d, qid) in (["deferred"], ["active"]), queued(d, qid)


# -- 6. a server that drops the connection during DATA ------------------------------------------

DROPS = {
    "greeting": "lost connection with 127.0.0.1[127.0.0.1] while receiving the initial server greeting",
    "body": "lost connection with 127.0.0.1[127.0.0.1] while sending message body",
    "dot": "lost connection with 127.0.0.1[127.0.0.1] while sending end of data -- message may be sent more than once",
}


@pytest.mark.parametrize("phase", list(DROPS))
def test_droppedConnectionIsRetried(peers, makeDaemon, phase):
    server = FakeSMTPServer(phase, "drop", dropAfter=65536)
    port = server.port
    start(peers, server)
    d = makeDaemon(main=transportMaps(drop_example=f"smtp:[127.0.0.1]:{port}"), hold=False).start()
    token = uuid.uuid4().hex
    body = bigBody(token, 2_000_000)
    qid = send(d, ["u@drop.example"], body=body, token=token)
    [line] = waitDelivery(d, qid, "u@drop.example")
    assert line[1:] == (f"127.0.0.1[127.0.0.1]:{port}", "4.4.2", "deferred", DROPS[phase]), line
    waitDeferredFile(d, qid)
    time.sleep(1)  # the default backoff (300 s): no second attempt by itself
    assert server.connections == 1
    # Fix the server: smtp-sink on the same port; a flush sends the message now.
    server.stop()
    sink = start(peers, SmtpSink(port=port))
    flush(d)
    [line] = waitDelivery(d, qid, "u@drop.example", status="sent")
    assert line[1] == f"127.0.0.1[127.0.0.1]:{port}"
    waitRemoved(d, qid)
    [message] = sink.messages()
    assert message.count(f"X-Token: {token}".encode()) == 1
    # The whole content arrived (smtp-sink writes LF line ends).
    sent = body.replace(b"\r\n", b"\n")
    assert sent.split(b"\n\n", 1)[1] in message


# -- 7. 552 after RCPT, malformed and endless replies ------------------------------------------

RETRY_CONFIG = "minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n"


def scriptedNexthop(server, domain="scripted_example"):
    kind = "lmtp:inet:" if server.lmtp else "smtp:["
    host = f"127.0.0.1:{server.port}" if server.lmtp else f"127.0.0.1]:{server.port}"
    return transportMaps(**{domain: kind + host})


def test_552TooManyRecipientsDefersTheRest(peers, makeDaemon):
    """
    A server that takes 2 recipients a transaction and says 552 to the
    others (RFC 821's "too many recipients"): the first 2 get the message,
    the rest are deferred (4.5.3, never bounced) and the queue manager
    delivers them on later attempts, each exactly once.
    """

    def rcpt(session):
        if len(session.rcpts) <= 2:
            return b"250 2.1.5 Ok\r\n"
        return b"552 5.5.3 Error: too many recipients\r\n"

    back = backSink(peers)
    server = start(peers, ScriptedSMTPServer({"rcpt": rcpt}))
    d = makeDaemon(main=RETRY_CONFIG + transportMaps(scripted_example=f"smtp:[127.0.0.1]:{server.port}",
                                                     back_example=f"smtp:[127.0.0.1]:{back.port}"),
                   hold=False).start()
    recipients = [f"r{n}@scripted.example" for n in range(5)]
    qid = send(d, recipients)
    first = {}
    for rcpt_ in recipients:
        first[rcpt_] = waitDelivery(d, qid, rcpt_)[0]
    sent = [r for r, line in first.items() if line[3] == "sent"]
    deferred = [r for r, line in first.items() if line[3] == "deferred"]
    assert len(sent) == 2 and len(deferred) == 3, first
    for r in deferred:
        assert first[r][2:] == ("4.5.3", "deferred", "host 127.0.0.1[127.0.0.1] said: 552 5.5.3 Error: too many "
                                "recipients (in reply to RCPT TO command)"), first[r]
    waitRemoved(d, qid, timeout=60)
    delivered = collections.Counter(r for _, rcpts, _ in server.messages for r in rcpts)
    assert delivered == {f"<{r}>": 1 for r in recipients}, server.messages
    assert len(server.messages) == 3  # 2 + 2 + 1
    assert "non-delivery notification" not in d.maillogText()
    assert back.messages() == []


def test_552ToEveryRcptAtSmtpSinkDefers(peers, makeDaemon):
    """smtp-sink answering every RCPT with 552 (-f RCPT -B): deferred, no bounce, the message stays queued."""
    back = backSink(peers)
    sink = start(peers, SmtpSink(options=("-f", "RCPT", "-B", "552 5.5.3 Error: too many recipients")))
    d = makeDaemon(main=transportMaps(sink_example=f"smtp:[127.0.0.1]:{sink.port}",
                                      back_example=f"smtp:[127.0.0.1]:{back.port}"), hold=False).start()
    qid = send(d, ["a@sink.example", "b@sink.example"])
    for rcpt_ in ("a@sink.example", "b@sink.example"):
        [line] = waitDelivery(d, qid, rcpt_)
        assert line[2:] == ("4.5.3", "deferred", "host 127.0.0.1[127.0.0.1] said: 552 5.5.3 Error: too many "
                            "recipients (in reply to RCPT TO command)"), line
    waitDeferredFile(d, qid)
    assert "notification" not in d.maillogText()
    assert back.messages() == [] and sink.messages() == []


MIXED = b"250-2.0.0 first line\r\n550 5.7.1 second line\r\n"

MIXED_PHASES = {
    # phase: (script, stage in the text)
    "greeting": ({"greeting": b"220-scripted.test hello\r\n554 5.3.2 go away\r\n"},
                 "receiving the initial server greeting"),
    "ehlo": ({"ehlo": b"250-scripted.test\r\n250-PIPELINING\r\n550 5.7.1 no\r\n"}, "performing the EHLO handshake"),
    "mail": ({"mail": MIXED}, "sending MAIL FROM"),
    "rcpt": ({"rcpt": MIXED}, "sending RCPT TO"),
    "data": ({"data": b"354-go ahead\r\n554 5.5.1 no valid recipients\r\n"}, "sending DATA command"),
    "dot": ({"dot": MIXED}, "sending end of data -- message may be sent more than once"),
}


@pytest.mark.parametrize("phase", list(MIXED_PHASES))
def test_mixedCodeReplyDefers(peers, makeDaemon, phase):
    """A multi-line reply whose lines carry different codes is a protocol error: deferred 4.5.0 in every phase."""
    script, stage = MIXED_PHASES[phase]
    server = start(peers, ScriptedSMTPServer(script))
    d = makeDaemon(main=scriptedNexthop(server), hold=False).start()
    qid = send(d, ["u@scripted.example"])
    [line] = waitDelivery(d, qid, "u@scripted.example")
    assert line[1:] == (f"127.0.0.1[127.0.0.1]:{server.port}", "4.5.0", "deferred",
                        f"malformed multi-line response from 127.0.0.1[127.0.0.1] while {stage}"), line
    waitDeferredFile(d, qid)
    log = d.maillogText()
    assert f"warning: malformed multi-line response from 127.0.0.1[127.0.0.1]:{server.port}: reply code " in log
    assert "notification" not in log
    if phase != "dot":
        assert server.messages == []


def test_lmtpMixedCodePerRecipientReply(peers, makeDaemon):
    """LMTP after ".": alice's answer counts (sent), bob's malformed one defers bob only; retried, once."""
    calls = []

    def dot(session):
        calls.append(1)
        if len(calls) == 1:
            return b"250 2.0.0 <alice@lmtp.example> Saved\r\n250-2.0.0 <bob@lmtp.example>\r\n452 4.2.2 full\r\n"
        return b"".join(b"250 2.0.0 %s Saved\r\n" % r for r in session.accepted)

    server = start(peers, ScriptedSMTPServer({"dot": dot}, lmtp=True))
    d = makeDaemon(main=RETRY_CONFIG + scriptedNexthop(server, "lmtp_example"), hold=False).start()
    qid = send(d, ["alice@lmtp.example", "bob@lmtp.example"])
    [a] = waitDelivery(d, qid, "alice@lmtp.example")
    b = waitDelivery(d, qid, "bob@lmtp.example")[0]
    assert a[2:4] == ("2.0.0", "sent"), a
    assert b[2:] == ("4.5.0", "deferred", "malformed multi-line response from 127.0.0.1[127.0.0.1] while "
                     "sending end of data -- message may be sent more than once"), b
    waitDelivery(d, qid, "bob@lmtp.example", status="sent", timeout=30)
    waitRemoved(d, qid)
    assert len(deliveries(d, qid, "alice@lmtp.example")) == 1
    assert [rcpts for _, rcpts, _ in server.messages] == [["<alice@lmtp.example>", "<bob@lmtp.example>"],
                                                          ["<bob@lmtp.example>"]]


def rssKiB(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def multiLineFlood(session):
    chunk = (b"250-" + b"x" * 1018 + b"\r\n") * 64
    yield b"250-scripted.test\r\n"
    while True:
        yield chunk


def oneLineFlood(session):
    yield b"250 "
    while True:
        yield b"y" * 65536


@pytest.mark.parametrize("flood", [multiLineFlood, oneLineFlood], ids=["multi-line", "one-line"])
def test_endlessReplyIsBoundedAndTimesOut(peers, makeDaemon, flood):
    """
    A next hop that answers EHLO with an endless reply: the daemon reads it
    in bounded memory until smtp_helo_timeout (3 s) and defers; its RSS
    does not grow with what was sent.
    """
    server = start(peers, ScriptedSMTPServer({"ehlo": flood}, floodSeconds=20))
    d = makeDaemon(main="smtp_helo_timeout = 3s\n" + scriptedNexthop(server), hold=False).start()
    time.sleep(1)  # let start-up settle before the first measurement
    before = rssKiB(d.process.pid)
    began = time.monotonic()
    qid = send(d, ["u@scripted.example"])
    [line] = waitDelivery(d, qid, "u@scripted.example", timeout=30)
    elapsed = time.monotonic() - began
    after = rssKiB(d.process.pid)
    assert line[2:] == ("4.4.2", "deferred", "conversation with 127.0.0.1[127.0.0.1] timed out while performing "
                        "the EHLO handshake"), line
    assert 2.5 <= elapsed < 15, elapsed
    assert server.bytesSent > 20 * 1024 * 1024, server.bytesSent  # a real flood went by
    print(f"RSS before {before} KiB, after {after} KiB, {server.bytesSent} bytes of reply read")
    assert after - before < 8 * 1024, (before, after, server.bytesSent)
    waitDeferredFile(d, qid)
