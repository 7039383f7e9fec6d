"""Writes the bundled tasks' data (llm_modules/eval_tasks/data/*.jsonl), deterministically, from the
questions and functions below, all written for this project (no outside data, no licence to inherit).

    python -m llm_modules.eval_tasks.generate_data          # rewrite the files
    python -m llm_modules.eval_tasks.generate_data --check  # exit 1 if they differ from what is written

Each file holds a ``split`` field: ``train`` (the demonstrations for k-shot prompts) or ``test``.
Content is simple arithmetic, common facts and small string/list functions, so that a real model
scores above chance while a tiny random model scores near it.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

DATA = Path(__file__).with_name("data")
SEED = 23

# (question, answer, wrong answers, rationale) facts shared by the choice and the answer task.
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"),
            ("Spain", "Madrid"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Russia", "Moscow"),
            ("China", "Beijing"), ("England", "London"), ("Greece", "Athens"), ("Norway", "Oslo"),
            ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Kenya", "Nairobi")]
OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("day", "night"),
             ("open", "closed"), ("happy", "sad"), ("old", "young"), ("light", "dark"), ("wet", "dry"),
             ("early", "late"), ("full", "empty"), ("hard", "soft"), ("loud", "quiet")]
COLOURS = [("the sky on a clear day", "blue"), ("fresh grass", "green"), ("snow", "white"),
           ("coal", "black"), ("a ripe banana", "yellow"), ("a ripe tomato", "red"),
           ("an orange", "orange"), ("milk", "white")]
LEGS = [("a spider", 8), ("a dog", 4), ("a bird", 2), ("an ant", 6), ("a cat", 4), ("a human", 2),
        ("a horse", 4), ("a bee", 6)]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORDS = ["apple", "banana", "cherry", "garden", "pencil", "window", "river", "planet", "music", "bridge",
         "tiger", "orange", "castle", "forest", "rocket", "summer"]
NAMES = [capital for _, capital in CAPITALS]


def _facts(rng: random.Random) -> list[dict]:
    """Question, answer, three distinct wrong answers and a one-line rationale for each fact."""
    rows = []

    def add(question, answer, pool, rationale):
        wrong = [w for w in dict.fromkeys(pool) if w != answer]
        rows.append({"question": question, "answer": str(answer),
                     "wrong": [str(w) for w in rng.sample(wrong, 3)], "rationale": rationale})

    for a, b in [(rng.randint(2, 40), rng.randint(2, 40)) for _ in range(26)]:
        add(f"What is {a} + {b}?", a + b, [a + b + d for d in (-10, -2, -1, 1, 2, 10)] + [a * b],
            f"{a} + {b} = {a + b}.")
    for a, b in [(rng.randint(20, 60), rng.randint(1, 19)) for _ in range(18)]:
        add(f"What is {a} - {b}?", a - b, [a - b + d for d in (-10, -1, 1, 10)] + [a + b],
            f"{a} - {b} = {a - b}.")
    for a, b in [(rng.randint(2, 9), rng.randint(2, 9)) for _ in range(18)]:
        add(f"What is {a} times {b}?", a * b, [a * b + d for d in (-a, -1, 1, b)] + [a + b],
            f"{a} times {b} is {a * b}.")
    for a, b in [rng.sample(range(1, 100), 2) for _ in range(12)]:
        big = max(a, b)
        add(f"Which number is larger, {a} or {b}?", big, [min(a, b), a + b, abs(a - b), big + 1],
            f"{big} is more than {min(a, b)}.")
    for country, capital in CAPITALS:
        add(f"What is the capital of {country}?", capital, NAMES,
            f"The capital city of {country} is {capital}.")
    for word, opposite in OPPOSITES:
        add(f"What is the opposite of {word}?", opposite, [o for _, o in OPPOSITES] + [w for w, _ in OPPOSITES],
            f"The opposite of {word} is {opposite}.")
    for thing, colour in COLOURS:
        add(f"What colour is {thing}?", colour, ["blue", "green", "white", "black", "yellow", "red",
                                                 "orange", "purple", "brown"],
            f"{thing[0].upper() + thing[1:]} is {colour}.")
    for animal, legs in LEGS:
        add(f"How many legs does {animal} have?", legs, [0, 2, 4, 6, 8, 10, 100],
            f"{animal[0].upper() + animal[1:]} has {legs} legs.")
    for i, day in enumerate(DAYS):
        after = DAYS[(i + 1) % 7]
        add(f"What day comes after {day}?", after, DAYS, f"The day after {day} is {after}.")
    for word in WORDS:
        add(f"How many letters are in the word \"{word}\"?", len(word), range(2, 12),
            f"\"{word}\" is spelled {'-'.join(word)}, which is {len(word)} letters.")
        add(f"What is the first letter of the word \"{word}\"?", word[0], "abcdefghijklmnoprstuw",
            f"\"{word}\" starts with {word[0]}.")
    rng.shuffle(rows)
    return rows


def choice_rows(rng: random.Random) -> list[dict]:
    rows = []
    for i, fact in enumerate(_facts(rng)):
        choices = [fact["answer"], *fact["wrong"]]
        rng.shuffle(choices)
        rows.append({"id": f"choice-{i:03d}", "question": fact["question"], "choices": choices,
                     "gold": choices.index(fact["answer"])})
    return rows


def answer_rows(rng: random.Random) -> list[dict]:
    return [{"id": f"answer-{i:03d}", "question": f["question"], "answer": f["answer"],
             "rationale": f["rationale"]} for i, f in enumerate(_facts(rng))]


# Code problems: (signature, docstring, body, test calls with their expected values).
CODE = [
    ("reverse_string(s)", "Return the string s reversed.", "return s[::-1]",
     [("'abc'", "'cba'"), ("''", "''"), ("'racecar'", "'racecar'")]),
    ("add(a, b)", "Return the sum of a and b.", "return a + b", [("2, 3", "5"), ("-1, 1", "0"), ("10, 20", "30")]),
    ("square(x)", "Return x multiplied by itself.", "return x * x", [("3", "9"), ("0", "0"), ("-4", "16")]),
    ("is_even(n)", "Return True if n is even, else False.", "return n % 2 == 0",
     [("4", "True"), ("7", "False"), ("0", "True")]),
    ("maximum(xs)", "Return the largest number in the non-empty list xs.", "return max(xs)",
     [("[1, 5, 3]", "5"), ("[-2, -7]", "-2"), ("[4]", "4")]),
    ("count_vowels(s)", "Return how many vowels (a, e, i, o, u) the lowercase string s contains.",
     "return sum(c in 'aeiou' for c in s)", [("'banana'", "3"), ("'sky'", "0"), ("'queue'", "4")]),
    ("first_char(s)", "Return the first character of the non-empty string s.", "return s[0]",
     [("'hello'", "'h'"), ("'x'", "'x'")]),
    ("last_element(xs)", "Return the last element of the non-empty list xs.", "return xs[-1]",
     [("[1, 2, 3]", "3"), ("['a']", "'a'")]),
    ("to_upper(s)", "Return s with every letter in upper case.", "return s.upper()",
     [("'abc'", "'ABC'"), ("'Hi there'", "'HI THERE'")]),
    ("word_count(s)", "Return the number of words in s, separated by spaces.", "return len(s.split())",
     [("'the cat sat'", "3"), ("''", "0"), ("'one'", "1")]),
    ("sum_list(xs)", "Return the sum of the numbers in xs.", "return sum(xs)",
     [("[1, 2, 3]", "6"), ("[]", "0"), ("[-1, 1]", "0")]),
    ("double_all(xs)", "Return a new list with every number of xs doubled.", "return [2 * x for x in xs]",
     [("[1, 2]", "[2, 4]"), ("[]", "[]")]),
    ("is_palindrome(s)", "Return True if s reads the same forwards and backwards.", "return s == s[::-1]",
     [("'level'", "True"), ("'hello'", "False"), ("''", "True")]),
    ("absolute(x)", "Return the absolute value of x.", "return x if x >= 0 else -x",
     [("-3", "3"), ("5", "5"), ("0", "0")]),
    ("factorial(n)", "Return n! for a non-negative integer n.",
     "result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
     [("0", "1"), ("5", "120"), ("3", "6")]),
    ("fibonacci(n)", "Return the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1.",
     "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     [("0", "0"), ("1", "1"), ("10", "55")]),
    ("count_char(s, c)", "Return how many times the character c occurs in s.", "return s.count(c)",
     [("'banana', 'a'", "3"), ("'abc', 'z'", "0")]),
    ("remove_spaces(s)", "Return s without any space characters.", "return s.replace(' ', '')",
     [("'a b c'", "'abc'"), ("'none'", "'none'")]),
    ("minimum(xs)", "Return the smallest number in the non-empty list xs.", "return min(xs)",
     [("[3, 1, 2]", "1"), ("[-5, 0]", "-5")]),
    ("average(xs)", "Return the mean of the non-empty list of numbers xs.", "return sum(xs) / len(xs)",
     [("[1, 2, 3]", "2.0"), ("[4]", "4.0")]),
    ("is_positive(x)", "Return True if x is greater than zero.", "return x > 0",
     [("3", "True"), ("0", "False"), ("-2", "False")]),
    ("repeat(s, n)", "Return the string s repeated n times.", "return s * n",
     [("'ab', 3", "'ababab'"), ("'x', 0", "''")]),
    ("capitalize_words(s)", "Return s with the first letter of every word in upper case.", "return s.title()",
     [("'hello world'", "'Hello World'"), ("'a'", "'A'")]),
    ("unique(xs)", "Return the distinct elements of xs in the order they first appear.",
     "return list(dict.fromkeys(xs))", [("[1, 2, 1, 3, 2]", "[1, 2, 3]"), ("[]", "[]")]),
    ("sort_list(xs)", "Return a new list with the numbers of xs in increasing order.", "return sorted(xs)",
     [("[3, 1, 2]", "[1, 2, 3]"), ("[]", "[]")]),
    ("count_positive(xs)", "Return how many numbers in xs are greater than zero.",
     "return sum(1 for x in xs if x > 0)", [("[1, -2, 3, 0]", "2"), ("[]", "0")]),
    ("join_words(words)", "Return the strings of words joined with single spaces.", "return ' '.join(words)",
     [("['a', 'b']", "'a b'"), ("[]", "''")]),
    ("string_length(s)", "Return the number of characters in s.", "return len(s)",
     [("'hello'", "5"), ("''", "0")]),
    ("celsius_to_fahrenheit(c)", "Return the temperature c in degrees Celsius converted to Fahrenheit.",
     "return c * 9 / 5 + 32", [("0", "32.0"), ("100", "212.0")]),
    ("is_vowel(c)", "Return True if the lowercase letter c is a vowel.", "return c in 'aeiou'",
     [("'a'", "True"), ("'b'", "False")]),
    ("swap_case(s)", "Return s with upper case letters made lower case and lower case letters upper case.",
     "return s.swapcase()", [("'aB'", "'Ab'"), ("'Hello'", "'hELLO'")]),
    ("get_evens(xs)", "Return the even numbers of xs, in order.", "return [x for x in xs if x % 2 == 0]",
     [("[1, 2, 3, 4]", "[2, 4]"), ("[1, 3]", "[]")]),
    ("starts_with(s, prefix)", "Return True if s begins with prefix.", "return s.startswith(prefix)",
     [("'hello', 'he'", "True"), ("'hello', 'lo'", "False")]),
    ("product(xs)", "Return the product of the numbers in xs (1 for an empty list).",
     "result = 1\n    for x in xs:\n        result *= x\n    return result",
     [("[2, 3, 4]", "24"), ("[]", "1")]),
    ("digits_sum(n)", "Return the sum of the decimal digits of the non-negative integer n.",
     "return sum(int(d) for d in str(n))", [("123", "6"), ("0", "0"), ("909", "18")]),
    ("reverse_list(xs)", "Return a new list with the elements of xs in reverse order.", "return xs[::-1]",
     [("[1, 2, 3]", "[3, 2, 1]"), ("[]", "[]")]),
    ("middle(xs)", "Return the middle element of the list xs, which has an odd length.", "return xs[len(xs) // 2]",
     [("[1, 2, 3]", "2"), ("[7]", "7")]),
    ("is_sorted(xs)", "Return True if the numbers in xs are in non-decreasing order.",
     "return all(a <= b for a, b in zip(xs, xs[1:]))", [("[1, 2, 2, 5]", "True"), ("[3, 1]", "False"), ("[]", "True")]),
    ("longest_word(words)", "Return the longest string in the non-empty list words (the first one on a tie).",
     "return max(words, key=len)", [("['a', 'abc', 'ab']", "'abc'"), ("['xy', 'zw']", "'xy'")]),
    ("clamp(x, low, high)", "Return x limited to the range from low to high.", "return max(low, min(x, high))",
     [("5, 0, 10", "5"), ("-3, 0, 10", "0"), ("12, 0, 10", "10")]),
    ("count_words_starting_with(words, c)", "Return how many strings in words start with the letter c.",
     "return sum(1 for w in words if w.startswith(c))", [("['apple', 'avocado', 'pear'], 'a'", "2"), ("[], 'a'", "0")]),
    ("acronym(s)", "Return the upper case first letters of the words in s.",
     "return ''.join(w[0].upper() for w in s.split())", [("'portable network graphics'", "'PNG'"), ("''", "''")]),
]
# Small families: one function per constant, so that the k-shot demonstrations show the pattern.
for n in (2, 3, 5, 10):
    CODE.append((f"add_{n}(x)", f"Return x plus {n}.", f"return x + {n}", [("1", str(1 + n)), ("-1", str(n - 1))]))
    CODE.append((f"times_{n}(x)", f"Return x multiplied by {n}.", f"return x * {n}", [("3", str(3 * n)), ("0", "0")]))
    CODE.append((f"is_multiple_of_{n}(x)", f"Return True if x is divisible by {n}.", f"return x % {n} == 0",
                 [(str(n * 7), "True"), (str(n * 7 + 1), "False")]))


def code_rows(rng: random.Random) -> list[dict]:
    rows = []
    for i, (signature, doc, body, cases) in enumerate(CODE):
        name = signature.partition("(")[0]
        example_args, example_result = cases[0]
        prompt = (f"def {signature}:\n    \"\"\"{doc}\n    >>> {name}({example_args})\n    {example_result}\n"
                  f"    \"\"\"\n")
        tests = "".join(f"assert {name}({args}) == {expected}, {f'{name}({args})'!r}\n" for args, expected in cases)
        rows.append({"id": f"code-{i:03d}", "entry_point": name, "prompt": prompt,
                     "canonical_solution": f"    {body}\n", "test": tests})
    rng.shuffle(rows)
    return rows


def splits(rows: list[dict], train: int) -> list[dict]:
    return [{**row, "split": "train" if i < train else "test"} for i, row in enumerate(rows)]


def render() -> dict[str, str]:
    """File name -> JSONL text, the same on every run."""
    tables = {"choice.jsonl": splits(choice_rows(random.Random(SEED)), 30),
              "answer.jsonl": splits(answer_rows(random.Random(SEED + 1)), 30),
              "code.jsonl": splits(code_rows(random.Random(SEED + 2)), 20)}
    return {name: "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows) for name, rows in tables.items()}


def main(argv: list[str] | None = None) -> int:
    check = "--check" in (sys.argv[1:] if argv is None else argv)
    stale = []
    for name, text in render().items():
        path = DATA / name
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            DATA.mkdir(exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(f"stale data: {', '.join(stale)}; run python -m llm_modules.eval_tasks.generate_data", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
