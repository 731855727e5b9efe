"""Certificates made for the test (a CA, a server cert for 127.0.0.1, a client cert) and
a gRPC forwarder: a real gRPC server in front of a real baton that records the metadata
it receives and passes every call through, byte for byte. baton does not serve TLS or
check tokens yet; the forwarder is how the tests see what the client puts on the wire."""

from __future__ import annotations

import datetime
import ipaddress
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certs(out: Path) -> Dict[str, Path]:
    """ca.pem; server.pem/server.key (SAN 127.0.0.1, localhost); client.pem/client.key."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("baton test CA"))
        .issuer_name(_name("baton test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": out / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage, san in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH, [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("baton-test-client")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"baton test {who}"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files[who] = out / f"{who}.pem"
        files[f"{who}_key"] = out / f"{who}.key"
        files[who].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{who}_key"].write_bytes(_pem_key(key))
    return files


class Forwarder:
    """A gRPC server (plaintext, TLS or mTLS) forwarding every call to `upstream`."""

    def __init__(self, upstream: str, certs: Optional[Dict[str, Path]] = None, *, mtls: bool = False) -> None:
        self.seen: List[Tuple[str, Dict[str, str]]] = []  # (method, metadata) per call
        self._channel = grpc.insecure_channel(upstream)
        self._server = grpc.server(ThreadPoolExecutor(8), handlers=[_Handler(self)])
        if certs is None:
            port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            creds = grpc.ssl_server_credentials(
                [(certs["server_key"].read_bytes(), certs["server"].read_bytes())],
                root_certificates=certs["ca"].read_bytes() if mtls else None,
                require_client_auth=mtls,
            )
            port = self._server.add_secure_port("127.0.0.1:0", creds)
        self.port = port
        self._server.start()

    def record(self, method: str, ctx: grpc.ServicerContext) -> Tuple[Tuple[str, Any], ...]:
        md = {k: v for k, v in ctx.invocation_metadata() if isinstance(v, str)}
        self.seen.append((method.rsplit("/", 1)[-1], md))
        return ()

    def close(self) -> None:
        self._server.stop(None)
        self._channel.close()


class _Handler(grpc.GenericRpcHandler):
    def __init__(self, fwd: Forwarder) -> None:
        self.fwd = fwd

    def service(self, details: grpc.HandlerCallDetails) -> Optional[grpc.RpcMethodHandler]:
        method: str = details.method  # type: ignore[attr-defined]
        fwd = self.fwd

        def unary(req: bytes, ctx: grpc.ServicerContext) -> bytes:
            fwd.record(method, ctx)
            try:
                return fwd._channel.unary_unary(method)(req, timeout=ctx.time_remaining())  # type: ignore[no-any-return]
            except grpc.RpcError as err:
                ctx.set_trailing_metadata(err.trailing_metadata())  # type: ignore[attr-defined]
                ctx.abort(err.code(), err.details())  # type: ignore[attr-defined]
                raise

        def stream(req: bytes, ctx: grpc.ServicerContext) -> Iterator[bytes]:
            fwd.record(method, ctx)
            yield from fwd._channel.unary_stream(method)(req)

        if method.endswith("/StreamEvents"):
            return grpc.unary_stream_rpc_method_handler(stream)
        return grpc.unary_unary_rpc_method_handler(unary)
