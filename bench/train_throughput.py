"""Training throughput of this project's path against a plain HF Trainer reference.

Run from the repository root:

    .venv/bin/python bench/train_throughput.py [--data PATH] [--examples 64] [--max-length 512]

Both sides train SmolLM2-135M with the same uniform r8 LoRA adapter (same seeded
initialisation) for one epoch over the same examples, in one process:

* project:   `adaptive_lora.training.loop.train_adapter` in the precision `auto` resolves
             to here (bf16 autocast where the CPU has bf16 instructions, else fp32),
             LoRA weights and AdamW state in fp32, length-grouped batches with dynamic
             padding, loss projected on response positions only.
* reference: `transformers.Trainer` + PEFT, fp32, every batch padded to max length,
             no grouping.

It prints the resolved precision, real (non-padding) tokens per second for each, their
ratio, and the model FLOPs utilisation 4 · N_params · real tokens/s over the CPU's
matrix-multiply peak measured here in the project's precision (the best of a few large
square products: bf16 where it resolved to bf16, else fp32). The last line reads
`speedup=<ratio>x mfu=<percent>% precision=<resolved>`.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch

from adaptive_lora.adapters.lora import AdapterSettings, apply_lora
from adaptive_lora.allocation.budget import resolve_budget
from adaptive_lora.allocation.core import AllocationContext, allocate
from adaptive_lora.compute.precision import resolve_precision
from adaptive_lora.config import TrainSettings
from adaptive_lora.data.prompts import IGNORE_INDEX, tokenize_examples
from adaptive_lora.data.sources import load_examples
from adaptive_lora.model.inventory import build_inventory
from adaptive_lora.model.loading import load_model
from adaptive_lora.training.loop import train_adapter

LR = 2e-4
BATCH = 8
SEED = 0


def matmul_peak(dtype: torch.dtype, seconds: float = 1.5) -> float:
    """Best GEMM rate (FLOP/s) in `dtype` over a few square sizes, each run for ~`seconds`."""
    best = 0.0
    for n in (1024, 2048, 3072):
        a = torch.randn(n, n, dtype=dtype)
        b = torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        best = max(best, 2 * n**3 * count / (time.perf_counter() - start))
    return best


def uniform_r8(model):
    inventory = build_inventory(model)
    ctx = AllocationContext(inventory, resolve_budget("r8", inventory))
    return allocate("uniform", ctx)


def run_project(base, split, pad_id) -> dict:
    model = apply_lora(copy.deepcopy(base), uniform_r8(base), AdapterSettings(), SEED)
    settings = TrainSettings(
        lr=LR, batch_size=BATCH, epochs=1.0, warmup_ratio=0.0, max_grad_norm=0.0
    )
    outcome = train_adapter(
        model,
        split,
        settings=settings,
        seed=SEED,
        pad_token_id=pad_id,
        precision=resolve_precision("auto"),
        quiet=True,
    )
    losses = [loss for _, loss in outcome.train_loss_curve]
    return {"tokens": outcome.real_tokens, "seconds": outcome.seconds, "losses": losses}


class _PaddedDataset(torch.utils.data.Dataset):
    """Every example padded to max length, as a plain fine-tuning script does."""

    def __init__(self, split, pad_id: int, max_length: int):
        self.rows = []
        for feature in split.features:
            n = len(feature["input_ids"])
            pad = max_length - n
            self.rows.append(
                {
                    "input_ids": torch.tensor(feature["input_ids"] + [pad_id] * pad),
                    "attention_mask": torch.tensor([1] * n + [0] * pad),
                    "labels": torch.tensor(feature["labels"] + [IGNORE_INDEX] * pad),
                }
            )

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def run_reference(base, split, pad_id, max_length, workdir: Path) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = apply_lora(copy.deepcopy(base), uniform_r8(base), AdapterSettings(), SEED)
    losses: list[float] = []

    class KeepLosses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = TrainingArguments(
        output_dir=str(workdir),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR,
        lr_scheduler_type="linear",
        warmup_steps=0,
        max_grad_norm=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=SEED,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    dataset = _PaddedDataset(split, pad_id, max_length)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, callbacks=[KeepLosses()])
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    tokens = sum(int(row["attention_mask"].sum()) for row in dataset.rows)
    return {"tokens": tokens, "seconds": seconds, "losses": losses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/alpaca_en_demo.json")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--skip-reference", action="store_true", help="time only this project")
    args = parser.parse_args()

    loaded = load_model("smollm2-135m")
    base, tokenizer = loaded.model, loaded.tokenizer
    n_params = sum(p.numel() for p in base.parameters())
    examples = load_examples(args.data)[: args.examples]
    split = tokenize_examples(examples, tokenizer, args.max_length)
    print(
        f"model smollm2-135m ({n_params / 1e6:.1f}M params), {len(split.features)} examples, "
        f"{split.n_tokens} real tokens, {split.n_truncated} truncated at {args.max_length}, "
        f"torch threads {torch.get_num_threads()}"
    )

    precision = resolve_precision("auto")
    dtype = precision.autocast_dtype or torch.float32
    peak = matmul_peak(dtype)
    print(
        f"precision auto resolves to {precision.name} here; {str(dtype).split('.')[-1]} "
        f"matmul peak measured: {peak / 1e12:.3f} TFLOP/s"
    )

    results = {"project": run_project(base, split, tokenizer.pad_token_id)}
    if not args.skip_reference:
        import tempfile

        with tempfile.TemporaryDirectory() as workdir:
            results["reference"] = run_reference(
                base, split, tokenizer.pad_token_id, args.max_length, Path(workdir)
            )
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        r["rate"] = rate
        r["mfu"] = 4 * n_params * rate / peak
        mean_loss = sum(r["losses"]) / len(r["losses"])
        tail = r["losses"][-3:]
        print(
            f"{name:>9}: {r['tokens']} real tokens in {r['seconds']:.1f}s = {rate:.0f} tok/s, "
            f"MFU {100 * r['mfu']:.1f}%, epoch-mean train loss {mean_loss:.4f}, "
            f"last steps {', '.join(f'{x:.4f}' for x in tail)}"
        )
    project = results["project"]
    speedup = project["rate"] / results["reference"]["rate"] if "reference" in results else math.nan
    print(f"speedup={speedup:.2f}x mfu={100 * project['mfu']:.1f}% precision={precision.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
