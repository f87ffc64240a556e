"""A real S3-compatible server for tests: moto's standalone server (`moto_server`, from the index's
moto[server]) on 127.0.0.1, in its own process group, stopped (that group only) afterwards; never a mock
inside the test's process."""

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ports import free_port, script, server

# moto accepts any credentials unless told to check them; these are what the trials' client sends
KEYS = {"AWS_ACCESS_KEY_ID": "raycredit-test-key", "AWS_SECRET_ACCESS_KEY": "raycredit-test-secret-do-not-print",
        "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class S3:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    proc: object

    def env(self) -> dict[str, str]:
        """The environment a driver (and the trials of its local Ray) reaches this server with: the standard
        variables of the AWS clients (pyarrow's, boto3's), endpoint included."""
        return {**KEYS, "AWS_ENDPOINT_URL": self.endpoint}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEYS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=KEYS["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def moto_command(port: int) -> list[str]:
    return [script("moto_server"), "-H", "127.0.0.1", "-p", str(port)]


@contextmanager
def s3_server(log: Path, bucket: str = "raycredit", check_credentials: bool = False):
    """An S3 server with `bucket` made; with check_credentials, one that refuses every key it was not given
    (moto's IAM checks from the first request on: no key exists)."""
    port = free_port()
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {}
    with server(moto_command(port), port, log, env) as proc:
        s3 = S3(f"http://127.0.0.1:{port}", bucket, proc)
        if not check_credentials:
            s3.client().create_bucket(Bucket=bucket)
        yield s3
