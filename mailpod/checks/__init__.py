"""Inbound checks (after maddy's pipeline): each module evaluates one thing and returns a verdict
value; `mailpod.checks.inbound` applies the `InboundChecks` policy to them."""
