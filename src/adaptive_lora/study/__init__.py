"""Studies: a YAML spec expanded into runs, a resumable SQLite store, a runner and its executors."""

from adaptive_lora.study.executor import Executor
from adaptive_lora.study.local import LocalExecutor
from adaptive_lora.study.lr import LrChoice, choose_lr
from adaptive_lora.study.runner import RunSummary, run_study
from adaptive_lora.study.spec import RunSpec, StrategyEntry, Study, load_study
from adaptive_lora.study.store import StudyStore

__all__ = [
    "Executor",
    "LocalExecutor",
    "LrChoice",
    "RunSpec",
    "choose_lr",
    "RunSummary",
    "StrategyEntry",
    "Study",
    "StudyStore",
    "load_study",
    "run_study",
]
