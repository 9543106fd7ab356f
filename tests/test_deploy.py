"""The recipes under deploy/ stay runnable: every `python -m search.*` command they hold is
accepted by the project's own argument parser and storage URL check, without running anything.

Commands are read from the Kubernetes YAML (a container's command + args, `$(VAR)` expanded as
the kubelet does), from the Slurm script (backslash continuations joined, shell variables given
sample values) and from the shell blocks of deploy/README.md.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from lightning_modules.errors import UserInputError
from search.redaction import url_secrets

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
SBATCH = DEPLOY / "slurm" / "search.sbatch"
ENTRY_POINTS = ("search.run", "search.dashboard", "search.export")
# What a shell variable or a Kubernetes $(VAR) stands for when a command is checked; a variable
# not listed here (and without a default) fails the test, so none slips through unchecked.
SAMPLE_VALUES = {
    "DB_HOST": "db.example.org",
    "POD_NAMESPACE": "default",
    "SLURM_ARRAY_JOB_ID": "1234",
    "SLURM_ARRAY_TASK_ID": "3",
    "SLURM_CPUS_PER_TASK": "4",
    "TMPDIR": "/tmp",
    "HOME": "/home/user",
}


@dataclass(frozen=True)
class Command:
    where: str
    argv: tuple[str, ...]  # starting at "python"

    @property
    def module(self) -> str:
        return self.argv[2]

    @property
    def args(self) -> list[str]:
        return list(self.argv[3:])


# ------------------------------------------------------------------ reading the recipes


def yaml_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))


def documents() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in yaml_files() for doc in yaml.safe_load_all(path.read_text()) if doc]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return doc["spec"]["template"]["spec"]
    if kind == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return [] if spec is None else [*spec.get("initContainers", []), *spec.get("containers", [])]


def expand_kubernetes(word: str, env: dict[str, str]) -> str:
    """$(VAR) as the kubelet expands it in command and args: from the container's env, $$ escapes."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "$"
        assert name in env or name in SAMPLE_VALUES, f"$({name}) has no value in the container's env nor a sample value"
        return env.get(name) or SAMPLE_VALUES[name]

    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: "$" if m.group(0) == "$$" else value(m), word)


