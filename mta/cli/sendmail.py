"""mta.cli.sendmail - mta-sendmail, the sendmail(1) interface (not yet working).

    mta-sendmail [-t] [-i | -oi] [-f SENDER] [-F FULLNAME] [RECIPIENT...] < message
    mta-sendmail -bs | -bp | -q

Local submission (the pickup path into the queue) is not implemented yet.
Until it is, this command never pretends to send: with any argument other
than -h/--help it prints one line on stderr and exits 75 (EX_TEMPFAIL), so
that the calling program keeps the message and tries again later, as it does
when a mail system is temporarily unavailable.

SECURITY
    Will read a message from an unprivileged local user; today it reads
    nothing.

CONFIGURATION
    None yet.

EXIT STATUS
    0 for the usage text, 75 (EX_TEMPFAIL) for everything else.
"""

import sys

PROG = "mta-sendmail"

EX_TEMPFAIL = 75

USAGE = f"""\
usage: {PROG} [-t] [-i | -oi] [-f SENDER] [-F FULLNAME] [RECIPIENT...] < message
       {PROG} -bs | -bp | -q

The sendmail(1) interface of mta, for programs that submit mail locally.

NOT IMPLEMENTED YET: local submission comes with the queue's pickup service.
Until then every invocation other than -h/--help exits with status 75
(EX_TEMPFAIL) without sending anything, so callers keep their mail.

options (to come, as in Postfix's sendmail(1)):
  -t           take the recipients from the To:, Cc: and Bcc: headers
  -i, -oi      a line with a single '.' does not end the message
  -f SENDER    the envelope sender address
  -F FULLNAME  the sender's full name, for a From: header that is added
  -bs          speak SMTP on standard input and output
  -bp          list the mail queue (as mta-queue list)
  -q           attempt delivery of the deferred mail now (as mta-queue flush)
  -h, --help   show this help and exit
"""


def main(argv=None):
    """Run mta-sendmail with C{argv} (default: sys.argv[1:]); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    sys.stderr.write(f"{PROG}: local submission is not implemented yet; no mail was sent\n")
    return EX_TEMPFAIL


if __name__ == "__main__":
    raise SystemExit(main())
