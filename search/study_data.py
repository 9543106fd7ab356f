"""A study's recorded data identity, and the refusal to continue or export it on other data.

A study records its data's identity (`search.data.DataIdentity`) when it is created;
`require_same_data` refuses to go on, or to export, on data with another checksum. A study
created before identities were recorded is compared with the data its recorded settings load,
so it never adopts whatever data the next run brings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lightning_modules.errors import DataError
from search.data import DataIdentity, check_data, data_identity, load_split
from search.record import DATA, SETTINGS, study_settings

if TYPE_CHECKING:
    import optuna


def recorded_identity(study: optuna.Study) -> DataIdentity | None:
    """The identity the study recorded, or None for a study created before identities existed."""
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
