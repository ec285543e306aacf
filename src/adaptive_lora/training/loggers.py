"""Optional tensorboard / mlflow sinks for the loss curves (off by default)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from adaptive_lora.errors import UserError


class MetricLoggers:
    """Optional tensorboard / mlflow sinks for the loss curves (off by default)."""

    def __init__(self, names: list[str], run_dir: Path, run_id: str):
        self.writers: list[Callable[[str, float, int], None]] = []
        self._closers: list[Callable[[], None]] = []
        for name in names:
            if name == "tensorboard":
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:
                    raise UserError(
                        "report_to tensorboard needs `pip install tensorboard`"
                    ) from None
                writer = SummaryWriter(str(run_dir / "tensorboard"))
                self.writers.append(lambda k, v, s, w=writer: w.add_scalar(k, v, s))
                self._closers.append(writer.close)
            elif name == "mlflow":
                try:
                    import mlflow
                except ImportError:
                    raise UserError("report_to mlflow needs `pip install mlflow`") from None
                mlflow.start_run(run_name=run_id)
                self.writers.append(lambda k, v, s: mlflow.log_metric(k, v, step=s))
                self._closers.append(mlflow.end_run)

    def log(self, key: str, value: float, step: int) -> None:
        for write in self.writers:
            write(key, value, step)

    def close(self) -> None:
        for close in self._closers:
            close()
