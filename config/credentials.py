"""Decrypting (and encrypting) credentials stored by CHT's credentials API in `medic-vault`.

CHT's scheme: the key is the CouchDB server secret's UTF-8 bytes, repeated until at least
32 bytes long, first 32 bytes kept; the stored `password` is `<iv hex>:<ciphertext hex>`,
AES-256-CBC with PKCS#7 padding and a random 16-byte IV; the plaintext is UTF-8.

Pure logic: no I/O. Error messages never include the secret, the key, the plaintext or the
stored value, and no exception is chained to one that might hold them.
"""

from __future__ import annotations

import os
import re

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KEY_LENGTH = 32
IV_LENGTH = 16
_BLOCK_BITS = 128
_HEX = re.compile(r"[0-9a-fA-F]*")  # bytes.fromhex alone would also accept spaces


class CredentialError(Exception):
    """A credential cannot be encrypted or decrypted (malformed value, wrong key, bad secret)."""


def derive_key(secret: str) -> bytes:
    """CHT's AES key for a CouchDB secret: its UTF-8 bytes repeated, first 32 bytes."""
    if not isinstance(secret, str) or not secret:
        # CHT refuses an unset secret too; say so without echoing anything.
        raise CredentialError("the CouchDB secret is empty or not a string")
    raw = secret.encode("utf-8")
    repeats = -(-KEY_LENGTH // len(raw))  # ceiling division
    return (raw * repeats)[:KEY_LENGTH]


def _from_hex(text: str, what: str) -> bytes:
    if len(text) % 2 or not _HEX.fullmatch(text):
        raise CredentialError(f"malformed credential: the {what} is not valid hex")
    return bytes.fromhex(text)


def decrypt_credential(password_field: str, secret: str) -> str:
    """Plaintext of a vault doc's `password` (`<iv hex>:<ciphertext hex>`).

    Raises CredentialError when the value is malformed or does not decrypt with this secret
    (bad padding or non-UTF-8 result: a wrong or rotated secret, or a corrupted value).
    """
    if not isinstance(password_field, str):
        raise CredentialError("malformed credential: the stored value is not a string")
    parts = password_field.split(":")
    if len(parts) != 2:
        raise CredentialError("malformed credential: expected '<iv hex>:<ciphertext hex>'")
    iv = _from_hex(parts[0], "IV")
    ciphertext = _from_hex(parts[1], "ciphertext")
    if len(iv) != IV_LENGTH:
        raise CredentialError(f"malformed credential: the IV is not {IV_LENGTH} bytes")
    if not ciphertext or len(ciphertext) % (_BLOCK_BITS // 8):
        raise CredentialError("malformed credential: the ciphertext is not whole AES blocks")
    key = derive_key(secret)

    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(_BLOCK_BITS).unpadder()
    # Failures are flagged and raised outside the except blocks, so the new exception carries
    # no __context__ that could hold decrypted bytes.
    plaintext: str | None = None
    try:
        data = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        data = None
    if data is not None:
        try:
            plaintext = data.decode("utf-8")
        except UnicodeDecodeError:
            plaintext = None
    if plaintext is None:
        raise CredentialError(
            "credential does not decrypt with this secret (wrong or rotated CouchDB secret, "
            "or a corrupted value)"
        )
    return plaintext


def encrypt_credential(plaintext: str, secret: str, iv: bytes | None = None) -> str:
    """`<iv hex>:<ciphertext hex>` as CHT writes it; a random IV unless one is given."""
    if not isinstance(plaintext, str):
        raise CredentialError("the credential to encrypt is not a string")
    if iv is None:
        iv = os.urandom(IV_LENGTH)
    elif not isinstance(iv, bytes | bytearray) or len(iv) != IV_LENGTH:
        raise CredentialError(f"the IV must be {IV_LENGTH} bytes")
    key = derive_key(secret)
    encoded: bytes | None
    try:
        encoded = plaintext.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates; raised below, without the text attached
        encoded = None
    if encoded is None:
        raise CredentialError("the credential to encrypt is not encodable as UTF-8")
    padder = padding.PKCS7(_BLOCK_BITS).padder()
    padded = padder.update(encoded) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(iv))).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return f"{bytes(iv).hex()}:{ciphertext.hex()}"
