"""Instruction data: loading, prompts, response-only labels, batching and splits.

The pipeline, in the order a run uses it:

    load_examples(source) -> make_splits(...) -> tokenize_examples(...)
        -> length_grouped_batches(...) -> collate(...)

Records are Alpaca-format dicts with string fields `instruction`, `input` (may be "")
and `output`; the built-in set (see `adaptive_lora.builtin_data`) adds `answer` and
`family`. Every problem in user data is raised as a one-line `UserError` that names
the file and the record; nothing in here lets a traceback escape for bad data.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_lora.builtin_data import builtin_examples, exact_match
from adaptive_lora.errors import UserError

__all__ = [
    "IGNORE_INDEX",
    "TEMPLATES",
    "Splits",
    "TokenizedSplit",
    "builtin_examples",
    "collate",
    "exact_match",
    "format_prompt",
    "hash_examples",
    "length_grouped_batches",
    "load_examples",
    "make_splits",
    "tokenize_examples",
]

IGNORE_INDEX = -100  # the label value that torch's cross-entropy (and HF models) skip

Example = dict[str, str]

# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_FIX_HINT = "pass a local Alpaca-format .json or .jsonl file, or 'builtin'"


def load_examples(source: str) -> list[Example]:
    """Load Alpaca-format records from `source`.

    `source` is "builtin" (the generated data set, default size and seed), a path to a
    `.json` file (a list of objects) or a `.jsonl` file (one object per line, blank lines
    skipped), or a hub id `owner/name` loaded with `datasets.load_dataset(id,
    split="train")`. User records come back with exactly the keys `instruction`, `input`
    and `output` (a missing or null `input` becomes ""). Any problem raises a one-line
    `UserError`.
    """
    if source == "builtin":
        return builtin_examples()
    path = Path(source)
    if path.suffix.lower() in (".json", ".jsonl") or path.exists():
        return _load_file(path)
    if _HUB_ID.fullmatch(source):
        return _load_hub(source)
    raise UserError(
        f"data source not found: '{source}' is not a file, 'builtin' or a hub id (owner/name); "
        f"{_FIX_HINT}"
    )


def _load_file(path: Path) -> list[Example]:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if not path.is_file():
        raise UserError(f"data source {path} is not a file; {_FIX_HINT}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise UserError(f"{path}: unsupported file type '{suffix}'; {_FIX_HINT}")
    try:
        # utf-8-sig also accepts the byte-order mark that some editors write.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; it needs at least one record")
    records = _parse_jsonl(path, text) if suffix == ".jsonl" else _parse_json(path, text)
    if not records:
        raise UserError(f"{path}: contains zero records; it needs at least one")
    return records


def _parse_json(path: Path, text: str) -> list[Example]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    if not isinstance(data, list):
        raise UserError(
            f"{path}: the top level is a JSON {_json_type(data)}, expected a list of records"
        )
    return [_check_record(record, f"{path}: record {i}") for i, record in enumerate(data)]


def _parse_jsonl(path: Path, text: str) -> list[Example]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON at column {err.colno}: {err.msg}") from None
        records.append(_check_record(record, where))
    return records


def _load_hub(dataset_id: str) -> list[Example]:
    try:
        import datasets  # optional extra `adaptive-lora[hub]`; only hub ids need it
    except ImportError:
        raise UserError(
            f"loading '{dataset_id}' from the hub needs the 'datasets' package "
            f"(pip install 'adaptive-lora[hub]'); or {_FIX_HINT}"
        ) from None
    try:
        rows = datasets.load_dataset(dataset_id, split="train")
    except Exception as err:  # whatever the cause, the user's fix is the same
        reason = _one_line(f"{type(err).__name__}: {err}")
        raise UserError(
            f"'{dataset_id}' is not a local file and could not be loaded from the Hugging Face "
            f"hub (unreachable or unknown id: {reason}); {_FIX_HINT}"
        ) from None
    records = [
        _check_record(row, f"hub data set {dataset_id}: record {i}") for i, row in enumerate(rows)
    ]
    if not records:
        raise UserError(f"hub data set {dataset_id}: its train split has zero records")
    return records


def _check_record(record: Any, where: str) -> Example:
    """Validate one record and return it with exactly the three Alpaca keys."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: is a JSON {_json_type(record)}, expected an object")
    for key in ("instruction", "output"):
        if key not in record:
            raise UserError(
                f"{where}: missing required field '{key}' "
                "(each record needs 'instruction' and 'output'; 'input' is optional)"
            )
    if record.get("input") is None:
        record = {**record, "input": ""}
    for key in ("instruction", "input", "output"):
        if not isinstance(record[key], str):
            raise UserError(
                f"{where}: field '{key}' is a JSON {_json_type(record[key])}, expected a string"
            )
    return {key: record[key] for key in ("instruction", "input", "output")}


