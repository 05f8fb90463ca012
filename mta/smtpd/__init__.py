"""mta.smtpd - the ESMTP server: factory, protocol, DATA reader, policy, cleanup."""

from mta.smtpd.factory import SMTPServerFactory, serverFactory

__all__ = ["SMTPServerFactory", "serverFactory"]
