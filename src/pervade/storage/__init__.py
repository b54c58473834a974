"""Artifact storage shared by the driver and the workers: content digests, manifests and the
workers' local disk cache. No Dask here, so both sides of the boundary may import it."""

from pervade.storage.digests import FileRecord, Manifest, digest_files, list_files

__all__ = ["FileRecord", "Manifest", "digest_files", "list_files"]
