"""What the `empirical` strategy's importance probe costs next to one training epoch.

Run from the repository root:

    .venv/bin/python bench/probe_cost.py [--data PATH] [--n-train 200]

On SmolLM2-135M, with the reference study's data settings (the first `--n-train`
training examples of the split drawn with data seed 0, max length 256), in one
process:

* probe: `importance.probe_importance` with the defaults the `empirical` strategy
  uses (16 calibration batches from the training split, taylor, bf16), cache off;
* epoch: one epoch of this project's training path over the same training split
  (uniform r8, batch 8, the reference study's learning rate).

It prints both wall times and their ratio; the last line reads
`probe=<seconds>s epoch=<seconds>s ratio=<percent>%`.
"""

from __future__ import annotations

import argparse
import sys

from train_throughput import uniform_r8  # bench/ is on sys.path when run as a script

from adaptive_lora.adapters.lora import AdapterSettings, apply_lora
from adaptive_lora.allocation.importance import probe_importance
from adaptive_lora.allocation.probe_settings import ProbeSettings
from adaptive_lora.compute.precision import resolve_precision
from adaptive_lora.config import TrainSettings
from adaptive_lora.data.calibration import make_calibration
from adaptive_lora.data.prompts import tokenize_examples
from adaptive_lora.data.sources import load_examples
from adaptive_lora.data.splits import make_splits
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.loading import load_model
from adaptive_lora.training.loop import train_adapter

MAX_LENGTH = 256
N_VAL, N_TEST = 50, 100  # as in configs/alpaca-smollm2.yaml, so the training split is the same
SEED = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/alpaca_en_demo.json")
    parser.add_argument("--n-train", type=int, default=200)
    args = parser.parse_args()

    loaded = load_model("smollm2-135m")
    model, tokenizer = loaded.model, loaded.tokenizer
    splits = make_splits(load_examples(args.data), args.n_train, N_VAL, N_TEST, SEED)
    calibration = make_calibration(
        splits.train, tokenizer, max_length=MAX_LENGTH, data_hash=splits.data_hash
    )
    train_split = tokenize_examples(splits.train, tokenizer, MAX_LENGTH)
    inventory = build_inventory(model)
    print(
        f"smollm2-135m, {len(train_split.features)} training examples, "
        f"{train_split.n_tokens} tokens (max length {MAX_LENGTH})"
    )

    probe_importance(model, inventory, calibration, ProbeSettings(n_batches=1, seed=99))  # warm-up
    probe = probe_importance(model, inventory, calibration, ProbeSettings(seed=SEED))
    print(
        f"probe: {probe.n_batches} batches of {probe.settings['batch_size']} "
        f"({probe.settings['precision']}, {probe.metric}) in {probe.seconds:.2f}s, "
        f"peak RSS {probe.peak_rss_mb:,.0f} MB"
    )

    adapted = apply_lora(model, uniform_r8(model), AdapterSettings(), SEED)
    settings = TrainSettings(lr=1e-3, batch_size=8, epochs=1.0)
    outcome = train_adapter(
        adapted,
        train_split,
        settings=settings,
        seed=SEED,
        pad_token_id=tokenizer.pad_token_id,
        precision=resolve_precision("auto"),
        quiet=True,
    )
    print(
        f"epoch: {outcome.steps} steps, {outcome.real_tokens} tokens in {outcome.seconds:.2f}s "
        f"({outcome.tokens_per_second:.0f} tok/s)"
    )
    ratio = probe.seconds / outcome.seconds
    print(f"probe={probe.seconds:.2f}s epoch={outcome.seconds:.2f}s ratio={100 * ratio:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
