"""mailpod: Letterbox's mail server (SMTP in, submission, IMAP, outbound queue)."""

__version__ = "0.1.0"