def expand_shell(text: str, variables: dict[str, str]) -> str:
    """${VAR}, ${VAR:-default}, ${VAR:?message} and $VAR, from `variables` then SAMPLE_VALUES."""

    def lookup(name: str, default: str | None) -> str:
        if name in variables:
            return variables[name]
        if name in SAMPLE_VALUES:
            return SAMPLE_VALUES[name]
        assert default is not None, f"${name} has no value: add a sample value to SAMPLE_VALUES"
        return expand_shell(default, variables)

    pattern = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")

    def replace(match: re.Match[str]) -> str:
        if match.group(4):
            return lookup(match.group(4), None)
        name, operator, word = match.group(1), match.group(2), match.group(3)
        return lookup(name, word if operator == "-" else None)

    assert "$(" not in text and "`" not in text, f"command substitution is not checked: {text[:80]}"
    return pattern.sub(replace, text)


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def commands_in_shell(text: str, where: str) -> list[Command]:
    """Each `python -m search.X ...` in a shell script, after the script's own assignments
    (`NAME=value` and `NAME=${NAME:-default}`, `export` or not) have been given values."""
    variables: dict[str, str] = {}
    found = []
    for line in logical_lines(text):
        assignment = re.fullmatch(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(\S*)(?:\s+#.*)?", line)
        if assignment:
            variables[assignment.group(1)] = expand_shell(assignment.group(2).strip('"'), variables)
            continue
        start = re.search(r"\bpython3?\s+-m\s+search\.", line)
        if start is None:
            continue
        words = shlex.split(expand_shell(line[start.start():], variables), comments=True)
        words = words[: next((i for i, w in enumerate(words) if w in ("|", "&&", "||", ";", "&")), len(words))]
        found.append(Command(where, tuple(["python", *words[1:]])))
    return found


def commands_in_container(container: dict[str, Any], where: str) -> list[Command]:
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    words = [expand_kubernetes(str(w), env) for w in [*container.get("command", []), *container.get("args", [])]]
    if len(words) >= 3 and Path(words[0]).name in ("sh", "bash") and words[1] in ("-c", "-ec", "-euc"):
        return commands_in_shell(words[2], where)
    for i in range(len(words) - 2):
        if Path(words[i]).name.startswith("python") and words[i + 1] == "-m" and words[i + 2].startswith("search."):
            return [Command(where, ("python", *words[i + 1:]))]
    return []


def kubernetes_commands() -> list[Command]:
    return [
        command
        for path, doc in documents()
        for container in containers(doc)
        for command in commands_in_container(container, f"{path.relative_to(ROOT)} {doc['kind']}/{doc['metadata']['name']}")
    ]


def readme_commands() -> list[Command]:
    readme = DEPLOY / "README.md"
    blocks = re.findall(r"```(?:bash|sh|shell)\n(.*?)```", readme.read_text(), re.DOTALL)
    return [c for block in blocks for c in commands_in_shell(block, "deploy/README.md")]


def all_commands() -> list[Command]:
    return [*kubernetes_commands(), *commands_in_shell(SBATCH.read_text(), str(SBATCH.relative_to(ROOT))), *readme_commands()]


# ------------------------------------------------------------------ checking one command


def check_command(command: Command) -> None:
    """Raise AssertionError unless the entry point's own parser and URL check accept it."""
    from search.storage import check_storage_url

    assert command.argv[1] == "-m" and command.module in ENTRY_POINTS, f"{command.where}: unknown entry point {command.module}"
    try:
        if command.module == "search.run":
            from search.run import parse_settings

            url = parse_settings(command.args).study.storage
        elif command.module == "search.dashboard":
            from search.dashboard import parse_args as dashboard_args

            url = dashboard_args(command.args).storage
        else:
            from search.export.__main__ import parse_args as export_args

            url = getattr(export_args(command.args), "study_storage", None)
        check_storage_url(url)
    except SystemExit as exit_:  # argparse: an unknown flag or a bad value, already printed
        raise AssertionError(f"{command.where}: {shlex.join(command.argv)} is refused by its parser (exit {exit_.code})") from None
    except UserInputError as error:
        raise AssertionError(f"{command.where}: {shlex.join(command.argv)}: {error}") from None


def storage_of(command: Command) -> str | None:
    args = command.args
    return args[args.index("--storage") + 1] if "--storage" in args else None


# ------------------------------------------------------------------ the tests


def test_the_recipes_are_there() -> None:
    assert SBATCH.is_file() and yaml_files() and (DEPLOY / "README.md").is_file()
    modules = {c.module for c in kubernetes_commands()}
    assert {"search.run", "search.dashboard", "search.export"} <= modules
    assert [c.module for c in commands_in_shell(SBATCH.read_text(), "sbatch")] == ["search.run"]


def test_every_yaml_document_is_a_kubernetes_object() -> None:
    for path, doc in documents():
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
        assert doc["metadata"].get("name"), path


@pytest.mark.parametrize("command", all_commands(), ids=lambda c: f"{c.where}:{c.module}")
def test_every_command_is_accepted_by_its_parser(command: Command, capsys: pytest.CaptureFixture[str]) -> None:
    check_command(command)
    assert capsys.readouterr().err == ""


def test_a_flag_the_cli_lacks_is_caught(capsys: pytest.CaptureFixture[str]) -> None:
    """The checker itself: each recipe with one unknown flag added must fail."""
    for command in [*kubernetes_commands(), *commands_in_shell(SBATCH.read_text(), "sbatch")]:
        bogus = Command(command.where, (*command.argv, "--no-such-flag", "1"))
        with pytest.raises(AssertionError, match="refused by its parser"):
            check_command(bogus)
    assert "--no-such-flag" in capsys.readouterr().err


def test_workers_share_one_postgres_study_by_a_service_of_the_cluster() -> None:
    from sqlalchemy.engine import make_url

    services = {doc["metadata"]["name"] for _, doc in documents() if doc["kind"] == "Service"}
    urls = {storage_of(c) for c in kubernetes_commands()}
    assert len(urls) == 1, f"every pod should point at the same study database: {urls}"
    url = make_url(urls.pop())
    assert url.get_backend_name() == "postgresql" and url.password is None
    assert url.host in services, f"{url.host} is not a Service of deploy/kubernetes ({services})"
    runs = [c for c in kubernetes_commands() if c.module == "search.run"]
    assert len({tuple(c.args) for c in runs}) == 1
    jobs = [doc for _, doc in documents() if doc["kind"] == "Job" and any(c.where.endswith(f"Job/{doc['metadata']['name']}") for c in runs)]
    assert jobs and all(job["spec"].get("parallelism", 1) > 1 for job in jobs)


def test_sbatch_is_a_job_array_on_one_postgres_study() -> None:
    from sqlalchemy.engine import make_url

    text = SBATCH.read_text()
    assert re.search(r"^#SBATCH --array=\d", text, re.MULTILINE)
    (run,) = commands_in_shell(text, "sbatch")
    url = make_url(storage_of(run) or "")
    assert url.get_backend_name() == "postgresql" and url.password is None
    assert "--study-name" in run.args


def test_the_dashboard_is_reachable_only_inside_the_cluster() -> None:
    boards = [
        (doc, container)
        for _, doc in documents()
        for container in containers(doc)
        if any(c.module == "search.dashboard" for c in commands_in_container(container, ""))
    ]
    assert boards
    services = [doc for _, doc in documents() if doc["kind"] == "Service"]
    for doc, container in boards:
        labels = doc["spec"]["template"]["metadata"]["labels"]
        exposing = [s for s in services if s["spec"].get("selector") and s["spec"]["selector"].items() <= labels.items()]
        assert exposing, f"no Service selects {doc['metadata']['name']}"
        for service in exposing:
            spec = service["spec"]
            assert spec.get("type", "ClusterIP") == "ClusterIP", f"{service['metadata']['name']} is {spec['type']}"
            assert not spec.get("externalIPs") and not any("nodePort" in p for p in spec["ports"])
            (command,) = commands_in_container(container, "")
            allowed = [command.args[i + 1] for i, a in enumerate(command.args) if a == "--allowed-host"]
            assert service["metadata"]["name"] in allowed, "the dashboard would refuse requests addressed to its Service"
            ports = {p["containerPort"] for p in container.get("ports", [])}
            # the Host header carries the Service's port, which the dashboard compares with its own
            assert all(p["port"] == p.get("targetPort", p["port"]) and p["port"] in ports for p in spec["ports"])
        assert "--allow-writes" not in commands_in_container(container, "")[0].args
    assert not [d for _, d in documents() if d["kind"] == "Ingress"]


SECRET_ENV = re.compile(r"PASS|SECRET|TOKEN|KEY|CRED", re.IGNORECASE)
# a ":" before an "@" in the part before the first "/": user:password@host (the widest reading, as search.redaction)
URL_WITH_PASSWORD = re.compile(r"[A-Za-z][\w+.-]*://[^/\s]*:[^/\s]*@")
# `PGPASSWORD=x`, `password: x`, `--from-literal=password=x`: a value that is not a $variable
LITERAL_PASSWORD = re.compile(r"(?:PGPASSWORD|POSTGRES_PASSWORD|password)\s*[=:]\s*(?![\"']*\$)[^\s\"'{},]", re.IGNORECASE)


def test_no_file_holds_a_password() -> None:
    for path, doc in documents():
        assert doc["kind"] != "Secret" or not (doc.get("data") or doc.get("stringData")), f"{path}: a Secret with its value"
        for container in containers(doc):
            for env in container.get("env", []):
                if SECRET_ENV.search(env["name"]):
                    assert "value" not in env and "secretKeyRef" in env.get("valueFrom", {}), f"{path}: {env['name']} must come from a Secret"
    for path in [*yaml_files(), SBATCH, DEPLOY / "README.md"]:
        text = path.read_text()
        assert not URL_WITH_PASSWORD.search(text), f"{path}: a URL with a password"
        for word in re.findall(r"[A-Za-z][\w+.-]*://[^\s\"',\]]+", text):
            assert not url_secrets(word), f"{path}: {word} holds a secret"
        for match in LITERAL_PASSWORD.finditer(text):
            raise AssertionError(f"{path}: a literal password: {match.group(0)}")
