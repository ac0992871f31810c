import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from config.credentials import (
    CredentialError,
    decrypt_credential,
    derive_key,
    encrypt_credential,
)

SECRET = "couch-secret-ключ"
TOKEN = "d2f8a1c0ffee-token"
IV = bytes(range(16))
# Produced by Node.js's crypto (aes-256-cbc, key built as CHT builds it) for SECRET, TOKEN, IV.
NODE_VECTOR = (
    "000102030405060708090a0b0c0d0e0f:f85102d900ebdcaebed557ee768746f12a1614b2977a7b9fca1fbdbd2c7098b2"
)


def independent_encrypt(plaintext: bytes, key: bytes, iv: bytes) -> str:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv.hex() + ":" + (enc.update(padded) + enc.finalize()).hex()


# --- derive_key ---


def test_short_secret_repeated_to_32_bytes():
    assert derive_key("abc") == (b"abc" * 11)[:32]
    assert len(derive_key("abc")) == 32


def test_key_uses_utf8_bytes_not_characters():
    raw = SECRET.encode("utf-8")  # 22 bytes for 17 characters
    assert derive_key(SECRET) == (raw + raw)[:32]


def test_exactly_32_bytes_kept():
    assert derive_key("k" * 32) == b"k" * 32


def test_long_secret_truncated():
    assert derive_key("0123456789" * 5) == b"01234567890123456789012345678901"


def test_one_byte_secret():
    assert derive_key("x") == b"x" * 32


@pytest.mark.parametrize("secret", ["", None, b"bytes", 123])
def test_empty_or_non_string_secret_refused(secret):
    with pytest.raises(CredentialError):
        derive_key(secret)


# --- fixed vectors ---


def test_decrypt_node_vector():
    assert decrypt_credential(NODE_VECTOR, SECRET) == TOKEN


def test_encrypt_matches_node_vector():
    assert encrypt_credential(TOKEN, SECRET, iv=IV) == NODE_VECTOR


def test_encrypt_matches_independent_primitives():
    key = (b"s3cret" * 6)[:32]
    iv = bytes.fromhex("ffeeddccbbaa99887766554433221100")
    expected = independent_encrypt("tökén 🔑".encode(), key, iv)
    assert encrypt_credential("tökén 🔑", "s3cret", iv=iv) == expected
    assert decrypt_credential(expected, "s3cret") == "tökén 🔑"


def test_decrypt_node_vector_empty_plaintext():
    value = "ffeeddccbbaa99887766554433221100:eab35cb1be4b0da6fc88848a85df8ed1"
    assert decrypt_credential(value, "x") == ""


def test_decrypt_node_vector_long_secret_full_block_plaintext():
    value = (
        "0f0e0d0c0b0a09080706050403020100:f209676e2e98a4602df1c2c4706a56654dd5e52b674c668ef09a27ed3a587507"
    )
    secret = "a-secret-that-is-definitely-longer-than-32-bytes"
    assert decrypt_credential(value, secret) == "0123456789abcdef"


def test_uppercase_hex_accepted():
    assert decrypt_credential(NODE_VECTOR.upper(), SECRET) == TOKEN


# --- round trips ---


@pytest.mark.parametrize("plaintext", ["", "a", "0123456789abcdef", "x" * 100, "Token with: colons", "ключ"])
def test_round_trip(plaintext):
    assert decrypt_credential(encrypt_credential(plaintext, SECRET), SECRET) == plaintext


def test_random_iv_each_time():
    a, b = encrypt_credential(TOKEN, SECRET), encrypt_credential(TOKEN, SECRET)
    assert a != b
    assert a.split(":")[0] != b.split(":")[0]


def test_encrypted_format():
    value = encrypt_credential("x" * 16, SECRET, iv=IV)
    iv_hex, ct_hex = value.split(":")
    assert iv_hex == IV.hex()
    assert len(ct_hex) == 64  # a full block of padding is added
    assert value == value.lower()


def test_bytearray_iv_accepted():
    assert encrypt_credential(TOKEN, SECRET, iv=bytearray(IV)) == NODE_VECTOR


@pytest.mark.parametrize("iv", [b"", b"short", bytes(17), "0" * 16])
def test_bad_iv_refused(iv):
    with pytest.raises(CredentialError, match="IV"):
        encrypt_credential(TOKEN, SECRET, iv=iv)


@pytest.mark.parametrize("plaintext", [None, b"bytes", "\ud800"])
def test_bad_plaintext_refused(plaintext):
    with pytest.raises(CredentialError) as err:
        encrypt_credential(plaintext, SECRET)
    assert err.value.__context__ is None


# --- wrong key ---


def test_wrong_secret_refused_without_leaking():
    with pytest.raises(CredentialError) as err:
        decrypt_credential(NODE_VECTOR, "another-secret")
    text = str(err.value)
    assert "another-secret" not in text and TOKEN not in text and SECRET not in text
    assert err.value.__context__ is None and err.value.__cause__ is None


@pytest.mark.parametrize("secret", [f"wrong-{i}" for i in range(40)])
def test_many_wrong_secrets_never_give_the_token(secret):
    # A wrong key occasionally yields valid padding; strict UTF-8 then still refuses it.
    try:
        result = decrypt_credential(encrypt_credential(TOKEN, SECRET), secret)
    except CredentialError:
        return
    assert result != TOKEN


def test_valid_padding_but_not_utf8_refused():
    key = derive_key(SECRET)
    value = independent_encrypt(b"\xff\xfe\xfd", key, IV)
    with pytest.raises(CredentialError) as err:
        decrypt_credential(value, SECRET)
    assert err.value.__context__ is None


def test_tampered_last_block_refused():
    iv_hex, ct_hex = NODE_VECTOR.split(":")
    tampered = f"{iv_hex}:{ct_hex[:-2]}{'00' if ct_hex[-2:] != '00' else '01'}"
    with pytest.raises(CredentialError):
        decrypt_credential(tampered, SECRET)


# --- malformed values ---


@pytest.mark.parametrize(
    "value",
    [
        "",
        ":",
        "nocolon",
        NODE_VECTOR.replace(":", ""),
        NODE_VECTOR + ":00",
        "0001:" + NODE_VECTOR.split(":")[1],  # IV too short
        "00" * 17 + ":" + NODE_VECTOR.split(":")[1],  # IV too long
        NODE_VECTOR.split(":")[0] + ":",  # no ciphertext
        NODE_VECTOR.split(":")[0] + ":abcd",  # not whole blocks
        NODE_VECTOR[:-1],  # odd hex length
        NODE_VECTOR.replace("f8", "zz", 1),  # not hex
        NODE_VECTOR.replace("f851", "f8 1", 1),  # spaces bytes.fromhex would skip
        " " + NODE_VECTOR,
        NODE_VECTOR + "\n",
        None,
        b"00:00",
        42,
    ],
)
def test_malformed_refused(value):
    with pytest.raises(CredentialError) as err:
        decrypt_credential(value, SECRET)
    assert SECRET not in str(err.value)


def test_malformed_message_does_not_echo_value():
    value = "secret-looking-value-without-colon"
    with pytest.raises(CredentialError) as err:
        decrypt_credential(value, SECRET)
    assert value not in str(err.value)


def test_empty_secret_refused_on_decrypt():
    with pytest.raises(CredentialError):
        decrypt_credential(NODE_VECTOR, "")
