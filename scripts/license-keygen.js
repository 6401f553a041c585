#!/usr/bin/env node
/**
 * Writes a new Ed25519 licence key pair as PEM files into a directory:
 *   node scripts/license-keygen.js <dir> [--force]
 * `license-private.pem` (mode 0600) is the operator's issuing key: keep it out of the repository
 * and give it only to the nodes that issue licences. `license-public.pem` is what every node
 * verifies with. Plain JavaScript with no dependencies, so it runs on any installed node.
 */
const { generateKeyPairSync } = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");

function main(argv) {
	const force = argv.includes("--force");
	const dirs = argv.filter(a => !a.startsWith("--"));
	if (dirs.length !== 1) {
		console.error("usage: node scripts/license-keygen.js <directory> [--force]");
		return 2;
	}
	const dir = path.resolve(dirs[0]);
	const privatePath = path.join(dir, "license-private.pem");
	const publicPath = path.join(dir, "license-public.pem");
	// Overwriting a private key would orphan every licence it signed: only on request.
	if (!force && (fs.existsSync(privatePath) || fs.existsSync(publicPath))) {
		console.error(`${dir} already holds a licence key; pass --force to replace it (licences signed with the old key stop verifying)`);
		return 1;
	}

	const { publicKey, privateKey } = generateKeyPairSync("ed25519", {
		publicKeyEncoding: { type: "spki", format: "pem" },
		privateKeyEncoding: { type: "pkcs8", format: "pem" },
	});
	fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
	fs.rmSync(privatePath, { force: true });
	// Created with 0600 from the start, so the key is never readable by others, not even briefly.
	fs.writeFileSync(privatePath, privateKey, { mode: 0o600, flag: "wx" });
	fs.chmodSync(privatePath, 0o600);
	fs.writeFileSync(publicPath, publicKey, { mode: 0o644 });

	console.log(`Wrote ${publicPath} and ${privatePath} (mode 0600).`);
	console.log("Nodes verify licences with the public key; only issuing nodes need the private key:");
	console.log(`LICENSE_PUBLIC_KEY=${publicPath}`);
	console.log(`LICENSE_PRIVATE_KEY=${privatePath}`);
	return 0;
}

process.exitCode = main(process.argv.slice(2));
