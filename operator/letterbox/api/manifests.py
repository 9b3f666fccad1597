"""Reading manifests: YAML documents into API models, with errors a person can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from letterbox.api.alias import Alias
from letterbox.api.dkimkey import DKIMKey
from letterbox.api.mailbox import Mailbox
from letterbox.api.maildomain import MailDomain
from letterbox.api.meta import API_VERSION, Resource


class ManifestError(ValueError):
    """One or more documents are invalid; `str()` lists every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Manifests:
    """Everything read from a set of files, by kind. Secrets are kept for password lookups."""

    domains: list[MailDomain] = field(default_factory=list)
    mailboxes: list[Mailbox] = field(default_factory=list)
    aliases: list[Alias] = field(default_factory=list)
    dkim_keys: list[DKIMKey] = field(default_factory=list)
    secrets: list[dict[str, Any]] = field(default_factory=list)

    def add(self, resource: Resource) -> None:
        match resource:
            case MailDomain():
                self.domains.append(resource)
            case Mailbox():
                self.mailboxes.append(resource)
            case Alias():
                self.aliases.append(resource)
            case DKIMKey():
                self.dkim_keys.append(resource)

    def resources(self) -> list[Resource]:
        return [*self.domains, *self.mailboxes, *self.aliases, *self.dkim_keys]


_KINDS: dict[str, type[Resource]] = {
    kind.__name__: kind for kind in (MailDomain, Mailbox, Alias, DKIMKey)
}


def _field_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "(document)"


def _message(error: Any) -> str:
    text: str = error["msg"]
    # pydantic prefixes errors raised by our validators; the rest of the text is already ours.
    return text.removeprefix("Value error, ")


def parse_document(document: Any) -> Resource | dict[str, Any] | None:
    """One YAML document: a letterbox resource, a Secret (returned as a dict), or None if empty.

    Raises ValueError (or ValidationError) with the reason."""
    if document is None:
        return None
    if not isinstance(document, dict):
        raise ValueError("a manifest must be a mapping with apiVersion, kind, metadata and spec")
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version == "v1" and kind == "Secret":
        return document
    if kind == "List" and api_version == "v1":
        raise ValueError("v1 List documents are not supported; put one object per document")
    if api_version != API_VERSION or kind not in _KINDS:
        raise ValueError(
            f"unsupported object {api_version}/{kind}: expected {API_VERSION} "
            f"{', '.join(_KINDS)} (or a v1 Secret)"
        )
    return _KINDS[kind].model_validate(document)


def load_manifests(sources: list[tuple[str, str]]) -> Manifests:
    """Parse `(source name, YAML text)` pairs; collects every problem before raising."""
    manifests = Manifests()
    problems: list[str] = []
    for source, text in sources:
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError as error:
            problems.append(f"{source}: not valid YAML: {error}")
            continue
        for index, document in enumerate(documents, start=1):
            where = f"{source}: document {index}"
            if isinstance(document, dict):
                name = (document.get("metadata") or {}).get("name")
                where += f" ({document.get('kind', '?')} {name or '?'})"
            try:
                parsed = parse_document(document)
            except ValidationError as error:
                problems += [
                    f"{where}: {_field_path(detail['loc'])}: {_message(detail)}"
                    for detail in error.errors()
                ]
                continue
            except ValueError as error:
                problems.append(f"{where}: {error}")
                continue
            if isinstance(parsed, Resource):
                manifests.add(parsed)
            elif parsed is not None:
                manifests.secrets.append(parsed)
    if problems:
        raise ManifestError(problems)
    return manifests
