"""One run, end to end: load → allocate → adapt → train → evaluate → record.

The recipe: `execute_run` is the one place that strings the stages together;
`RunSteps` holds the run's state and gives each step a short method that reads top
to bottom. The training loop it calls lives below it, in `training/`.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adaptive_lora import progress
from adaptive_lora.adapters.lora import AdapterSettings, trainable_parameters
from adaptive_lora.allocation.budget import check_budget
from adaptive_lora.allocation.for_model import run_allocation, skeleton_inventory
from adaptive_lora.allocation.heatmap import rank_heatmap
from adaptive_lora.allocation.oracle import planted_metrics
from adaptive_lora.compute.fast_step import fast_training
from adaptive_lora.compute.precision import Precision, resolve_precision
from adaptive_lora.config import RunConfig
from adaptive_lora.data.calibration import make_calibration
from adaptive_lora.data.planted import is_planted
from adaptive_lora.data.prompts import (
    tokenize_examples,
)
from adaptive_lora.data.reasoning_gym import is_reasoning_gym
from adaptive_lora.data.splits import load_splits
from adaptive_lora.environment import environment_manifest, now_iso, peak_memory_mb
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation import (
    Stopwatch,
    generate_answers,
    item_losses,
    mean_loss,
    perplexity,
)
from adaptive_lora.evaluation_metrics import (
    check_metric_data,
    check_metric_names,
    default_metrics,
    metrics_for_run,
)
from adaptive_lora.loss_cache import cached_loss, loss_key
from adaptive_lora.methods import BuiltAdapter, build_adapter
from adaptive_lora.model.loading import load_model
from adaptive_lora.records import (
    ALLOCATION_KEY,
    ITEMS_KEY,
    PLANTED_KEY,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_STOPPED,
    RunResult,
    write_json,
)
from adaptive_lora.training.loggers import MetricLoggers
from adaptive_lora.training.loop import NonFiniteLoss, TrainOutcome, total_steps, train_adapter


def execute_run(
    config: RunConfig,
    out_root: Path | str,
    *,
    run_id: str | None = None,
    loaded: Any = None,
    quiet: bool = False,
) -> RunResult:
    """Train and evaluate one configured run and leave a self-describing run folder.

    A bad configuration or input raises `UserError` before the folder is written.
    A run that fails while training (non-finite loss, an exception) returns a
    result with status `failed` and a one-line reason; its folder says so too.
    `loaded` (a `models.LoadedModel`) lets a study load the model once; the
    adapter is removed from it again before returning.
    """

    config.validate()
    # Names the metric registry checks (one floor above the config, which cannot see it).
    check_metric_names(config.eval.metrics)
    run_id = run_id or config.run_id()
    run_dir = Path(out_root) / run_id
    steps = RunSteps(config, run_dir, run_id, quiet=quiet)
    steps.prepare(loaded)  # loads model and data, allocates: UserErrors surface here
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a previous, interrupted attempt of the same run
    run_dir.mkdir(parents=True)
    manifest = steps.start_manifest()
    try:
        metrics = steps.train_and_evaluate()
        manifest.update(status=STATUS_DONE, ended=now_iso())
        result = RunResult(run_id, run_dir, STATUS_DONE, metrics, manifest)
    except NonFiniteLoss as error:
        manifest.update(
            status=STATUS_FAILED, error=str(error), failed_step=error.step, ended=now_iso()
        )
        result = RunResult(
            run_id, run_dir, STATUS_FAILED, steps.partial_metrics(), manifest, str(error)
        )
    except UserError:
        raise
    except KeyboardInterrupt as stop:  # Ctrl-C, or a signal (`train`, `run`): say so, go on up
        manifest.update(status=STATUS_STOPPED, error=str(stop) or "interrupted", ended=now_iso())
        write_json(run_dir / "manifest.json", manifest)
        raise
    except Exception as error:  # noqa: BLE001 - a failed run is recorded, the study goes on
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        (run_dir / "traceback.txt").write_text(traceback.format_exc())
        manifest.update(status=STATUS_FAILED, error=reason, ended=now_iso())
        result = RunResult(
            run_id, run_dir, STATUS_FAILED, steps.partial_metrics(), manifest, reason
        )
    finally:
        steps.release()
    manifest["peak_memory_mb"] = peak_memory_mb(steps.precision.device)
    write_json(run_dir / "manifest.json", manifest)
    return result


def base_manifest(config: RunConfig, run_id: str, precision: Precision) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": "running",
        "started": now_iso(),
        "seed": config.seed,
        "data_seed": config.data.data_seed,
        "precision": precision.name,
        **environment_manifest(precision.device),
    }


def allocation_modules(allocation: Any) -> list[dict[str, Any]]:
    """Each module's layer, kind and rank, as the run's metrics carry them into the store."""
    return [{k: row[k] for k in ("name", "layer", "kind", "rank")} for row in allocation.rows()]


def test_item_records(items: Any, generations: list[dict], test: list[dict]) -> dict[str, Any]:
    """Each test item's loss and metric verdicts, column-wise (compact in the store).

    Items follow the test split's order; `tokens` is the item's response-token count, so
    the token-weighted mean of `loss` is the run's test loss. A metric's column, and
    `hit_token_limit` (the answer stopped at `eval.max_new_tokens`), cover the first
    `eval.n_generate` items (the ones answered); `key` names each item by
    the hash of its instruction and input, so a reader can match items across runs.
    """
    columns: dict[str, Any] = {
        "key": [_item_key(example) for example in test[: len(items.tokens)]],
        "loss": items.item_means(),
        "tokens": items.tokens,
    }
    for name in generations[0] if generations else ():
        if name not in ("instruction", "input", "reference", "prediction"):
            columns[name] = [record[name] for record in generations]
    return columns


def _item_key(example: dict[str, Any]) -> str:
    text = example["instruction"] + "\x00" + example.get("input", "")
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# (what `loss_cache.loss_key` holds, model object) → the untrained adapter's loss.
_LOSS_BEFORE: dict[tuple, float] = {}


class RunSteps:
    def __init__(self, config: RunConfig, run_dir: Path, run_id: str, *, quiet: bool = False):

        self.config = config
        self.run_dir = run_dir
        self.run_id = run_id
        self.quiet = quiet
        self.precision = resolve_precision(config.train.precision)
        self.peft_model: Any = None
        self.partial: dict[str, Any] = {}  # what is measured so far (a failed run keeps it)

    # -- prepare: everything that can fail because of the user's input -------------------
    def prepare(self, loaded: Any) -> None:

        cfg = self.config
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        # The user's inputs first, the model last: a bad data file or a budget no adapter
        # can spend is refused in a second, not after the model has loaded. A planted
        # task is the exception: it is sampled from the model, so it comes after.
        planted_data = is_planted(cfg.data.source)
        if not planted_data:
            self._load_data(None)
        if loaded is None:
            self._check_budget()
        progress.report("loading")
        self.loaded = loaded or load_model(cfg.model)
        self.tokenizer = self.loaded.tokenizer
        # On the run's device before the data: a planted task is sampled from this model.
        self.loaded.model.to(self.precision.device)
        if planted_data:
            self._load_data(self.loaded)
        tokenize = lambda split: tokenize_examples(  # noqa: E731
            split, self.tokenizer, cfg.data.max_length, cfg.data.template
        )
        self.train_split = tokenize(self.splits.train)
        self.val_split = tokenize(self.splits.val) if self.splits.val else None
        self.test_split = tokenize(self.splits.test) if self.splits.test else None
        progress.report("allocating")
        with Stopwatch() as watch:
            self.allocation = run_allocation(cfg, self.loaded, self.splits)
        self.allocation_seconds = watch.seconds

    def _check_budget(self) -> None:
        """The budget against the model's shapes (no weights; a hub id only if cached)."""
        settings = self.config.allocation
        if settings.parsed_budget.placement is not None:
            return  # `qv:rN` needs the model's type: resolved, and checked, once it loads
        inventory = skeleton_inventory(self.config.model, settings.target)
        if inventory is None:
            return
        try:
            # min_rank 0: refuse only what no strategy can spend (a placement or the oracle
            # leaves modules at rank 0 whatever min_rank; the strategy itself refuses the rest).
            check_budget(settings.parsed_budget, inventory, 0, settings.max_rank)
        except UserError as error:
            raise UserError(f"allocation.budget {settings.budget}: {error}") from None

    def _load_data(self, loaded: Any) -> None:
        cfg = self.config
        self.splits = load_splits(cfg.data, cfg.seed, model=loaded)
        check_metric_data(cfg.eval.metrics, self.splits.test[: cfg.eval.n_generate])

    def start_manifest(self) -> dict[str, Any]:

        (self.run_dir / "config.yaml").write_text(self.config.to_yaml())
        self._write_allocation()
        manifest = base_manifest(self.config, self.run_id, self.precision)
        manifest.update(
            model_fingerprint=self.loaded.fingerprint,
            data_hash=self.splits.data_hash,
            data_source_hash=self.splits.source_hash,
            data_source=self.config.data.source,
            data_split=self.config.data.split,
            test_hash=self.splits.test_hash,
            truncated={
                "train": self.train_split.n_truncated,
                "val": self.val_split.n_truncated if self.val_split else 0,
                "test": self.test_split.n_truncated if self.test_split else 0,
            },
            dropped_too_long=self.train_split.n_dropped,
        )
        write_json(self.run_dir / "manifest.json", manifest)
        return manifest

    def _write_allocation(self) -> None:
        allocation = self.allocation.to_dict()
        scores = allocation["report"].pop("importance_scores", None)
        if scores is not None:
            write_json(self.run_dir / "importance.json", scores)
        allocation["allocation_seconds"] = self.allocation_seconds
        write_json(self.run_dir / "allocation.json", allocation)
        rank_heatmap(
            self.allocation.inventory,
            self.allocation.ranks,
            self.run_dir / "allocation.png",
            title=f"{self.allocation.strategy} @ {self.allocation.budget.label}",
        )

    # -- train and evaluate ----------------------------------------------------------------
    def _loss_settings(self) -> dict[str, Any]:
        """How every held-out loss of the run is computed (batching, device, precision)."""
        return dict(
            pad_token_id=self.tokenizer.pad_token_id,
            batch_size=self.config.eval.batch_size,
            device=self.precision.device,
            autocast_dtype=self.precision.autocast_dtype,
        )

    def _loss(self, split) -> float:
        if split is None:
            return math.nan
        return mean_loss(self.peft_model, split, **self._loss_settings())

    def _loss_before(self, name: str, split) -> float:
        """The untrained adapter's loss on a split: the base model's, since B = 0.

        Every run on the same model, data and evaluation settings gets the same number
        (adding B·A·x = 0 changes no bit), so it is measured once per process and kept
        on disk for the next (`loss_cache`): two of a run's four loss passes.
        """
        cfg = self.config
        settings = dict(
            max_length=cfg.data.max_length, template=cfg.data.template,
            batch_size=cfg.eval.batch_size, pad_token_id=self.tokenizer.pad_token_id,
        )  # fmt: skip
        key = loss_key(
            fingerprint=self.loaded.fingerprint, data_hash=self.splits.data_hash, split=name,
            settings=settings, precision=self.precision.name, device=self.precision.device,
        )  # fmt: skip
        in_process = (json.dumps(key, sort_keys=True, default=str), id(self.loaded.model))
        if in_process not in _LOSS_BEFORE:
            _LOSS_BEFORE[in_process] = cached_loss(key, lambda: self._loss(split))
        return _LOSS_BEFORE[in_process]

    def train_and_evaluate(self) -> dict[str, Any]:
        """Adapt, measure before, train, measure after, save: the run's metrics.

        Each stage returns its own typed result (`BuiltAdapter`, `ParameterCounts`,
        `Losses`, `TrainOutcome`, `Evaluated`); `run_metrics` is the one place that turns
        them into `metrics.json`. `self.partial` keeps what is known so far, for a run
        that fails part way.
        """
        cfg = self.config
        torch.manual_seed(cfg.seed)  # dropout, if any; data order and init have their own seeds
        built = self._build()
        counts = ParameterCounts.of(self.peft_model, self.allocation)
        # Every loss of a run goes through the same arithmetic as the validation loss the
        # training loop records (the fast path, under bf16): selection and reported numbers
        # alike. It also cuts the evaluation's share of a run (measured on a Xeon with AMX:
        # test loss over 100 Alpaca examples 10.9 s -> 7.4 s).
        fast = lambda: fast_training(self.peft_model, self.precision.autocast_dtype)  # noqa: E731
        progress.report("losses before training")
        with Stopwatch() as watch, fast():
            before = Losses(
                self._loss_before("val", self.val_split), self._loss_before("test", self.test_split)
            )
        self.partial = {**counts.metrics(), **built.records, **before.metrics("_before")}
        outcome = self._train(built.hooks)
        finished = built.finish()
        with Stopwatch() as after:
            with fast():
                val_loss = outcome.val_loss_curve[-1][1] if outcome.val_loss_curve else math.nan
                progress.report("test loss")
                items = self._item_losses(self.test_split)
            # Answers are decoded on PEFT's own path: under the fast path's bf16 norm
            # outputs the one-token decode steps took twice as long (measured on an AMD
            # EPYC, 200 short answers, 1 thread: 31.7 s against 17.2 s).
            progress.report("answers")
            generation = self._generate()
        # Timed once both stopwatches have stopped (a Stopwatch reads 0 until its block ends).
        evaluated = Evaluated(
            Losses(val_loss, items.mean if items is not None else math.nan),
            items,
            generation,
            watch.seconds + after.seconds,
        )
        m = run_metrics(self, counts, built, before, outcome, finished, evaluated)
        with open(self.run_dir / "generations.jsonl", "w") as handle:
            for record in evaluated.generation.records:
                handle.write(json.dumps(record) + "\n")
        progress.report("saving")
        self.peft_model.save_pretrained(str(self.run_dir / "adapter"))
        m["peak_memory_mb"] = peak_memory_mb(self.precision.device)
        write_json(self.run_dir / "metrics.json", m)
        return m

    def _build(self) -> BuiltAdapter:
        """The allocation's adapters, by the method its strategy calls for."""
        cfg = self.config
        built = build_adapter(
            self.loaded.model,
            self.allocation,
            AdapterSettings(cfg.adapter.alpha_ratio, cfg.adapter.rslora, cfg.adapter.dropout),
            cfg.seed,
            total_steps=total_steps(len(self.train_split.features), cfg.train),
            calibration=self._calibration,
        )
        self.peft_model = built.peft_model
        return built

    def _calibration(self) -> Any:
        """Calibration batches from the training split only (EVA's initialisation)."""
        return make_calibration(
            self.splits.train,
            self.tokenizer,
            max_length=self.config.data.max_length,
            template=self.config.data.template,
            data_hash=self.splits.data_hash,
        )

    def _train(self, hooks: dict[str, Any]) -> TrainOutcome:
        """The training loop, with its curves (validation from step 0: the base model)."""
        cfg = self.config
        loggers = MetricLoggers(cfg.train.report_to, self.run_dir, self.run_id)
        try:
            outcome = train_adapter(
                self.peft_model,
                self.train_split,
                settings=cfg.train,
                seed=cfg.seed,
                pad_token_id=self.tokenizer.pad_token_id,
                precision=self.precision,
                val_split=self.val_split,
                eval_batch_size=cfg.eval.batch_size,
                quiet=self.quiet,
                loggers=loggers,
                **hooks,
            )
        finally:
            loggers.close()
        return outcome

    def _item_losses(self, split) -> Any:
        if split is None:
            return None
        return item_losses(self.peft_model, split, **self._loss_settings())

    def _data_kind(self) -> tuple[bool, bool]:
        """(built-in data, a generated reasoning-gym task): what the default metrics follow."""
        source = self.config.data.source
        return source == "builtin", is_reasoning_gym(source)

    def _generate(self) -> Any:
        cfg = self.config
        return generate_answers(
            self.peft_model,
            self.tokenizer,
            self.splits.test[: cfg.eval.n_generate],
            template=cfg.data.template,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            device=self.precision.device,
            autocast_dtype=self.precision.autocast_dtype,
            metrics=metrics_for_run(cfg.eval.metrics, *self._data_kind()),
            # A generated task's answer is its first line (`reasoning_gym.extract_answer`).
            stop_at_line_end=self._data_kind()[1],
            answer_pattern=cfg.eval.answer_pattern,
        )

    def partial_metrics(self) -> dict[str, Any]:
        """What was measured before a failure (written so the failure can be inspected)."""
        if self.partial:
            write_json(self.run_dir / "metrics.json", self.partial)
        return self.partial

    def release(self) -> None:
        """Take the adapter out of the shared model so the next run starts from the base."""
        if self.peft_model is not None:
            self.peft_model.unload()
            self.peft_model = None


