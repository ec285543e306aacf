"""Answers per second of this project's evaluation against plain `model.generate`.

Run from the repository root, with nothing else on the cores:

    .venv/bin/python bench/generation_throughput.py [--items 200] [--study configs/regime-pilot.yaml]
        [--adapter studies/regime-pilot/runs/RUN_ID/adapter] [--alpaca FILE]

Both sides answer the same test items of the regime pilot's generated arithmetic task
(`reasoning_gym:basic_arithmetic`) greedily with SmolLM2-135M under bf16 autocast, with
the same batch size and `max_new_tokens`, in one process:

* project:   `adaptive_lora.evaluation.generate_answers` — prompts grouped by length
             (little padding), each sequence stopped at its end or at the answer's
             line end (a generated task is scored on its first line).
* reference: `model.generate` on the items in their own order, batched with left
             padding, stopping only at the end of sequence — what a new user writes.

It prints answers per second for each and their ratio, and, from the pilot study's store
when it has finished runs, the share of a run's wall time spent evaluating (loss before
and after, answers) and the fixed cost (everything but the training loop: load,
allocate, evaluate, record, ship). The last line reads
`speedup=<ratio>x eval_share=<percent>%`.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from adaptive_lora.compute.precision import autocast_context, resolve_precision
from adaptive_lora.config import DataSettings
from adaptive_lora.data.prompts import format_prompt
from adaptive_lora.data.splits import load_splits
from adaptive_lora.evaluation import generate_answers
from adaptive_lora.model.loading import load_model

SOURCE = "reasoning_gym:basic_arithmetic"
OPTIONS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def plain_generate(model, tokenizer, items, *, batch_size, max_new_tokens, precision) -> list[str]:
    """The reference: batches in the items' order, left padding, EOS the only stop."""
    answers = []
    tokenizer.padding_side = "left"
    for start in range(0, len(items), batch_size):
        prompts = [format_prompt(ex, "alpaca") for ex in items[start : start + batch_size]]
        encoded = tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad(), autocast_context(precision.device, precision.autocast_dtype):
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        new = output[:, encoded["input_ids"].shape[1] :]
        answers += [tokenizer.decode(ids, skip_special_tokens=True) for ids in new]
    return answers


def pilot_shares(study_path: str) -> tuple[float, float, int] | None:
    """(mean eval share, mean fixed-cost share, runs) over the pilot's finished runs."""
    from adaptive_lora.study.spec import load_study
    from adaptive_lora.study.store import DONE, StudyStore

    study = load_study(study_path, check_sources=False)
    if not study.store_path.is_file():
        return None
    with StudyStore.open(study.store_path, create=False) as store:
        rows = [r for r in store.rows() if r.status == DONE and r.seconds]
    if not rows:
        return None
    evals = [r.metrics["eval_seconds"] / r.seconds for r in rows]
    fixed = [1 - r.metrics["train_seconds"] / r.seconds for r in rows]
    return sum(evals) / len(evals), sum(fixed) / len(fixed), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--study", default="configs/regime-pilot.yaml")
    parser.add_argument(
        "--alpaca", metavar="FILE", help="answer this Alpaca file's items instead (long answers)"
    )
    parser.add_argument(
        "--adapter",
        metavar="DIR",
        help="a trained adapter (a run folder's adapter/, e.g. from the pilot): a model that "
        "has learnt to end its answers, where stopping each sequence at its end counts",
    )
    args = parser.parse_args()

    loaded = load_model("smollm2-135m")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
    precision = resolve_precision("auto")
    if args.alpaca:
        settings = DataSettings(source=args.alpaca, n_train=1, n_val=0, n_test=args.items)
    else:
        settings = DataSettings(
            source=SOURCE, options=OPTIONS, n_train=1, n_val=0, n_test=args.items
        )
    items = load_splits(settings).test
    common = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)

    plain_generate(
        model, tokenizer, items[: args.batch_size], precision=precision, **common
    )  # warm
    start = time.perf_counter()
    plain = plain_generate(model, tokenizer, items, precision=precision, **common)
    plain_s = time.perf_counter() - start
    start = time.perf_counter()
    ours = generate_answers(
        model, tokenizer, items, template="alpaca", device=precision.device,
        autocast_dtype=precision.autocast_dtype,
        metrics=("rouge_l",) if args.alpaca else ("task_score",),
        stop_at_line_end=not args.alpaca, **common,
    )  # fmt: skip
    ours_s = time.perf_counter() - start
    same = sum(
        a.strip().splitlines()[0].strip() == r["prediction"].splitlines()[0].strip()
        if a.strip() and r["prediction"] else a.strip() == r["prediction"]
        for a, r in zip(plain, ours.records)
    )  # fmt: skip
    print(
        f"CPU: {cpu_name()}, torch threads {torch.get_num_threads()}, {len(items)} items, "
        + (f"adapter {args.adapter}" if args.adapter else "the untrained model")
    )
    print(f"reference model.generate: {len(plain) / plain_s:.2f} answers/s ({plain_s:.1f} s)")
    print(f"project generate_answers: {len(items) / ours_s:.2f} answers/s ({ours_s:.1f} s)")
    print(f"first lines equal on {same} of {len(items)} items (greedy on both sides)")
    shares = pilot_shares(args.study)
    if shares is None:
        share_text = "n/a"
        print(
            f"no finished runs in {args.study}'s store: run the pilot, or copy the committed "
            "results/regime-pilot/study.db into studies/regime-pilot/, for the run shares"
        )
    else:
        evaluation, fixed, n = shares
        share_text = f"{100 * evaluation:.1f}"
        print(f"pilot ({n} runs): evaluation {100 * evaluation:.1f}% of a run's wall time, "
              f"fixed cost (all but training) {100 * fixed:.1f}%")  # fmt: skip
    print(f"speedup={plain_s / ours_s:.2f}x eval_share={share_text}%")


if __name__ == "__main__":
    main()
