// Channel construction: target, TLS, token, service config, namespace check.
import fs from 'node:fs';
import path from 'node:path';
import { ChannelCredentials, ChannelOptions, Metadata, credentials } from '@grpc/grpc-js';

/** The packaged copy of clients/service-config.json. */
export const SERVICE_CONFIG_PATH = path.resolve(__dirname, '..', 'service-config.json');

const NAMESPACE = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const TOKEN = /^[\x21-\x7e]+$/;

export function checkNamespace(namespace: string): string {
  if (typeof namespace !== 'string' || !NAMESPACE.test(namespace)) {
    throw new TypeError(`baton: invalid namespace ${JSON.stringify(namespace)}: expected [a-z0-9][a-z0-9_.-]{0,62}`);
  }
  return namespace;
}

export interface Target {
  /** host:port */
  address: string;
  /** TLS */
  secure: boolean;
}

/** `https://host[:port]` is TLS (443 by default); `http://host:port` and `host:port` are plaintext. */
export function parseTarget(target: string): Target {
  if (typeof target !== 'string' || !target.trim()) {
    throw new TypeError("baton: target must be a non-empty string such as '127.0.0.1:50051'");
  }
  const text = target.trim();
  let scheme = '';
  let rest = text;
  const sep = text.indexOf('://');
  if (sep >= 0) {
    scheme = text.slice(0, sep).toLowerCase();
    rest = text.slice(sep + 3);
    if (scheme !== 'http' && scheme !== 'https') {
      throw new TypeError(
        `baton: unsupported target ${JSON.stringify(target)}: use host:port or http://host:port (plaintext), or https://host[:port] (TLS)`,
      );
    }
  }
  let url: URL;
  try {
    url = new URL(`http://${rest}`);
  } catch {
    throw new TypeError(`baton: target ${JSON.stringify(target)} has an invalid host or port`);
  }
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash || url.username) {
    throw new TypeError(`baton: target ${JSON.stringify(target)} must be only a host and a port`);
  }
  const host = url.hostname;
  if (!host) throw new TypeError(`baton: target ${JSON.stringify(target)} has no host`);
  // URL drops the scheme's default port (80): read the port from the text itself.
  const portMatch = /:(\d+)\/?$/.exec(rest);
  let port = portMatch ? Number(portMatch[1]) : NaN;
  if (!portMatch) {
    if (/:[^\]]*$/.test(rest.replace(/\/$/, '')) && !rest.startsWith('[')) {
      throw new TypeError(`baton: target ${JSON.stringify(target)} has an invalid port`);
    }
    if (scheme !== 'https') throw new TypeError(`baton: target ${JSON.stringify(target)} needs a port, e.g. ${host}:50051`);
    port = 443;
  }
  if (!(port > 0 && port < 65536)) throw new TypeError(`baton: target ${JSON.stringify(target)} has an invalid port`);
  return { address: `${host}:${port}`, secure: scheme === 'https' };
}

function read(file: string | undefined, what: string): Buffer | null {
  if (file === undefined) return null;
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new TypeError(`baton: cannot read ${what} ${JSON.stringify(file)}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

/** TLS options of a client: `caFile` (roots), `certFile` + `keyFile` (mTLS). */
export interface TlsOptions {
  caFile?: string;
  certFile?: string;
  keyFile?: string;
}

export function channelCredentials(target: Target, tls: TlsOptions): ChannelCredentials {
  if ((tls.certFile === undefined) !== (tls.keyFile === undefined)) {
    throw new TypeError('baton: mTLS needs both certFile and keyFile');
  }
  if (!target.secure) {
    if (tls.caFile !== undefined || tls.certFile !== undefined) {
      throw new TypeError(`baton: caFile, certFile and keyFile need an https:// target (${target.address} is plaintext)`);
    }
    return credentials.createInsecure();
  }
  return credentials.createSsl(read(tls.caFile, 'caFile'), read(tls.keyFile, 'keyFile'), read(tls.certFile, 'certFile'));
}

/** Metadata sent on every call: `authorization: Bearer <token>` when a token is set. */
export function callMetadata(token: string | undefined): Metadata {
  const md = new Metadata();
  if (token !== undefined) {
    if (typeof token !== 'string' || !TOKEN.test(token)) {
      throw new TypeError('baton: token must be a non-empty string of visible ASCII characters');
    }
    md.set('authorization', `Bearer ${token}`);
  }
  return md;
}

/** A service config: an object, a JSON string, a file path, undefined (the packaged one) or false (none). */
export type ServiceConfig = undefined | false | string | Record<string, unknown>;

export function serviceConfigJson(config: ServiceConfig): string | null {
  if (config === false) return null;
  if (config === undefined) return fs.readFileSync(SERVICE_CONFIG_PATH, 'utf8');
  if (typeof config === 'object') return JSON.stringify(config);
  if (config.trimStart().startsWith('{')) {
    JSON.parse(config);
    return config;
  }
  try {
    return JSON.stringify(JSON.parse(fs.readFileSync(config, 'utf8')));
  } catch (err) {
    throw new TypeError(`baton: cannot read service config ${JSON.stringify(config)}: ${(err as Error).message}`);
  }
}

export function channelOptions(config: ServiceConfig, extra: ChannelOptions): ChannelOptions {
  const json = serviceConfigJson(config);
  return { ...(json ? { 'grpc.service_config': json, 'grpc.enable_retries': 1 } : {}), ...extra };
}
