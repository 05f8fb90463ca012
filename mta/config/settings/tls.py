"""mta.config.settings.tls - TlsSettings: the SMTP server's TLS (STARTTLS, wrapper mode), per listener.

The parameters (mta.config.schema, group tls), with Postfix's names, types
and defaults:

    smtpd_tls_security_level, smtpd_tls_wrappermode, smtpd_tls_cert_file,
    smtpd_tls_key_file, smtpd_tls_chain_files, smtpd_tls_eccert_file,
    smtpd_tls_eckey_file, smtpd_tls_protocols,
    smtpd_tls_mandatory_protocols, smtpd_tls_ciphers,
    smtpd_tls_mandatory_ciphers, smtpd_tls_exclude_ciphers,
    smtpd_tls_mandatory_exclude_ciphers, tls_{high,medium,low,export,null}
    _cipherlist, tls_preempt_cipherlist, tls_eecdh_auto_curves,
    tls_ffdhe_auto_groups, smtpd_tls_dh1024_param_file,
    smtpd_starttls_timeout, smtpd_tls_received_header, smtpd_tls_loglevel,
    smtpd_tls_session_cache_timeout, smtpd_tls_fingerprint_digest,
    tls_server_sni_maps, smtpd_tls_ask_ccert, smtpd_tls_req_ccert,
    smtpd_tls_CAfile, smtpd_tls_CApath, smtpd_tls_ccert_verifydepth
    (relay_clientcerts is the recipient checks': mta.config.settings.routing)

and the older names Postfix still accepts, mapped here onto the current
ones (each one set gives a line in C{notes}, which the server logs as a
warning at start and reload):

    smtpd_use_tls, smtpd_enforce_tls  -> smtpd_tls_security_level when
                                         that is empty (encrypt wins)
    smtpd_tls_dcert_file/_dkey_file   -> one more key and certificate
    smtpd_tls_cipherlist              -> the cipher list instead of the grade
    smtpd_tls_eecdh_grade             -> strong: prime256v1, ultra:
                                         secp384r1, none: no curves
    smtpd_tls_always_issue_session_ids, smtpd_tls_session_cache_database
                                      -> ignored (session tickets)

Everything that can be wrong is found here, at load (and at reload, which
loads again): every certificate and key file is read and parsed, each key
must match its certificate, the cipher lists must select ciphers, the
protocol ranges must be non-empty, the curve names known (unknown ones are
skipped as Postfix does; none left is an error), the DH parameter file and
the CA file and directory must load.  Each error names the parameter and its
file:line.  The files are read again by mta.tls when the listener starts, so
a reload picks up a renewed certificate.

SECURITY
    The files are configuration, read with the daemon's privileges; a key
    file's content never reaches a message.

CONFIGURATION
    As listed above.

DEVIATIONS
    smtpd_tls_security_level also accepts none explicitly (Postfix: the
    empty default means none unless the obsolete names say otherwise; mta
    does the same).  The low and export grades are the medium list, as in
    OpenSSL 3+ builds of Postfix.  SSLv2 and SSLv3 can never be enabled.
    Wrapper mode without a certificate is a load error.  Under may with no
    certificate STARTTLS is not offered (Postfix logs a warning and turns
    TLS off, the same effect); under encrypt it is not offered either,
    STARTTLS gets 454 4.7.0 and a warning is logged at start: no client can
    send mail (Postfix's answer when its TLS context is missing).
"""

import os

import attrs

from mta.config.errors import ConfigError
from mta.config.settings import Settings, setting, settingsClass

__all__ = ["KeyPair", "PROTOCOLS", "TlsSettings", "compileCipherList", "knownGroups", "parseProtocols"]

# Protocol names in order, Postfix's spelling; SSLv2/SSLv3 are known names that are never enabled.
PROTOCOLS = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
ENABLEABLE = PROTOCOLS[2:]
MAX_TICKET_LIFETIME = 8640000  # Postfix's limit on smtpd_tls_session_cache_timeout (100 days)
STRONG_CURVE, ULTRA_CURVE = "prime256v1", "secp384r1"


