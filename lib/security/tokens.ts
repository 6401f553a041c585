/**
 * Access and refresh tokens.
 *   - Access token: a JWT (HS256) with `sub` (user id), `sid` (session id) and `cid` (company id),
 *     short-lived; the session it names must still exist for it to be accepted.
 *   - Refresh token: `<sessionId>.<32 random bytes, base64url>`, opaque; the session keeps only
 *     its sha256, so a leaked session store does not leak usable refresh tokens.
 */
import { createHash, randomBytes } from "node:crypto";
import jwt from "jsonwebtoken";

export interface AccessClaims {
	sub: string;
	sid: string;
	cid: string | null;
	/** Expiry, seconds since the epoch. */
	exp: number;
}

const ALGORITHM = "HS256";
/** Session ids are random UUIDs; refresh secrets 43 characters of base64url. */
const REFRESH_TOKEN = /^([A-Za-z0-9-]{1,64})\.([A-Za-z0-9_-]{43})$/;

export function signAccessToken(claims: Omit<AccessClaims, "exp">, secret: string, ttlSeconds: number): string {
	return jwt.sign({ sid: claims.sid, cid: claims.cid }, secret, { algorithm: ALGORITHM, subject: claims.sub, expiresIn: ttlSeconds });
}

/** The claims of a valid, unexpired access token signed with `secret`, or null. */
export function verifyAccessToken(token: string, secret: string): AccessClaims | null {
	let payload: string | jwt.JwtPayload;
	try {
		// The algorithm is pinned: a token must not choose how it is checked ("none", RS/HS confusion).
		payload = jwt.verify(token, secret, { algorithms: [ALGORITHM] });
	} catch {
		return null;
	}
	if (typeof payload !== "object" || typeof payload.sub !== "string" || typeof payload.sid !== "string" || typeof payload.exp !== "number") return null;
	const cid = typeof payload.cid === "string" ? payload.cid : null;
	return { sub: payload.sub, sid: payload.sid, cid, exp: payload.exp };
}

/** A fresh refresh token for a session, and the hash the session stores. */
export function newRefreshToken(sessionId: string): { token: string; hash: string } {
	const token = `${sessionId}.${randomBytes(32).toString("base64url")}`;
	return { token, hash: hashRefreshToken(token) };
}

export function hashRefreshToken(token: string): string {
	return createHash("sha256").update(token).digest("base64url");
}

/** The session a refresh token names, or null when it is not shaped like one of ours. */
export function refreshTokenSession(token: string): string | null {
	return REFRESH_TOKEN.exec(token)?.[1] ?? null;
}
