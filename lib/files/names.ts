import { Errors } from "moleculer";

/** Longest file name kept, in UTF-8 bytes (what file systems allow). */
export const MAX_NAME_BYTES = 255;

/**
 * A client's file name as it is stored and served back: refused (422) when it could name a path
 * (separators, `.`/`..`), holds control characters, or is empty or too long. Names are only
 * ever metadata here (chunks are stored by hash), but a name is handed back to clients in
 * `Content-Disposition`, so it must be a plain name.
 */
export function checkFileName(raw: unknown): string {
	const fail = (why: string) => new Errors.MoleculerClientError(`The file name ${why}`, 422, "INVALID_FILE_NAME", { field: "name" });
	if (typeof raw !== "string") throw fail("is missing");
	const name = raw.normalize("NFC").trim();
	if (!name) throw fail("is empty");
	if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw fail(`is longer than ${MAX_NAME_BYTES} bytes`);
	if (/[/\\]/.test(name)) throw fail("must not contain '/' or '\\'");
	if (name === "." || name === "..") throw fail("must not be '.' or '..'");
	// eslint-disable-next-line no-control-regex -- control characters are what is refused
	if (/[\u0000-\u001f\u007f]/.test(name)) throw fail("must not contain control characters");
	return name;
}
