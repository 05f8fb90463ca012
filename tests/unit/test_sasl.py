"""mta.sasl: mechanisms, security options, password hashes, the builtin backend; SaslSettings."""

import pytest
from argon2 import PasswordHasher
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail, succeed
from twisted.internet.task import Clock

from mta.config import ConfigError, load
from mta.config.types import TableSpec
from mta.sasl import Challenge, Failure, Mechanism, Success, allowed
from mta.sasl.builtin import BuiltinBackend, PasswordTableChecker
from mta.sasl.mechanisms import LoginExchange, PlainExchange
from mta.sasl.passwords import checkPassword, dummyCheck, hashPassword, isHash
from mta.tables import TableTemporaryError

FAST = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def result(d):
    out = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


class DictTable:
    def __init__(self, entries):
        self.entries = entries
        self.keys = []

    def lookup(self, key):
        self.keys.append(key)
        return succeed(self.entries.get(key))


class DownTable:
    def lookup(self, key):
        return fail(TableTemporaryError("down"))


# -- security options -----------------------------------------------------------------------

MECHS = (Mechanism("PLAIN", frozenset({"plaintext"})), Mechanism("ANONYMOUS", frozenset({"anonymous"})),
         Mechanism("CRAM-MD5", frozenset({"dictionary"})), Mechanism("SCRAM-SHA-256", frozenset({"mutual-auth"})))


@pytest.mark.parametrize("options, expected", [
    ((), ("PLAIN", "ANONYMOUS", "CRAM-MD5", "SCRAM-SHA-256")),
    (("noanonymous",), ("PLAIN", "CRAM-MD5", "SCRAM-SHA-256")),
    (("noanonymous", "noplaintext"), ("CRAM-MD5", "SCRAM-SHA-256")),
    (("nodictionary",), ("PLAIN", "ANONYMOUS", "SCRAM-SHA-256")),
    (("mutual_auth",), ("SCRAM-SHA-256",)),
])
def test_security_options(options, expected):
    assert allowed(MECHS, frozenset(options)) == expected


# -- mechanisms -----------------------------------------------------------------------------


def verifier(calls):
    def verify(user, password):
        calls.append((user, password))
        return succeed(Success(user) if password == "pw" else Failure())

    return verify


def test_plain():
    calls = []
    ex = PlainExchange(verifier(calls))
    assert result(ex.step(None)) == Challenge(b"")
    assert result(ex.step(b"\0alice\0pw")) == Success("alice")
    assert calls == [("alice", "pw")]
    assert result(ex.step(b"\0alice\0pw")) == Failure()  # once only


@pytest.mark.parametrize("response", [b"alice\0pw", b"\0\0pw", b"x\0alice\0pw", b"\0al\xffice\0pw",
                                      b"\0alice\0pw\0more", b"", b"\0" + b"a" * 256 + b"\0pw"])
def test_plain_malformed_fails_like_a_wrong_password(response):
    calls = []
    assert result(PlainExchange(verifier(calls)).step(response)) == Failure()
    assert calls == []


def test_login():
    calls = []
    ex = LoginExchange(verifier(calls))
    assert result(ex.step(None)) == Challenge(b"Username:")
    assert result(ex.step(b"alice")) == Challenge(b"Password:")
    assert result(ex.step(b"pw")) == Success("alice")
    ex = LoginExchange(verifier(calls))
    assert result(ex.step(b"bob")) == Challenge(b"Password:")  # the initial response is the user name
    assert result(ex.step(b"nope")) == Failure()
    assert result(LoginExchange(verifier(calls)).step(b"")) == Failure()


# -- passwords ------------------------------------------------------------------------------


def test_hashes_are_salted_argon2id():
    a, b = hashPassword("pw", FAST), hashPassword("pw", FAST)
    assert a != b and a.startswith("$argon2id$") and isHash(a)
    assert checkPassword(a, "pw") and checkPassword(b, "pw")
    assert not checkPassword(a, "pW")


@pytest.mark.parametrize("stored", ["pw", "", "$1$salt$x", "5f4dcc3b5aa765d61d8327deb882cf99", "$argon2id$garbage"])
def test_anything_but_an_argon2_hash_never_matches(stored):
    assert not checkPassword(stored, "pw")
    assert not checkPassword(stored, stored)


def test_dummy_check():
    assert dummyCheck("anything") is False


# -- the builtin backend ----------------------------------------------------------------------


def test_checker_spends_the_same_work_on_an_unknown_user():
    work = []

    def runInThread(f, *args):
        work.append(f.__name__)
        return succeed(f(*args))

    table = DictTable({"alice@example.org": hashPassword("pw", FAST)})
    checker = PasswordTableChecker(table, runInThread)
    assert result(checker.requestAvatarId(UsernamePassword("alice@example.org", "pw"))) == "alice@example.org"
    wrong = result(checker.requestAvatarId(UsernamePassword("alice@example.org", "x")))
    unknown = result(checker.requestAvatarId(UsernamePassword("nobody@example.org", "x")))
    assert wrong.check(UnauthorizedLogin) and unknown.check(UnauthorizedLogin)
    assert work == ["checkPassword", "checkPassword", "dummyCheck"]


