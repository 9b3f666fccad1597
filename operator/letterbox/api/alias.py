"""Alias: an address (or a whole domain's catch-all) that forwards to other addresses."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from letterbox.api.meta import (
    ApiModel,
    CrdNames,
    EmailAddress,
    Matches,
    PrinterColumn,
    Resource,
    Rule,
    Status,
    Unique,
    ready_columns,
)
from mailpod.config import DOMAIN_PATTERN, LOCAL_PART_PATTERN

AliasAddress = Annotated[
    str,
    Field(max_length=254, min_length=2),
    Matches(
        rf"^({LOCAL_PART_PATTERN})?@{DOMAIN_PATTERN}$",
        "must be an address such as sales@example.com, or @example.com for a catch-all",
    ),
]


class AliasSpec(ApiModel):
    """Mail to `address` is delivered to every destination instead."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(self.address in self.destinations)",
            "an alias must not list its own address as a destination",
            lambda s: s.address not in s.destinations,
        ),
    )

    address: AliasAddress
    """The alias address, or @domain to catch mail for every unknown local part of the domain."""
    destinations: Annotated[
        tuple[EmailAddress, ...],
        Field(min_length=1, max_length=1000),
        Unique(),
    ]
    """Local mailboxes or external addresses (external ones are forwarded with SRS)."""

    @property
    def is_catch_all(self) -> bool:
        return self.address.startswith("@")


class Alias(Resource):
    names: ClassVar[CrdNames] = CrdNames(
        plural="aliases",
        short_names=("mal", "mailalias"),
        columns=(
            PrinterColumn("Address", ".spec.address", description="Alias address"),
            PrinterColumn("Destinations", ".spec.destinations", description="Delivered to"),
            *ready_columns(),
        ),
    )

    kind: Literal["Alias"] = "Alias"
    spec: AliasSpec
    status: Status = Field(default_factory=Status)