@dataclass
class ParameterCounts:
    """Trainable parameters as PEFT built them, against the budget and the allocation."""

    trainable: int
    budget: int
    allocation: int

    @classmethod
    def of(cls, peft_model: Any, allocation: Any) -> ParameterCounts:
        return cls(
            trainable_parameters(peft_model), allocation.budget.params, allocation.total_params
        )

    def metrics(self) -> dict[str, Any]:
        return {
            "trainable_params": self.trainable,
            "effective_params": self.trainable,  # AdaLoRA's `finish` replaces it after training
            "budget_params": self.budget,
            "allocation_params": self.allocation,
            "deviation_pct": 100.0 * (self.trainable - self.budget) / self.budget,
        }


@dataclass
class Losses:
    """Validation and test loss at one point of the run."""

    val: float
    test: float

    def metrics(self, suffix: str = "") -> dict[str, float]:
        return {f"val_loss{suffix}": self.val, f"test_loss{suffix}": self.test}


@dataclass
class Evaluated:
    """What the trained adapter is measured by: losses, per-item records, answers."""

    losses: Losses
    items: Any  # evaluation.ItemLosses of the test split, or None without one
    generation: Any  # evaluation.GenerationResult
    seconds: float  # before and after training together


def run_metrics(
    steps: RunSteps,
    counts: ParameterCounts,
    built: BuiltAdapter,
    before: Losses,
    outcome: TrainOutcome,
    finished: dict[str, Any],
    evaluated: Evaluated,
) -> dict[str, Any]:
    """The run's `metrics.json`, from every stage's result (the one place it is assembled)."""
    cfg, generation, after = steps.config, evaluated.generation, evaluated.losses
    val_curve = [list(point) for point in outcome.val_loss_curve]
    if steps.val_split is not None:
        val_curve.insert(0, [0, before.val])  # the untrained adapter: the base model
    m: dict[str, Any] = {**counts.metrics(), **built.records, **before.metrics("_before")}
    m.update(
        steps=outcome.steps,
        train_seconds=outcome.seconds,
        tokens_per_second=outcome.tokens_per_second,
        final_train_loss=outcome.final_train_loss,
        train_loss_curve=outcome.train_loss_curve,
        val_loss_curve=val_curve,
        **finished,
        **after.metrics(),
    )
    for name in ("val", "test"):
        m[f"{name}_ppl_before"] = perplexity(m[f"{name}_loss_before"])
        m[f"{name}_ppl"] = perplexity(m[f"{name}_loss"])
    m.update(
        generation.means,
        # How many answers the token limit cut off (without an answer line: scored wrong).
        **generation.cut_off,
        # Every run has these two keys (None where not scored), as it always had.
        rouge_l=generation.rouge_l,
        exact_match=generation.exact_match,
        eval_metrics=list(cfg.eval.metrics or default_metrics(*steps._data_kind())),
        eval_seconds=evaluated.seconds,
        allocation_seconds=steps.allocation_seconds,
        strategy_report=steps.allocation.report,
        **{ALLOCATION_KEY: allocation_modules(steps.allocation)},
    )
    if evaluated.items is not None:
        m[ITEMS_KEY] = test_item_records(evaluated.items, generation.records, steps.splits.test)
    if "planted" in steps.splits.info:
        m[PLANTED_KEY] = planted_metrics(
            steps.splits.info["planted"], steps.allocation, finished.get("final_ranks")
        )
    return m
