// Benchmark peer: the reference Socket.IO server (socket.io on Node's http server) doing
// what voxio's /voice namespace does in transport-benchmark mode (VOXIO_PIPELINE=none):
// CONNECT auth {pin} checked against $PIN, and every `audio` chunk acknowledged with
// {seq, bytes}, seq counting the socket's audio events from 1. Nothing else.
//
// Start: node server.js PORT   (or PORT=... node server.js; PIN defaults to 246810)
import { createServer } from "node:http";
import { Server } from "socket.io";

const port = Number(process.argv[2] ?? process.env.PORT ?? 8080);
const host = process.env.HOST ?? "127.0.0.1";
const pin = process.env.PIN ?? "246810";

const httpServer = createServer();
const io = new Server(httpServer, {
  path: "/socket.io/",
  pingInterval: 25000,
  pingTimeout: 20000,
  maxHttpBufferSize: 1e6,
  transports: ["polling", "websocket"],
  allowUpgrades: true,
  cors: { origin: true, credentials: true },
});

const voice = io.of("/voice");

voice.use((socket, next) => {
  const auth = socket.handshake.auth;
  if (auth && typeof auth.pin === "string" && auth.pin === pin) {
    next();
    return;
  }
  const err = new Error("Wrong PIN.");
  err.data = { code: "invalid_pin", message: "Wrong PIN.", retryAfterMs: 0 };
  next(err);
});

voice.on("connection", (socket) => {
  let seq = 0;
  socket.on("audio", (chunk, ack) => {
    seq += 1;
    if (typeof ack === "function") {
      const bytes = chunk && typeof chunk.length === "number" ? chunk.length : 0;
      ack({ seq, bytes });
    }
  });
});

httpServer.listen(port, host, () => {
  console.log(`node socket.io ${host}:${port} (/voice)`);
});

for (const sig of ["SIGINT", "SIGTERM"]) {
  process.on(sig, () => {
    io.close();
    process.exit(0);
  });
}
