"""Tiny random models of every common causal-LM architecture, built from their config classes.

Two blocks, width 32, MLP width 64 (GPT-2, Falcon: their 4× default, 128), the byte
tokenizer's special ids (pad 256, eos 257, bos 258) and its vocabulary plus slack.
Each family comes with the projections its inventory must find in one block:
(path inside the block, kind, d_in, d_out).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf

from tiny import VOCAB

SPECIAL_IDS = {"pad_token_id": 256, "eos_token_id": 257, "bos_token_id": 258}
WIDTH, MLP = 32, 64
# Llama-like models: 4 query heads of 8, 2 key/value heads (grouped-query attention).
LLAMA_LIKE = dict(
    vocab_size=VOCAB,
    hidden_size=WIDTH,
    intermediate_size=MLP,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
    **SPECIAL_IDS,
)
LLAMA_ROWS = [
    ("self_attn.q_proj", "q", WIDTH, WIDTH),
    ("self_attn.k_proj", "k", WIDTH, 16),
    ("self_attn.v_proj", "v", WIDTH, 16),
    ("self_attn.o_proj", "o", WIDTH, WIDTH),
    ("mlp.gate_proj", "gate", WIDTH, MLP),
    ("mlp.up_proj", "up", WIDTH, MLP),
    ("mlp.down_proj", "down", MLP, WIDTH),
]


@dataclass(frozen=True)
class Family:
    """A tiny model of one architecture and what its inventory must hold."""

    name: str
    config_class: Any
    model_class: Any
    settings: dict[str, Any]
    block_prefix: str  # the module path of block 0, with {layer} for the index
    rows: list[tuple[str, str, int, int]]

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return self.model_class(self.config_class(**self.settings)).eval()

    def expected(self) -> list[tuple[str, int, str, int, int]]:
        """(name, layer, kind, d_in, d_out) of every adaptable projection, in module order."""
        return [
            (f"{self.block_prefix.format(layer=layer)}.{path}", layer, kind, d_in, d_out)
            for layer in (0, 1)
            for path, kind, d_in, d_out in self.rows
        ]


def _llama_like(name: str, config: Any, model: Any, **extra: Any) -> Family:
    return Family(name, config, model, {**LLAMA_LIKE, **extra}, "model.layers.{layer}", LLAMA_ROWS)


FAMILIES: list[Family] = [
    _llama_like("llama", tf.LlamaConfig, tf.LlamaForCausalLM),
    _llama_like("qwen2", tf.Qwen2Config, tf.Qwen2ForCausalLM),
    _llama_like("qwen3", tf.Qwen3Config, tf.Qwen3ForCausalLM, head_dim=8),
    _llama_like("mistral", tf.MistralConfig, tf.MistralForCausalLM),
    _llama_like("gemma2", tf.Gemma2Config, tf.Gemma2ForCausalLM, head_dim=8),
    _llama_like("gemma3", tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, head_dim=8),
    Family(
        "phi3",
        tf.Phi3Config,
        tf.Phi3ForCausalLM,
        LLAMA_LIKE,
        "model.layers.{layer}",
        [
            ("self_attn.o_proj", "o", WIDTH, WIDTH),
            ("self_attn.qkv_proj", "qkv", WIDTH, WIDTH + 2 * 16),
            ("mlp.gate_up_proj", "gate_up", WIDTH, 2 * MLP),
            ("mlp.down_proj", "down", MLP, WIDTH),
        ],
    ),
    Family(
        "gpt2",
        tf.GPT2Config,
        tf.GPT2LMHeadModel,
        dict(vocab_size=VOCAB, n_positions=512, n_embd=WIDTH, n_layer=2, n_head=2, **SPECIAL_IDS),
        "transformer.h.{layer}",
        [
            ("attn.c_attn", "qkv", WIDTH, 3 * WIDTH),
            ("attn.c_proj", "o", WIDTH, WIDTH),
            ("mlp.c_fc", "fc", WIDTH, 4 * WIDTH),
            ("mlp.c_proj", "proj", 4 * WIDTH, WIDTH),
        ],
    ),
    Family(
        "gpt_neox",
        tf.GPTNeoXConfig,
        tf.GPTNeoXForCausalLM,
        dict(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            intermediate_size=MLP,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
            **SPECIAL_IDS,
        ),
        "gpt_neox.layers.{layer}",
        [
            ("attention.query_key_value", "qkv", WIDTH, 3 * WIDTH),
            ("attention.dense", "o", WIDTH, WIDTH),
            ("mlp.dense_h_to_4h", "fc", WIDTH, MLP),
            ("mlp.dense_4h_to_h", "proj", MLP, WIDTH),
        ],
    ),
    Family(
        "opt",
        tf.OPTConfig,
        tf.OPTForCausalLM,
        dict(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            ffn_dim=MLP,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=WIDTH,
            **SPECIAL_IDS,
        ),
        "model.decoder.layers.{layer}",
        [
            ("self_attn.k_proj", "k", WIDTH, WIDTH),
            ("self_attn.v_proj", "v", WIDTH, WIDTH),
            ("self_attn.q_proj", "q", WIDTH, WIDTH),
            ("self_attn.out_proj", "o", WIDTH, WIDTH),
            ("fc1", "fc", WIDTH, MLP),
            ("fc2", "proj", MLP, WIDTH),
        ],
    ),
    Family(
        "falcon",
        tf.FalconConfig,
        tf.FalconForCausalLM,
        dict(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            num_hidden_layers=2,
            num_attention_heads=4,
            **SPECIAL_IDS,
        ),  # fmt: skip
        "transformer.h.{layer}",
        [
            # Multi-query attention: 4 query heads of 8 and one shared key and value head.
            ("self_attention.query_key_value", "qkv", WIDTH, WIDTH + 2 * 8),
            ("self_attention.dense", "o", WIDTH, WIDTH),
            ("mlp.dense_h_to_4h", "fc", WIDTH, 4 * WIDTH),
            ("mlp.dense_4h_to_h", "proj", 4 * WIDTH, WIDTH),
        ],
    ),
]
BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}


class _Block(torch.nn.Module):
    """A block of a made-up architecture: names no rule of the inventory knows."""

    def __init__(self, width: int):
        super().__init__()
        self.mixer = torch.nn.ModuleDict(
            {"wqkv": torch.nn.Linear(width, 3 * width), "wo": torch.nn.Linear(width, width)}
        )
        self.attn_gate = torch.nn.Linear(width, width)  # "attn" in its path: attention
        self.ffwd = torch.nn.ModuleDict(
            {"w_in": torch.nn.Linear(width, 2 * width), "w_out": torch.nn.Linear(2 * width, width)}
        )


class MadeUpModel(torch.nn.Module):
    """Two blocks under `backbone.blocks.N` with unknown projection names."""

    def __init__(self, width: int = WIDTH):
        super().__init__()
        self.backbone = torch.nn.Module()
        self.backbone.blocks = torch.nn.ModuleList([_Block(width) for _ in range(2)])
        self.head = torch.nn.Linear(width, VOCAB)
