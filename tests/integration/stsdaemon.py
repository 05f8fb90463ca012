"""Run postfix-mta-sts-resolver's mta-sts-daemon with its DNS on a loopback server.

    python3 -m tests.integration.stsdaemon 127.0.0.1:PORT mta-sts-daemon-arguments...

The daemon resolves _mta-sts TXT records with aiodns, which reads the system's
/etc/resolv.conf and has no option for another server.  The tests may use
loopback only, so this launcher makes every aiodns.DNSResolver that the daemon
creates use the given server (the tests' dnsmasq) and then runs the daemon's own
main(): the daemon is unchanged otherwise.
"""

import sys


def main():
    nameserver, arguments = sys.argv[1], sys.argv[2:]
    import aiodns

    original = aiodns.DNSResolver.__init__

    def loopbackOnly(self, nameservers=None, *args, **kwargs):
        original(self, [nameserver], *args, **kwargs)

    aiodns.DNSResolver.__init__ = loopbackOnly
    from postfix_mta_sts_resolver import daemon

    sys.argv = ["mta-sts-daemon", *arguments]
    daemon.main()


if __name__ == "__main__":
    main()
