"""Sign an export's manifest, and make the key pair to sign with.

``manifest.json`` holds the SHA-256 of every file the export wrote (whatever
the exporter lists there), so one signature over it covers them all. Hashes
detect corruption only: whoever can write the run folder can change a model
and recompute its hash. A signature by a key the device trusts detects that
tampering.

Signing uses OpenSSF's ``model-signing`` library (what model hubs adopt) in its
elliptic-curve private-key mode, which works offline: no Sigstore service,
no transparency log. The signature is a Sigstore bundle in ``manifest.sig``;
:func:`fedge.edge_export.runtime.verify_signature` checks it on the device.
"""

from __future__ import annotations

from pathlib import Path

from fedge.shared.errors import ConfigError, ModelError
from fedge.shared.run_folder import MANIFEST_FILE, SIGNATURE_FILE


def sign_manifest(run_dir: str | Path, private_key: str | Path) -> Path:
    """Sign ``run_dir/manifest.json`` with ``private_key``; return ``manifest.sig``.

    Parameters
    ----------
    run_dir : path-like
        An exported run folder.
    private_key : path-like
        A PEM elliptic-curve private key (P-256/P-384/P-521), unencrypted:
        :func:`generate_key_pair` or ``openssl ecparam -genkey``.

    Raises
    ------
    ModelError
        No manifest to sign.
    ConfigError
        The key is missing or not an elliptic-curve private key.
    """
    from model_signing import signing

    manifest = Path(run_dir) / MANIFEST_FILE
    if not manifest.is_file():
        raise ModelError(
            f"no {MANIFEST_FILE} in {run_dir} to sign; run `fedge export` first"
        )
    key = Path(private_key)
    if not key.is_file():
        raise ConfigError(f"signing key {key} not found")
    try:
        # model-signing leaves its constructors unannotated.
        config = signing.Config()  # type: ignore[no-untyped-call]
        signer = config.use_elliptic_key_signer(private_key=key)
    except (ValueError, TypeError, AttributeError) as e:  # not PEM / encrypted / not EC
        raise ConfigError(
            f"signing key {key} is not an unencrypted PEM elliptic-curve private "
            f"key ({e}); make one with `fedge keygen`"
        ) from e
    signature = manifest.with_name(SIGNATURE_FILE)
    signer.sign(manifest, signature)
    return signature


def generate_key_pair(private_key: str | Path) -> Path:
    """Write a new P-256 private key (PEM, mode 0600) and its ``.pub``; return that.

    Raises
    ------
    ConfigError
        If ``private_key`` already exists (a key is never overwritten).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key_path = Path(private_key)
    public_path = key_path.with_name(key_path.name + ".pub")
    for path in (key_path, public_path):
        if path.exists():
            raise ConfigError(
                f"{path} already exists; refusing to overwrite a key (choose "
                "another name or remove it yourself)"
            )
    key = ec.generate_private_key(ec.SECP256R1())
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )
    return public_path
