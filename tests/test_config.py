"""Settings: defaults, file and CLI precedence, and one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search.config import DEFAULT_CONFIG, ConfigError, Settings, load_settings, settings_as_dict


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


def test_the_default_yaml_is_plain_yaml() -> None:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    assert set(raw) == set(Settings.model_fields)
