"""Choosing the object store from the settings: a local directory (the default) or S3."""

from __future__ import annotations

from hub.settings import Settings
from imaging.s3store import S3Store
from imaging.store import FileStore, ObjectStore


def object_store(settings: Settings) -> ObjectStore:
    """The store ``settings.object_store`` names.

    The S3 bucket is not created here: that is an installation step (``S3Store.ensure_bucket``),
    and a missing bucket surfaces as an ``ObjectStoreError`` at the first request.
    """
    if settings.object_store == "s3":
        secret = settings.s3_secret_access_key
        return S3Store(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            prefix=settings.s3_prefix,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
        )
    return FileStore(settings.resolved_object_store_dir)
