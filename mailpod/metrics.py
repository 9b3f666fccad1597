"""The mail pod's Prometheus metrics, defined once, in a registry of their own.

Use the objects directly, e.g. `MESSAGES.labels(listener="smtp", result=Result.ACCEPTED).inc()`.
A dedicated `REGISTRY` (not prometheus_client's global one) keeps tests isolated and keeps
library metrics we did not choose out of /metrics.

Multi-process mode (several workers sharing the listening ports with SO_REUSEPORT): each worker
keeps its values in mmap'ed files and /metrics sums them. Set-up, in the parent:

1. create an empty directory (`tempfile.mkdtemp()`, or an emptyDir volume that starts empty —
   files left by an earlier run would be counted again);
2. set `PROMETHEUS_MULTIPROC_DIR` to it *before anything imports prometheus_client* (in practice,
   before importing this module): prometheus_client chooses its value storage at import time, and
   forked workers inherit that choice;
3. fork/spawn the workers; when one exits, call `mark_process_dead(pid)` so its live gauges
   (open connections, config generation) stop counting;
4. serve /metrics from any process: `render_metrics()` sees the variable and aggregates every
   worker's files with `MultiProcessCollector`.

Without the variable, `render_metrics()` renders `REGISTRY` of this process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from enum import StrEnum

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "AUTH_FAILURES",
    "CONFIG_GENERATION",
    "CONFIG_LAST_RELOAD",
    "CONFIG_RELOADS",
    "CONNECTIONS",
    "CONNECTIONS_OPEN",
    "DELIVERY_SECONDS",
    "MESSAGES",
    "MULTIPROC_ENV",
    "OUTBOUND_TLS",
    "QUEUE_ATTEMPTS",
    "QUEUE_DSNS",
    "QUEUE_MESSAGES",
    "QUEUE_OLDEST",
    "RECEIVED_BYTES",
    "RECIPIENTS",
    "REGISTRY",
    "TLS_NOT_AFTER",
    "AttemptResult",
    "ReloadResult",
    "Result",
    "init_listener",
    "mark_process_dead",
    "multiprocess_dir",
    "render_metrics",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Result(StrEnum):
    """What the client was told: 2xx, 5xx or 4xx."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    TEMPFAIL = "tempfail"


class ReloadResult(StrEnum):
    OK = "ok"
    ERROR = "error"


class AttemptResult(StrEnum):
    """One recipient's outcome of an outbound delivery attempt."""

    DELIVERED = "delivered"  # 2xx
    DEFERRED = "deferred"  # 4xx or no connection: retried later
    FAILED = "failed"  # 5xx: bounced
    EXPIRED = "expired"  # still 4xx when the queue lifetime ran out: bounced


REGISTRY = CollectorRegistry()

