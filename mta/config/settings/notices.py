"""mta.config.settings.notices - NoticeSettings: Delivery status and postmaster notices (mta.queue.notices, mta.bounce, mta.transcript).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    bounce_size_limit, notify_classes, requiretls_redact_dsn,
    tls_required_enable, bounce_notice_recipient,
    2bounce_notice_recipient, delay_notice_recipient,
    error_notice_recipient, double_bounce_sender,
    maximal_queue_lifetime, delay_warning_time, myhostname, myorigin,
    mail_name

    NoticeSettings is built from [main] (MAIN) for the queue manager's
    notices (mta.queue.notices) and the SMTP client's transcripts; the SMTP
    server builds it from its listener's scope for its own transcripts
    (mta.transcript), as it always read them there.

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass


def _qualified(address, origin):
    return address if "@" in address else f"{address}@{origin}"


@settingsClass
class NoticeSettings(Settings):
    """
    What bounce(8) and the postmaster notices read.  C{classes} is
    notify_classes as a set of its (lower-case) names; the recipients are
    as written (a bare name gets @$myorigin where it is used:
    C{qualified()}); C{doubleBounceAddress} is $double_bounce_sender with
    @$myorigin when bare, the sender of every postmaster notice.
    """

    hostname: str = setting("myhostname")  # Reporting-MTA, the notice's Message-Id
    myorigin: str = setting("myorigin")  # MAILER-DAEMON@$myorigin; bare recipients get @$myorigin
    mailName: str = setting("mail_name")  # the transcript's Subject, the DSN's X-Mail_name- fields
    bounceSizeLimit: int = setting("bounce_size_limit")  # the most bytes of the original returned
    classes: frozenset = setting("notify_classes", frozenset)  # which problems the postmaster hears of
    bounceRecipient: str = setting("bounce_notice_recipient")  # class bounce: copies, unknown-recipient transcripts
    doubleBounceRecipient: str = setting("2bounce_notice_recipient")  # undeliverable bounces
    delayRecipient: str = setting("delay_notice_recipient")  # class delay: copies of delay warnings
    errorRecipient: str = setting("error_notice_recipient")  # the other classes' transcripts
    doubleBounceSender: str = setting("double_bounce_sender")  # the sender of postmaster notices
    maximalQueueLifetime: float = setting("maximal_queue_lifetime")  # "retried until it is N day(s) old"
    delayWarningTime: float = setting("delay_warning_time")  # "could not be delivered for more than N hour(s)"
    requiretlsRedactDsn: bool = setting("requiretls_redact_dsn")  # RFC 8689 5: headers only, no REQUIRETLS
    tlsRequiredEnable: bool = setting("tls_required_enable")  # copy "TLS-Required: No" into the notice

    def qualified(self, address):
        """C{address} with @$myorigin when it has no domain."""
        return _qualified(address, self.myorigin)

    @property
    def doubleBounceAddress(self):
        return _qualified(self.doubleBounceSender, self.myorigin)


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"notices": NoticeSettings}
LISTENER = {"notices": NoticeSettings}  # a listener's postmaster transcripts (notify_classes -o)
