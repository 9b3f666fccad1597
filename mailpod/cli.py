"""The `mailpod` command line."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mailpod import __version__
from mailpod.config import ConfigError, load_config
from mailpod.queue import cli as queue_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailpod", description="Letterbox's mail server.")
    parser.add_argument("--version", action="version", version=f"mailpod {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="serve SMTP (and IMAP) with the given config")
    run.add_argument(
        "--config",
        action="append",
        required=True,
        type=Path,
        metavar="PATH",
        help="config file or directory of shards; repeatable",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("MAILPOD_WORKERS", "0")) or os.cpu_count() or 1,
        help="worker processes (default: one per CPU)",
    )
    # The config Secrets read live through the API (the --config files are the start-up
    # fallback); the StatefulSet sets the first two, a kubeconfig is for running outside a pod.
    run.add_argument(
        "--config-secret",
        default=os.environ.get("MAILPOD_CONFIG_SECRET") or None,
        metavar="NAME",
        help="settings Secret of the pod config to watch (default: $MAILPOD_CONFIG_SECRET)",
    )
    run.add_argument(
        "--namespace",
        default=os.environ.get("MAILPOD_NAMESPACE") or None,
        help="namespace of the config Secrets (default: $MAILPOD_NAMESPACE, else the pod's)",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        default=os.environ.get("MAILPOD_KUBECONFIG") or None,
        help="kubeconfig for the API (default: $MAILPOD_KUBECONFIG, else in-cluster)",
    )
    run.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=os.environ.get("MAILPOD_LOG_FORMAT", "json"),
    )

    check = commands.add_parser("check-config", help="validate a config and exit")
    check.add_argument("--config", action="append", required=True, type=Path, metavar="PATH")
    queue_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "queue":
        return queue_cli.run(args)
    try:
        if args.command == "check-config":
            config = load_config(args.config)
            print(
                f"ok: {len(config.domains)} domains, {len(config.mailboxes)} mailboxes, "
                f"{len(config.aliases)} aliases"
            )
            return 0
        load_config(args.config)  # fail fast, before touching the environment
        if args.workers > 1 and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
            # Must be set before prometheus_client is first imported (it picks its value
            # class then), so the workers' metrics can be summed by whoever serves /metrics.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mailpod-metrics-")
        from mailpod.kubesource import KubeSourceSettings
        from mailpod.logs import setup_logging
        from mailpod.server import run

        setup_logging(json_output=args.log_format == "json")
        api = (
            KubeSourceSettings(args.config_secret, args.namespace, args.kubeconfig)
            if args.config_secret
            else None
        )
        return run(args.config, args.workers, api)
    except ConfigError as error:
        print(f"mailpod: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
