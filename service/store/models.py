"""The results store's tables, as SQLAlchemy 2 declarative models.

These classes describe the schema for SQLAlchemy and Alembic only: nothing outside
`bnsweep.store` sees an ORM row (the public API in `api.py` returns frozen values and
DataFrames). The schema itself is created by the Alembic migrations in `migrations/versions`,
which are frozen copies of what is written here; a test checks that the two agree.

Keys are integers that never change once a row exists (rows are inserted if absent and updated
in place, never deleted and re-inserted), so tables added later can reference them:
a per-(trial, epoch, layer) diagnostics table joins `epochs` on `(trial_id, epoch)`. The one
delete is `Store.forget` (`bnsweep db forget`), which a user asks for by name; a trial's
epochs, diagnostics, sweep links and notes go with it (ON DELETE CASCADE).
"""

from __future__ import annotations

from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Alembic's bookkeeping table. Named after the project so a PostgreSQL database shared with
#: another Alembic-managed application keeps the two version histories apart.
VERSION_TABLE = "bnsweep_alembic_version"

STATUSES: tuple[str, ...] = ("pending", "running", "completed", "failed", "diverged")
#: A trial in one of these states has its result; no later event changes it.
FINAL_STATUSES: tuple[str, ...] = ("completed", "diverged")

#: One column per `TrialSpec` field that changes the result
#: (`bnsweep.workers.spec.RESULT_FIELD_NAMES`),
#: with its SQL type. Listed here rather than derived, because a new spec field needs a
#: migration; `tests/service/test_store.py` fails until both are added.
SPEC_COLUMN_TYPES: dict[str, type] = {
    "dataset": str,
    "arch": str,
    "formulation": str,
    "bn_scale_init": float,
    "bn_lr_divisor": float,
    "input_norm": str,
    "lr": float,
    "epochs": int,
    "batch_size": int,
    "momentum": float,
    "weight_decay": float,
    "val_fraction": float,
    "precision": str,
    "memory_format": str,
}

# Deterministic constraint names: Alembic can only alter or drop a constraint it can name, and
# SQLite and PostgreSQL would otherwise invent different ones.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp stored in UTC and read back as an aware UTC `datetime` on every backend.

    SQLite has no time zones and would store an aware value's local wall time without its
    offset; converting on the way in and out makes both backends return the same instant.
    Naive values are taken as local time, as Python's `datetime.astimezone` does.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    # Double precision everywhere: 0.1 stored and read back compares equal to Python's 0.1, so
    # `--where lr=0.1` finds the rows written from a spec with lr 0.1.
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads it as a class attribute)
        float: sa.Double(),
        str: sa.String(64),
        datetime: UTCDateTime(),
    }


