"""mta.config.settings.service - ServiceSettings: The daemon itself (mta.service, mta.generation, the tools): where the queue is, how the mail log is named and written, and the DNS client.

The parameters of this area (mta.config.schema), each read by exactly the
settings class that needs it (a parameter may be read by several areas):

    queue_directory, queue_sync_method, syslog_name, myhostname, maillog_file,
    dns_servers, worker_processes, service_throttle_time, anvil_store,
    anvil_store_password_file

SECURITY
    None: values were parsed and checked by mta.config.types.

CONFIGURATION
    As listed above.
"""

from mta.config.settings import Settings, setting, settingsClass  # noqa: F401

# Service name -> settings class, built from [main] (MAIN) or from each
# listener's scope (LISTENER); see mta.config.settings.


@settingsClass
class ServiceSettings(Settings):
    """What the daemon (mta.service) and the tools need of [main]."""

    queueDirectory: str = setting("queue_directory")  # absolute, or relative to the start-up directory
    queueSyncMethod: str = setting("queue_sync_method")  # the queue committer's (mta.queue.committer)
    syslogName: str = setting("syslog_name")  # mail-log program names are $syslog_name/program
    hostname: str = setting("myhostname")  # in syslog-shaped mail-log lines
    maillogFile: str = setting("maillog_file")  # empty: only the twistd log
    dnsServers: tuple = setting("dns_servers", tuple)  # empty: /etc/resolv.conf
    workerProcesses: int = setting("worker_processes")  # 0: one process (mta.workers)
    serviceThrottleTime: float = setting("service_throttle_time")  # a worker that failed to start waits
    anvilStore: object = setting("anvil_store")  # None: memory; an AnvilStoreSpec: Redis (mta.smtpd.anvilstore)
    anvilStorePasswordFile: str = setting("anvil_store_password_file")  # empty: no AUTH


MAIN = {"service": ServiceSettings}
