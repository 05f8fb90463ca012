"""mta.cli.tls - mta tls: server keys, self-signed certificates, DANE TLSA records (postfix tls).

SYNOPSIS
    mta [-c FILE] tls new-server-key [-a|-t rsa|ecdsa] [-b bits] [-d days] [--force] [--owner USER]
                                     [hostname...]
    mta [-c FILE] tls new-server-cert [-a|-t rsa|ecdsa] [-b bits] [-d days] [--force] [--owner USER]
                                      [hostname...]
    mta [-c FILE] tls output-server-tlsa [-h hostname] [file|rsa|ecdsa...]

DESCRIPTION
    new-server-key   postfix tls new-server-key: a new private key (rsa
                     2048 by default; -b is the RSA size, or for ecdsa the
                     curve: secp256r1 by default, secp384r1, secp521r1) and
                     a self-signed certificate for it (mta.tlskeys: CN and
                     SAN dNSName the first hostname, default $myhostname;
                     every hostname a SAN; valid -d days, default 36525 as
                     Postfix's "100 years").  Where they go:
                       * smtpd_tls_key_file / smtpd_tls_cert_file when set
                         (the key defaults to the certificate file, as in
                         Postfix: then key and certificate share one file,
                         mode 0600);
                       * otherwise, and whenever smtpd_tls_chain_files is
                         set, new files in the configuration file's
                         directory, named as postfix tls names them:
                         key-YYYYmmdd-HHMMSS.pem and cert-....pem (ecdsa:
                         eckey-, eccert-), UTC; the [main] lines to add are
                         printed (mta cannot rewrite the INI file).
                     It then prints the key's TLSA record.
    new-server-cert  postfix tls new-server-cert: the same, but for the
                     private key already configured (smtpd_tls_key_file, or
                     the first key of the type in smtpd_tls_chain_files),
                     so that DANE "3 1 1" records stay valid; a new key
                     only when none is configured (or the configured file
                     does not exist, with a warning).
    output-server-tlsa
                     postfix tls output-server-tlsa: for each key, a line
                     "; FILE" and its record "_25._tcp.HOST. IN TLSA 3 1 1
                     HEX" (the SHA2-256 of the DER SubjectPublicKeyInfo).
                     HOST is -h or $myhostname.  FILE may hold a private key
                     or, failing that, a certificate; rsa and ecdsa name the
                     configured keys of that type; no argument: every
                     configured key (smtpd_tls_chain_files when set, else
                     smtpd_tls_key_file).

    Existing files are never overwritten without --force, which replaces
    them atomically.  Results go to stdout, errors to stderr, one line each,
    exit status 1; never a traceback.

SECURITY
    Keys are created mode 0600 with O_EXCL and O_NOFOLLOW (mta.tlskeys).
    Host names from the command line or myhostname must be DNS names.  Run
    as root, the files belong to root: a daemon that runs as another user
    (etc/mta.service: User=mta) cannot read the key, so --owner mta gives
    the new files to that user (fchown before the key is written; the
    command reminds you when root runs it without).

CONFIGURATION
    myhostname; smtpd_tls_cert_file, smtpd_tls_key_file (default
    $smtpd_tls_cert_file), smtpd_tls_chain_files, smtpd_tls_security_level
    (the hint to set it to may when it is not).  The configuration is found
    as every program finds it (mta.config.findConfig).  The five TLS
    parameters (TLS_PARAMETERS) are read by TlsConfig.tlsParameter(): from
    the file's own [main] lines (with $name expansion), which the loader is
    not shown, else the schema's default.  The loader is not shown them
    because TlsSettings checks at load that the certificate and key files
    exist and match, and new-server-key is there to create them.  The rest
    of the file is loaded and checked as always.
    Relative file names are taken from the working directory.

DEVIATIONS
    postfix tls never writes the deployed files: new-server-key and
    new-server-cert always make new time-stamped files and deploy-server-cert
    sets the parameters with postconf -e.  mta writes the files that
    smtpd_tls_key_file and smtpd_tls_cert_file name when they are set (the
    running daemon uses them after mta reload), and otherwise prints the
    [main] lines to add, because it cannot rewrite an INI file without losing
    its comments and layout; there is no deploy-server-cert, enable-server,
    enable-client or output-server-csr.  Relative key files given to
    output-server-tlsa are taken from the working directory, not from the
    configuration directory.  -t is accepted as well as Postfix's -a, -d sets
    the validity (Postfix: always 36525 days), and an ecdsa key found in
    smtpd_tls_key_file is reused by new-server-cert without -a ecdsa.
"""

