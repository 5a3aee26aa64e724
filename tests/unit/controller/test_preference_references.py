"""A dpo job's reference model is mounted and its token found like the base model's."""

from __future__ import annotations

from typing import Any

from kubetune.api import parse_finetunejob
from kubetune.controller.references import references


def test_a_reference_model_on_a_claim_with_a_token_is_referenced(job: dict[str, Any]) -> None:
    job["spec"]["objective"] = "dpo"
    job["spec"]["dataset"].pop("format", None)
    job["spec"]["preference"] = {
        "reference": {"pvc": {"claimName": "sft-models", "path": "v1"}, "hubTokenSecret": {"name": "hub", "key": "t"}}
    }

    found = references(parse_finetunejob(job).spec)

    assert "sft-models" in found.claims
    assert "hub" in found.secrets
