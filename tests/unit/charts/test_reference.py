"""Generated files are up to date: docs/crd-reference.md, the chart's values schema (its `mail`
part is OperatorSettings' schema) and the chart's CRDs."""

from __future__ import annotations

import json

from letterbox.api.settings import OperatorSettings
from tests.harness.reference import CRD_REFERENCE, VALUES_SCHEMA, generated, main


def test_generated_files_are_up_to_date() -> None:
    stale = [str(path) for path, text in generated().items() if path.read_text() != text]
    assert not stale, f"stale: {stale}; run python -m tests.harness.reference"
    assert main(["--check"]) == 0


def test_reference_names_every_field_of_every_kind_and_setting() -> None:
    text = CRD_REFERENCE.read_text()
    for heading in ("## MailDomain", "## Mailbox", "## Alias", "## DKIMKey"):
        assert heading in text
    for row in ("`spec.dns.rfc2136.server` (required)", "`spec.address`", "`status.conditions`"):
        assert row in text
    for field in OperatorSettings.model_fields.values():
        assert f"| `{field.alias}` |" in text, field.alias


def test_values_schema_mail_is_the_settings_schema() -> None:
    mail = json.loads(VALUES_SCHEMA.read_text())["properties"]["mail"]
    aliases = {f.alias for f in OperatorSettings.model_fields.values()}
    assert set(mail["properties"]) == aliases
    assert mail["additionalProperties"] is False
