"""Settings from a YAML file and command-line overrides: defaults <- file <- flags, validated together.

The file is untrusted input: it is bounded in size and nesting depth, may not use YAML aliases
(a few hundred bytes of nested aliases expand to gigabytes) or repeat a key, and every error
becomes one short line that names the key.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lightning_modules.errors import UserInputError, check_path_length, expand_home
from search.redaction import redact, redact_value
from search.settings import Settings, field_info

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"
MAX_CONFIG_BYTES = 64 * 1024
MAX_CONFIG_DEPTH = 8  # the deepest key of the settings is three levels down
MAX_SHOWN = 60  # characters of a bad value quoted in an error
MAX_INT_CHARS = 100  # the largest setting (a seed) has 10 digits


class ConfigError(UserInputError):
    """An invalid config file or command-line value."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases, merge keys, duplicate keys or deep nesting."""

    def __init__(self, stream: str, origin: str) -> None:
        super().__init__(stream)
        self.origin = origin
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(f"config file {self.origin} uses a YAML alias at line {line}; write the value out instead")
        self.depth += 1
        if self.depth > MAX_CONFIG_DEPTH:
            line = self.peek_event().start_mark.line + 1
            raise ConfigError(f"config file {self.origin} nests deeper than {MAX_CONFIG_DEPTH} levels at line {line}")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # was "not valid YAML": it is, only not taken
                raise ConfigError(
                    f"config file {self.origin} uses a YAML merge key (<<) at line {key_node.start_mark.line + 1}; write the keys out instead"
                )
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)):
                continue  # unhashable keys: validation names them
            if key in seen:
                raise ConfigError(
                    f"config file {self.origin} repeats the key {_shown(key)} at line {key_node.start_mark.line + 1}; keep one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _bounded_int(loader: _BoundedLoader, node: Any) -> int:
    """A YAML integer of at most MAX_INT_CHARS characters: Python refuses to convert (or print)
    one of over 4,300 digits with a ValueError, which escaped as a traceback."""
    text = loader.construct_scalar(node)
    if len(text) > MAX_INT_CHARS:
        raise ConfigError(
            f"config file {loader.origin} has a {len(text):,}-character number at line {node.start_mark.line + 1}; "
            f"no setting takes more than {MAX_INT_CHARS} digits"
        )
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _bounded_int)

_EXPONENT = re.compile(r"[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)[eE][-+]?[0-9]+")


def exponent_floats(raw: Any, path: tuple[str, ...] = ()) -> Any:
    """`raw` with "1e-3" made a number where the setting is a float. YAML 1.1 (PyYAML) reads
    1e-3 as a string, a float needing a dot (1.0e-3), and the settings then said "Input should be
    a valid number"; read so everywhere, a study name like 1e5 became a number and was refused."""
    if isinstance(raw, dict):
        return {key: exponent_floats(value, (*path, key)) if isinstance(key, str) else value for key, value in raw.items()}
    if isinstance(raw, str) and _EXPONENT.fullmatch(raw):
        try:
            kind = field_info(path)[2]
        except (KeyError, AttributeError, IndexError):
            return raw  # not a settings field: validation names it
        return float(raw) if kind is float else raw
    return raw


def _shown(value: Any) -> str:
    """A bad value as an error quotes it: URL credentials masked first, then cut short (a cut
    made first could leave a password whose '@' was cut off unrecognised)."""
    text = repr(redact_value(value))
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def describe_invalid(error: ValidationError, origin: str, names: dict[tuple[str, ...], str] | None = None) -> str:
    """Pydantic's first complaint as one line: "invalid config <origin>: <key>: <why> (got <value>)",
    the key named as `names` has it (a flag, where the value came from one)."""
    return _describe_one(error.errors()[0], origin, names or {})


def _describe_one(first: Any, origin: str, names: dict[tuple[str, ...], str] | None = None) -> str:
    loc = tuple(str(part) for part in first["loc"])
    key = (names or {}).get(loc) or redact(".".join(loc))[:MAX_SHOWN]  # an unknown key may be a URL
    message = redact(first["msg"].removeprefix("Value error, "))
    if first["type"] == "extra_forbidden":
        message = "unknown key (check its spelling against configs/default.yaml)"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict) and "(got " not in message:
        message += f" (got {_shown(first['input'])})"  # unless the validator's message quotes it already
    return f"invalid config {origin}: {key + ': ' if key else ''}{message}"[:400]


