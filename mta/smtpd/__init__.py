"""mta.smtpd - the ESMTP server: factory, protocol, session state, DATA reader, policy, cleanup.

Nothing is imported here eagerly: the configuration loader imports
mta.smtpd.restrictions to check restriction lists, and short-lived tools
(mta-sendmail, mta-config) should not pay for Twisted's networking modules.
"""


def serverFactory(listener, daemon):
    """The SMTP server factory for one listener of the running daemon."""
    from mta.smtpd.factory import serverFactory as make

    return make(listener, daemon)
