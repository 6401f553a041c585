/**
 * Licence keys: signing and offline verification (lib/license), and the keygen script.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { sign } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { describe, it } from "node:test";
import { generateLicenseKeyPair, newClaims, signLicense, verifyLicense, LICENSE_PREFIX } from "../../lib/license/license";
import type { LicenseClaims } from "../../types/org";
import { tempDir } from "../support/broker";

const pair = generateLicenseKeyPair();
const otherPair = generateLicenseKeyPair();
const DAY = 86_400_000;

const claims = (extra: Partial<LicenseClaims> = {}): LicenseClaims => ({
	...newClaims({ licensee: "Acme Ltd", type: "enterprise", edition: "commercial", seats: 25, features: ["chat", "bi"], expiresAt: new Date(Date.now() + 365 * DAY).toISOString() }),
	...extra,
});

const BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

describe("licence keys", () => {
	it("round-trips: a signed key verifies with the public key and gives back the claims", () => {
		const c = claims();
		const key = signLicense(c, pair.privateKey);
		assert.match(key, new RegExp(`^${LICENSE_PREFIX}\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$`));
		assert.deepEqual(verifyLicense(key, pair.publicKey), { valid: true, claims: c, expired: false });
	});

	it("fails for every single-character change, deletion and insertion anywhere in the key", () => {
		const key = signLicense(claims({ features: ["chat"] }), pair.privateKey);
		const variants = new Set<string>();
		for (let i = 0; i < key.length; i++) {
			const code = key.charCodeAt(i);
			// Every bit flip of the character, every base64url character and the separators in its place.
			for (let bit = 0; bit < 8; bit++) variants.add(key.slice(0, i) + String.fromCharCode(code ^ (1 << bit)) + key.slice(i + 1));
			for (const ch of BASE64URL + ".=+/ \n") variants.add(key.slice(0, i) + ch + key.slice(i + 1));
			variants.add(key.slice(0, i) + key.slice(i + 1));
			variants.add(key.slice(0, i) + "A" + key.slice(i));
		}
		variants.add(key + "A");
		variants.add(key + "\n");
		variants.delete(key);
		assert.ok(variants.size > key.length * 60, `only ${variants.size} variants`);
		const accepted = [...variants].filter(v => verifyLicense(v, pair.publicKey).valid);
		assert.deepEqual(accepted, [], "altered keys that still verified");
	});

	it("fails for a key signed by another private key, saying the signature does not match", () => {
		const key = signLicense(claims(), otherPair.privateKey);
		const result = verifyLicense(key, pair.publicKey);
		assert.equal(result.valid, false);
		assert.equal(!result.valid && result.code, "BAD_SIGNATURE");
		assert.match(!result.valid ? result.reason : "", /signature does not match/);
	});

	it("fails for claims swapped between two validly signed keys", () => {
		const a = signLicense(claims({ seats: 5 }), pair.privateKey).split(".");
		const b = signLicense(claims({ seats: 5000 }), pair.privateKey).split(".");
		assert.equal(verifyLicense(`${a[0]}.${b[1]}.${a[2]}`, pair.publicKey).valid, false);
	});

	it("marks an expired licence as valid and expired, and an unexpired one as not expired", () => {
		const c = claims({ issuedAt: new Date(Date.now() - 40 * DAY).toISOString(), expiresAt: new Date(Date.now() - DAY).toISOString() });
		const key = signLicense(c, pair.privateKey);
		assert.deepEqual(verifyLicense(key, pair.publicKey), { valid: true, claims: c, expired: true });
		// The same key judged at a time before its expiry.
		assert.deepEqual(verifyLicense(key, pair.publicKey, new Date(Date.now() - 2 * DAY)), { valid: true, claims: c, expired: false });
		assert.equal((verifyLicense(key, pair.publicKey, new Date(c.expiresAt)) as { expired: boolean }).expired, true, "expires at the instant named");
	});

	it("answers malformed input with a reason instead of throwing", () => {
		for (const bad of ["", "CNBI1", "CNBI1..", "CNBI1.abc", "CNBI2.e30.AAAA", "x".repeat(9000), "CNBI1.e30." + "A".repeat(10), "CNBI1.e30." + "A".repeat(85) + "B", "<script>.a.b"]) {
			const result = verifyLicense(bad, pair.publicKey);
			assert.equal(result.valid, false, bad.slice(0, 40));
			assert.equal(!result.valid && result.code, "MALFORMED", bad.slice(0, 40));
		}
		assert.equal(verifyLicense(42 as unknown as string, pair.publicKey).valid, false);
	});

	it("refuses to sign claims that would not verify, and rejects signed claims of the wrong shape", () => {
		assert.throws(() => signLicense(claims({ seats: 0 }), pair.privateKey), /seats/);
		assert.throws(() => signLicense(claims({ features: ["Not An App"] }), pair.privateKey), /features/);
		assert.throws(() => signLicense(claims(), pair.publicKey), /Ed25519 private key/);
		assert.throws(() => verifyLicense(signLicense(claims(), pair.privateKey), "not a key"), /Ed25519 public key/);
		// Signed by the right key but not licence claims: a signer bug must not grant anything.
		const signed = `${LICENSE_PREFIX}.${Buffer.from(JSON.stringify({ licensee: "x", seats: "lots" })).toString("base64url")}`;
		const key = `${signed}.${sign(null, Buffer.from(signed), pair.privateKey).toString("base64url")}`;
		const result = verifyLicense(key, pair.publicKey);
		assert.equal(!result.valid && result.code, "BAD_CLAIMS");
	});

	it("keeps only the known claims, in a fixed order", () => {
		const c = { ...claims(), extra: "ignored" } as LicenseClaims;
		const key = signLicense(c, pair.privateKey);
		const payload = JSON.parse(Buffer.from(key.split(".")[1], "base64url").toString());
		assert.deepEqual(Object.keys(payload), ["id", "licensee", "type", "edition", "seats", "features", "issuedAt", "expiresAt"]);
	});
});

describe("scripts/license-keygen.js", () => {
	const script = path.resolve(__dirname, "../../scripts/license-keygen.js");

	it("writes a working key pair, the private key with mode 0600, and prints the environment lines", () => {
		const dir = path.join(tempDir(), "keys");
		const run = spawnSync(process.execPath, [script, dir], { encoding: "utf8" });
		assert.equal(run.status, 0, run.stderr);
		const privatePath = path.join(dir, "license-private.pem");
		const publicPath = path.join(dir, "license-public.pem");
		assert.equal(fs.statSync(privatePath).mode & 0o777, 0o600);
		assert.match(run.stdout, new RegExp(`LICENSE_PUBLIC_KEY=${publicPath}`));
		assert.match(run.stdout, new RegExp(`LICENSE_PRIVATE_KEY=${privatePath}`));
		const key = signLicense(claims(), fs.readFileSync(privatePath, "utf8"));
		assert.equal(verifyLicense(key, fs.readFileSync(publicPath, "utf8")).valid, true);
		assert.equal(verifyLicense(key, pair.publicKey).valid, false);

		// A second run must not replace the key that signed existing licences.
		const again = spawnSync(process.execPath, [script, dir], { encoding: "utf8" });
		assert.equal(again.status, 1);
		assert.match(again.stderr, /--force/);
		assert.equal(verifyLicense(key, fs.readFileSync(publicPath, "utf8")).valid, true);
	});

	it("explains its usage when no directory is given", () => {
		const run = spawnSync(process.execPath, [script], { encoding: "utf8" });
		assert.equal(run.status, 2);
		assert.match(run.stderr, /usage/);
	});
});