import datetime
import os
import re
import sys
import time

import attrs

from mta import tlskeys
from mta.config import ConfigError, Scope, findConfig, load, loadConfig, readIni
from mta.config.schema import parameter
from mta.maillog import sanitize
from mta.tlskeys import TlsKeyError

PROG = "mta"

# The TLS parameters this command reads from the file itself, kept from the loader
# (whose TlsSettings would refuse a certificate file that new-server-key is to create).
TLS_PARAMETERS = ("smtpd_tls_cert_file", "smtpd_tls_key_file", "smtpd_tls_chain_files",
                  "smtpd_tls_security_level", "smtpd_tls_wrappermode")

SUBCOMMANDS = {
    "new-server-key": "create a new private key and a self-signed certificate (postfix tls new-server-key)",
    "new-server-cert": "create a new self-signed certificate for the configured key (postfix tls new-server-cert)",
    "output-server-tlsa": "print the DANE TLSA records of the server's keys (postfix tls output-server-tlsa)",
}


def addParser(commands):
    """Add the tls command (and its subcommands) to mta's subparsers C{commands}."""
    tls = commands.add_parser("tls", help="server keys, self-signed certificates, TLSA records (postfix tls)",
                              description="Manage the SMTP server's TLS keys and certificates, as postfix tls does.")
    sub = tls.add_subparsers(dest="tlsCommand", metavar="SUBCOMMAND")
    for name in ("new-server-key", "new-server-cert"):
        p = sub.add_parser(name, help=SUBCOMMANDS[name], description=SUBCOMMANDS[name] + ".")
        p.add_argument("-a", "-t", "--type", dest="keyType", choices=tlskeys.KEY_TYPES,
                       help="key algorithm (default rsa; new-server-cert: the configured key's)")
        p.add_argument("-b", "--bits", dest="bits",
                       help="RSA key size (default 2048), or the ECDSA curve (default secp256r1)")
        p.add_argument("-d", "--days", dest="days", type=int, default=tlskeys.CERT_DAYS,
                       help=f"days the certificate is valid (default {tlskeys.CERT_DAYS})")
        p.add_argument("--force", action="store_true", help="replace existing files")
        p.add_argument("--owner", metavar="USER[:GROUP]",
                       help="give the new files to this user (e.g. the daemon's user, mta; needs root)")
        p.add_argument("-c", "--config", dest="tlsConfig", metavar="FILE", help="as mta -c")
        p.add_argument("hostnames", nargs="*", metavar="hostname",
                       help="names for the certificate (default: $myhostname)")
    p = sub.add_parser("output-server-tlsa", help=SUBCOMMANDS["output-server-tlsa"], add_help=False,
                       description=SUBCOMMANDS["output-server-tlsa"] + ".")
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("-h", "--host", dest="hostname", help="the host name in the records (default: $myhostname)")
    p.add_argument("-c", "--config", dest="tlsConfig", metavar="FILE", help="as mta -c")
    p.add_argument("files", nargs="*", metavar="file",
                   help="files with a private key or a certificate, or rsa / ecdsa (default: the configured keys)")
    return tls


# -- the configuration, with the TLS parameters read apart from the loader ------------------


class TlsConfig:
    """The loaded configuration, and the file's [main] entries of the TLS parameters (kept from the loader)."""

    def __init__(self, config, pending):
        self.config = config
        self.pending = pending

    @property
    def directory(self):
        return os.path.dirname(self.config.path) if self.config.path else None

    def hostname(self):
        return self.config.settings.service.hostname

    def tlsParameter(self, name):
        """
        The expanded value of TLS parameter C{name} in [main] ("" when not
        set): the file's own line, else the schema's default (see
        CONFIGURATION).
        """
        try:
            if name in self.pending:
                return Scope(tuple(self.pending.values()), parent=self.config.main).expanded(name).strip()
            if parameter(name) is not None:
                return self.config.main.expanded(name).strip()
            return ""
        except ValueError as e:
            where = self.pending[name].location if name in self.pending else self.config.main.where(name)
            raise ConfigError(f"{where}: {e}") from None

    def certFile(self):
        return self.tlsParameter("smtpd_tls_cert_file")

    def keyFile(self):
        """smtpd_tls_key_file, whose default is $smtpd_tls_cert_file (Postfix)."""
        return self.tlsParameter("smtpd_tls_key_file") or self.certFile()

    def chainFiles(self):
        return tuple(f for f in re.split(r"[\s,]+", self.tlsParameter("smtpd_tls_chain_files")) if f)

    def securityLevel(self):
        return self.tlsParameter("smtpd_tls_security_level")


