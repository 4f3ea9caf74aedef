"""TLS contexts from configuration: verification always on, client certificates optional."""

from __future__ import annotations

import ssl

from gateway.config import TlsConfig


def client_context(tls: TlsConfig | None) -> ssl.SSLContext:
    """For connections we open (Beskedfordeler, STS, brokers): the peer is always verified."""
    cafile = tls.ca_file if tls else None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if tls is not None and tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """For the push receiver: our certificate, and the BFO's verified when required."""
    if not tls.cert_file:
        raise ValueError("a TLS server needs cert_file (and key_file)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tls.ca_file)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_NONE
    return context
