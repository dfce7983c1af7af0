"""A real S3 server for tests: moto on a free port of 127.0.0.1, with a bucket, stopped even on failure."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.servers import free_port, running

# moto accepts any key: dummy ones, so real AWS credentials never reach it (nor a message under test).
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "test-access-key",
    "AWS_SECRET_ACCESS_KEY": "test-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# A developer's own AWS profile and config must not steer the tests' boto3.
_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str
    # What a process needs to reach this server through boto3's own variables (add it to a child's env).
    env: dict[str, str]

    def url(self, prefix: str = "") -> str:
        """An s3:// URL in the bucket, as MODEL_STORE_URL takes it."""
        return f"s3://{self.bucket}/{prefix}".rstrip("/")

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
        )


@contextlib.contextmanager
def aws_environment(env: dict[str, str]) -> Iterator[None]:
    """os.environ with these AWS_* variables until the block ends, then as it was (any scope, unlike
    monkeypatch, so a module-scoped fixture can use it)."""
    saved = {name: os.environ.get(name) for name in [*env, *_UNSET]}
    try:
        for name in _UNSET:
            os.environ.pop(name, None)
        os.environ.update(env)
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def moto_s3(bucket: str = "models", *, set_env: bool = True, log: Path | None = None) -> Iterator[S3Server]:
    """moto_server on a free port with `bucket` created; set_env: boto3 in this process reaches it too
    (AWS_ENDPOINT_URL and dummy keys in os.environ until the block ends)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = Path(sys.executable).parent / "moto_server"
    env = {
        **CREDENTIALS,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        # Without keys boto3 would ask the EC2 metadata address: tests only ever talk to 127.0.0.1.
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    with running([str(moto), "-H", "127.0.0.1", "-p", str(port)], ready_url=endpoint, log=log):
        server = S3Server(endpoint, bucket, env)
        server.client().create_bucket(Bucket=bucket)
        with aws_environment(env) if set_env else contextlib.nullcontext():
            yield server
