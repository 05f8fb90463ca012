"""mta.config.settings.cleanup - CleanupSettings, RewriteSettings: The one cleanup (mta.cleanup: Received, header cleanup, address rewriting, the envelope, the commit) for smtpd (per listener), pickup and notices ([main]).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    hopcount_limit, message_drop_headers, header_size_limit,
    always_add_missing_headers, myorigin, mydomain, append_at_myorigin,
    append_dot_mydomain, local_header_rewrite_clients,
    remote_header_rewrite_domain, mail_name, myhostname,
    message_size_limit

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {}
LISTENER = {}
