"""
An HTTPS server of MTA-STS policies for the tests (Twisted web, on loopback), in its own process:

    python3 -m tests.integration.stshttps '{"address": "127.0.0.43", "port": 443,
        "chain": "/path/key-and-chain.pem", "routes": {"mta-sts.sts.test": {"body": "version: STSv1..."}}}'

prints "ready PORT" when it listens.  A route (by the Host header, without a port) gives the reply
to GET /.well-known/mta-sts.txt: "status" (200), "type" (text/plain), "body", "location" (a
redirect), "size" (a body of that many bytes instead), "delay" (seconds before the reply).  Every
request is appended to the file "log" when given (one line: host path).  serve() is the same
server for a test process that has its own reactor (tests/integration/stscheck.py).
"""

import json
import sys

from twisted.internet import reactor as _reactor
from twisted.internet import ssl
from twisted.web import resource, server


class Policy(resource.Resource):
    isLeaf = True

    def __init__(self, routes, clock, log=None):
        super().__init__()
        self.routes = routes
        self.clock = clock
        self.log = log

    def render_GET(self, request):
        host = (request.getHeader("host") or "").split(":")[0].lower()
        if self.log:
            with open(self.log, "a") as f:
                f.write(f"{host} {request.path.decode()}\n")
        route = self.routes.get(host)
        if route is None or request.path != b"/.well-known/mta-sts.txt":
            request.setResponseCode(404)
            return b"not found\n"
        request.setResponseCode(route.get("status", 200))
        request.setHeader("content-type", route.get("type", "text/plain"))
        if "location" in route:
            request.setHeader("location", route["location"])
        body = b"x" * route["size"] if "size" in route else route.get("body", "").encode()
        if route.get("delay"):
            self.clock.callLater(route["delay"], lambda: (request.write(body), request.finish()))
            return server.NOT_DONE_YET
        return body


def serve(reactor, spec):
    """Listen as C{spec} says; the IListeningPort."""
    pem = open(spec["chain"], "rb").read()
    options = ssl.PrivateCertificate.loadPEM(pem).options()
    site = server.Site(Policy(spec["routes"], reactor, spec.get("log")))
    return reactor.listenSSL(spec.get("port", 0), site, options, interface=spec.get("address", "127.0.0.1"))


def main():
    spec = json.loads(sys.argv[1])
    port = serve(_reactor, spec)
    print(f"ready {port.getHost().port}", flush=True)
    _reactor.run()


if __name__ == "__main__":
    main()
