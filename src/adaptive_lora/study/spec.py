"""A study: its typed model with the runs it expands into (`Study`), and `load_study`.

A study file (every shipped one starts with a comment giving the command that runs it):

    name: quickstart                  # letters, digits, `-`, `_`, `.`
    description: optional free text   # shown in the report
    model: smollm2-135m               # preset, hub id, model folder or .gguf
    data: {source: builtin, n_train: 96, n_val: 16, n_test: 32, data_seed: 0,
           max_length: 128, template: alpaca}
    budgets: [r8, r16]                # rN, qv:rN (PEFT's default targets) or a count
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptive_lora.allocation.budget import check_budget, resolve_budget
from adaptive_lora.allocation.for_model import skeleton_inventory, skeleton_shapes
from adaptive_lora.allocation.uniform import check_uniform_spends
from adaptive_lora.config import Budget, RunConfig, load_yaml
from adaptive_lora.data.planted import is_planted, planted_settings, prompt_pool
from adaptive_lora.data.splits import load_splits
from adaptive_lora.errors import UserError
from adaptive_lora.evaluation_metrics import check_metric_data
from adaptive_lora.model.inventory import ModuleInfo
from adaptive_lora.model.loading import resolve_source
from adaptive_lora.study.design import Group
from adaptive_lora.study.expand import RunSpec, expand_runs, spec_hash
from adaptive_lora.study.lr import at_chosen_rate
from adaptive_lora.study.model import StrategyEntry, StudyDesign
from adaptive_lora.study.schema import parse_seeds, read_study
from adaptive_lora.study.sequential_seeds import open_cells
from adaptive_lora.study.store import DamagedStore, RunRow, StudyStore

__all__ = ["RunSpec", "StrategyEntry", "Study", "in_groups", "load_study", "parse_seeds"]


def in_groups(spec: RunSpec, keys: set[str] | None) -> bool:
    """Whether a run belongs to the groups `run --only` selected (None: every group)."""
    return keys is None or spec.group in keys


@dataclass(kw_only=True)
class Study(StudyDesign):
    """A validated study: its typed settings (`StudyDesign`), the file they were read
    from, and the runs they expand into with the rates chosen from the stored rows."""

    path: Path
    text: str  # the file as read: a file edited mid-study is refused (`check_unchanged`)
    runs: list[RunSpec]
    spec_hash: str  # names the study's runs and labels in its store and reports

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

    def for_group(self, group: Group) -> Study:
        """The part of a study on one model × task × size: the strategies that run there
        (`where`), its runs and its rate choices."""
        part = super().for_group(group)
        part.runs = [spec for spec in self.runs if spec.group == group.key]
        return part

    def reported(self, spec: RunSpec) -> bool:
        """Whether a run may enter a reported comparison: not a tuning run, and at its
        strategy × budget's chosen rate."""
        choices = self.lr_choices_by_group.get(spec.group, self.lr_choices)
        return at_chosen_rate(spec, choices, self.lr.tuning_seeds)

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

    def with_rows(self, rows: Sequence[RunRow]) -> Study:
        """This study expanded again with `rows` (rates chosen and looks judged since):
        the typed settings are kept, nothing is read or parsed again.

        The runner calls this as tuning runs finish; the file on disk is only compared
        (`check_unchanged`), never used again mid-study.
        """
        return build_study(self, rows, path=self.path, text=self.text)

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


def build_study(design: StudyDesign, rows: Sequence[RunRow], *, path: Path, text: str) -> Study:
    """The study with its rate choices (per group, from the stored tuning runs) and runs: a
    pure function of the typed settings and the stored rows. With `lr_tuning_seeds`, the
    reporting runs of a strategy × budget in a group exist only once its tuning runs there
    have chosen a rate."""
    chosen = dataclasses.replace(design, lr_choices_by_group=design.choices_from(rows))
    runs = expand_runs(chosen, rows)
    settings = {f.name: getattr(chosen, f.name) for f in dataclasses.fields(StudyDesign)}
    return Study(
        **settings, path=path, text=text, runs=runs,
        spec_hash=spec_hash(chosen.name, chosen.baseline, runs, chosen.baseline_by_budget),
    )  # fmt: skip


def _check_sources(config: RunConfig) -> None:
    """Fail now, not an hour in, on a missing model or data path, a size the data cannot
    give, or data a metric cannot score."""

    resolve_source(config.model)
    source = config.data.source
    local = source == "builtin" or Path(source).exists() or source.endswith((".json", ".jsonl"))
    if local or source.startswith("reasoning_gym:"):
        splits = load_splits(config.data, config.seed)
        check_metric_data(config.eval.metrics, splits.test[: config.eval.n_generate])
    elif is_planted(source):
        # Sampled from the model by the first run; its options and prompt pool fail now.
        prompt_pool(planted_settings(config.data.options).options)


