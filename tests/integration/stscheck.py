"""
Run by tests/integration/test_mtasts.py in its own process (it needs the real reactor): the MTA-STS
policy fetch (mta.delivery.mtasts.PolicyFetcher) against a real HTTPS server on loopback
(tests/integration/stshttps.serve) with certificates of the test CA.  The policy host's name is
"resolved" to 127.0.0.1 by a stub in place of mta's resolver (the end-to-end test uses the real one
with unbound).  Prints one JSON object: {domain: {"text": ...} or {"error": ..., "type": ...}}.

    python3 -m tests.integration.stscheck '{"server": {...stshttps spec...}, "ca": "ca.pem",
        "timeout": 3, "domains": ["sts.test", ...]}'
"""

import json
import sys

from twisted.internet import defer, task

from mta.delivery.mtasts import PolicyFetcher, StsError
from tests.integration.stshttps import serve


class LoopbackResolver:
    def __init__(self, addresses):
        self.addresses = addresses
        self.asked = []

    def lookupAddresses(self, name, families=("ipv4", "ipv6"), preference="any", dnssec=False):
        self.asked.append(name)
        return defer.succeed(list(self.addresses.get(name, ["127.0.0.1"])))


async def check(reactor, spec):
    port = serve(reactor, spec["server"])
    resolver = LoopbackResolver(spec.get("addresses", {}))
    fetcher = PolicyFetcher(reactor, resolver, ("ipv4",), spec.get("ca", ""), spec.get("timeout", 5),
                            port=spec.get("port") or port.getHost().port)
    out = {}
    for domain in spec["domains"]:
        try:
            out[domain] = {"text": await fetcher.fetch(domain)}
        except StsError as e:
            out[domain] = {"error": e.text, "type": e.failureType}
    out["asked"] = resolver.asked
    await port.stopListening()
    return out


def main():
    spec = json.loads(sys.argv[1])
    result = {}

    async def run(reactor):
        try:
            result.update(await check(reactor, spec))
        except Exception as e:  # the test shows it
            result["crash"] = repr(e)
        print(json.dumps(result), flush=True)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
