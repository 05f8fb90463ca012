"""mta.config.settings.cleanup and .notices: CleanupSettings, RewriteSettings, SendmailSettings, NoticeSettings."""

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from mta.config import ConfigError, load
from mta.config.settings.cleanup import CleanupSettings, RewriteSettings
from mta.rewrite import AddressRewriting
from mta.routing import AddressResolver
from mta.smtpd.factory import SMTPServerFactory
from mta.tables import Tables
from mta.testing import FakeQueueStore

TEXT = """[main]
myhostname = mx.test
myorigin = origin.test
hopcount_limit = 30
message_drop_headers = Bcc, X-Secret

[listener:submission]
endpoint = tcp:port=587:interface=127.0.0.1
hopcount_limit = 5
always_add_missing_headers = yes
"""


def test_main_and_listener_scopes():
    config = load("<t>", TEXT, checkEndpoints=False)
    main, listener = config.settings.cleanup, config.listeners[0].settings.cleanup
    assert (main.hopLimit, main.alwaysAddMissing, main.dropHeaders) == (30, False, frozenset({"bcc", "x-secret"}))
    assert (listener.hopLimit, listener.alwaysAddMissing) == (5, True)
    assert main.rewrite == config.settings.rewrite and main.rewrite.localOrigin == "origin.test"
    assert set(CleanupSettings.parameters()) >= set(RewriteSettings.parameters())


def test_the_servers_cleanup_is_its_listeners():
    config = load("<t>", TEXT, checkEndpoints=False)
    listener = config.listeners[0]
    tables = Tables(Clock())
    factory = SMTPServerFactory(listener.settings, Clock(), FakeQueueStore(), tables,
                                AddressResolver(config.settings.resolver, tables), listenerName=listener.name)
    assert factory.cleanup.settings == listener.settings.cleanup
    assert factory.rewrite is factory.cleanup.rewriting


def test_rewrite_domains_that_are_not_domain_names_are_left_out_and_logged_once_used():
    with capturedLogs() as events:
        config = load("<t>", "[main]\nmyorigin = exa mple\nappend_dot_mydomain = yes\nmydomain = ok.test\n"
                             "remote_header_rewrite_domain = a@b\n")
    assert not [e for e in events if e["log_level"] >= LogLevel.warn]  # the load itself says nothing
    settings = config.settings.rewrite
    assert settings.refused == (("myorigin", "exa mple"), ("remote_header_rewrite_domain", "a@b"))
    assert (settings.localOrigin, settings.localDomain, settings.remote, settings.remoteOrigin) == (
        "", "ok.test", True, "")
    with capturedLogs() as events:
        AddressRewriting(settings)
    assert [e["name"] for e in events if e["log_level"] == LogLevel.error] == ["myorigin", "remote_header_rewrite_domain"]


def test_local_header_rewrite_clients_is_checked_at_load():
    with pytest.raises(ConfigError, match="local_header_rewrite_clients"):
        load("<t>", "[main]\nlocal_header_rewrite_clients = permit_everyone\n")
    settings = load("<t>", "[main]\nlocal_header_rewrite_clients = permit_mynetworks, static:all\n").settings.rewrite
    assert [str(item) for item in settings.localHeaderRewriteClients] == ["permit_mynetworks", "static:all"]


def test_sendmail_settings_keep_the_queue_directory_as_written():
    settings = load("<t>", "[main]\nqueue_directory = spool/$mail_name\nmessage_size_limit = 5k\n").settings.sendmail
    assert settings.queueDirectoryAsWritten == "spool/mta"
    assert settings.queueDirectory.endswith("/spool/mta") and settings.queueDirectory.startswith("/")
    assert settings.messageSizeLimit == 5120


def test_notice_settings():
    settings = load("<t>", "[main]\nmyorigin = origin.test\nnotify_classes = bounce, delay\n"
                           "double_bounce_sender = mailer-daemon@other.test\n").settings.notices
    assert settings.classes == frozenset({"bounce", "delay"})
    assert settings.qualified("postmaster") == "postmaster@origin.test"
    assert settings.qualified("pm@x.test") == "pm@x.test"
    assert settings.doubleBounceAddress == "mailer-daemon@other.test"
