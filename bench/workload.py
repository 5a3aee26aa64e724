"""What every contender trains: the model's shape, the method, the data and the loop.

A size name and a seed fix all of it, so every contender in a run, and every run of the
benchmark, trains the same randomly initialised model on the same examples.

The examples are chats in a made-up language: a few thousand pseudo-words that follow
each other by a fixed random Markov chain, so there is something to learn and the eval
loss falls as the model learns it. Lengths follow a log-normal spread, as real chat data
does, from a dozen tokens up to the maximum length.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Method = Literal["lora", "qlora", "dora", "full"]
Precision = Literal["bf16", "fp32"]
Architecture = Literal["llama", "phi3", "qwen2"]


@dataclass(frozen=True)
class ModelShape:
    architecture: Architecture
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    """Rows of the embedding and the output head."""
    tokenizer_vocab: int
    """Vocabulary of the BPE tokenizer trained on the generated corpus (at most `vocab`)."""
    tied: bool = False
    """Whether the output head is the input embedding (SmolLM2's is)."""
    like: str = ""
    """The released model whose shape this is, for the tables."""

    def linear_shapes(self) -> list[tuple[int, int, int]]:
        """(inputs, outputs, count) of every weight matrix a token goes through, output head included."""
        head_dim = self.hidden // self.heads
        kv = self.kv_heads * head_dim
        return [
            (self.hidden, self.hidden, 2 * self.layers),  # q and o projections
            (self.hidden, kv, 2 * self.layers),  # k and v projections
            (self.hidden, self.intermediate, 2 * self.layers),  # gate and up projections
            (self.intermediate, self.hidden, self.layers),  # down projection
            (self.hidden, self.vocab, 1),  # output head
        ]

    def linear_parameters(self) -> int:
        return sum(inputs * outputs * count for inputs, outputs, count in self.linear_shapes())

    def config(self, vocab: int, **token_ids: int | None) -> dict[str, Any]:
        """The transformers config of a model of this shape (`vocab` rows in its embeddings)."""
        return {
            "model_type": self.architecture,
            "vocab_size": vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": 4096,
            "tie_word_embeddings": self.tied,
            **token_ids,
        }

    def adapter_parameters(self, r: int) -> int:
        """LoRA parameters on every linear layer but the output head (peft's all-linear)."""
        return sum(r * (inputs + outputs) * count for inputs, outputs, count in self.linear_shapes()[:-1])


@dataclass(frozen=True)
class Setting:
    """One table of the benchmark: a method at a precision."""

    method: Method
    precision: Precision
    zero3: bool = False
    """Train under DeepSpeed ZeRO-3 (one process per accelerator, launched by torchrun)."""
    rounds: int = 3
    """Alternating rounds: each runs every contender once, in a rotated order."""

    @property
    def name(self) -> str:
        return "-".join([self.method, *(["zero3"] if self.zero3 else []), self.precision])

    @property
    def uses_adapter(self) -> bool:
        return self.method != "full"


@dataclass(frozen=True)
class Workload:
    """The work every contender does, and how often the benchmark repeats it."""

    size: str
    shape: ModelShape
    settings: tuple[Setting, ...]
    max_length: int
    train_examples: int
    eval_examples: int
    effective_batch: int
    """Examples per optimizer step, for every contender."""
    kubetune_batch: int
    """Per-device batch of kubetune (gradient accumulation makes up the rest)."""
    best_batch: int
    """Per-device batch of TRL at its best."""
    learning_rate: dict[Method, float]
    lora_r: int = 16
    lora_alpha: int = 32
    warmup_steps: int = 2
    seed: int = 0
    median_fraction: float = 0.25
    """Median example length as a fraction of max_length."""

    @property
    def steps(self) -> int:
        return self.train_examples // self.effective_batch

    def check(self) -> None:
        for batch in (self.kubetune_batch, self.best_batch):
            if self.effective_batch % batch:
                raise ValueError(f"per-device batch {batch} does not divide the effective batch {self.effective_batch}")
        if self.train_examples % self.effective_batch:
            raise ValueError("the training examples must fill whole optimizer steps")
        if self.shape.tokenizer_vocab > self.shape.vocab:
            raise ValueError("the tokenizer's vocabulary must fit the model's")


LLAMA_30M = ModelShape(
    "llama", hidden=512, layers=8, intermediate=1376, heads=8, kv_heads=8, vocab=4096, tokenizer_vocab=4000
)
PHI3_MINI = ModelShape(
    "phi3", hidden=3072, layers=32, intermediate=8192, heads=32, kv_heads=32, vocab=32064, tokenizer_vocab=4000
)
# The shapes people train: the output head and the loss weigh with a vocabulary this large.
# Random weights; kubetune's small tokenizer over the full vocabulary (README says why).
SMOLLM2_135M = ModelShape(
    "llama",
    hidden=576,
    layers=30,
    intermediate=1536,
    heads=9,
    kv_heads=3,
    vocab=49152,
    tokenizer_vocab=4000,
    tied=True,
    like="SmolLM2-135M",
)
QWEN25_05B = ModelShape(
    "qwen2",
    hidden=896,
    layers=24,
    intermediate=4864,
    heads=14,
    kv_heads=2,
    vocab=151936,
    tokenizer_vocab=4000,
    like="Qwen2.5-0.5B (untied head)",
)
TINY = ModelShape("llama", hidden=64, layers=2, intermediate=128, heads=4, kv_heads=4, vocab=512, tokenizer_vocab=400)

SIZES: dict[str, Workload] = {
    "cpu": Workload(
        size="cpu",
        shape=LLAMA_30M,
        # The targets are at bf16, so its tables get rounds enough for a spread; fp32 one each.
        settings=(
            Setting("lora", "bf16"),
            Setting("full", "bf16"),
            Setting("lora", "fp32", rounds=1),
            Setting("full", "fp32", rounds=1),
        ),
        max_length=256,
        train_examples=64,
        eval_examples=32,
        effective_batch=8,
        kubetune_batch=4,
        best_batch=4,
        learning_rate={"lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "full": 3e-4},
    ),
    "gpu": Workload(
        size="gpu",
        shape=PHI3_MINI,
        settings=(
            Setting("lora", "bf16", rounds=1),
            Setting("qlora", "bf16", rounds=1),
            Setting("dora", "bf16", rounds=1),
            Setting("full", "bf16", zero3=True, rounds=1),
        ),
        max_length=1024,
        train_examples=512,
        eval_examples=32,
        effective_batch=32,
        kubetune_batch=8,
        best_batch=8,
        learning_rate={"lora": 2e-4, "qlora": 2e-4, "dora": 2e-4, "full": 2e-5},
    ),
    "smollm2-135m": Workload(
        size="smollm2-135m",
        shape=SMOLLM2_135M,
        settings=(Setting("lora", "bf16", rounds=1), Setting("lora", "fp32", rounds=1)),
        max_length=256,
        train_examples=160,
        eval_examples=32,
        effective_batch=8,
        kubetune_batch=4,
        best_batch=4,
        learning_rate={"lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "full": 3e-4},
    ),
    "qwen2.5-0.5b": Workload(
        size="qwen2.5-0.5b",
        shape=QWEN25_05B,
        settings=(Setting("lora", "bf16", rounds=1), Setting("lora", "fp32", rounds=1)),
        max_length=256,
        train_examples=80,
        eval_examples=16,
        effective_batch=8,
        kubetune_batch=4,
        best_batch=4,
        learning_rate={"lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "full": 3e-4},
    ),
    "smoke": Workload(
        size="smoke",
        shape=TINY,
        settings=(Setting("lora", "fp32", rounds=1),),
        max_length=64,
        train_examples=16,
        eval_examples=4,
        effective_batch=4,
        kubetune_batch=2,
        best_batch=4,
        learning_rate={"lora": 1e-3, "qlora": 1e-3, "dora": 1e-3, "full": 3e-4},
        warmup_steps=1,
    ),
}


# ----------------------------------------------------------------------------- data


class Language:
    """A made-up language: pseudo-words with Zipf frequencies and a fixed Markov chain."""

    SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"] + ["an", "el", "or", "is", "um"]

    def __init__(self, rng: random.Random, words: int = 3000, successors: int = 6) -> None:
        seen: set[str] = set()
        while len(seen) < words:
            seen.add("".join(rng.choice(self.SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
        self.words = sorted(seen)
        rng.shuffle(self.words)
        self.weights = [1.0 / (rank + 1) for rank in range(words)]
        self.next = [rng.choices(range(words), weights=self.weights, k=successors) for _ in range(words)]

    def sentence(self, rng: random.Random, length: int) -> list[str]:
        index = rng.choices(range(len(self.words)), weights=self.weights)[0]
        out = []
        for _ in range(length):
            out.append(self.words[index])
            # Mostly follow the chain, sometimes jump: learnable, never fully predictable.
            index = rng.choice(self.next[index]) if rng.random() < 0.85 else rng.randrange(len(self.words))
        return out


def corpus(seed: int, sentences: int = 2000) -> Iterator[str]:
    """Text for training the tokenizer, from the same language as the chats."""
    rng = random.Random(seed)
    language = Language(random.Random(seed))
    for _ in range(sentences):
        yield " ".join(language.sentence(rng, rng.randint(5, 40)))


def chats(
    count: int, max_length: int, median_fraction: float, tokenizer: Any, seed: int, stream: int
) -> list[dict[str, Any]]:
    """`count` chat examples whose token lengths (chat template included) spread log-normally
    from about a dozen tokens up to `max_length`. `stream` picks an independent sequence of
    examples from the same language (training and evaluation use different streams)."""
    language = Language(random.Random(seed))
    rng = random.Random(f"{seed}/{stream}")
    costs = {word: len(tokenizer.encode(" " + word, add_special_tokens=False)) for word in language.words}
    overhead = len(_encode(tokenizer, _messages("", "", None)))
    median = max_length * median_fraction
    out: list[dict[str, Any]] = []
    while len(out) < count:
        target = min(max_length, max(overhead + 4, round(rng.lognormvariate(math.log(median), 0.9))))
        budget = target - overhead
        system = " ".join(language.sentence(rng, rng.randint(3, 12))) if rng.random() < 0.3 else None
        user_words = language.sentence(rng, rng.randint(2, max(2, min(60, budget // 4))))
        answer = language.sentence(rng, max_length)
        spent = sum(costs[w] for w in user_words) + (sum(costs[w] for w in system.split()) if system else 0)
        cut = 1
        while cut < len(answer) and spent + costs[answer[cut]] < budget:
            spent += costs[answer[cut]]
            cut += 1
        example = _messages(" ".join(user_words), " ".join(answer[:cut]), system)
        while len(_encode(tokenizer, example)) > max_length:  # word costs are estimates at the edges
            cut -= 1
            example = _messages(" ".join(user_words), " ".join(answer[:cut]), system)
        out.append({"messages": example})
    return out


def _messages(user: str, assistant: str, system: str | None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def _encode(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def token_lengths(rows: list[dict[str, Any]], tokenizer: Any) -> list[int]:
    """Length in tokens of each chat as every contender tokenises it (the model's chat template)."""
    return [len(_encode(tokenizer, row["messages"])) for row in rows]


# ----------------------------------------------------------------------------- files


@dataclass(frozen=True)
class Prepared:
    """The files every contender reads, and the facts the figures are computed from."""

    folder: Path
    model: Path
    train: Path
    eval: Path
    train_lengths: list[int]
    eval_lengths: list[int]

    @property
    def train_tokens(self) -> int:
        return sum(self.train_lengths)


def prepare(workload: Workload, folder: Path) -> Prepared:
    """Write the tokenizer, the randomly initialised model and the data into `folder`."""
    workload.check()
    model = folder / "model"
    tokenizer = make_model(workload.shape, model, workload.seed)
    train = chats(workload.train_examples, workload.max_length, workload.median_fraction, tokenizer, workload.seed, 0)
    held_out = chats(workload.eval_examples, workload.max_length, workload.median_fraction, tokenizer, workload.seed, 1)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("eval.jsonl", held_out)):
        (data / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return Prepared(
        folder,
        model,
        data / "train.jsonl",
        data / "eval.jsonl",
        token_lengths(train, tokenizer),
        token_lengths(held_out, tokenizer),
    )


def make_model(shape: ModelShape, folder: Path, seed: int) -> Any:
    """A randomly initialised model of `shape` with kubetune's tiny tokenizer, saved to `folder`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.tiny import make_tiny_model

    # The project's tiny-model recipe trains the tokenizer; the model it writes beside it is
    # replaced below by one of the benchmark's shape, with the usual initialisation.
    make_tiny_model(
        folder, corpus(seed), "llama", hidden_size=16, layers=1, vocab_size=shape.tokenizer_vocab, seed=seed
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    settings = shape.config(
        max(shape.vocab, len(tokenizer)),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # a 3.8B model initialises in seconds there
    with torch.device(device):
        model: Any = AutoModelForCausalLM.from_config(config)
    if shape.hidden >= 2048:
        model = model.to(torch.bfloat16)  # the released Phi-3 weights are bf16 too
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    return tokenizer
