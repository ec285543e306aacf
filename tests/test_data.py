"""Tests for adaptive_lora.data (sources, prompts, splits, the built-in set; no network, no hub)."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive_lora.data.builtin import FAMILY_NAMES, builtin_examples, exact_match
from adaptive_lora.data.prompts import (
    IGNORE_INDEX,
    TEMPLATES,
    collate,
    format_prompt,
    length_grouped_batches,
    tokenize_examples,
)
from adaptive_lora.data.sources import load_examples
from adaptive_lora.data.splits import hash_examples, make_splits
from adaptive_lora.errors import UserError

DEMO_FILE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "alpaca_en_demo.json"

# sha256 of the canonical JSON of builtin_examples() with its defaults (n=600, seed=1234).
# The built-in data set is part of every study's definition: if this changes, the
# generator changed, and results on the built-in set are no longer comparable.
BUILTIN_DEFAULT_SHA256 = "a3ae91bcfca8a34905bd2ced6d17a7b9006a64a226c4ee8ce70bda17ec52e451"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


def _train_tokenizer(chat_template: str | None):
    """A byte-level BPE tokenizer trained in memory, adding BOS like Llama's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [format_prompt(ex) + ex["output"] for ex in builtin_examples(60, seed=0)]
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


@pytest.fixture(scope="module")
def tokenizer():
    return _train_tokenizer(CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def plain_tokenizer():
    return _train_tokenizer(None)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(*records) -> str:
    return "\n".join(json.dumps(r) for r in records) + "\n"


GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}

# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def test_load_json_fills_missing_input_and_keeps_only_alpaca_keys(tmp_path):
    records = [
        {"instruction": "a", "output": "b"},
        {"instruction": "c", "input": None, "output": "d", "extra": 1},
        {"instruction": "e", "input": "f", "output": "g"},
    ]
    path = _write(tmp_path, "data.json", json.dumps(records))
    assert load_examples(str(path)) == [
        {"instruction": "a", "input": "", "output": "b"},
        {"instruction": "c", "input": "", "output": "d"},
        {"instruction": "e", "input": "f", "output": "g"},
    ]


def test_load_jsonl_skips_blank_lines(tmp_path):
    text = json.dumps(GOOD) + "\n\n  \n" + json.dumps({**GOOD, "input": "x"}) + "\n"
    path = _write(tmp_path, "data.jsonl", text)
    assert load_examples(str(path)) == [GOOD, {**GOOD, "input": "x"}]


def test_load_json_accepts_byte_order_mark(tmp_path):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([GOOD]).encode())
    assert load_examples(str(path)) == [GOOD]


MALFORMED = [
    # (file name, content, fragments the message must contain)
    ("bad.json", '[{"instruction": "a", "output": "b"},\n {oops}]', ["line 2", "column 3"]),
    ("top.json", json.dumps(GOOD), ["top level", "object"]),
    ("notobj.json", json.dumps([GOOD, 3]), ["record 1", "expected an object"]),
    ("noinst.json", json.dumps([GOOD, GOOD, {"output": "x"}]), ["record 2", "'instruction'"]),
    ("noout.json", json.dumps([{"instruction": "x"}]), ["record 0", "'output'"]),
    ("intout.json", json.dumps([GOOD, {**GOOD, "output": 5}]), ["record 1", "'output'", "number"]),
    ("listin.json", json.dumps([{**GOOD, "input": ["x"]}]), ["record 0", "'input'", "list"]),
    ("empty.json", "", ["empty"]),
    ("blank.json", "  \n\n", ["empty"]),
    ("zero.json", "[]", ["zero records"]),
    ("bad.jsonl", _jsonl(GOOD, GOOD) + '{"instruction": "a",\n', ["line 3", "not valid JSON"]),
    ("notobj.jsonl", _jsonl(GOOD, [GOOD]), ["line 2", "list", "expected an object"]),
    ("noout.jsonl", _jsonl(GOOD, {"instruction": "x"}), ["line 2", "'output'"]),
    ("intinst.jsonl", _jsonl({**GOOD, "instruction": True}), ["line 1", "'instruction'"]),
    ("empty.jsonl", "\n\n", ["empty"]),
]


