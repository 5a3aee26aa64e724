"""Small labelled datasets for the tasks beyond causal-lm, written by the tests.

The classification sets test generalisation, not memory: the evaluation examples use
words the training examples never contain (other topics' words, other people and
places), so only what the pretrained encoder already knows can carry the head there.
The seq2seq set is memorised: a tiny random T5 knows no language to generalise from.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

TOPICS: dict[str, list[str]] = {
    "sports": [
        "football",
        "tennis",
        "the marathon",
        "basketball",
        "the cycling race",
        "the swimming final",
        "the hockey match",
        "the golf tournament",
        "the boxing title fight",
        "the volleyball league",
    ],
    "food": [
        "pasta",
        "the chocolate cake",
        "fresh bread",
        "the vegetable soup",
        "grilled fish",
        "the cheese plate",
        "spicy curry",
        "the apple pie",
        "roast chicken",
        "the fruit salad",
    ],
    "weather": [
        "heavy rain",
        "the snowstorm",
        "strong winds",
        "the heatwave",
        "thick fog",
        "the thunderstorm",
        "freezing temperatures",
        "the hurricane",
        "sunny skies",
        "the hailstorm",
    ],
    "technology": [
        "the new smartphone",
        "laptops",
        "the software update",
        "artificial intelligence",
        "the computer chip",
        "cloud servers",
        "the web browser",
        "robots",
        "the tablet",
        "electric car batteries",
    ],
}
TEMPLATES = [
    "Everyone was talking about {} yesterday.",
    "I read a long article about {} this morning.",
    "My neighbour would not stop talking about {}.",
    "The evening news spent ten minutes on {}.",
    "She wrote a short essay about {} for class.",
    "We argued about {} over dinner.",
    "There is a new podcast episode on {}.",
    "He sent me three messages about {}.",
]
TRAIN_WORDS = 6
"""Of each topic's ten phrases, the first six are for training; evaluation sees the rest."""


def topic_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) rows of text-label data: 4 topics, evaluation on unseen phrases."""
    train, evaluation = [], []
    for topic, phrases in TOPICS.items():
        for index, (phrase, template) in enumerate(itertools.product(phrases, TEMPLATES)):
            row = {"text": template.format(phrase), "label": topic}
            if phrases.index(phrase) < TRAIN_WORDS:
                train.append(row)
            elif index % 2 == 0:  # half of the unseen phrases' sentences are plenty to measure
                evaluation.append(row)
    random.Random(0).shuffle(train)
    return train, evaluation


PEOPLE = [
    ["Alice", "Johnson"],
    ["Marco"],
    ["Priya", "Sharma"],
    ["John", "Smith"],
    ["Olga"],
    ["Kenji", "Watanabe"],
    ["Maria", "Garcia"],
    ["Ahmed", "Hassan"],
    ["Emma"],
    ["Lucas", "Martin"],
    ["Sofia", "Rossi"],
    ["David"],
]
PLACES = [
    ["Paris"],
    ["New", "York"],
    ["Tokyo"],
    ["Berlin"],
    ["Cairo"],
    ["Buenos", "Aires"],
    ["London"],
    ["San", "Francisco"],
    ["Madrid"],
    ["Cape", "Town"],
    ["Moscow"],
    ["Sydney"],
]
SENTENCES = [
    "{P} flew to {L} last week .",
    "Yesterday {P} moved to {L} with the family .",
    "{P} gave a talk in {L} on Monday .",
    "The letter from {P} arrived in {L} .",
    "In {L} , {P} opened a small bakery .",
    "{P} has never been to {L} .",
]
TRAIN_NAMES = 8
"""The first eight people and places are for training; evaluation sees the other four."""


def entity_rows() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval) rows of tokens-tags data with BIO tags for people and places."""

    def sentence(template: str, person: list[str], place: list[str]) -> dict[str, Any]:
        tokens: list[str] = []
        tags: list[str] = []
        for word in template.split():
            entity, kind = {"{P}": (person, "PER"), "{L}": (place, "LOC")}.get(word, (None, ""))
            if entity is None:
                tokens.append(word)
                tags.append("O")
                continue
            tokens += entity
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
        return {"tokens": tokens, "tags": tags}

    train = [
        sentence(t, PEOPLE[i], PLACES[(i + j) % TRAIN_NAMES])
        for i in range(TRAIN_NAMES)
        for j, t in enumerate(SENTENCES)
    ]
    evaluation = [
        sentence(t, PEOPLE[TRAIN_NAMES + i], PLACES[TRAIN_NAMES + (i + j) % 4])
        for i in range(4)
        for j, t in enumerate(SENTENCES)
    ]
    random.Random(0).shuffle(train)
    return train, evaluation


PAIRS = [
    ("the red house is very old", "la maison rouge est très vieille"),
    ("the small cat sleeps in the garden", "le petit chat dort dans le jardin"),
    ("we eat bread every morning", "nous mangeons du pain chaque matin"),
    ("the old man reads a book", "le vieil homme lit un livre"),
    ("my sister drives a blue car", "ma sœur conduit une voiture bleue"),
    ("the black dog runs to the park", "le chien noir court au parc"),
    ("a white bird sings at night", "un oiseau blanc chante la nuit"),
    ("the big city never sleeps", "la grande ville ne dort jamais"),
]


def translation_rows() -> list[dict[str, Any]]:
    """source-target rows: a tiny English-to-French phrasebook."""
    return [{"source": f"translate English to French: {en}", "target": fr} for en, fr in PAIRS]


def corpus() -> list[str]:
    """What the tiny T5's tokenizer is trained on."""
    return [f"translate English to French: {en} {fr}" for en, fr in PAIRS] * 5
