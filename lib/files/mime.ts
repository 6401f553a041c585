/**
 * The MIME type of a stored file, from its content.
 *
 * Never trusted from the client: a type given by the uploader (its `Content-Type` or the file
 * name's extension) is served back to every other user who downloads the file, so a client that
 * could choose it could make the platform's origin serve its HTML or SVG with scripts in it
 * (stored XSS). So the type comes from magic numbers (file-type), else from whether the bytes
 * are text; the name may only pick a more precise *text* type from a short list of passive ones.
 * Types that browsers render as active documents (HTML, XHTML, SVG, XML, which runs the scripts
 * of XHTML/SVG elements in it) are never returned: such content is served as text/plain.
 * (Downloads should also carry `X-Content-Type-Options: nosniff` so browsers do not second-guess.)
 */
import { fromBuffer } from "file-type";

/** How many leading bytes sniffMime needs (file-type reads at most this far). */
export const MIME_SNIFF_BYTES = 4100;

export const TEXT_PLAIN = "text/plain; charset=utf-8";
export const OCTET_STREAM = "application/octet-stream";

/** Types that would make a browser run the content as a document of this origin. */
const ACTIVE = new Set(["text/html", "application/xhtml+xml", "image/svg+xml", "application/xml", "text/xml", "application/x-shockwave-flash"]);

/**
 * Text types the file name may choose for content that is UTF-8 text. Passive formats only;
 * .html, .htm, .xhtml, .svg, .xml, .js and .css stay text/plain on purpose.
 */
const TEXT_BY_EXTENSION: Record<string, string> = {
	json: "application/json",
	csv: "text/csv; charset=utf-8",
	tsv: "text/tab-separated-values; charset=utf-8",
	md: "text/markdown; charset=utf-8",
	markdown: "text/markdown; charset=utf-8",
	yaml: "application/yaml",
	yml: "application/yaml",
};

/**
 * The MIME type of content from its first bytes (pass at least the first 4,100 bytes or the
 * whole file): file-type's magic numbers; else `text/plain; charset=utf-8` when the bytes are
 * valid UTF-8 without control characters other than tab/CR/LF/FF; else
 * `application/octet-stream`. Never from the client's name or header, except: `name` may refine
 * text (e.g. .json → application/json, .csv → text/csv, .md → text/markdown, .html/.svg → keep
 * text/plain: never serve client-supplied HTML or SVG as active content).
 */
export async function sniffMime(head: Buffer, name?: string): Promise<string> {
	const detected = head.length ? await fromBuffer(head) : undefined;
	if (detected && !ACTIVE.has(detected.mime)) return detected.mime;
	if (!isText(head)) return OCTET_STREAM;
	return textTypeFor(name) ?? TEXT_PLAIN;
}

/**
 * Valid UTF-8 with no control characters but tab, LF, FF and CR. `head` may be cut anywhere,
 * so an incomplete multi-byte sequence at its very end is accepted (streaming decode keeps it
 * pending instead of failing). An empty head is text.
 */
export function isText(head: Buffer): boolean {
	let text: string;
	try {
		text = new TextDecoder("utf-8", { fatal: true }).decode(head, { stream: true });
	} catch {
		return false;
	}
	// C0 controls but \t \n \f \r, DEL, and the C1 controls U+0080–U+009F.
	// eslint-disable-next-line no-control-regex -- control characters are what is looked for
	return !/[\u0000-\u0008\u000b\u000e-\u001f\u007f-\u009f]/.test(text);
}

function textTypeFor(name: string | undefined): string | undefined {
	const dot = name?.lastIndexOf(".") ?? -1;
	if (!name || dot < 0) return undefined;
	return TEXT_BY_EXTENSION[name.slice(dot + 1).toLowerCase()];
}
