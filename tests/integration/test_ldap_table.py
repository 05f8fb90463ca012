"""ldap: tables against a private OpenLDAP slapd on loopback, through the real reactor and a running mta.

Each slapd here is the test's own child: a slapd.conf in a temporary
directory, an mdb database there loaded with slapadd, listening on
ldap://127.0.0.1:PORT and on an ldapi:// socket in the same directory;
stopped at the end (never the system slapd).  Covered: real lookups
(several values, DN following with leaf attributes, domain, dynamic search
base), injection attempts that must match nothing, a simple bind with the
right and a wrong password, a server stopped (temporary error) and
restarted (works again with the same table), a server that never answers
(timeout), mta-config --check naming a bad file's line, and
check_recipient_access ldap:... in a running mta.
"""

import os
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from urllib.parse import quote

import pytest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest

from mta.tables import Tables, TableTemporaryError
from tests.integration.daemon import ROOT, Daemon, environment, freePort
from tests.integration.peers import waitFor
from tests.integration.peerservers import stopProcess

pytestmark = pytest.mark.integration

SLAPD = shutil.which("slapd") or "/usr/sbin/slapd"
SLAPADD = shutil.which("slapadd") or "/usr/sbin/slapadd"
SUFFIX = "dc=example,dc=com"
ROOTDN = f"cn=admin,{SUFFIX}"
ROOTPW = "s3cret-pw"

DATA = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=example.com,{SUFFIX}
objectClass: organizationalUnit
ou: example.com

dn: uid=alice,ou=example.com,{SUFFIX}
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: A
mail: alice@example.com

dn: uid=alice,ou=people,{SUFFIX}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: alice
cn: Alice
sn: A
mail: alice@example.com
mailRoutingAddress: alice@mailhost.example.com

dn: uid=bob,ou=people,{SUFFIX}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: bob
cn: Bob
sn: B
mail: bob@example.com
mail: robert@example.com
mailRoutingAddress: bob@mailhost.example.com

dn: uid=blocked,ou=people,{SUFFIX}
objectClass: inetOrgPerson
uid: blocked
cn: Blocked
sn: B
mail: blocked@example.com
description: REJECT listed in the directory

dn: uid=star*,ou=people,{SUFFIX}
objectClass: inetOrgPerson
objectClass: inetLocalMailRecipient
uid: star*
cn: Star
sn: S
mail: star*@example.com
mailRoutingAddress: literal-star@mailhost.example.com

