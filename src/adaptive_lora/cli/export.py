"""`adaptive-lora export`: the allocation a finished study ran, as a PEFT or axolotl config.

The ranks are read from the study's store (`allocation_modules` of the chosen run), not
recomputed; the file's provenance names the study, the run, the hash of the run's
manifest and the hash of its data. `study/export.py` picks the run and writes the files;
`allocate --export` writes through the same `write_export`, so both commands write the
same files.
"""

from __future__ import annotations

import argparse

from adaptive_lora.adapters.export import FORMATS
from adaptive_lora.study.export import Wanted, check_export, export_run, open_study, pick_run


def cmd_export(args: argparse.Namespace) -> int:
    check_export(args.format, args.out, args.strategy)
    study = open_study(args.study)
    wanted = Wanted(args.strategy, args.budget, model=args.model, seed=args.seed)
    row, shared = pick_run(study, wanted)
    lines = export_run(study, row, shared, args.format, args.out)
    print(f"run {row.id} ({row.label} {row.budget} seed {row.seed}) of study {study.name}")
    print("\n".join(lines))
    return 0


def register(subparsers) -> None:
    export = subparsers.add_parser(
        "export",
        help="write the allocation a finished study ran as a PEFT or axolotl config",
        description="Reads the ranks from the study's store (not recomputed) and writes "
        "FILE and FILE.provenance.json (study, run, manifest and data hashes).",
    )
    export.add_argument("study", metavar="STUDY.yaml")
    export.add_argument("--strategy", required=True, help="the strategy's label or name")
    export.add_argument("--budget", required=True, help="the budget as the study names it")
    export.add_argument("--model", help="the model, when the study ran several")
    export.add_argument("--seed", type=int, help="the run seed (needed when seeds differ)")
    export.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    export.add_argument("--out", required=True, metavar="FILE")
    export.set_defaults(func=cmd_export)
