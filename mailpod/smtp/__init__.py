"""SMTP: aiosmtpd as a thin protocol adapter into the delivery pipeline."""
