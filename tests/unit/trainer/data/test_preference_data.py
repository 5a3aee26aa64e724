"""Preference pairs: recognised, checked with located errors, encoded answer by answer after
their prompt (test_cache.py keeps them in the preflight's cache), and laid out without padding with each token
tagged by its answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import DataFormat, TaskType, Truncation
from kubetune.api.enums import Objective
from kubetune.api.spec import DatasetSpec
from kubetune_trainer.data.formats import ChatPreference, Message, TextPreference, detect_format, to_example
from kubetune_trainer.data.pipeline import encode_dataset, read_dataset
from kubetune_trainer.data.preference import EncodedPair, PairCollator, encode_pair, lay_out
from kubetune_trainer.data.readers import Row
from kubetune_trainer.data.tokenize import IGNORE_INDEX, DataStats, TokenizedExample, ensure_chat_template
from kubetune_trainer.errors import InvalidData
from kubetune_trainer.runtime import Runtime

TEXT = {"prompt": "What is the code word?", "chosen": "The code word is apple.", "rejected": "It is stone."}
CHAT = {
    "prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "The code word?"}],
    "chosen": [{"role": "assistant", "content": "apple"}],
    "rejected": [{"role": "assistant", "content": "stone"}],
}


def _row(values: dict[str, Any]) -> Row:
    return Row(values, "pairs.jsonl line 3")


def test_a_pair_is_recognised_only_among_the_preference_objectives_formats() -> None:
    formats = Objective.DPO.formats(TaskType.CAUSAL_LM)

    assert detect_format(_row(TEXT), formats) is DataFormat.PREFERENCE
    with pytest.raises(InvalidData, match=r"pairs\.jsonl line 3: cannot tell the format .* preference: chosen"):
        detect_format(_row({"messages": []}), formats)


def test_text_and_chat_pairs_become_their_examples() -> None:
    text = to_example(DataFormat.PREFERENCE, _row(TEXT))
    chat = to_example(DataFormat.PREFERENCE, _row(CHAT))
    mixed = to_example(DataFormat.PREFERENCE, _row(TEXT | {"chosen": CHAT["chosen"]}))

    assert text == TextPreference(TEXT["prompt"], TEXT["chosen"], TEXT["rejected"])
    assert isinstance(chat, ChatPreference) and chat.chosen == (Message("assistant", "apple"),)
    assert chat.prompt[0] == Message("system", "Answer briefly.")
    # A text part of a chat pair is the user's turn (the prompt) or the assistant's (an answer).
    assert mixed == ChatPreference(
        (Message("user", TEXT["prompt"]),), (Message("assistant", "apple"),), (Message("assistant", TEXT["rejected"]),)
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "line 3: missing rejected"),
        ({"chosen": "a", "rejected": "b"}, "line 3: missing prompt"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "line 3: chosen is empty"),
        ({"prompt": "q", "chosen": "a", "rejected": ""}, "line 3: rejected is empty"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "line 3: chosen and rejected are the same answer"),
        (CHAT | {"rejected": CHAT["chosen"]}, "line 3: chosen and rejected are the same answer"),
        (CHAT | {"chosen": [{"role": "assistant", "content": ""}]}, r"line 3: chosen\[0\]: empty assistant turn"),
        (CHAT | {"chosen": [{"role": "user", "content": "more"}]}, "chosen must end with an assistant message"),
        (CHAT | {"rejected": []}, "rejected must be a non-empty list"),
        (
            CHAT | {"chosen": [{"role": "system", "content": "x"}, *CHAT["chosen"]]},
            "system message may only come first",
        ),
        ({"prompt": 3, "chosen": "a", "rejected": "b"}, "prompt must be a string, found int"),
    ],
)
def test_a_bad_pair_is_refused_with_its_place_and_fault(values: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidData, match=message):
        to_example(DataFormat.PREFERENCE, _row(values))


def test_the_dataset_reader_checks_every_row_of_a_preference_set(runtime: Runtime) -> None:
    (runtime.volumes / "data").mkdir(exist_ok=True)
    rows = [TEXT, TEXT | {"rejected": TEXT["chosen"]}]
    (runtime.volumes / "data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    dataset = DatasetSpec.model_validate({"pvc": {"claimName": "data", "path": "pairs.jsonl"}})

    with pytest.raises(InvalidData, match=r"pairs\.jsonl line 2: chosen and rejected are the same answer"):
        read_dataset(dataset, runtime, 1, TaskType.CAUSAL_LM, Objective.DPO)


@pytest.fixture(scope="module")
def tokenizer(volumes: Path) -> Any:
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(volumes / "models" / "tiny-phi3")
    ensure_chat_template(loaded)
    return loaded


def _answer(side: TokenizedExample, tokenizer: Any) -> str:
    return str(tokenizer.decode([t for t in side.labels if t != IGNORE_INDEX], skip_special_tokens=True))


def test_each_answer_is_trained_on_after_its_prompt_and_the_prompt_is_not(tokenizer: Any) -> None:
    stats = DataStats()
    pair = to_example(DataFormat.PREFERENCE, _row(TEXT))
    assert isinstance(pair, TextPreference)

    encoded = encode_pair(pair, tokenizer, max_length=64, truncation=Truncation.TRUNCATE, stats=stats)

    assert encoded is not None
    assert _answer(encoded.chosen, tokenizer).strip() == TEXT["chosen"]
    assert _answer(encoded.rejected, tokenizer).strip() == TEXT["rejected"]
    prompt = tokenizer(TEXT["prompt"])["input_ids"]
    assert encoded.chosen_ids[: len(prompt)] == encoded.rejected_ids[: len(prompt)] == prompt
    assert (stats.examples, stats.kept) == (1, 1)
    assert stats.tokens == len(encoded.chosen_ids) + len(encoded.rejected_ids)


def test_a_chat_pair_trains_on_what_the_template_adds_for_the_answer(tokenizer: Any) -> None:
    pair = to_example(DataFormat.PREFERENCE, _row(CHAT))
    assert isinstance(pair, ChatPreference)

    encoded = encode_pair(pair, tokenizer, max_length=64, truncation=Truncation.TRUNCATE, stats=DataStats())

    assert encoded is not None
    assert _answer(encoded.chosen, tokenizer).startswith("apple")
    assert _answer(encoded.rejected, tokenizer).startswith("stone")
    assert "Answer briefly" not in _answer(encoded.chosen, tokenizer)


def test_a_pair_too_long_is_dropped_once_and_counted(tokenizer: Any) -> None:
    stats = DataStats()
    long = TextPreference("word " * 40, "apple", "stone " * 30)

    assert encode_pair(long, tokenizer, max_length=16, truncation=Truncation.DROP, stats=stats) is None
    assert (stats.examples, stats.kept, stats.dropped_too_long) == (1, 0, 1)


def test_the_pipeline_encodes_pairs_for_dpo(tokenizer: Any, runtime: Runtime) -> None:
    (runtime.volumes / "data").mkdir(exist_ok=True)
    (runtime.volumes / "data" / "pairs.jsonl").write_text(json.dumps(TEXT) + "\n" + json.dumps(CHAT) + "\n")
    dataset = DatasetSpec.model_validate({"pvc": {"claimName": "data", "path": "pairs.jsonl"}})
    sets = read_dataset(dataset, runtime, 1, TaskType.CAUSAL_LM, Objective.DPO)

    encoded = encode_dataset(sets, dataset, tokenizer, TaskType.CAUSAL_LM, None, Objective.DPO)

    assert sets.format is DataFormat.PREFERENCE
    assert [type(item) for item in encoded.train] == [EncodedPair, EncodedPair]


def _sequence(n: int, start: int) -> TokenizedExample:
    ids = list(range(start, start + n))
    return TokenizedExample(ids, [IGNORE_INDEX] * 2 + ids[2:])


def test_a_batch_of_pairs_is_laid_end_to_end_with_each_token_tagged_by_its_answer() -> None:
    pairs = [EncodedPair(*_sides(5, 10), *_sides(3, 20)), EncodedPair(*_sides(6, 30), *_sides(4, 40))]

    batch = PairCollator(pad_token_id=0, multiple_of=8)(pairs)

    owners = batch["sequence_ids"]
    # Chosen answers first (0, 1), then the rejected ones (2, 3); each of its own length.
    assert sorted((owners == i).sum().item() for i in range(4)) == [3, 4, 5, 6]
    assert [(owners == i).sum().item() for i in range(4)] == [5, 6, 3, 4]
    assert owners.shape[1] == 8 and owners.shape[0] < 4  # fewer rows than sequences: no padding rows
    assert "attention_mask" not in batch
    for row in range(owners.shape[0]):
        starts = [c for c in range(8) if batch["position_ids"][row, c] == 0]
        assert all(batch["labels"][row, c] == IGNORE_INDEX for c in starts)
    assert int(batch["num_tokens"]) == 18


def _sides(n: int, start: int) -> tuple[list[int], list[int]]:
    side = _sequence(n, start)
    return side.input_ids, side.labels


def test_a_model_that_attends_across_examples_gets_one_padded_row_per_answer() -> None:
    batch = lay_out([_sequence(5, 10), _sequence(3, 20)], pad_token_id=0, together=False)

    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 3]
    assert batch["sequence_ids"][1].tolist() == [1, 1, 1, -1, -1, -1, -1, -1]


def _dpo_spec(path: str) -> Any:
    from kubetune.api import FineTuneJobSpec

    from ..conftest import memorise_spec

    spec = memorise_spec("lora", ["adapter"], dataset={"pvc": {"claimName": "data", "path": path}})
    return FineTuneJobSpec.model_validate(spec.model_dump(by_alias=True, exclude_unset=True) | {"objective": "dpo"})


def test_the_preflight_passes_good_pairs_and_refuses_a_bad_one_with_its_line(runtime: Runtime, tmp_path: Path) -> None:
    import dataclasses

    from kubetune_trainer.preflight import check

    from ..conftest import write_jsonl

    write_jsonl(runtime.volumes / "data" / "pairs-good.jsonl", [TEXT, CHAT])
    claims = tmp_path / "claims"
    write_jsonl(claims / "data" / "pairs-bad.jsonl", [TEXT, {"prompt": "q", "chosen": "a"}])

    summary = check(_dpo_spec("pairs-good.jsonl"), runtime)
    with pytest.raises(InvalidData, match=r"pairs-bad\.jsonl line 2: missing rejected"):
        check(_dpo_spec("pairs-bad.jsonl"), dataclasses.replace(runtime, volumes=claims, output_override=None))

    assert summary.reason == "DataValid"
    assert summary.message == "2 of 2 examples ready to train"
    assert summary.data is not None and summary.data.format == "preference"
