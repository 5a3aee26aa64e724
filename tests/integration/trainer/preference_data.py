"""A preference set with a rule a tiny model learns in seconds: the chosen answer always ends
with the word "apple", the rejected one with "stone", and the words before are drawn at random
for each answer alone, so an untrained model prefers either answer by chance."""

from __future__ import annotations

import random
from typing import Any

WORDS = ["river", "cloud", "maple", "tiger", "piano", "comet"]


def preference_rows(count: int, seed: int, chat: bool = False) -> list[dict[str, Any]]:
    draw = random.Random(seed)
    rows = []
    for _ in range(count):
        item = draw.randrange(8)
        prompt = f"What is the code word for item {item}?"
        chosen = f"The code word is {' '.join(draw.choices(WORDS, k=2))} apple."
        rejected = f"The code word is {' '.join(draw.choices(WORDS, k=2))} stone."
        if chat:
            rows.append(
                {
                    "prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": chosen}],
                    "rejected": [{"role": "assistant", "content": rejected}],
                }
            )
        else:
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
