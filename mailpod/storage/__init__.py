"""Local mailboxes on the pod's volume (the `storage` delivery target)."""

from mailpod.storage.maildir import MaildirDelivery, MaildirStorage, maildir_path

__all__ = ["MaildirDelivery", "MaildirStorage", "maildir_path"]
