/** Companies and people for the messaging tests: a licence with the messaging app and room for everyone. */
import { randomUUID } from "node:crypto";
import { Api, createCompany, expectStatus, unique, type RunningOrg, type TestCompany } from "./org";

export const MEMBER_PASSWORD = "Member-pass-1";

export interface Person {
	id: string;
	username: string;
	/** Signed in through the first gateway; `login(url, device)` signs in again (another session, another device). */
	api: Api;
	login(url: string, device?: string): Promise<Api>;
}

/** A company licensed for messaging (and files, for attachments) with `seats` seats. */
export async function messagingCompany(org: RunningOrg, seats = 50): Promise<TestCompany> {
	const licence = expectStatus(
		await org.admin.post("/api/licenses", {
			licensee: "Messaging tests", type: "enterprise", edition: "commercial", seats, features: ["messaging", "files"],
			expiresAt: new Date(Date.now() + 365 * 24 * 3600 * 1000).toISOString(),
		}),
		200,
		"issue licence",
	);
	return createCompany(org, { licenseKey: licence.key });
}

/** A member of the company (the built-in `member` role), signed in. */
export async function person(org: RunningOrg, company: TestCompany, name: string, fields: Record<string, unknown> = {}): Promise<Person> {
	const username = unique(`${company.code}-${name}-`);
	const user = expectStatus(await company.admin.post("/api/users", { username, password: MEMBER_PASSWORD, name, ...fields }), 200, `create ${name}`);
	const login = (url: string, device?: string) => new Api(url).login(username, MEMBER_PASSWORD, device);
	return { id: user.id, username, api: await login(org.url), login };
}

export const clientMsgId = () => randomUUID();
