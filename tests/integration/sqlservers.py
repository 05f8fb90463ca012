"""Private PostgreSQL and MariaDB servers for the SQL table tests, started as children.

Each lives in its own temporary directory (data, socket, log), listens on
127.0.0.1 at a free port and is stopped at the end.  Both refuse to run as
root: run as root (as CI is), the directory is given to the postgres or
mysql system user (created by the Debian packages scripts/test installs)
and the server runs as that user (postgres through a setuid in the child,
mariadbd with its own --user).  stop() and start() again keep the data, for
the restart tests.
"""

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile

from tests.integration.peerservers import freePort, stopProcess, waitFor

PG_BIN = "/usr/lib/postgresql"


def _pgBinary(name):
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(os.listdir(PG_BIN), key=lambda v: int(v) if v.isdigit() else 0) if os.path.isdir(PG_BIN) else []
    for version in reversed(versions):
        path = os.path.join(PG_BIN, version, "bin", name)
        if os.path.exists(path):
            return path
    raise AssertionError(f"{name} missing: scripts/test installs postgresql")


def _listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _dropTo(user):
    """preexec_fn: become C{user} when running as root (else None: run as we are)."""
    if os.getuid() != 0:
        return None
    entry = pwd.getpwnam(user)

    def drop():
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return drop


def _chownTree(path, user):
    if os.getuid() != 0:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


class Postgres:
    """postgres -D dir -k dir -h 127.0.0.1 -p PORT; superuser 'postgres', trust on the socket, md5 on TCP."""

    SUPERUSER = "postgres"

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="mta-pgsql-")
        os.chmod(self.directory, 0o755)
        self.data = os.path.join(self.directory, "data")
        self.port = freePort()
        self.process = None
        self.logPath = os.path.join(self.directory, "postgres.log")
        _chownTree(self.directory, "postgres")
        pwfile = os.path.join(self.directory, "pw")
        with open(pwfile, "w") as f:
            f.write("superpw\n")
        _chownTree(self.directory, "postgres")
        subprocess.run(
            [_pgBinary("initdb"), "-D", self.data, "-U", self.SUPERUSER, "--pwfile", pwfile,
             "--auth-local=trust", "--auth-host=md5", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, timeout=120, preexec_fn=_dropTo("postgres"))

    def start(self):
        log = open(self.logPath, "ab")
        self.process = subprocess.Popen(
            [_pgBinary("postgres"), "-D", self.data, "-k", self.directory, "-h", "127.0.0.1",
             "-p", str(self.port), "-c", "fsync=off", "-c", "max_connections=40"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_dropTo("postgres"), start_new_session=True)
        log.close()

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"postgres exited: {self.logText()}")
            return _listening(self.port) and os.path.exists(os.path.join(self.directory, f".s.PGSQL.{self.port}"))

        waitFor(ready, timeout=60, what="postgres")
        return self

    def stop(self):
        # SIGINT is PostgreSQL's fast shutdown: sessions are ended at once.
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                stopProcess(self.process)
        self.process = None

    def remove(self):
        self.stop()
        shutil.rmtree(self.directory, True)

    def _family(self):
        """The postmaster and its children (each backend is in a session of its own)."""
        pids = [self.process.pid]
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.process.pid:
                pids.append(int(entry))
        return pids

    def freeze(self):
        """SIGSTOP the server: connections stay open, nothing answers (a hung server)."""
        for pid in self._family():
            os.kill(pid, signal.SIGSTOP)

    def thaw(self):
        for pid in self._family():
            os.kill(pid, signal.SIGCONT)

    def logText(self):
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def connect(self, dbname="postgres"):
        import psycopg2

        conn = psycopg2.connect(host=self.directory, port=self.port, user=self.SUPERUSER, dbname=dbname)
        conn.autocommit = True
        return conn

    def execute(self, statements, dbname="postgres"):
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()


class Mariadb:
    """mariadbd --datadir --socket --port --bind-address=127.0.0.1; root through the socket."""

    def __init__(self):
        self.directory = tempfile.mkdtemp(prefix="mta-mysql-")
        os.chmod(self.directory, 0o755)
        self.data = os.path.join(self.directory, "data")
        self.socket = os.path.join(self.directory, "mysqld.sock")
        self.port = freePort()
        self.process = None
        self.logPath = os.path.join(self.directory, "mariadbd.log")
        self.user = "mysql" if os.getuid() == 0 else pwd.getpwuid(os.getuid()).pw_name
        _chownTree(self.directory, self.user)
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None:
            raise AssertionError("mariadb-install-db missing: scripts/test installs mariadb-server")
        subprocess.run(
            [install, "--no-defaults", f"--datadir={self.data}", f"--user={self.user}",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True, timeout=300)

    def start(self):
        binary = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"
        log = open(self.logPath, "ab")
        self.process = subprocess.Popen(
            [binary, "--no-defaults", f"--datadir={self.data}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--user={self.user}",
             f"--pid-file={os.path.join(self.directory, 'mariadbd.pid')}", "--skip-name-resolve",
             "--innodb-buffer-pool-size=16M", "--skip-log-bin", "--max-connections=40"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def ready():
            if self.process.poll() is not None:
                raise AssertionError(f"mariadbd exited: {self.logText()}")
            return _listening(self.port) and os.path.exists(self.socket)

        waitFor(ready, timeout=90, what="mariadbd")
        return self

    def stop(self):
        stopProcess(self.process, timeout=60)
        self.process = None

    def remove(self):
        self.stop()
        shutil.rmtree(self.directory, True)

    def logText(self):
        try:
            with open(self.logPath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def execute(self, statements, database=None):
        import pymysql

        conn = pymysql.connect(unix_socket=self.socket, user="root", database=database, autocommit=True)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()
