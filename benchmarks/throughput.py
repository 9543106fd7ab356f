"""Training throughput: our trial training loop vs a raw PyTorch loop on the same MLP.

Ours is `lightning_modules.training.fit` with HyperParams("dnn", (512, 256), 0.2, 1e-3, "adam",
0.0, 128) on the real MNIST split (50,000 train / 10,000 val rows), once bare and once with the
callbacks a search trial adds (history recorder, Optuna pruning, study-target stop, per-epoch
checkpoint, stop-on-signal; in-memory study). The reference is a plain loop over pre-loaded
tensors (a shuffled index sliced per batch, no DataLoader) training the same network from
`build_network` with the same batch size, Adam and torch threads, and the same per-epoch
validation pass. A third loop, the smallest LightningModule on the same batches and trainer
settings, shows how much of the gap is Lightning's own per-step cost. Epoch 1 (warm-up) is excluded. Runs are interleaved and repeated; the table
gives medians.

    python -m benchmarks.throughput            # full: 3 repeats x 1 and 2 threads, 2 epochs each
    python -m benchmarks.throughput --quick    # smoke run: 3,000 train / 1,000 val rows
    python -m benchmarks.throughput --profile  # + cProfile of our loop: where the time goes
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks._common import (
    at_most,
    cli,
    integer,
    load_average,
    load_mnist_split,
    machine_line,
    median,
    parser,
    table,
)

HEADER = "| threads | loop"
HIDDEN = (512, 256)
DROPOUT = 0.2
LR = 1e-3
BATCH = 128
EVAL_BATCH = 2048  # the data module's validation batch size
SEED = 0
MAX_THREADS = 64  # torch threads of one run
MAX_THREAD_COUNTS = 8  # --threads values: each is a whole set of runs


def hyperparams():  # noqa: ANN201
    from lightning_modules.hyperparams import HyperParams

    return HyperParams("dnn", HIDDEN, DROPOUT, LR, "adam", 0.0, BATCH)


# ---------------------------------------------------------------- reference: raw PyTorch


def raw_loop(split, epochs: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """(train seconds, train + validation seconds) per epoch of a plain PyTorch loop."""
    from lightning_modules.data.format import N_CLASSES, N_PIXELS
    from lightning_modules.network import build_network

    torch.manual_seed(SEED)
    net = build_network(N_PIXELS, HIDDEN, N_CLASSES, DROPOUT)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    x, y, n = split.x_train, split.y_train, len(split.y_train)
    generator = torch.Generator().manual_seed(SEED)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n, BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        trained = time.perf_counter()
        net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(split.y_val), EVAL_BATCH):
                correct += int((net(split.x_val[i : i + EVAL_BATCH]).argmax(1) == split.y_val[i : i + EVAL_BATCH]).sum())
        times.append((trained - start, time.perf_counter() - start))
    return times


# ---------------------------------------------------------------- ours: fit()


def _epoch_timer():  # noqa: ANN202
    import lightning.pytorch as pl

    class EpochTimer(pl.Callback):
        """Train-only time (epoch start -> validation start) and whole-epoch time per epoch."""

        def __init__(self) -> None:
            self.times: list[tuple[float, float]] = []
            self._start = self._trained = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            self._start = time.perf_counter()

        def on_validation_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            self._trained = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.times.append((self._trained - self._start, time.perf_counter() - self._start))

    return EpochTimer()


def trial_callbacks(tmp: Path) -> list:
    """The callbacks search.objective adds to every trial, on an in-memory study."""
    import optuna

    from lightning_modules.callbacks import EpochCheckpoint, StopOnRequest
    from search.trial_callbacks import EpochRecorder, PruneBeforeTheLastEpoch, StopAtStudyTarget

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    return [
        EpochRecorder(trial),
        PruneBeforeTheLastEpoch(trial),
        StopAtStudyTarget(study, 0.999),
        EpochCheckpoint(tmp / "trial.ckpt"),
        StopOnRequest(threading.Event()),
    ]


def our_loop(split, epochs: int, with_trial_callbacks: bool) -> list[tuple[float, float]]:  # noqa: ANN001
    from lightning_modules.training import fit

    timer = _epoch_timer()
    with tempfile.TemporaryDirectory() as tmp:
        extra = trial_callbacks(Path(tmp)) if with_trial_callbacks else []
        fit(hyperparams(), split, seed=SEED, max_epochs=epochs, callbacks=[timer, *extra])
    return timer.times


def bare_lightning_loop(split, epochs: int) -> list[tuple[float, float]]:  # noqa: ANN001
    """Lightning's own floor: the same network in the smallest LightningModule (no metrics, no
    history, no callbacks of ours) on the same batches and trainer settings as fit()."""
    import lightning.pytorch as pl

    from lightning_modules.data.datamodule import MNISTDataModule
    from lightning_modules.data.format import N_CLASSES, N_PIXELS
    from lightning_modules.network import build_network
    from lightning_modules.training import build_trainer

    class Bare(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = build_network(N_PIXELS, HIDDEN, N_CLASSES, DROPOUT)

        def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN202
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def validation_step(self, batch, batch_idx) -> None:  # noqa: ANN001
            x, y = batch
            self.val_correct = int((self.net(x).argmax(1) == y).sum())  # the raw loop's validation work

        def configure_optimizers(self):  # noqa: ANN202
            return torch.optim.Adam(self.parameters(), lr=LR)

    pl.seed_everything(SEED, verbose=False)
    timer = _epoch_timer()
    trainer = build_trainer(epochs, [timer])
    trainer.fit(Bare(), datamodule=MNISTDataModule(split, BATCH, shuffle_seed=SEED))
    return timer.times


LOOPS = {
    "raw PyTorch (reference)": lambda split, epochs: raw_loop(split, epochs),
    "bare LightningModule (Lightning's floor)": lambda split, epochs: bare_lightning_loop(split, epochs),
    "fit()": lambda split, epochs: our_loop(split, epochs, False),
    "fit() + trial callbacks": lambda split, epochs: our_loop(split, epochs, True),
}


def measure(split, epochs: int, repeats: int, thread_counts: list[int]) -> dict:  # noqa: ANN001
    """samples/s (train-only, whole epoch) per (threads, loop), one value per repeat."""
    n = len(split.y_train)
    results: dict[tuple[int, str], list[tuple[float, float]]] = {}
    names = list(LOOPS)
    for repeat in range(repeats):
        for threads in thread_counts:
            torch.set_num_threads(threads)
            order = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate: no position bias
            for name in order:
                times = LOOPS[name](split, epochs)[1:]  # epoch 1 is warm-up
                train = n * len(times) / sum(t for t, _ in times)
                whole = n * len(times) / sum(w for _, w in times)
                results.setdefault((threads, name), []).append((train, whole))
                print(f"  repeat {repeat + 1}, {threads} thread(s), {name}: {train:,.0f} train samples/s, "
                      f"{whole:,.0f} incl. val (load {load_average().split()[0]})", file=sys.stderr, flush=True)
    return results


def report(results: dict, thread_counts: list[int]) -> str:
    rows = []
    for threads in thread_counts:
        ref = results[(threads, "raw PyTorch (reference)")]
        ref_train, ref_whole = median([r[0] for r in ref]), median([r[1] for r in ref])
        for name in LOOPS:
            values = results[(threads, name)]
            train, whole = median([v[0] for v in values]), median([v[1] for v in values])
            ratios = [v[0] / r[0] for v, r in zip(values, ref)]  # paired with the same repeat
            spread = f"{min(ratios):.3f}-{max(ratios):.3f}"  # how far one repeat can be trusted
            rows.append((threads, name, train, whole, train / ref_train, median(ratios), spread, whole / ref_whole, len(values)))
    return table(
        ["threads", "loop", "train samples/s", "epoch samples/s (incl. val)", "train ratio", "paired train ratio",
         "paired range", "epoch ratio", "runs"],
        rows,
    )


# ---------------------------------------------------------------- profile


PROFILE_GROUPS = {  # substring of "file:function" -> what it is (cumulative times overlap)
    "forward (net)": ("torch/nn/modules/container.py:forward",),
    "loss.backward": ("torch/_tensor.py:backward",),
    "optimizer.step (Adam)": ("torch/optim/adam.py:step",),
    "optimizer_step incl. closure (Lightning)": ("lightning/pytorch/core/module.py:optimizer_step",),
    "zero_grad": ("torch/optim/optimizer.py:zero_grad",),
    "torchmetrics update (loss + acc)": ("torchmetrics/metric.py:wrapped_func",),
    "callback hooks (all)": ("lightning/pytorch/trainer/call.py:_call_callback_hooks",),
    "LightningModule hooks (all)": ("lightning/pytorch/trainer/call.py:_call_lightning_module_hook",),
    "strategy hooks (training_step etc.)": ("lightning/pytorch/trainer/call.py:_call_strategy_hook",),
    "batch fetch (TensorBatches + fetcher)": ("lightning/pytorch/loops/fetchers.py:__next__",),
    "checkpoint save": ("lightning/pytorch/trainer/trainer.py:save_checkpoint",),
    "validation loop": ("lightning/pytorch/loops/evaluation_loop.py:run",),
}


def profile(split, epochs: int) -> str:  # noqa: ANN001
    """cProfile one fit() with trial callbacks; time per training step by component."""
    import lightning.pytorch as pl

    steps: list[int] = []

    class CountSteps(pl.Callback):
        def on_fit_end(self, trainer, pl_module) -> None:  # noqa: ANN001
            steps.append(trainer.global_step)

    from lightning_modules.training import fit

    with tempfile.TemporaryDirectory() as tmp:
        callbacks = [CountSteps(), *trial_callbacks(Path(tmp))]
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        fit(hyperparams(), split, seed=SEED, max_epochs=epochs, callbacks=callbacks)
        profiler.disable()
        wall = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    n_steps = steps[0]
    cumulative: dict[str, float] = {}
    for (filename, _, function), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{filename}:{function}"
        for group, patterns in PROFILE_GROUPS.items():
            if any(key.endswith(p) or p in key for p in patterns):
                cumulative[group] = cumulative.get(group, 0.0) + cum
    rows = [(g, cumulative.get(g, 0.0), 1000 * cumulative.get(g, 0.0) / n_steps) for g in PROFILE_GROUPS]
    out = io.StringIO()
    print(f"cProfile of fit() + trial callbacks: {epochs} epochs, {n_steps} steps, {wall:.2f} s wall "
          f"under the profiler ({1000 * wall / n_steps:.2f} ms/step)", file=out)
    print(table(["component (cumulative, overlapping)", "seconds", "ms/step"], rows), file=out)
    top = io.StringIO()
    pstats.Stats(profiler, stream=top).sort_stats("tottime").print_stats(15)
    print("\ntop 15 functions by own time:", file=out)
    print("\n".join(line for line in top.getvalue().splitlines() if line.strip())[-3000:], file=out)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    flags = parser(__doc__)
    flags.add_argument("--quick", action="store_true", help="smoke run: 3,000 train / 1,000 val rows, 2 epochs, 1 repeat")
    flags.add_argument("--repeats", type=integer(1, 100), default=3)
    # at least 2: epoch 1 is warm-up and excluded, so 1 epoch would leave nothing to time
    flags.add_argument("--epochs", type=integer(2, 100), default=2, help="epochs per run (the first is excluded)")
    flags.add_argument("--threads", type=integer(1, MAX_THREADS), nargs="+", default=[1, 2], help=f"torch thread counts, at most {MAX_THREAD_COUNTS}")
    flags.add_argument("--profile", action="store_true", help="also cProfile our loop for 2 epochs")
    flags.add_argument("--profile-threads", type=integer(1, MAX_THREADS), default=1, help="torch threads for the profile (1: stable on a loaded machine)")
    args = flags.parse_args(argv)
    at_most(flags, "--threads", args.threads, MAX_THREAD_COUNTS)
    from lightning_modules.training import quiet_lightning

    quiet_lightning()
    epochs, repeats = (2, 1) if args.quick else (args.epochs, args.repeats)
    split = load_mnist_split(3000, 1000) if args.quick else load_mnist_split()
    print(f"# training throughput: MLP 784-{'-'.join(map(str, HIDDEN))}-10, batch {BATCH}, Adam {LR}, "
          f"{len(split.y_train)} train / {len(split.y_val)} val rows, {epochs} epochs per run (first excluded), {repeats} repeat(s)")
    print(machine_line() + " (before)")
    results = measure(split, epochs, repeats, args.threads)
    print(report(results, args.threads))
    print(machine_line() + " (after)")
    if args.profile:
        torch.set_num_threads(args.profile_threads)
        print()
        print(f"profile with {args.profile_threads} torch thread(s), load average {load_average()}")
        print(profile(split, 2))
    return 0


if __name__ == "__main__":
    cli(main)
