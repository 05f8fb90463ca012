"""smtp_dns_support_level, smtp_tls_dane_insecure_mx_policy and the dane / dane-only levels at load."""

import pytest

from mta.config import ConfigError, load


def settings(text, lmtp=False):
    s = load("/etc/mta/mta.ini", "[main]\n" + text).settings
    return s.lmtpClient if lmtp else s.smtpClient


def test_dns_support_level_default_follows_disable_dns_lookups():
    assert settings("").dnsSupportLevelEffective == "enabled" and not settings("").dnssec
    s = settings("disable_dns_lookups = yes\n")
    assert s.dnsSupportLevelEffective == "disabled" and s.dnsDisabled
    # a non-empty level overrides the legacy parameter (Postfix's post_init())
    s = settings("disable_dns_lookups = yes\nsmtp_dns_support_level = dnssec\n")
    assert s.dnssec and not s.dnsDisabled
    assert settings("smtp_dns_support_level = disabled\n").dnsDisabled


def test_lmtp_twin():
    s = settings("lmtp_dns_support_level = dnssec\n", lmtp=True)
    assert s.dnssec and not settings("lmtp_dns_support_level = dnssec\n").dnssec


def test_dane_with_dnssec_is_a_real_level():
    tls = settings("smtp_dns_support_level = dnssec\nsmtp_tls_security_level = dane\n").tls
    assert tls.level == "dane" and tls.daneProblem == "" and tls.insecureMxPolicy == "dane"
    tls = settings("smtp_dns_support_level = dnssec\nsmtp_tls_security_level = dane-only\n").tls
    assert tls.level == "dane-only" and tls.required and tls.insecureMxPolicy == "may"


def test_dane_without_dnssec_is_may_with_postfix_s_warning():
    tls = settings("smtp_tls_security_level = dane\n").tls
    assert tls.level == "may" and tls.configuredLevel == "dane" and not tls.required
    assert tls.daneProblem == "dane configured with dnssec lookups disabled"


def test_dane_only_without_dnssec_stays_dane_only_and_will_defer():
    tls = settings("smtp_tls_security_level = dane-only\n").tls
    assert tls.level == "dane-only" and tls.required
    assert tls.daneProblem == "dane-only configured with dnssec lookups disabled"


@pytest.mark.parametrize("text, problem", [
    ("ignore_mx_lookup_error = yes\n", "dane configured with MX lookup errors ignored"),
    ("smtp_host_lookup = native\n", "dane configured with dnssec lookups disabled"),
])
def test_other_dane_configuration_problems(text, problem):
    tls = settings("smtp_dns_support_level = dnssec\nsmtp_tls_security_level = dane\n" + text).tls
    assert tls.level == "may" and tls.daneProblem == problem


@pytest.mark.parametrize("value", ["may", "encrypt", "dane"])
def test_insecure_mx_policy_explicit(value):
    tls = settings(f"smtp_dns_support_level = dnssec\nsmtp_tls_security_level = dane\n"
                   f"smtp_tls_dane_insecure_mx_policy = {value}\n").tls
    assert tls.insecureMxPolicy == value


def test_bad_values_fail_at_load_with_file_and_line():
    with pytest.raises(ConfigError, match=r"mta.ini:2: .*smtp_dns_support_level"):
        settings("smtp_dns_support_level = yes\n")
    with pytest.raises(ConfigError, match=r"mta.ini:2: .*smtp_tls_dane_insecure_mx_policy"):
        settings("smtp_tls_dane_insecure_mx_policy = verify\n")
