"""The built-in instruction data set: small tasks whose answers can be checked exactly.

`builtin_examples(n, seed)` generates Alpaca-format records from a fixed list of task
families (arithmetic, string transforms, unit conversion, sorting, sequences, list
extremes). Nothing is downloaded: the same `(n, seed)` gives the same list on every
machine and Python version, because every random choice goes through one
`random.Random(seed)` and only its integer methods (`randrange`, `shuffle`), whose
algorithms are fixed, and no set or `hash()` order is ever iterated.

Every record holds `instruction`, `input`, `output`, `answer` (equal to `output`) and
`family`. The operands of a record can be read back from its text: the integers of
arithmetic tasks appear, in order, in `instruction + input`; the word of a string task,
the quantity of a conversion and the list of a list task are its `input`. The tests
recompute every answer from there.

There is no "uppercase" family on purpose: `exact_match` ignores case, so it would
grade an unchanged word as a correct answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

from adaptive_lora.errors import UserError

# Short lowercase words (letters a-z only) for the string tasks.
WORDS: tuple[str, ...] = (
    "apple",
    "banana",
    "cherry",
    "garden",
    "planet",
    "river",
    "window",
    "pencil",
    "rocket",
    "yellow",
    "silver",
    "forest",
    "island",
    "mountain",
    "orange",
    "purple",
    "teacher",
    "library",
    "kitchen",
    "bottle",
    "candle",
    "dragon",
    "engine",
    "feather",
    "guitar",
    "hammer",
    "jungle",
    "kettle",
    "lemon",
    "marble",
    "needle",
    "ocean",
    "pepper",
    "rabbit",
    "saddle",
    "tomato",
    "umbrella",
    "violin",
    "wizard",
    "zebra",
    "anchor",
    "basket",
    "castle",
    "desert",
    "elephant",
    "falcon",
    "galaxy",
    "harbor",
    "insect",
    "jacket",
    "koala",
    "ladder",
    "meadow",
    "napkin",
    "octopus",
    "parrot",
    "puzzle",
    "rainbow",
    "sunset",
    "turtle",
    "valley",
    "walnut",
    "lantern",
    "coconut",
)

VOWELS = "aeiou"

# (abbreviation in the input, target unit in the instruction, factor)
UNIT_CONVERSIONS: tuple[tuple[str, str, int], ...] = (
    ("km", "metres", 1000),
    ("kg", "grams", 1000),
    ("h", "minutes", 60),
    ("min", "seconds", 60),
    ("m", "centimetres", 100),
)

T = TypeVar("T")
Example = dict[str, str]
Generator = Callable[[random.Random], tuple[str, str, str]]


def _pick(rng: random.Random, options: Sequence[T]) -> T:
    """One element of `options` (like `rng.choice`, spelled out to pin the algorithm)."""
    return options[rng.randrange(len(options))]


def _distinct_ints(rng: random.Random, k: int, low: int, high: int) -> list[int]:
    """k distinct integers in [low, high], in draw order (no `random.sample`, see module doc)."""
    values: list[int] = []
    while len(values) < k:
        value = rng.randrange(low, high + 1)
        if value not in values:
            values.append(value)
    return values


def _join(numbers: list[int]) -> str:
    return ", ".join(str(x) for x in numbers)


def _addition(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randrange(100), rng.randrange(100)
    instruction, input_ = _pick(
        rng,
        (
            ("What is {a} + {b}?", ""),
            ("What is {a} plus {b}?", ""),
            ("Calculate {a} + {b}. Answer with the number only.", ""),
            ("Add the two numbers.", "{a}, {b}"),
            ("Compute the sum of the numbers below.", "{a} and {b}"),
        ),
    )
    return instruction.format(a=a, b=b), input_.format(a=a, b=b), str(a + b)


def _subtraction(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randrange(100), rng.randrange(100)
    # Every phrasing names the minuend first, so "first integer minus second" holds.
    instruction, input_ = _pick(
        rng,
        (
            ("What is {a} - {b}?", ""),
            ("What is {a} minus {b}?", ""),
            ("Compute the difference {a} - {b}.", ""),
            ("Subtract the second number from the first.", "{a}, {b}"),
        ),
    )
    return instruction.format(a=a, b=b), input_.format(a=a, b=b), str(a - b)


def _multiplication(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randrange(2, 16), rng.randrange(2, 16)
    instruction, input_ = _pick(
        rng,
        (
            ("What is {a} times {b}?", ""),
            ("What is {a} * {b}?", ""),
            ("Multiply {a} by {b}.", ""),
            ("Multiply the two numbers.", "{a}, {b}"),
            ("Compute the product of the numbers below.", "{a} and {b}"),
        ),
    )
    return instruction.format(a=a, b=b), input_.format(a=a, b=b), str(a * b)


def _reverse_word(rng: random.Random) -> tuple[str, str, str]:
    word = _pick(rng, WORDS)
    instruction = _pick(
        rng,
        (
            "Reverse the letters of the word.",
            "Write the word backwards.",
            "Spell the given word in reverse order.",
        ),
    )
    return instruction, word, word[::-1]


def _count_letter(rng: random.Random) -> tuple[str, str, str]:
    word = _pick(rng, WORDS)
    letter = word[rng.randrange(len(word))]
    instruction = _pick(
        rng,
        (
            "How many times does the letter '{c}' appear in the word?",
            "Count the occurrences of the letter '{c}' in the word below.",
            "In the given word, how often does the letter '{c}' occur?",
        ),
    )
    return instruction.format(c=letter), word, str(word.count(letter))


def _count_vowels(rng: random.Random) -> tuple[str, str, str]:
    word = _pick(rng, WORDS)
    instruction = _pick(
        rng,
        (
            "How many vowels (a, e, i, o, u) are in the word?",
            "Count the vowels in the word below. Only a, e, i, o and u are vowels.",
            "Give the number of vowels (a, e, i, o, u) in this word.",
        ),
    )
    return instruction, word, str(sum(word.count(v) for v in VOWELS))


def _unit_conversion(rng: random.Random) -> tuple[str, str, str]:
    unit, target, factor = _pick(rng, UNIT_CONVERSIONS)
    quantity = rng.randrange(1, 51)
    instruction = _pick(
        rng,
        (
            "Convert the quantity to {t}. Answer with the number only.",
            "How many {t} is this?",
            "Express this amount in {t}.",
        ),
    )
    return instruction.format(t=target), f"{quantity} {unit}", str(quantity * factor)


def _sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    numbers = _distinct_ints(rng, rng.randrange(3, 7), 0, 99)
    descending = rng.randrange(2) == 1
    # Each phrasing says "ascending"/"smallest to largest" or the opposite, so the
    # direction can be read back from the instruction.
    if descending:
        instruction = _pick(
            rng,
            (
                "Sort the numbers in descending order.",
                "Arrange these numbers from largest to smallest.",
                "Order the list in descending order, separated by commas.",
            ),
        )
    else:
        instruction = _pick(
            rng,
            (
                "Sort the numbers in ascending order.",
                "Arrange these numbers from smallest to largest.",
                "Order the list in ascending order, separated by commas.",
            ),
        )
    return instruction, _join(numbers), _join(sorted(numbers, reverse=descending))


def _next_in_sequence(rng: random.Random) -> tuple[str, str, str]:
    length = rng.randrange(4, 6)
    step = _pick(rng, (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12))
    # A decreasing sequence starts high enough that its next term is still >= 0.
    start = rng.randrange(31) + (-step * length if step < 0 else 0)
    terms = [start + i * step for i in range(length)]
    instruction = _pick(
        rng,
        (
            "What number comes next in the sequence?",
            "Continue the arithmetic sequence with its next term.",
            "Give the next number in this pattern.",
        ),
    )
    return instruction, _join(terms), str(start + length * step)


def _max_of_list(rng: random.Random) -> tuple[str, str, str]:
    numbers = _distinct_ints(rng, rng.randrange(3, 8), 0, 99)
    instruction = _pick(
        rng,
        (
            "What is the largest number in the list?",
            "Find the maximum of these numbers.",
            "Which of these numbers is the biggest?",
        ),
    )
    return instruction, _join(numbers), str(max(numbers))


def _min_of_list(rng: random.Random) -> tuple[str, str, str]:
    numbers = _distinct_ints(rng, rng.randrange(3, 8), 0, 99)
    instruction = _pick(
        rng,
        (
            "What is the smallest number in the list?",
            "Find the minimum of these numbers.",
            "Which of these numbers is the lowest?",
        ),
    )
    return instruction, _join(numbers), str(min(numbers))


# A tuple, not a dict iterated for order: the order is part of the data set's definition.
FAMILIES: tuple[tuple[str, Generator], ...] = (
    ("addition", _addition),
    ("subtraction", _subtraction),
    ("multiplication", _multiplication),
    ("reverse_word", _reverse_word),
    ("count_letter", _count_letter),
    ("count_vowels", _count_vowels),
    ("unit_conversion", _unit_conversion),
    ("sort_numbers", _sort_numbers),
    ("next_in_sequence", _next_in_sequence),
    ("max_of_list", _max_of_list),
    ("min_of_list", _min_of_list),
)
FAMILY_NAMES: tuple[str, ...] = tuple(name for name, _ in FAMILIES)


def builtin_examples(n: int = 600, seed: int = 1234) -> list[Example]:
    """Generate `n` distinct records, the families taken in turn, then shuffled by `seed`.

    A repeated (instruction, input) pair is skipped, so the first occurrence wins and
    every pair is unique. Raises `UserError` if `n` distinct records cannot be made.
    """
    if n < 1:
        raise UserError(f"the built-in data set needs n >= 1 examples, got n={n}")
    rng = random.Random(seed)
    examples: list[Example] = []
    seen: set[tuple[str, str]] = set()  # membership only; never iterated
    max_attempts = 100 * n + 1000
    attempt = 0
    while len(examples) < n:
        if attempt >= max_attempts:
            raise UserError(
                f"could only generate {len(examples)} distinct built-in examples, "
                f"asked for {n}; ask for fewer"
            )
        family, generate = FAMILIES[attempt % len(FAMILIES)]
        attempt += 1
        instruction, input_, output = generate(rng)
        if (instruction, input_) in seen:
            continue
        seen.add((instruction, input_))
        examples.append(
            {
                "instruction": instruction,
                "input": input_,
                "output": output,
                "answer": output,
                "family": family,
            }
        )
    rng.shuffle(examples)
    return examples


_SPACE = re.compile(r"\s+")
_COMMA = re.compile(r"\s*,\s*")


def normalize_answer(text: str) -> str:
    """Lower-case, collapse whitespace, write commas as ", ", drop trailing periods."""
    text = _SPACE.sub(" ", text).strip().casefold()
    text = _COMMA.sub(", ", text)
    return text.rstrip(".").rstrip()


def first_line(text: str) -> str:
    """The first line of `text` that is not blank ("" if there is none)."""
    for line in text.splitlines():
        if line.strip():
            return line
    return ""


def exact_match(prediction: str, reference: str) -> bool:
    """Whether a generated answer equals the reference answer.

    The rule: take the first non-blank line of the prediction (models often go on
    after the answer), then normalise both sides with `normalize_answer` — case
    folded, runs of whitespace collapsed to one space and stripped, spaces around
    commas written as ", ", trailing periods removed — and compare for equality.
    So "  42.\\nBecause..." matches "42" and "3,7 ,9" matches "3, 7, 9", but
    "The answer is 42" does not match "42".
    """
    return normalize_answer(first_line(prediction)) == normalize_answer(reference)