@pytest.mark.parametrize(("name", "text", "fragments"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_file_is_one_line_user_error_naming_file_and_record(
    tmp_path, name, text, fragments
):
    path = _write(tmp_path, name, text)
    with pytest.raises(UserError) as info:
        load_examples(str(path))
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_not_utf8_is_user_error(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"))
    with pytest.raises(UserError, match="UTF-8"):
        load_examples(str(path))


@pytest.mark.parametrize("name", ["missing.json", "missing.jsonl", "nowhere.txt"])
def test_missing_path_is_user_error_naming_it(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(UserError) as info:
        load_examples(str(path))
    assert str(path) in str(info.value)


def test_unsupported_file_type_is_user_error(tmp_path):
    path = _write(tmp_path, "data.csv", "instruction,output\n")
    with pytest.raises(UserError, match="unsupported file type"):
        load_examples(str(path))


def _fake_datasets(monkeypatch, load_dataset) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_unreachable_hub_is_one_line_user_error(monkeypatch):
    def load_dataset(name, split):
        raise ConnectionError("Couldn't reach the hub\nretry later")

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(UserError) as info:
        load_examples("someone/some-data")
    message = str(info.value)
    assert "\n" not in message
    assert "someone/some-data" in message and "local" in message


def test_hub_rows_are_validated(monkeypatch):
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [GOOD, {"instruction": "x", "output": None}]

    _fake_datasets(monkeypatch, load_dataset)
    with pytest.raises(UserError, match=r"someone/data: record 1: field 'output'"):
        load_examples("someone/data")
    assert calls == [("someone/data", "train")]


def test_load_builtin():
    examples = load_examples("builtin")
    assert examples == builtin_examples()
    assert all(ex["answer"] == ex["output"] for ex in examples)


@pytest.mark.skipif(not DEMO_FILE.exists(), reason="shared Alpaca demo file not present")
def test_load_shared_alpaca_demo():
    examples = load_examples(str(DEMO_FILE))
    assert len(examples) == 999
    assert sum(bool(ex["input"]) for ex in examples) == 412


# ---------------------------------------------------------------------------
# The built-in data set
# ---------------------------------------------------------------------------


def test_builtin_is_deterministic_per_seed():
    assert builtin_examples(200, seed=7) == builtin_examples(200, seed=7)
    assert builtin_examples(200, seed=7) != builtin_examples(200, seed=8)


def test_builtin_default_is_pinned():
    assert hash_examples(builtin_examples()) == BUILTIN_DEFAULT_SHA256


def test_builtin_records_are_unique_and_cover_every_family():
    examples = builtin_examples()
    assert len(examples) == 600
    assert len({(ex["instruction"], ex["input"]) for ex in examples}) == 600
    assert {ex["family"] for ex in examples} == set(FAMILY_NAMES)
    for ex in examples:
        assert set(ex) == {"instruction", "input", "output", "answer", "family"}
        assert ex["answer"] == ex["output"] and ex["output"]


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def _word(ex: dict) -> str:
    assert re.fullmatch(r"[a-z]+", ex["input"]), ex
    return ex["input"]


def _sorted_answer(ex: dict) -> str:
    instruction = ex["instruction"]
    descending = "descending" in instruction or "largest to smallest" in instruction
    ascending = "ascending" in instruction or "smallest to largest" in instruction
    assert descending != ascending, ex
    return ", ".join(map(str, sorted(_numbers(ex["input"]), reverse=descending)))


def _next_term(ex: dict) -> str:
    terms = _numbers(ex["input"])
    steps = {b - a for a, b in zip(terms, terms[1:])}
    assert len(steps) == 1 and len(terms) >= 3, ex
    return str(terms[-1] + steps.pop())


CONVERSION_FACTORS = {"km": 1000, "kg": 1000, "h": 60, "min": 60, "m": 100}

# An independent re-computation of each family's answer from the record's own text.
RECOMPUTE = {
    "addition": lambda ex: str(sum(_numbers(ex["instruction"] + "\n" + ex["input"]))),
    "subtraction": lambda ex: str(
        (lambda a, b: a - b)(*_numbers(ex["instruction"] + "\n" + ex["input"]))
    ),
    "multiplication": lambda ex: str(
        (lambda a, b: a * b)(*_numbers(ex["instruction"] + "\n" + ex["input"]))
    ),
    "reverse_word": lambda ex: "".join(reversed(_word(ex))),
    "count_letter": lambda ex: str(
        _word(ex).count(re.search(r"letter '([a-z])'", ex["instruction"]).group(1))
    ),
    "count_vowels": lambda ex: str(sum(ch in "aeiou" for ch in _word(ex))),
    "unit_conversion": lambda ex: str(
        int(ex["input"].split()[0]) * CONVERSION_FACTORS[ex["input"].split()[1]]
    ),
    "sort_numbers": _sorted_answer,
    "next_in_sequence": _next_term,
    "max_of_list": lambda ex: str(max(_numbers(ex["input"]))),
    "min_of_list": lambda ex: str(min(_numbers(ex["input"]))),
}


def test_every_builtin_answer_is_correct():
    assert set(RECOMPUTE) == set(FAMILY_NAMES)
    for ex in builtin_examples(1500, seed=99):
        assert RECOMPUTE[ex["family"]](ex) == ex["answer"], ex


def test_unit_conversion_names_the_right_target():
    targets = {"km": "metres", "kg": "grams", "h": "minutes", "min": "seconds", "m": "centimetres"}
    for ex in builtin_examples():
        if ex["family"] == "unit_conversion":
            assert targets[ex["input"].split()[1]] in ex["instruction"], ex


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("42", "42", True),
        ("  42.  ", "42", True),
        ("42\nBecause 40 + 2 = 42.", "42", True),
        ("\n\n  42\nmore", "42", True),
        ("Tenalp", "tenalp", True),
        ("3,7 ,  9", "3, 7, 9", True),
        ("3  7 9", "3, 7, 9", False),
        ("The answer is 42", "42", False),
        ("43", "42", False),
        ("", "42", False),
        ("-5", "-5", True),
        ("5", "-5", False),
    ],
)
def test_exact_match_rules(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


# ---------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------


def test_alpaca_prompt_with_and_without_input():
    with_input = format_prompt({"instruction": "Add.", "input": "1, 2", "output": "3"})
    assert with_input == (
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nAdd.\n\n### Input:\n1, 2\n\n### Response:\n"
    )
    no_input = format_prompt({"instruction": "Say hi.", "input": " ", "output": "Hi"})
    assert no_input == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:\n"
    )


def test_chat_prompt_uses_the_tokenizer_template(tokenizer):
    example = {"instruction": "Add.", "input": "1, 2", "output": "3"}
    assert format_prompt(example, "chat", tokenizer) == "<|user|>Add.\n\n1, 2\n<|assistant|>"


def test_chat_prompt_without_chat_template_is_user_error(plain_tokenizer):
    with pytest.raises(UserError, match="alpaca"):
        format_prompt(GOOD, "chat", plain_tokenizer)


def test_unknown_template_lists_valid_names():
    with pytest.raises(UserError) as info:
        format_prompt(GOOD, "vicuna")
    assert all(name in str(info.value) for name in TEMPLATES)


# ---------------------------------------------------------------------------
# Tokenization, collation, batching
# ---------------------------------------------------------------------------


def test_labels_mask_exactly_the_prompt_and_end_with_eos(tokenizer):
    examples = builtin_examples(20, seed=3)
    split = tokenize_examples(examples, tokenizer, max_length=512)
    assert split.kept == list(range(20)) and split.n_truncated == split.n_dropped == 0
    eos = tokenizer.eos_token_id
    for ex, feature in zip(examples, split.features):
        prompt = tokenizer(format_prompt(ex))["input_ids"]
        response = tokenizer(ex["output"], add_special_tokens=False)["input_ids"]
        assert prompt[0] == tokenizer.bos_token_id
        assert feature["input_ids"] == prompt + response + [eos]
        assert feature["labels"] == [IGNORE_INDEX] * len(prompt) + response + [eos]
        assert tokenizer.decode(feature["labels"][len(prompt) : -1]) == ex["output"]
    assert split.n_tokens == sum(split.lengths)
    assert split.n_label_tokens == sum(
        len(tokenizer(ex["output"], add_special_tokens=False)["input_ids"]) + 1 for ex in examples
    )


def test_chat_prompt_gets_no_extra_special_tokens(tokenizer):
    example = builtin_examples(1, seed=3)[0]
    feature = tokenize_examples([example], tokenizer, 512, template="chat").features[0]
    prompt = tokenizer(format_prompt(example, "chat", tokenizer), add_special_tokens=False)
    n_prompt = len(prompt["input_ids"])
    assert feature["input_ids"][0] != tokenizer.bos_token_id
    assert feature["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert feature["labels"][n_prompt] != IGNORE_INDEX
    assert feature["labels"][-1] == tokenizer.eos_token_id


def test_truncation_is_counted_and_keeps_some_labels(tokenizer):
    long = {"instruction": "Repeat.", "input": "", "output": "apple banana " * 40}
    short = {"instruction": "Repeat.", "input": "", "output": "3"}
    n_prompt = len(tokenizer(format_prompt(long))["input_ids"])
    split = tokenize_examples([long, short], tokenizer, max_length=n_prompt + 5)
    assert split.n_truncated == 1 and split.n_dropped == 0
    truncated = split.features[0]
    assert len(truncated["input_ids"]) == len(truncated["labels"]) == n_prompt + 5
    assert truncated["labels"][-1] != tokenizer.eos_token_id
    assert sum(x != IGNORE_INDEX for x in truncated["labels"]) == 5


def test_example_whose_prompt_fills_max_length_is_dropped(tokenizer):
    long_prompt = {"instruction": "word " * 100, "input": "", "output": "x"}
    short = {"instruction": "Add.", "input": "", "output": "3"}
    split = tokenize_examples([long_prompt, short], tokenizer, max_length=60)
    assert split.n_dropped == 1 and split.kept == [1]
    with pytest.raises(UserError, match="max_length"):
        tokenize_examples([long_prompt], tokenizer, max_length=60)


def test_collate_pads_right_and_left():
    features = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
        {"input_ids": [8], "labels": [8]},
    ]
    right = collate(features, pad_token_id=0)
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert all(t.dtype == torch.long for t in right.values())
    left = collate(features, pad_token_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert left["labels"].tolist() == [[-100, 6, 7], [-100, -100, 8]]


@settings(max_examples=50, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 300), max_size=400),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**32),
)
def test_length_grouped_batches_cover_every_index_once(lengths, batch_size, seed):
    batches = length_grouped_batches(lengths, batch_size, seed)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert all(0 < len(batch) <= batch_size for batch in batches)
    assert sum(len(batch) < batch_size for batch in batches) <= 1
    assert batches == length_grouped_batches(lengths, batch_size, seed)


