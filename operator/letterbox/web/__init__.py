"""The operator's small HTTP server: MTA-STS policies and client autoconfiguration for every
MailDomain, selected by Host header. It knows nothing of kopf or the API server: the operator
hands it MailDomain specs (`WebServer.set_domains`)."""
