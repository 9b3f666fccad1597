"""Shared pieces of the API models: base classes, validation rules, conditions and object metadata.

Every constraint is declared once and enforced twice: pydantic checks it here (so `letterbox
render` explains bad manifests offline) and the generated CRD carries the same rule as OpenAPI
keywords or a CEL `x-kubernetes-validations` entry (so `kubectl apply` rejects the manifest with
the same message).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from mailpod.config import DNS_LABEL_PATTERN, DOMAIN_PATTERN, LOCAL_PART_PATTERN

GROUP = "letterbox.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

CEL_VALIDATIONS = "x-kubernetes-validations"


@dataclass(frozen=True)
class Matches:
    """A string field must match `pattern` (RE2 and Python `re` agree on the subset we use).

    Emitted as a CEL rule rather than an OpenAPI `pattern` because the API server then reports our
    `message` instead of echoing the regular expression at the user.
    """

    pattern: str
    message: str

    def __post_init__(self) -> None:
        # The rule embeds the pattern in a CEL raw string literal delimited by double quotes.
        if '"' in self.pattern or not (self.pattern.startswith("^") and self.pattern.endswith("$")):
            raise ValueError(f"pattern must be anchored and free of double quotes: {self.pattern}")

    @property
    def cel(self) -> str:
        return f'self.matches(r"{self.pattern}")'

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        regex = re.compile(self.pattern)
        message = self.message

        def check(value: str) -> str:
            # fullmatch, not search: Python's `$` would otherwise accept a trailing newline.
            if regex.fullmatch(value) is None:
                raise ValueError(message)
            return value

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler.resolve_ref_schema(handler(schema))
        json_schema.setdefault(CEL_VALIDATIONS, []).append(
            {"rule": self.cel, "message": self.message}
        )
        return json_schema


@dataclass(frozen=True)
class Unique:
    """A list field is a set: the API server answers "Duplicate value" (list-type set), pydantic
    the same."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        def check(items: tuple[Any, ...]) -> tuple[Any, ...]:
            seen: set[Any] = set()
            for item in items:
                if item in seen:
                    raise ValueError(f"duplicate value {item!r}")
                seen.add(item)
            return items

        return core_schema.no_info_after_validator_function(check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler.resolve_ref_schema(handler(schema))
        json_schema["x-kubernetes-list-type"] = "set"
        return json_schema


@dataclass(frozen=True)
class Rule:
    """An object-level rule: `cel` for the API server, `check` the same predicate in Python."""

    cel: str
    message: str
    check: Callable[[Any], bool]


class ApiModel(BaseModel):
    """Base of every API object part: camelCase on the wire, unknown fields rejected like
    `kubectl apply --validate=strict`, attribute docstrings become `kubectl explain` text."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        use_enum_values=False,
    )

    rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler.resolve_ref_schema(handler(schema))
        if cls.rules:
            json_schema[CEL_VALIDATIONS] = [
                {"rule": rule.cel, "message": rule.message} for rule in cls.rules
            ]
        return json_schema


# --- reusable string types ------------------------------------------------------------------

_LABEL = DNS_LABEL_PATTERN


DomainName = Annotated[
    str,
    Field(max_length=253, min_length=1),
    Matches(
        rf"^{DOMAIN_PATTERN}$",
        "must be a lower-case DNS name such as example.com (internationalised names in their "
        "xn-- form)",
    ),
]
EmailAddress = Annotated[
    str,
    Field(max_length=254, min_length=3),
    Matches(
        rf"^{LOCAL_PART_PATTERN}@{DOMAIN_PATTERN}$",
        "must be an address local-part@domain such as alice@example.com, with a lower-case DNS "
        "domain",
    ),
]
DnsLabel = Annotated[
    str,
    Field(max_length=63, min_length=1),
    Matches(rf"^{_LABEL}$", "must be a DNS label: lower-case letters, digits and '-'"),
]
ObjectName = Annotated[
    str,
    Field(max_length=253, min_length=1),
    Matches(
        rf"^{_LABEL}(\.{_LABEL})*$",
        "must be a Kubernetes object name: lower-case letters, digits, '-' and '.'",
    ),
]
Quantity = Annotated[
    str,
    Field(max_length=32),
    Matches(
        r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
        "must be a non-negative size such as 500Mi or 10Gi (0 means unlimited)",
    ),
]
Duration = Annotated[
    str,
    Field(max_length=32),
    Matches(
        r"^([0-9]+(w|d|h|m|s))+$",
        "must be a duration such as 90d, 12h or 1d12h (units w, d, h, m, s)",
    ),
]
ReportUri = Annotated[
    str,
    Field(max_length=512),
    Matches(
        rf"^(mailto:{LOCAL_PART_PATTERN}@{DOMAIN_PATTERN}|https://[^\s,;!]+)$",
        "must be a mailto: address or an https:// URL, e.g. mailto:dmarc@example.com",
    ),
]

_QUANTITY_FACTORS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}
_DURATION_SECONDS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}


def quantity_bytes(quantity: str) -> int:
    """Bytes in a validated `Quantity` string ("10Gi" -> 10737418240)."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return int(float(number) * _QUANTITY_FACTORS[unit])


def duration_seconds(duration: str) -> int:
    """Seconds in a validated `Duration` string ("1d12h" -> 129600)."""
    return sum(
        int(amount) * _DURATION_SECONDS[unit]
        for amount, unit in re.findall(r"([0-9]+)([wdhms])", duration)
    )


def domain_of(address: str) -> str:
    """The domain part of an address or of an `@domain` catch-all."""
    return address.rpartition("@")[2]


# --- status -----------------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """One observation about the resource, keyed by `type` (cert-manager / metav1 semantics)."""

    type: Annotated[str, Field(max_length=64, min_length=1)]
    """Condition type in PascalCase, e.g. Ready, DNSPublished, KeyActive."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(max_length=128)] = ""
    """Machine-readable PascalCase reason for the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """What happened, and what to do about it, for a person."""
    last_transition_time: datetime | None = None
    """When `status` last changed (not when the condition was last written)."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` this condition was computed from."""


Conditions = Annotated[
    tuple[Condition, ...],
    Field(
        max_length=32,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]


class Status(ApiModel):
    """Status common to every kind; kinds extend it."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the operator last reconciled."""
    conditions: Conditions = ()
    """Current conditions, `Ready` first."""


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata the models read; everything else passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: ObjectName
    namespace: ObjectName | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    generation: int | None = None


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: str = "string"
    priority: int = 0
    description: str = ""


def ready_columns() -> tuple[PrinterColumn, ...]:
    """The columns every kind ends with, so `kubectl get` tells the story the same way."""
    return (
        PrinterColumn(
            "Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready"
        ),
        PrinterColumn(
            "Reason",
            '.status.conditions[?(@.type=="Ready")].reason',
            description="Why the resource is (not) ready",
        ),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    )


@dataclass(frozen=True)
class CrdNames:
    plural: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("letterbox", "mail")


class Resource(ApiModel):
    """A letterbox.dev/v1alpha1 object: apiVersion, kind, metadata, spec, status."""

    model_config = ConfigDict(alias_generator=None)

    names: ClassVar[CrdNames]

    api_version: Annotated[str, Field(alias="apiVersion")] = API_VERSION
    kind: str
    metadata: ObjectMeta

    @model_validator(mode="after")
    def _check_api_version(self) -> Resource:
        if self.api_version != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION}, not {self.api_version}")
        return self
