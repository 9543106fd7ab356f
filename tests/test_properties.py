"""Property-based bad input: random, truncated and malformed config files and CSVs.

Every rejection must be the project's own one-line error (never a stray exception), and a
rejected input must leave the files on disk as they were.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightning_modules.data.readers import read_csv
from lightning_modules.errors import DataError
from search.settings import Settings
from search.settings_file import ConfigError, DEFAULT_CONFIG, load_settings

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(string.printable, max_size=12),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(string.ascii_lowercase, max_size=8), inner, max_size=4), max_leaves=12)
SECTIONS = list(Settings.model_fields)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_rejected_cleanly(error: Exception) -> None:
    message = str(error)
    assert message and "\n" not in message


def assert_config_loads_or_is_rejected_untouched(path: Path) -> None:
    """Loading either succeeds or raises a one-line ConfigError; the file stays as it was."""
    before = digest(path)
    try:
        load_settings(path)
    except ConfigError as error:
        assert_rejected_cleanly(error)
    assert digest(path) == before


@FUZZ
@given(document=st.dictionaries(st.sampled_from(SECTIONS + ["extra"]), values, max_size=4))
def test_random_config_documents_load_or_fail_with_one_line(tmp_path: Path, document: dict[str, object]) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    assert_config_loads_or_is_rejected_untouched(path)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=4000), noise=st.binary(max_size=40))
def test_truncated_or_garbled_default_config(tmp_path: Path, cut: int, noise: bytes) -> None:
    path = tmp_path / "cut.yaml"
    path.write_bytes(DEFAULT_CONFIG.read_bytes()[:cut] + noise)
    assert_config_loads_or_is_rejected_untouched(path)


@FUZZ
@given(section=st.sampled_from(["study", "space", "pruner", "data", "training"]), key=st.text(string.ascii_lowercase + "_", min_size=1, max_size=15), value=values)
def test_any_single_override_is_valid_or_named(section: str, key: str, value: object) -> None:
    try:
        load_settings(None, {section: {key: value}})
    except ConfigError as error:
        assert_rejected_cleanly(error)
        assert f"{section}." in str(error) or section in str(error)


def good_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.integers(0, 10, n), rng.integers(0, 256, (n, 784))])


@FUZZ
@given(
    n=st.integers(1, 4),
    seed=st.integers(0, 1000),
    header=st.booleans(),
    cut=st.integers(0, 20000),
    cell=st.tuples(st.integers(0, 3), st.integers(0, 784)),
    replacement=st.one_of(st.text(string.printable.replace(",", "").replace("\n", "").replace("\r", ""), max_size=6), st.integers(-500, 500).map(str)),
)
def test_malformed_csv_is_a_data_error_naming_the_place(tmp_path: Path, n: int, seed: int, header: bool, cut: int, cell: tuple[int, int], replacement: str) -> None:
    rows = good_rows(n, seed).astype(object)
    row, column = cell
    if row < n:
        rows[row, column] = replacement
    lines = [",".join(str(v) for v in r) for r in rows]
    if header:
        lines.insert(0, ",".join(["label"] + [f"pixel{i}" for i in range(784)]))
    text = "\n".join(lines) + "\n"
    path = tmp_path / "fuzz.csv"
    path.write_text(text[: cut if cut < len(text) else len(text)])
    before = digest(path)
    try:
        images, labels = read_csv(path)
    except DataError as error:
        assert_rejected_cleanly(error)
        assert str(path) in str(error)
    else:
        assert images.shape[1:] == (28, 28) and len(images) == len(labels)
        assert labels.min() >= 0 and labels.max() <= 9
    assert digest(path) == before


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\x00\xff\xfe" * 10, b"1,2,3\n", "é,ü\n".encode("latin-1")])
def test_csv_odd_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "odd.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as caught:
        read_csv(path)
    assert_rejected_cleanly(caught.value)
