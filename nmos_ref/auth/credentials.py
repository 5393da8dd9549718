"""The Node's OAuth client credentials kept across restarts (IS-10 "Behaviour - Clients": "Client credentials SHOULD
be stored by the client in a safe, permission-restricted, location in non-volatile memory in case of a device
restart to prevent duplicate registrations"): its private key and its registrations, one folder per Node.
"""

from __future__ import annotations
import base64
import hashlib
import json
import os
import tempfile
from typing import Any
from attrs import asdict, frozen
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from twisted.logger import Logger

log = Logger()

KEY_FILE, STATE_FILE = "oauth-client-key.pem", "oauth-registrations.json"
KEY_SIZE = 2048
# IS-10 names no algorithm for client assertions; RS512 is the one it requires of access tokens ("Behaviour - Access
# Tokens"), so an IS-10 authorization server can verify it.
ASSERTION_ALGORITHM = "RS512"


@frozen
class ClientRegistration:
    """What one authorization server registered us as (and with which settings, to notice when they change)."""

    client_id: str
    method: str
    scope: str
    jwks_uri: str | None = None
    client_secret: str | None = None

    def as_json(self) -> dict[str, str]:
        return {name: value for name, value in asdict(self).items() if value is not None}

    @classmethod
    def from_json(cls, data: Any) -> ClientRegistration:
        if not isinstance(data, dict):
            raise ValueError("a registration is not an object")
        for name in ("client_id", "method", "scope"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise ValueError(f"a registration has no {name}")
        for name in ("jwks_uri", "client_secret"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"a registration's {name} is not a string")
        return cls(data["client_id"], data["method"], data["scope"], data.get("jwks_uri"), data.get("client_secret"))


def _public_jwk(key: rsa.RSAPrivateKey) -> dict[str, str]:
    """The public JWK of `key`, its kid the RFC 7638 thumbprint (stable for as long as the key is)."""
    jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    required = {"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}
    digest = hashlib.sha256(json.dumps(required, separators=(",", ":"), sort_keys=True).encode("utf-8")).digest()
    kid = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return {"kty": "RSA", "n": jwk["n"], "e": jwk["e"], "kid": kid, "alg": ASSERTION_ALGORITHM, "use": "sig"}


def _write_atomically(path: str, data: bytes) -> None:
    """Replace `path` with `data` (mode 0600) so a crash leaves the old file or the new one, never a part."""
    folder, name = os.path.split(path)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")  # created 0600
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _move_aside(path: str) -> str:
    """Keep a file we cannot use for someone to look at, out of the way of the new one."""
    aside = path + ".corrupt"
    try:
        os.replace(path, aside)
    except OSError:
        return "(could not be moved)"
    return aside


class CredentialStore:
    """This Node's OAuth credentials on disk, in `state_dir` (0700, files 0600, replaced atomically): its RSA key for
    private_key_jwt and what each authorization server registered it as. Unusable files are moved aside and
    logged, never fatal: the client then registers again."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._dir_checked = False
        self._key: rsa.RSAPrivateKey | None = None
        self.jwk: dict[str, str] | None = None  # the public key, once the key is read or made
        self._registrations: dict[str, ClientRegistration] | None = None  # by issuer; read when first needed

    def _path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def _ensure_dir(self) -> None:
        if self._dir_checked:
            return
        self._dir_checked = True
        try:
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            mode = os.stat(self.state_dir).st_mode & 0o777
        except OSError as exc:
            log.warn("Cannot create {folder} ({reason}); the key and registrations will not survive a restart",
                     folder=self.state_dir, reason=str(exc))
            return
        if mode & 0o077:
            log.warn("{folder} holds this Node's OAuth credentials but is open to others (mode {mode:o}); make it "
                     "0700", folder=self.state_dir, mode=mode)

    def load(self, with_key: bool) -> dict[str, ClientRegistration]:
        """The stored registrations by issuer (read once), and with `with_key` our key made or read now."""
        if self._registrations is None:
            self._ensure_dir()
            if with_key:
                self.private_key()
            self._registrations = self._read_state()
        return self._registrations

    def private_key(self) -> rsa.RSAPrivateKey:
        """Our RSA key: read from state_dir, or made (once) and stored there."""
        if self._key is not None:
            return self._key
        self._ensure_dir()
        path = self._path(KEY_FILE)
        key = None
        try:
            with open(path, "rb") as pem:
                data = pem.read()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warn("Cannot read the private key {path} ({reason}); making a new one", path=path, reason=str(exc))
        else:
            try:
                loaded = serialization.load_pem_private_key(data, password=None)
                if not isinstance(loaded, rsa.RSAPrivateKey) or loaded.key_size < KEY_SIZE:
                    raise ValueError(f"not an RSA key of at least {KEY_SIZE} bits")
                key = loaded
            except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
                aside = _move_aside(path)
                log.warn("Cannot use the private key in {path} ({reason}); made a new one (the file is kept as "
                         "{aside})",
                         path=path, reason=str(exc) or type(exc).__name__, aside=aside)
        if key is None:
            key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
            pem_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
            try:
                _write_atomically(path, pem_bytes)
            except OSError as exc:
                log.warn("Cannot store the private key in {path} ({reason}); a restart will make another",
                         path=path, reason=str(exc))
            else:
                log.info("Made a new {bits}-bit RSA key for private_key_jwt in {path}", bits=KEY_SIZE, path=path)
        self._key, self.jwk = key, _public_jwk(key)
        return key

    def _read_state(self) -> dict[str, ClientRegistration]:
        path = self._path(STATE_FILE)
        try:
            with open(path, encoding="utf-8") as state:
                text = state.read()
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            log.warn("Cannot read {path} ({reason}); starting with no stored registrations", path=path,
                     reason=str(exc))
            return {}
        try:
            document = json.loads(text)
            entries = document.get("registrations") if isinstance(document, dict) else None
            if not isinstance(entries, dict):
                raise ValueError("no 'registrations' object")
            return {issuer.rstrip("/"): ClientRegistration.from_json(entry) for issuer, entry in entries.items()}
        except ValueError as exc:
            aside = _move_aside(path)
            log.warn("The OAuth client state file {path} is corrupt ({reason}); starting with no stored "
                     "registrations (the file is kept as {aside})", path=path, reason=str(exc), aside=aside)
            return {}

    def keep(self, issuer: str, registration: ClientRegistration) -> None:
        """Store what `issuer` registered us as."""
        assert self._registrations is not None
        self._registrations[issuer] = registration
        self._save()

    def _save(self) -> None:
        assert self._registrations is not None
        document = {"registrations": {issuer: registration.as_json()
                                      for issuer, registration in sorted(self._registrations.items())}}
        path = self._path(STATE_FILE)
        try:
            _write_atomically(path, json.dumps(document, indent=2, sort_keys=True).encode("utf-8") + b"\n")
        except OSError as exc:
            log.warn("Cannot store the registrations in {path} ({reason}); a restart will register again",
                     path=path, reason=str(exc))

    def forget(self, issuer: str) -> None:
        assert self._registrations is not None
        if self._registrations.pop(issuer, None) is not None:
            self._save()