def _stored_rows(out: Path) -> list[RunRow]:
    """The runs already stored for a study (none before its first `run`)."""
    if not (out / "study.db").is_file():
        return []
    with StudyStore.open(out / "study.db", create=False) as store:
        return store.rows()


def read_design(path: str | Path) -> tuple[StudyDesign, str]:
    """A study file's typed settings and its text, read without touching its store."""
    path = Path(path)
    raw = load_yaml(str(path))
    try:
        return read_study(raw), path.read_text()
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def load_study(path: str | Path, *, check_sources: bool = True) -> Study:
    """Read and validate a study file; expand it into run specs. Writes nothing.

    The file is read once into typed settings (`schema.read_study`). Every problem is a
    one-line `UserError` that names the file and the key. `check_sources=False` skips the
    model and data path checks (tests with a fake executor).
    """
    path = Path(path)
    design, text = read_design(path)
    try:
        rows = _stored_rows(design.out)  # a damaged store is refused first: nothing loads
        if check_sources:
            _check_group_sources(design.groups)
            _check_budgets(design)
            _check_budgets_on_models(design)
        return build_study(design, rows, path=path, text=text)
    except DamagedStore as error:  # it names its file already; its fix names this study
        raise error.for_study(path) from None
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def _check_budgets(design: StudyDesign) -> None:
    """Every budget a group runs at, checked against its model's shapes (its config on the
    meta device, no weights): one no adapter can spend fails now, not when its run starts."""
    inventories: dict[tuple[str, str], Any] = {}
    checked: set[tuple] = set()
    for group in design.groups:
        part = design.for_group(group)
        labels = {b for label in part.labels for b in part.budgets_for(label)}
        settings = RunConfig.from_dict(copy.deepcopy(group.sections)).allocation
        where = (group.model, settings.target)
        if where not in inventories:
            inventories[where] = skeleton_inventory(group.model, settings.target)
        if inventories[where] is None:  # shapes not known without the network: the run checks
            continue
        for index, budget in enumerate(design.budget_values):
            key = (*where, settings.max_rank, budget.label)
            # `qv:rN` needs the model's type: `_check_budgets_on_models` resolves it.
            if budget.label not in labels or key in checked or budget.placement is not None:
                continue
            checked.add(key)
            try:
                # min_rank 0: only what no strategy can spend (placements ignore min_rank;
                # uniform below r1 is `_check_budgets_on_models`' refusal).
                check_budget(budget, inventories[where], 0, settings.max_rank)
            except UserError as error:
                on = f" on {group.model}" if design.multi_model else ""
                raise UserError(f"budgets[{index}] ({budget.label}){on}: {error}") from None


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


def _check_budgets_on_models(design: StudyDesign) -> None:
    """Refuse, before any run, budgets that would fail run after run on a group's model:
    a `qv:rN` on a model PEFT has no default targets for, and `uniform` (the baseline,
    usually) at a budget below rank 1 on every target module.

    An `rN` budget is never either; the others are decided on the model's shapes (its
    meta-device skeleton: no weights are loaded). A model whose config cannot be read
    here (a hub id offline) is left to its runs.
    """
    budgets = [b for b in design.budget_values if b.uniform_rank is None]
    shapes: dict[tuple[str, str], tuple[list[ModuleInfo], str | None] | None] = {}
    for group in design.groups if budgets else []:
        settings = RunConfig.from_dict(copy.deepcopy(group.sections)).allocation
        key = (group.model, settings.target)
        if key not in shapes:
            shapes[key] = skeleton_shapes(*key)
        if shapes[key] is not None:
            inventory, model_type = shapes[key]
            resolved = {b.label: resolve_budget(b, inventory, model_type) for b in budgets}
            _check_uniform_spends_in(design, group, inventory, resolved, settings.min_rank)


def _check_uniform_spends_in(
    design: StudyDesign,
    group: Group,
    inventory: list[ModuleInfo],
    resolved: dict[str, Budget],
    min_rank: int,
) -> None:
    """Every `uniform` entry of a group at each of its budgets resolved here (not `rN`)."""
    for entry in design.strategies:
        if entry.name != "uniform" or not entry.runs_in(group):
            continue
        for label in [b for b in design.budgets_for(entry.label) if b in resolved]:
            try:
                check_uniform_spends(label, resolved[label].params, inventory, min_rank)
            except UserError as error:
                role = " (the baseline)" if entry.label == design.baseline else ""
                raise UserError(f"{entry.label}{role} on {group.model}: {error}") from None
