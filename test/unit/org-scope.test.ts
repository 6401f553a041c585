/** Data scopes as list filters. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { dataScopeQuery } from "../../lib/org/scope";

describe("data scope filters", () => {
	const user = { id: "u1", username: "u", companyId: "c", roles: [], permissions: [] };
	const fields = { dept: "deptId", owner: "userId" };

	it("turns a data scope into a filter", () => {
		assert.equal(dataScopeQuery({ ...user, dataScope: { all: true, deptIds: [], self: false } }, fields), null);
		assert.equal(dataScopeQuery({ ...user, platformAdmin: true }, fields), null);
		assert.deepEqual(dataScopeQuery({ ...user, dataScope: { all: false, deptIds: ["d1"], self: true } }, fields), { $or: [{ deptId: { $in: ["d1"] } }, { userId: "u1" }] });
		assert.deepEqual(dataScopeQuery({ ...user, dataScope: { all: false, deptIds: ["d1"], self: false } }, fields), { deptId: { $in: ["d1"] } });
	});

	it("fails closed: no scope means own records, an empty scope means none", () => {
		assert.deepEqual(dataScopeQuery(user, fields), { userId: "u1" });
		assert.deepEqual(dataScopeQuery({ ...user, dataScope: { all: false, deptIds: [], self: false } }, fields), { userId: { $in: [] } });
	});
});
