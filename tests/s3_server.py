"""A real S3-compatible server on loopback for the tests: moto's standalone server (from
`moto[server]`) in a process of its own, spoken to over HTTP by boto3 as any store would be.

The tests make the bucket themselves, as an operator would: Studio never creates one.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
# moto takes any credentials; these are what boto3 and the workers are given.
ACCESS_KEY = "studio-test-key"
SECRET_KEY = "studio-test-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Server:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.log = ROOT / ".run" / f"test-s3-{os.getpid()}-{self.port}.log"

    def start(self, timeout: float = 60) -> None:
        self.log.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the S3 server exited: {self.log.read_text()[-2000:]}")
            if self.answers():
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the S3 server did not start: {self.log.read_text()[-2000:]}")

    def answers(self) -> bool:
        try:
            # moto's own "what do you hold" call, at the server's root.
            with urllib.request.urlopen(self.url + "/moto-api/data.json", timeout=1) as answer:
                return answer.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)

    def client(self):
        """A boto3 client of the test's own, to make buckets and look inside them."""
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def env(self, bucket: str) -> dict[str, str]:
        """The environment that points Studio (a worker, a server) at `bucket` here."""
        return {
            "STUDIO_MEDIA_STORAGE": "s3", "AWS_S3_ENDPOINT_URL": self.url,
            "AWS_STORAGE_BUCKET_NAME": bucket, "AWS_S3_REGION_NAME": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }


def storage_setting(env: dict[str, str]) -> dict:
    """STORAGES["default"] as Studio builds it from `env`, with the credentials (which
    settings leave to boto3's own lookup in the environment) given to it directly, so the
    test process needs no AWS_* variables of its own."""
    from studio.media_storage import media_storage

    setting = media_storage(env["STUDIO_MEDIA_STORAGE"], env)
    setting["OPTIONS"] |= {"access_key": env["AWS_ACCESS_KEY_ID"],
                           "secret_key": env["AWS_SECRET_ACCESS_KEY"]}
    return setting
