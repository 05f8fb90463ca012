"""CPU per SMTP session in mta's own code, without sockets: a micro-benchmark.

    python bench/sessionbench.py [--sessions N] [--real-store] [--rounds R]
    PYTHONPATH=/other/checkout python bench/sessionbench.py ...   (an older tree)

Each session is EHLO, MAIL, RCPT, DATA with a 2 KiB message, QUIT, fed to
the SMTP server (mta.testing.serverFactory: the embedded defaults, one
local domain) through a StringTransport, so what is measured is the
protocol, the restrictions, the cleanup and the queue-file writer: no
reactor, no kernel sockets, no log formatting.  With --real-store the
messages go into a real QueueStore on /dev/shm (its pool work run at once
by mta.testing.SyncReactor: the fsyncs are cheap there), else into the
in-memory FakeQueueStore.  Prints the process CPU time per session of each
round and their median.  bench/run.py measures the whole daemon against
Postfix; this one compares two trees of mta on the same machine, where the
end-to-end figures are too noisy to show a few percent.
"""

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mta.testing import FakeQueueStore, serverFactory

BODY = (b"Subject: bench\r\nFrom: a@example.org\r\nTo: b@mx.test\r\n\r\n"
        + (b"x" * 70 + b"\r\n") * 28)
LINES = [b"EHLO client.example\r\n", b"MAIL FROM:<a@example.org>\r\n", b"RCPT TO:<b@mx.test>\r\n",
         b"DATA\r\n", BODY + b".\r\n", b"QUIT\r\n"]
CLIENT = IPv4Address("TCP", "127.0.0.1", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 25)


def session(factory):
    protocol = factory.buildProtocol(CLIENT)
    transport = StringTransport(peerAddress=CLIENT, hostAddress=SERVER)
    protocol.makeConnection(transport)
    for line in LINES:
        protocol.dataReceived(line)
    protocol.connectionLost(None)
    return transport.value()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--real-store", action="store_true", help="a real QueueStore on /dev/shm")
    args = parser.parse_args(argv)
    directory = None
    if args.real_store:
        from mta.queue.store import QueueStore
        from mta.testing import SyncReactor

        directory = tempfile.mkdtemp(prefix="mta-sessionbench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        store = QueueStore(directory, SyncReactor())
        store.prepare()
    else:
        store = FakeQueueStore()
    try:
        factory = serverFactory("mydestination = mx.test\nlocal_recipient_maps =\n", store=store)
        for _ in range(200):  # warm-up
            reply = session(factory)
        if b"250 2.0.0 Ok: queued as" not in reply:
            sys.exit(f"sessionbench: the message was not queued:\n{reply.decode('ascii', 'replace')}")
        perSession = []
        for _ in range(args.rounds):
            if not args.real_store:
                store.messages.clear()
                store.committed.clear()
            gc.collect()
            start = time.process_time()
            for _ in range(args.sessions):
                session(factory)
            perSession.append((time.process_time() - start) / args.sessions * 1e6)
        print("sessionbench: {} sessions x {} rounds, {} store: CPU per session {} us; median {:.0f} us".format(
            args.sessions, args.rounds, "real" if args.real_store else "fake",
            " ".join(f"{x:.0f}" for x in perSession), statistics.median(perSession)))
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
