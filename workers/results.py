"""The records a trial produces, as plain values: what the driver reports and the store writes.

No torch and no NumPy here, so the store and the driver read and write these without loading the
training stack: `run_trial` returns a `TrialResult` with one `EpochMetrics` per epoch, and
`bnsweep.workers.diagnostics.BNDiagnostics` measures one `LayerDiagnostics` per BN layer and epoch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    val_loss: float
    val_acc: float  # fractions in [0, 1]
    test_acc: float
    lr: float  # the learning rate α·factor used during this epoch
    seconds: float  # training + evaluation wall time of this epoch


@dataclass(frozen=True)
class TrialResult:
    status: str  # "completed" | "diverged"
    epochs_run: int
    best_epoch: int | None
    best_val_acc: float | None
    test_acc: float | None  # test accuracy at the best-validation epoch: the reported score
    final_test_acc: float | None
    seconds: float
    images_per_sec: float
    diverged_epoch: int | None = None
    error: str | None = None
    history: tuple[EpochMetrics, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class LayerDiagnostics:
    """One BN layer at one epoch. γ/β statistics run over the layer's channels (std with ddof 0);
    the probe statistics over the probe batch in train mode (batch statistics, as in training)."""

    layer: str  # module path in the model, e.g. "input_norm", "body.stages.1.bn1"
    depth: int  # 0-based position in the forward pass (0 = the input BN when there is one)
    module: str  # the BN class, e.g. "BatchNorm2d", "InputBatchNorm2d"
    channels: int
    gamma_mean: float
    gamma_std: float
    beta_mean: float
    beta_std: float
    gamma_drift: float  # mean |γ − γ_init| over channels
    beta_drift: float  # mean |β − β_init| = mean |β| (β_init = 0)
    outlier_fraction: float  # fraction of the probe's X̂ values with |X̂| > 6 (Sect. 3.2)
    gradient_factor: float  # mean over channels of γ/√(σ²_B + ε) (Eqn. 20), σ²_B of the probe

    def to_dict(self) -> dict[str, Any]:
        """Plain values for Ray's result dicts and the store's event."""
        return asdict(self)


#: The numeric fields of `LayerDiagnostics`, in order.
VALUE_FIELDS: tuple[str, ...] = (
    "gamma_mean",
    "gamma_std",
    "beta_mean",
    "beta_std",
    "gamma_drift",
    "beta_drift",
    "outlier_fraction",
    "gradient_factor",
)
