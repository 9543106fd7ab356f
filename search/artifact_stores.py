"""Artifact store locations -> Optuna artifact stores: where checkpoints and the best weights go.

A location is a folder (a shared mount such as NFS) or `s3://bucket/prefix`; none means this
machine's own `artifacts/` folder under the runtime folder, as before locations existed. A study
records the location it was created with (`record.ARTIFACT_STORE`), so every later run, worker,
machine, export and dashboard uses the same store; a run that names another one is refused
before it writes anything.

Locations are parsed and checked without Optuna, boto3 or torch (`check_location`), so a bad
one is a one-line error at once. Both stores implement Optuna's artifact store protocol and
lay out artifacts as Optuna's own stores do (a folder store here reads with
`optuna-dashboard --artifact-dir`): the folder store writes each artifact whole or not at all,
and the S3 store (Optuna's `Boto3ArtifactStore`) keeps them under the prefix. S3 credentials
and the endpoint come only from the usual AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_PROFILE`,
`AWS_ENDPOINT_URL`, ...); they are never part of a location, shown or stored.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import stat
import unicodedata
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from lightning_modules.errors import UserInputError, check_path_length, expand_home
from search.paths import artifact_dir
from search.redaction import clip, redact

if TYPE_CHECKING:
    import optuna

    from search.optuna_compat import ArtifactStore

S3_SCHEME = "s3://"
COPY_CHUNK = 1 << 20
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")  # S3's bucket naming rules
_SCHEME = re.compile(r"([A-Za-z][\w+.-]*)://")
FORMS = "a folder every machine mounts (e.g. /mnt/shared/mnist-artifacts) or s3://bucket/prefix"
LOCAL = "each machine's own artifacts/ folder (under $MNIST_SEARCH_HOME)"
T = TypeVar("T")


class ArtifactStoreError(UserInputError):
    """An artifact store location that is malformed, missing, unreachable, or not the study's."""


