"""mta.smtpd - the ESMTP server: factory, protocol, session state, DATA reader, policy, cleanup.

Nothing is imported here eagerly: short-lived tools (mta-sendmail,
mta-config) should not pay for Twisted's networking modules.  (Restriction
lists are checked at load by mta.config.types, which imports nothing of
the server.)
"""


def serverFactory(listener, daemon):
    """The SMTP server factory for one listener of the running daemon."""
    from mta.smtpd.factory import serverFactory as make

    return make(listener, daemon)
