"""
Run by tests/integration/test_dane.py in its own process (it needs the real reactor): mta's DNS
client (mta.delivery.dns.Resolver) asks a validating unbound (tests/integration/dnssec.py) for the
MX hosts of a destination with DNSSEC (mta.delivery.mx), DANE decides per host
(mta.delivery.dane.Dane.forHost), and for a host with TLSA records an SMTP session to the real
next hop (mta's own server with smtpd TLS) sends EHLO and STARTTLS, does the handshake with the
DANE site's context and SNI (mta.delivery.smtptls.ClientTLS), and the chain is judged
(Dane.judge).  Prints one JSON object:

    {"hosts": [[name, mxSecure, secure], ...], "level": ..., "tlsa": n, "sni": ...,
     "trust": ..., "failure": ..., "deferred": [dsn, text] or null}

    python3 -m tests.integration.danecheck '{"dns": PORT, "nexthop": "dane.test:2525",
        "main": "extra [main] lines"}'
"""

import json
import sys

from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.protocols.basic import LineReceiver

from mta.config import load
from mta.delivery.dane import Dane
from mta.delivery.dns import Resolver
from mta.delivery.mx import destinationHosts
from mta.delivery.tlspolicy import TlsPolicy


class StartTLSProbe(LineReceiver):
    """EHLO, STARTTLS, the handshake; then QUIT.  C{done} fires with the pyOpenSSL connection."""

    delimiter = b"\r\n"

    def __init__(self, creator):
        self.creator = creator
        self.state = "greeting"
        self.done = defer.Deferred()

    def lineReceived(self, line):
        code, more = line[:3], line[3:4] == b"-"
        if more:
            return
        if self.state == "greeting":
            self.sendLine(b"EHLO danecheck.test")
            self.state = "ehlo"
        elif self.state == "ehlo":
            self.sendLine(b"STARTTLS")
            self.state = "starttls"
        elif self.state == "starttls":
            if code != b"220":
                self.done.errback(RuntimeError(f"STARTTLS refused: {line!r}"))
                return
            self.state = "tls"
            self.transport.startTLS(self.creator)
            self.sendLine(b"EHLO danecheck.test")  # written once the handshake is done
        elif self.state == "tls":
            self.state = "quit"
            self.done.callback(self.transport.getHandle())
            self.sendLine(b"QUIT")

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


async def check(reactor, spec):
    settings = load("/dev/null", "[main]\n" + f"dns_servers = 127.0.0.1:{spec['dns']}\n"
                    "smtp_dns_support_level = dnssec\ninet_protocols = ipv4\n" + spec.get("main", "")).settings.smtpClient
    resolver = Resolver(reactor, [f"127.0.0.1:{spec['dns']}"], timeout=3.0, attempts=1)
    hosts = await destinationHosts(resolver, spec["nexthop"], families=("ipv4",), dnssec=True, randomize=False)
    out = {"hosts": [[h.name, h.mxSecure, h.secure] for h in hosts], "deferred": None}
    policy = TlsPolicy(settings, resolver, reactor)  # the transport's policy layer, with DANE as smtp.py wires it
    policy.dane = Dane(resolver, settings)
    host = hosts[0]
    site = await policy.forHost(policy.default(spec["nexthop"]), host)
    if site.failure is not None:
        out["deferred"] = [site.failure.dsn, site.failure.text]
        return out
    out.update(level=site.tls.level, tlsa=len(site.tlsa), sni=site.tls.serverName, mxSecure=site.mxSecure)
    if site.tlsa:
        tls = policy.context(site.tls)
        probe = StartTLSProbe(tls.creator(site.tls.serverName))
        await connectProtocol(TCP4ClientEndpoint(reactor, host.address, host.port, timeout=10), probe)
        connection = await probe.done
        verdict = policy.judge(site, tls.judge(connection, ()), connection, host)
        out.update(trust=verdict.trust, failure=verdict.failure)
    return out


def main(reactor, text):
    async def run():
        try:
            result = await check(reactor, json.loads(text))
        except Exception as e:  # reported, the test shows it
            result = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(result))

    return defer.Deferred.fromCoroutine(run())


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
