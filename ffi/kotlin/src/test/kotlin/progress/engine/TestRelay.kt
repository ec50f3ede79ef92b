package progress.engine

import java.io.File
import java.nio.file.Files
import java.nio.file.Path
import java.util.concurrent.TimeUnit

/**
 * The real relay (the workspace's `test-relay` binary, from the
 * `progress.testRelay` system property) on a loopback port and a temp
 * directory, as a separate process.
 */
class TestRelay : AutoCloseable {
    private val exe: String = System.getProperty("progress.testRelay")
        ?: error("set -Dprogress.testRelay to the test-relay binary")
    private val dir: Path = Files.createTempDirectory("relay")
    private val process: Process = ProcessBuilder(exe, dir.toString())
        .redirectError(ProcessBuilder.Redirect.DISCARD)
        .start()

    /** The relay's WebSocket URL, `ws://127.0.0.1:PORT/sync`. */
    val url: String = process.inputStream.bufferedReader().readLine()
        ?: error("the relay exited before printing its address")

    /** A device token signed with the relay's development key, valid for [seconds] (negative: expired). */
    fun token(user: String, device: String, seconds: Long = 3600): String {
        val p = ProcessBuilder(exe, "token", user, device, seconds.toString()).start()
        val out = p.inputStream.bufferedReader().readText().trim()
        check(p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0) { "test-relay token failed" }
        return out
    }

    override fun close() {
        process.destroyForcibly()
        process.waitFor(30, TimeUnit.SECONDS)
        dir.toFile().deleteRecursively()
    }
}

/** Polls [check] every 20 ms until it holds; fails after [timeoutMs]. */
fun eventually(what: String, timeoutMs: Long = 20_000, check: () -> Boolean) {
    val deadline = System.nanoTime() + timeoutMs * 1_000_000
    while (System.nanoTime() < deadline) {
        if (check()) return
        Thread.sleep(20)
    }
    throw AssertionError("timed out after $timeoutMs ms waiting for: $what")
}

fun tempDir(): File = Files.createTempDirectory("engine").toFile().also { it.deleteOnExit() }

fun syncOptions(relay: TestRelay) = SyncOptions(
    url = relay.url,
    extraCaPem = null,
    initialBackoffMs = 50uL,
    maxBackoffMs = 500uL,
)
