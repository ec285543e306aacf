"""Tiny random models and a byte-level tokenizer, built in code (no hub, no download)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from adaptive_lora.allocation.budget import resolve_budget
from adaptive_lora.allocation.core import Allocation, AllocationContext, allocate
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.peft_targets import model_type_of

SPECIALS = ["<pad>", "<eos>", "<bos>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte plus pad/eos/bos: 259 ids, deterministic, no training."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    for token in SPECIALS:
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


VOCAB = 259 + 5  # a little slack beyond the tokenizer


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=512,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=258,
        eos_token_id=257,
        pad_token_id=256,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=258,
        eos_token_id=257,
        pad_token_id=256,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def planted_llama(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    """A tiny Llama for planted tasks: initialised at std 0.2, not 0.02. At 0.02 a random
    model's logits are nearly flat after its final norm, and no delta on an inner module
    moves its output distribution by the KL a planted task asks for (0.3 nats)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=258, eos_token_id=257, pad_token_id=256, tie_word_embeddings=False,
        initializer_range=0.2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def save_tiny(model, folder) -> str:
    """Save model + tokenizer as a local model folder usable with --model FOLDER."""
    model.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return str(folder)


def write_tiny_study(folder: Path, model: str, *, max_steps: int = 2, **changes) -> Path:
    """A 4-run study (uniform and linear_decay × seeds 0, 1) of a saved tiny model, 1 thread
    per run, in `folder/study.yaml`; `changes` replace top-level keys."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": "t",
        "model": model,
        "data": {"source": "builtin", "n_train": 8, "n_val": 4, "n_test": 4,
                 "max_length": 128, "template": "chat"},
        "budgets": ["r4"],
        "strategies": ["uniform", "linear_decay"],
        "seeds": "0..1",
        "train": {"max_steps": max_steps, "batch_size": 4, "threads": 1},
        "eval": {"n_generate": 2, "max_new_tokens": 4},
        "out": str(folder / "out"),
        **changes,
    }  # fmt: skip
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def allocation_for(model, strategy, budget="r8", seed=0, target="all") -> Allocation:
    """`strategy`'s allocation of `budget` over `model`'s target modules."""
    inv = build_inventory(model, target)
    model_type = model_type_of(model)
    ctx = AllocationContext(
        inv, resolve_budget(budget, inv, model_type), seed=seed, model_type=model_type
    )
    return allocate(strategy, ctx)
