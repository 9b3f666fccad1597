"""The `letterbox` command line: CRDs, offline render and DNS plan of manifests, local mode, and
the operator itself."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from letterbox import __version__
from letterbox.api.crd import custom_resource_definitions
from letterbox.api.dnsrecord import DnsRecord, zone_line
from letterbox.api.manifests import ManifestError, Manifests, load_manifests
from letterbox.api.meta import domain_of
from letterbox.api.settings import load_settings
from letterbox.local import DEFAULT_PORTS, LocalModeError, LocalStack, dkim_key_materials
from letterbox.material import StateDir, default_state_dir
from letterbox.render.dkim import DkimKeyMaterial
from letterbox.render.dnsrecords import domain_records
from letterbox.render.secrets import credentials_secret, dkim_secret
from mailpod.config import MailpodConfig as PodConfig

EXIT_INVALID = 1


class CliError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _read_sources(paths: Sequence[str]) -> list[tuple[str, str]]:
    sources: list[tuple[str, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            if not files:
                raise CliError(f"{path}: no .yaml or .yml files in this directory")
        elif path.is_file() or raw == "-":
            files = [path]
        else:
            raise CliError(f"{path}: no such file or directory")
        for file in files:
            sources.append((str(file), sys.stdin.read() if raw == "-" else file.read_text()))
    return sources


def _load(paths: Sequence[str]) -> Manifests:
    manifests = load_manifests(_read_sources(paths))
    declared = {domain.spec.domain for domain in manifests.domains}
    for resource, address in [
        *((m, m.spec.address) for m in manifests.mailboxes),
        *((a, a.spec.address) for a in manifests.aliases),
        *((k, "@" + k.spec.domain) for k in manifests.dkim_keys),
    ]:
        if domain_of(address) not in declared:
            print(
                f"warning: {resource.kind} {resource.metadata.name}: no MailDomain declares "
                f"{domain_of(address)}; the operator would report Ready=False "
                "(reason DomainNotFound)",
                file=sys.stderr,
            )
    return manifests


def _dkim_material(manifests: Manifests, state: StateDir) -> list[DkimKeyMaterial]:
    return [material for material, _ in dkim_key_materials(manifests, state)]


def _redact(obj: dict[str, Any]) -> dict[str, Any]:
    data = obj.get("stringData", {})
    return {
        **obj,
        "stringData": {
            k: (v if k in ("username", "selector", "algorithm", "domain") else "<redacted>")
            for k, v in data.items()
        },
    }


def cmd_crds(args: argparse.Namespace) -> None:
    crds = custom_resource_definitions()
    if args.output is None:
        sys.stdout.write(yaml.safe_dump_all(crds, sort_keys=False))
        return
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for crd in crds:
        target = out / f"{crd['metadata']['name']}.yaml"
        target.write_text(yaml.safe_dump(crd, sort_keys=False))
        print(f"wrote {target}", file=sys.stderr)


def cmd_render(args: argparse.Namespace) -> None:
    manifests = _load(args.manifests)
    state = StateDir(Path(args.state_dir))
    objects: list[dict[str, Any]] = [
        credentials_secret(
            mailbox, state.password(mailbox.metadata.namespace or "default", mailbox.metadata.name)
        )
        for mailbox in manifests.mailboxes
        if mailbox.spec.password is None
    ]
    objects += [
        dkim_secret(key, material)
        for key, material in zip(manifests.dkim_keys, _dkim_material(manifests, state), strict=True)
    ]
    if not args.show_secrets:
        objects = [_redact(obj) for obj in objects]
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))


def _record_rows(records: list[DnsRecord]) -> str:
    header = ("PURPOSE", "NAME", "TYPE", "TTL", "VALUE")
    rows = [header] + [(r.purpose, r.name, r.type.value, str(r.ttl), r.value) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True))
        + "  "
        + row[4]
        + "\n"
        for row in rows
    )


def _print_plan(manifests: Manifests, keys: list[DkimKeyMaterial], output_format: str) -> None:
    for domain in manifests.domains:
        records = domain_records(domain.spec, keys)
        if output_format == "zone":
            print(f"; {domain.spec.domain} (MailDomain {domain.metadata.name})")
            print("\n".join(zone_line(record) for record in records))
        elif output_format == "yaml":
            plan = {
                "domain": domain.spec.domain,
                "zone": domain.spec.effective_zone,
                "records": [
                    {
                        "name": r.name,
                        "type": r.type.value,
                        "ttl": r.ttl,
                        "value": r.value,
                        "purpose": r.purpose,
                    }
                    for r in records
                ],
            }
            sys.stdout.write(yaml.safe_dump(plan, sort_keys=False, explicit_start=True))
        else:
            print(
                f"{domain.spec.domain}: zone {domain.spec.effective_zone}, "
                f"provider {domain.spec.dns.provider.value}, policy {domain.spec.dns.policy.value}"
            )
            sys.stdout.write(_record_rows(records))
        print()


def cmd_dns_plan(args: argparse.Namespace) -> None:
    manifests = _load(args.manifests)
    if not manifests.domains:
        raise CliError("no MailDomain in the given manifests: nothing to plan")
    _print_plan(manifests, _dkim_material(manifests, StateDir(Path(args.state_dir))), args.format)
    print(
        "Also point the mail host at your load balancer: an A/AAAA record for "
        + ", ".join(sorted({d.spec.effective_mail_host for d in manifests.domains}))
        + " (and PTR for its address, set with your hosting provider).",
        file=sys.stderr,
    )


def cmd_up(args: argparse.Namespace) -> None:
    state = StateDir(Path(args.state_dir))
    ports = dict(DEFAULT_PORTS)
    for item in args.port or []:
        kind, _, number = item.partition("=")
        if kind not in ports or not number.isdigit():
            raise CliError(f"--port {item}: expected one of {', '.join(ports)} = a port number")
        ports[kind] = int(number)
    stack = LocalStack(args.manifests, state, _load, bind=args.bind, ports=ports)

    def announce(manifests: Manifests, config: PodConfig) -> None:
        print("DNS records these domains need once they go live:\n")
        _print_plan(manifests, _dkim_material(manifests, state), "table")
        host = args.bind
        first = next(
            (
                m
                for m in manifests.mailboxes
                if m.spec.address in {c.address for c in config.mailboxes}
            ),
            None,
        )
        print(
            f"Mail pod running on {host}: SMTP {ports['smtp']}, submission {ports['submission']} "
            f"(STARTTLS), {ports['submissions']} (TLS), health/metrics http://{host}:{ports['http']}"
        )
        print(f"State (passwords, keys, certificate, mail): {state.root}\n")
        if first is not None:
            user = first.spec.address
            namespace = first.metadata.namespace or "default"
            secret = state.path(namespace, "mailboxes", f"{first.metadata.name}.password")
            password = (
                f"$(cat {secret})" if first.spec.password is None else "<password from its Secret>"
            )
            print("Receive (as an MX would):")
            print(f"  swaks --server {host}:{ports['smtp']} --to {user} --from friend@example.net")
            print("Submit as a user (self-signed certificate, hence -k / --tls-verify off):")
            print(
                f"  curl -k smtps://{host}:{ports['submissions']} --mail-from {user} "
                f'--mail-rcpt {user} -u "{user}:{password}" -T message.eml'
            )
            print(
                f"  swaks --server {host}:{ports['submission']} --tls --auth PLAIN "
                f'--auth-user {user} --auth-password "{password}" --from {user} --to {user}'
            )
            print(
                f"Read it: the Maildir under {state.path('mail')} (IMAP comes with the IMAP issue)."
            )
        print(
            "Edit the manifests and the running pod picks the change up. Ctrl-C stops.\n",
            flush=True,
        )

    try:
        code = stack.run(announce)
    except LocalModeError as error:
        raise CliError(str(error)) from error
    if code:
        raise CliError(f"the mail pod exited with status {code}")


# glibc's mallopt(M_ARENA_MAX): see `_limit_malloc_arenas`.
_M_ARENA_MAX = -8
OPERATOR_MALLOC_ARENAS = 2


def _limit_malloc_arenas(count: int = OPERATOR_MALLOC_ARENAS) -> None:
    """What MALLOC_ARENA_MAX=2 does, set from inside: glibc gives threads that allocate at
    the same time arenas of their own (up to 8 per core) and seldom returns their free memory,
    so the operator's API, watch, render and hashing threads each kept the high-water mark of
    their own heap. An explicit MALLOC_ARENA_MAX wins; other C libraries are left alone."""
    if "MALLOC_ARENA_MAX" in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, count)


def cmd_operator(args: argparse.Namespace) -> None:
    _limit_malloc_arenas()  # before any thread starts
    # Imported here: kopf and the API client are heavy, and the offline commands need neither.
    from letterbox.handlers.operator import run_operator
    from letterbox.kube import AsyncKube, Kube
    from letterbox.kube.connection import KubeconfigError

    text = Path(args.settings).read_text() if args.settings else None
    try:
        settings = load_settings(text, os.environ)
    except ValueError as error:  # pydantic's ValidationError is a ValueError
        raise CliError(f"invalid operator settings: {error}") from error
    if args.namespace:
        settings = settings.model_copy(update={"namespace": args.namespace})
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        kube = Kube.connect(
            args.kubeconfig, context=args.context, field_manager=settings.kopf.field_manager
        )
    except KubeconfigError as error:
        raise CliError(f"cannot connect to the cluster: {error}") from error
    # What is loaded by now (modules, kopf, the API client) lives as long as the process: kept
    # out of the collector's full passes, which would otherwise walk it again every time.
    gc.freeze()
    try:
        asyncio.run(run_operator(AsyncKube(kube), settings, liveness_endpoint=args.liveness))
    finally:
        kube.close()


def cmd_web(args: argparse.Namespace) -> None:
    """Serve the MTA-STS policies and client autoconfiguration of the manifests' MailDomains
    (what the operator serves from the cluster, for local mode or a server of one's own)."""
    from letterbox.web.server import WebServer  # imported here: only this command serves HTTP
    from letterbox.web.tls import ReloadingTlsContext, tls_files

    manifests = _load(args.manifests)
    try:
        files = tls_files(args.tls_cert, args.tls_key)
        host, _, port = args.listen.rpartition(":")
        tls = ReloadingTlsContext(*files) if files else None
        listen_port = int(port)
    except (ValueError, OSError) as error:  # a bad --listen, or unreadable certificate files
        raise CliError(str(error)) from error
    server = WebServer(tls=tls)
    server.set_domains([domain.spec for domain in manifests.domains])
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def serve() -> None:
        bound = await server.start(host.strip("[]") or None, listen_port)
        for domain, policy_id in server.served_policy_ids().items():
            print(f"serving {domain}: MTA-STS policy id {policy_id} on port {bound}", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="letterbox", description="Declarative mail for Kubernetes."
    )
    parser.add_argument("--version", action="version", version=f"letterbox {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = commands.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.add_argument("-o", "--output", metavar="DIR", help="write one file per CRD into DIR")
    crds.set_defaults(run=cmd_crds)

    state_help = f"where generated passwords and keys are kept (default {default_state_dir()})"
    render = commands.add_parser(
        "render", help="print the objects the operator would create for the manifests"
    )
    render.add_argument("manifests", nargs="+", metavar="MANIFEST", help="files or directories")
    render.add_argument("--state-dir", default=str(default_state_dir()), help=state_help)
    render.add_argument(
        "--show-secrets", action="store_true", help="print generated passwords and keys"
    )
    render.set_defaults(run=cmd_render)

    plan = commands.add_parser("dns-plan", help="print the DNS records each domain needs")
    plan.add_argument("manifests", nargs="+", metavar="MANIFEST", help="files or directories")
    plan.add_argument("--state-dir", default=str(default_state_dir()), help=state_help)
    plan.add_argument("--format", choices=("table", "zone", "yaml"), default="table")
    plan.set_defaults(run=cmd_dns_plan)
    up = commands.add_parser(
        "up", help="run the manifests locally: render the mail pod config and start the mail pod"
    )
    up.add_argument("manifests", nargs="+", metavar="MANIFEST", help="files or directories")
    up.add_argument("--state-dir", default=str(default_state_dir()), help=state_help)
    up.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    up.add_argument(
        "--port",
        action="append",
        metavar="KIND=PORT",
        help="override a port (defaults: "
        + ", ".join(f"{kind}={port}" for kind, port in DEFAULT_PORTS.items())
        + ")",
    )
    up.set_defaults(run=cmd_up)

    operator = commands.add_parser(
        "operator", help="run the operator: reconcile the letterbox resources of a namespace"
    )
    operator.add_argument(
        "--kubeconfig", help="kubeconfig file (default: in-cluster account, then $KUBECONFIG)"
    )
    operator.add_argument("--context", help="kubeconfig context (default: its current-context)")
    operator.add_argument(
        "--namespace", help="namespace to serve (default: the settings' namespace)"
    )
    operator.add_argument(
        "--settings", metavar="FILE", help="install-wide settings (YAML, the chart's values)"
    )
    operator.add_argument(
        "--liveness",
        metavar="URL",
        help="serve health checks at URL, e.g. http://0.0.0.0:8080/healthz (the chart's probes)",
    )
    operator.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    operator.set_defaults(run=cmd_operator)

    web = commands.add_parser(
        "web", help="serve the MTA-STS policies and client autoconfiguration of the manifests"
    )
    web.add_argument("manifests", nargs="+", metavar="MANIFEST", help="files or directories")
    web.add_argument(
        "--listen", default="127.0.0.1:8088", metavar="HOST:PORT", help="default 127.0.0.1:8088"
    )
    web.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate chain")
    web.add_argument("--tls-key", metavar="FILE", help="its private key")
    web.set_defaults(run=cmd_web)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except ManifestError as error:
        print("error: invalid manifests:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_INVALID
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return 0


if __name__ == "__main__":
    sys.exit(main())
