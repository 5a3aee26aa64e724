"""A preference run's model card names its objective, with the settings that shaped it."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune_trainer.card import model_card

from .conftest import memorise_spec
from .test_run_files import ADAPTER_RUN


def _spec(objective: str, **preference: Any) -> FineTuneJobSpec:
    body = memorise_spec("lora", ["adapter"]).model_dump(by_alias=True, exclude_unset=True)
    return FineTuneJobSpec.model_validate(body | {"objective": objective, "preference": preference or None})


@pytest.mark.parametrize(
    ("objective", "preference", "said"),
    [
        ("dpo", {}, "objective **dpo** (beta 0.1, sigmoid loss, against the base model)"),
        (
            "dpo",
            {"beta": 0.3, "lossType": "ipo", "reference": {"pvc": {"claimName": "models", "path": "sft"}}},
            "objective **dpo** (beta 0.3, ipo loss, against models:sft)",
        ),
        ("orpo", {"beta": 0.2}, "objective **orpo** (beta 0.2, no reference model)"),
    ],
)
def test_the_card_names_the_objective_and_tags_it(objective: str, preference: dict[str, Any], said: str) -> None:
    card = model_card(_spec(objective, **preference), ADAPTER_RUN)

    assert said in card
    assert f"tags: [kubetune, lora, causal-lm, {objective}]" in card


def test_an_sft_card_says_nothing_of_an_objective() -> None:
    card = model_card(memorise_spec("lora", ["adapter"]), ADAPTER_RUN)

    assert "objective" not in card
    assert "tags: [kubetune, lora, causal-lm]" in card
