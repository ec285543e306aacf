"""A study: expand its YAML into run specs, run the pending ones, resume after a crash.

A study file (every shipped one starts with a comment giving the command that runs it):

    name: quickstart                  # letters, digits, `-`, `_`, `.`
    description: optional free text   # shown in the report
    model: smollm2-135m               # preset, hub id, model folder or .gguf
    data: {source: builtin, n_train: 96, n_val: 16, n_test: 32, data_seed: 0,
           max_length: 128, template: alpaca}
    budgets: [r8, r16]                # rN or a parameter count
    strategies:                       # a name, or a mapping
      - uniform
      - {name: linear_decay, params: {ratio: 4}, label: decay-4x, lr: [5e-4, 1e-3]}
      - {name: empirical, budgets: [r8], where: {task: arith, n_train: 2000}}  # some cells
    seeds: 0..7                       # inclusive range, or a list [0, 1, 2]
    train: {...}                      # the RunConfig sections, passed through
    eval: {...}
    adapter: {...}
    allocation: {min_rank: 1, max_rank: null, target: all}
    lr_candidates: [5e-4, 1e-3]       # optional; a strategy's own `lr` list overrides it
    baseline: uniform                 # a strategy label
    out: studies/quickstart           # default studies/<name>

**Paths.** Relative paths in a study (`data.source`, a model folder, `out`) are
read relative to the current working directory, as any path typed on a command
line is: run studies from the repository root. They stay as written in the run
configs, so run ids do not depend on where the repository lives.

**Runs.** One run per budget × seed × strategy × learning rate, in that order
(seed-major, so a half-finished study already holds complete pairs). Its id is
`RunConfig.run_id()` (see `records.ID_SCHEMA_1`); the strategy label is display only
and lives in the store. With several learning-rate candidates, the one with the
lowest mean *validation* loss across seeds is chosen per strategy × budget
(`select_lr`); the report shows *test* numbers of the chosen runs only.

**Executors.** The runner hands pending specs to an `Executor` and stores each
`RunResult` as it comes back. `LocalExecutor` runs them one after another in this
process, loading each model once; a distributed executor plugs in the same way.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptive_lora.config import RunConfig, load_yaml
from adaptive_lora.data.splits import load_splits
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import check_metric_data
from adaptive_lora.model.loading import resolve_source
from adaptive_lora.study.design import Group, build_groups, group_signature, parse_tasks
from adaptive_lora.study.expand import RunSpec, expand_runs, spec_hash
from adaptive_lora.study.hypotheses import Hypotheses, SeedPlan, parse_hypotheses, parse_seed_plan
from adaptive_lora.study.lr import LrChoice, choose_lr_extending
from adaptive_lora.study.protocol import CrossBudget, parse_cross_budget, parse_tuning_seeds
from adaptive_lora.study.schema import (
    WHERE_KEYS,
    StrategyEntry,
    base_sections,
    check_baseline,
    check_header,
    check_where,
    lr_extend_setting,
    lr_list,
    parse_budget_list,
    parse_resources,
    parse_seeds,
    strategy_entries,
)
from adaptive_lora.study.store import RunRow, StudyStore

__all__ = ["RunSpec", "StrategyEntry", "Study", "in_groups", "load_study", "parse_seeds"]


def in_groups(spec: RunSpec, keys: set[str] | None) -> bool:
    """Whether a run belongs to the groups `run --only` selected (None: every group)."""
    return keys is None or spec.group in keys


@dataclass
class Study:
    """A validated study: its settings and the runs it expands into."""

    path: Path
    name: str
    description: str
    model: str
    budgets: list[str]
    strategies: list[StrategyEntry]
    seeds: list[int]
    baseline: str
    lr_candidates: tuple[float, ...] | None
    out: Path
    runs: list[RunSpec]
    spec_hash: str
    text: str
    base_lr: float = 1e-3  # train.lr: the rate of a strategy with no candidates
    lr_tuning_seeds: list[int] = field(default_factory=list)
    cross_budget: CrossBudget | None = None
    # (label, budget) → its LrChoice, from the tuning runs stored so far (the first group's).
    lr_choices: dict[tuple[str, str], LrChoice] = field(default_factory=dict)
    models: list[str] = field(default_factory=list)  # several: paired within each model
    resources: dict[str, float] = field(default_factory=dict)  # RESOURCE_KEYS given
    # The factorial design: model × task × size groups, and each group's rate choices.
    groups: list[Group] = field(default_factory=list)
    lr_choices_by_group: dict[str, dict[tuple[str, str], LrChoice]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the parsed file: expansion re-reads it
    hypotheses: Hypotheses = field(default_factory=Hypotheses)  # declared before the runs
    seed_plan: SeedPlan | None = None  # sequential seeds; None: every seed runs
    lr_extend: int = 0  # steps a tuning grid may grow past an edge where the best rate sits

    @property
    def store_path(self) -> Path:
        return self.out / "study.db"

    @property
    def lock_path(self) -> Path:
        return self.out / ".lock"

    @property
    def runs_dir(self) -> Path:
        return self.out / "runs"

    @property
    def run_ids(self) -> list[str]:
        return [spec.run_id for spec in self.runs]

    @property
    def labels(self) -> list[str]:
        return [entry.label for entry in self.strategies]

    def entry(self, label: str) -> StrategyEntry:
        return next(e for e in self.strategies if e.label == label)

    def lrs_for(self, label: str) -> tuple[float, ...]:
        """The learning-rate candidates of a strategy (one when nothing is tuned)."""
        return tuple(sorted(self.entry(label).lr or self.lr_candidates or (self.base_lr,)))

    def budgets_for(self, label: str) -> list[str]:
        own = self.entry(label).budgets
        return [b for b in self.budgets if own is None or b in own]

    @property
    def tunes_lr(self) -> bool:
        return any(len(self.lrs_for(label)) > 1 for label in self.labels)

    @property
    def choice_seeds(self) -> list[int]:
        """The seeds a learning-rate choice looks at: the tuning seeds, else every seed."""
        return self.lr_tuning_seeds or self.seeds

    @property
    def multi_model(self) -> bool:
        return len(self.models) > 1

    @property
    def multi_group(self) -> bool:
        return len(self.groups) > 1

    def varies(self) -> tuple[bool, bool, bool]:
        """Which factors take more than one level: (model, task, data size)."""
        return tuple(
            len({getattr(g, name) for g in self.groups}) > 1
            for name in ("model", "task", "n_train")
        )  # type: ignore[return-value]

    def group_titles(self, *, plain: bool = False) -> dict[str, str]:
        """Group key → the group's name (only the factors that vary); `plain` drops the
        Markdown code marks, for a terminal."""
        varies = self.varies()
        titles = {g.key: g.title(varies) for g in self.groups}
        return {k: t.replace("`", "") for k, t in titles.items()} if plain else titles

    def group_of(self, config: dict[str, Any]) -> Group | None:
        """The group a stored run belongs to, by its model and data settings."""
        return self.group_with(group_signature(config))

    def group_with(self, signature: str) -> Group | None:
        """This study's group with a model × data signature (another study's group, say)."""
        return next((g for g in self.groups if g.signature == signature), None)

    def groups_named(self, only: Sequence[str]) -> set[str]:
        """The keys of the groups that `run --only FACTOR=LEVEL` selects: levels of one
        factor are alternatives, different factors must all hold (`task=alpaca` and
        `n_train=100`: Alpaca at 100 examples); one line naming the known levels otherwise."""
        wanted: dict[str, set[str]] = {}
        for pair in only:
            factor, sep, level = (part.strip() for part in pair.partition("="))
            if not sep or factor not in WHERE_KEYS or not level:
                raise UserError(
                    f"--only {pair!r}: write FACTOR=LEVEL with FACTOR one of "
                    f"{', '.join(WHERE_KEYS)} (e.g. --only task=alpaca --only n_train=100)"
                )
            known = list(dict.fromkeys(str(getattr(g, factor)) for g in self.groups))
            if level not in known:
                raise UserError(
                    f"--only {pair!r}: the study's {factor} levels are {', '.join(known)}"
                )
            wanted.setdefault(factor, set()).add(level)
        keys = {
            g.key
            for g in self.groups
            if all(str(getattr(g, f)) in levels for f, levels in wanted.items())
        }
        if not keys:
            raise UserError(f"--only {' '.join(only)}: no group of the study has all of these")
        return keys

    def restricted(self, keys: set[str]) -> Study:
        """The part of a study on the groups with these keys (`run --only`)."""
        kept = [g for g in self.groups if g.key in keys]
        if len(kept) == 1:
            return self.for_group(kept[0])
        return dataclasses.replace(
            self,
            groups=kept,
            runs=[spec for spec in self.runs if spec.group in keys],
            lr_choices_by_group={k: v for k, v in self.lr_choices_by_group.items() if k in keys},
        )

    def rows_of(self, group: Group, rows: Sequence[RunRow]) -> list[RunRow]:
        return [r for r in rows if group_signature(r.config) == group.signature]

    def for_group(self, group: Group) -> Study:
        """The part of a study on one model × task × size: the strategies that run there
        (`where`), its runs and its rate choices."""
        choices = self.lr_choices_by_group.get(group.key, {})
        return dataclasses.replace(
            self,
            strategies=[entry for entry in self.strategies if entry.runs_in(group)],
            model=group.model,
            models=[group.model],
            runs=[spec for spec in self.runs if spec.group == group.key],
            lr_choices=choices,
            groups=[group],
            lr_choices_by_group={group.key: choices},
        )

    def reported(self, spec: RunSpec) -> bool:
        """Whether a run may enter a reported comparison: not a tuning run, and at its
        strategy × budget's chosen rate."""
        choices = self.lr_choices_by_group.get(spec.group, self.lr_choices)
        choice = choices.get((spec.label, spec.budget))
        return not spec.tuning and choice is not None and choice.chosen == spec.lr

    def runs_to_come(self, *, most: bool = False, rows: Sequence[RunRow] = ()) -> int:
        """Reporting runs not expanded yet. Without `most`: those tuning has still to open
        (their strategy × budget is choosing its rate), with sequential seeds the first
        look's. `most`: every reporting run up to the last look not expanded yet, as if
        every look went on, in the groups that compare strategies — a study past tuning
        counts the looks not opened yet; a comparison the stored `rows` show decided gets
        no more (nor does a baseline with none open); a group of the baseline alone has
        one look."""
        if len(self.groups) > 1:
            return sum(self.for_group(g).runs_to_come(most=most, rows=rows) for g in self.groups)
        if most and self.seed_plan is not None and len(self.labels) > 1:
            from adaptive_lora.study.sequential_seeds import open_cells

            group = self.groups[0]
            going = open_cells(self, group, self.rows_of(group, rows))
            expanded = Counter((s.label, s.budget) for s in self.runs if not s.tuning)
            # Without tuning seeds every seed runs every candidate rate.
            rates = lambda label: 1 if self.lr_tuning_seeds else len(self.lrs_for(label))  # noqa: E731
            return sum(
                max(0, self.seed_plan.maximum * rates(label) - expanded[(label, budget)])
                for label in self.labels
                for budget in self.budgets_for(label)
                if (budget, label) in going
            )
        if not self.lr_tuning_seeds:
            return 0
        waiting = [c for c in self.lr_choices.values() if not c.complete]
        first = self.seed_plan.looks[0] if self.seed_plan is not None else len(self.seeds)
        return len(waiting) * first

    def sequential_design(self, label: str, family_size: int) -> Any:
        """The group-sequential design of one comparison (None with fixed seeds)."""
        if self.seed_plan is None:
            return None
        from adaptive_lora.analysis.sequential import SequentialDesign

        h = self.hypotheses.for_comparison(label)
        return SequentialDesign(
            looks=self.seed_plan.looks,
            alternative=h.alternative,
            spending=self.seed_plan.spending,
            margin=h.margin,
            smallest_effect=h.smallest_effect,
            family_size=family_size,
        )

    def with_rows(self, rows: Sequence[RunRow]) -> Study:
        """The same study file expanded again with `rows` (rates chosen since): no re-read.

        The runner calls this as tuning runs finish; the file on disk is only compared
        (`check_unchanged`), never used again mid-study.
        """
        return _build_study(self.path, self.raw, check_sources=False, rows=rows, text=self.text)

    def check_unchanged(self) -> None:
        """Refuse, in one line, a study file edited while its runs go on."""
        try:
            now = self.path.read_text()
        except OSError:
            now = None
        if now != self.text:
            raise UserError(
                f"{self.path} changed while its study runs; the runs so far used the file as it "
                "was. Put it back, or stop this `run` and start it again to use the new file"
            )

    def select_lr(self, rows: Sequence[RunRow]) -> dict[tuple[str, str], LrChoice]:
        """Per strategy label × budget, the rate chosen on validation loss (see `study.lr`)."""
        return {
            (label, budget): choose_lr_extending(
                label, budget, self.lrs_for(label), self.choice_seeds, rows, self.lr_extend
            )
            for label in self.labels
            for budget in self.budgets_for(label)
        }


