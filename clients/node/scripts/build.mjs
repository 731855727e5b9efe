// Build the package: copy the contract (../../proto) and the retry service config
// (../service-config.json) into the package, generate TypeScript types for the messages
// with proto-loader-gen-types, and compile src/ to dist/ (JS + .d.ts) with tsc.
// Nothing generated is committed: proto/, service-config.json, src/gen and dist/ are
// git-ignored build output.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const repoProto = path.resolve(here, '..', '..', 'proto');
const protoFile = path.join('baton', 'v1', 'coordinator.proto');

if (!fs.existsSync(path.join(repoProto, protoFile))) {
  if (fs.existsSync(path.join(here, 'proto', protoFile))) {
    console.error('build: using the proto already inside the package');
  } else {
    console.error(`build: ${path.join(repoProto, protoFile)} not found: build inside the baton repository`);
    process.exit(1);
  }
} else {
  fs.rmSync(path.join(here, 'proto'), { recursive: true, force: true });
  fs.cpSync(path.join(repoProto, 'baton'), path.join(here, 'proto', 'baton'), { recursive: true });
  fs.copyFileSync(path.resolve(here, '..', 'service-config.json'), path.join(here, 'service-config.json'));
}

const bin = (name) => path.join(here, 'node_modules', '.bin', name);
fs.rmSync(path.join(here, 'src', 'gen'), { recursive: true, force: true });
execFileSync(
  bin('proto-loader-gen-types'),
  [
    // The file first: --includeDirs is an array option and would swallow it.
    protoFile, '--includeDirs=proto', '--keepCase', '--longs=Number', '--enums=String',
    '--defaults', '--oneofs', '--grpcLib=@grpc/grpc-js', '--outDir=src/gen',
  ],
  { cwd: here, stdio: 'inherit' },
);
fs.rmSync(path.join(here, 'dist'), { recursive: true, force: true });
execFileSync(bin('tsc'), ['-p', 'tsconfig.json'], { cwd: here, stdio: 'inherit' });
