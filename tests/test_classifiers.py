"""The network and its Lightning module: shapes, metrics against manual computation, checkpoints, snapshots, learning."""

from __future__ import annotations

import signal
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.classifier import TRAINED_SECONDS, Classifier, _compute_and_reset
from lightning_modules.data.format import N_CLASSES
from lightning_modules.data.split import DataSplit
from lightning_modules.errors import TrainingInterrupted
from lightning_modules.hyperparams import CLASSIFIERS, OPTIMIZERS, HyperParams
from lightning_modules.metric_names import METRIC_DECIMALS, MONITOR
from lightning_modules.network import build_network
from lightning_modules.training import build_trainer, evaluate, fit

LINEAR = HyperParams("linear", (), 0.0, 3e-3, "adam", 0.0, 128)
DNN = HyperParams("dnn", (64, 32), 0.1, 2e-3, "adam", 0.0, 64)


def test_network_shapes_follow_the_hyperparameters() -> None:
    net = build_network(784, (300, 100, 50), 10, dropout=0.3)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 300), (300, 100), (100, 50), (50, 10)]
    assert sum(isinstance(m, torch.nn.Dropout) for m in net) == 3
    assert build_network(784, (), 10, 0.0)[0].out_features == 10  # the linear model: no hidden layer
    assert Classifier(DNN)(torch.rand(5, 784)).shape == (5, 10)
    assert Classifier(LINEAR).first_layer.weight.shape == (10, 784)
    assert Classifier(DNN).first_layer.weight.shape == (64, 784)


def test_the_settings_name_the_same_classifiers_and_optimizers_as_the_model() -> None:
    from typing import get_args

    from search.settings_space import Classifier as ClassifierName
    from search.settings_space import Optimizer

    assert set(get_args(ClassifierName)) == set(CLASSIFIERS) and set(get_args(Optimizer)) == set(OPTIMIZERS)


def test_linear_params_drop_dnn_only_settings() -> None:
    hp = HyperParams("linear", (128,), 0.4, 1e-3, "sgd", 0.0, 32)
    assert hp.hidden_units == () and hp.dropout == 0.0
    with pytest.raises(ValueError, match="optimizer"):
        HyperParams("dnn", (64,), 0.0, 1e-3, "rmsprop", 0.0, 32)


def test_logged_metrics_match_a_manual_computation(tiny_split: DataSplit) -> None:
    result = fit(DNN, tiny_split, seed=3, max_epochs=1)
    model = result.model.eval()
    with torch.no_grad():
        logits = model(tiny_split.x_val)
    manual_acc = (logits.argmax(1) == tiny_split.y_val).float().mean().item()
    manual_loss = F.cross_entropy(logits, tiny_split.y_val).item()
    row = result.history[-1]
    assert row["val/acc"] == pytest.approx(manual_acc, abs=1e-6)
    assert row["val/loss"] == pytest.approx(manual_loss, rel=1e-4)
    # log loss is -mean log p(true class) of the softmax probabilities, not of hard predictions
    probs = logits.softmax(1)
    assert row["val/loss"] == pytest.approx(-probs[torch.arange(len(probs)), tiny_split.y_val].log().mean().item(), rel=1e-4)

    evaluation = evaluate(model, tiny_split.x_test, tiny_split.y_test, batch_size=128)
    with torch.no_grad():
        test_pred = model(tiny_split.x_test).argmax(1)
    assert evaluation.n_samples == len(tiny_split.y_test)
    assert evaluation.confusion.sum(1).tolist() == torch.bincount(tiny_split.y_test, minlength=10).tolist()
    assert evaluation.confusion.trace().item() == (test_pred == tiny_split.y_test).sum().item()
    assert evaluation.accuracy == pytest.approx(evaluation.confusion.trace().item() / evaluation.n_samples, abs=1e-6)
    manual = torch.zeros(10, 10, dtype=torch.long)
    for true, pred in zip(tiny_split.y_test.tolist(), test_pred.tolist()):
        manual[true, pred] += 1
    assert torch.equal(evaluation.confusion.cpu().long(), manual)


