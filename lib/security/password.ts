/**
 * Password hashing with scrypt (memory-hard, built into Node), a random salt per password and a
 * constant-time comparison. Hashes are self-describing, `scrypt$<N>$<r>$<p>$<salt>$<hash>` in
 * base64url, so the cost can be raised later without breaking stored hashes.
 */
import { randomBytes, scrypt as scryptCb, timingSafeEqual, type ScryptOptions } from "node:crypto";

const scrypt = (password: string, salt: Buffer, keylen: number, options: ScryptOptions) =>
	new Promise<Buffer>((resolve, reject) => scryptCb(password, salt, keylen, options, (err, key) => (err ? reject(err) : resolve(key))));

/** N = 2^15, r = 8: 32 MiB of memory per hash, about 50-100 ms on one core. */
export const DEFAULT_COST = { N: 2 ** 15, r: 8, p: 1 };
const KEY_LENGTH = 32;
const SALT_LENGTH = 16;
/** Longest password accepted: hashing cost must not be the client's choice. */
export const MAX_PASSWORD_LENGTH = 128;

export async function hashPassword(password: string, cost = DEFAULT_COST): Promise<string> {
	const salt = randomBytes(SALT_LENGTH);
	const key = await scrypt(password, salt, KEY_LENGTH, { ...cost, maxmem: 256 * cost.N * cost.r });
	return ["scrypt", cost.N, cost.r, cost.p, salt.toString("base64url"), key.toString("base64url")].join("$");
}

/** True when `password` matches `stored`. A malformed hash never matches. */
export async function verifyPassword(password: string, stored: string): Promise<boolean> {
	const parts = stored.split("$");
	if (parts.length !== 6 || parts[0] !== "scrypt") return false;
	const [N, r, p] = parts.slice(1, 4).map(Number);
	const salt = Buffer.from(parts[4], "base64url");
	const expected = Buffer.from(parts[5], "base64url");
	if (![N, r, p].every(Number.isInteger) || expected.length === 0) return false;
	const key = await scrypt(password, salt, expected.length, { N, r, p, maxmem: 256 * N * r });
	return timingSafeEqual(key, expected);
}

/**
 * A hash of a random password, checked against when the username is unknown, so that an unknown
 * user and a wrong password take the same time.
 */
let decoy: Promise<string> | null = null;
export function decoyHash(): Promise<string> {
	decoy ??= hashPassword(randomBytes(16).toString("hex"));
	return decoy;
}

export interface PasswordPolicy {
	minLength: number;
}

export const DEFAULT_PASSWORD_POLICY: PasswordPolicy = { minLength: 8 };

/** Why `password` breaks the policy, or null when it is acceptable. */
export function passwordProblem(password: string, username: string, policy: PasswordPolicy = DEFAULT_PASSWORD_POLICY): string | null {
	if (password.length < policy.minLength) return `The password must be at least ${policy.minLength} characters long`;
	if (password.length > MAX_PASSWORD_LENGTH) return `The password must be at most ${MAX_PASSWORD_LENGTH} characters long`;
	if (!/\p{L}/u.test(password) || !/\p{Nd}/u.test(password)) return "The password must contain letters and digits";
	if (password.toLowerCase().includes(username.toLowerCase()) && username.length >= 3) return "The password must not contain the username";
	return null;
}
