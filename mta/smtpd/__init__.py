"""mta.smtpd - the ESMTP server (Postfix's smtpd(8)).

    factory.py       SMTPServerFactory: one per listener, from its compiled settings
    protocol.py      SMTPServer: the byte-stream state machine, replies in order,
                     half-close, deadlines, limits
    session.py       SessionState (per connection) and Transaction (per message)
    commands.py      the SMTP commands (HELO ... BDAT, ETRN, VRFY)
    auth.py          AUTH (RFC 4954): EHLO's AUTH line, the SASL exchange, the
                     AUTH rate limit (the mechanisms and backends: mta.sasl)
    data.py          the DATA/BDAT content reader: end of data, bare newlines, limits
    deadline.py      smtpd_per_request_deadline and smtpd_min_data_rate
    policy.py        relay control and recipient checks, ETRN's restrictions
    restrictions.py  the restriction-list evaluator (access(5) values)
    message.py       the server's entrance into the one cleanup (mta.cleanup)
    chat.py          the session transcript for postmaster notices

Nothing is imported here eagerly: short-lived tools (mta-sendmail,
mta-config) should not pay for Twisted's networking modules.  (Restriction
lists are checked at load by mta.config.types, which imports nothing of
the server.)
"""


def serverFactory(listener, daemon):
    """The SMTP server factory for one listener of the running daemon."""
    from mta.smtpd.factory import serverFactory as make

    return make(listener, daemon)
