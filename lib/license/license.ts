/**
 * Signed licences, verified offline.
 *
 * A licence key is `CNBI1.<base64url(JSON claims)>.<base64url(Ed25519 signature)>`; the signature
 * covers the text before the last dot (the prefix and the encoded claims, exactly as written), so
 * no byte of the key can change without the check failing. The platform ships the public key;
 * only the operator holds the private key.
 *
 * An expired licence still verifies (`valid: true, expired: true`): the signature is good and the
 * platform must be able to show what the licence was; enforcing expiry is the caller's job.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, randomUUID, sign, verify, type KeyObject } from "node:crypto";
import type { LicenseClaims } from "../../types/org";

export const LICENSE_PREFIX = "CNBI1";
/** Longest key accepted: claims with many features stay far below this. */
export const MAX_LICENSE_KEY_LENGTH = 8192;
export const LICENSE_TYPES: LicenseClaims["type"][] = ["personal", "enterprise"];
export const LICENSE_EDITIONS: LicenseClaims["edition"][] = ["opensource", "commercial"];
/** An app name as licences list them in `features`. */
export const APP_NAME = /^[a-z][a-z0-9-]{0,31}$/;
export const MAX_FEATURES = 64;
export const MAX_SEATS = 1_000_000;

export type LicenseProblem = "MALFORMED" | "BAD_SIGNATURE" | "BAD_CLAIMS";

export type LicenseVerification =
	| { valid: true; claims: LicenseClaims; expired: boolean }
	| { valid: false; code: LicenseProblem; reason: string };

