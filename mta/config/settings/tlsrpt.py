"""mta.config.settings.tlsrpt - TlsRptSettings: TLS-RPT (RFC 8460) in the SMTP client (mta.delivery.tlsrpt).

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    smtp_tlsrpt_enable, smtp_tlsrpt_skip_reused_handshakes,
    smtp_tlsrpt_organization_name, smtp_tlsrpt_contact_info,
    smtp_tlsrpt_sender, smtp_tlsrpt_report_interval, smtp_tlsrpt_store,
    smtp_tlsrpt_http_timeout, smtp_tlsrpt_max_report_size, myhostname,
    queue_directory

    TlsRptSettings is built from [main] (MAIN): one reporter serves every
    smtp transport of the daemon (mta.service).

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

import os

from mta.config.errors import ConfigError
from mta.config.settings import Settings, setting, settingsClass

DAY = 86400


def _address(value):
    value = value.strip()
    if value.count("@") != 1 or any(c.isspace() or c in "<>\"," or ord(c) < 32 for c in value):
        raise ValueError(f"{value!r} is not an address (local@domain)")
    return value


@settingsClass
class TlsRptSettings(Settings):
    """What the TLS-RPT reporter (mta.delivery.tlsrpt) reads; C{path} is the SQLite file to use."""

    enable: bool = setting("smtp_tlsrpt_enable")
    skipReused: bool = setting("smtp_tlsrpt_skip_reused_handshakes")
    organizationName: str = setting("smtp_tlsrpt_organization_name")  # organization-name, Submitter
    contactInfo: str = setting("smtp_tlsrpt_contact_info")  # contact-info
    sender: str = setting("smtp_tlsrpt_sender", _address)  # envelope sender and From: of mailto: reports
    interval: float = setting("smtp_tlsrpt_report_interval")  # seconds; divides a day
    store: str = setting("smtp_tlsrpt_store")  # empty: $queue_directory/tlsrpt.sqlite
    httpTimeout: float = setting("smtp_tlsrpt_http_timeout")
    maxReportSize: int = setting("smtp_tlsrpt_max_report_size")
    hostname: str = setting("myhostname")  # in the report-id
    queueDirectory: str = setting("queue_directory")

    def check(self, scope):
        if self.interval < 1 or self.interval > DAY or DAY % self.interval:
            raise ConfigError(f"{scope.where('smtp_tlsrpt_report_interval')}: {self.interval:g}s does not divide a "
                             f"day (1d, 12h, 1h, ...)")
        if self.httpTimeout <= 0:
            raise ConfigError(f"{scope.where('smtp_tlsrpt_http_timeout')}: must be more than 0")
        if self.maxReportSize < 1024:
            raise ConfigError(f"{scope.where('smtp_tlsrpt_max_report_size')}: at least 1k")

    @property
    def path(self):
        """The SQLite file: smtp_tlsrpt_store (relative: to the queue directory), or tlsrpt.sqlite there."""
        return os.path.join(self.queueDirectory, self.store or "tlsrpt.sqlite")


# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.
MAIN = {"tlsrpt": TlsRptSettings}
