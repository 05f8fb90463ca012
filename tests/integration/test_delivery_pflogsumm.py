"""Debian's pflogsumm on the mail log of a real daemon: received, delivered, deferred, bounced and rejected
come out right, because every line is logged under the program that Postfix would name."""

import os
import re
import shutil
import smtplib
import subprocess
import sys

import pytest

from tests.integration.daemon import environment, waitFor

pytestmark = pytest.mark.integration

PFLOGSUMM = shutil.which("pflogsumm") or "/usr/sbin/pflogsumm"
TOTAL = re.compile(r"^\s*(\d+)\s+(received|delivered|forwarded|deferred|bounced|rejected)\b", re.M)


def pflogsumm(path):
    done = subprocess.run(["perl", PFLOGSUMM, "--syslog-name=mta", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_pflogsummCountsWhatTheDaemonDid(makeMailhost):
    d = makeMailhost(
        "transport_maps = inline:{ {fail.example = error:5.1.1 mailbox unavailable}, "
        "{later.example = retry:4.4.1 try again later} }\n"
        "smtpd_reject_unlisted_recipient = yes\n"
    ).start()
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.sendmail("sender@example.org", ["u@box.example", "v@box.example"], b"Subject: two\r\n\r\nhello\r\n")
        s.sendmail("u@box.example", ["x@fail.example"], b"Subject: doomed\r\n\r\nhello\r\n")  # bounced, notice to u
        s.sendmail("u@box.example", ["x@later.example"], b"Subject: wait\r\n\r\nhello\r\n")  # deferred
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            s.sendmail("sender@example.org", ["nobody@box.example"], b"Subject: no\r\n\r\nhello\r\n")  # rejected
    submitted = subprocess.run(
        [sys.executable, "-m", "mta.cli.sendmail", "-C", d.config, "-f", "cron@mta.test", "v@box.example"],
        input=b"Subject: from cron\n\nhello\n", capture_output=True, env=environment(), cwd=d.directory, timeout=60,
    )
    assert submitted.returncode == 0, submitted.stderr

    def settled():
        log = d.maillogText()
        return (log.count(": removed") == 4  # the two-recipient message, the bounce, its notice, cron's
                and "status=deferred" in log and log)

    log = waitFor(settled, what="every message delivered, bounced or deferred")
    programs = set(re.findall(r" mta/([a-z]+)\[\d+\]: ", log))
    assert {"smtpd", "cleanup", "pickup", "qmgr", "virtual", "error", "retry", "bounce"} <= programs, programs
    report = pflogsumm(d.maillog)
    totals = {name: int(count) for count, name in TOTAL.findall(report.split("Per-Hour Traffic Summary")[0])}
    assert totals == {"received": 4, "delivered": 4, "forwarded": 0, "deferred": 1, "bounced": 1, "rejected": 1}, report
    assert re.search(r"^\s*1\s+deferred\s+\(1\s+deferrals\)", report, re.M), report
    # The deferral is filed under the delivery agent that deferred it, not under qmgr.
    deferrals = report.split("message deferral detail")[1].split("message bounce detail")[0]
    assert "retry (total: 1)" in deferrals and "qmgr" not in deferrals, deferrals
    assert os.path.getsize(d.maillog) > 0