def _json_type(value: Any) -> str:
    names = {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------

TEMPLATES: tuple[str, ...] = ("alpaca", "chat")

# The Stanford Alpaca templates (github.com/tatsu-lab/stanford_alpaca, train.py),
# with the "\n" after "### Response:" that alpaca-lora and most fine-tunes use.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)


def format_prompt(example: Example, template: str = "alpaca", tokenizer: Any = None) -> str:
    """The prompt text that precedes the response, ending where the answer begins.

    "alpaca": the Stanford Alpaca template; the no-input variant when `input` is empty or
    blank. "chat": the tokenizer's chat template on one user turn (instruction, then
    input after a blank line), with the generation prompt for the assistant turn.
    """
    instruction = example["instruction"]
    input_ = example.get("input") or ""
    if template == "alpaca":
        if input_.strip():
            return ALPACA_WITH_INPUT.format(instruction=instruction, input=input_)
        return ALPACA_NO_INPUT.format(instruction=instruction)
    if template == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(
                "the 'chat' prompt template needs a tokenizer with a chat template, and this "
                "model's tokenizer has none; use the 'alpaca' template"
            )
        content = instruction + ("\n\n" + input_ if input_.strip() else "")
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    raise UserError(f"unknown prompt template '{template}'; valid: {', '.join(TEMPLATES)}")


# ---------------------------------------------------------------------------
# Tokenization with response-only labels
# ---------------------------------------------------------------------------


@dataclass
class TokenizedSplit:
    """Token ids and labels for a list of examples.

    `features[j]` has `input_ids` and `labels` (same length, not shifted: HF causal LMs
    shift inside); prompt positions are labelled `IGNORE_INDEX`. `kept[j]` is the index
    in the input list of the example that `features[j]` came from.
    """

    features: list[dict[str, list[int]]]
    kept: list[int]
    n_truncated: int  # kept examples cut at max_length (the response tail and EOS lost)
    n_dropped: int  # examples left out because their prompt alone fills max_length
    n_tokens: int  # tokens over all features
    n_label_tokens: int  # tokens that carry a label (response tokens + EOS)

    @property
    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, max_length: int, template: str = "alpaca"
) -> TokenizedSplit:
    """Tokenize prompt and response separately and label only the response.

    input_ids = prompt ids + response ids + [eos], labels = [-100] * len(prompt) +
    response ids + [eos]. The Alpaca prompt gets the tokenizer's usual special tokens
    (e.g. BOS); a chat prompt gets none, since the chat template already writes them;
    the response never gets any. Sequences longer than `max_length` are cut from the
    right and counted in `n_truncated`. An example whose prompt alone is `max_length`
    tokens or more would have no label left: it is dropped (counted in `n_dropped`)
    rather than cut from the left, which would lose the instruction it should follow.
    Raises `UserError` if no example fits.
    """
    if max_length < 2:
        raise UserError(f"max_length must be at least 2 tokens, got {max_length}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise UserError("the tokenizer has no EOS token; set one (tokenizer.eos_token)")
    prompts = [format_prompt(ex, template, tokenizer) for ex in examples]
    prompt_ids = _token_ids(tokenizer, prompts, add_special_tokens=template == "alpaca")
    prompt_ids = [_drop_trailing_eos(ids, eos_id) for ids in prompt_ids]
    response_ids = _token_ids(tokenizer, [ex["output"] for ex in examples], False)

    features, kept = [], []
    n_truncated = n_dropped = 0
    for i, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        if len(prompt) >= max_length:
            n_dropped += 1
            continue
        input_ids = prompt + response + [eos_id]
        labels = [IGNORE_INDEX] * len(prompt) + response + [eos_id]
        if len(input_ids) > max_length:
            n_truncated += 1
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        features.append({"input_ids": input_ids, "labels": labels})
        kept.append(i)
    if examples and not features:
        raise UserError(
            f"no example fits in max_length={max_length} tokens (every prompt is longer); "
            "raise max_length"
        )
    return TokenizedSplit(
        features=features,
        kept=kept,
        n_truncated=n_truncated,
        n_dropped=n_dropped,
        n_tokens=sum(len(f["input_ids"]) for f in features),
        n_label_tokens=sum(sum(x != IGNORE_INDEX for x in f["labels"]) for f in features),
    )


def _token_ids(tokenizer: Any, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
    if not texts:
        return []
    return list(tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"])


def _drop_trailing_eos(ids: list[int], eos_id: int) -> list[int]:
    # Some tokenizers append EOS as a special token; inside a training sequence it would
    # teach the model to stop before answering.
    return ids[:-1] if ids and ids[-1] == eos_id else list(ids)


def collate(
    features: Sequence[dict[str, list[int]]], pad_token_id: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence: `input_ids`, `attention_mask`, `labels` (long).

    Pads get `pad_token_id`, attention 0 and label -100, on the right (training) or the
    left (generation).
    """
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if not features:
        raise ValueError("collate needs at least one feature")
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for f in features:
        n_pad = longest - len(f["input_ids"])
        rows = {
            "input_ids": (f["input_ids"], pad_token_id),
            "attention_mask": ([1] * len(f["input_ids"]), 0),
            "labels": (f.get("labels", f["input_ids"]), IGNORE_INDEX),
        }
        for key, (values, pad) in rows.items():
            padding = [pad] * n_pad
            batch[key].append(
                list(values) + padding if padding_side == "right" else padding + list(values)
            )
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}


def length_grouped_batches(lengths: Sequence[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of indices of similar length; every index exactly once, fixed by `seed`.

    Shuffle all indices, cut them into mega-batches of 50 * batch_size, sort each
    mega-batch by length (longest first, ties by shuffled position), split it into
    batches and shuffle the batch order with the same generator. Only the very last
    batch may be smaller than `batch_size`. (The mega-batch idea is the HF Trainer's
    `group_by_length` sampler: little padding, yet a random order.)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    mega = 50 * batch_size
    batches = []
    for start in range(0, len(order), mega):
        # sorted() is stable, so equal lengths keep their shuffled order.
        group = sorted(order[start : start + mega], key=lambda i: -lengths[i])
        batches += [group[j : j + batch_size] for j in range(0, len(group), batch_size)]
    rng.shuffle(batches)
    return batches


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


@dataclass
class Splits:
    """Three disjoint subsets of the examples, and fingerprints to record with a run.

    `data_hash` fingerprints the chosen subsets (it changes with the data seed);
    `source_hash` the whole source list (it changes only when the data does).
    """

    train: list[Example]
    val: list[Example]
    test: list[Example]
    data_hash: str
    source_hash: str


def hash_examples(value: Any) -> str:
    """sha256 of the canonical JSON of `value` (sorted keys, no spaces, UTF-8)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def make_splits(
    examples: Sequence[Example], n_train: int, n_val: int, n_test: int, seed: int
) -> Splits:
    """Shuffle the example indices with `random.Random(seed)` and take disjoint slices:
    the first `n_train` for train, the next `n_val` for validation, the next `n_test`
    for test. Raises `UserError` if the counts are negative (or n_train < 1) or add up
    to more examples than there are.
    """
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise UserError(
            f"split sizes must be n_train >= 1, n_val >= 0, n_test >= 0; got "
            f"n_train={n_train}, n_val={n_val}, n_test={n_test}"
        )
    wanted = n_train + n_val + n_test
    if wanted > len(examples):
        raise UserError(
            f"the data set has {len(examples)} examples but the splits ask for {wanted} "
            f"({n_train} train + {n_val} val + {n_test} test); ask for fewer"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    train, val, test = (
        _pick(examples, order[:n_train]),
        _pick(examples, order[n_train : n_train + n_val]),
        _pick(examples, order[n_train + n_val : wanted]),
    )
    return Splits(
        train=train,
        val=val,
        test=test,
        data_hash=hash_examples({"train": train, "val": val, "test": test}),
        source_hash=hash_examples(list(examples)),
    )


def _pick(examples: Sequence[Example], indices: Iterable[int]) -> list[Example]:
    return [examples[i] for i in indices]
