"""Check an exported model before it runs: its hash and the manifest's signature.

The manifest beside a model holds the SHA-256 of every exported file; a hash
that differs means the file changed after export. A signature over the
manifest (``manifest.sig``) shows who exported it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .errors import ModelFileError, SignatureError
from .metadata import MANIFEST_FILE, SIGNATURE_FILE

# Chunk size for hashing: large enough to be fast, small enough for a device.
_HASH_CHUNK_BYTES = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_signature(
    manifest_path: str | os.PathLike[str], public_key: str | os.PathLike[str]
) -> None:
    """Check ``manifest.sig`` beside the manifest against a trusted public key.

    The signature covers the manifest's bytes, and the manifest holds the
    SHA-256 of every exported file: a file that still matches a manifest whose
    signature verifies is the file the key's holder exported. Hashes alone only
    detect corruption (whoever rewrites a file can rewrite its hash too); the
    signature detects tampering. OpenSSF's ``model-signing`` library verifies
    (elliptic-curve key mode, offline); it is imported only here, so a device
    that checks no signature needs neither it nor its dependencies.

    Raises
    ------
    SignatureError
        No signature, an unreadable key, or a signature that does not verify.
    """
    manifest_path, public_key = Path(manifest_path), Path(public_key)
    signature = manifest_path.with_name(SIGNATURE_FILE)
    if not manifest_path.is_file():
        raise SignatureError(
            f"{manifest_path} not found: a signed export has one beside the model"
        )
    if not signature.is_file():
        raise SignatureError(
            f"{manifest_path.parent}: no {SIGNATURE_FILE}, the export is unsigned; "
            f"refusing it because a public key ({public_key}) was given"
        )
    if not public_key.is_file():
        raise SignatureError(f"public key {public_key} not found")
    try:
        from model_signing import verifying
    except ImportError as e:
        raise SignatureError(
            "checking a signature needs the model-signing package "
            "(pip install -r requirements-edge.txt)"
        ) from e
    try:
        config = verifying.Config()  # type: ignore[no-untyped-call]
        config.use_elliptic_key_verifier(public_key=public_key).verify(
            manifest_path, signature
        )
    except Exception as e:  # model-signing raises ValueError and its own types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = (
            "the manifest was changed after it was signed"
            if first.startswith("Signature mismatch")
            else f"not signed by {public_key} ({first[:200]})"
        )
        raise SignatureError(
            f"{signature} does not verify: {reason}; refusing this export"
        ) from e


def check_manifest_hash(path: Path, *, required: bool = False) -> None:
    """Refuse a model whose bytes differ from the manifest beside it, if any.

    ``required``: the manifest (signature checked) must exist and list the model.
    """
    manifest_path = path.parent / MANIFEST_FILE
    if not manifest_path.is_file() and not required:
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entry = manifest["artefacts"].get(path.name)
    except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as e:
        raise ModelFileError(
            f"{manifest_path} is not a fedge manifest ({e}); re-export with "
            "`fedge export RUN_DIR` or load with verify=False"
        ) from e
    if entry is None:
        if required:
            raise SignatureError(
                f"{manifest_path} does not list {path.name}: the signature does "
                "not cover this file; refusing it"
            )
        return
    actual = sha256_file(path)
    if actual != entry.get("sha256"):
        raise ModelFileError(
            f"{path} does not match {manifest_path}: sha256 {actual}, expected "
            f"{entry.get('sha256')}; the file was changed after export. Refusing "
            "to load it; re-export or restore the original"
        )
