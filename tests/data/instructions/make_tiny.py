"""Write tiny.jsonl and tiny_chat.jsonl: small synthetic instruction sets that ship with the tests.

    python tests/data/instructions/make_tiny.py

Why synthetic: the fine-tuning tests must show that training lowers the validation loss, on a CPU,
in under a hundred steps, from a tiny model. Real instruction data is far beyond such a model; these
tasks are rules over a handful of words and letters (reverse, uppercase, count on, repeat, sort,
first word), which a tiny model learns quickly, and a held-out record is answerable from the rule
alone. The output is deterministic (a seeded generator), so regenerating it changes nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORDS = ["red", "blue", "green", "cat", "dog", "sun", "moon", "tree", "fish", "bird", "star", "rock"]
LETTERS = "abcdefgh"
SYSTEM = "You are a careful assistant."


def reverse(rng):
    words = rng.sample(WORDS, 3)
    return "Reverse the words.", " ".join(words), " ".join(reversed(words))


def uppercase(rng):
    words = rng.sample(WORDS, 2)
    return "Uppercase the text.", " ".join(words), " ".join(words).upper()


def after(rng):
    n = rng.randrange(0, 99)
    return f"What number comes after {n}?", "", str(n + 1)


def repeat(rng):
    word = rng.choice(WORDS)
    return f"Repeat the word {word} three times.", "", " ".join([word] * 3)


def sort_letters(rng):
    letters = "".join(rng.sample(LETTERS, rng.randint(3, 5)))
    return "Sort the letters.", letters, "".join(sorted(letters))


def first_word(rng):
    words = rng.sample(WORDS, 3)
    return "Give the first word.", " ".join(words), words[0]


TASKS = [reverse, uppercase, after, repeat, sort_letters, first_word]


def instruction_records(rng, n: int) -> list[dict]:
    records = []
    for i in range(n):
        instruction, given, output = TASKS[i % len(TASKS)](rng)
        record = {"instruction": instruction, "input": given, "output": output}
        if not given and i % 2:  # real sets spell "no input" both ways: an empty string, or no field
            del record["input"]
        records.append(record)
    return records


def chat_records(rng, n: int) -> list[dict]:
    """One or two exchanges per conversation, some with a system message."""
    records = []
    for i in range(n):
        messages = [{"role": "system", "content": SYSTEM}] if i % 3 == 0 else []
        for _ in range(2 if i % 4 == 0 else 1):
            instruction, given, output = rng.choice(TASKS)(rng)
            question = f"{instruction}\n{given}" if given else instruction
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": output}]
        records.append({"messages": messages})
    return records


def write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


if __name__ == "__main__":
    write(HERE / "tiny.jsonl", instruction_records(random.Random(0), 300))
    write(HERE / "tiny_chat.jsonl", chat_records(random.Random(1), 200))
