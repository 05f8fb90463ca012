"""mta.config.settings.notices - NoticeSettings: Delivery status and postmaster notices (mta.queue.notices, mta.bounce).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    bounce_size_limit, notify_classes, bounce_notice_recipient,
    2bounce_notice_recipient, delay_notice_recipient,
    error_notice_recipient, double_bounce_sender,
    maximal_queue_lifetime, delay_warning_time, myhostname, myorigin,
    mail_name

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {}
