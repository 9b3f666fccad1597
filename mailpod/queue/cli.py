"""`mailpod queue list|show|retry|drop`: look into the outbound queue and act on it.

Works on the queue directory directly (in the pod: `kubectl exec … mailpod queue list`), while
the pod runs or not. retry and drop are journalled in the message and signalled to the running
scheduler through a control marker, so they never race its own writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from mailpod.config import ConfigError, load_config
from mailpod.queue.store import QueuedMessage, QueueStore


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = commands.add_parser("queue", help="inspect and act on the outbound queue")
    where = queue.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", action="append", type=Path, metavar="PATH")
    where.add_argument("--queue-dir", type=Path, metavar="DIR")
    actions = queue.add_subparsers(dest="queue_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="one line per queued message")
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="a message's envelope, recipients and headers")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    retry = actions.add_parser("retry", help="retry deferred recipients now")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every queued message")
    drop = actions.add_parser("drop", help="remove messages without delivering or bouncing")
    drop.add_argument("ids", nargs="+", metavar="ID")


def _when(timestamp: float) -> str:
    if timestamp <= 0:
        return "now"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(message: QueuedMessage) -> dict[str, object]:
    pending = [message.recipients[i] for i in message.pending]
    return {
        "id": message.id,
        "created": _when(message.created),
        "age_seconds": round(time.time() - message.created),
        "sender": message.sender,
        "size": message.size,
        "recipients": len(message.recipients),
        "pending": len(pending),
        "next_attempt": _when(min((r.next_attempt for r in pending), default=0)),
        "dropped": message.dropped,
    }


def _details(store: QueueStore, message: QueuedMessage) -> dict[str, object]:
    try:
        body = store.body(message.id)
    except FileNotFoundError:
        body = b""
    end = body.find(b"\r\n\r\n")
    headers = body[: end if end >= 0 else len(body)].decode("utf-8", "replace")
    return {
        **_summary(message),
        "bounce_to": message.bounce_to,
        "ret": message.ret,
        "envid": message.envid,
        "recipient_status": [
            {
                "address": r.address,
                "status": r.status.value,
                "attempts": r.attempts,
                "next_attempt": _when(r.next_attempt) if not r.status.final else "",
                "reply": r.reply,
                "remote_mta": r.remote_mta,
            }
            for r in message.recipients
        ],
        "headers": headers,
    }


def run(args: argparse.Namespace) -> int:
    if args.queue_dir is not None:
        queue_dir = args.queue_dir
    else:
        try:
            queue_dir = load_config(args.config).storage.queue_dir
        except ConfigError as error:
            print(f"mailpod: {error}", file=sys.stderr)
            return 2
    store = QueueStore(queue_dir)
    command = args.queue_command
    if command == "list":
        messages = [m for m in map(store.load, store.ids()) if m is not None]
        if args.json:
            print(json.dumps([_summary(m) for m in messages], indent=1))
            return 0
        for m in messages:
            s = _summary(m)
            print(
                f"{m.id}  {s['created']}  {m.size:>9}  <{m.sender}>  "
                f"{s['pending']}/{s['recipients']} pending  next {s['next_attempt']}"
            )
        print(f"{len(messages)} message(s)")
        return 0
    if command == "show":
        message = store.load(args.id) if _is_id(store, args.id) else None
        if message is None:
            print(f"mailpod: no queued message {args.id}", file=sys.stderr)
            return 1
        details = _details(store, message)
        if args.json:
            print(json.dumps(details, indent=1))
            return 0
        for key, value in details.items():
            if key == "recipient_status":
                for r in value:  # type: ignore[attr-defined]
                    print(f"recipient: <{r['address']}> {r['status']} attempts={r['attempts']}"
                          f" next={r['next_attempt']} {r['reply']}")  # fmt: skip
            elif key != "headers":
                print(f"{key}: {value}")
        print()
        print(details["headers"])
        return 0
    if command == "retry":
        if not args.all and not args.ids:
            print("mailpod: name message ids or use --all", file=sys.stderr)
            return 2
        if args.all:  # messages delivered meanwhile are no error
            return _act(store, store.ids(), "retry", missing_ok=True)
        return _act(store, args.ids, "retry")
    if command == "drop":
        return _act(store, args.ids, "drop")
    return 2  # argparse already refused anything else


def _is_id(store: QueueStore, queue_id: str) -> bool:
    try:
        store.path(queue_id, "msg")
    except ValueError:
        return False
    return True


def _act(store: QueueStore, ids: list[str], operation: str, missing_ok: bool = False) -> int:
    missing = 0
    for queue_id in ids:
        if _is_id(store, queue_id) and store.request(queue_id, operation):
            print(f"{queue_id}: {operation} requested")
        elif not missing_ok:
            print(f"mailpod: no queued message {queue_id}", file=sys.stderr)
            missing += 1
    return 1 if missing else 0
