"""LIST and LSUB matching (pure): wildcards, implied parents, CHILDREN and SPECIAL-USE
attributes, and the LIST-EXTENDED selection options."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mailpod.imap.backend import FolderInfo

__all__ = ["DELIMITER", "ListEntry", "list_folders", "pattern_regex"]

DELIMITER = "."


@dataclass(frozen=True, slots=True)
class ListEntry:
    name: str
    attributes: tuple[str, ...]
    folder: FolderInfo | None  # None for a parent that only exists through its children


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """`*` matches anything, `%` anything but the delimiter; the rest literally."""
    canonical = reference + pattern
    regex = "".join(
        ".*" if c == "*" else f"[^{re.escape(DELIMITER)}]*" if c == "%" else re.escape(c)
        for c in canonical
    )
    return re.compile(regex, re.DOTALL)


def _matches(regex: re.Pattern[str], name: str) -> bool:
    if regex.fullmatch(name):
        return True
    # INBOX is case-insensitive, also as the first level of a hierarchy ("inbox.%").
    if name == "INBOX" or name.startswith("INBOX" + DELIMITER):
        return re.compile(regex.pattern, re.DOTALL | re.IGNORECASE).fullmatch(name) is not None
    return False


def _ancestors(name: str) -> list[str]:
    levels = name.split(DELIMITER)
    return [DELIMITER.join(levels[:n]) for n in range(1, len(levels))]


def list_folders(
    folders: Sequence[FolderInfo],
    reference: str,
    patterns: Sequence[str],
    *,
    subscribed_only: bool = False,
    special_use_only: bool = False,
    return_subscribed: bool = False,
    recursive_match: bool = False,
    extended: bool = False,
) -> list[ListEntry]:
    by_name = {folder.name: folder for folder in folders}
    with_children: set[str] = set()
    for name in by_name:
        with_children.update(_ancestors(name))
    regexes = [pattern_regex(reference, pattern) for pattern in patterns]

    def wanted(name: str) -> bool:
        return any(_matches(regex, name) for regex in regexes)

    def selected(folder: FolderInfo) -> bool:
        if subscribed_only and not folder.subscribed:
            return False
        return not (special_use_only and folder.special_use is None)

    entries: dict[str, ListEntry] = {}
    for name, folder in by_name.items():
        if not wanted(name):
            continue
        childinfo = recursive_match and any(
            other.startswith(name + DELIMITER) and selected(by_name[other]) for other in by_name
        )
        if not selected(folder) and not childinfo:
            continue
        attributes = ["\\HasChildren" if name in with_children else "\\HasNoChildren"]
        if folder.special_use:
            attributes.append(folder.special_use)
        if folder.subscribed and (return_subscribed or subscribed_only):
            attributes.append("\\Subscribed")
        if not selected(folder):
            attributes.append("\\NonExistent" if extended else "\\Noselect")
        entries[name] = ListEntry(name, tuple(attributes), folder)
    if not subscribed_only and not special_use_only:
        # A parent that exists only through its children shows when a "%" hid the children.
        for name in sorted(with_children - by_name.keys()):
            if wanted(name) and any(
                not wanted(child) for child in by_name if child.startswith(name + DELIMITER)
            ):
                implied = ("\\NonExistent" if extended else "\\Noselect", "\\HasChildren")
                entries[name] = ListEntry(name, implied, None)
    return [entries[name] for name in sorted(entries, key=lambda n: (n != "INBOX", n))]
