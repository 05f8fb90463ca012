"""
The cost of one mail-log line, both ways mta can write it (issue 12's log lever):

    python3 bench/maillogcost.py [--lines N]

  event: MailLogger.emit as a twisted.logger event through twistd's text file observer (what
         happens without maillog_file: formatTime, eventAsText, write and flush per line)
  file:  MailLogger.emit into mta.maillog.MailLogFile (maillog_file set: formatted once,
         buffered, one write per flush)

Prints microseconds per line for each; a Clock stands in for the reactor, so the file's flush
timer never fires and one flush at the end writes everything.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet.task import Clock  # noqa: E402
from twisted.logger import Logger, LogPublisher, textFileLogObserver  # noqa: E402

import mta.maillog as maillog  # noqa: E402

LINE = "8E3cE3T0LmDRki: to=<rcpt@bench.example>, relay=none, delay=0.01, delays=0/0/0/0, dsn=2.0.0, status=sent"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("--lines", type=int, default=20000)
    args = p.parse_args(argv)
    directory = tempfile.mkdtemp(prefix="mta-maillogcost-")
    publisher = LogPublisher()
    stream = open(os.path.join(directory, "twistd.log"), "a")
    publisher.addObserver(textFileLogObserver(stream))
    logger = maillog.MailLogger("mta", "smtp")
    logger.log = Logger(namespace="mta/smtp", observer=publisher)
    previous = maillog.installFile(None)
    try:
        start = time.perf_counter()
        for _ in range(args.lines):
            logger.emit(LINE)
        event = (time.perf_counter() - start) / args.lines
        f = maillog.MailLogFile(os.path.join(directory, "maillog"), "mx.example.org", "mta", clock=Clock())
        maillog.installFile(f)
        start = time.perf_counter()
        for _ in range(args.lines):
            logger.emit(LINE)
        f.close()
        buffered = (time.perf_counter() - start) / args.lines
    finally:
        maillog.installFile(previous)
        stream.close()
    print(f"event: {event * 1e6:.1f} us/line   file: {buffered * 1e6:.1f} us/line   ratio {event / buffered:.1f}")


if __name__ == "__main__":
    main()
