"""ZMQ CURVE keys for both channels: robots to the policy server, operators to a controller.

The side that binds (the policy server; a controller's operator socket) reads a keys folder
holding its own pair, ``server.key`` and ``server.key_secret``, and in ``clients/`` the public
``.key`` of every peer allowed in; the side that connects (a robot's client; ``rtvla
operator``) reads a folder holding the binder's public ``server.key`` and its own
``client.key_secret``. ``generate_keypair`` makes the pairs. With keys, a peer whose public
key is not listed cannot complete the handshake, so it can send nothing at all.

pyzmq only: the robot side and the serving side both import this module.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CurveKeys:
    """The binding side's keys (Z85 bytes): its own pair and the peer public keys it accepts."""

    server_secret: bytes
    server_public: bytes
    allowed_client_public_keys: tuple[bytes, ...]

    @classmethod
    def from_dir(cls, directory: str | Path) -> CurveKeys:
        """Read ``server.key_secret`` and every ``clients/*.key`` of directory."""
        directory = Path(directory)
        secret_file = directory / "server.key_secret"
        if not secret_file.is_file():
            raise FileNotFoundError(
                f"no {secret_file}: create the key pair with "
                f"runtime.curve.generate_keypair({str(directory)!r}, 'server')"
            )
        public, secret = zmq.auth.load_certificate(secret_file)
        clients = tuple(
            zmq.auth.load_certificate(p)[0] for p in sorted((directory / "clients").glob("*.key"))
        )
        if not clients:
            raise FileNotFoundError(
                f"no client keys in {directory / 'clients'}: copy there the public .key file "
                "of every client allowed to connect (generate_keypair makes a pair)"
            )
        return cls(server_secret=secret, server_public=public, allowed_client_public_keys=clients)


@dataclass(frozen=True)
class ClientCurveKeys:
    """The connecting side's keys (Z85 bytes): the binder's public key and its own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_dir(cls, directory: str | Path) -> ClientCurveKeys:
        """Read ``server.key`` and ``client.key_secret`` (made by ``generate_keypair``)."""
        directory = Path(directory)
        server_file, client_file = directory / "server.key", directory / "client.key_secret"
        for path in (server_file, client_file):
            if not path.is_file():
                raise FileNotFoundError(
                    f"no {path}: put the server's public server.key and this client's "
                    "client.key_secret (made by runtime.curve.generate_keypair) there, "
                    "and the client's public client.key in the server's clients/ folder"
                )
        server_public, _ = zmq.auth.load_certificate(server_file)
        public, secret = zmq.auth.load_certificate(client_file)
        return cls(server_public=server_public, public=public, secret=secret)


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair ``<name>.key`` (public) and ``<name>.key_secret`` to directory."""
    Path(directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(directory, name)
    return Path(public), Path(secret)


class _AllowedKeys:
    """Credentials provider for zmq.auth: accept only the listed client public keys."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = frozenset(keys)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


def secure_server(context: zmq.Context, socket: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``socket`` (not yet bound) a CURVE server admitting only ``keys``' clients; returns
    the started authenticator, which the caller stops when it closes the socket."""
    if not zmq.has("curve"):
        raise ValueError("this libzmq has no CURVE support: install pyzmq with libsodium")
    auth = ThreadAuthenticator(context, log=log.getChild("auth"))
    auth.start()
    auth.configure_curve_callback(
        "*", credentials_provider=_AllowedKeys(keys.allowed_client_public_keys)
    )
    socket.curve_secretkey = keys.server_secret
    socket.curve_publickey = keys.server_public
    socket.curve_server = True
    return auth


def secure_client(socket: zmq.Socket, keys: ClientCurveKeys) -> None:
    """Make ``socket`` (not yet connected) a CURVE client with ``keys``."""
    if not zmq.has("curve"):
        raise ValueError("this libzmq has no CURVE support: install pyzmq with libsodium")
    socket.curve_serverkey = keys.server_public
    socket.curve_publickey = keys.public
    socket.curve_secretkey = keys.secret


def is_loopback(endpoint: str) -> bool:
    """Whether a ZMQ endpoint (``tcp://host:port``, ``ipc://``, ``inproc://``) or a peer's
    address is reachable from this machine only."""
    if "://" not in endpoint:  # a peer's address, as ZMQ's Peer-Address property gives it
        try:
            return ipaddress.ip_address(endpoint).is_loopback
        except ValueError:
            return endpoint == "localhost"
    parts = urlsplit(endpoint)
    if parts.scheme in ("ipc", "inproc"):
        return True
    try:
        return ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        return parts.hostname == "localhost"
