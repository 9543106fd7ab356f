"""Shared fixtures: the real MNIST files, small splits of them, and an isolated runtime folder.

Only a handful of tests read all 70,000 images; the rest train on a few thousand rows.
"""

from __future__ import annotations

import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lightning_modules.data.arrays import MnistArrays, load_idx_dir
from lightning_modules.data.datasets import MNIST
from lightning_modules.data.split import DataSplit, split_data
from lightning_modules.device import threads_per_worker
from preloaded import kill_started_during

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("MNIST_DATA_DIR") or ROOT.parent / "shared" / "data" / "mnist").resolve()
# The bare scheme, as the README shows it: SQLAlchemy 2.1 maps it to psycopg 3, which the extras install.
POSTGRES_URL = os.environ.get("MNIST_SEARCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

# One torch thread per test process, as for the subprocesses tests start (`run_env`): the suite
# runs in two processes on 2 cores, and torch's default of a thread per core had each process's
# idle OpenMP threads spin against the other's work. The same suite took 366 s instead of 429 s
# and 269 s instead of 361 s of its processes' own CPU (docs/TESTING.md). A value set by the
# caller wins, as it does for the runner (`configure_torch`).
os.environ["OMP_NUM_THREADS"] = str(threads_per_worker(1, cores=1))  # a valid count set by the caller, else 1
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A suite started in the background of a non-interactive shell (`cmd &`, as scripts and `nohup`
# start CI jobs) inherits SIGINT ignored, and so does every process it starts: a dashboard under
# test then ignored the Ctrl-C its teardown sends, and was killed 15 s later. Tests send SIGINT
# as a terminal does, so the processes they start get it as a user's would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Modules of tests that each run for tens of seconds (real processes, workers, kills). They run
# first: pytest-xdist hands tests out in collection order, and with these last (they sort last by
# name) one process was left finishing a 30-60 s test while the other sat idle.
LONG_MODULES = ("test_workers.py", "test_two_machines.py", "test_storage_faults.py", "test_crash.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest first (a stable sort: the order within each group is kept)."""
    items.sort(key=lambda item: item.path.name not in LONG_MODULES)


@pytest.fixture(autouse=True)
def no_search_outlives_its_test() -> Iterator[None]:
    """A forked run a test started and did not end (an assertion failed before its kill) is
    killed with the test, not left training beside the next ones (tests/preloaded.py)."""
    with kill_started_during():
        yield


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own runtime folder and reads MNIST from the shared copy."""
    home = tmp_path / "home"
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(home))
    monkeypatch.setenv("MNIST_DATA_DIR", str(MNIST_DIR))
    return home


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    assert (MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), f"MNIST not found at {MNIST_DIR}"
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist_arrays(mnist_dir: Path) -> MnistArrays:
    return load_idx_dir(mnist_dir, MNIST)


def subsample(arrays: MnistArrays, n_train: int, n_test: int) -> MnistArrays:
    return MnistArrays(
        arrays.train_images[:n_train], arrays.train_labels[:n_train],
        arrays.test_images[:n_test], arrays.test_labels[:n_test], f"{arrays.source}[:{n_train}]",
    )


@pytest.fixture(scope="session")
def small_split(mnist_arrays: MnistArrays) -> DataSplit:
    """5,000 training rows, 1,000 validation, 2,000 test."""
    return split_data(subsample(mnist_arrays, 6000, 2000), val_size=1000, seed=0)


@pytest.fixture(scope="session")
def tiny_split(mnist_arrays: MnistArrays) -> DataSplit:
    """600 training rows, 200 validation, 500 test: for tests of plumbing, not of learning."""
    return split_data(subsample(mnist_arrays, 800, 500), val_size=200, seed=0)


@pytest.fixture
def run_env(isolated_home: Path) -> dict[str, str]:
    """Environment for CLI subprocesses: isolated home, shared data, quiet and single-threaded."""
    env = dict(os.environ)
    # one thread per process: tests run several processes at once on 2 cores, and two spinning
    # OpenMP threads per process would slow every one of them several-fold
    env.update(MNIST_SEARCH_HOME=str(isolated_home), MNIST_DATA_DIR=str(MNIST_DIR), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """The local PostgreSQL server; the study names tests use are unique, so runs never collide
    (the suite runs in two processes). Only for tests marked `postgres`, so `-m "not postgres"` runs without it."""
    import sqlalchemy

    assert request.node.get_closest_marker("postgres"), f"{request.node.nodeid} uses PostgreSQL: mark it @pytest.mark.postgres"
    assert request.node.get_closest_marker("slow"), f"{request.node.nodeid} uses a second storage backend: mark it slow (the fast subset is SQLite only)"

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable ({error.orig}); .ci/run starts it")
    finally:
        engine.dispose()
    return POSTGRES_URL


@pytest.fixture
def unique_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


def torch_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.equal(a, b))