CONNECTIONS = Counter(
    "mailpod_connections",
    "Connections accepted, by listener (smtp, submission, submissions, imap, imaps).",
    ["listener"],
    registry=REGISTRY,
)
CONNECTIONS_OPEN = Gauge(
    "mailpod_connections_open",
    "Connections open now, by listener.",
    ["listener"],
    registry=REGISTRY,
    # Summed over the workers that are alive: a dead worker's connections are gone.
    multiprocess_mode="livesum",
)
MESSAGES = Counter(
    "mailpod_messages",
    "SMTP transactions that reached DATA/BDAT, by listener and result.",
    ["listener", "result"],
    registry=REGISTRY,
)
RECIPIENTS = Counter(
    "mailpod_recipients",
    "RCPT TO commands, by listener and result.",
    ["listener", "result"],
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "mailpod_auth_failures",
    "Failed authentications, by SASL mechanism (or imap-login) and reason.",
    ["mechanism", "reason"],
    registry=REGISTRY,
)
RECEIVED_BYTES = Counter(
    "mailpod_received_bytes",
    "Message bytes received (DATA/BDAT payloads), by listener.",
    ["listener"],
    registry=REGISTRY,
)
DELIVERY_SECONDS = Histogram(
    "mailpod_delivery_duration_seconds",
    "Time from end of DATA to the reply (message durable or refused), by delivery target.",
    ["target"],
    registry=REGISTRY,
    # A local Maildir write with fsync takes a few ms; a slow disk or a full queue seconds.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONFIG_RELOADS = Counter(
    "mailpod_config_reloads",
    "Configuration reloads, by result (ok, error: the previous config stays in force).",
    ["result"],
    registry=REGISTRY,
)
CONFIG_GENERATION = Gauge(
    "mailpod_config_generation",
    "Generation of the configuration in force.",
    registry=REGISTRY,
    # The lowest among live workers: the pod has reached generation N once all of them have.
    multiprocess_mode="livemin",
)
CONFIG_LAST_RELOAD = Gauge(
    "mailpod_config_last_reload_timestamp_seconds",
    "Unix time of the last successful configuration load.",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
OUTBOUND_TLS = Counter(
    "mailpod_outbound_tls_sessions",
    "Outbound connections to MX hosts by the receiving domain's policy (sts, tlsa,"
    " no-policy-found) and TLS result in TLS-RPT's terms (success, certificate-host-mismatch,"
    " starttls-not-supported, ...; RFC 8460).",
    ["policy", "result"],
    registry=REGISTRY,
)
QUEUE_ATTEMPTS = Counter(
    "mailpod_queue_delivery_attempts",
    "Outbound delivery attempts per recipient, by result (delivered, deferred, failed, expired).",
    ["result"],
    registry=REGISTRY,
)
QUEUE_DSNS = Counter(
    "mailpod_queue_dsns",
    "Delivery status notifications (bounces, NOTIFY=SUCCESS notices) sent to local senders.",
    registry=REGISTRY,
)
# The queue's own gauges are set only by the worker running the queue (the others hold 0).
QUEUE_MESSAGES = Gauge(
    "mailpod_queue_messages",
    "Messages in the outbound queue: some recipient not yet delivered or bounced.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
QUEUE_OLDEST = Gauge(
    "mailpod_queue_oldest_message_timestamp_seconds",
    "Unix time the oldest message in the outbound queue was accepted; 0 when it is empty. "
    "Alert on time() - this when it is non-zero: mail stuck for hours.",
    registry=REGISTRY,
    multiprocess_mode="livemax",
)
TLS_NOT_AFTER = Gauge(
    "mailpod_tls_certificate_not_after_timestamp_seconds",
    "Unix time the served TLS certificate expires (alert when it comes near).",
    registry=REGISTRY,
    # The oldest among live workers: a worker still serving an old certificate shows.
    multiprocess_mode="livemin",
)


def init_listener(listener: str, results: Iterable[str] = tuple(Result)) -> None:
    """Create a listener's series at 0 at start-up, so rate() and alerts see them from the
    first scrape instead of only after the first event."""
    CONNECTIONS.labels(listener=listener)
    CONNECTIONS_OPEN.labels(listener=listener)
    RECEIVED_BYTES.labels(listener=listener)
    for result in results:
        MESSAGES.labels(listener=listener, result=result)
        RECIPIENTS.labels(listener=listener, result=result)


def multiprocess_dir() -> str | None:
    """The shared metrics directory, or None in single-process mode."""
    return os.environ.get(MULTIPROC_ENV) or None


def mark_process_dead(pid: int) -> None:
    """Forget a dead worker's live gauges (multi-process mode; otherwise nothing to do)."""
    directory = multiprocess_dir()
    if directory is not None:
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def render_metrics() -> tuple[bytes, str]:
    """The /metrics body and its Content-Type, aggregated over all workers in multi-process
    mode (read from disk: call it off the event loop if the directory may be large)."""
    directory = multiprocess_dir()
    if directory is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    # A fresh registry per scrape, as prometheus_client documents: the collector reads every
    # worker's files (this process's included) at collection time. REGISTRY itself is not
    # rendered here, it would count this process twice.
    registry = CollectorRegistry()
    # (prometheus_client leaves these two multiprocess helpers unannotated)
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(registry), CONTENT_TYPE_LATEST