def loadTlsConfig(explicit):
    """
    loadConfig(C{explicit}), with the lines that set TLS_PARAMETERS kept
    from the loader (they are read by TlsConfig.tlsParameter instead): the
    schema may not declare them yet, and a check at load that the key and
    certificate files exist must not stop the command that creates them.
    """
    found = findConfig(explicit)
    if found.path is None or not os.path.isfile(found.path):
        return TlsConfig(loadConfig(explicit), {})  # the embedded defaults, or loadConfig's own error
    sections = readIni(found.path)
    unknown = [(section, entry) for section in sections for entry in section.entries
               if entry.key in TLS_PARAMETERS]
    if not unknown:
        return TlsConfig(loadConfig(explicit), {})
    with open(found.path, encoding="utf-8-sig") as f:
        lines = f.read().split("\n")
    for _, entry in unknown:
        number = entry.location.line - 1
        lines[number] = ""
        for following in range(number + 1, len(lines)):  # its continuation lines
            text = lines[following]
            if not text.strip() or text.strip()[0] in "#;":
                continue
            if text[0] not in " \t":
                break
            lines[following] = ""
    config = attrs.evolve(load(found.path, text="\n".join(lines)), source=found.source)
    return TlsConfig(config, {e.key: e for s, e in unknown if s.name == "main"})


# -- new-server-key and new-server-cert ---------------------------------------------------------


def stampedNames(directory, keyType, now):
    """postfix tls's names: key-YYYYmmdd-HHMMSS.pem and cert-... (ecdsa: eckey-, eccert-), UTC."""
    if directory is None:
        raise TlsKeyError("no configuration file is in effect (the embedded defaults): name one with -c, "
                          "or set smtpd_tls_key_file and smtpd_tls_cert_file, to say where the files go")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    prefix = "ec" if keyType == "ecdsa" else ""
    return (os.path.join(directory, f"{prefix}key-{stamp}.pem"),
            os.path.join(directory, f"{prefix}cert-{stamp}.pem"))


class Plan:
    """What a new-server-key or new-server-cert run writes, and the [main] lines it suggests."""

    def __init__(self):
        self.key = None          # the private key (new or configured)
        self.keyNew = False
        self.keyType = None      # "rsa" or "ecdsa"
        self.keyPath = None      # where the key is written (None: it stays where it is)
        self.keySource = None    # the configured file the key came from
        self.certPath = None
        self.combined = False    # key and certificate in one file (keyPath == certPath)
        self.lines = []          # [main] lines to add
        self.notes = []


def _configuredKey(cfg, keyType, err):
    """(path, key) of the configured private key of C{keyType} (None: any), or (None, None)."""
    chain = cfg.chainFiles()
    if chain:
        for path in chain:
            key = tlskeys.privateKeyIn(path)
            if key is not None and (keyType is None or tlskeys.keyType(key) == keyType):
                return path, key
        return None, None
    path = cfg.keyFile()
    if not path:
        return None, None
    if not os.path.lexists(path):
        err.write(f"{PROG}: warning: key file {sanitize(path)} not found, creating a new key\n")
        return None, None
    key = tlskeys.readPrivateKey(path)
    if keyType is not None and tlskeys.keyType(key) != keyType:
        raise TlsKeyError(f"{path}: holds an {tlskeys.describeKey(key)} key, not {keyType} "
                          f"(leave out -a, or use new-server-key)")
    return path, key


