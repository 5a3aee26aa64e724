"""Sample answers before and after training, so a person sees what the run changed.

Prompts come from the evaluation examples (else the training ones); each sample shows
the expected answer, the base model's answer and the tuned model's answer. Each task picks
its samples and answers them its own way (`kubetune_trainer.tasks`); the greedy generation
here serves the tasks that write text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from kubetune.contract import SampleAnswers
from kubetune_trainer.data.formats import Completion, Conversation, Example, Text

SAMPLES = 3
MAX_NEW_TOKENS = 48


@dataclass
class Sample:
    prompt: str
    expected: str
    before: str = ""
    after: str = ""
    example: Any = field(default=None, repr=False)
    """The example the prompt shows, for answers that need more than its text."""

    def answers(self) -> SampleAnswers:
        """What the summary shows of the sample."""
        return SampleAnswers(prompt=self.prompt, expected=self.expected, before=self.before, after=self.after)


def pick(examples: list[Example], count: int = SAMPLES) -> list[Sample]:
    chosen = []
    for example in examples:
        match example:
            case Conversation(messages=messages) if messages[-1].role == "assistant":
                user = [m for m in messages[:-1] if m.role == "user"]
                chosen.append(Sample(user[-1].content if user else "", messages[-1].content))
            case Completion(prompt=prompt, completion=completion):
                chosen.append(Sample(prompt, completion))
            case Text():
                continue
        if len(chosen) == count:
            break
    return chosen


def answer(model: Any, tokenizer: Any, example_prompt: str, conversation: bool) -> str:
    if conversation:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": example_prompt}], tokenize=False, add_generation_prompt=True
        )
    else:
        text = example_prompt
    return generate(model, tokenizer, text, add_special_tokens=not conversation)


def generate(model: Any, tokenizer: Any, text: str, add_special_tokens: bool = True) -> str:
    """The greedy continuation of a text (for an encoder-decoder, what the decoder writes)."""
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens).to(model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
    model.train(was_training)
    written = output[0] if model.config.is_encoder_decoder else output[0, inputs["input_ids"].shape[1] :]
    return str(tokenizer.decode(written, skip_special_tokens=True)).strip()


def fill(samples: list[Sample], respond: Callable[[Sample], str], moment: str) -> None:
    """Record each sample's answer as of `moment` (before or after)."""
    for sample in samples:
        setattr(sample, moment, respond(sample))
