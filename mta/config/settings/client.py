"""mta.config.settings.client - ClientSettings (smtp, lmtp), SmtpTransportSettings: The SMTP and LMTP client and the smtp/relay/lmtp transports (mta.delivery).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    smtp_*, lmtp_*, inet_protocols, ignore_mx_lookup_error,
    disable_dns_lookups, disable_mime_output_conversion,
    best_mx_transport, proxy_interfaces, line_length_limit, relayhost,
    myhostname

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {}
