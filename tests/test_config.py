"""Settings: defaults, file and CLI precedence, and one-line errors that name the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_modules.errors import UserInputError
from search.settings import Settings, settings_as_dict
from search.settings_file import DEFAULT_CONFIG, ConfigError, load_settings


def test_default_yaml_spells_out_the_built_in_defaults() -> None:
    assert load_settings(DEFAULT_CONFIG) == Settings()
    assert Settings().study.target_accuracy == 0.95 and Settings().study.name == "mnist"


def test_cli_overrides_file_overrides_defaults(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("study: {trials: 7, seed: 3}\npruner: {name: hyperband}\n")
    settings = load_settings(path, {"study": {"trials": 9}})
    assert settings.study.trials == 9  # CLI wins over the file
    assert settings.study.seed == 3  # the file wins over the default
    assert settings.pruner.name == "hyperband"
    assert settings.study.name == "mnist"  # default kept
    assert load_settings(path, {"study": {"target_accuracy": None}}).study.target_accuracy is None


def test_settings_round_trip_through_their_dict_form() -> None:
    settings = load_settings(None, {"space": {"optimizer": ["sgd"]}, "baseline": {"optimizer": "sgd"}})
    assert Settings.model_validate(settings_as_dict(settings)) == settings


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("studdy: {trials: 3}\n", ["studdy", "unknown key"]),
        ("study: {trails: 3}\n", ["study.trails", "unknown key"]),
        ("study: {trials: many}\n", ["study.trials", "integer", "many"]),
        ("study: {trials: 0}\n", ["study.trials", "greater than 0"]),
        ("space: {units: {low: 512, high: 64}}\n", ["space.units", "low (512) is greater than high (64)"]),
        ("space: {learning_rate: {low: -0.1, high: 0.1}}\n", ["space.learning_rate", "positive"]),
        ("space: {optimizer: []}\n", ["space.optimizer", "at least 1"]),
        ("space: {classifier: [linear, cnn]}\n", ["space.classifier", "cnn"]),
        ("space: {hidden_layers: {low: 1, high: 6}}\n", ["space.hidden_layers", "at most 4"]),
        ("space: {dropout: {low: 0.0, high: 1.5}}\n", ["space.dropout", "[0, 1)"]),
        ("pruner: {name: asha}\n", ["pruner.name", "asha"]),
        ("study: {target_accuracy: 1.5}\n", ["study.target_accuracy", "1.5"]),
        ("baseline: {learning_rate: 0.5}\n", ["baseline.learning_rate", "outside space.learning_rate"]),
        ("study: [1, 2]\n", ["study", "valid dictionary"]),
        ("study: {trials: 3\n", ["not valid YAML", "line"]),
        ("- just\n- a list\n", ["mapping"]),
        ("study: {heartbeat_seconds: 10, stale_after_seconds: 5}\n", ["stale_after_seconds (5)", "twice heartbeat_seconds"]),
        ("training: {snapshot_steps: [-1]}\n", ["training.snapshot_steps", "at least 1"]),
        ("study: {storage: ''}\n", ["study.storage", "at least 1 character"]),
        ("study: {workers: 1000}\n", ["study.workers", "less than or equal to 64"]),
        ("study: {seed: 4294967295}\n", ["study.seed", "less than or equal to 2147483647"]),
        ("study: {name: \"a\\0b\"}\n", ["study.name", "control characters"]),
        ("study: {name: " + "x" * 300 + "}\n", ["study.name", "at most 100 characters"]),
        ("study: {trials: 3}\nstudy: {trials: 4}\n", ["repeats the key 'study'", "line 2"]),
        ("a: &x [1, 2]\nb: *x\n", ["alias", "line 2"]),
        ("training:\n  max_epochs: 2\n  <<: {max_epochs: 3}\n", ["merge key (<<)", "line 3", "write the keys out"]),
        ("x: " + "[" * 50 + "]" * 50 + "\n", ["nests deeper than"]),
        ("study: 5\n", ["study", "valid dictionary"]),
        # a NaN bound passed every comparison, then failed the first trial and blocked the resume
        ("space: {dropout: {low: .nan, high: 0.5}}\n", ["space.dropout.low", "finite number"]),
        ("space: {learning_rate: {low: 1.0e-4, high: .inf, log: true}}\n", ["space.learning_rate.high", "finite number"]),
        ("space: {weight_decay: {low: -.inf, high: 0.1}}\n", ["space.weight_decay.low", "finite number"]),
        ("space: {learning_rate: {low: 1e-4, high: 1e999}}\n", ["space.learning_rate.high", "finite number"]),
        # a rung past the last epoch never prunes
        ("pruner: {name: hyperband, min_resource: 8}\n", ["pruner.min_resource 8 is past the last epoch index (7)", "never prune", "at least 10"]),
        ("pruner: {name: successive_halving}\ntraining: {max_epochs: 1}\n", ["min_resource 1", "index (0)"]),
        ("pruner: {n_warmup_steps: 20}\n", ["pruner.n_warmup_steps 20", "median pruner would never prune"]),
        # over 4,300 digits Python refuses to convert or print an integer: a ValueError traceback
        ("study:\n  seed: " + "9" * 5000 + "\n", ["5,000-character number at line 2", "no setting takes"]),
        ("study:\n  seed: 0b" + "1" * 14300 + "\n", ["14,302-character number at line 2"]),
    ],
)
def test_invalid_config_is_one_line_naming_the_key(tmp_path: Path, content: str, words: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_missing_config_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert load_settings(path) == Settings()


def test_the_default_yaml_is_plain_yaml_and_names_every_key() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert set(raw) == set(Settings.model_fields)
    for section, model in Settings.model_fields.items():
        annotation = model.annotation
        if hasattr(annotation, "model_fields"):
            assert set(raw[section]) == set(annotation.model_fields), section  # every default spelled out


def test_every_settings_field_has_a_description() -> None:
    for section, field in Settings.model_fields.items():
        model = field.annotation
        fields = model.model_fields.items() if hasattr(model, "model_fields") else [(section, field)]
        for name, sub in fields:
            assert sub.description, f"{section}.{name} has no description (the --help text and the docs read it)"


def test_a_bad_section_is_reported_even_when_a_flag_sets_a_key_in_it(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("study: 5\n")
    with pytest.raises(ConfigError, match="study"):
        load_settings(path, {"study": {"trials": 3}})


@pytest.mark.parametrize(
    ("content", "overrides", "words"),
    [
        ('study: {trials: "ten"}\n', {"study": {"trials": 1}}, ["study.trials", "'ten'"]),
        ("study: {target_accuracy: .nan}\n", {"study": {"target_accuracy": None}}, ["study.target_accuracy", "nan"]),
        ("training: {max_epochs: 1.5}\n", {"training": {"max_epochs": 1}}, ["training.max_epochs", "1.5"]),
        ("training: {snapshot_steps: [0]}\n", {"training": {"snapshot_steps": [5]}}, ["training.snapshot_steps", "at least 1"]),
    ],
)
def test_a_bad_value_a_flag_overrides_is_still_a_bad_file(tmp_path: Path, content: str, overrides: dict, words: list[str]) -> None:
    """The flag's value won and the file's was never read, so `trials: "ten"` passed as a valid file."""
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_settings(path, overrides)
    assert str(error.value).startswith(f"invalid config in {path}: ") and all(w in str(error.value) for w in words), error.value


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--trials", "0"], ["--trials", "greater than 0", "(got 0)"]),
        (["--target-accuracy", "2"], ["--target-accuracy", "(got 2.0)"]),
        (["--max-epochs", "2000"], ["--max-epochs", "(got 2000)"]),
    ],
)
def test_a_bad_flag_value_names_the_flag_not_the_config_file(tmp_path: Path, argv: list[str], words: list[str]) -> None:
    """`--config empty.yaml --trials 0` said "invalid config in empty.yaml: study.trials": the file
    held nothing; the value came from the flag."""
    from search.run import parse_settings

    path = tmp_path / "empty.yaml"
    path.write_text("")
    for config in ([], ["--config", str(path)]):
        with pytest.raises(ConfigError) as error:
            parse_settings([*config, *argv])
        assert str(error.value).startswith("invalid config option: ") and str(path) not in str(error.value), error.value
        assert all(word in str(error.value) for word in words), error.value


@pytest.mark.parametrize("name", ["exp:v2@gpu", "lr 1:10@bs64", "a@b"])
def test_a_name_with_a_colon_and_an_at_is_a_name_not_a_url(name: str) -> None:
    """Only a URL (a scheme's '://') with a password is refused as a study name."""
    assert load_settings(None, {"study": {"name": name}, "warm_start": {"study": name}}).study.name == name


def test_a_file_whose_values_fit_only_with_the_flags_is_valid(tmp_path: Path) -> None:
    """A check across fields (a pruner rung past the default 8 epochs) is judged on the merged settings."""
    path = tmp_path / "late.yaml"
    path.write_text("pruner: {name: successive_halving, min_resource: 10}\n")
    with pytest.raises(ConfigError, match="min_resource"):
        load_settings(path)
    assert load_settings(path, {"training": {"max_epochs": 20}}).pruner.min_resource == 10


def test_a_billion_laughs_config_is_refused_at_once(tmp_path: Path) -> None:
    """562 bytes of nested aliases once ran for minutes and took gigabytes."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        lines.append(f"{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="alias") as caught:
        load_settings(path)
    assert len(str(caught.value)) < 300


def test_an_oversized_config_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * 10_000)
    with pytest.raises(ConfigError, match="at most"):
        load_settings(path)


def test_a_long_bad_value_is_quoted_short(tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text("study: {trials: " + "9" * 5000 + "x}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert len(str(caught.value)) < 400 and "\n" not in str(caught.value)


def test_the_first_dnn_is_enqueued_after_the_baseline_and_only_where_it_fits(tmp_path: Path) -> None:
    """Trial 1 is a standard MLP whatever the seed; a narrowed space turns the default off (and
    records that), while a first_dnn the user wrote outside the space is refused in one line."""
    import optuna

    from helpers import writer_storage
    from search.study import open_study

    study = open_study(load_settings(None, {"study": {"name": "first"}}), writer_storage(f"sqlite:///{tmp_path / 'f.db'}")).study
    queued = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(optuna.trial.TrialState.WAITING,))]
    assert [q["classifier"] for q in queued] == ["linear", "dnn"]
    assert (queued[1]["units_l1"], queued[1]["units_l2"], queued[1]["dropout"]) == (512, 512, 0.2)

    narrowed = load_settings(None, {"space": {"units": {"low": 16, "high": 32}}})
    assert not narrowed.first_dnn.enabled and not settings_as_dict(narrowed)["first_dnn"]["enabled"]
    assert Settings.model_validate(settings_as_dict(narrowed)) == narrowed
    with pytest.raises(ConfigError, match=r"first_dnn.units 512 lies outside space.units \[16, 32\].*first_dnn.enabled: false"):
        load_settings(None, {"space": {"units": {"low": 16, "high": 32}}, "first_dnn": {"dropout": 0.1}})
    assert not load_settings(None, {"space": {"classifier": ["linear"]}}).first_dnn.enabled


def test_an_exponent_without_a_dot_is_a_number(tmp_path: Path) -> None:
    """YAML 1.1 read `1e-3` as the string "1e-3", and the settings refused it ("Input should be a
    valid number"): a user has to know to write 1.0e-3."""
    path = tmp_path / "exp.yaml"
    path.write_text("space: {learning_rate: {low: 1e-4, high: 1E-1}, weight_decay: {low: 1e-8, high: 1.0e-3}}\nstudy: {name: 1e5, timeout: 6e2}\n")
    settings = load_settings(path, {})
    assert settings.study.name == "1e5" and settings.study.timeout == 600.0  # a name stays a name
    assert (settings.space.learning_rate.low, settings.space.learning_rate.high) == (1e-4, 1e-1)
    assert (settings.space.weight_decay.low, settings.space.weight_decay.high) == (1e-8, 1e-3)


def test_a_study_recorded_before_a_new_check_is_still_read(tmp_path: Path) -> None:
    """The pruner check came after studies that break it were made: their recorded settings must
    still be read (export, reproduce), though a new run with them is refused."""
    import optuna

    from search import record

    raw = Settings().model_dump(mode="json")
    raw["pruner"] = {**raw["pruner"], "name": "successive_halving", "min_resource": 1}
    raw["training"] = {**raw["training"], "max_epochs": 1}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    study.set_user_attr(record.SETTINGS, raw)
    assert record.study_settings(study).pruner.min_resource == 1
    path = tmp_path / "c.yaml"
    path.write_text("pruner: {name: successive_halving}\ntraining: {max_epochs: 1}\n")
    with pytest.raises(ConfigError, match="never prune"):
        load_settings(path)


@pytest.mark.parametrize("key", ["source", "data_dir"])
def test_a_url_as_data_is_refused_with_its_password_masked(key: str, tmp_path: Path) -> None:
    """`data.source: https://user:pw@host/x.csv` in a config file became the path
    `https:/user:pw@host/x.csv`, and "file not found" quoted the password."""
    path = tmp_path / "c.yaml"
    path.write_text(f"data: {{{key}: 'https://user:Zq7Xdatapw@example.com/mnist.csv'}}\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert f"data.{key}: is a URL, and data is read from files" in str(error.value) and "Zq7Xdatapw" not in str(error.value), error.value


def test_a_config_file_is_capped_by_the_bytes_read_not_its_reported_size() -> None:
    """stat gives /proc/kallsyms 0 bytes: its 5 MB were read and parsed for 3 s before "not valid YAML"."""
    kallsyms = Path("/proc/kallsyms")
    try:
        with kallsyms.open("rb") as stream:
            if len(stream.read(70_000)) <= 65_536 or kallsyms.stat().st_size:
                pytest.skip("/proc/kallsyms here is not a file over the cap that stat calls empty")
    except OSError as error:
        pytest.skip(f"/proc/kallsyms cannot be read here ({error.strerror})")
    with pytest.raises(ConfigError, match=r"holds more than 65,536 bytes \(its reported size: 0\); a config file may have at most 65,536"):
        load_settings(kallsyms)


def test_a_config_file_grown_after_its_size_was_checked_is_still_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that grows between the size check and the read: stat (and fstat) report 10 bytes, the read finds 100 KB."""
    import os
    import stat

    path = tmp_path / "grows.yaml"
    path.write_text("# padding\n" * 10_000)

    def small(real: Callable[..., os.stat_result]) -> Callable[..., os.stat_result]:
        """os.stat or os.fstat, reporting a regular file's size as it was when checked."""

        def reported(*args: Any, **kwargs: Any) -> os.stat_result:
            result = real(*args, **kwargs)
            return os.stat_result((*result[:6], 10, *result[7:10])) if stat.S_ISREG(result.st_mode) else result

        return reported

    with monkeypatch.context() as patched, pytest.raises(ConfigError) as error:
        patched.setattr(os, "stat", small(os.stat))
        patched.setattr(os, "fstat", small(os.fstat))
        load_settings(path)
    assert str(error.value) == f"config file {path} holds more than 65,536 bytes (its reported size: 10); a config file may have at most 65,536"


def test_a_config_file_that_is_not_utf8_names_the_byte_and_the_fix(tmp_path: Path) -> None:
    """Python's message was cut to "(... invalid )" and never said to save the file as UTF-8."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes("study:\n  name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(error.value) == f"config file {path} is not UTF-8 text: byte 0xe9 at line 2 (byte offset 18) cannot be decoded; save the file as UTF-8"


def test_an_empty_config_path_is_named_empty_not_the_current_folder(tmp_path: Path) -> None:
    """`--config ''` became Path("."), "config file . is not a regular file": nothing said the path was empty."""
    with pytest.raises(ConfigError) as error:
        load_settings("")
    assert str(error.value) == "--config is empty; pass the path of a YAML file, or leave --config out for the built-in defaults"
    with pytest.raises(ConfigError, match=f"config file {tmp_path} is a folder; pass a YAML file to --config"):
        load_settings(tmp_path)


def test_a_config_path_under_the_home_folder_or_too_long_is_read_or_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--config '~/x.yaml'` was "not found" where --data and --artifact-store read ~ as the home
    folder; a 5,000-byte name was cut before its reason ("config file /tmp/aaaa... (cut ...)")."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "x.yaml").write_text("study: {trials: 7}\n")
    assert load_settings("~/x.yaml").study.trials == 7
    with pytest.raises(UserInputError, match=r"^--config '/tmp/a+'\.\.\. holds a name of 5000 bytes .*; pass a shorter path$"):
        load_settings("/tmp/" + "a" * 5000)


def test_repeated_snapshot_steps_are_refused_but_a_recorded_study_with_them_still_loads(tmp_path: Path) -> None:
    """[10, 10] took one snapshot and the export said "steps 10, 10 were asked for"; repeated batch
    sizes were refused already. A study that recorded repeated steps still exports."""
    from search.settings import RECORDED

    path = tmp_path / "steps.yaml"
    path.write_text("training: {snapshot_steps: [10, 100, 10, 100, 1000]}\n")
    with pytest.raises(ConfigError) as error:
        load_settings(path)
    assert str(error.value) == f"invalid config in {path}: training.snapshot_steps: lists 10, 100 more than once; name each once (got [10, 100, 10, 100, 1000])"
    raw = Settings().model_dump(mode="json")
    raw["training"] = {**raw["training"], "snapshot_steps": [10, 10]}
    assert Settings.model_validate(raw, context=RECORDED).training.snapshot_steps == [10, 10]