const KEY_SHAPE = /^([A-Za-z0-9]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/;
const ED25519_SIGNATURE_BYTES = 64;

/** An Ed25519 key pair as PEM text (SPKI public, PKCS#8 private). */
export function generateLicenseKeyPair(): { publicKey: string; privateKey: string } {
	const { publicKey, privateKey } = generateKeyPairSync("ed25519", {
		publicKeyEncoding: { type: "spki", format: "pem" },
		privateKeyEncoding: { type: "pkcs8", format: "pem" },
	});
	return { publicKey, privateKey };
}

/** The public key from PEM, or an Error saying why it is not an Ed25519 public key. */
export function loadPublicKey(pem: string | KeyObject): KeyObject {
	const key = typeof pem === "string" ? parseKey(() => createPublicKey(pem)) : pem;
	if (key?.type !== "public" || key.asymmetricKeyType !== "ed25519") throw new Error("The licence public key must be an Ed25519 public key (PEM)");
	return key;
}

/** The private key from PEM, or an Error saying why it is not an Ed25519 private key. */
export function loadPrivateKey(pem: string | KeyObject): KeyObject {
	const key = typeof pem === "string" ? parseKey(() => createPrivateKey(pem)) : pem;
	if (key?.type !== "private" || key.asymmetricKeyType !== "ed25519") throw new Error("The licence private key must be an Ed25519 private key (PEM)");
	return key;
}

/** OpenSSL's decoder errors say nothing useful to an operator: the callers say what was expected. */
function parseKey(parse: () => KeyObject): KeyObject | null {
	try {
		return parse();
	} catch {
		return null;
	}
}

/** What an issuer fills in: everything but the id and issue date, which `newClaims` adds. */
export type LicenseRequest = Omit<LicenseClaims, "id" | "issuedAt">;

export function newClaims(request: LicenseRequest, now = new Date()): LicenseClaims {
	return {
		id: randomUUID(),
		licensee: request.licensee,
		type: request.type,
		edition: request.edition,
		seats: request.seats,
		features: [...new Set(request.features)],
		issuedAt: now.toISOString(),
		expiresAt: new Date(request.expiresAt).toISOString(),
	};
}

/** The signed key for `claims`. Throws when the claims would not verify (a bug of the caller). */
export function signLicense(claims: LicenseClaims, privateKeyPem: string | KeyObject): string {
	const problem = claimsProblem(claims);
	if (problem) throw new TypeError(`Cannot sign these licence claims: ${problem}`);
	const signed = `${LICENSE_PREFIX}.${Buffer.from(JSON.stringify(canonical(claims)), "utf8").toString("base64url")}`;
	const signature = sign(null, Buffer.from(signed, "ascii"), loadPrivateKey(privateKeyPem));
	return `${signed}.${signature.toString("base64url")}`;
}

/** Checks a key against the platform's public key, offline. Never throws for a bad key. */
export function verifyLicense(key: string, publicKeyPem: string | KeyObject, now = new Date()): LicenseVerification {
	if (typeof key !== "string" || key.length > MAX_LICENSE_KEY_LENGTH) return malformed(`a licence key is a string of at most ${MAX_LICENSE_KEY_LENGTH} characters`);
	const match = KEY_SHAPE.exec(key);
	if (!match) return malformed(`a licence key has the form ${LICENSE_PREFIX}.<claims>.<signature>`);
	const [, prefix, payload, signaturePart] = match;
	if (prefix !== LICENSE_PREFIX) return malformed(`unknown licence format '${prefix}' (expected ${LICENSE_PREFIX})`);

	// Base64url decoding forgives stray trailing bits; only the canonical spelling is accepted,
	// so that no changed character can decode to the same signature.
	const signature = Buffer.from(signaturePart, "base64url");
	if (signature.length !== ED25519_SIGNATURE_BYTES || signature.toString("base64url") !== signaturePart)
		return malformed("the signature part is not an Ed25519 signature");

	const signed = Buffer.from(`${prefix}.${payload}`, "ascii");
	if (!verify(null, signed, loadPublicKey(publicKeyPem), signature))
		return { valid: false, code: "BAD_SIGNATURE", reason: "The licence signature does not match this platform's licence key: the key was altered or signed by another issuer" };

	let claims: unknown;
	try {
		claims = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
	} catch {
		return { valid: false, code: "BAD_CLAIMS", reason: "The licence claims are not valid JSON" };
	}
	const problem = claimsProblem(claims);
	if (problem) return { valid: false, code: "BAD_CLAIMS", reason: `The licence claims are not usable: ${problem}` };
	const good = canonical(claims as LicenseClaims);
	return { valid: true, claims: good, expired: isExpired(good, now) };
}

export function isExpired(claims: Pick<LicenseClaims, "expiresAt">, now = new Date()): boolean {
	return now.getTime() >= Date.parse(claims.expiresAt);
}

/** Only the known fields, in a fixed order (what is signed is exactly what is read back). */
function canonical(claims: LicenseClaims): LicenseClaims {
	const { id, licensee, type, edition, seats, features, issuedAt, expiresAt } = claims;
	return { id, licensee, type, edition, seats, features: [...features], issuedAt, expiresAt };
}

/** Why these are not licence claims, or null when they are. */
export function claimsProblem(value: unknown): string | null {
	if (value == null || typeof value !== "object" || Array.isArray(value)) return "not an object";
	const c = value as Record<string, unknown>;
	const text = (name: string, max: number) => typeof c[name] === "string" && (c[name] as string).length > 0 && (c[name] as string).length <= max;
	if (!text("id", 64)) return "'id' must be a string of 1-64 characters";
	if (!text("licensee", 200)) return "'licensee' must be a string of 1-200 characters";
	if (!LICENSE_TYPES.includes(c.type as LicenseClaims["type"])) return `'type' must be one of ${LICENSE_TYPES.join(", ")}`;
	if (!LICENSE_EDITIONS.includes(c.edition as LicenseClaims["edition"])) return `'edition' must be one of ${LICENSE_EDITIONS.join(", ")}`;
	if (!Number.isInteger(c.seats) || (c.seats as number) < 1 || (c.seats as number) > MAX_SEATS) return `'seats' must be an integer from 1 to ${MAX_SEATS}`;
	if (!Array.isArray(c.features) || c.features.length > MAX_FEATURES || !c.features.every(f => typeof f === "string" && APP_NAME.test(f)))
		return `'features' must be a list of at most ${MAX_FEATURES} app names`;
	for (const name of ["issuedAt", "expiresAt"]) {
		if (typeof c[name] !== "string" || Number.isNaN(Date.parse(c[name] as string))) return `'${name}' must be an ISO date`;
	}
	return null;
}

function malformed(what: string): LicenseVerification {
	return { valid: false, code: "MALFORMED", reason: `The licence key is malformed: ${what}` };
}