def makePlan(cfg, args, reuseKey, err, now):
    plan = Plan()
    keyType = args.keyType
    if reuseKey:
        plan.keySource, plan.key = _configuredKey(cfg, keyType, err)
    if plan.key is None:  # generated once the names are known to be free
        plan.keyNew = True
        keyType, _ = tlskeys.keyParameters(keyType or "rsa", args.bits)
    else:
        keyType = tlskeys.keyType(plan.key)
    chain = cfg.chainFiles()
    if chain:
        plan.keyPath, plan.certPath = stampedNames(cfg.directory, keyType, now)
        plan.lines.append(f"smtpd_tls_chain_files = {plan.keyPath}, {plan.certPath}")
        what = (f"the entry for {plan.keySource} and its certificate" if plan.keySource
                else f"the entry with the {keyType} key, or add them to the list")
        plan.notes.append(f"(in place of {what}; the present value is {', '.join(chain)})")
        plan.keyType = keyType
        _securityLevelHint(cfg, plan)
        return plan
    keyFile, certFile = cfg.keyFile(), cfg.certFile()
    if not certFile or (plan.keyNew and not keyFile):
        stampedKey, stampedCert = stampedNames(cfg.directory, keyType, now)
    plan.certPath = certFile or stampedCert
    if not certFile:
        plan.lines.append(f"smtpd_tls_cert_file = {plan.certPath}")
    if plan.keyNew:
        plan.keyPath = keyFile or stampedKey  # keyFile is $smtpd_tls_cert_file when only that is set
        if not keyFile:
            plan.lines.append(f"smtpd_tls_key_file = {plan.keyPath}")
    elif plan.keySource == plan.certPath:
        plan.keyPath = plan.certPath  # key and certificate share the file: both are written again
    plan.combined = plan.keyPath == plan.certPath
    plan.keyType = keyType
    _securityLevelHint(cfg, plan)
    return plan


def _securityLevelHint(cfg, plan):
    if cfg.securityLevel() in ("", "none"):  # as postfix tls enable-server
        plan.lines.append("smtpd_tls_security_level = may")


def newServerKeyOrCert(cfg, args, out, err, reuseKey, now=None):
    """mta tls new-server-key (C{reuseKey} false) or new-server-cert; return the exit status."""
    now = time.time() if now is None else now
    hostnames = args.hostnames or [cfg.hostname()]
    names = [tlskeys.checkHostname(n) for n in hostnames]
    owner = ownerOf(args.owner)
    plan = makePlan(cfg, args, reuseKey, err, now)
    keyType = plan.keyType
    targets = [p for p in dict.fromkeys((plan.keyPath, plan.certPath)) if p]
    for path in targets:  # refuse before writing anything
        if os.path.lexists(path) and not args.force:
            raise TlsKeyError(f"{path}: already exists (use --force to replace it)")
    if plan.key is None:
        plan.key = tlskeys.generateKey(keyType, args.bits)
    when = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    certificate = tlskeys.selfSignedCertificate(plan.key, names, args.days, when)
    certPem = tlskeys.certificatePem(certificate)
    created = []
    try:
        if plan.combined:
            tlskeys.writeFile(plan.certPath, tlskeys.keyPem(plan.key) + certPem, tlskeys.KEY_MODE, args.force, owner)
        else:
            if plan.keyPath:
                existed = os.path.lexists(plan.keyPath)
                tlskeys.writeFile(plan.keyPath, tlskeys.keyPem(plan.key), tlskeys.KEY_MODE, args.force, owner)
                if not existed:
                    created.append(plan.keyPath)
            tlskeys.writeFile(plan.certPath, certPem, tlskeys.CERT_MODE, args.force, owner)
    except TlsKeyError:
        for path in created:  # no key left behind without its certificate
            os.unlink(path)
        raise
    what = tlskeys.describeKey(plan.key)
    until = certificate.not_valid_after_utc.strftime("%Y-%m-%d")
    if plan.combined:
        out.write(f"{PROG}: new {what} private key and self-signed certificate for {', '.join(names)} "
                  f"(valid until {until}) in {plan.certPath} (mode 0600)\n")
    else:
        if plan.keyPath:
            out.write(f"{PROG}: new {what} private key in {plan.keyPath} (mode 0600)\n")
        else:
            out.write(f"{PROG}: the {what} private key of {plan.keySource} is kept\n")
        out.write(f"{PROG}: new self-signed certificate for {', '.join(names)} (valid until {until}) "
                  f"in {plan.certPath}\n")
    if plan.lines:
        where = cfg.config.path or "the configuration file"
        out.write(f"{PROG}: to deploy, add to [main] in {where} (mta does not rewrite it), then run mta reload:\n")
        for line in plan.lines:
            out.write(f"  {line}\n")
        for note in plan.notes:
            out.write(f"  {note}\n")
    else:
        out.write(f"{PROG}: the configured files were written: run mta reload to use them\n")
    keyPath = plan.keyPath or plan.keySource
    if plan.keyNew:
        out.write(f"{PROG}: with DANE, publish the new TLSA record before the server uses the key "
                  f"(mta tls output-server-tlsa {keyPath}):\n")
    else:
        out.write(f"{PROG}: the key's TLSA record is unchanged:\n")
    out.write(f"  {tlskeys.tlsaRecord(names[0], plan.key.public_key())}\n")
    if os.geteuid() == 0 and plan.keyPath and owner is None:
        out.write(f"{PROG}: note: {keyPath} belongs to root: if the daemon runs as another user, "
                  f"give it to that user (--owner USER, or chown)\n")
    return 0


