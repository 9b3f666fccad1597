"""IMAP: a pure command parser and response renderer (`parser`, `response`, `mime`, `search`,
`selected`), a connection handler with `do_<command>` dispatch (`server`), and storage behind the
`MailboxSession` protocol (`backend`), implemented on Maildir++ with a SQLite index (`store`,
`maildir_backend`)."""
