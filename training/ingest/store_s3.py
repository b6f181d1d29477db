"""The inbox on S3-compatible object storage (AWS S3, MinIO, Ceph RGW): ``s3://bucket/prefix``.

Same keys as the local inbox, under ``prefix/``. boto3 finds credentials and the region the
usual way (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, ``~/.aws/``, an instance role);
the endpoint of a non-AWS server comes from ``--s3-endpoint`` or ``AWS_ENDPOINT_URL_S3``.

An object appears whole or not at all (S3 has no partial PUT), so no temporary keys are needed.
Idempotence: ``put`` first asks whether the sidecar exists (HEAD); the sidecar is then written
with ``If-None-Match: *``, so of two uploads of the same sample racing each other the store
keeps one sidecar and exactly one answer says "stored" (the JPEG, same key and same bytes, may
be written twice: harmless). Servers that do not support conditional writes (answering 501)
get a plain PUT: there the race remains and both racing uploads may answer "stored" — still
one object per key, nothing lost or doubled in the inbox.
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from training.ingest.errors import IngestError, SampleNotFound, StoreError
from training.ingest.store import Store

log = logging.getLogger(__name__)

_MISSING = {"404", "NoSuchKey", "NotFound"}
_TAKEN = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_UNSUPPORTED = {"NotImplemented", "501"}
POOL_CONNECTIONS = 64  # uploads are stored from the server's thread pool (40 threads)


def _code(exc: Exception) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", client=None, endpoint_url: str | None = None):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors = (BotoCoreError, ClientError)
        self._client_error = ClientError
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                max_pool_connections=POOL_CONNECTIONS,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self._conditional = True

    @classmethod
    def from_url(cls, url: str, endpoint_url: str | None = None) -> S3Store:
        parsed = urlparse(url)
        if not parsed.netloc or parsed.query or parsed.fragment:
            raise IngestError(
                f"inbox {url!r} is not s3://bucket or s3://bucket/prefix",
                "e.g. s3://edgecam-samples/inbox",
            )
        return cls(parsed.netloc, parsed.path, endpoint_url=endpoint_url)

    def _fail(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"S3 {what} of s3://{self.bucket}/{self.prefix}{key} failed: {exc}")

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            raise StoreError(
                f"cannot use the S3 bucket {self.bucket!r}: {exc}",
                "create the bucket, check the credentials (AWS_ACCESS_KEY_ID, ...) and the "
                "endpoint (--s3-endpoint or AWS_ENDPOINT_URL_S3)",
            ) from None

    def close(self) -> None:
        self.client.close()

    def _exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._client_error as exc:
            if _code(exc) in _MISSING:
                return False
            raise self._fail("HEAD", key, exc) from exc
        except self._errors as exc:
            raise self._fail("HEAD", key, exc) from exc
        return True

    def _put(self, key: str, data: bytes, **conditions: str) -> None:
        content_type = "image/jpeg" if key.endswith(".jpg") else "application/json"
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=data,
            ContentType=content_type,
            **conditions,
        )

    def _write(self, key: str, data: bytes) -> None:
        try:
            self._put(key, data)
        except self._errors as exc:
            raise self._fail("PUT", key, exc) from exc

    def _create(self, key: str, data: bytes) -> bool:
        try:
            if self._conditional:
                try:
                    self._put(key, data, IfNoneMatch="*")
                    return True
                except self._client_error as exc:
                    if _code(exc) in _TAKEN:
                        return False
                    if _code(exc) not in _UNSUPPORTED:
                        raise
                    log.warning("%s has no conditional writes: plain PUTs from now on", self.url)
                    self._conditional = False
            self._put(key, data)
            return True
        except self._errors as exc:
            raise self._fail("PUT", key, exc) from exc

    def _delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except self._errors as exc:
            raise self._fail("DELETE", key, exc) from exc

    def _read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except self._client_error as exc:
            if _code(exc) in _MISSING:
                raise SampleNotFound(
                    f"no sample object s3://{self.bucket}/{self.prefix}{key}"
                ) from None
            raise self._fail("GET", key, exc) from exc
        except self._errors as exc:
            raise self._fail("GET", key, exc) from exc

    def _list(self, prefix: str) -> tuple[list[str], list[str]]:
        base = self.prefix + prefix
        folders: list[str] = []
        files: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                folders += [
                    p["Prefix"][len(base) :].rstrip("/") for p in page.get("CommonPrefixes", [])
                ]
                files += [o["Key"][len(base) :] for o in page.get("Contents", [])]
        except self._errors as exc:
            raise self._fail("LIST", prefix, exc) from exc
        return folders, files
