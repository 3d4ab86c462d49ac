"""Shared test settings: CPU, deterministic, and small."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores on CI: keep intra-op parallelism at the machine's size and make kernels deterministic
# so bit-identity tests mean what they say.
torch.set_num_threads(min(2, os.cpu_count() or 1))
torch.use_deterministic_algorithms(True, warn_only=True)
# Determinism does not need new tensors filled with NaN; that fill costs ~20 % of a CPU step.
torch.utils.deterministic.fill_uninitialized_memory = False


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL URL from BNSWEEP_TEST_POSTGRES_URL; skips with a reason when unreachable."""
    url = os.environ.get("BNSWEEP_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("BNSWEEP_TEST_POSTGRES_URL is not set; PostgreSQL tests need a server")
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
    except Exception as err:  # any connection failure means: skip, saying why
        pytest.skip(f"PostgreSQL at BNSWEEP_TEST_POSTGRES_URL is unreachable: {type(err).__name__}")
    return url
