// Certificates made for the test (a CA, a server cert for 127.0.0.1, a client cert) and a
// gRPC forwarder: a real gRPC server in front of a real baton that records the metadata it
// receives and passes every call through, byte for byte. baton does not serve TLS or check
// tokens yet; the forwarder is how the tests see what the client puts on the wire.
import { generateKeyPairSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import forge from 'node-forge';

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

/** ca.pem; server.pem/server.key (SAN 127.0.0.1, localhost); client.pem/client.key. */
export function makeCerts(dir) {
  const caKeys = keyPair();
  const ca = certificate('baton test CA', null, caKeys.publicKey, caKeys.privateKey, [
    { name: 'basicConstraints', cA: true, critical: true },
    { name: 'keyUsage', keyCertSign: true, cRLSign: true },
  ]);
  const files = { ca: path.join(dir, 'ca.pem') };
  fs.writeFileSync(files.ca, forge.pki.certificateToPem(ca));
  for (const [who, ext] of [
    ['server', [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }, { type: 2, value: 'localhost' }] }, { name: 'extKeyUsage', serverAuth: true }]],
    ['client', [{ name: 'subjectAltName', altNames: [{ type: 2, value: 'baton-test-client' }] }, { name: 'extKeyUsage', clientAuth: true }]],
  ]) {
    const keys = keyPair();
    const cert = certificate(`baton test ${who}`, ca.subject.attributes, keys.publicKey, caKeys.privateKey, ext);
    files[who] = path.join(dir, `${who}.pem`);
    files[`${who}Key`] = path.join(dir, `${who}.key`);
    fs.writeFileSync(files[who], forge.pki.certificateToPem(cert));
    fs.writeFileSync(files[`${who}Key`], forge.pki.privateKeyToPem(keys.privateKey));
  }
  return files;
}

const METHODS = [
  'AcquireLease', 'RenewLease', 'ReleaseLease', 'GetLease', 'DefineMachine', 'GetMachine',
  'CreateEntity', 'GetEntity', 'ListEntities', 'Transition', 'AppendEvents', 'StreamEvents',
];
const id = (b) => b;

/** A gRPC server (plaintext, TLS or mTLS) forwarding every call to `upstream`. */
export class Forwarder {
  static async create(upstream, { certs = null, mtls = false } = {}) {
    const f = new Forwarder();
    f.seen = []; // [method, authorization header or null]
    f.upstream = new grpc.Client(upstream, grpc.credentials.createInsecure());
    f.server = new grpc.Server();
    const definition = {};
    const impl = {};
    for (const name of METHODS) {
      const streaming = name === 'StreamEvents';
      const p = `/baton.v1.Coordinator/${name}`;
      definition[name] = { path: p, requestStream: false, responseStream: streaming, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id };
      impl[name] = streaming
        ? (call) => {
            f.record(name, call.metadata);
            const up = f.upstream.makeServerStreamRequest(p, id, id, call.request);
            up.on('data', (d) => call.write(d));
            up.on('status', (s) => (s.code === 0 ? call.end() : call.destroy(Object.assign(new Error(s.details), s))));
            up.on('error', () => {});
            call.on('cancelled', () => up.cancel());
          }
        : (call, cb) => {
            f.record(name, call.metadata);
            f.upstream.makeUnaryRequest(p, id, id, call.request, (err, resp) => cb(err, resp));
          };
    }
    f.server.addService(definition, impl);
    const creds = certs
      ? grpc.ServerCredentials.createSsl(mtls ? fs.readFileSync(certs.ca) : null, [{ private_key: fs.readFileSync(certs.serverKey), cert_chain: fs.readFileSync(certs.server) }], mtls)
      : grpc.ServerCredentials.createInsecure();
    f.port = await new Promise((resolve, reject) => f.server.bindAsync('127.0.0.1:0', creds, (err, port) => (err ? reject(err) : resolve(port))));
    return f;
  }

  record(method, metadata) {
    this.seen.push([method, metadata.get('authorization')[0] ?? null]);
  }

  close() {
    this.server.forceShutdown();
    this.upstream.close();
  }
}