@dataclass(frozen=True)
class StoreLocation:
    """A folder, or an S3 bucket and key prefix; `shared` is False only for this machine's own folder."""

    folder: Path | None = None
    bucket: str = ""
    prefix: str = ""
    shared: bool = True

    def __str__(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        return f"{S3_SCHEME}{self.bucket}/{self.prefix}".rstrip("/")


def local_location() -> StoreLocation:
    return StoreLocation(folder=artifact_dir().resolve(), shared=False)  # resolved, as a folder given is: the same folder, the same text


def parse_location(text: str | None) -> StoreLocation:
    """`text` as a location (None: this machine's own folder); a folder is made absolute. Checks
    the form only, never the disk or the network."""
    if text is None:
        return local_location()
    shown = redact(text)[:200]
    if not text or any(unicodedata.category(c).startswith("C") for c in text):
        raise ArtifactStoreError(f"artifact store {shown!r} is empty or holds control characters; pass {FORMS}")
    scheme = _SCHEME.match(text)
    if scheme is None:
        check_path_length(text, "artifact store")
        return StoreLocation(folder=expand_home(text, "--artifact-store").resolve())
    if not text.startswith(S3_SCHEME):
        raise ArtifactStoreError(f"artifact store {shown}: {scheme.group(1)}:// is not supported; pass {FORMS}")
    bucket, _, prefix = text[len(S3_SCHEME):].partition("/")
    if "@" in bucket or ":" in bucket:
        raise ArtifactStoreError(
            f"artifact store {shown} holds credentials or a port; pass s3://bucket/prefix and put credentials in "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), the endpoint in AWS_ENDPOINT_URL"
        )
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        raise ArtifactStoreError(f"artifact store {shown}: {bucket[:70]!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
    parts = prefix.strip("/").split("/") if prefix.strip("/") else []
    if any(part in ("", ".", "..") for part in parts) or "?" in prefix or "#" in prefix:
        raise ArtifactStoreError(f"artifact store {shown}: the prefix may not hold '//', '.', '..', '?' or '#'; pass s3://bucket/some/prefix")
    return StoreLocation(bucket=bucket, prefix="/".join(parts))


def _check_folder(location: StoreLocation, writable: bool) -> None:
    folder = location.folder
    assert folder is not None
    if not folder.exists():
        raise ArtifactStoreError(f"artifact store folder {folder} does not exist on this machine; mount the shared folder there "
                                 f"(or create it: mkdir -p {folder})")
    if not folder.is_dir():
        raise ArtifactStoreError(f"artifact store {folder} is not a folder; pass {FORMS}")
    if writable and not os.access(folder, os.W_OK | os.X_OK):
        raise ArtifactStoreError(f"artifact store folder {folder} is not writable; fix its permissions or pass another --artifact-store")


def check_location(text: str | None, *, writable: bool = True) -> StoreLocation:
    """Parse and check a location on this machine (the folder is there, boto3 is installed);
    torch-, Optuna- and network-free."""
    location = parse_location(text)
    if location.folder is not None and location.shared:
        _check_folder(location, writable)
    if location.bucket and importlib.util.find_spec("boto3") is None:
        raise ArtifactStoreError(f"artifact store {location} needs boto3, which is not installed; pip install -e '.[s3]'")
    return location


def open_store(location: StoreLocation, *, create: bool = True, writable: bool = True) -> ArtifactStore:
    """The store at `location`; this machine's own folder is created (when `create`), a shared one
    must exist, and a bucket must answer (a one-line error otherwise)."""
    if location.folder is None:
        return S3Store.connect(check_location(str(location)))  # check: boto3 is there
    if location.shared:
        _check_folder(location, writable)
        return AtomicFolderStore(location.folder)
    return build_artifact_store(location.folder, create)


def build_artifact_store(directory: Path | None = None, create: bool = True) -> AtomicFolderStore:
    """A folder artifact store (default: this machine's artifacts/) with atomic writes; the store a study runs with comes from
    its location (`open_store`). A folder that cannot be made is one line (under a $MNIST_SEARCH_HOME in /proc, a traceback)."""
    directory = directory or artifact_dir()
    try:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArtifactStoreError(f"cannot make the artifact folder {directory} ({err.strerror}); point MNIST_SEARCH_HOME elsewhere") from None
    return AtomicFolderStore(directory)


def _not_found(artifact_id: str, why: str = "not found") -> Exception:
    from optuna.artifacts.exceptions import ArtifactNotFound

    return ArtifactNotFound(f"artifact {artifact_id} {why}")


class AtomicFolderStore:
    """Optuna's `FileSystemArtifactStore` layout (artifact id = path under the folder, sub-folders
    allowed), but `write` lands whole or not at all: it writes a temporary file next to the
    artifact and renames it over (Optuna's opens the artifact itself with "wb", so a kill
    mid-write left half a file that a reader, or a resume on another machine, then read).

    Implemented on the protocol rather than as a subclass so that checking a location never
    imports Optuna, and the id check needs none of its private helpers.
    """

    def __init__(self, folder: Path | str, *, fsync: bool = False) -> None:
        self.folder = Path(folder)
        self.fsync = fsync  # also survive a power loss, at the cost of a disk flush per write

    def path_of(self, artifact_id: str) -> Path:
        """The file of an artifact id; an id that would leave the folder is refused (as Optuna does)."""
        base = os.path.abspath(self.folder)
        path = os.path.abspath(os.path.join(base, artifact_id))
        if os.path.isabs(artifact_id) or os.path.commonpath([base, path]) != base or path == base:
            raise ValueError(f"Invalid artifact_id: {artifact_id}")
        return Path(path)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        """The artifact's file, which must be a regular file: a FIFO put in its place blocked an
        export for ever (opened without blocking, then checked), a device would read without end."""
        try:
            fd = os.open(self.path_of(artifact_id), os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            raise _not_found(artifact_id) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _not_found(artifact_id, "is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        path = self.path_of(artifact_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "xb") as out:  # the umask's permissions, as Optuna's store gives
                shutil.copyfileobj(content_body, out, COPY_CHUNK)
                if self.fsync:
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError as error:
            if error.filename is None and error.errno is not None:  # a disk error naming no file: "cannot write run state"
                raise OSError(error.errno, error.strerror, str(path)) from error
            raise
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, artifact_id: str) -> None:
        try:
            self.path_of(artifact_id).unlink()
        except FileNotFoundError:
            raise _not_found(artifact_id) from None


class S3Store:
    """Optuna's `Boto3ArtifactStore` with every artifact under a key prefix, and S3's failures
    (other than a missing artifact) as one-line errors that name the store."""

    def __init__(self, inner: Any, location: StoreLocation) -> None:
        self.inner = inner
        self.location = location

    @classmethod
    def connect(cls, location: StoreLocation) -> S3Store:
        """A client from the AWS environment; the bucket must answer before any trial trains."""
        import boto3
        from optuna.artifacts import Boto3ArtifactStore

        store = cls(None, location)
        client = store._call(lambda: boto3.session.Session().client("s3"))  # a session of its own: today's environment
        store._call(lambda: client.head_bucket(Bucket=location.bucket))
        store.inner = Boto3ArtifactStore(location.bucket, client=client)
        return store

    def key(self, artifact_id: str) -> str:
        return f"{self.location.prefix}/{artifact_id}" if self.location.prefix else artifact_id

    def _call(self, action: Callable[[], T]) -> T:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return action()
        except NoCredentialsError:
            raise ArtifactStoreError(
                f"no AWS credentials for artifact store {self.location}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from None
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", "")) or "error"
            hint = {
                "404": f"bucket {self.location.bucket!r} does not exist; create it first",
                "NoSuchBucket": f"bucket {self.location.bucket!r} does not exist; create it first",
                "403": "access denied; the search needs s3:ListBucket, GetObject, PutObject and DeleteObject there",
            }.get(code, "check the credentials, the bucket and AWS_ENDPOINT_URL")
            raise ArtifactStoreError(f"artifact store {self.location} answered {code}: {hint}") from None
        except ValueError as error:  # botocore's "Invalid endpoint: ..." for a malformed AWS_ENDPOINT_URL
            raise ArtifactStoreError(f"artifact store {self.location}: {clip(str(error), 120)}; check AWS_ENDPOINT_URL") from None
        except BotoCoreError as error:
            reason = clip(str(error).splitlines()[0], 200)
            raise ArtifactStoreError(f"artifact store {self.location} cannot be reached ({reason}); check AWS_ENDPOINT_URL and the network") from None

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._call(lambda: self.inner.open_reader(self.key(artifact_id)))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._call(lambda: self.inner.write(self.key(artifact_id), content_body))

    def remove(self, artifact_id: str) -> None:
        self._call(lambda: self.inner.remove(self.key(artifact_id)))


def recorded_location(study: optuna.Study) -> StoreLocation:
    """The location the study recorded when it was created; this machine's own folder if none."""
    from search.record import ARTIFACT_STORE

    recorded = study.user_attrs.get(ARTIFACT_STORE)
    if recorded and not isinstance(recorded, str):  # a number there was a TypeError traceback
        raise ArtifactStoreError(
            f"study {study.study_name!r} records an artifact store that is not a location ({str(recorded)[:40]!r}); pass --artifact-store"
        )
    return parse_location(recorded) if recorded else local_location()


def location_for_run(study: optuna.Study, given: str | None) -> StoreLocation:
    """The store a run on `study` uses: the recorded one; `given` (--artifact-store) must name it."""
    recorded = recorded_location(study)
    if given is None or str(parse_location(given)) == str(recorded):  # the local folder, named in full, is the study's too
        return recorded
    where = str(recorded) if recorded.shared else LOCAL
    raise ArtifactStoreError(f"study {study.study_name!r} keeps its artifacts in {where}, not in {parse_location(given)}: run without "
                             "--artifact-store to use the study's store, or pass a new --study-name to start a study there")


def storage_location(storage: Any) -> StoreLocation:
    """For a reader of every study in a storage (the dashboard): their one store; a study that recorded
    none uses this machine's folder (serving a shared one made each of its artifacts a server error)."""
    from search.record import ARTIFACT_STORE

    found = sorted({str(s.user_attrs.get(ARTIFACT_STORE) or LOCAL) for s in storage.get_all_studies()})
    if len(found) > 1:
        raise ArtifactStoreError(f"the studies in this storage keep artifacts in {len(found)} stores ({', '.join(found)}); pass --artifact-store")
    return local_location() if found in ([], [LOCAL]) else parse_location(found[0])
