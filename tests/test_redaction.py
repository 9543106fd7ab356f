"""Secrets in storage URLs, case by case: each leak issue #16 found, shown to stay closed.

Every URL form is checked in `redact` (what is shown and stored), in `url_secrets` /
`secrets_in` (what messages are masked with), in the storage errors and on the command line.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from search import redaction
from search.redaction import normalise_url, redact, redact_words, secrets_in, url_secrets
from search.run import main
from search.settings_file import ConfigError, load_settings
from search.storage import StorageError, open_existing_storage
from search.storage_url import check_storage_url


@pytest.fixture(autouse=True)
def forget_known_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`remember_secrets` keeps a process-wide set; a short test password left in it would mask
    letters in every later test's messages."""
    monkeypatch.setattr(redaction, "_KNOWN", set())


# (url, the password in it, what `redact` shows)
LEAKS = [
    # '?' in the password: the query was split off before the '@' was looked for
    ("postgresql://u:Qm?k9@host/db", "Qm?k9", "postgresql://u:***@host/db"),
    # '@' and '/' in the password: masked only up to the first '@'
    ("postgresql://u:P@ss/w0rd@host/db", "P@ss/w0rd", "postgresql://u:***@host/db"),
    ("postgresql://u:a@b?c/d#e@host:5432/db?sslmode=require", "a@b?c/d#e", "postgresql://u:***@host:5432/db?sslmode=require"),
    # the password as a query parameter, with the user-info empty
    ("postgresql://u@host/db?password=QpW7", "QpW7", "postgresql://u@host/db?password=***"),
    ("postgresql://host/db?sslmode=require&sslpassword=Ss1x", "Ss1x", "postgresql://host/db?sslmode=require&sslpassword=***"),
    ("postgresql://host/db?token=Tk9z&application_name=run", "Tk9z", "postgresql://host/db?token=***&application_name=run"),
    # URLs SQLAlchemy refuses (a port that is not a number) are masked all the same
    ("postgresql://u:Qm?k9@host:notaport/db", "Qm?k9", "postgresql://u:***@host:notaport/db"),
    ("postgresql://u:P@ss/w0rd@host:notaport/db", "P@ss/w0rd", "postgresql://u:***@host:notaport/db"),
]


@pytest.mark.parametrize(("url", "password", "shown"), LEAKS)
def test_redact_masks_the_whole_password(url: str, password: str, shown: str) -> None:
    assert redact(url) == shown
    assert password not in redact(url)


@pytest.mark.parametrize(("url", "password", "shown"), LEAKS)
def test_url_secrets_find_the_whole_password_and_sqlalchemys_reading(url: str, password: str, shown: str) -> None:
    secrets = url_secrets(url)
    assert password in secrets
    assert secrets_in(["--storage", url]) == secrets
    try:
        parsed = make_url(url)
    except ValueError:  # the port: SQLAlchemy has no reading of its own
        return
    if parsed.password:
        assert parsed.password in secrets  # what SQLAlchemy would send, however it split the URL
    for key, value in parsed.query.items():
        if key in ("password", "sslpassword", "token"):
            assert value in secrets


def test_a_storage_flag_written_with_equals_is_masked_too() -> None:
    word = "--storage=postgresql://u:Eq9pw@host/db"
    assert redact_words(["--trials", "3", word]) == ["--trials", "3", "--storage=postgresql://u:***@host/db"]
    assert "Eq9pw" in secrets_in([word])


def test_a_password_starting_with_digits_after_a_user_with_an_at_is_still_a_password() -> None:
    """`admin@srv:2024/Spring@host/db` looked like host `srv`, port 2024: it connected there and
    showed the password. An '@' before the query makes `2024/Spring` a password."""
    url = "postgresql://admin@srv:2024/Spring@127.0.0.1/db"
    parsed = make_url(normalise_url(url))
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == ("admin@srv", "2024/Spring", "127.0.0.1", "db")
    assert redact(url) == "postgresql://admin@srv:***@127.0.0.1/db"


