"""Remote delivery: MX resolution, an SMTP client, MTA-STS, DANE and smarthost relays."""
