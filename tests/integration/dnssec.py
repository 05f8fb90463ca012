"""
A DNSSEC test bed on loopback: zones signed with ldns-signzone (keys from ldns-keygen), served by
nsd on 127.0.0.1:<port>, and a validating unbound on another loopback port that knows the signed
zones' trust anchors and reaches nsd through stub zones only (no root, no other server).

    bed = SignedDNS(directory, signed={"dane.test": ZONE}, unsigned={"plain.test": ZONE2})
    bed.start()      # keys, signatures, nsd, unbound; waits until unbound answers
    bed.port         # unbound's port: dns_servers = 127.0.0.1:<bed.port>
    bed.stop()

Zone texts are the records under $ORIGIN (the SOA and NS are added).  Everything runs in the
given directory, as the current user (root is fine: username "" in both daemons), listening on
127.0.0.1 only.
"""

import socket
import subprocess
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query

from tests.integration.daemon import freePort

HEAD = """$ORIGIN {zone}.
$TTL 300
@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 300
@ IN NS ns.{zone}.
ns IN A 127.0.0.1
"""


def freeUdpTcpPort():
    """A port free for both TCP and UDP on 127.0.0.1 (the daemons need both)."""
    for _ in range(50):
        port = freePort()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port")


def run(args, cwd):
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout.strip()


class SignedDNS:
    def __init__(self, directory, signed=None, unsigned=None):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.signed = dict(signed or {})
        self.unsigned = dict(unsigned or {})
        self.nsdPort = freeUdpTcpPort()
        self.port = freeUdpTcpPort()
        self.processes = []
        self.anchors = []

    # -- zones ----------------------------------------------------------------------------------

    def _zonefile(self, zone, text):
        path = self.dir / f"{zone}.zone"
        path.write_text(HEAD.format(zone=zone) + text.strip() + "\n")
        return path

    def _sign(self, zone, path):
        ksk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone], self.dir)
        zsk = run(["ldns-keygen", "-a", "ECDSAP256SHA256", zone], self.dir)
        run(["ldns-signzone", str(path), ksk, zsk], self.dir)
        self.anchors.append(self.dir / f"{ksk}.key")
        return path.with_name(path.name + ".signed")

    def prepare(self):
        zones = []
        for zone, text in self.signed.items():
            zones.append((zone, self._sign(zone, self._zonefile(zone, text))))
        for zone, text in self.unsigned.items():
            zones.append((zone, self._zonefile(zone, text)))
        d = self.dir
        nsd = [f"server:\n  ip-address: 127.0.0.1@{self.nsdPort}\n  port: {self.nsdPort}\n  do-ip6: no\n"
               f"  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{d}\"\n  pidfile: \"{d}/nsd.pid\"\n"
               f"  database: \"\"\n  zonelistfile: \"{d}/zone.list\"\n  xfrdfile: \"{d}/xfrd.state\"\n"
               f"  xfrdir: \"{d}\"\n  logfile: \"{d}/nsd.log\"\n  verbosity: 1\n"
               "remote-control:\n  control-enable: no\n"]
        for zone, path in zones:
            nsd.append(f"zone:\n  name: \"{zone}\"\n  zonefile: \"{path}\"\n")
        (d / "nsd.conf").write_text("".join(nsd))
        unbound = [f"server:\n  interface: 127.0.0.1\n  port: {self.port}\n  do-ip6: no\n  do-daemonize: no\n"
                   f"  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n"
                   "  use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  val-log-level: 2\n"
                   "  do-not-query-localhost: no\n  module-config: \"validator iterator\"\n"
                   "  qname-minimisation: no\n  access-control: 127.0.0.0/8 allow\n  prefetch: no\n"
                   "  target-fetch-policy: \"0 0 0 0 0\"\n  harden-referral-path: no\n"
                   # the zones live under .test (RFC 6761), which unbound answers itself by default
                   "  local-zone: \"test.\" nodefault\n"]
        for anchor in self.anchors:
            unbound.append(f"  trust-anchor-file: \"{anchor}\"\n")
        for zone, _ in zones:
            unbound.append(f"stub-zone:\n  name: \"{zone}\"\n  stub-addr: 127.0.0.1@{self.nsdPort}\n")
        (d / "unbound.conf").write_text("".join(unbound))
        run(["unbound-checkconf", str(d / "unbound.conf")], d)
        run(["nsd-checkconf", str(d / "nsd.conf")], d)

    # -- daemons --------------------------------------------------------------------------------

    def start(self):
        self.prepare()
        d = self.dir
        self.processes.append(subprocess.Popen(["nsd", "-d", "-c", str(d / "nsd.conf")], cwd=d,
                                               stdout=open(d / "nsd.out", "w"), stderr=subprocess.STDOUT))
        self._wait(self.nsdPort, next(iter({**self.signed, **self.unsigned})), "nsd")
        self.processes.append(subprocess.Popen(["unbound", "-d", "-c", str(d / "unbound.conf")], cwd=d,
                                               stdout=open(d / "unbound.out", "w"), stderr=subprocess.STDOUT))
        for zone in self.signed:
            response = self._wait(self.port, zone, "unbound")
            if not response.flags & dns.flags.AD:
                raise RuntimeError(f"unbound does not validate {zone}: {response}\n{self.logs()}")
        return self

    def _wait(self, port, zone, what, timeout=20):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            query = dns.message.make_query(zone, "SOA", want_dnssec=True)
            query.flags |= dns.flags.AD
            try:
                return dns.query.udp(query, "127.0.0.1", port=port, timeout=1)
            except Exception as e:  # not up yet
                last = e
                time.sleep(0.1)
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{what} exited: {self.logs()}")
        raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port}: {last}\n{self.logs()}")

    def logs(self):
        return "".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in
                       (self.dir / "nsd.out", self.dir / "nsd.log", self.dir / "unbound.out") if p.exists())

    def stop(self):
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes = []
