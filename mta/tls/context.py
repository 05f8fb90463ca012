"""mta.tls.context - ServerTLS: one listener's pyOpenSSL server contexts, from its TlsSettings.

ServerTLS(settings, tables=None, log=None) builds, when the listener's
factory is made (at start and at every reload, so renewed certificates are
read again), one SSL.Context:

    keys        every KeyPair of the settings (smtpd_tls_chain_files, or
                smtpd_tls_cert_file/_key_file, _eccert_file/_eckey_file,
                _dcert_file/_dkey_file), each with the chain in its file;
                OpenSSL picks the one the client's signature algorithms allow
    protocols   the smtpd_tls_protocols range (may), or the mandatory one
                (encrypt), as min/max versions; SSLv2/SSLv3, compression
                and renegotiation are off
    ciphers     the grade's list (tls_GRADE_cipherlist) less the excluded
                ones; tls_preempt_cipherlist = yes: the server's order wins
    groups      tls_eecdh_auto_curves then tls_ffdhe_auto_groups (the
                names the library knows); smtpd_tls_dh1024_param_file for
                TLS 1.2 DHE
    tickets     smtpd_tls_session_cache_timeout is the ticket and session
                lifetime; 0 turns tickets and the session cache off
    clients     smtpd_tls_ask_ccert: a certificate is requested and any is
                accepted (its trust is judged after the handshake, against
                smtpd_tls_CAfile / smtpd_tls_CApath, so that the session
                can say Trusted or Untrusted); smtpd_tls_req_ccert (under
                encrypt): one is required and must verify, or the handshake
                fails; smtpd_tls_ccert_verifydepth limits the chain
    SNI         tls_server_sni_maps: the client's server name, then its
                parent domains (.example.com), looked up in the tables;
                the files named there (key and chain, as chain files) give
                a context of their own, built once per factory

getContext() is what Twisted's startTLS and TLSMemoryBIOFactory take
(the old IOpenSSLContextFactory); trusted(connection) judges a client
certificate after the handshake.

SECURITY
    A client's server name is only looked up, never used as a file name;
    a table that cannot answer at once, or a file that no longer loads,
    falls back to the default keys (and is logged).  Client certificates
    are untrusted until verified against the configured CAs.

CONFIGURATION
    mta.config.settings.tls (TlsSettings).

DEVIATIONS
    smtpd_tls_req_ccert fails the handshake itself when the client has no
    certificate that verifies (Postfix completes the handshake, logs and
    answers 421 4.7.1); either way the client cannot send mail.
    tls_server_sni_maps is asked synchronously during the handshake: only
    tables that answer at once (texthash, inline, static) can be used.
    Without smtpd_tls_dh1024_param_file, DHE ciphers are not offered (ECDHE
    ones are); Postfix has built-in parameters.
"""

from OpenSSL import SSL, crypto
from OpenSSL._util import lib
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from zope.interface import implementer

__all__ = ["ServerTLS", "VERSIONS"]

VERSIONS = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}

_log = Logger()


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """The TLS of one listener; see the module docstring."""

    def __init__(self, settings, tables=None, log=None, sessionId=b"mta"):
        self.settings = settings
        self._log = log or _log
        self._sessionId = sessionId[:32]
        self._sniTables = [tables.open(spec) for spec in settings.sniMaps] if tables is not None else []
        self._sniContexts = {}
        self._store = self._caStore() if settings.caFile or settings.caPath else None
        self._context = self._build([(pair.keyFile, pair.certFile) for pair in settings.keyPairs])
        if self._sniTables:
            self._context.set_tlsext_servername_callback(self._serverName)

    # -- the contexts --------------------------------------------------------------

    def getContext(self):
        """The default context (Twisted's IOpenSSLContextFactory)."""
        return self._context

    def _build(self, pairs):
        s = self.settings
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_options(SSL.OP_NO_SSLv2 | SSL.OP_NO_SSLv3 | SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
                        | SSL.OP_SINGLE_DH_USE | SSL.OP_SINGLE_ECDH_USE)
        low, high = s.activeProtocolRange
        ctx.set_min_proto_version(VERSIONS[low])
        ctx.set_max_proto_version(VERSIONS[high])
        ctx.set_cipher_list(s.activeCipherList.encode("ascii"))
        if s.preemptCipherlist:
            ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)
        if s.groups:
            lib.SSL_CTX_set1_curves_list(ctx._context, ":".join(s.groups).encode("ascii"))
        if s.dhParamFile:
            ctx.load_tmp_dh(s.dhParamFile.encode())
        for keyFile, certFile in pairs:
            ctx.use_certificate_chain_file(certFile)
            ctx.use_privatekey_file(keyFile)
            ctx.check_privatekey()
        ctx.set_session_id(self._sessionId)
        if s.sessionCacheTimeout > 0:
            ctx.set_timeout(int(s.sessionCacheTimeout))
            ctx.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
        else:
            ctx.set_options(SSL.OP_NO_TICKET)
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if s.askClientCertificate:
            if s.caFile or s.caPath:
                ctx.load_verify_locations(s.caFile.encode() or None, s.caPath.encode() or None)
                if s.caFile:
                    ctx.load_client_ca(s.caFile.encode())  # the CA names sent with the request
            ctx.set_verify_depth(s.verifyDepth)
            if s.requireClientCertificate:
                ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT | SSL.VERIFY_CLIENT_ONCE,
                               lambda conn, cert, errno, depth, ok: bool(ok))
            else:
                ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE, lambda *args: True)
        return ctx

    def _serverName(self, connection):
        name = connection.get_servername()
        if not name:
            return
        try:
            host = name.decode("ascii").lower().rstrip(".")
        except UnicodeDecodeError:
            return
        value = self._lookupSni(host)
        if value is None:
            return
        ctx = self._sniContexts.get(value)
        if ctx is None:
            files = [f for f in value.replace(",", " ").split() if f]
            try:
                ctx = self._build([(f, f) for f in files])
            except (SSL.Error, OSError) as e:
                self._log.warn("tls_server_sni_maps: cannot load {files} for {name}: {error}",
                               files=value, name=host, error=str(e))
                return
            self._sniContexts[value] = ctx
        connection.set_context(ctx)

    def _lookupSni(self, host):
        labels = host.split(".")
        keys = [host] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
        for table in self._sniTables:
            for key in keys:
                answers, failures = [], []
                d = table.lookup(key)
                d.addCallbacks(answers.append, failures.append)
                if failures or not answers:
                    why = "failed" if failures else "gave no immediate answer"
                    self._log.warn("tls_server_sni_maps: the lookup of {name} {why}; default keys used",
                                   name=host, why=why)
                    return None
                if answers[0] is not None:
                    return answers[0]
        return None

    # -- client certificates ----------------------------------------------------------

    def _caStore(self):
        store = crypto.X509Store()
        s = self.settings
        store.load_locations(s.caFile or None, s.caPath or None)
        return store

    def trusted(self, connection):
        """Does the client's certificate (if any) verify against smtpd_tls_CAfile/CApath?"""
        cert = connection.get_peer_certificate()
        if cert is None or self._store is None:
            return False
        chain = connection.get_peer_cert_chain() or []
        intermediates = [c for c in chain if c.digest("sha256") != cert.digest("sha256")]
        if len(intermediates) + 1 > self.settings.verifyDepth + 1:
            return False
        try:
            crypto.X509StoreContext(self._store, cert, intermediates).verify_certificate()
        except crypto.X509StoreContextError:
            return False
        return True
