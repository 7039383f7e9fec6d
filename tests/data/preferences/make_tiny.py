"""Write tiny.jsonl: a small synthetic preference set that ships with the tests.

    python tests/data/preferences/make_tiny.py

Why synthetic: the alignment tests must show, on a CPU and in a few dozen steps from a tiny model,
that a reward model learns to rank and that DPO moves probability from rejected to chosen answers.
The prompts are the tasks of the tiny instruction set (``tests/data/instructions/make_tiny.py``,
imported, not copied); ``chosen`` is the correct answer and ``rejected`` the same answer broken in
a way typical of that task (a word lost while reversing, lowercase instead of uppercase, an
off-by-one number, a word repeated twice instead of three times, the letters left unsorted, two
words where the first alone was asked for). Each mistake can be told from the prompt and the
answer alone, and most from the answer's form, so a tiny reward model learns the preference in a
few dozen steps; each record is deterministic (seeded).
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("instruction_tasks", HERE.parent / "instructions" / "make_tiny.py")
tasks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tasks)


def corrupt(task, given: str, output: str, rng: random.Random) -> str:
    """A wrong answer of the kind ``task`` invites."""
    name = task.__name__
    if name == "reverse":
        words = output.split()
        del words[rng.randrange(len(words))]
        return " ".join(words)
    if name == "uppercase":
        return output.lower()
    if name == "after":
        return str(int(output) + rng.choice([-1, 1]))  # the number itself, or one too far
    if name == "repeat":
        return " ".join(output.split()[:2])
    if name == "sort_letters":
        return given if given != output else given[::-1]
    if name == "first_word":
        return " ".join(given.split()[:2])
    raise ValueError(f"no corruption for task {name}")


def preference_records(rng: random.Random, n: int) -> list[dict]:
    records = []
    for i in range(n):
        task = tasks.TASKS[i % len(tasks.TASKS)]
        instruction, given, output = task(rng)
        prompt = f"{instruction}\n{given}\n" if given else f"{instruction}\n"  # the 'plain' template's layout
        records.append({"prompt": prompt, "chosen": output, "rejected": corrupt(task, given, output, rng)})
    return records


if __name__ == "__main__":
    tasks.write(HERE / "tiny.jsonl", preference_records(random.Random(2), 300))
