"""Where a sweep keeps its files (`--storage`): a folder, or an object-storage URI that every node of the cluster
reaches (`s3://bucket/prefix`, `gs://bucket/prefix`: whatever `pyarrow.fs.FileSystem.from_uri` resolves, the layer
Ray Tune writes its own storage through). A `Place` is one file or folder there: the trials' checkpoint files, the
sweep's record of its tracking store and Tune's experiment live under one root.

In a local folder a Place keeps what shared storage needs: a file is replaced atomically and never written
through a symlink planted in its place (`disk.replace_file`), and only this user's own regular files are read
(`check_own_file`). An object store has neither symlinks nor owners: an object is replaced whole by
one upload, and who may write a bucket is the bucket's policy. Credentials come from the storage client's own
environment variables and files (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
~/.aws/credentials); a URI that carries them is refused, since Tune writes its storage URI into its state.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from raycredit.errors import UserError


def is_uri(where: str) -> bool:
    return "://" in str(where)


def check_uri(where: str, flag: str = "--storage") -> Place:
    """The Place of `where`, an object-storage URI raycredit can use (UserError otherwise): one pyarrow knows,
    with no credentials in it (Tune writes its storage URI into its state files and Ray's logs)."""
    parts = urlsplit(where)
    if parts.username or parts.password:
        raise UserError(f"{flag}: credentials in the URI would be written into Tune's state in clear; give them "
                        "through the storage client's environment variables or files (for S3, AWS_ACCESS_KEY_ID "
                        "and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials)")
    if parts.scheme == "file":
        raise UserError(f"{flag} {where}: pass a local folder as a path, not a file:// URI")
    try:
        return Place.of(where)
    except (ValueError, NotImplementedError, ImportError) as e:  # pyarrow's ArrowInvalid, ArrowNotImplementedError
        raise UserError(f"{flag} {display(where)}: {first_line(e)} (use a folder, or a URI such as "
                        "s3://bucket/prefix or gs://bucket/prefix)") from None
    except OSError as e:  # a bucket's region is looked up here
        raise UserError(f"{flag} {display(where)}: cannot reach it: {first_line(e)}") from None


def join(where: str, *parts: str) -> str:
    """`where` (a path or a URI, whose query stays at the end) with `parts` appended to its path."""
    if not is_uri(where):
        return os.path.join(where, *parts)
    u = urlsplit(where)
    return urlunsplit(u._replace(path="/".join([u.path.rstrip("/"), *parts])))


def display(where: str) -> str:
    """`where` as printed: a URI without its query (endpoint options) and without any credentials."""
    if not is_uri(where):
        return str(where)
    u = urlsplit(where)
    return f"{u.scheme}://{u.netloc.rsplit('@', 1)[-1]}{u.path}"


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def check_own_file(path: str | os.PathLike) -> None:
    """UserError unless `path` is a regular file of this user: a symlink, or a file another user of shared storage
    owns, is not read as this sweep's own checkpoint."""
    import stat

    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}), which raycredit never writes: refused")
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{path} is not a regular file: refused")
    if st.st_uid != os.getuid():
        raise UserError(f"{path} belongs to another user (uid {st.st_uid}), not to this sweep's: refused")


