"""Reading instruction data: Alpaca JSON/JSONL files, hub data sets, the built-in set.

Every problem in user data is raised as a one-line `UserError` that names the file and
the record; nothing in here lets a traceback escape for bad data.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from adaptive_lora.data.builtin import builtin_examples
from adaptive_lora.errors import UserError

Example = dict[str, str]


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


_FIX_HINT = "pass a local Alpaca-format .json or .jsonl file, or 'builtin'"
# Sources already warned about in this process: a study loads its data once per run.
_WARNED_EMPTY: set[str] = set()  # for empty outputs
_WARNED_BLANK: set[str] = set()  # for blank instructions


def load_examples(source: str) -> list[Example]:
    """Load Alpaca-format records from `source`.

    `source` is "builtin" (the generated data set, default size and seed), a path to a
    `.json` file (a list of objects) or a `.jsonl` file (one object per line, blank lines
    skipped), or a hub id `owner/name` loaded with `datasets.load_dataset(id,
    split="train")`. User records come back with exactly the keys `instruction`, `input`
    and `output` (a missing or null `input` becomes ""). Any problem raises a one-line
    `UserError`.
    """
    if source == "builtin":
        return builtin_examples()
    path = Path(source)
    if path.suffix.lower() in (".json", ".jsonl") or path.exists():
        return _warn_empty_outputs(source, _load_file(path))
    if _HUB_ID.fullmatch(source):
        return _warn_empty_outputs(source, _load_hub(source))
    raise UserError(
        f"data source not found: '{source}' is not a file, 'builtin' or a hub id (owner/name); "
        f"{_FIX_HINT}"
    )


def _warn_empty_outputs(source: str, records: list[Example]) -> list[Example]:
    """Count records whose `output` is blank, and those whose `instruction` is, and warn
    about each once per source, in one line.

    They are kept, not refused: an empty output's response-only loss is not over nothing
    but over the EOS token, which teaches the model to end its answer at once; a blank
    instruction teaches an answer to no question. Either may be meant and is more often
    a data error, hence the warnings.
    """
    empty = sum(1 for record in records if not record["output"].strip())
    if empty and source not in _WARNED_EMPTY:
        _WARNED_EMPTY.add(source)
        print(
            f"warning: {source}: {empty} of {len(records)} records have an empty output; "
            "they are kept and teach the model to stop at once (remove them if unintended)",
            file=sys.stderr,
        )
    blank = sum(1 for record in records if not record["instruction"].strip())
    if blank and source not in _WARNED_BLANK:
        _WARNED_BLANK.add(source)
        print(
            f"warning: {source}: {blank} of {len(records)} records have a blank instruction; "
            "they are kept and teach answers to no question (remove them if unintended)",
            file=sys.stderr,
        )
    return records


def _load_file(path: Path) -> list[Example]:
    if not path.exists():
        raise UserError(f"data file not found: {path}")
    if not path.is_file():
        raise UserError(f"data source {path} is not a file; {_FIX_HINT}")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".jsonl"):
        raise UserError(f"{path}: unsupported file type '{suffix}'; {_FIX_HINT}")
    try:
        # utf-8-sig also accepts the byte-order mark that some editors write.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror})") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; it needs at least one record")
    records = _parse_jsonl(path, text) if suffix == ".jsonl" else _parse_json(path, text)
    if not records:
        raise UserError(f"{path}: contains zero records; it needs at least one")
    return records


def _parse_json(path: Path, text: str) -> list[Example]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(
            f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        ) from None
    except RecursionError:  # Python's parser recurses once per level of nesting
        raise UserError(f"{path}: JSON nested too deeply to be a list of records") from None
    if not isinstance(data, list):
        raise UserError(
            f"{path}: the top level is a JSON {_json_type(data)}, expected a list of records"
        )
    return [_check_record(record, f"{path}: record {i}") for i, record in enumerate(data)]


def _parse_jsonl(path: Path, text: str) -> list[Example]:
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON at column {err.colno}: {err.msg}") from None
        except RecursionError:  # Python's parser recurses once per level of nesting
            raise UserError(f"{where}: JSON nested too deeply to be a record") from None
        records.append(_check_record(record, where))
    return records


def _load_hub(dataset_id: str) -> list[Example]:
    try:
        import datasets  # optional extra `adaptive-lora[hub]`; only hub ids need it
    except ImportError:
        raise UserError(
            f"loading '{dataset_id}' from the hub needs the 'datasets' package "
            f"(pip install 'adaptive-lora[hub]'); or {_FIX_HINT}"
        ) from None
    try:
        rows = datasets.load_dataset(dataset_id, split="train")
    except Exception as err:  # whatever the cause, the user's fix is the same
        reason = _one_line(f"{type(err).__name__}: {err}")
        raise UserError(
            f"'{dataset_id}' is not a local file and could not be loaded from the Hugging Face "
            f"hub (unreachable or unknown id: {reason}); {_FIX_HINT}"
        ) from None
    records = [
        _check_record(row, f"hub data set {dataset_id}: record {i}") for i, row in enumerate(rows)
    ]
    if not records:
        raise UserError(f"hub data set {dataset_id}: its train split has zero records")
    return records


def _check_record(record: Any, where: str) -> Example:
    """Validate one record and return it with exactly the three Alpaca keys."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: is a JSON {_json_type(record)}, expected an object")
    for key in ("instruction", "output"):
        if key not in record:
            raise UserError(
                f"{where}: missing required field '{key}' "
                "(each record needs 'instruction' and 'output'; 'input' is optional)"
            )
    if record.get("input") is None:
        record = {**record, "input": ""}
    for key in ("instruction", "input", "output"):
        if not isinstance(record[key], str):
            raise UserError(
                f"{where}: field '{key}' is a JSON {_json_type(record[key])}, expected a string"
            )
    return {key: record[key] for key in ("instruction", "input", "output")}


def _json_type(value: Any) -> str:
    names = {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