def test_a_password_with_at_and_slash_connects_to_the_host_after_the_last_at() -> None:
    """Read as SQLAlchemy reads it unescaped, `P@ss/w0rd` would send `P` to host `ss`, and the
    driver's error would quote the rest of the password as the database name."""
    parsed = make_url(normalise_url("postgresql://u:P@ss/w0rd@host/db"))
    assert (parsed.password, parsed.host, parsed.database) == ("P@ss/w0rd", "host", "db")
    assert make_url(normalise_url("postgresql://u:Qm?k9@host/db")).password == "Qm?k9"


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////tmp/runs@home/study.db",  # an '@' in a path is no user-info
        "sqlite:///study.db?mode=ro&uri=true",
        "postgresql://u@host:5432/db?options=-c%20x",
        "postgresql://u@[::1]:5432/db",
        "postgresql://u:plain@host/db",
    ],
)
def test_urls_without_odd_characters_are_connected_and_shown_as_typed(url: str) -> None:
    assert normalise_url(url) == url
    assert redact(url) == url.replace(":plain@", ":***@")


@pytest.mark.parametrize(
    ("url", "host", "query"),
    [
        ("postgresql://u@host:5432/db?application_name=me@lab", "host", {"application_name": "me@lab"}),
        ("postgresql://u@[::1]:5432/db?x=a@b", "::1", {"x": "a@b"}),
    ],
)
def test_an_at_in_the_query_after_a_host_and_port_connects_and_shows_as_typed(url: str, host: str, query: dict[str, str]) -> None:
    """`h:5432` is a host and port, not a user and password. Unescaped, SQLAlchemy read
    `5432/db?x=a` as a password and the text after the last '@' as the host (a DNS lookup, then
    a connection, for a piece of the query); escaped, it connects to the host typed."""
    parsed = make_url(normalise_url(url))
    assert (parsed.username, parsed.password, parsed.host, parsed.port, parsed.database) == ("u", None, host, 5432, "db")
    assert dict(parsed.query) == query
    assert redact(url) == url


def test_a_query_password_with_an_at_after_a_host_and_port_is_masked_whole_and_sent_whole() -> None:
    """`?password=P@ssw0rd` after `u@host:5432`: the run printed `127.0.0.1:***@ssw0rd` and the
    driver tried to resolve the host `ssw0rd`, a piece of the password."""
    url = "postgresql://postgres@127.0.0.1:5432/test?password=P@ssw0rd"
    assert redact(url) == "postgresql://postgres@127.0.0.1:5432/test?password=***"
    assert dict(make_url(normalise_url(url)).query) == {"password": "P@ssw0rd"}
    assert "ssw0rd" not in redact(normalise_url(url))


STORAGE_CASES = [
    ("postgresql://u:Qm?k9@127.0.0.1:1/db", "Qm?k9"),
    ("postgresql://u:P@ss/w0rd@127.0.0.1:1/db", "P@ss/w0rd"),
    ("postgresql://u:a@b?c/d#e@127.0.0.1:1/db?connect_timeout=2", "a@b?c/d#e"),
    ("postgresql://u@127.0.0.1:1/db?password=QpW7", "QpW7"),
    ("postgresql://127.0.0.1:1/db?sslmode=disable&sslpassword=Ss1x", "Ss1x"),
    ("postgresql://u:Qm?k9@127.0.0.1:notaport/db", "Qm?k9"),
    ("postgresql://u:P@ss/w0rd@127.0.0.1:99999/db", "P@ss/w0rd"),
    ("sqlite://u:Sq@l/1te@/{tmp}/missing.db", "Sq@l/1te"),
    # a slash too many or too few: the first went to the local socket, and the server's log kept the password
    ("postgresql:///u:Zq9SECRETpw@127.0.0.1:5432/test", "Zq9SECRETpw"),
    ("postgresql//u:Zq9SECRETpw@127.0.0.1:5432/test", "Zq9SECRETpw"),
    # a libpq string in the query: it connected, its password printed and stored with the settings
    ("postgresql+psycopg2:///?dsn=host%3D127.0.0.1%20user%3Dpostgres%20password%3DZq9SECRETpw%20dbname%3Dtest", "Zq9SECRETpw"),
    ("postgresql:///?conninfo=postgresql%3A%2F%2Fu%3AZq9SECRETpw%40127.0.0.1%2Fdb", "Zq9SECRETpw"),
]


@pytest.mark.parametrize(("url", "password"), STORAGE_CASES)
def test_storage_errors_never_quote_the_password(tmp_path: Path, url: str, password: str) -> None:
    with pytest.raises(StorageError) as caught:
        open_existing_storage(url.format(tmp=tmp_path))
    message = str(caught.value)
    assert "\n" not in message and password not in message
    for piece in re.split(r"[@?/#:]", password):  # nor a piece of it, e.g. taken for a host or database
        assert len(piece) < 4 or piece not in message, piece


