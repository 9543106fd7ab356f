"""Property-based hostile input: the runner's command line, study folder names, storage URLs.

Whatever a user types (any study name, any storage URL with any password in it, any config
file), the runner answers with exit code 0 or 2 and a few lines, never a traceback, never the
password, and writes nothing anywhere. Every password generated here holds CORE, a token no
other part of the input holds, so any piece of it that leaks is caught, not only the whole.
"""

from __future__ import annotations

import os
import re
import string
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from search import redaction
from search.paths import study_dir_name
from search.redaction import mask, normalise_url, redact, redact_words, secrets_in, url_secrets
from search.run import main
from search.storage import StorageError, open_existing_storage

FUZZ = settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CORE = "Zq7X"  # in every generated password; 'Z' cannot end a %-escape, so decoding keeps it whole
PASSWORD_CHARS = string.ascii_letters + string.digits + string.punctuation + " éß€"
NAME_CHARS = string.ascii_letters + string.digits + "_-"


@pytest.fixture(autouse=True)
def forget_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`remember_secrets` keeps a process-wide set; generated passwords left in it would mask
    letters in every later test's messages."""
    monkeypatch.setattr(redaction, "_KNOWN", set())


passwords = st.builds(lambda left, right: left + CORE + right, st.text(PASSWORD_CHARS, max_size=10), st.text(PASSWORD_CHARS, max_size=10))


@st.composite
def storage_urls(draw: st.DrawFn) -> tuple[str, str]:
    """(url, password): sqlite, PostgreSQL (unreachable: port 1 of this machine) and MySQL (no
    driver) URLs with the password raw or escaped in the user-info, in a query parameter, or both;
    some with a port SQLAlchemy refuses."""
    password = draw(passwords)
    scheme = draw(st.sampled_from(["postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "sqlite"]))
    user = draw(st.text(NAME_CHARS + ".", min_size=1, max_size=8))
    database = draw(st.text(NAME_CHARS, min_size=1, max_size=8))
    where = draw(st.sampled_from(["raw", "escaped", "query", "raw+query"]))
    key = draw(st.sampled_from(["password", "sslpassword", "token", "secret", "api_key", "PASSWORD"]))
    query = draw(st.lists(st.sampled_from(["sslmode=disable", "connect_timeout=2", "application_name=fuzz"]), max_size=2, unique=True))
    if "query" in where:
        query.insert(draw(st.integers(0, len(query))), f"{key}={quote(password, safe='')}")
    userinfo = {"raw": f"{user}:{password}@", "escaped": f"{user}:{quote(password, safe='')}@"}.get(where.split("+")[0], f"{user}@")
    suffix = "?" + "&".join(query) if query else ""
    if scheme == "sqlite":
        return f"sqlite://{userinfo}/{database}.db{suffix}", password
    host = draw(st.sampled_from(["127.0.0.1", "[::1]", "localhost"]))
    port = draw(st.sampled_from([":1", ":1", ":notaport", ":99999", ""]))
    url = f"{scheme}://{userinfo}{host}{port}/{database}{suffix}"
    assume(CORE not in url.replace(password, "").replace(quote(password, safe=""), ""))
    return url, password


def leaks(text: str, password: str) -> bool:
    return CORE in text or password in text or quote(password, safe="") in text


# ---- storage URLs: redact, url_secrets, the storage errors --------------------------------------

@FUZZ
@given(case=storage_urls())
@example(case=("postgresql://u:Qm?k9Zq7X@127.0.0.1:1/db", "Qm?k9Zq7X"))
@example(case=("postgresql://u:P@ss/w0rdZq7X@127.0.0.1:1/db", "P@ss/w0rdZq7X"))
@example(case=("postgresql://u:a@b?cZq7X@127.0.0.1:notaport/db", "a@b?cZq7X"))
def test_a_generated_password_never_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: tuple[str, str]) -> None:
    url, password = case
    monkeypatch.chdir(tmp_path)  # a relative SQLite path names a file in here
    assert not leaks(redact(url), password), redact(url)
    assert not leaks(" ".join(redact_words(["--storage", url, f"--storage={url}"])), password)
    assert not leaks(mask(f"failed on {url} ({normalise_url(url)})", secrets_in(["--storage", url])), password)
    try:
        parsed = make_url(url)
    except ValueError:  # a port SQLAlchemy refuses: it has no reading of its own
        parsed = None
    if parsed is not None and parsed.password:
        assert parsed.password in url_secrets(url)  # what SQLAlchemy would send, however it split the URL
    with pytest.raises(StorageError) as caught:
        open_existing_storage(url)
    message = str(caught.value)
    assert message and "\n" not in message
    assert not leaks(message, password), message


# ---- study folder names ----------------------------------------------------------------------

study_names = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(exclude_categories=()), max_size=120),  # surrogates, controls, any plane
    st.text(NAME_CHARS + ". /é", max_size=20),
    st.sampled_from(["..", ".", "../x", "a/../../b", "x" * 300, "a\x00b", "étude", "名前", " x", "", "study", "-x"]),
    st.builds(lambda name, digest: f"{name}-{digest}", st.text(NAME_CHARS + " ", max_size=10), st.text("0123456789abcdef", min_size=8, max_size=8)),
)