def test_length_grouped_batches_group_similar_lengths_and_follow_seed():
    lengths = [(i * 37) % 500 + 1 for i in range(400)]
    batches = length_grouped_batches(lengths, 4, seed=0)
    # One mega-batch of 200 sorted by length: each batch spans a narrow length range.
    spread = max(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread < 50
    assert batches != length_grouped_batches(lengths, 4, seed=1)


# ---------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------


def test_splits_are_disjoint_sized_and_deterministic():
    examples = builtin_examples(100, seed=5)
    splits = make_splits(examples, 60, 20, 10, seed=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (60, 20, 10)
    keys = [(ex["instruction"], ex["input"]) for ex in splits.train + splits.val + splits.test]
    assert len(set(keys)) == 90
    again = make_splits(examples, 60, 20, 10, seed=1)
    assert again == splits
    other = make_splits(examples, 60, 20, 10, seed=2)
    assert other.data_hash != splits.data_hash
    assert other.source_hash == splits.source_hash == hash_examples(examples)


def test_splits_allow_empty_val_and_test():
    splits = make_splits(builtin_examples(10, seed=5), 10, 0, 0, seed=0)
    assert len(splits.train) == 10 and splits.val == splits.test == []


def test_too_few_examples_is_user_error():
    with pytest.raises(UserError, match=r"has 10 examples .* ask for 12"):
        make_splits(builtin_examples(10, seed=5), 8, 2, 2, seed=0)


@pytest.mark.parametrize(("n_train", "n_val", "n_test"), [(0, 1, 1), (5, -1, 0), (5, 0, -2)])
def test_bad_split_sizes_are_user_errors(n_train, n_val, n_test):
    with pytest.raises(UserError, match="split sizes"):
        make_splits(builtin_examples(10, seed=5), n_train, n_val, n_test, seed=0)
