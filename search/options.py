"""Command-line flags generated from the settings model: one table maps each flag to its key.

The help text of a flag is the settings field's description and default, so neither is
restated here; `overrides_from_args` turns parsed flags into the nested overrides that
`load_settings` merges over the config file. Imports nothing heavy: `--help` and every argument
error answer before torch is imported.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from lightning_modules.errors import one_line
from search.paths import DEFAULT_DB
from search.redaction import clip, secrets_in
from search.settings import field_info

URL_START = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a URL's scheme (RFC 3986): a path with '://' further in is a path


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block before an error; a user needs the one line that says what is wrong.

    Flags are taken whole: an abbreviation (`--max-epoch`) that works today would silently
    change meaning once another flag shares its prefix, in a user's script or a deploy recipe.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self._words = list(sys.argv[1:] if args is None else args)  # to mask their URLs' secrets in an error
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        shown = clip(message, 300, secrets_in(getattr(self, "_words", sys.argv[1:])))  # a URL given to the wrong flag
        print(f"error: {one_line(shown)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _optional(convert: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """A parser for `convert`'s values, or none/off/null for "no limit" or "never"."""

    def parse(value: str) -> Any:
        if value.lower() in ("none", "off", "null"):
            return None
        try:
            return convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} or 'none', got {clip(value, 40)!r}") from None

    return parse


optional_float = _optional(float, "a number")
optional_int = _optional(int, "a whole number")


@dataclass(frozen=True)
class Flag:
    """One settings field on the command line: `--trials` sets study.trials."""

    key: tuple[str, ...]
    flag: str = ""  # default: the field's name with dashes
    parse: Callable[[str], Any] | None = None  # default: from the default's type
    help: str = ""  # default: the field's description and default; set where the command's default differs
    none: str = "none"  # the word this flag takes for a config file's null (with a `parse` that takes one)

    @property
    def name(self) -> str:
        return self.flag or "--" + self.key[-1].replace("_", "-")

    @property
    def dest(self) -> str:
        return "_".join(self.key)


def _parser_for(kind: type) -> Callable[[str], Any]:
    if kind is bool:
        raise TypeError("booleans are store_true flags; give them a parse function")
    return kind if kind in (int, float) else str


def _help(flag: Flag) -> str:
    if flag.help:
        return flag.help.replace("%", "%%")
    default, description, _ = field_info(flag.key)
    if flag.parse is None:  # a plain string flag takes "null" literally (a file, a study named null): only a config file's null is none
        description = description.replace("(null: ", "(default: ")
    else:  # the flag's own word for null, and that it is the default where it is
        description = description.replace("(null: ", f"(default {flag.none}: " if default is None else f"({flag.none}: ")
    plain = default is not None and not isinstance(default, (bool, list, dict))
    shown = f" (default {default})" if plain else ""
    return f"{description}{shown}".replace("%", "%%")


def add_flags(parser: argparse.ArgumentParser, flags: Sequence[Flag]) -> None:
    """Add each flag with its type and its help taken from the settings field."""
    for flag in flags:
        _, _, kind = field_info(flag.key)
        parse = flag.parse or _parser_for(kind)
        parser.add_argument(
            flag.name, dest=flag.dest, metavar=flag.key[-1].upper(), type=parse, default=argparse.SUPPRESS, help=_help(flag)
        )


def overrides_from_args(args: argparse.Namespace, flags: Sequence[Flag]) -> dict[str, Any]:
    """The nested settings overrides of the flags given on this command line (and only those)."""
    overrides: dict[str, Any] = {}
    for flag in flags:
        if flag.dest not in vars(args):
            continue
        value = getattr(args, flag.dest)
        section = overrides
        for part in flag.key[:-1]:
            section = section.setdefault(part, {})
        section[flag.key[-1]] = value
    return overrides


def device_indices(value: str) -> list[int] | None:
    """GPU indices as 0 or 0,1; all/none/null for every visible GPU."""
    if value.lower() in ("all", "none", "null"):
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GPU indices like 0 or 0,1 (or 'all'), got {clip(value, 40)!r}") from None


STUDY_NAME = Flag(("study", "name"), "--study-name")
STORAGE = Flag(("study", "storage"))
RECORDED = "(default: what the study recorded)"
READ_FLAGS = (  # commands that read a study: its own record is the default
    Flag(("study", "name"), "--study-name", help=f"the study to read (default {field_info(('study', 'name'))[0]})"),
    Flag(("study", "storage"), help=f"storage URL of the study (default: {DEFAULT_DB})"),
)
DATA_FLAGS = (
    Flag(("data", "source"), "--data"),
    Flag(("data", "data_dir")),
    Flag(("data", "train_size")),
    Flag(("data", "val_fraction")),
    Flag(("data", "val_size")),
)
RUN_FLAGS = (
    Flag(("study", "trials")),
    STUDY_NAME,
    STORAGE,
    Flag(("study", "artifact_store")),
    Flag(("study", "target_accuracy"), parse=optional_float),
    Flag(("study", "timeout"), parse=optional_float),
    Flag(("study", "workers")),
    Flag(("study", "seed")),
    Flag(("warm_start", "study"), "--warm-start"),
    Flag(("warm_start", "storage"), "--warm-start-storage"),
    Flag(("warm_start", "trials"), "--warm-start-trials"),
    *DATA_FLAGS,
    Flag(("sampler", "name"), "--sampler"),
    Flag(("pruner", "name"), "--pruner"),
    Flag(("space", "max_cost_ratio"), parse=optional_float),
    Flag(("training", "max_epochs")),
    Flag(("training", "promote_factor"), parse=optional_int),
    Flag(("training", "accelerator")),
    Flag(("training", "devices"), parse=device_indices, none="all"),
    Flag(("training", "workers_per_device")),
    Flag(("training", "precision")),
)
RECORDED_DATA_FLAGS = tuple(  # the export's data options: they override the study's recorded ones
    Flag(f.key, f.flag, f.parse, help=f"{re.sub(r' ?[(]null: [^()]*[)]', '', field_info(f.key)[1])} {RECORDED}") for f in DATA_FLAGS
)


def add_artifact_store_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """--artifact-store for the commands that read a study (--artifact-dir: its older name)."""
    parser.add_argument(
        "--artifact-store", "--artifact-dir", dest="artifact_store", metavar="LOCATION", default=None,
        help=f"artifact store to {what}: a folder or s3://bucket/prefix (default: the one the study recorded, else artifacts/ "
        "under $MNIST_SEARCH_HOME); --artifact-dir is its older name",
    )
