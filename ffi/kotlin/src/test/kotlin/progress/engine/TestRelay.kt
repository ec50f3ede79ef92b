package progress.engine

import org.junit.jupiter.api.AfterAll
import org.junit.jupiter.api.BeforeAll
import org.junit.jupiter.api.TestInstance
import java.io.File
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import java.nio.file.Files
import java.nio.file.Path
import java.security.MessageDigest
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

    /** The relay's HTTP base URL, `http://127.0.0.1:PORT`. */
    val httpUrl: String = url.replaceFirst("ws://", "http://").removeSuffix("/sync")

    private val http = HttpClient.newHttpClient()

    private fun run(vararg args: String): String {
        val p = ProcessBuilder(exe, *args).start()
        val out = p.inputStream.bufferedReader().readText().trim()
        check(p.waitFor(30, TimeUnit.SECONDS) && p.exitValue() == 0) { "test-relay ${args.first()} failed" }
        return out
    }

    /** A device token signed with the relay's development key, valid for [seconds] (negative: expired). */
    fun token(user: String, device: String, seconds: Long = 3600): String =
        run("token", user, device, seconds.toString())

    /** The manifest signing key devices trust, `KEY_ID=BASE64`. */
    fun manifestKey(): String = run("manifest-key")

    private fun admin(method: String, path: String, body: HttpRequest.BodyPublisher, json: Boolean): String {
        val request = HttpRequest.newBuilder(URI.create(httpUrl + path))
            .header("authorization", "Bearer test-admin-token-0123456789")
            .apply { if (json) header("content-type", "application/json") }
            .method(method, body)
            .build()
        val response = http.send(request, HttpResponse.BodyHandlers.ofString())
        check(response.statusCode() in 200..299) { "$method $path: ${response.statusCode()} ${response.body()}" }
        return response.body()
    }

    /** Creates, uploads and publishes (at 100 %) a release of one file; returns its id. */
    fun publish(dataset: String, version: String, file: String, bytes: ByteArray): String {
        val body = "{\"dataset\":\"$dataset\",\"channel\":\"stable\",\"version\":\"$version\"," +
            "\"min_app_version\":\"1.0.0\",\"notes\":\"kotlin test\"}"
        val created = admin("POST", "/admin/releases", HttpRequest.BodyPublishers.ofString(body), json = true)
        val id = Regex("\"id\"\\s*:\\s*\"([^\"]+)\"").find(created)?.groupValues?.get(1)
            ?: error("no id in $created")
        admin("PUT", "/admin/releases/$id/artifacts/$file", HttpRequest.BodyPublishers.ofByteArray(bytes), json = false)
        admin("POST", "/admin/releases/$id/publish", HttpRequest.BodyPublishers.ofString("{}"), json = true)
        return id
    }

    override fun close() {
        process.destroyForcibly()
        process.waitFor(30, TimeUnit.SECONDS)
        dir.toFile().deleteRecursively()
    }
}

/** One relay process for all the tests of a class. */
@TestInstance(TestInstance.Lifecycle.PER_CLASS)
abstract class WithRelay {
    protected lateinit var relay: TestRelay

    @BeforeAll
    fun startRelay() {
        relay = TestRelay()
    }

    @AfterAll
    fun stopRelay() {
        relay.close()
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

fun sha256(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

fun syncOptions(relay: TestRelay) = SyncOptions(
    url = relay.url,
    extraCaPem = null,
    initialBackoffMs = 50uL,
    maxBackoffMs = 500uL,
)
