// automerge-repo's Node sync server, for the comparison in the sync bench.
//
// The npm package @automerge/automerge-repo-sync-server (0.2.8) still pins
// automerge-repo 1.x; this is its exact setup (Repo + NodeWSServerAdapter +
// NodeFSStorageAdapter, sharePolicy false: it syncs only documents a peer
// asks for) on automerge-repo 2.5.6, the version our interop test uses.
// Minus express, which only served a static page.
//
//   node sync-server.mjs DATA_DIR     prints ws://127.0.0.1:PORT, serves until killed
import fs from "fs"
import http from "http"
import { WebSocketServer } from "ws"
import { Repo } from "@automerge/automerge-repo"
import { NodeWSServerAdapter } from "@automerge/automerge-repo-network-websocket"
import { NodeFSStorageAdapter } from "@automerge/automerge-repo-storage-nodefs"

const dir = process.argv[2] ?? ".amrg"
fs.mkdirSync(dir, { recursive: true })
const socket = new WebSocketServer({ noServer: true })
new Repo({
  network: [new NodeWSServerAdapter(socket)],
  storage: new NodeFSStorageAdapter(dir),
  peerId: "storage-server-bench",
  sharePolicy: async () => false,
})
const server = http.createServer((_req, res) => res.end("automerge-repo sync server\n"))
server.on("upgrade", (request, s, head) => {
  socket.handleUpgrade(request, s, head, (ws) => socket.emit("connection", ws, request))
})
server.listen(0, "127.0.0.1", () => console.log(`ws://127.0.0.1:${server.address().port}/sync`))
