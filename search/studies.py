"""The studies a storage holds: their names, and the one a command names, which must be there.

Separate from `search/storage.py` (URL -> storage) so that opening a storage and reading what it
holds stay two small modules; both are used by the export, the dashboard and the warm start.
"""

from __future__ import annotations

from search.redaction import shown_name
from search.storage import StorageError, open_existing_storage


def quiet_optuna() -> None:
    """Our one line per trial replaces Optuna's INFO lines; experimental-API notes are ours to track.
    Here, not with the trial loop: the export and the run call it before torch is imported."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def study_names(storage: object) -> list[str]:
    import optuna

    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]  # type: ignore[arg-type]


def load_existing_study(name: str, storage: object, flag: str = "--study-name"):  # noqa: ANN201 - optuna.Study
    """Load a study that must exist; the error lists the ones that do (and names `flag`)."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)  # type: ignore[arg-type]
    except KeyError:
        names = study_names(storage)  # masked as URLs: a name given or stored may be one, password and all
        listing = ", ".join(repr(shown_name(n)) for n in names[:20]) if names else "none"
        raise StorageError(f"no study named {shown_name(name)!r} in this storage (studies there: {listing}); pass {flag}") from None


def recorded_attrs(url: str, name: str) -> dict[str, object] | None:
    """The user attributes of study `name` at `url`, read-only, or None where it is not there yet
    (no database file, no Optuna tables, no such study): nothing is created or changed, and a
    database that cannot be read is left for the run to open and name."""
    import optuna

    try:
        storage = open_existing_storage(url, read_only=True, one_read=True)
    except StorageError:
        return None
    try:
        return dict(optuna.load_study(study_name=name, storage=storage).user_attrs)
    except KeyError:
        return None
    finally:
        storage.engine.dispose()