@settings(max_examples=300, deadline=None, database=None)
@given(name=study_names)
@example(name="a b")
def test_study_folder_names_are_safe_and_never_shared(name: str) -> None:
    folder = study_dir_name(name)
    assert folder and "/" not in folder and os.sep not in folder and "\x00" not in folder
    assert not folder.startswith(".") and folder not in (".", "..")
    assert len(folder.encode("utf-8")) <= 200  # room for a resume uid under NAME_MAX (255 bytes)
    exports = Path("/srv/exports")
    assert (exports / folder).resolve().parent == exports.resolve()
    # a name mapped elsewhere must not be mapped onto: the folder, used as a name, gets another
    if folder != name:
        assert study_dir_name(folder) != folder


@settings(max_examples=300, deadline=None, database=None)
@given(first=study_names, data=st.data())
def test_two_names_never_share_a_folder(first: str, data: st.DataObject) -> None:
    """The second name is another generated one, or one made to look like the first's folder."""
    second = data.draw(st.one_of(
        study_names,
        st.just(study_dir_name(first)),
        st.just(first.replace(" ", "_").replace("/", "_")),
        st.just(unicodedata.normalize("NFD", first)),
        st.just(unicodedata.normalize("NFC", first)),
    ))
    assume(first != second)
    assert study_dir_name(first) != study_dir_name(second)


@settings(max_examples=100, deadline=None, database=None)
@given(name=st.text(string.ascii_letters + string.digits + "éßπ名", min_size=1, max_size=40))
def test_a_safe_name_is_its_own_folder(name: str) -> None:
    assume(not re.search(r"-[0-9a-f]{8}$", name))
    assert study_dir_name(name) == name


def test_a_safe_name_that_looks_hashed_is_not_another_names_folder() -> None:
    assert study_dir_name("a b") == "a_b-c8687a08"
    assert study_dir_name("a_b-c8687a08") != study_dir_name("a b")


# ---- the runner's command line ---------------------------------------------------------------

small = st.integers(1, 8).map(str)
numbers = st.one_of(small, st.integers(-5, 2**40).map(str), st.text(string.printable, max_size=6))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.text(max_size=12))


@st.composite
def run_inputs(draw: st.DrawFn) -> tuple[list[str], str | None, str | None]:
    """(flags, config file text or None, the password in them or None)."""
    flags: list[str] = []
    password = None
    config = None
    if draw(st.booleans()):
        flags.append("--study-name=" + draw(study_names))
    url = None
    if draw(st.booleans()):
        url, password = draw(storage_urls())
    odd_numbers = draw(st.booleans())  # else the count flags are valid, so later checks are reached
    for flag in ("--seed", "--trials", "--workers"):
        if draw(st.booleans()):
            flags.append(f"{flag}={draw(numbers if odd_numbers else small)}")
    kind = draw(st.sampled_from(["none", "yaml", "garbage"]))
    if kind == "garbage":
        config = draw(st.text(max_size=200))
    elif kind == "yaml":
        study = draw(st.dictionaries(st.sampled_from(["name", "trials", "seed", "workers", "bogus"]), scalars, max_size=3))
        if url is not None and draw(st.booleans()):
            study["storage"] = draw(st.sampled_from([url, [url], {"url": url}, url + "x" * 2000]))
        elif url is not None:
            flags.append(f"--storage={url}")
        config = yaml.safe_dump({"study": study, **draw(st.dictionaries(st.sampled_from(["training", "data", "extra"]), scalars, max_size=2))})
    elif url is not None:
        flags.append(f"--storage={url}")
    return draw(st.permutations(flags)), config, password