def test_the_command_line_never_prints_a_password_with_a_question_mark(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://u:Qm?k9@127.0.0.1:notaport/db"
    assert main(["--storage", url, "--data-dir", str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "u:***@127.0.0.1" in err
    assert "Qm?k9" not in out + err and "k9" not in out + err


# ---- config files: a quoted bad value passes through redaction --------------------------------

@pytest.mark.parametrize(
    "content",
    [
        "study: {storage: [postgresql://u:CfgPW@h/db]}\n",  # not a string: the list is quoted
        "study: {storage: 'postgresql://u:CfgPW@h/db" + "x" * 2000 + "'}\n",  # too long: quoted, cut short
        "study: {storage: 'postgresql://u:CfgPW" + "p" * 70 + "@h/db" + "x" * 2000 + "'}\n",  # the '@' beyond the cut
        "study: {storage: 'postgresql://h/db?password=CfgPW" + "x" * 2000 + "'}\n",
        "study: {name: [postgresql://u:CfgPW@h/db]}\n",
        "study: {'postgresql://u:CfgPW@h/db': 1}\n",  # an unknown key is named
        "study: {storage: {url: postgresql://u:CfgPW@h/db}}\n",
    ],
)
def test_config_errors_never_quote_a_password(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "study." in message and "\n" not in message
    assert "CfgPW" not in message


def test_config_error_through_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("study: {storage: [postgresql://u:CfgPW@h/db]}\n")
    assert main(["--config", str(path), "--data-dir", str(tmp_path / "missing")]) == 2
    out, err = capsys.readouterr()
    assert "study.storage" in err and "CfgPW" not in out + err and err.count("\n") == 1


def test_a_validator_that_quotes_the_value_is_not_quoted_twice(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("training: {snapshot_steps: [-1]}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value).count("(got [-1])") == 1


def test_a_url_given_to_the_wrong_flag_is_masked_in_the_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    from search.run import main

    assert main(["--trials", "postgresql://alice:Zq7Xflagpw@db.example/optuna"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--trials" in err
    assert "Zq7Xflagpw" not in err


@pytest.mark.parametrize("flag", ["--storge", "--workers", "--devices", "--target-accuracy"])
def test_a_password_with_a_space_is_masked_in_argument_errors(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The errors were masked word by word: `postgres:Zq7X` has no '@', so `Zq7X pw` was shown."""
    assert main([flag, "postgresql://postgres:Zq7X spacepw@127.0.0.1:5432/test"]) == 2
    err = capsys.readouterr().err
    assert "postgres:***@127.0.0.1" in err and "Zq7X" not in err and "spacepw" not in err, err


@pytest.mark.parametrize(
    "text",
    [
        'Could not connect to the endpoint URL: "http://user:Zq7X spacepw@127.0.0.1:1/bucket"',  # botocore, AWS_ENDPOINT_URL
        "x postgresql://u@h/db?password=Zq7X spacepw&a=1",
        "a sqlite:///a.db then b postgresql://u:Zq7X spacepw@h/db",
        "Invalid endpoint: http//u:Zq7Xspacepw@127.0.0.1:18790; check AWS_ENDPOINT_URL",  # a typo in it: no ://
        "Invalid endpoint: htp:///u:Zq7Xspacepw@x y",
    ],
)
def test_clip_masks_a_password_that_spans_words(text: str) -> None:
    shown = redaction.clip(text, 300)
    assert "Zq7X" not in shown and "spacepw" not in shown and "***" in shown, shown


def test_an_sqlite_path_with_a_colon_and_an_at_is_shown_and_connected_as_typed(tmp_path: Path) -> None:
    """A mistyped server URL's `/u:PW@h` is masked however many slashes precede it, but an SQLite
    file's path may hold ':' and '@' as they are: masking `1` there would mask it in every message."""
    url = f"sqlite:///{tmp_path}/a:1@2.db"
    assert redaction.redact(url) == url and redaction.url_secrets(url) == [] and check_storage_url(url) == url
    server = "postgresql://u@127.0.0.1:5432/my%40db"  # a database may be named my@db, escaped: not a slash too many
    assert check_storage_url(server) == server


@pytest.mark.parametrize("flag", ["--study-name", "--warm-start"])
def test_a_url_given_as_a_study_name_is_refused_masked_and_no_study_carries_it(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`search.run --study-name <URL>` created a study named with the password, printed it, and
    every later "studies there:" listing showed it; `search.export --study-name <URL>` printed it."""
    from search.export.__main__ import main as export_main

    url = f"sqlite:///{tmp_path / 'study.db'}"
    wrong = "postgresql://alice:Zq7Xnamepw@db.example/optuna"
    assert main(["--storage", url, flag, wrong, "--no-export"]) == 2
    assert export_main(["--storage", url, "--study-name", wrong]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and err.count("holds a URL with a password") == 2 and "Zq7Xnamepw" not in err, err
    assert not (tmp_path / "study.db").exists()


def test_a_name_with_a_colon_and_an_at_is_listed_as_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`exp:v2@gpu` is accepted as a name (tests/test_config.py), so it is shown as typed: the
    listing showed `exp:***@gpu`, a name no one could type back."""
    import optuna

    from search.export.__main__ import main as export_main

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="exp:v2@gpu", storage=url)
    assert export_main(["--storage", url, "--study-name", "exp:v3@gpu"]) == 2
    err = capsys.readouterr().err
    assert "no study named 'exp:v3@gpu'" in err and "(studies there: 'exp:v2@gpu')" in err, err


def test_a_study_already_named_with_a_password_is_listed_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Created before names were checked (or by another tool): the export's listing masks it."""
    import optuna

    from search.export.__main__ import main as export_main

    url = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(study_name="postgresql://alice:Zq7Xoldpw@db.example/optuna", storage=url)
    assert export_main(["--storage", url, "--study-name", "other"]) == 2
    err = capsys.readouterr().err
    assert "no study named 'other'" in err and "postgresql://alice:***@db.example/optuna" in err and "Zq7Xoldpw" not in err, err


LONG = "postgresql://postgres:LongPassw0rdXyzAbcDef123LongerStillSecret99@db.example/optuna"


def _pieces(secret: str, size: int = 6) -> list[str]:
    return [secret[start : start + size] for start in range(len(secret) - size + 1)]


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("search.run", ["--timeout", LONG]),
        ("search.run", ["--target-accuracy", LONG]),
        ("search.run", ["--devices", LONG]),
        ("search.dashboard", ["--host", LONG]),
        ("search.dashboard", ["--allowed-host", LONG]),
        ("search.dashboard", ["--port", LONG]),
    ],
)
def test_a_long_url_given_to_the_wrong_flag_shows_no_piece_of_its_password(
    module: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The value is cut short in the message: cut before it was masked, the '@' that marks the
    password went with the cut and 18 of its characters were shown."""
    import importlib

    entry = importlib.import_module(module)
    with pytest.raises(SystemExit) as exited:
        code = entry.main(argv)
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert not [piece for piece in _pieces("LongPassw0rdXyzAbcDef123LongerStillSecret99") if piece in err], err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://postgres:postgres@127.0.0.1:5432/test", "postgresql://postgres:***@127.0.0.1:5432/test"),
        ("postgresql://optuna:optuna@db:5432/optuna", "postgresql://optuna:***@db:5432/optuna"),
        ("postgresql://u:db@dbhost/db", "postgresql://u:***@dbhost/db"),
        ("postgresql://u:test@127.0.0.1/test?application_name=test", "postgresql://u:***@127.0.0.1/test?application_name=test"),
        ("postgresql://h/db?a=1?password=Pq9&x=2", "postgresql://h/db?a=1?password=***&x=2"),
        ("postgresql://h/db?password=a?token=b&x=2&token=zz", "postgresql://h/db?password=***&x=2&token=***"),
    ],
)
def test_a_password_equal_to_another_part_of_the_url_is_masked_only_where_it_is_the_password(url: str, shown: str) -> None:
    """Masking each occurrence of the password's text showed `***ql://postgres:***@...` for the
    password `postgres`, and `/***` for a password equal to the database: the mask told it."""
    assert redact(url) == shown


@pytest.mark.parametrize("key", ["x" * 60 + "_password", "%70%61%73%73%77%6F%72%64" * 4, "k" * 65])
def test_a_query_value_after_a_key_too_long_to_read_is_masked(key: str) -> None:
    """Keys are read for at most 64 characters (a hostile text made every read quadratic); a
    longer one's value was then shown, and, being shown, was no longer masked in messages."""
    url = f"postgresql://u@127.0.0.1:1/db?{key}=S3cretVal&sslmode=disable"
    assert redact(url) == f"postgresql://u@127.0.0.1:1/db?{key}=***&sslmode=disable"
    with pytest.raises(StorageError) as caught:
        open_existing_storage(url)
    assert "S3cretVal" not in str(caught.value)


def test_a_storage_error_does_not_tell_a_password_equal_to_the_database(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as caught:
        open_existing_storage("postgresql://postgres:test@127.0.0.1:1/test")
    message = str(caught.value)
    assert "postgresql://postgres:***@127.0.0.1:1/test" in message
    assert message.count("***") == 1, message  # the database's name and the driver's words stay as they are


@pytest.mark.parametrize(
    "text",
    [
        "x" * 300_000,  # every letter was tried as a scheme's start: 16 s at 100,000
        "a1" * 150_000 + "://h",
        "p://h/db" + "?" * 150_000 + "=" * 150_000,  # every '?' read a key to the far '=': 43 s at 100,000
        "p://h/db" + "?a" * 150_000,
        "p://u:" + "@" * 300_000,
        "p://h/db" + "?password=x" * 30_000,  # every value holds the later ones: kept whole, once
        "p://h/db" + "?" + "k" * 300_000 + "=v",
    ],
)
def test_masking_a_hostile_text_takes_one_pass(text: str) -> None:
    """An argument error or a config value is masked whatever its size (a config file holds 64 KiB);
    quadratic passes made a 100,000-character value hang the answer for 16-43 s. The timeout only
    guards against the hang: the linear passes take milliseconds."""
    import threading

    from search.redaction import clip

    done: list[object] = []
    worker = threading.Thread(target=lambda: done.extend([redact(text), url_secrets(text), clip(text, 40)]), daemon=True)
    worker.start()
    worker.join(60)
    assert len(done) == 3


def test_a_url_with_thousands_of_secret_keys_is_masked_whole_in_messages() -> None:
    """Each secret costs a pass over every message it may appear in: 14,000 `&key=` values in
    fifteen 129 KB `--storage` arguments took 25 s to mask before the length check refused them."""
    url = "postgresql://h/db?" + "".join(f"&key={i}" for i in range(5000))
    assert len(url_secrets(url)) < 4 * redaction.MAX_SECRETS
    shown = redaction.clip(f"argument --workers: invalid int value: {url!r}", 300)
    assert shown.startswith("argument --workers: invalid int value: 'postgresql://***"), shown


RUN_CONFIG = """
study: {heartbeat_seconds: 1, stale_after_seconds: 3, target_accuracy: null}
data: {val_size: 300, train_size: 1000}
training: {max_epochs: 3, snapshot_steps: [5]}
pruner: {name: none}
"""


@pytest.mark.slow
@pytest.mark.postgres
def test_a_search_on_a_url_with_a_password_writes_it_nowhere(
    postgres_url: str, unique_name: str, isolated_home: Path, run_env: dict[str, str], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every other password test is an error path. Here a search runs on a URL with a password
    (the local server trusts any): stopped by Ctrl-C (a process of its own), resumed and exported
    (in this process). The password is in nothing it printed, stored or wrote."""
    import json
    import signal

    import optuna

    from helpers import reader_storage, run_main
    from preloaded import SearchProcess

    secret = "Pw9Leak7"
    url = postgres_url.replace("postgres@", f"postgres:{secret}@")
    config = tmp_path / "c.yaml"
    config.write_text(RUN_CONFIG)
    argv = ["--config", str(config), "--storage", url, "--study-name", unique_name, "--trials", "3"]
    process = SearchProcess(argv, run_env, tmp_path / "logs")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:  # trial 1 has started: stop mid-search
        try:
            if len(optuna.load_study(study_name=unique_name, storage=reader_storage(postgres_url)).trials) >= 2:
                break
        except (KeyError, StorageError):
            pass  # not created yet
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(120)
    assert process.returncode == 130 and "Resume with: python -m search.run" in err, err
    done = run_main(argv, capsys)
    assert done.returncode == 0, done.stderr
    printed = out + err + done.stdout + done.stderr
    assert secret not in printed and "***" in printed

    storage = reader_storage(postgres_url)
    study = optuna.load_study(study_name=unique_name, storage=storage)
    system = storage.get_study_system_attrs(storage.get_study_id_from_name(unique_name))  # the dashboard's note lives here
    stored = json.dumps([study.user_attrs, system, [(t.user_attrs, t.system_attrs) for t in study.trials]], default=str)
    assert secret not in stored and "***" in stored
    written = [p for p in isolated_home.rglob("*") if p.is_file()]
    assert any(p.name == "metrics.json" for p in written)  # the export, the artifacts and the checkpoints were written
    assert not [p for p in written if secret.encode() in p.read_bytes()]