@attrs.frozen
class KeyPair:
    """One server key: the file with the key, the file with the certificate (and its chain), the parameter."""

    keyFile: str
    certFile: str
    parameter: str
    keyType: str = ""  # "RSA", "EC", ... (for the log's server-signature)
    keyBits: int = 0


def parseProtocols(items):
    """
    Postfix's protocol list: ">=TLSv1.2", "<=TLSv1.3", names to include, or
    names to exclude with "!".  Returns (lowest, highest) of the enabled
    protocols (names from ENABLEABLE); ValueError when none is left.
    """
    enabled = set(ENABLEABLE)
    include = set()
    for raw in items:
        item = raw.strip()
        for op in (">=", "<="):
            if item.startswith(op):
                name = _protocolName(item[2:].strip())
                index = PROTOCOLS.index(name)
                keep = PROTOCOLS[index:] if op == ">=" else PROTOCOLS[: index + 1]
                enabled &= set(keep)
                break
        else:
            if item.startswith("!"):
                enabled.discard(_protocolName(item[1:].strip()))
            else:
                include.add(_protocolName(item))
    if include:
        enabled &= include
    ordered = [p for p in ENABLEABLE if p in enabled]
    if not ordered:
        raise ValueError(f"{' '.join(items)!r} enables no protocol (mta supports {', '.join(ENABLEABLE)})")
    return ordered[0], ordered[-1]


