/**
 * A real webhook receiver for the bus tests: a node:http server on 127.0.0.1 with one endpoint
 * per path. Each endpoint checks the signature itself (HMAC-SHA256 of the raw body with its
 * secret), can refuse the first attempts of every message or all of them, or hold a request
 * unanswered, and keeps what arrived. Like a real receiver it processes a message id once and
 * answers a second delivery of it with 200 (at-least-once delivery, idempotent receiver).
 */
import { createHmac } from "node:crypto";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { waitFor } from "./servers";

export interface Received {
	path: string;
	headers: http.IncomingHttpHeaders;
	raw: string;
	body: any;
	signatureValid: boolean;
	/** What the endpoint answered (0 = held, never answered). */
	status: number;
	at: number;
}

export interface EndpointOptions {
	secret: string;
	/** Refuse (500) the first N attempts of each message. */
	failFirst?: number;
	/** Refuse every attempt with this status. */
	alwaysFail?: number;
	/** Hold every request unanswered (until the sender goes away) while set; see `hold()`. */
	hold?: boolean;
}

interface Endpoint extends EndpointOptions {
	attempts: Map<string, number>;
	/** Message ids processed (accepted once each): what an idempotent receiver acts on. */
	processed: string[];
	received: Received[];
}

export class WebhookReceiver {
	private readonly endpoints = new Map<string, Endpoint>();

	private constructor(private readonly server: http.Server, readonly base: string) {}

	static async start(): Promise<WebhookReceiver> {
		const server = http.createServer();
		await new Promise<void>(resolve => server.listen(0, "127.0.0.1", resolve));
		const receiver = new WebhookReceiver(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
		server.on("request", (req, res) => receiver.handle(req, res));
		return receiver;
	}

	/** A new endpoint; answers its URL. */
	endpoint(path: string, options: EndpointOptions): string {
		this.endpoints.set(path, { ...options, attempts: new Map(), processed: [], received: [] });
		return this.base + path;
	}

	/** Holds (or stops holding) the endpoint's requests from now on. */
	hold(path: string, hold: boolean): void {
		this.endpoint$(path).hold = hold;
	}

	received(path: string): Received[] {
		return this.endpoint$(path).received;
	}

	/** Message ids the endpoint processed, each once, in order. */
	processed(path: string): string[] {
		return [...this.endpoint$(path).processed];
	}

	async waitForProcessed(path: string, count: number, timeoutMs = 20_000): Promise<string[]> {
		await waitFor(() => this.endpoint$(path).processed.length >= count, `${count} message(s) processed at ${path}`, timeoutMs);
		return this.processed(path);
	}

	async waitForReceived(path: string, check: (received: Received[]) => boolean, what: string, timeoutMs = 20_000): Promise<Received[]> {
		await waitFor(() => check(this.received(path)), what, timeoutMs);
		return this.received(path);
	}

	async stop(): Promise<void> {
		this.server.closeAllConnections();
		await new Promise(resolve => this.server.close(resolve));
	}

	private endpoint$(path: string): Endpoint {
		const endpoint = this.endpoints.get(path);
		if (!endpoint) throw new Error(`No endpoint ${path}`);
		return endpoint;
	}

	private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
		const chunks: Buffer[] = [];
		req.on("data", chunk => chunks.push(chunk));
		req.on("end", () => {
			const endpoint = this.endpoints.get(req.url ?? "");
			if (!endpoint || req.method !== "POST") {
				res.writeHead(404).end();
				return;
			}
			const raw = Buffer.concat(chunks).toString("utf8");
			const expected = "sha256=" + createHmac("sha256", endpoint.secret).update(raw).digest("hex");
			let body: any = null;
			try {
				body = JSON.parse(raw);
			} catch {
				// kept as null: the test sees it
			}
			const record: Received = { path: req.url!, headers: req.headers, raw, body, signatureValid: req.headers["x-signature"] === expected, status: 0, at: Date.now() };
			endpoint.received.push(record);
			const answer = (status: number, text = "") => {
				record.status = status;
				res.writeHead(status, { "Content-Type": "text/plain" }).end(text);
			};
			if (!record.signatureValid) return answer(401, "bad signature");
			const id = String(req.headers["x-message-id"]);
			const attempt = (endpoint.attempts.get(id) ?? 0) + 1;
			endpoint.attempts.set(id, attempt);
			if (endpoint.hold) return; // held: answered by nobody
			if (endpoint.alwaysFail) return answer(endpoint.alwaysFail, "down for maintenance");
			if (endpoint.failFirst && attempt <= endpoint.failFirst) return answer(500, `failing attempt ${attempt}`);
			// Idempotent: a message id already processed is acknowledged again, not processed twice.
			if (!endpoint.processed.includes(id)) endpoint.processed.push(id);
			answer(200, "ok");
		});
	}
}