def tree(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under root, with whether it is a folder, its size and its modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            info = path.lstat()
            found[str(path.relative_to(root))] = (path.is_dir(), info.st_size, info.st_mtime_ns)
    return found


@FUZZ
@given(inputs=run_inputs())
@example(inputs=(["--storage=postgresql://u:P@ss/w0rdZq7X@127.0.0.1:1/db"], None, "P@ss/w0rdZq7X"))
@example(inputs=([], "study: {storage: [postgresql://u:CfgZq7X@h/db]}\n", "CfgZq7X"))
@example(inputs=(["--help", "--storage=postgresql://u:HelpZq7X@127.0.0.1:1/db"], None, "HelpZq7X"))
def test_the_runner_answers_any_input_in_a_few_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], inputs: tuple[list[str], str | None, str | None]
) -> None:
    flags, config, password = inputs
    run = tmp_path / "run"
    (run / "cwd").mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(run / "cwd")  # a relative path in the input would name a file in here
    argv = [*flags, "--data-dir", str(run / "missing")]  # no data: nothing heavy runs
    if config is not None:
        path = run / "config.yaml"
        path.write_text(config, encoding="utf-8", errors="surrogateescape")
        argv += ["--config", str(path)]
    capfd.readouterr()
    before = tree(tmp_path), sorted(os.listdir(tmp_path.parent))  # not the other tests' folders: their SQLite
    code = main(argv)  # companions come and go as their connections are collected
    out, err = capfd.readouterr()
    assert code in (0, 2), (argv, err)
    assert len(err.splitlines()) <= 3 and "Traceback" not in out + err, err
    if password is not None:
        assert not leaks(out + err, password), (argv, out + err)
    assert (tree(tmp_path), sorted(os.listdir(tmp_path.parent))) == before, "the run created or changed files"


LONG_NAME = "d" * 300  # over NAME_MAX (255 bytes)


