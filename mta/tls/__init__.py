"""mta.tls - the server's TLS: contexts from TlsSettings, and what a handshake tells.

    mta.tls.context   ServerTLS: the pyOpenSSL contexts of one listener (keys and
                      chains, protocols, ciphers, groups, tickets, client
                      certificates, SNI), built from its TlsSettings when the
                      listener starts (and again at reload)
    mta.tls.info      TlsInfo: the protocol, cipher, key exchange and client
                      certificate of an established session, and the texts
                      Postfix makes of them (log line, Received: comment)

The TLS itself is Twisted's (transport.startTLS, TLSMemoryBIOProtocol) over
pyOpenSSL; nothing here reads or writes the wire.

SECURITY
    See mta.tls.context.

CONFIGURATION
    mta.config.settings.tls.
"""
