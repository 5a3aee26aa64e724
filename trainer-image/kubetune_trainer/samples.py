"""Sample answers before and after training, so a person sees what the run changed.

Prompts come from the evaluation examples (else the training ones); each sample shows
the expected answer, the base model's answer and the tuned model's answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from kubetune_trainer.data.formats import Completion, Conversation, Example, Text

SAMPLES = 3
MAX_NEW_TOKENS = 48


@dataclass
class Sample:
    prompt: str
    expected: str
    before: str = ""
    after: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"prompt": self.prompt, "expected": self.expected, "before": self.before, "after": self.after}


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
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=not conversation).to(model.device)
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
    return str(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)).strip()


def fill(samples: list[Sample], model: Any, tokenizer: Any, conversation: bool, field: str) -> None:
    for sample in samples:
        setattr(sample, field, answer(model, tokenizer, sample.prompt, conversation))
