// A secured baton for the tests: certificates made for the run (a CA, a server cert for
// 127.0.0.1, a client cert), a tokens file written from `baton token create`, and the
// `baton serve` flags that turn on TLS, mTLS and bearer tokens.
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import forge from 'node-forge';
import { BATON_BIN } from './harness.mjs';

/** The client certificate's common name; the tokens file lists it as an [[identity]]. */
export const CLIENT_CN = 'worker-1';
/** Namespaces the test grants cover (every test namespace starts so, see newNamespace). */
export const GRANTED = 'n-*';

/** An RSA key pair made by Node's own crypto (fast), in node-forge's form. */
function keyPair() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const pem = privateKey.export({ type: 'pkcs1', format: 'pem' });
  const priv = forge.pki.privateKeyFromPem(pem);
  return { privateKey: priv, publicKey: forge.pki.setRsaPublicKey(priv.n, priv.e) };
}

function certificate(subjectCn, issuer, publicKey, signingKey, extensions) {
  const cert = forge.pki.createCertificate();
  cert.publicKey = publicKey;
  cert.serialNumber = forge.util.bytesToHex(forge.random.getBytesSync(8)).replace(/^[89a-f]/, '1');
  cert.validity.notBefore = new Date(Date.now() - 5 * 60_000);
  cert.validity.notAfter = new Date(Date.now() + 24 * 3600_000);
  cert.setSubject([{ name: 'commonName', value: subjectCn }]);
  cert.setIssuer(issuer ?? [{ name: 'commonName', value: subjectCn }]);
  cert.setExtensions(extensions);
  cert.sign(signingKey, forge.md.sha256.create());
  return cert;
}

/** ca.pem; server.pem/server.key (SAN 127.0.0.1, localhost); client.pem/client.key (CN
 * CLIENT_CN, SAN DNS baton-test-client). */
export function makeCerts(dir) {
  const caKeys = keyPair();
  const ca = certificate('baton test CA', null, caKeys.publicKey, caKeys.privateKey, [
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true },
  ]);
  const files = { ca: path.join(dir, 'ca.pem') };
  fs.writeFileSync(files.ca, forge.pki.certificateToPem(ca));
  for (const [who, cn, ext] of [
    ['server', 'baton test server', [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }] }, { name: 'extKeyUsage', serverAuth: true }]],
    ['client', CLIENT_CN, [{ name: 'subjectAltName', altNames: [{ type: 2, value: 'baton-test-client' }] }, { name: 'extKeyUsage', clientAuth: true }]],
  ]) {
    const keys = keyPair();
    const cert = certificate(cn, ca.subject.attributes, keys.publicKey, caKeys.privateKey, ext);
    files[who] = path.join(dir, `${who}.pem`);
    files[`${who}Key`] = path.join(dir, `${who}.key`);
    fs.writeFileSync(files[who], forge.pki.certificateToPem(cert));
    fs.writeFileSync(files[`${who}Key`], forge.pki.privateKeyToPem(keys.privateKey));
  }
  return files;
}

/** `baton token create --output json`: {secret, entry}, as an operator makes them. */
export function createToken(subject, role, namespaces) {
  const args = ['token', 'create', '--subject', subject, '--role', role, '--output', 'json', ...namespaces.flatMap((ns) => ['-n', ns])];
  return JSON.parse(execFileSync(BATON_BIN, args, { encoding: 'utf8', timeout: 30_000 }));
}

/** Certificates and a tokens file in `dir`, and the flags that serve with them.
 *
 * Tokens (`tokens[name]` is the secret): `admin` (admin everywhere: defines machines),
 * `writer` (write in GRANTED), `reader` (read in GRANTED). The client certificate
 * (CLIENT_CN) may write in GRANTED with no token at all. */
export class Secured {
  constructor(dir) {
    this.certs = makeCerts(dir);
    this.tokens = {};
    const entries = [];
    for (const [name, role, namespaces] of [['admin', 'admin', ['*']], ['writer', 'write', [GRANTED]], ['reader', 'read', [GRANTED]]]) {
      const made = createToken(`test-${name}`, role, namespaces);
      this.tokens[name] = made.secret;
      entries.push(made.entry);
    }
    entries.push(`[[identity]]\nsubject = "${CLIENT_CN}"\nrole = "write"\nnamespaces = ["${GRANTED}"]\n`);
    this.tokensFile = path.join(dir, 'tokens.toml');
    fs.writeFileSync(this.tokensFile, entries.join('\n'));
  }

  /** `baton serve` flags: TLS and tokens; with `mtls`, client certificates required. */
  args({ mtls = false } = {}) {
    const args = ['--tls-cert', this.certs.server, '--tls-key', this.certs.serverKey, '--auth-tokens', this.tokensFile];
    return mtls ? [...args, '--tls-client-ca', this.certs.ca] : args;
  }

  /** Client options: the CA, the named token (null: none), the client certificate when `cert`. */
  clientOptions(token = 'writer', { cert = false } = {}) {
    return {
      caFile: this.certs.ca,
      ...(token === null ? {} : { token: this.tokens[token] }),
      ...(cert ? { certFile: this.certs.client, keyFile: this.certs.clientKey } : {}),
    };
  }
}