def test_realm_completes_a_bare_user_name():
    table = DictTable({"bob@example.org": hashPassword("pw", FAST)})
    backend = BuiltinBackend(table, Clock(), realm="example.org")
    ex = backend.start("PLAIN", None)
    assert result(ex.step(b"\0bob\0pw")) == Success("bob@example.org")
    ex = backend.start("PLAIN", None)
    result(ex.step(b"\0bob@other.example\0pw"))
    assert table.keys == ["bob@example.org", "bob@other.example"]


def test_a_table_that_cannot_answer_is_a_temporary_failure():
    ex = BuiltinBackend(DownTable(), Clock()).start("LOGIN", None)
    ex.step(b"alice")
    assert result(ex.step(b"pw")) == Failure("Temporary lookup failure", temporary=True)


def test_backend_offers_plain_and_login_only():
    backend = BuiltinBackend(DictTable({}), Clock())
    assert [m.name for m in result(backend.mechanisms())] == ["PLAIN", "LOGIN"]
    assert backend.start("CRAM-MD5", None) is None


# -- settings -------------------------------------------------------------------------------


def sasl(text):
    return load("<test>", "[main]\n" + text).listeners[0].settings.sasl


def test_settings_defaults():
    s = sasl("queue_directory = /var/spool/mta\n")
    assert (s.enabled, s.type, s.tlsAuthOnly, s.responseLimit, s.service) == (False, "dovecot", False, 12288, "smtp")
    assert s.securityOptions == s.tlsSecurityOptions == frozenset({"noanonymous"})
    assert s.socket == ("unix", "/var/spool/mta/private/auth")


@pytest.mark.parametrize("path, socket", [
    ("inet:127.0.0.1:12345", ("inet", "127.0.0.1", 12345)),
    ("inet:[::1]:12345", ("inet", "::1", 12345)),
    ("/run/dovecot/auth-client", ("unix", "/run/dovecot/auth-client")),
    ("unix:/run/auth", ("unix", "/run/auth")),
])
def test_dovecot_paths(path, socket):
    assert sasl(f"smtpd_sasl_auth_enable = yes\nsmtpd_sasl_path = {path}\n").socket == socket


def test_builtin_table():
    s = sasl("smtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\nsmtpd_sasl_path = texthash:/etc/mta/sasl_passwd\n")
    assert s.table == TableSpec("texthash", "/etc/mta/sasl_passwd") and s.socket is None


@pytest.mark.parametrize("text, match", [
    ("smtpd_sasl_type = builtin\n", "builtin needs a table"),
    ("smtpd_sasl_path = texthash:/x\n", "dovecot needs a socket"),
    ("smtpd_sasl_path = inet:127.0.0.1:99999\n", "dovecot needs a socket"),
    ("smtpd_sasl_security_options = noanonymous, nosuch\n", "nosuch"),
    ("smtpd_sasl_type = cyrus\n", "cyrus"),
])
def test_bad_settings_fail_at_load_with_the_line(text, match):
    with pytest.raises(ConfigError, match=match) as info:
        sasl("smtpd_sasl_auth_enable = yes\n" + text)
    assert str(info.value).count("smtpd_") >= 1 and "embedded defaults: embedded" not in str(info.value)


def test_tls_security_options_follow_the_plaintext_ones():
    s = sasl("smtpd_sasl_security_options = noanonymous, noplaintext\n")
    assert s.tlsSecurityOptions == frozenset({"noanonymous", "noplaintext"})


def test_check_opens_the_builtin_table(tmp_path):
    from mta.config import openTables
    from mta.tables import Tables

    config = load("<test>", "[main]\nsmtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n"
                  f"smtpd_sasl_path = texthash:{tmp_path}/missing\n")
    with pytest.raises(ConfigError, match="smtpd_sasl_path"):
        openTables(config, Tables(Clock()))


def test_a_type_and_path_mismatch_names_the_line(tmp_path):
    path = tmp_path / "mta.ini"
    path.write_text("[main]\nsmtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = builtin\n")
    with pytest.raises(ConfigError, match=r"mta.ini:3: .*smtpd_sasl_type"):
        load(str(path))


def test_logout_forgets_the_login():
    from mta.smtpd.session import SessionState

    s = SessionState(protocol="ESMTP", saslUsername="alice", saslMethod="PLAIN")
    assert s.receivedProtocol() == "ESMTPA"
    s.logout()
    assert (s.saslUsername, s.saslMethod, s.receivedProtocol()) == (None, None, "ESMTP")