class Sweep(Base):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200), unique=True)
    spec_text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class Secret(Base):
    """A secret the store keeps (revision 0004): `checkpoint-key` signs what trials write into
    checkpoint storage (service/checkpoints.py). Never shown by any command or page."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[str] = mapped_column(sa.String(128))


class Trial(Base):
    """One cell: a result-changing spec (`spec_hash`) trained with one seed."""

    __tablename__ = "trials"
    __table_args__ = (
        sa.UniqueConstraint("spec_hash", "seed"),
        sa.CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in STATUSES) + ")", name="status"
        ),
        sa.Index(None, "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    spec_hash: Mapped[str] = mapped_column(sa.String(64))
    seed: Mapped[int]

    dataset: Mapped[str]
    arch: Mapped[str]
    formulation: Mapped[str]
    bn_scale_init: Mapped[float]
    bn_lr_divisor: Mapped[float]
    input_norm: Mapped[str]
    lr: Mapped[float]
    epochs: Mapped[int]
    batch_size: Mapped[int]
    momentum: Mapped[float]
    weight_decay: Mapped[float]
    val_fraction: Mapped[float]
    precision: Mapped[str]
    memory_format: Mapped[str]

    status: Mapped[str] = mapped_column(sa.String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(server_default="0")
    epochs_run: Mapped[int | None]
    best_epoch: Mapped[int | None]
    best_val_acc: Mapped[float | None]  # accuracies are fractions in [0, 1]
    test_acc: Mapped[float | None]  # test accuracy at the best-validation epoch
    final_test_acc: Mapped[float | None]
    diverged_epoch: Mapped[int | None]
    seconds: Mapped[float | None]
    images_per_sec: Mapped[float | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    host: Mapped[str | None] = mapped_column(sa.String(255))
    device: Mapped[str | None] = mapped_column(sa.String(255))
    package_version: Mapped[str | None]
    error: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    # Revision 0003. `recipe` is `bnsweep.workers.spec.RECIPE` when the cell was registered (its
    # spec_hash includes it); the server default 1 is for rows from before the column existed.
    recipe: Mapped[int] = mapped_column(server_default="1")
    git_commit: Mapped[str | None]  # the source checkout's HEAD when known
    threads: Mapped[int | None]  # torch.get_num_threads() of the run
    runtime: Mapped[str | None] = mapped_column(sa.Text)  # JSON of the run's runtime options
    # Revision 0005: JSON {kind: {name, distribution, version, recipe}} of the plugins the spec
    # names (bnsweep.workers.plugins.provenance); NULL for built-ins only. Reads find a plugin's
    # current recipe here, never by importing it.
    plugins: Mapped[str | None] = mapped_column(sa.Text)


class Epoch(Base):
    """One epoch of one trial; the natural key `(trial_id, epoch)` is the primary key."""

    __tablename__ = "epochs"

    trial_id: Mapped[int] = mapped_column(
        sa.ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    # NaN cannot be stored by SQLite (it becomes NULL), so NaN is NULL on both backends and
    # reads back as NaN in a DataFrame; ±inf is stored as is.
    train_loss: Mapped[float | None]
    val_loss: Mapped[float | None]
    val_acc: Mapped[float | None]
    test_acc: Mapped[float | None]
    lr: Mapped[float | None]
    seconds: Mapped[float | None]


class SweepTrial(Base):
    """Which trials a sweep uses; a trial serves every sweep that asks for the same cell."""

    __tablename__ = "sweep_trials"
    __table_args__ = (sa.Index(None, "trial_id"),)

    sweep_id: Mapped[int] = mapped_column(
        sa.ForeignKey("sweeps.id", ondelete="CASCADE"), primary_key=True
    )
    trial_id: Mapped[int] = mapped_column(
        sa.ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )


class Diagnostic(Base):
    """One BN layer of one trial at one epoch (epoch 0: initialisation); docs/diagnostics.md.

    The key is `(trial_id, epoch, layer)`, the layer being the BN module's path in the model.
    The foreign key is to `trials`, not `epochs`: epoch 0 has no epoch row, and a run's
    diagnostics and epoch metrics arrive as separate events.
    """

    __tablename__ = "diagnostics"

    trial_id: Mapped[int] = mapped_column(
        sa.ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    layer: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    depth: Mapped[int]  # position of the BN in the forward pass, 0 = first
    module: Mapped[str]  # the BN class name
    channels: Mapped[int]
    # NaN is NULL, as in `epochs`: a BN the probe's forward never reached has no probe values.
    gamma_mean: Mapped[float | None]
    gamma_std: Mapped[float | None]
    beta_mean: Mapped[float | None]
    beta_std: Mapped[float | None]
    gamma_drift: Mapped[float | None]
    beta_drift: Mapped[float | None]
    outlier_fraction: Mapped[float | None]
    gradient_factor: Mapped[float | None]


#: The longest note `add_note` keeps, in characters: a paragraph or a pasted log excerpt, not a
#: file (a page shows every note of a sweep).
NOTE_MAX_CHARS = 10_000


class Note(Base):
    """A researcher's note (revision 0006) on a sweep, a cell or a trial; docs/store.md.

    The target is a trial (`trial_id`), a cell (`spec_hash`, with the sweep it was written in,
    if any) or a sweep (`sweep_id` alone). Notes are only ever added: no command edits one.
    A trial's notes go with it when `bnsweep db forget` deletes it (ON DELETE CASCADE, as its
    epochs do); a cell's notes name a `spec_hash`, not a row, and stay for the cell's next run.
    """

    __tablename__ = "notes"
    __table_args__ = (
        sa.CheckConstraint(
            "sweep_id IS NOT NULL OR spec_hash IS NOT NULL OR trial_id IS NOT NULL",
            name="target",
        ),
        sa.Index(None, "sweep_id"),
        sa.Index(None, "spec_hash"),
        sa.Index(None, "trial_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    sweep_id: Mapped[int | None] = mapped_column(sa.ForeignKey("sweeps.id", ondelete="CASCADE"))
    spec_hash: Mapped[str | None] = mapped_column(sa.String(64))
    trial_id: Mapped[int | None] = mapped_column(sa.ForeignKey("trials.id", ondelete="CASCADE"))
    author: Mapped[str] = mapped_column(sa.String(200))
    text: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime]
