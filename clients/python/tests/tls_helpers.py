"""A secured baton for the tests: certificates made for the run (a CA, a server cert for
127.0.0.1, a client cert), a tokens file written from `baton token create`, and the
`baton serve` flags that turn on TLS, mTLS and bearer tokens."""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness import BATON_BIN

#: The client certificate's common name; the tokens file lists it as an [[identity]].
CLIENT_CN = "worker-1"
#: Namespaces the test grants cover (every test's `namespace` fixture starts so); a
#: namespace outside them is what a token may not use.
GRANTED = "t-*"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_certs(out: Path) -> Dict[str, Path]:
    """ca.pem; server.pem/server.key (SAN 127.0.0.1, localhost); client.pem/client.key
    (CN `CLIENT_CN`, SAN DNS baton-test-client)."""
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
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(ca_key, hashes.SHA256())
    )
    files = {"ca": out / "ca.pem"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, cn, usage, san in (
        ("server", "baton test server", ExtendedKeyUsageOID.SERVER_AUTH,
         [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
        ("client", CLIENT_CN, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName("baton-test-client")]),
    ):  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
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


def create_token(subject: str, role: str, namespaces: List[str]) -> Dict[str, str]:
    """`baton token create --output json`: {"secret": …, "entry": …}, as an operator makes them."""
    cmd = [str(BATON_BIN), "token", "create", "--subject", subject, "--role", role, "--output", "json"]
    for ns in namespaces:
        cmd += ["-n", ns]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    made: Dict[str, str] = json.loads(proc.stdout)
    return made


class Secured:
    """Certificates and a tokens file in `workdir`, and the flags that serve with them.

    Tokens (`tokens[name]` is the secret): `admin` (admin everywhere: defines machines),
    `writer` (write in `GRANTED`), `reader` (read in `GRANTED`). The client certificate
    (`CLIENT_CN`) may write in `GRANTED` with no token at all."""

    def __init__(self, workdir: Path) -> None:
        self.certs = make_certs(workdir)
        self.tokens: Dict[str, str] = {}
        entries = []
        for name, role, namespaces in (("admin", "admin", ["*"]), ("writer", "write", [GRANTED]), ("reader", "read", [GRANTED])):
            made = create_token(f"test-{name}", role, namespaces)
            self.tokens[name] = made["secret"]
            entries.append(made["entry"])
        entries.append(f'[[identity]]\nsubject = "{CLIENT_CN}"\nrole = "write"\nnamespaces = ["{GRANTED}"]\n')
        self.tokens_file = workdir / "tokens.toml"
        self.tokens_file.write_text("\n".join(entries))

    def args(self, *, mtls: bool = False) -> List[str]:
        """`baton serve` flags: TLS and tokens; with `mtls`, client certificates required."""
        args = [
            "--tls-cert", str(self.certs["server"]), "--tls-key", str(self.certs["server_key"]),
            "--auth-tokens", str(self.tokens_file),
        ]  # fmt: skip
        if mtls:
            args += ["--tls-client-ca", str(self.certs["ca"])]
        return args

    def client_kw(self, token: Optional[str] = "writer", *, cert: bool = False) -> Dict[str, Any]:
        """Client keyword arguments: the CA, the named token (None: none), the client
        certificate when `cert`."""
        kw: Dict[str, Any] = {"ca_file": self.certs["ca"]}
        if token is not None:
            kw["token"] = self.tokens[token]
        if cert:
            kw.update(cert_file=self.certs["client"], key_file=self.certs["client_key"])
        return kw
