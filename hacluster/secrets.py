"""BMC passwords in the replicated state: sealed with the cluster secret.

The password an operator gives (`hactl bmc set --password-file`) is encrypted
by the peer that proposes the command, with a key derived from the cluster
secret that every peer holds (and must hold: it also encrypts Raft traffic).
The log, snapshots, events and `hactl config show` only ever carry the sealed
bytes; a fence backend unseals it just before it talks to the BMC.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hacluster.ports import Secret

_INFO = b"hacluster bmc password v1"


class SecretError(ValueError):
    """A sealed value cannot be opened (wrong cluster secret or corrupt bytes)."""


def _fernet(cluster_secret: str) -> Fernet:
    if not cluster_secret:
        raise SecretError("the cluster secret is empty")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
        cluster_secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def seal(cluster_secret: str, password: str) -> bytes:
    if not password:
        return b""
    return _fernet(cluster_secret).encrypt(password.encode())


def unseal(cluster_secret: str, sealed: bytes) -> Secret:
    if not sealed:
        return Secret("")
    try:
        return Secret(_fernet(cluster_secret).decrypt(sealed).decode())
    except (InvalidToken, UnicodeDecodeError):
        raise SecretError("sealed BMC password cannot be opened with this cluster secret "
                          "(was it set with another secret?)") from None
