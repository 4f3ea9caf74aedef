"""TLS contexts from configuration: verification always on, client certificates optional."""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any

from gateway.config import TlsConfig, subject_rule


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


class ClientRules:
    """`allowed_clients`: a verified client certificate is accepted if its subject holds every
    attribute of one rule."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.rules = [subject_rule(entry) for entry in entries]

    def allow(self, cert: dict[str, Any] | None) -> bool:
        subject = set(_subject(cert))
        return not self.rules or any(rule <= subject for rule in self.rules)


def subject_text(cert: dict[str, Any] | None) -> str:
    """A certificate's subject for the log: `commonName=..., organizationName=...`."""
    return ", ".join(f"{name}={value}" for name, value in _subject(cert)) or "(no certificate)"


def _subject(cert: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(attribute, value) pairs of a certificate as ssl's getpeercert() gives it."""
    return [(name, value) for rdn in (cert or {}).get("subject", ()) for name, value in rdn]