def _check_sources(config: RunConfig) -> None:
    """Fail now, not an hour in, on a missing model or data path, a size the data cannot
    give, or data a metric cannot score."""

    resolve_source(config.model)
    source = config.data.source
    local = source == "builtin" or Path(source).exists() or source.endswith((".json", ".jsonl"))
    if local or source.startswith("reasoning_gym:"):
        splits = load_splits(config.data)
        check_metric_data(config.eval.metrics, splits.test[: config.eval.n_generate])


def _stored_rows(out: Path) -> list[RunRow]:
    """The runs already stored for a study (none before its first `run`)."""
    if not (out / "study.db").is_file():
        return []
    with StudyStore.open(out / "study.db", create=False) as store:
        return store.rows()


def load_study(path: str | Path, *, check_sources: bool = True) -> Study:
    """Read and validate a study file; expand it into run specs. Writes nothing.

    Every problem is a one-line `UserError` that names the file and the key.
    `check_sources=False` skips the model and data path checks (tests with a fake
    executor).
    """
    path = Path(path)
    raw = load_yaml(str(path))
    try:
        text = path.read_text()
        out = Path(str(raw.get("out") or f"studies/{raw.get('name')}")).expanduser()
        return _build_study(
            path, raw, check_sources=check_sources, rows=_stored_rows(out), text=text
        )
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _build_study(
    path: Path,
    raw: dict[str, Any],
    *,
    check_sources: bool,
    rows: Sequence[RunRow] = (),
    text: str = "",
) -> Study:
    """Validate every key of a study file and expand it into run specs, in order.

    A pure function of the parsed file and the stored rows: with `lr_tuning_seeds`, the
    reporting runs of a strategy × budget in a group exist only once its tuning runs
    there have chosen a rate.
    """
    name, description, models = check_header(raw)
    budgets = parse_budget_list(raw["budgets"])
    entries = strategy_entries(raw["strategies"], budgets)
    baseline = check_baseline(raw.get("baseline", "uniform"), entries)
    hypotheses = parse_hypotheses(raw.get("hypotheses"), [e.label for e in entries], baseline)
    lr_candidates = (
        lr_list(raw["lr_candidates"], "lr_candidates")
        if raw.get("lr_candidates") is not None
        else None
    )
    tuning = (
        parse_seeds(raw["lr_tuning_seeds"], "lr_tuning_seeds")
        if raw.get("lr_tuning_seeds") is not None
        else []
    )
    seed_plan = parse_seed_plan(raw["seeds"], tuning) if isinstance(raw["seeds"], dict) else None
    seeds = seed_plan.seeds if seed_plan else parse_seeds(raw["seeds"])
    tuning_seeds = []
    if raw.get("lr_tuning_seeds") is not None:
        tunes = (lr_candidates and len(lr_candidates) > 1) or any(
            e.lr and len(e.lr) > 1 for e in entries
        )
        tuning_seeds = parse_tuning_seeds(seeds, tuning, bool(tunes))
    baseline_entry = next(e for e in entries if e.label == baseline)
    cross_budget = parse_cross_budget(
        raw.get("cross_budget"), budgets, baseline_entry.budgets or tuple(budgets)
    )
    groups = build_groups(models, parse_tasks(raw), base_sections(raw, models[0]))
    check_where(entries, groups, baseline)
    _check_splits(groups, tuned=lr_candidates is not None or any(e.lr for e in entries))
    if check_sources:
        _check_group_sources(groups)
    out = raw.get("out", f"studies/{name}")
    if not isinstance(out, str) or not out:
        raise UserError(f"out must be a folder path, got {out!r}")
    base_config = RunConfig.from_dict(copy.deepcopy(groups[0].sections))
    study = Study(
        path=path,
        name=name,
        description=description.strip(),
        model=models[0],
        budgets=budgets,
        strategies=entries,
        seeds=seeds,
        baseline=baseline,
        lr_candidates=lr_candidates,
        out=Path(out).expanduser(),
        runs=[],
        spec_hash="",
        text=text,
        base_lr=base_config.train.lr,
        lr_tuning_seeds=tuning_seeds,
        cross_budget=cross_budget,
        resources=parse_resources(raw.get("resources")),
        models=models,
        groups=groups,
        raw=copy.deepcopy(raw),
        hypotheses=hypotheses,
        seed_plan=seed_plan,
        lr_extend=lr_extend_setting(raw.get("lr_extend"), tuning_seeds),
    )
    return _expanded(study, rows)


