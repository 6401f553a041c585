/** Access tokens: signed, short-lived, checked with a pinned algorithm. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import jwt from "jsonwebtoken";
import { signAccessToken, verifyAccessToken } from "../../lib/security/tokens";

const SECRET = "a-test-secret-of-enough-length-0123456789";

describe("access tokens", () => {
	it("carry the user, session and company", () => {
		const before = Math.floor(Date.now() / 1000);
		const token = signAccessToken({ sub: "u1", sid: "s1", cid: "c1" }, SECRET, 60);
		const { exp, ...claims } = verifyAccessToken(token, SECRET)!;
		assert.deepEqual(claims, { sub: "u1", sid: "s1", cid: "c1" });
		assert.ok(exp >= before + 60 && exp <= Math.floor(Date.now() / 1000) + 60, `expires 60 s after issue, got ${exp - before}`);
		const admin = signAccessToken({ sub: "u0", sid: "s0", cid: null }, SECRET, 60);
		assert.equal(verifyAccessToken(admin, SECRET)?.cid, null);
	});

	it("are refused when signed with another secret, tampered with, expired or unsigned", () => {
		const token = signAccessToken({ sub: "u1", sid: "s1", cid: "c1" }, SECRET, 60);
		assert.equal(verifyAccessToken(token, "another-secret"), null);
		const [head, , sig] = token.split(".");
		const forged = Buffer.from(JSON.stringify({ sub: "u2", sid: "s1", cid: "c1", exp: Math.floor(Date.now() / 1000) + 60 })).toString("base64url");
		assert.equal(verifyAccessToken(`${head}.${forged}.${sig}`, SECRET), null);
		const expired = jwt.sign({ sid: "s1", cid: "c1", exp: Math.floor(Date.now() / 1000) - 1 }, SECRET, { algorithm: "HS256", subject: "u1" });
		assert.equal(verifyAccessToken(expired, SECRET), null);
		const none = jwt.sign({ sid: "s1", cid: "c1" }, "", { algorithm: "none", subject: "u1" });
		assert.equal(verifyAccessToken(none, SECRET), null);
		const hs512 = jwt.sign({ sid: "s1", cid: "c1" }, SECRET, { algorithm: "HS512", subject: "u1" });
		assert.equal(verifyAccessToken(hs512, SECRET), null);
		assert.equal(verifyAccessToken("not a token", SECRET), null);
	});

	it("are refused without a session id", () => {
		const token = jwt.sign({ cid: "c1" }, SECRET, { algorithm: "HS256", subject: "u1", expiresIn: 60 });
		assert.equal(verifyAccessToken(token, SECRET), null);
	});
});
