"""Channel construction shared by the sync and asyncio clients: target, TLS, token,
service config and the namespace check."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

import grpc

PathLike = Union[str, "os.PathLike[str]"]
ServiceConfig = Union[None, bool, PathLike, Mapping[str, Any]]
ChannelOptions = Sequence[Tuple[str, Any]]

SERVICE_CONFIG_PATH = Path(__file__).resolve().parent / "_gen" / "service-config.json"
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: a header value that needs no escaping


def check_namespace(namespace: str) -> str:
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"baton: invalid namespace {namespace!r}: expected [a-z0-9][a-z0-9_.-]{{0,62}}"
        )
    return namespace


@dataclass(frozen=True)
class Target:
    """Where and how to connect: ``address`` is host:port, ``secure`` means TLS."""

    address: str
    secure: bool


def parse_target(target: str) -> Target:
    """``https://host[:port]`` is TLS (port 443 by default); ``http://host:port`` and a
    bare ``host:port`` are plaintext."""
    if not isinstance(target, str) or not target.strip():
        raise ValueError("baton: target must be a non-empty string such as '127.0.0.1:50051'")
    text = target.strip()
    if "://" not in text:
        scheme, rest = "", text
    else:
        scheme, rest = text.split("://", 1)
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(
                f"baton: unsupported target {target!r}: use host:port or http://host:port "
                f"(plaintext), or https://host[:port] (TLS)"
            )
    parts = urlsplit("//" + rest)
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"baton: target {target!r} must be only a host and a port")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"baton: target {target!r} has an invalid port") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"baton: target {target!r} has no host")
    if port is None:
        if scheme != "https":
            raise ValueError(f"baton: target {target!r} needs a port, e.g. {host}:50051")
        port = 443
    shown = f"[{host}]" if ":" in host else host
    return Target(f"{shown}:{port}", scheme == "https")


def _read(path: Optional[PathLike], what: str) -> Optional[bytes]:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"baton: cannot read {what} {os.fspath(path)!r}: {err.strerror}") from None


def channel_credentials(
    target: Target,
    ca_file: Optional[PathLike],
    cert_file: Optional[PathLike],
    key_file: Optional[PathLike],
) -> Optional[grpc.ChannelCredentials]:
    """TLS credentials for an https target (None for plaintext)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("baton: mTLS needs both cert_file and key_file")
    if not target.secure:
        if ca_file is not None or cert_file is not None:
            raise ValueError(
                "baton: ca_file, cert_file and key_file need an https:// target "
                f"({target.address} is plaintext)"
            )
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "ca_file"),
        private_key=_read(key_file, "key_file"),
        certificate_chain=_read(cert_file, "cert_file"),
    )


def call_metadata(token: Optional[str]) -> Tuple[Tuple[str, str], ...]:
    """Metadata sent on every call: ``authorization: Bearer <token>`` when a token is set."""
    if token is None:
        return ()
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ValueError("baton: token must be a non-empty string of visible ASCII characters")
    return (("authorization", f"Bearer {token}"),)


def service_config_json(config: ServiceConfig) -> Optional[str]:
    """The gRPC service config to preconfigure: the packaged copy of
    ``clients/service-config.json`` by default; ``False`` for none."""
    if config is False:
        return None
    if config is None or config is True:
        return SERVICE_CONFIG_PATH.read_text(encoding="utf-8")
    if isinstance(config, Mapping):
        return json.dumps(config)
    text = os.fspath(config)
    if text.lstrip().startswith("{"):
        json.loads(text)
        return text
    try:
        with open(text, encoding="utf-8") as fh:
            return json.dumps(json.load(fh))
    except OSError as err:
        raise ValueError(f"baton: cannot read service config {text!r}: {err.strerror}") from None


def channel_options(config: ServiceConfig, extra: ChannelOptions) -> List[Tuple[str, Any]]:
    opts: List[Tuple[str, Any]] = []
    cfg = service_config_json(config)
    if cfg is not None:
        opts.append(("grpc.service_config", cfg))
        opts.append(("grpc.enable_retries", 1))
    opts.extend(extra)
    return opts
