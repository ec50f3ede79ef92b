// automerge-repo's own JavaScript client, pointed at our relay.
//
//   node client.mjs create WS_URL          creates a document, prints its URL,
//                                          then stays connected until killed
//   node client.mjs find WS_URL DOC_URL [KEY_PREFIX]
//                                          prints the document as JSON once it
//                                          has a key starting with KEY_PREFIX
//                                          (default `text`), then exits
//   node client.mjs time-find WS_URL DOC_URL KEY_PREFIX
//                                          the same, but prints only two
//                                          times in milliseconds: from creating
//                                          the repo (it connects then) to having
//                                          the key, node's start-up left out;
//                                          and from the arrival of the last
//                                          message before that to having the
//                                          key: the client's own work on the
//                                          document, which no server shortens
//
// WS_URL carries the device token as ?token=..., as a browser would.
// Every wait is bounded: the script exits 1 after 30 s.
import { Repo } from "@automerge/automerge-repo"
import { WebSocketClientAdapter } from "@automerge/automerge-repo-network-websocket"

const [mode, url, docUrl, keyPrefix = "text"] = process.argv.slice(2)
const started = performance.now()
const deadline = setTimeout(() => {
  console.error("interop client: timed out")
  process.exit(1)
}, 30_000)

// Listening before the repo does, so this runs first for every message.
const adapter = new WebSocketClientAdapter(url)
let lastArrival = started
adapter.on("message", () => {
  lastArrival = performance.now()
})

const repo = new Repo({
  network: [adapter],
  sharePolicy: async () => true,
})

if (mode === "create") {
  const handle = repo.create({ text: "hello from js", n: 1 })
  console.log(handle.url)
} else if (mode === "find" || mode === "time-find") {
  const handle = await repo.find(docUrl)
  let done = false
  const check = () => {
    const doc = handle.doc()
    if (!done && doc && Object.keys(doc).some((k) => k.startsWith(keyPrefix))) {
      done = true
      const out =
        mode === "time-find"
          ? `${(performance.now() - started).toFixed(1)} ${(performance.now() - lastArrival).toFixed(1)}`
          : JSON.stringify(doc, (_, v) => (typeof v === "bigint" ? Number(v) : v))
      clearTimeout(deadline)
      // Exit once the output is flushed: into a pipe, stdout is written
      // asynchronously, and exiting at once cuts it at 64 KiB.
      process.stdout.write(out + "\n", () => process.exit(0))
    }
  }
  handle.on("change", check)
  check()
} else {
  console.error(`unknown mode ${mode}`)
  process.exit(2)
}
