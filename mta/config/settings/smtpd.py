"""mta.config.settings.smtpd - SmtpdSettings: The SMTP server (mta.smtpd), per listener.

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    smtpd_banner, smtpd_recipient_limit, smtpd_timeout,
    smtpd_helo_required, strict_rfc821_envelopes, disable_vrfy_command,
    smtpd_noop_commands, smtpd_forbidden_commands,
    smtpd_discard_ehlo_keywords, smtpd_reject_footer,
    smtpd_recipient_overshoot_limit, queue_minfree,
    smtpd_client_connection_count_limit,
    smtpd_client_event_limit_exceptions, smtpd_error_sleep_time,
    smtpd_soft_error_limit, smtpd_hard_error_limit,
    smtpd_junk_command_limit, smtpd_forbid_unauth_pipelining,
    smtpd_forbid_bare_newline, smtpd_forbid_bare_newline_exclusions,
    smtpd_forbid_bare_newline_reject_code, smtpd_per_request_deadline,
    smtpd_min_data_rate, postscreen_greet_wait, postscreen_greet_action,
    message_size_limit, line_length_limit, myhostname, mail_name,
    syslog_name

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
LISTENER = {}