dn: cn=team,ou=people,{SUFFIX}
objectClass: groupOfNames
objectClass: extensibleObject
cn: team
mail: team@example.com
member: uid=alice,ou=people,{SUFFIX}
member: uid=bob,ou=people,{SUFFIX}
"""


class Slapd:
    """A private slapd: its own config, database and sockets in a temporary directory."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="mta-slapd-")
        self.port = freePort()
        self.tlsPort = freePort()
        self.ca = makeCertificates(self.directory)
        self.socket = os.path.join(self.directory, "ldapi")
        self.process = None
        os.mkdir(os.path.join(self.directory, "db"))
        self.conf = os.path.join(self.directory, "slapd.conf")
        with open(self.conf, "w") as f:
            f.write(textwrap.dedent(f"""\
                include /etc/ldap/schema/core.schema
                include /etc/ldap/schema/cosine.schema
                include /etc/ldap/schema/inetorgperson.schema
                include /etc/ldap/schema/misc.schema
                modulepath /usr/lib/ldap
                moduleload back_mdb
                pidfile {self.directory}/slapd.pid
                argsfile {self.directory}/slapd.args
                database mdb
                maxsize 10485760
                suffix "{SUFFIX}"
                rootdn "{ROOTDN}"
                rootpw {ROOTPW}
                directory {self.directory}/db
                access to * by * read
                """).replace("database mdb", textwrap.dedent(f"""\
                TLSCACertificateFile {self.ca}
                TLSCertificateFile {self.directory}/server.pem
                TLSCertificateKeyFile {self.directory}/server.key
                database mdb""")))
        ldif = os.path.join(self.directory, "data.ldif")
        with open(ldif, "w") as f:
            f.write(DATA)
        done = subprocess.run([SLAPADD, "-f", self.conf, "-l", ldif], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr

    @property
    def url(self):
        return f"ldap://127.0.0.1:{self.port}"

    def start(self):
        self.log = open(os.path.join(self.directory, "slapd.log"), "wb")
        self.process = subprocess.Popen(
            [SLAPD, "-f", self.conf, "-h",
             f"{self.url}/ ldaps://127.0.0.1:{self.tlsPort}/ ldapi://{quote(self.socket, safe='')}/", "-d", "0"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

        def listening():
            if self.process.poll() is not None:
                raise AssertionError(f"slapd exited: {open(self.log.name).read()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        waitFor(listening, timeout=30, what="slapd")
        return self

    def stop(self):
        stopProcess(self.process)
        self.log.close()

    def remove(self):
        if self.process is not None:
            self.stop()
        shutil.rmtree(self.directory, True)


def makeCertificates(directory):
    """A test CA and a server certificate for 127.0.0.1 signed by it (openssl); the CA's path."""
    def run(*args):
        done = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=mta test LDAP CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj",
        "/CN=127.0.0.1")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out",
        "server.pem", "-days", "2", "-extfile", "san.ext")
    return os.path.join(directory, "ca.pem")


@pytest.fixture(scope="module")
def slapd():
    server = Slapd().start()
    yield server
    server.remove()


@pytest.fixture(autouse=True)
def _slapdOnClass(request, slapd):
    if request.cls is not None:
        request.cls.slapd = slapd


def writeConfig(directory, text, name="ldap.cf"):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    os.chmod(path, 0o600)
    return path


class LookupTests(unittest.TestCase):
    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="mta-ldap-cf-")
        self.addCleanup(shutil.rmtree, self.directory, True)
        self.tables = []

    @inlineCallbacks
    def tearDown(self):
        for table in self.tables:
            table.close()
        yield deferLater(reactor, 0.05, lambda: None)

    def table(self, text, name="ldap.cf"):
        table = Tables(reactor).open(f"ldap:{writeConfig(self.directory, text, name)}")
        self.tables.append(table)
        return table

    def people(self, extra=""):
        return self.table(textwrap.dedent(f"""\
            server_host = {self.slapd.url}
            search_base = ou=people, {SUFFIX}
            query_filter = (mail=%s)
            result_attribute = mailRoutingAddress
            version = 3
            bind = no
            """) + textwrap.dedent(extra))

    @inlineCallbacks
    def test_lookups_on_one_connection(self):
        table = self.people()
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mailhost.example.com")
        self.assertEqual((yield table.lookup("robert@example.com")), "bob@mailhost.example.com")
        self.assertEqual((yield table.lookup("ALICE@Example.COM")), "alice@mailhost.example.com")
        self.assertIsNone((yield table.lookup("nobody@example.com")))
        self.assertIsNone((yield table.lookup("team@example.com")))  # an entry without the attribute
        protocol = table._protocol
        self.assertEqual((yield table.lookup("bob@example.com")), "bob@mailhost.example.com")
        self.assertIs(table._protocol, protocol)

    @inlineCallbacks
    def test_injection_attempts_match_nothing(self):
        table = self.people()
        for key in ("*", "*@example.com", "alice@example.com)(mail=*", "*)(|(mail=*", "a\\2a", "x\x00y",
                    "(mail=*)"):
            self.assertIsNone((yield table.lookup(key)), key)
        # The starred entry is found by its own, literal name, and only by it.
        self.assertEqual((yield table.lookup("star*@example.com")), "literal-star@mailhost.example.com")

    @inlineCallbacks
    def test_several_values_joined_with_commas_and_result_format(self):
        table = self.table(f"""\
            server_host = {self.slapd.url}
            search_base = {SUFFIX}
            query_filter = (&(objectClass=inetLocalMailRecipient)(uid=%u))
            result_attribute = mail
            result_format = <%s>
            """)
        self.assertEqual(sorted((yield table.lookup("bob@anything")).split(",")),
                         ["<bob@example.com>", "<robert@example.com>"])

    @inlineCallbacks
    def test_group_members_followed_by_dn_with_leaf_attribute(self):
        table = self.people("""\
            result_attribute =
            special_result_attribute = member
            leaf_result_attribute = mail
            """)
        self.assertEqual(sorted((yield table.lookup("team@example.com")).split(",")),
                         ["alice@example.com", "bob@example.com", "robert@example.com"])
        limited = self.table(f"""\
            server_host = {self.slapd.url}
            search_base = {SUFFIX}
            query_filter = (mail=%s)
            result_attribute =
            special_result_attribute = member
            leaf_result_attribute = mail
            expansion_limit = 2
            """, name="limited.cf")
        with self.assertRaises(TableTemporaryError) as info:
            yield limited.lookup("team@example.com")
        self.assertIn("expansion limit", str(info.exception))

    @inlineCallbacks
    def test_dynamic_search_base_and_domain(self):
        table = self.table(f"""\
            server_host = {self.slapd.url}
            search_base = ou=%d, {SUFFIX}
            query_filter = (uid=%u)
            result_attribute = mail
            domain = example.com, example.org
            scope = one
            """)
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@example.com")
        # No such base for this domain: not found, not an error.
        self.assertIsNone((yield table.lookup("alice@example.org")))
        self.assertIsNone((yield table.lookup("alice@example.net")))  # not in domain: no search
        self.assertIsNone((yield table.lookup("alice")))

    @inlineCallbacks
    def test_static_search_base_missing_is_temporary(self):
        table = self.table(f"""\
            server_host = {self.slapd.url}
            search_base = ou=absent, {SUFFIX}
            query_filter = (mail=%s)
            """)
        with self.assertRaises(TableTemporaryError):
            yield table.lookup("alice@example.com")

    @inlineCallbacks
    def test_ldapi_socket(self):
        table = self.people(f"server_host = ldapi://{quote(self.slapd.socket, safe='')}\n")
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mailhost.example.com")

    @inlineCallbacks
    def test_start_tls_verified_and_ldaps(self):
        table = self.people(f"start_tls = yes\ntls_require_cert = yes\ntls_ca_cert_file = {self.slapd.ca}\n"
                            f"bind = yes\nbind_dn = {ROOTDN}\nbind_pw = {ROOTPW}\n")
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mailhost.example.com")
        self.assertTrue(table._protocol.transport.TLS)
        ldaps = self.table(f"""\
            server_host = ldaps://127.0.0.1:{self.slapd.tlsPort}
            search_base = {SUFFIX}
            query_filter = (mail=%s)
            result_attribute = mailRoutingAddress
            tls_require_cert = yes
            tls_ca_cert_file = {self.slapd.ca}
            """, name="ldaps.cf")
        self.assertEqual((yield ldaps.lookup("bob@example.com")), "bob@mailhost.example.com")
        untrusted = self.table(f"""\
            server_host = ldaps://127.0.0.1:{self.slapd.tlsPort}
            search_base = {SUFFIX}
            tls_require_cert = yes
            tls_ca_cert_file = {makeCertificates(self.directory)}
            """, name="untrusted.cf")
        with self.assertRaises(TableTemporaryError) as info:
            yield untrusted.lookup("bob@example.com")
        self.assertIn("TLS handshake failed", str(info.exception))

    @inlineCallbacks
    def test_start_tls_with_an_untrusted_certificate_is_temporary(self):
        other = tempfile.mkdtemp(prefix="mta-ldap-ca-")
        self.addCleanup(shutil.rmtree, other, True)
        strangerCa = makeCertificates(other)
        table = self.people(f"start_tls = yes\ntls_require_cert = yes\ntls_ca_cert_file = {strangerCa}\n"
                            "timeout = 5\n")
        started = time.monotonic()
        with self.assertRaises(TableTemporaryError) as info:
            yield table.lookup("alice@example.com")
        self.assertIn("TLS handshake failed", str(info.exception))
        self.assertIn("certificate verify failed", str(info.exception))
        self.assertLess(time.monotonic() - started, 4)  # the handshake failed; no timeout
        # Unverified TLS (tls_require_cert = no, Postfix's default) still encrypts.
        unverified = self.people("start_tls = yes\n")
        self.assertEqual((yield unverified.lookup("alice@example.com")), "alice@mailhost.example.com")

    @inlineCallbacks
    def test_first_server_down_then_second(self):
        table = self.people(f"server_host = ldap://127.0.0.1:{freePort()} {self.slapd.url}\n")
        self.assertEqual((yield table.lookup("alice@example.com")), "alice@mailhost.example.com")

    @inlineCallbacks
    def test_bind_right_and_wrong_password(self):
        good = self.people(f"bind = yes\nbind_dn = {ROOTDN}\nbind_pw = {ROOTPW}\n")
        self.assertEqual((yield good.lookup("alice@example.com")), "alice@mailhost.example.com")
        bad = self.table(f"""\
            server_host = {self.slapd.url}
            search_base = {SUFFIX}
            query_filter = (mail=%s)
            bind = yes
            bind_dn = {ROOTDN}
            bind_pw = wrong
            """, name="bad.cf")
        with self.assertRaises(TableTemporaryError) as info:
            yield bad.lookup("alice@example.com")
        self.assertIn("bind as", str(info.exception))
        self.assertIn("failed: 49", str(info.exception))

    @inlineCallbacks
    def test_server_that_never_answers_times_out(self):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        self.addCleanup(listener.close)
        accepted = []
        threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
        table = self.table(f"""\
            server_host = ldap://127.0.0.1:{listener.getsockname()[1]}
            search_base = {SUFFIX}
            bind = no
            timeout = 1
            """, name="silent.cf")
        started = time.monotonic()
        with self.assertRaises(TableTemporaryError) as info:
            yield table.lookup("alice@example.com")
        self.assertIn("timeout", str(info.exception))
        self.assertLess(time.monotonic() - started, 10)
        for conn, _ in accepted:
            conn.close()


class RestartTests(unittest.TestCase):
    """A slapd of its own, stopped and started under one table."""

    @inlineCallbacks
    def test_stopped_is_temporary_and_restarted_works(self):
        server = Slapd().start()
        self.addCleanup(server.remove)
        directory = tempfile.mkdtemp(prefix="mta-ldap-cf-")
        self.addCleanup(shutil.rmtree, directory, True)
        table = Tables(reactor).open("ldap:" + writeConfig(directory, f"""\
            server_host = {server.url}
            search_base = {SUFFIX}
            query_filter = (mail=%s)
            result_attribute = mailRoutingAddress
            bind = yes
            bind_dn = {ROOTDN}
            bind_pw = {ROOTPW}
            timeout = 5
            """))
        try:
            self.assertEqual((yield table.lookup("alice@example.com")), "alice@mailhost.example.com")
            server.stop()
            with self.assertRaises(TableTemporaryError):
                yield table.lookup("alice@example.com")
            server.start()
            self.assertEqual((yield table.lookup("alice@example.com")), "alice@mailhost.example.com")
        finally:
            table.close()
            yield deferLater(reactor, 0.05, lambda: None)


def test_mta_config_check_names_the_bad_line(tmp_path):
    table = writeConfig(str(tmp_path), "server_host = ldap://127.0.0.1\n# fine so far\nscope = everywhere\n")
    config = tmp_path / "mta.ini"
    config.write_text(f"[main]\nvirtual_alias_maps = ldap:{table}\n")
    done = subprocess.run([sys.executable, "-m", "mta.cli.config", "-c", str(config), "--check"], cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"{table}:3: scope: unsupported value 'everywhere'" in done.stderr


def rcpt(daemon, recipient):
    with smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="client.example", timeout=60) as client:
        client.ehlo()
        client.mail("sender@example.org")
        code, text = client.rcpt(recipient)
        client.rset()
        return code, text.decode()


def test_check_recipient_access_in_a_running_mta(tmp_path):
    server = Slapd().start()
    try:
        table = writeConfig(str(tmp_path), f"""\
            server_host = {server.url}
            search_base = {SUFFIX}
            query_filter = (mail=%s)
            result_attribute = description
            bind = no
            timeout = 5
            """)
        d = Daemon(tmp_path, hold=False, main=f"""\
            smtpd_recipient_restrictions = check_recipient_access ldap:{table},
                check_recipient_access static:HOLD, permit_mynetworks, reject_unauth_destination
            """).start()
        try:
            code, text = rcpt(d, "blocked@example.com")
            assert code == 554 and "listed in the directory" in text, (code, text)
            code, text = rcpt(d, "alice@example.com")
            assert code == 250, (code, text)
            code, text = rcpt(d, "*@example.com")
            assert code == 250, (code, text)  # the key is escaped: no wildcard match on blocked@
            server.stop()
            code, text = rcpt(d, "blocked@example.com")
            assert 400 <= code < 500, (code, text)  # the directory is down: try again later, never accept
        finally:
            code, out, err = d.stop()
        assert code == 0 and "Traceback" not in out + err, out + err
    finally:
        server.remove()
