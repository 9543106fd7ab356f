"""Settings -> the data every trial of a study trains on, and the data's identity.

The one place run, export, report and benchmarks get their split. `check_data` resolves and
checks the source without importing torch, so a missing folder is reported at once;
`load_split` reads and splits it. `DataIdentity` is what a study records of its data (source,
sizes and a SHA-256 of every row it uses); `search/study_identity.py` compares it with a run's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lightning_modules.data.sources import DataSource, check_source, resolve_data_source
from search.settings import DataConfig

if TYPE_CHECKING:
    from lightning_modules.data.split import DataSplit


def check_data_options(config: DataConfig) -> None:
    """A new run's --data and --data-dir do not contradict: --data-dir is where a dataset named
    by --data (or MNIST) is read, so beside --data naming a folder or CSV file it was ignored,
    unchecked and unsaid (a run's only: a study recorded before this check still exports)."""
    from lightning_modules.data.datasets import DATASETS
    from lightning_modules.errors import UserInputError

    if config.source and config.data_dir and config.source.lower() not in DATASETS:
        raise UserInputError(f"--data-dir {config.data_dir[:200]!r} is not used when --data names a file or folder "
                             f"({config.source[:200]!r}); drop one of them")


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


def check_split_sizes(split: DataSplit) -> None:
    """A search needs a validation set that can tell models apart and training rows to learn
    from: a 1-row validation set scored 1.0 and met the 0.95 target on nothing learned. At least
    a row per class in each (the validation split is stratified, so each class then has one)."""
    from lightning_modules.data.format import N_CLASSES
    from lightning_modules.errors import DataError

    sizes = split.sizes()
    if sizes["val"] < N_CLASSES:
        raise DataError(f"the validation split has {sizes['val']} row(s), fewer than the {N_CLASSES} classes: its accuracy tells "
                        "no model from another; raise --val-size or --val-fraction, or use more data")
    if sizes["train"] < N_CLASSES:
        raise DataError(f"the training split has {sizes['train']} row(s), fewer than the {N_CLASSES} classes; raise --train-size "
                        "or use more data")


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
