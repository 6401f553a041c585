/**
 * Baseline of `npm run bench:chat`: a plain socket.io server with no platform behind it, in a
 * process of its own (PORT from the environment, loopback only). It speaks the client side of
 * the platform's channel, so the bench drives it with the very same client code:
 *
 *   - handshake `auth: { token, groups? }`: `token` is taken as the user id (nothing is checked);
 *     the socket joins `user:<token>`, `company:bench` and `group:<id>` for each of `groups`,
 *     the rooms the platform's handshake joins;
 *   - `emit("call", "chatmsg.send", { to, type, content, clientMsgId }, ack)`: the message goes
 *     to the sender's and the peer's rooms as `chat.message` (as chatmsg pushes it), then the ack;
 *   - `emit("call", "groupmsg.send", { id, type, content, clientMsgId }, ack)`: one `group.message`
 *     to the room `group:<id>`, then the ack.
 *
 * No storage, no NATS, no Redis adapter: what is left is socket.io itself. Self-contained (the
 * bench transpiles it into a temp folder and runs it with plain `node`, NODE_PATH pointing at the
 * project's node_modules).
 */
import http from "node:http";
import { Server, type Socket } from "socket.io";

const port = Number(process.env.PORT);
if (!Number.isInteger(port) || port <= 0) throw new Error("PORT must be set");

type Ack = (err: unknown, result?: unknown) => void;
type Params = { to?: string; id?: string; type?: string; content?: unknown; clientMsgId?: string };

const server = http.createServer((_req, res) => {
	res.writeHead(404);
	res.end();
});
// The platform's socket.io options (services/gateway/websocket.service.ts).
const io = new Server(server, { path: "/socket.io", serveClient: false, maxHttpBufferSize: 1024 * 1024, pingInterval: 20_000, pingTimeout: 20_000 });

let nextId = 0;
/** Per conversation / group, as the platform numbers messages. */
const seqs = new Map<string, number>();
const nextSeq = (stream: string) => {
	const seq = (seqs.get(stream) ?? 0) + 1;
	seqs.set(stream, seq);
	return seq;
};

io.use((socket, next) => {
	const auth = socket.handshake.auth as { token?: unknown; groups?: unknown };
	if (typeof auth.token !== "string" || !auth.token) return next(new Error("An access token is required"));
	const groups = Array.isArray(auth.groups) ? auth.groups.filter((g): g is string => typeof g === "string") : [];
	socket.data.userId = auth.token;
	socket.join([`user:${auth.token}`, "company:bench", ...groups.map(g => `group:${g}`)]);
	next();
});

io.on("connection", (socket: Socket) => {
	socket.on("call", (action: unknown, params: Params, ack: unknown) => {
		if (typeof ack !== "function") return;
		const from = socket.data.userId as string;
		const sentAt = new Date().toISOString();
		const id = `m${++nextId}`;
		if (action === "chatmsg.send" && typeof params?.to === "string") {
			const conversationId = from < params.to ? `${from}:${params.to}` : `${params.to}:${from}`;
			const seq = nextSeq(conversationId);
			const view = { id, conversationId, seq, from, to: params.to, type: params.type, content: params.content, clientMsgId: params.clientMsgId, sentAt, recalledAt: null };
			io.to([`user:${from}`, `user:${params.to}`]).emit("chat.message", view);
			(ack as Ack)(null, { id, conversationId, seq, sentAt, duplicate: false });
		} else if (action === "groupmsg.send" && typeof params?.id === "string") {
			const seq = nextSeq(params.id);
			const view = { id, groupId: params.id, seq, from, type: params.type, content: params.content, mentions: [], mentionAll: false, clientMsgId: params.clientMsgId, sentAt, recalledAt: null };
			io.to(`group:${params.id}`).emit("group.message", view);
			(ack as Ack)(null, { id, groupId: params.id, seq, sentAt, duplicate: false });
		} else {
			(ack as Ack)({ code: 404, type: "NOT_FOUND", message: `Action '${String(action)}' is not available on this channel` });
		}
	});
});

server.listen(port, "127.0.0.1");
process.on("SIGTERM", () => {
	io.disconnectSockets(true);
	io.close(() => process.exit(0));
	setTimeout(() => process.exit(0), 2_000).unref();
});
