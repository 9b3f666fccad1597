"""Built-in ACME (RFC 8555) issuance over DNS-01: the client, the challenge port it publishes
TXT records through, and the pure renewal policy."""