class Place:
    """A file or folder in a sweep's storage: `path` on the local filesystem (fs None) or on `fs` (a pyarrow
    filesystem), printed as `label`."""

    def __init__(self, path: str, fs=None, label: str | None = None):
        self.path, self.fs = path, fs
        self.label = label if label is not None else path

    @classmethod
    def of(cls, where: str | os.PathLike) -> Place:
        where = str(where)
        if not is_uri(where):
            return cls(str(Path(where).expanduser()))
        import pyarrow.fs

        fs, path = pyarrow.fs.FileSystem.from_uri(where)
        return cls(path.rstrip("/"), fs, display(where))

    @property
    def local(self) -> Path | None:
        return Path(self.path) if self.fs is None else None

    def __truediv__(self, name: str) -> Place:
        return Place(f"{self.path}/{name}", self.fs, f"{self.label}/{name}")

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def parent(self) -> Place:
        return Place(self.path.rsplit("/", 1)[0], self.fs, self.label.rsplit("/", 1)[0])

    def __str__(self) -> str:
        return self.label

    def _info(self):
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        """Whether anything is there (locally: a symlink too, dangling or not)."""
        if self.fs is None:
            return os.path.lexists(self.path)
        import pyarrow.fs

        return self._info().type != pyarrow.fs.FileType.NotFound

    def is_dir(self) -> bool:
        if self.fs is None:
            return os.path.isdir(self.path)
        import pyarrow.fs

        return self._info().type == pyarrow.fs.FileType.Directory

    def children(self) -> list[str]:
        """The names in this folder ([] when there is none)."""
        if self.fs is None:
            return sorted(os.listdir(self.path)) if os.path.isdir(self.path) else []
        import pyarrow.fs

        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.path, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def read_bytes(self) -> bytes:
        """The file's bytes; locally only this user's own regular file (UserError otherwise)."""
        if self.fs is None:
            check_own_file(self.path)
            return Path(self.path).read_bytes()
        with self.fs.open_input_stream(self.path) as f:
            return f.read()

    def write_bytes(self, data: bytes) -> None:
        """Replace the file with `data` atomically (locally `disk.replace_file`: a full disk raises
        disk.DiskFull naming the path, a planted symlink is replaced, not written through)."""
        if self.fs is None:
            from raycredit import disk

            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            disk.replace_file(Path(self.path), lambda f: f.write(data))
            return
        self.fs.create_dir(self.parent.path, recursive=True)
        with self.fs.open_output_stream(self.path) as f:  # the object appears whole when the stream closes
            f.write(data)

    def remove(self) -> None:
        """Delete the file or folder (nothing when there is none; locally a symlink itself, never its target)."""
        if self.fs is None:
            p = Path(self.path)
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
            return
        import pyarrow.fs

        kind = self._info().type
        if kind == pyarrow.fs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind == pyarrow.fs.FileType.File:
            self.fs.delete_file(self.path)

    def move(self, to: Place) -> None:
        """Move this file or folder (locally the entry itself, never a symlink's target) to `to`."""
        if self.fs is None:
            Path(to.path).parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path, to.path)
            return
        self.fs.create_dir(to.parent.path, recursive=True)
        self.fs.move(self.path, to.path)


def storage_root(where: str, flag: str = "--storage") -> str:
    """`where` checked (`check_storage`, or a folder that can be made and written, with space free), as Ray Tune
    and the trials are given it: a URI as it is, a folder as an absolute path."""
    if is_uri(where):
        check_storage(where, flag)
        return where
    from raycredit import disk

    path = Path(where).expanduser().resolve()
    disk.check_writable(path, flag)
    return str(path)


def check_restorable(where: str, flag: str = "--storage") -> None:
    """UserError for object storage, where a search must resume with `Tuner.restore`: that unpickles Tune's
    state from the storage, and whose files those are raycredit can check in a folder
    (`engine.check_trusted`) but not in a bucket."""
    if is_uri(where):
        raise UserError(f"{flag} {display(where)}: an Optuna search resumes by unpickling Tune's state from its "
                        "storage, whose owner raycredit can check in a folder but not in object storage; give it a "
                        "folder (on a cluster, one that every node mounts)")


# seconds the preflight's probe of Google Cloud Storage retries before it calls the storage unreachable: the
# client's own limit (google-cloud-cpp's STORAGE_CLIENT_DEFAULT_MAXIMUM_RETRY_PERIOD, 15 minutes) is right for
# trials riding out an outage, not for a mistyped endpoint or a machine without credentials
PROBE_RETRY_S = 15


def check_storage(where: str, flag: str = "--storage") -> None:
    """UserError unless `where`, an object-storage URI, can be written, read back and deleted by this process
    (reachable endpoint, existing bucket, valid credentials); leaves nothing there. A missing bucket is refused,
    never made: pyarrow's Google Cloud Storage client creates the bucket of a folder it is asked to make."""
    parts = urlsplit(where)
    if parts.scheme in ("gs", "gcs") and "retry_limit_seconds" not in parts.query:
        where = urlunsplit(parts._replace(query="&".join(filter(None, [parts.query,
                                                                       f"retry_limit_seconds={PROBE_RETRY_S}"]))))
    place = check_uri(where, flag)
    bucket = Place(place.path.split("/", 1)[0], place.fs)
    probe = place / f".raycredit-probe-{uuid.uuid4().hex}"
    try:
        if not bucket.exists():
            raise UserError(f"{flag} {display(where)}: there is no bucket {bucket.path} (raycredit makes none)")
        probe.write_bytes(b"probe")
        if probe.read_bytes() != b"probe":
            raise OSError("the object read back differs from the one written")
        probe.remove()
    except (OSError, ValueError) as e:  # ValueError: pyarrow's ArrowInvalid, a request the server refused
        raise UserError(f"{flag} {display(where)}: cannot write there: {first_line(e)}") from None