@pytest.mark.parametrize(
    ("command", "argv", "env", "words"),
    [
        ("run", ["--storage", "sqlite:///{tmp}/a/{long}/s.db"], {}, "the SQLite path"),
        ("run", ["--data", "{tmp}/{long}"], {}, "--data"),
        ("run", ["--data-dir", "{tmp}/b/{long}"], {}, "--data-dir"),
        ("run", ["--artifact-store", "{tmp}/c/{long}"], {}, "artifact store"),
        ("run", [], {"MNIST_SEARCH_HOME": "{tmp}/h/{long}"}, "MNIST_SEARCH_HOME"),
        ("run", [], {"MNIST_DATA_DIR": "{tmp}/" + "e/" * 2100}, "bytes long"),  # the flags' own bound is 4096 characters
        ("export", [], {"MNIST_SEARCH_HOME": "{tmp}/h/{long}"}, "MNIST_SEARCH_HOME"),
        ("dashboard", [], {"MNIST_SEARCH_HOME": "{tmp}/h/{long}"}, "MNIST_SEARCH_HOME"),
        ("predict", ["--model", "{tmp}/{long}", "x.png"], {}, "--model"),
    ],
)
def test_a_path_the_file_system_cannot_take_is_one_line_and_creates_nothing(
    command: str, argv: list[str], env: dict[str, str], words: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A name over 255 bytes was an ENAMETOOLONG traceback from every command, after the run had
    created the folders on the way to it."""
    import importlib

    def fill(text: str) -> str:
        return text.format(tmp=tmp_path, long=LONG_NAME)

    for name, value in env.items():
        monkeypatch.setenv(name, fill(value))
    module = {"run": "search.run", "export": "search.export.__main__", "dashboard": "search.dashboard", "predict": "search.predict"}[command]
    assert importlib.import_module(module).main([fill(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "pass a shorter path" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["run", "export", "dashboard"])
@pytest.mark.parametrize("home", ["file", "file/below", None])
def test_a_run_state_home_that_is_a_file_is_named_as_one(
    command: str, home: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """MNIST_SEARCH_HOME naming a file (or the default storage/ being one) made the export and the
    dashboard say "no study database ...; start a search first", and the search "cannot be opened"."""
    import importlib

    (tmp_path / "file").write_bytes(b"mine")
    (tmp_path / "storage").write_bytes(b"mine too")
    monkeypatch.chdir(tmp_path)
    if home is None:
        monkeypatch.delenv("MNIST_SEARCH_HOME", raising=False)
    else:
        monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path / home))
    module = {"run": "search.run", "export": "search.export.__main__", "dashboard": "search.dashboard"}[command]
    assert importlib.import_module(module).main([]) == 2
    err = capsys.readouterr().err
    blocker = tmp_path / ("storage" if home is None else "file")
    assert err.count("\n") == 1 and f"({blocker} is a file)" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "storage"]
    assert (tmp_path / "file").read_bytes() == b"mine" and (tmp_path / "storage").read_bytes() == b"mine too"


@pytest.mark.parametrize("folder", ["checkpoints", "artifacts", "exports"])
def test_a_run_state_folder_that_is_a_file_answers_before_the_study_is_made(
    folder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A file named checkpoints or artifacts in the run-state folder was a traceback after the
    study had been made (its trial 0 failed, or left waiting)."""
    from search.run import main

    (tmp_path / folder).write_bytes(b"mine")
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path))
    assert main(["--trials", "1", "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / folder} is not a folder" in err and "move it aside" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder] and (tmp_path / folder).read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("make", "url", "words"),
    [
        (lambda d: (d / "adir").mkdir(), "adir", "is a folder"),
        (lambda d: (d / "afile").write_bytes(b"x"), "afile/sub/x.db", "afile is not a folder"),
        (lambda d: (d / "notes.db").write_bytes(b"my notes, not SQLite"), "notes.db", "not an SQLite database"),
        (lambda d: os.mkfifo(d / "pipe"), "pipe", "not a regular file"),
    ],
)
def test_a_storage_path_no_study_can_live_at_answers_before_the_data_is_loaded(
    make: Any, url: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """These were found after torch was imported and the data loaded, some as tracebacks (a file
    where a folder should be). Here the data folder is missing, so only a check made before the
    data can give the storage's error."""
    from search.run import main

    (tmp_path / "w").mkdir()
    make(tmp_path / "w")
    before = tree(tmp_path)
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path / "home"))
    assert main(["--storage", f"sqlite:///{tmp_path / 'w' / url}", "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err and "--storage" in err, err
    assert tree(tmp_path) == before


def test_a_folder_where_the_default_database_goes_names_moving_it_as_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """No --storage was given, yet the only fix named was --storage "e.g. <folder>/mnist-search.db"."""
    from search.run import main

    (tmp_path / "mnist-search.db").mkdir()
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path))
    assert main(["--trials", "1", "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'mnist-search.db'} is a folder; move the folder aside" in err, err
    assert [p.name for p in tmp_path.iterdir()] == ["mnist-search.db"]


@pytest.mark.parametrize(
    ("scheme", "words"),
    [
        ("sqlite+aiosqlite", "is an asyncio driver"),
        ("sqlite+pysqlcipher", "module 'pysqlcipher3' is missing"),
        ("sqlite+nosuchdriver", "SQLAlchemy knows no driver 'sqlite+nosuchdriver'"),
    ],
)
@pytest.mark.parametrize("flag", ["--storage", "--warm-start-storage"])
def test_a_driver_that_cannot_store_a_study_answers_before_any_file_is_made(
    scheme: str, words: str, flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A missing driver was found once the SQLite file, its folders and its WAL were made (and
    after the data was loaded); an asyncio driver printed "coroutine ... was never awaited"."""
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path / "home"))
    url = f"{scheme}:///{tmp_path / 'new' / 'q' / 'a.db'}"
    # the warm start is read once the data is checked (not loaded); the run's own storage before
    extra = ["--warm-start", "old"] if flag == "--warm-start-storage" else ["--data-dir", str(tmp_path / "missing")]
    assert main([flag, url, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("module", "argv", "env"),
    [
        ("search.run", ["--data-dir", "~nouser-zq7/x"], {}),
        ("search.run", ["--data", "~nouser-zq7/x.csv"], {}),
        ("search.run", ["--artifact-store", "~nouser-zq7/x"], {}),
        ("search.run", [], {"MNIST_DATA_DIR": "~nouser-zq7"}),
        ("search.export.__main__", [], {"MNIST_SEARCH_HOME": "~nouser-zq7"}),
        ("search.dashboard", ["--artifact-store", "~nouser-zq7/x"], {}),
    ],
)
def test_a_home_folder_of_an_unknown_user_is_one_line(
    module: str, argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Path.expanduser raised "RuntimeError: Could not determine home directory." as a traceback."""
    import importlib

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "~nouser-zq7" in err and "no such user's home folder" in err, err


@pytest.mark.parametrize(
    ("command", "argv"),
    [
        ("run", ["--config", "{tmp}/a\nb.yaml"]),
        ("export", ["--storage", "sqlite:///{tmp}/a\nb.db"]),
        ("dashboard", ["--storage", "sqlite:///{tmp}/a\nb.db"]),
        ("predict", ["--model", "{tmp}/a\nb", "x.png"]),
        ("predict", ["--model", "{tmp}/a\rb", "x.png"]),
    ],
)
def test_a_name_with_a_line_break_stays_on_the_error_line(
    command: str, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A file name holding a line break split the one-line error in two."""
    import importlib

    module = {"run": "search.run", "export": "search.export.__main__", "dashboard": "search.dashboard", "predict": "search.predict"}[command]
    assert importlib.import_module(module).main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and ("a\\nb" in err or "a\\rb" in err), err


@pytest.mark.parametrize("module", ["search.dashboard", "search.export.__main__", "search.run"])
def test_a_storage_url_too_long_to_be_one_is_refused_in_a_short_line(module: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The dashboard and the export echoed a 100,000-character URL back in their error."""
    import importlib

    url = "postgresql://u@127.0.0.1:1/" + "x" * 100_000
    assert importlib.import_module(module).main(["--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and len(err) < 400 and ("2,000" in err or "2000" in err), err[:400]


def test_an_export_folder_holding_a_users_files_answers_before_the_study_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run found it only after the whole search (hours at --trials 100), and named the
    export's own --out, a flag the run does not have."""
    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path))
    (tmp_path / "exports" / "mnist").mkdir(parents=True)
    (tmp_path / "exports" / "mnist" / "notes.txt").write_text("mine")
    assert main(["--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds files an export did not write (notes.txt); nothing was changed" in err, err
    assert "--out" not in err and "--no-export" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]  # no database, no run folders
    assert (tmp_path / "exports" / "mnist" / "notes.txt").read_text() == "mine"


def test_another_studys_export_in_the_way_is_found_before_any_trial_trains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An export of another database's study of the same name (or of a deleted one): a new study
    was made, then refused (its database left holding it); now the database is read first and
    nothing is made. A study the database does hold, with another uid, is refused as well."""
    import optuna

    from search.export.folder import MARKER, ExportIdentity

    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path))
    folder = tmp_path / "exports" / "mnist"
    folder.mkdir(parents=True)
    (folder / MARKER).write_text(ExportIdentity("mnist", "0123456789ab").marker_text())
    database = tmp_path / "mnist-search.db"
    assert main(["--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the export of study 'mnist' (uid 0123456789ab)" in err, err
    assert "a study this database does not hold yet; nothing was changed" in err and not database.exists()
    study = optuna.create_study(study_name="mnist", storage=f"sqlite:///{database}")
    study.set_user_attr("uid", "ba9876543210")
    assert main(["--trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "not of study 'mnist' (uid ba9876543210); nothing was changed" in err, err
    assert not optuna.load_study(study_name="mnist", storage=f"sqlite:///{database}").trials
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]


@pytest.mark.parametrize("data", ["folder", "csv", "fashion-mnist"])
def test_a_data_dir_beside_a_data_file_or_folder_is_refused_not_ignored(data: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--data-dir is where a dataset named by --data is read: beside --data naming a folder or a
    CSV file it was ignored and never checked (a run on other data than the user meant)."""
    given = {"folder": str(tmp_path), "csv": str(tmp_path / "rows.csv"), "fashion-mnist": "fashion-mnist"}[data]
    database = tmp_path / "s.db"
    code = main(["--data", given, "--data-dir", str(tmp_path / "elsewhere"), "--storage", f"sqlite:///{database}"])
    err = capsys.readouterr().err
    if data == "fashion-mnist":  # a dataset name: --data-dir is where it is read (and it is not there), MNIST_DATA_DIR is not
        assert code == 2 and "is not used when" not in err and "four fashion-mnist IDX files" in err and "MNIST_DATA_DIR" not in err, err
    else:
        assert code == 2 and err == f"error: --data-dir {str(tmp_path / 'elsewhere')!r} is not used when --data names a file or folder ({given!r}); drop one of them\n"
    assert not database.exists()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--val-size", "1"], "the validation split has 1 row(s), fewer than the 10 classes"),
        (["--val-fraction", "1e-9"], "the validation split has 1 row(s), fewer than the 10 classes"),
        (["--train-size", "5"], "the training split has 5 row(s), fewer than the 10 classes"),
    ],
)
def test_a_split_too_small_to_tell_models_apart_is_refused_before_the_study(
    flags: list[str], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A 1-row validation set scored val_acc=1.0 and stopped the search at its target on nothing learned."""
    from search.run import main

    monkeypatch.setenv("MNIST_SEARCH_HOME", str(tmp_path / "home"))
    database = tmp_path / "study.db"
    assert main(["--storage", f"sqlite:///{database}", "--train-size", "500", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not database.exists()


# ---- control characters, hosts and '~' in storage URLs; MNIST_SEARCH_HOME; MNIST_DATA_DIR ----------

@pytest.mark.parametrize(
    ("url", "part"),
    [
        ("postgresql://postgres:Zq7X%00@127.0.0.1:1/test", "its password"),  # libpq cut the conninfo at the NUL: port 5432, not 1
        ("postgresql://postgres:Zq7X%0Aok@127.0.0.1:1/test", "its password"),
        ("postgresql://post%00gres:Zq7X@127.0.0.1:1/test", "its user"),
        ("postgresql://postgres:Zq7X@127.0.0.1:1/te%01st", "its database"),
        ("postgresql://postgres:Zq7X@127.0.0.1%00x:1/test", "its host"),
        ("postgresql://postgres@127.0.0.1:1/test?password=Zq7X%00", "its query parameter 'password'"),
        ("postgresql://postgres@127.0.0.1:1/test?application_name=a%0Ab&password=Zq7X", "its query parameter 'application_name'"),
        ("sqlite:///{tmp}/a\nb.db", "its path"),
        ("sqlite:///{tmp}/a%00b.db", "its path"),
        ("sqlite:///{tmp}/a\x01b.db", "its path"),
    ],
)
def test_a_control_character_in_any_part_of_a_storage_url_is_refused_before_it_is_used(
    url: str, part: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A NUL in the password (`x%00`) made libpq cut the connection string there, so the study went
    to port 5432 while the console said port 1; a line break in a SQLite path split the 'created
    study ... in ...' line. Refused before the data (missing here) is even looked at."""
    monkeypatch.chdir(tmp_path)
    assert main(["--storage", url.format(tmp=tmp_path), "--data-dir", str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and f"{part} holds a control character" in err and "Traceback" not in err, err
    assert CORE not in out + err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("url", ["sqlite://tmp/x.db", "sqlite://u:Zq7Xpw@tmp/y.db", "sqlite://localhost:5/z.db", "sqlite://u:Zq7X@/w.db"])
def test_an_sqlite_url_with_a_host_user_or_port_is_refused_before_any_file_is_made(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`sqlite://tmp/x.db` (two slashes: the host `tmp`) made ./x.db in the current folder, switched
    to WAL, and only then failed with SQLAlchemy's "Invalid SQLite URL". The data is there, so
    nothing but the URL check stands between the run and that file."""
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert main(["--storage", url, "--trials", "1", "--train-size", "600", "--val-size", "200", "--max-epochs", "1", "--no-export"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "four slashes (sqlite:////tmp/x.db), a relative one three" in err, err
    assert CORE not in out + err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and list((tmp_path / "cwd").iterdir()) == []


def test_a_home_folder_in_an_sqlite_path_is_written_out_as_every_path_flag_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`sqlite:///~/x.db` made a folder named `~` in the current one; MNIST_SEARCH_HOME, --data-dir
    and --artifact-store read a leading `~` as the home folder, and so does the SQLite path now."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "me").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert main(["--storage", "sqlite:///~/x.db", "--trials", "1", "--train-size", "600", "--val-size", "200", "--max-epochs", "1",
                 "--no-export"]) == 0
    assert f"sqlite:///{tmp_path / 'me' / 'x.db'}" in capsys.readouterr().out
    assert (tmp_path / "me" / "x.db").is_file() and list((tmp_path / "cwd").iterdir()) == []
    from search.storage_url import check_storage_url, sqlite_path

    assert sqlite_path(check_storage_url("sqlite:///~/a%3Fb.db")) == tmp_path / "me" / "a?b.db"  # pasted back unquoted: /me/a
    assert main(["--storage", "sqlite:///~nouser-zq7/x.db", "--data-dir", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "~nouser-zq7" in err and "no such user's home folder" in err, err
    assert list((tmp_path / "cwd").iterdir()) == []


@pytest.mark.parametrize("command", ["run", "export", "dashboard"])
@pytest.mark.parametrize(("home", "words"), [(" ", "is blank"), ("\t", "is blank"), ("{tmp}/h\nx", "control"), ("{tmp}/h\x01x", "control")])
def test_a_run_state_home_that_is_blank_or_holds_a_control_character_is_one_line(
    command: str, home: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """MNIST_SEARCH_HOME=" " made a folder named " " in the current one; a line break in it split
    the 'created study ... in ...' line."""
    import importlib

    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MNIST_SEARCH_HOME", home.format(tmp=tmp_path))
    module = {"run": "search.run", "export": "search.export.__main__", "dashboard": "search.dashboard"}[command]
    argv = ["--data-dir", str(tmp_path / "missing")] if command == "run" else []
    assert importlib.import_module(module).main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MNIST_SEARCH_HOME=" in err and words in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd"] and list((tmp_path / "cwd").iterdir()) == []


def test_a_run_state_home_where_no_folder_can_be_made_answers_before_the_study_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """MNIST_SEARCH_HOME in /proc: `os.access` says root may write there, so the run made its study,
    printed 'created study ...' and died in a 40-line FileNotFoundError making its artifact folder."""
    monkeypatch.setenv("MNIST_SEARCH_HOME", "/proc/mnist-search-home")
    database = tmp_path / "s.db"
    assert main(["--storage", f"sqlite:///{database}", "--trials", "1", "--train-size", "600", "--val-size", "200", "--no-export"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "/proc" in err and "point MNIST_SEARCH_HOME at a folder you can write" in err, err
    assert "created study" not in out and not database.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "value",
    ["https://u:S3cr3tZq7X@h/x", "https://u:P@ss/Zq7X@h/x?token=Zq7Xtok", "s3://Zq7X:Zq7X@bucket/x", "https://u:Zq7X@h/" + "x" * 5000],
)
def test_a_data_folder_url_in_the_environment_is_refused_without_its_secrets(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """MNIST_DATA_DIR=https://u:pw@h/x became the path https:/u:pw@h/x (the `//` collapsed), and its
    error printed the password: no URL was left in it to mask. The same value as --data-dir was
    already refused as a URL."""
    monkeypatch.setenv("MNIST_DATA_DIR", value)
    assert main(["--storage", f"sqlite:///{tmp_path / 's.db'}", "--trials", "1", "--no-export"]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: MNIST_DATA_DIR ") and "is a URL, and data is read from files" in err, err
    assert CORE not in out + err, err
    assert list(tmp_path.iterdir()) == []
