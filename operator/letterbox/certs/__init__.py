"""Certificates of the mail host and the web hosts: built-in ACME issuance and renewal, kept in
TLS Secrets, with the state the reconcile reports (CertificateReady, not-after, warnings)."""