def _expanded(study: Study, rows: Sequence[RunRow]) -> Study:
    """The study with its rate choices (per group, from the stored tuning runs) and runs."""
    study.lr_choices_by_group = {
        g.key: study.for_group(g).select_lr(study.rows_of(g, rows)) for g in study.groups
    }
    study.lr_choices = study.lr_choices_by_group[study.groups[0].key]
    study.runs = expand_runs(study, rows)
    study.spec_hash = spec_hash(study.name, study.baseline, study.runs)
    return study


def _check_splits(groups: list[Group], *, tuned: bool) -> None:
    """Every section error, once per task and size, before any run."""
    for group in groups:
        config = RunConfig.from_dict(copy.deepcopy(group.sections))
        if tuned and config.data.n_val < 1:
            raise UserError(
                "data.n_val must be >= 1: learning-rate candidates are chosen on validation loss"
            )
        if config.data.n_test < 1:
            raise UserError("data.n_test must be >= 1: the study reports test loss")


def _check_group_sources(groups: list[Group]) -> None:
    """Each model once, and each task at its largest size (the smaller ones are inside it)."""
    for model in dict.fromkeys(g.model for g in groups):
        resolve_source(model)
    largest: dict[str, Group] = {}
    for group in groups:
        if group.task not in largest or group.n_train > largest[group.task].n_train:
            largest[group.task] = group
    for group in largest.values():
        _check_sources(RunConfig.from_dict(copy.deepcopy(group.sections)))
