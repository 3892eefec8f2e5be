"""Load the Ed25519 public keys this device trusts to sign manifests."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgefleet.device.errors import ConfigError
from edgefleet.shared.errors import KeyFormatError
from edgefleet.shared.manifest import key_id_for, load_public_key

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

_SUFFIXES = frozenset({".pem", ".pub"})


def _key_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"trusted signing key {path} does not exist (trust.signing_keys)")
    return files


def load_trusted_keys(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Map key id -> public key for every PEM file (or .pem/.pub in each folder) listed.

    Raises:
        ConfigError: a path is missing or a file is not an Ed25519 public key.
    """
    keys: dict[str, Ed25519PublicKey] = {}
    for file in _key_files(paths):
        try:
            key = load_public_key(file.read_bytes())
        except (OSError, KeyFormatError) as exc:
            raise ConfigError(f"trusted signing key {file} is unusable: {exc}") from exc
        keys[key_id_for(key)] = key
    return keys