def ownerOf(text):
    """(uid, gid) for --owner USER[:GROUP] (the user's group by default), or None."""
    if text is None:
        return None
    import grp
    import pwd

    user, _, group = text.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise TlsKeyError(f"--owner: no such user {user!r}") from None
    gid = entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise TlsKeyError(f"--owner: no such group {group!r}") from None
    if os.geteuid() != 0 and (entry.pw_uid != os.geteuid()):
        raise TlsKeyError(f"--owner: only root can give files to {user}")
    return entry.pw_uid, gid


# -- output-server-tlsa -------------------------------------------------------------------------


def configuredKeyFiles(cfg):
    chain = cfg.chainFiles()
    if chain:
        return [p for p in chain if tlskeys.privateKeyIn(p) is not None]
    return [cfg.keyFile()] if cfg.keyFile() else []


def outputServerTlsa(cfg, args, out):
    hostname = tlskeys.checkHostname(args.hostname or cfg.hostname())
    names = args.files or ["rsa", "ecdsa"]
    files = []
    for name in names:
        if name in tlskeys.KEY_TYPES:
            files += [(p, tlskeys.readPublicKey(p)) for p in configuredKeyFiles(cfg)
                      if tlskeys.keyType(tlskeys.readPublicKey(p)) == name]
        else:
            files.append((name, tlskeys.readPublicKey(name)))
    seen, lines = set(), []
    for path, key in files:
        if path in seen:
            continue
        seen.add(path)
        lines += [f"; {sanitize(path)}", tlskeys.tlsaRecord(hostname, key)]
    if not lines:
        configured = "smtpd_tls_chain_files" if cfg.chainFiles() else "smtpd_tls_key_file (smtpd_tls_cert_file)"
        raise TlsKeyError(f"no usable key file given or configured ({configured}"
                          f"{': ' + ', '.join(configuredKeyFiles(cfg)) if configuredKeyFiles(cfg) else ' is empty'})")
    out.write("".join(line + "\n" for line in lines))
    return 0


# -- running ------------------------------------------------------------------------------------


def run(args, parser, out=None, err=None):
    """mta tls SUBCOMMAND; return the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    if getattr(args, "tlsCommand", None) is None:
        parser.print_usage(err)
        err.write(f"{PROG}: tls: a subcommand is needed: {', '.join(SUBCOMMANDS)}\n")
        return 2
    configPath = args.tlsConfig if args.tlsConfig is not None else args.config
    try:
        cfg = loadTlsConfig(configPath)
        if args.tlsCommand == "output-server-tlsa":
            return outputServerTlsa(cfg, args, out)
        return newServerKeyOrCert(cfg, args, out, err, reuseKey=args.tlsCommand == "new-server-cert")
    except (ConfigError, TlsKeyError) as e:
        err.write(f"{PROG}: error: {sanitize(str(e))}\n")
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        err.write(f"{PROG}: error: {sanitize(where)}{sanitize(e.strerror or str(e))}\n")
        return 1
