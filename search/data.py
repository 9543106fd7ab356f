"""Settings -> the data every trial of a study trains on, and the data's identity.

The one place run, export, report and benchmarks get their split. `check_data` resolves and
checks the source without importing torch, so a missing folder is reported at once;
`load_split` reads and splits it. A study records its data's identity (source, sizes and a
SHA-256 of every row it uses) when it is created, and `require_same_data` refuses to go on,
or to export, on other data; a study created before identities were recorded is compared with
the data its recorded settings load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lightning_modules.data.sources import DataSource, check_source, resolve_data_source
from lightning_modules.errors import DataError
from search.settings import DataConfig

if TYPE_CHECKING:
    import optuna

    from lightning_modules.data.split import DataSplit


def check_data(config: DataConfig) -> DataSource:
    """The resolved source, its files checked for presence (torch-free, milliseconds)."""
    source = resolve_data_source(config.source, config.data_dir)
    check_source(source)
    return source


def load_split(config: DataConfig, source: DataSource | None = None) -> DataSplit:
    """Read the source and split it: validation is `val_fraction` of the training rows, at most `val_size`."""
    from lightning_modules.data.arrays import load_data
    from lightning_modules.data.split import split_data, validation_rows

    arrays = load_data(source or check_data(config), verify=config.verify_checksums)
    val_rows = validation_rows(len(arrays.train_labels), config.val_fraction, config.val_size)
    return split_data(arrays, val_rows, config.train_size, config.split_seed)


@dataclass(frozen=True)
class DataIdentity:
    """What a study trained on: shown in the first line of a run and recorded on the study."""

    source: str
    sha256: str
    train_rows: int
    val_rows: int
    test_rows: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def sizes(self) -> str:
        return f"{self.train_rows:,} train / {self.val_rows:,} val / {self.test_rows:,} test rows"


def data_identity(split: DataSplit, source: DataSource) -> DataIdentity:
    sizes = split.sizes()
    return DataIdentity(source.describe(), split.fingerprint(), sizes["train"], sizes["val"], sizes["test"])


def recorded_identity(study: optuna.Study) -> DataIdentity | None:
    """The identity the study recorded, or None for a study created before identities existed."""
    from search.record import DATA

    raw = study.user_attrs.get(DATA)
    try:
        return DataIdentity(**raw) if isinstance(raw, dict) else None
    except TypeError:
        return None


def identity_from_settings(study: optuna.Study) -> DataIdentity | None:
    """For a study created before identities were recorded: the identity of the data its recorded
    settings describe (source, data folder, sizes, split seed), read the way its runs read it; None
    for a study that recorded no settings either. A DataError when that data cannot be read, since
    then nothing says which data the study's trials trained on."""
    from search.record import SETTINGS, study_settings

    if not study.user_attrs.get(SETTINGS):
        return None
    config = study_settings(study).data
    try:
        source = check_data(config)
        if source.download:  # never fetch data only to compare it
            raise DataError(f"{source.path} holds no {source.spec.name if source.spec else 'data'} files")
        split = load_split(config, source)
    except DataError as error:
        raise DataError(
            f"study {study.study_name!r} recorded no data identity, and the data its recorded settings name cannot be read "
            f"to compare with this run's ({str(error)[:200]}); restore that data, or use another --study-name"
        ) from None
    return data_identity(split, source)


def require_same_data(study: optuna.Study, identity: DataIdentity) -> None:
    """Refuse, in one line, to continue or export a study on data other than its own.

    A study without a recorded identity is compared with the data its recorded settings load, so
    it never adopts whatever data the next run brings.
    """
    recorded, whose = recorded_identity(study), ""
    if recorded is None:
        recorded, whose = identity_from_settings(study), " (as its recorded settings read it)"
    if recorded is None or recorded.sha256 == identity.sha256:
        return
    raise DataError(
        f"study {study.study_name!r} was trained on {recorded.source}{whose} ({recorded.sizes()}, sha256 {recorded.sha256[:12]}) "
        f"but this run loads {identity.source} ({identity.sizes()}, sha256 {identity.sha256[:12]}); pass the study's "
        "data options (--data, --data-dir, --train-size, --val-fraction, --val-size), or another --study-name"
    )
