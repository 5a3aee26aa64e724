from __future__ import annotations

import itertools

from kubetune.api import MethodType, OutputFormat
from kubetune.catalog import Strategy, presets, support_matrix

PHI3_FAMILY = {
    "phi-3-mini-4k-instruct",
    "phi-3-mini-128k-instruct",
    "phi-3-small-8k-instruct",
    "phi-3-small-128k-instruct",
    "phi-3-medium-4k-instruct",
    "phi-3-medium-128k-instruct",
    "phi-3.5-mini-instruct",
}


def test_presets_cover_the_phi3_family_and_three_others() -> None:
    names = set(presets())

    assert names >= PHI3_FAMILY
    assert len(names - PHI3_FAMILY) >= 3


def test_every_preset_states_its_facts() -> None:
    for name, preset in presets().items():
        assert preset.parameters > 1e9, name
        assert preset.target_modules, name
        assert preset.chat_template.end_of_turn, name
        assert preset.resources.accelerators >= 1, name
        assert "/" in preset.repo, name


def test_support_matrix_has_exactly_one_row_per_combination() -> None:
    keys = [(r.method, r.strategy, r.output) for r in support_matrix()]
    expected = set(itertools.product([m.value for m in MethodType], list(Strategy), [f.value for f in OutputFormat]))

    assert len(keys) == len(set(keys))
    assert set(keys) == expected


def test_every_row_says_why_or_what_is_asserted() -> None:
    for row in support_matrix():
        if row.supported:
            assert row.asserts and "loss falls" in row.asserts, row
        else:
            assert row.reason, row


def test_full_fine_tuning_has_no_adapter_output() -> None:
    refused = {(r.method, r.output) for r in support_matrix() if not r.supported}

    assert refused == {("full", "adapter")}


def test_only_fsdp_rows_need_an_accelerator() -> None:
    needing = {r.strategy for r in support_matrix() if r.needs_accelerator}

    assert needing == {Strategy.FSDP}


def test_a_covered_row_names_a_supported_row_that_runs() -> None:
    rows = {(r.method, r.strategy, r.output): r for r in support_matrix()}

    for row in rows.values():
        if row.covered_by is not None:
            cover = rows[(row.covered_by.method, row.covered_by.strategy, row.covered_by.output)]
            assert row.supported and cover.supported and cover.covered_by is None, row
            assert not cover.needs_accelerator and not row.needs_accelerator, row
