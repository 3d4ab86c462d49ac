"""bnsweep: "Revisiting Batch Normalization" (Davis & Frank) as a method, a sweep service and an
analysis. These names are its public face; everything else is importable but may move.

The method, in anyone's PyTorch code (docs/method.md):

- `build_model`: a registered network with the paper's stem, initialisation, γ and input BN.
- `set_bn_scale`: set every BN scale γ of a model, after torchvision has reset them to 1.
- `param_groups`: the optimiser's groups: γ at α/c, no weight decay on BN parameters and biases.
- `MODELS`, `FORMULATIONS`, `INPUT_NORMS`, `DATASETS`: the registries, name → builder, the
  installed plugins' entries included.

Your own network, dataset, formulation or input normalisation (docs/extending.md):

- `register_model`, `register_dataset`, `register_formulation`, `register_input_norm`: mark the
  object a package's `bnsweep.*` entry point names, with its recipe.

One trial, no Ray and no database (docs/architecture.md):

- `TrialSpec`: every field that defines a run; `spec_hash` keys it in the store.
- `run_trial`: train one spec, calling back every epoch, resuming from a checkpoint.

The results store (docs/store.md):

- `Store`: `Store.open(url)`, writes events, reads DataFrames.
- `trials`: the trials of a sweep as a DataFrame, the current training recipe only.

The tables (docs/analysis.md):

- `tables`: the significance tables of a trials frame; they show themselves in a notebook and
  turn into a DataFrame with `to_frame()`.
- `TableLayout`, `AnalysisOptions`: which table to draw, and how to test.

`__version__` is the installed distribution's version. Each name is imported on first use, so
`import bnsweep` stays light (the command line starts in well under a second).
"""

from __future__ import annotations

import importlib
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    __version__: str
    from bnsweep.analysis.layout import TableLayout
    from bnsweep.analysis.notebook import tables
    from bnsweep.analysis.stats import AnalysisOptions
    from bnsweep.store.api import Store
    from bnsweep.store.results import trials
    from bnsweep.workers.data import DATASETS
    from bnsweep.workers.models import MODELS, build_model
    from bnsweep.workers.norm import FORMULATIONS, INPUT_NORMS, set_bn_scale
    from bnsweep.workers.param_groups import param_groups
    from bnsweep.workers.plugins import (
        register_dataset,
        register_formulation,
        register_input_norm,
        register_model,
    )
    from bnsweep.workers.spec import TrialSpec
    from bnsweep.workers.trial import run_trial

#: Each public name → the module that defines it.
_HOMES = {
    "build_model": "bnsweep.workers.models",
    "set_bn_scale": "bnsweep.workers.norm",
    "param_groups": "bnsweep.workers.param_groups",
    "MODELS": "bnsweep.workers.models",
    "FORMULATIONS": "bnsweep.workers.norm",
    "INPUT_NORMS": "bnsweep.workers.norm",
    "DATASETS": "bnsweep.workers.data",
    "register_model": "bnsweep.workers.plugins",
    "register_dataset": "bnsweep.workers.plugins",
    "register_formulation": "bnsweep.workers.plugins",
    "register_input_norm": "bnsweep.workers.plugins",
    "TrialSpec": "bnsweep.workers.spec",
    "run_trial": "bnsweep.workers.trial",
    "Store": "bnsweep.store.api",
    "trials": "bnsweep.store.results",
    "tables": "bnsweep.analysis.notebook",
    "TableLayout": "bnsweep.analysis.layout",
    "AnalysisOptions": "bnsweep.analysis.stats",
}

__all__ = [
    "DATASETS",
    "FORMULATIONS",
    "INPUT_NORMS",
    "MODELS",
    "AnalysisOptions",
    "Store",
    "TableLayout",
    "TrialSpec",
    "__version__",
    "build_model",
    "param_groups",
    "register_dataset",
    "register_formulation",
    "register_input_norm",
    "register_model",
    "run_trial",
    "set_bn_scale",
    "tables",
    "trials",
]


assert set(__all__) == {"__version__", *_HOMES}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # looked up on first use too: the command line never needs it
        return version("bnsweep")
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'bnsweep' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, "__version__"})
