"""mta.config.settings: the compile step from a parameter scope to frozen, typed settings objects."""

import re

import attrs
import pytest

from mta.config import ConfigError, load
from mta.config.settings import Compiled, Settings, compile, setting, settingsClass
from mta.config.settings.service import ServiceSettings


@settingsClass
class Example(Settings):
    hostname: str = setting("myhostname")
    limit: int = setting("smtpd_recipient_limit")
    noop: frozenset = setting("smtpd_noop_commands", lambda items: frozenset(i.upper() for i in items))
    concurrency: dict = setting(pattern=re.compile(r"([a-z0-9][a-z0-9_-]*)_destination_concurrency_limit"))

    @classmethod
    def extraParameters(cls):
        return ("smtpd_recipient_overshoot_limit",)

    def check(self, scope):
        if self.limit < scope["smtpd_recipient_overshoot_limit"] and self.hostname == "refused.test":
            raise ValueError("limit below the overshoot")


def scope(text):
    return load("/etc/mta/mta.ini", "[main]\n" + text).main


def test_build_reads_each_declared_parameter_and_converts_it():
    settings = Example.build(scope("myhostname = mx.test\nsmtpd_noop_commands = xclient, Xforward\n"))
    assert settings == Example(hostname="mx.test", limit=1000, noop=frozenset({"XCLIENT", "XFORWARD"}), concurrency={})


def test_settings_are_frozen():
    settings = Example.build(scope("myhostname = mx.test\n"))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        settings.limit = 1


def test_a_pattern_collects_the_transport_named_parameters_set_but_not_the_default():
    settings = Example.build(scope(
        "default_destination_concurrency_limit = 5\nsmtp_destination_concurrency_limit = 7\n"
        "relay-out_destination_concurrency_limit = 2\n"
    ))
    assert settings.concurrency == {"smtp": 7, "relay-out": 2}


def test_parameters_lists_fields_and_extras():
    assert Example.parameters() == (
        "myhostname", "smtpd_recipient_limit", "smtpd_noop_commands", "smtpd_recipient_overshoot_limit",
    )
    assert [p.pattern for p in Example.patterns()] == [r"([a-z0-9][a-z0-9_-]*)_destination_concurrency_limit"]


def test_a_convert_error_names_the_parameter_and_its_line():
    @settingsClass
    class Picky(Settings):
        banner: str = setting("smtpd_banner", lambda text: text if "ESMTP" in text else _refuse())

    def _refuse():
        raise ValueError("the banner must say ESMTP")

    with pytest.raises(ConfigError) as info:
        Picky.build(scope("mail_name = x\nsmtpd_banner = hello\n"))
    assert str(info.value) == "/etc/mta/mta.ini:3: [main] smtpd_banner: the banner must say ESMTP"


def test_a_check_error_names_the_scope():
    with pytest.raises(ConfigError, match=r"^/etc/mta/mta.ini: \[main\]: limit below the overshoot$"):
        Example.build(scope("myhostname = refused.test\nsmtpd_recipient_limit = 10\n"))


def test_setting_takes_a_name_or_a_pattern():
    with pytest.raises(TypeError):
        setting()
    with pytest.raises(TypeError):
        setting("myhostname", pattern=re.compile("x"))


def test_compiled_is_read_only():
    compiled = compile(scope(""), {"example": Example})
    assert isinstance(compiled.example, Example)
    with pytest.raises(AttributeError):
        compiled.example = None


def test_load_compiles_main_and_every_listener():
    config = load("/etc/mta/mta.ini", (
        "[main]\nqueue_directory = /var/spool/mta\ndns_servers = 127.0.0.1:5353\n"
        "[listener:smtp]\nendpoint = tcp:port=25:interface=127.0.0.1\n"
        "[listener:submission]\nendpoint = tcp:port=587:interface=127.0.0.1\n"
    ))
    assert isinstance(config.settings, Compiled)
    assert config.settings.service == ServiceSettings(
        queueDirectory="/var/spool/mta", queueSyncMethod="syncfs", syslogName="mta", hostname=config["myhostname"], maillogFile="",
        dnsServers=("127.0.0.1:5353",), workerProcesses=0, serviceThrottleTime=60.0,
            anvilStore=None, anvilStorePasswordFile="",
    )
    assert [l.name for l in config.listeners] == ["smtp", "submission"]
    assert all(isinstance(l.settings, Compiled) for l in config.listeners)


def test_the_embedded_defaults_compile():
    config = load(None)
    assert config.settings.service.queueDirectory.endswith("var/spool/mta")
    assert len(config.listeners) == 1 and isinstance(config.listeners[0].settings, Compiled)