def merge_settings(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Overrides win key by key; a file's section that is not a mapping stays, so it is reported."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        elif isinstance(value, dict) and key in merged:
            continue  # e.g. `study: 5` in the file: validation names it
        else:
            merged[key] = value
    return merged


def _config_path(path: Path | str) -> Path:
    """`path` as a Path, refused when empty: Path("") is Path("."), so `--config ''` was called
    "config file ." (a folder) and never said what had gone wrong. A leading ~ is the home folder,
    as for --data and --artifact-store; a path too long to open says so (its message was cut before
    the reason)."""
    if isinstance(path, str) and not path:
        raise ConfigError("--config is empty; pass the path of a YAML file, or leave --config out for the built-in defaults")
    check_path_length(path, "--config")
    return expand_home(path, "--config")


def _regular_file_status(descriptor: int, path: Path) -> os.stat_result:
    """The open file's status, refused unless a regular file under the cap by its reported size:
    a folder, a FIFO or a device (/dev/zero never ends) is not a config file."""
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
        kind = "a folder" if stat.S_ISDIR(status.st_mode) else "not a regular file"
        raise ConfigError(f"config file {path} is {kind}; pass a YAML file to --config")
    if status.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {status.st_size:,} bytes; a config file may have at most {MAX_CONFIG_BYTES:,}")
    return status


def _unreadable(path: Path, error: OSError) -> ConfigError:
    """An OSError as one line: its reason without Python's "[Errno 13] ...: 'path'" around it."""
    return ConfigError(f"config file {path} cannot be read ({error.strerror or type(error).__name__}); pass a readable YAML file to --config")


def _read_at_most(descriptor: int, limit: int) -> bytes:
    """Up to `limit` bytes, however few each read returns (a /proc file gives a page at a time)."""
    chunks: list[bytes] = []
    while limit > 0 and (chunk := os.read(descriptor, limit)):
        chunks.append(chunk)
        limit -= len(chunk)
    return b"".join(chunks)


def _read_capped(path: Path) -> bytes:
    """At most MAX_CONFIG_BYTES of a regular file, read from the one descriptor checked. The cap
    was the size stat reported: /proc/kallsyms (0 bytes by stat) was read and parsed whole, 5 MB
    for 3 s, as was a file that grew after the check. O_NONBLOCK: opening a FIFO never waits."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass an existing file to --config") from None
    except OSError as error:
        raise _unreadable(path, error) from None
    try:
        reported = _regular_file_status(descriptor, path).st_size
        data = _read_at_most(descriptor, MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise _unreadable(path, error) from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} holds more than {MAX_CONFIG_BYTES:,} bytes (its reported size: {reported:,}); "
            f"a config file may have at most {MAX_CONFIG_BYTES:,}"
        )
    return data


def _decoded(data: bytes, path: Path) -> str:
    """The file's text; a byte that is not UTF-8 named by line and offset. Python's own message was
    cut to "(... invalid )" and never said how to fix the file."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"config file {path} is not UTF-8 text: byte 0x{data[error.start]:02x} at line {line} (byte offset {error.start:,}) "
            "cannot be decoded; save the file as UTF-8"
        ) from None


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The raw mapping in a YAML config file; unreadable or non-mapping files are ConfigErrors."""
    path = _config_path(path)
    text = _decoded(_read_capped(path), path)
    loader = None
    try:
        loader = _BoundedLoader(text, str(path))  # the reader refuses non-printable characters here
        raw = loader.get_single_data()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix its syntax") from None
    finally:
        if loader is not None:
            loader.dispose()
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, not {type(raw).__name__}")
    return raw


def _overridden(loc: tuple[Any, ...], overrides: dict[str, Any]) -> bool:
    """Whether a flag sets the value at `loc` (a field's path; a list item's path ends in its index)."""
    node: Any = overrides
    for depth, part in enumerate(loc):
        if not isinstance(node, dict):
            return depth > 0  # a flag set the list this item is in
        if part not in node:
            return False
        node = node[part]
    return bool(loc) and not isinstance(node, dict)  # () or a section: a check across fields, not one value


def check_overridden_values(raw: dict[str, Any], overrides: dict[str, Any], origin: str) -> None:
    """A file's value that a flag overrides is never used, yet a file saying `trials: "ten"` is
    still a bad file: refused as if no flag were given. Only errors at the overridden fields
    count: a file whose values fit together only with the flags' (a pruner rung past the
    default epochs, with --max-epochs raising them) is valid."""
    if not raw or not overrides:
        return
    try:
        Settings.model_validate(raw)
    except ValidationError as error:
        bad = next((item for item in error.errors() if _overridden(tuple(item["loc"]), overrides)), None)
        if bad is not None:
            raise ConfigError(_describe_one(bad, origin)) from None


def load_settings(
    path: Path | str | None = None, overrides: dict[str, Any] | None = None, names: dict[tuple[str, ...], str] | None = None
) -> Settings:
    """Defaults <- config file <- command-line overrides (nested dicts), validated together; an
    error in a value a flag gave names the flag (`names`: settings key -> flag), not the file."""
    raw = exponent_floats(read_config_file(path)) if path is not None else {}
    origin = f"in {path}" if path is not None else "value"
    check_overridden_values(raw, overrides or {}, origin)
    try:
        return Settings.model_validate(merge_settings(raw, overrides or {}))
    except ValidationError as error:
        first = error.errors()[0]
        if names and _overridden(tuple(first["loc"]), overrides or {}):
            raise ConfigError(_describe_one(first, "option", names)) from None
        raise ConfigError(describe_invalid(error, origin)) from None
