// The relay a Node.js team writes: the `ws` package on an https server.
//
// Protocol (shared by every peer in benchmarks/peers): the first message is the
// room name (text); every binary message after it is forwarded unchanged to the
// others in the room. No compression. Prints "ready" once listening.
//
//     node relay.js PORT CERT KEY
"use strict";

const fs = require("fs");
const https = require("https");
const { WebSocketServer } = require("ws");

const [port, certFile, keyFile] = process.argv.slice(2);
const rooms = new Map();

const server = https.createServer({
  cert: fs.readFileSync(certFile),
  key: fs.readFileSync(keyFile),
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: 64 << 20 });

wss.on("connection", (ws) => {
  let room = null;
  ws.on("message", (data, isBinary) => {
    if (room === null) {
      if (isBinary) return;
      const name = data.toString();
      room = rooms.get(name);
      if (room === undefined) {
        room = new Set();
        rooms.set(name, room);
      }
      room.add(ws);
      return;
    }
    if (!isBinary) return;
    for (const client of room) {
      if (client !== ws) client.send(data, { binary: true });
    }
  });
  ws.on("close", () => {
    if (room !== null) room.delete(ws);
  });
  ws.on("error", () => {});
});

server.listen(Number(port), "127.0.0.1", () => {
  console.log("ready");
});
