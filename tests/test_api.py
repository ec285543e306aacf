"""The public API: the README's example runs as written, and its LoraConfig trains in a plain Trainer."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

import adaptive_lora as al
from adaptive_lora.data.builtin import builtin_examples
from adaptive_lora.data.prompts import collate, tokenize_examples
from tiny import byte_tokenizer, save_tiny, tiny_gpt2, tiny_llama

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_api_example() -> str:
    """The README's first ```python block under the heading that names the Python API."""
    text = README.read_text()
    section = text[text.index("## Python API") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written_on_a_tiny_model(tmp_path):
    folder = save_tiny(tiny_llama(), tmp_path / "tiny-llama")
    code = readme_api_example()
    assert '"smollm2-135m"' in code  # the example names the shipped model...
    namespace: dict = {}
    exec(code.replace('"smollm2-135m"', repr(folder)), namespace)  # ...the test a tiny one
    allocation, model = namespace["allocation"], namespace["model"]
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == allocation.total_params


class _Batches(torch.utils.data.Dataset):
    def __init__(self, features):
        self.features = features

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def test_lora_config_trains_two_steps_in_a_plain_trainer(tmp_path):
    base = tiny_gpt2()  # Conv1D layers: lora_config must set fan_in_fan_out
    tokenizer = byte_tokenizer()
    allocation = al.allocate(base, "linear_decay", "r8")
    model = get_peft_model(base, al.lora_config(allocation, model=base))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == allocation.total_params
    before = [p.detach().clone() for p in trainable]
    split = tokenize_examples(builtin_examples(8), tokenizer, 256, "chat")
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path / "out"),
            max_steps=2,
            per_device_train_batch_size=4,
            learning_rate=1e-2,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
        ),
        train_dataset=_Batches(split.features),
        data_collator=lambda rows: collate(rows, tokenizer.pad_token_id),
    )
    result = trainer.train()
    assert result.global_step == 2
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, trainable))


def test_rank_and_alpha_patterns_carry_the_allocation(llama):
    allocation = al.allocate(llama, "attention_heavy", "r8")
    config = al.lora_config(allocation, model=llama, alpha_ratio=2.0)
    assert {k.lstrip("^").replace("\\", ""): v for k, v in config.rank_pattern.items()} == (
        allocation.ranks
    )
    assert all(config.alpha_pattern[k] == 2.0 * r for k, r in config.rank_pattern.items())
