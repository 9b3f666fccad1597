"""The `mailpod` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mailpod import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailpod", description="Letterbox's mail server.")
    parser.add_argument("--version", action="version", version=f"mailpod {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(
        "mailpod: the mail server lands with the 'Mail pod I' issue; try --version", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