def test_history_has_one_row_per_epoch_with_train_and_val(tiny_split: DataSplit) -> None:
    result = fit(LINEAR, tiny_split, seed=0, max_epochs=2)
    assert [row["epoch"] for row in result.history] == [0, 1]
    steps_per_epoch = -(-len(tiny_split.y_train) // LINEAR.batch_size)
    assert [row["step"] for row in result.history] == [steps_per_epoch, 2 * steps_per_epoch]
    for row in result.history:
        assert set(row) == {"epoch", "step", "train/loss", "train/acc", "val/loss", "val/acc"}
        assert 0 <= row["val/acc"] <= 1 and row["train/loss"] > 0
    assert result.metrics[MONITOR] == result.history[-1]["val/acc"]


def test_same_seed_same_metrics(tiny_split: DataSplit) -> None:
    first = fit(DNN, tiny_split, seed=11, max_epochs=2)
    second = fit(DNN, tiny_split, seed=11, max_epochs=2)
    other = fit(DNN, tiny_split, seed=12, max_epochs=2)
    for a, b in zip(first.history, second.history):
        for key in ("train/loss", "val/loss", "val/acc"):
            assert a[key] == pytest.approx(b[key], abs=1e-6)
    assert torch.equal(first.model.first_layer.weight, second.model.first_layer.weight)
    assert first.history[-1]["train/loss"] != other.history[-1]["train/loss"]


def test_snapshots_are_taken_at_the_requested_steps(tiny_split: DataSplit) -> None:
    result = fit(DNN, tiny_split, seed=0, max_epochs=2, snapshot_steps=(1, 5, 10_000))
    last_step = result.history[-1]["step"]
    assert sorted(result.snapshots) == [1, 5, last_step]  # 10,000 is never reached
    assert result.snapshots[1].shape == (64, 784)
    assert not torch.equal(result.snapshots[1], result.snapshots[last_step])  # weights moved
    assert torch.equal(result.snapshots[last_step], result.model.first_layer.weight.detach())


def test_checkpoint_rebuilds_the_model_without_arguments(tiny_split: DataSplit, tmp_path: Path) -> None:
    result = fit(DNN, tiny_split, seed=0, max_epochs=1)
    trainer = build_trainer(1)
    trainer.strategy.connect(result.model)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    restored = Classifier.load_from_checkpoint(path, weights_only=True).eval()
    assert restored.hp == DNN
    assert torch.allclose(restored(tiny_split.x_val), result.model.eval()(tiny_split.x_val))
    linear = fit(LINEAR, tiny_split, seed=0, max_epochs=1).model
    trainer = build_trainer(1)
    trainer.strategy.connect(linear)
    trainer.save_checkpoint(tmp_path / "linear.ckpt")
    assert Classifier.load_from_checkpoint(tmp_path / "linear.ckpt", weights_only=True).hp == LINEAR


def test_a_checkpoint_with_the_hyperparameters_stored_flat_still_loads(tiny_split: DataSplit, tmp_path: Path) -> None:
    """Exports written before `Classifier(hp)` stored the seven values at the top level."""
    model = fit(DNN, tiny_split, seed=0, max_epochs=1).model
    trainer = build_trainer(1)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(tmp_path / "new.ckpt", weights_only=True)
    checkpoint = torch.load(tmp_path / "new.ckpt", weights_only=True)
    checkpoint["hyper_parameters"] = dict(checkpoint["hyper_parameters"]["hp"])
    torch.save(checkpoint, tmp_path / "old.ckpt")
    restored = Classifier.load_from_checkpoint(tmp_path / "old.ckpt", weights_only=True).eval()
    assert restored.hp == DNN
    assert torch.equal(restored.net[0].weight, model.net[0].weight)


@pytest.mark.slow
def test_dnn_learns_mnist_from_5000_rows_in_two_epochs(small_split: DataSplit) -> None:
    hp = HyperParams("dnn", (256,), 0.1, 2e-3, "adam", 0.0, 32)
    result = fit(hp, small_split, seed=0, max_epochs=2)
    assert len(small_split.y_train) == 5000
    assert result.metrics[MONITOR] >= 0.90


def test_target_accuracy_ends_training_early(small_split: DataSplit) -> None:
    hp = HyperParams("dnn", (128,), 0.0, 2e-3, "adam", 0.0, 64)
    result = fit(hp, small_split, seed=0, max_epochs=6, target_accuracy=0.8)
    assert result.epochs < 6
    assert result.metrics[MONITOR] >= 0.8


class SigtermAfterBatch(pl.Callback):
    """Delivers SIGTERM right after a batch ends: the moment Lightning itself acts on it."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == 2:
            signal.raise_signal(signal.SIGTERM)


def test_sigterm_between_batches_is_a_stop_request_not_a_clean_exit(tiny_split: DataSplit) -> None:
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # the runner's handler stands here
    try:
        with pytest.raises(TrainingInterrupted):
            fit(DNN, tiny_split, seed=0, max_epochs=2, callbacks=[SigtermAfterBatch()])
    finally:
        signal.signal(signal.SIGTERM, previous)


class LearningRates(pl.Callback):
    def __init__(self) -> None:
        self.rates: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rates.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_learning_rate_falls_along_a_cosine_over_the_fits_epochs(tiny_split: DataSplit) -> None:
    seen = LearningRates()
    fit(DNN, tiny_split, seed=0, max_epochs=4, callbacks=[seen])
    # epoch e of E trains at lr * (1 + cos(pi * e / E)) / 2
    assert seen.rates == pytest.approx([DNN.learning_rate * f for f in (1.0, 0.8535534, 0.5, 0.1464466)], rel=1e-5)


class InterruptAtEpoch(pl.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise TrainingInterrupted("test stop")


def test_a_fit_resumed_from_its_epoch_checkpoint_ends_as_the_uninterrupted_one(tiny_split: DataSplit, tmp_path: Path) -> None:
    from lightning_modules.callbacks import EpochCheckpoint

    checkpoint = tmp_path / "trial.ckpt"
    whole = fit(DNN, tiny_split, seed=5, max_epochs=4)
    with pytest.raises(TrainingInterrupted):
        fit(DNN, tiny_split, seed=5, max_epochs=4, callbacks=[EpochCheckpoint(checkpoint), InterruptAtEpoch(2)])
    before = torch.load(checkpoint, map_location="cpu", weights_only=True)[TRAINED_SECONDS]
    resumed = fit(DNN, tiny_split, seed=5, max_epochs=4, resume_from=checkpoint)
    assert len(resumed.history) == 4
    # the report's "training time" was the resumed fit's alone: the checkpoint's epochs count too
    assert 0 < before < resumed.seconds
    for a, b in zip(whole.history, resumed.history):  # same data order, dropout and learning rates
        assert a == pytest.approx(b, abs=1e-6)
    assert torch.equal(whole.model.first_layer.weight, resumed.model.first_layer.weight)


class OptimizerKernels(pl.Callback):
    """The (fused, foreach) flags of each optimizer group once training starts (after a restore)."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seen = [(group["fused"], group["foreach"]) for group in trainer.optimizers[0].param_groups]


def test_a_checkpoint_written_by_fused_adam_resumes_on_the_cpus_kernel(tiny_split: DataSplit, tmp_path: Path) -> None:
    """A GPU trial's checkpoint stores fused=True in its optimizer groups and torch keeps a loaded
    group's flags: retried on a CPU it went on with fused CPU Adam, whose sums differ from foreach's."""
    from lightning_modules.callbacks import EpochCheckpoint

    checkpoint = tmp_path / "trial.ckpt"
    with pytest.raises(TrainingInterrupted):
        fit(DNN, tiny_split, seed=5, max_epochs=6, callbacks=[EpochCheckpoint(checkpoint), InterruptAtEpoch(1)])
    on_cpu = fit(DNN, tiny_split, seed=5, max_epochs=6, resume_from=checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    for group in saved["optimizer_states"][0]["param_groups"]:
        group.update(fused=True, foreach=None)  # what fused Adam on a GPU writes
    written_on_gpu = tmp_path / "gpu.ckpt"
    torch.save(saved, written_on_gpu)
    kernels = OptimizerKernels()
    resumed = fit(DNN, tiny_split, seed=5, max_epochs=6, resume_from=written_on_gpu, callbacks=[kernels])
    assert kernels.seen == [(None, True)]
    assert torch.equal(on_cpu.model.first_layer.weight, resumed.model.first_layer.weight)


def test_the_loss_mean_is_meanmetrics_bit_for_bit_with_no_host_read_per_step() -> None:
    """torchmetrics' MeanMetric checked every update for NaN with `nans.any()`, a host read that
    stalls a GPU once per batch; BatchMean keeps its arithmetic (every recorded loss unchanged)."""
    from torchmetrics import MeanMetric

    from lightning_modules.classifier import BatchMean

    generator = torch.Generator().manual_seed(0)
    ours, reference = BatchMean(), MeanMetric()
    for _ in range(500):
        value, weight = torch.rand((), generator=generator) * 3, int(torch.randint(1, 129, (), generator=generator))
        ours.update(value, weight=weight)
        reference.update(value, weight=weight)
    assert torch.equal(ours.compute(), reference.compute())
    ours.update(torch.tensor(float("nan")), weight=7)  # a diverged batch: MeanMetric dropped it, with a warning
    assert torch.isnan(ours.compute())


def test_history_values_are_rounded_and_val_accuracy_is_correct_over_total(tiny_split: DataSplit) -> None:
    """Issue #17: optuna-dashboard showed float32 noise (0.9519000053405762); each value is now
    rounded where it is computed, and accuracy is the decimal correct/total, not float32's."""
    result = fit(DNN, tiny_split, seed=4, max_epochs=2)
    for row in result.history:
        for key, value in row.items():
            assert value == round(value, METRIC_DECIMALS), (key, value)
    with torch.no_grad():
        predicted = result.model.eval()(tiny_split.x_val).argmax(1)
    correct, total = int((predicted == tiny_split.y_val).sum()), len(tiny_split.y_val)
    assert 0 < correct < total  # a value float32 cannot hold exactly, so float32 noise would show
    assert result.history[-1][MONITOR] == round(correct / total, METRIC_DECIMALS)
    assert repr(result.history[-1][MONITOR]) == repr(correct / total)  # 200 rows: a 3-decimal number


def test_accuracy_is_rounded_from_its_counts_not_from_float32() -> None:
    """3287 of 3429 (the validation size of 17,143 rows at 0.2) is 0.95858851: float32's quotient,
    0.95858848, rounds to 0.958588; the counts round to 0.958589."""
    labels = torch.arange(3429) % N_CLASSES
    predicted = labels.clone()
    predicted[3287:] = (predicted[3287:] + 1) % N_CLASSES  # the last 142 rows wrong
    accuracy = Classifier(LINEAR).val_acc
    accuracy.update(F.one_hot(predicted, N_CLASSES).float(), labels)
    assert float(accuracy.compute()) != 3287 / 3429  # the float32 quotient this guards against
    assert _compute_and_reset(accuracy) == 0.958589 == round(3287 / 3429, METRIC_DECIMALS)
    assert accuracy.update_count == 0  # reset for the next epoch


def test_trial_value_intermediate_values_and_history_agree_exactly(tiny_split: DataSplit) -> None:
    """Optuna's pruning callback reads the logged metric, the objective returns the history's: one
    number in the storage, and a refit matches it within reproduce's tolerance (exactly, here)."""
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from search.export.reproduce import Reproduction

    histories: list[list[dict[str, float]]] = []

    def objective(trial: optuna.Trial) -> float:
        result = fit(DNN, tiny_split, seed=7, max_epochs=2, callbacks=[PyTorchLightningPruningCallback(trial, monitor=MONITOR)])
        histories.append(result.history)
        return result.metrics[MONITOR]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    study.optimize(objective, n_trials=1)
    trial, history = study.trials[0], histories[0]
    recorded = [row[MONITOR] for row in history]
    assert [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)] == recorded
    assert trial.value == recorded[-1] == round(recorded[-1], METRIC_DECIMALS)
    refit = fit(DNN, tiny_split, seed=7, max_epochs=2)
    reproduction = Reproduction(trial.number, list(trial.intermediate_values.values()), [row[MONITOR] for row in refit.history])
    assert reproduction.matches and reproduction.reproduced == reproduction.recorded


@pytest.mark.parametrize(("max_epochs", "state", "epochs"), [(1, "COMPLETE", 1), (2, "PRUNED", 1), (3, "PRUNED", 1)])
def test_the_pruner_is_never_asked_at_the_last_epoch(tiny_split: DataSplit, max_epochs: int, state: str, epochs: int) -> None:
    """A pruner that prunes every trial at every epoch: before the last epoch it stops the trial,
    at the last one the trial, trained in full, completes (a median pruner with --max-epochs 1
    marked fully trained trials pruned, and they dropped out of the best and the target)."""
    import optuna

    from search.trial_callbacks import PruneBeforeTheLastEpoch

    def objective(trial: optuna.Trial) -> float:
        return fit(DNN, tiny_split, seed=7, max_epochs=max_epochs, callbacks=[PruneBeforeTheLastEpoch(trial)]).metrics[MONITOR]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=1.0))  # below 1.0: pruned
    study.optimize(objective, n_trials=1, catch=())
    trial = study.trials[0]
    assert trial.state.name == state and len(trial.intermediate_values) == epochs


def test_a_model_file_that_cannot_be_written_is_an_os_error_naming_it(tmp_path: Path) -> None:
    """safetensors raised its own error on a full disk ("I/O error: No space left on device"),
    which no caller's `except OSError` caught: `search.export` onto a full disk ended in a
    traceback. A file-size limit stands in for the full disk (EFBIG rather than ENOSPC)."""
    import errno
    import resource

    from lightning_modules.model_file import save_model_file

    path = tmp_path / "model.safetensors"
    before_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of ending the process
    before_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, before_limit[1]))
    try:
        with pytest.raises(OSError) as caught:
            save_model_file(Classifier(DNN), path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, before_limit)
        signal.signal(signal.SIGXFSZ, before_signal)
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(path), caught.value