def compileCipherList(base, excluded):
    """OpenSSL's cipher list C{base} less the C{excluded} names; None if it selects no cipher."""
    from OpenSSL import SSL

    text = base + "".join(f":!{c}" for c in excluded)
    try:
        SSL.Context(SSL.TLS_METHOD).set_cipher_list(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        return None
    return text


def knownGroups(names):
    """The key-exchange group names (tls_eecdh_auto_curves, tls_ffdhe_auto_groups) the library knows, in order."""
    from OpenSSL import SSL
    from OpenSSL._util import lib

    groups = []
    for name in names:
        probe = SSL.Context(SSL.TLS_METHOD)
        if lib.SSL_CTX_set1_curves_list(probe._context, name.encode("ascii", "replace")) == 1:
            groups.append(name)
    return tuple(groups)


def _protocolName(text):
    for name in PROTOCOLS:
        if name.lower() == text.lower():
            return name
    raise ValueError(f"unknown TLS protocol {text!r} (known: {', '.join(PROTOCOLS)})")


def _path(value):
    return value.strip()


@settingsClass
class TlsSettings(Settings):
    """
    What one listener's TLS reads, checked and resolved at load.  The
    derived fields (init=False) are what mta.tls builds its contexts from:
    level (the effective security level), keyPairs, cipherList and
    mandatoryCipherList, protocolRange and mandatoryProtocolRange, groups,
    notes (obsolete-name warnings), enabled.
    """

    securityLevel: str = setting("smtpd_tls_security_level")
    wrapperMode: bool = setting("smtpd_tls_wrappermode")
    certFile: str = setting("smtpd_tls_cert_file", _path)
    keyFile: str = setting("smtpd_tls_key_file", _path)
    chainFiles: tuple = setting("smtpd_tls_chain_files", tuple)
    eccertFile: str = setting("smtpd_tls_eccert_file", _path)
    eckeyFile: str = setting("smtpd_tls_eckey_file", _path)
    dcertFile: str = setting("smtpd_tls_dcert_file", _path)
    dkeyFile: str = setting("smtpd_tls_dkey_file", _path)
    protocols: tuple = setting("smtpd_tls_protocols", tuple)
    mandatoryProtocols: tuple = setting("smtpd_tls_mandatory_protocols", tuple)
    ciphers: str = setting("smtpd_tls_ciphers")
    mandatoryCiphers: str = setting("smtpd_tls_mandatory_ciphers")
    excludeCiphers: tuple = setting("smtpd_tls_exclude_ciphers", tuple)
    mandatoryExcludeCiphers: tuple = setting("smtpd_tls_mandatory_exclude_ciphers", tuple)
    highCipherlist: str = setting("tls_high_cipherlist")
    mediumCipherlist: str = setting("tls_medium_cipherlist")
    lowCipherlist: str = setting("tls_low_cipherlist")
    exportCipherlist: str = setting("tls_export_cipherlist")
    nullCipherlist: str = setting("tls_null_cipherlist")
    obsoleteCipherlist: str = setting("smtpd_tls_cipherlist")
    preemptCipherlist: bool = setting("tls_preempt_cipherlist")
    curves: tuple = setting("tls_eecdh_auto_curves", tuple)
    ffdheGroups: tuple = setting("tls_ffdhe_auto_groups", tuple)
    eecdhGrade: str = setting("smtpd_tls_eecdh_grade")
    dhParamFile: str = setting("smtpd_tls_dh1024_param_file", _path)
    starttlsTimeout: float = setting("smtpd_starttls_timeout")
    receivedHeader: bool = setting("smtpd_tls_received_header")
    loglevel: int = setting("smtpd_tls_loglevel")
    sessionCacheTimeout: float = setting("smtpd_tls_session_cache_timeout")
    fingerprintDigest: str = setting("smtpd_tls_fingerprint_digest")
    sniMaps: tuple = setting("tls_server_sni_maps")
    askCcert: bool = setting("smtpd_tls_ask_ccert")
    reqCcert: bool = setting("smtpd_tls_req_ccert")
    caFile: str = setting("smtpd_tls_CAfile", _path)
    caPath: str = setting("smtpd_tls_CApath", _path)
    verifyDepth: int = setting("smtpd_tls_ccert_verifydepth")
    useTls: bool = setting("smtpd_use_tls")
    enforceTls: bool = setting("smtpd_enforce_tls")
    alwaysIssueSessionIds: bool = setting("smtpd_tls_always_issue_session_ids")
    sessionCacheDatabase: str = setting("smtpd_tls_session_cache_database")

    # -- derived in check()
    level: str = attrs.field(init=False, default="none")  # none, may or encrypt
    keyPairs: tuple = attrs.field(init=False, default=())  # KeyPair, in load order
    cipherList: str = attrs.field(init=False, default="")  # OpenSSL list under may
    mandatoryCipherList: str = attrs.field(init=False, default="")  # under encrypt
    protocolRange: tuple = attrs.field(init=False, default=())  # (lowest, highest) under may
    mandatoryProtocolRange: tuple = attrs.field(init=False, default=())  # under encrypt
    groups: tuple = attrs.field(init=False, default=())  # key-exchange groups the library knows
    notes: tuple = attrs.field(init=False, default=())  # obsolete-name warnings for the log
    enabled: bool = attrs.field(init=False, default=False)  # STARTTLS offered or wrapper mode

    def _set(self, **values):
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def mandatory(self):
        """Encrypt level: the mandatory protocols and ciphers apply (also in wrapper mode under encrypt)."""
        return self.level == "encrypt"

    @property
    def askClientCertificate(self):
        return self.askCcert or (self.reqCcert and self.level == "encrypt")

    @property
    def requireClientCertificate(self):
        return self.reqCcert and self.level == "encrypt"

    @property
    def activeCipherList(self):
        return self.mandatoryCipherList if self.mandatory else self.cipherList

    @property
    def activeProtocolRange(self):
        return self.mandatoryProtocolRange if self.mandatory else self.protocolRange

    @classmethod
    def extraParameters(cls):
        return ()

    def check(self, scope):
        notes = []

        def fail(name, message):
            raise ConfigError(f"{scope.where(name)}: {message}")

        def note(name, text):
            if scope.entry(name) is not None:
                notes.append(f"{scope.where(name)}: {name} is obsolete; {text}")

        # -- the level, with the obsolete names
        level = self.securityLevel
        if not level:
            level = "encrypt" if self.enforceTls else "may" if self.useTls else "none"
        note("smtpd_use_tls", "use smtpd_tls_security_level = may" +
             (" (ignored: smtpd_tls_security_level is set)" if self.securityLevel else ""))
        note("smtpd_enforce_tls", "use smtpd_tls_security_level = encrypt" +
             (" (ignored: smtpd_tls_security_level is set)" if self.securityLevel else ""))
        note("smtpd_tls_dcert_file", "use smtpd_tls_chain_files (the file is still loaded)")
        note("smtpd_tls_cipherlist", "use smtpd_tls_ciphers (this list replaces the grade)")
        note("smtpd_tls_eecdh_grade", "use tls_eecdh_auto_curves")
        note("smtpd_tls_always_issue_session_ids", "ignored: mta resumes sessions with tickets")
        note("smtpd_tls_session_cache_database", "ignored: mta resumes sessions with tickets")
        for grade in ("high", "medium", "low", "export", "null"):
            name = f"tls_{grade}_cipherlist"
            if scope.entry(name) is not None:
                notes.append(f"{scope.where(name)}: {name} is changed; Postfix advises against it")

        # -- keys and certificates
        from OpenSSL import SSL, crypto

        pairs = []

        def loadPair(keyFile, certFile, keyParameter, certParameter):
            for path, name in ((certFile, certParameter), (keyFile, keyParameter)):
                if not os.path.isfile(path) or not os.access(path, os.R_OK):
                    fail(name, f"cannot read {path!r}: " + ("not a readable file" if os.path.exists(path) else
                                                             "no such file"))
            try:
                with open(certFile, "rb") as f:
                    certPem = f.read()
                with open(keyFile, "rb") as f:
                    keyPem = f.read()
            except OSError as e:
                fail(certParameter, f"cannot read: {e.strerror}")
            try:
                cert = crypto.load_certificate(crypto.FILETYPE_PEM, certPem)
            except crypto.Error:
                fail(certParameter, f"{certFile!r} holds no PEM certificate")
            try:
                key = crypto.load_privatekey(crypto.FILETYPE_PEM, keyPem)
            except crypto.Error:
                fail(keyParameter, f"{keyFile!r} holds no unencrypted PEM private key")
            ctx = SSL.Context(SSL.TLS_METHOD)
            try:
                ctx.use_certificate_chain_file(certFile)
                ctx.use_privatekey(key)
                ctx.check_privatekey()
            except SSL.Error:
                fail(keyParameter, f"the key in {keyFile!r} does not match the certificate in {certFile!r}")
            keyType = {crypto.TYPE_RSA: "RSA", crypto.TYPE_DSA: "DSA"}.get(key.type(), "EC")
            pairs.append(KeyPair(keyFile, certFile, certParameter, keyType, key.bits()))
            del cert

        if self.chainFiles:
            for path in self.chainFiles:
                loadPair(path, path, "smtpd_tls_chain_files", "smtpd_tls_chain_files")
        else:
            for certFile, keyFile, certName, keyName in (
                (self.certFile, self.keyFile, "smtpd_tls_cert_file", "smtpd_tls_key_file"),
                (self.eccertFile, self.eckeyFile, "smtpd_tls_eccert_file", "smtpd_tls_eckey_file"),
                (self.dcertFile, self.dkeyFile, "smtpd_tls_dcert_file", "smtpd_tls_dkey_file"),
            ):
                if certFile:
                    loadPair(keyFile or certFile, certFile, keyName, certName)
                elif keyFile and scope.entry(keyName) is not None:
                    fail(keyName, f"a key without a certificate ({certName} is empty)")
        if level == "encrypt" and not pairs:
            # As Postfix without a usable certificate: STARTTLS gets 454, so no client can send mail.
            notes.append(f"{scope.where('smtpd_tls_security_level')}: encrypt without a certificate "
                         f"(smtpd_tls_cert_file or smtpd_tls_chain_files): no client can send mail")
        if self.wrapperMode and not pairs:
            fail("smtpd_tls_wrappermode", "wrapper mode needs a certificate (smtpd_tls_cert_file or "
                                          "smtpd_tls_chain_files)")
        if self.wrapperMode and level == "none":
            level = "may"  # wrapper mode is TLS whatever the level says, as in Postfix

        # -- protocols
        ranges = {}
        for name, items in (("smtpd_tls_protocols", self.protocols),
                            ("smtpd_tls_mandatory_protocols", self.mandatoryProtocols)):
            try:
                ranges[name] = parseProtocols(items)
            except ValueError as e:
                fail(name, str(e))

        # -- ciphers
        def cipherList(gradeName, grade, excludeNames):
            if self.obsoleteCipherlist:
                base = self.obsoleteCipherlist
            else:
                base = getattr(self, f"{grade}Cipherlist")
            excluded = [c for names in excludeNames for c in names]
            text = compileCipherList(base, excluded)
            if text is None:
                text = base + "".join(f":!{c}" for c in excluded)
                where = "smtpd_tls_cipherlist" if self.obsoleteCipherlist else f"tls_{grade}_cipherlist"
                fail(gradeName if not excluded else "smtpd_tls_exclude_ciphers",
                     f"the cipher list {text!r} ({where}) selects no cipher")
            return text

        may = cipherList("smtpd_tls_ciphers", self.ciphers, [self.excludeCiphers])
        must = cipherList("smtpd_tls_mandatory_ciphers", self.mandatoryCiphers,
                          [self.excludeCiphers, self.mandatoryExcludeCiphers])

        # -- key-exchange groups
        curves = {"auto": self.curves, "strong": (STRONG_CURVE,), "ultra": (ULTRA_CURVE,), "none": ()}[self.eecdhGrade]
        groups = knownGroups((*curves, *self.ffdheGroups))
        if not groups and (curves or self.ffdheGroups):
            fail("tls_eecdh_auto_curves", "none of the key-exchange groups (tls_eecdh_auto_curves, "
                                          "tls_ffdhe_auto_groups) is known to the TLS library")

        # -- DH parameters, CAs
        probe = SSL.Context(SSL.TLS_METHOD)
        if self.dhParamFile:
            if not os.access(self.dhParamFile, os.R_OK):
                fail("smtpd_tls_dh1024_param_file", f"cannot read {self.dhParamFile!r}")
            try:
                probe.load_tmp_dh(self.dhParamFile.encode())
            except SSL.Error:
                fail("smtpd_tls_dh1024_param_file", f"{self.dhParamFile!r} holds no PEM DH parameters")
        if self.caFile:
            if not os.access(self.caFile, os.R_OK):
                fail("smtpd_tls_CAfile", f"cannot read {self.caFile!r}")
            try:
                probe.load_verify_locations(self.caFile.encode(), None)
            except SSL.Error:
                fail("smtpd_tls_CAfile", f"{self.caFile!r} holds no PEM CA certificates")
        if self.caPath and not os.path.isdir(self.caPath):
            fail("smtpd_tls_CApath", f"{self.caPath!r} is not a directory")

        if not 0 <= self.sessionCacheTimeout <= MAX_TICKET_LIFETIME:
            fail("smtpd_tls_session_cache_timeout", f"at most {MAX_TICKET_LIFETIME}s")
        if self.reqCcert and level != "encrypt":
            notes.append(f"{scope.where('smtpd_tls_req_ccert')}: smtpd_tls_req_ccert = yes is ignored "
                         f"below smtpd_tls_security_level = encrypt")

        self._set(level=level, keyPairs=tuple(pairs), cipherList=may, mandatoryCipherList=must,
                  protocolRange=ranges["smtpd_tls_protocols"],
                  mandatoryProtocolRange=ranges["smtpd_tls_mandatory_protocols"],
                  groups=tuple(groups), notes=tuple(notes), enabled=level != "none" and bool(pairs))


# Service name -> settings class, built from each listener's scope; see mta.config.settings.
LISTENER = {"tls": TlsSettings}
