package progress.engine

import kotlinx.coroutines.async
import kotlinx.coroutines.CoroutineStart
import kotlinx.coroutines.yield
import kotlinx.coroutines.flow.filterIsInstance
import kotlinx.coroutines.flow.first
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Test
import java.util.concurrent.CountDownLatch
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertNotNull
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** The engine through its generated Kotlin binding, against a real relay on loopback. */
class EngineTest : WithRelay() {

    private fun open(user: String, device: String, dir: java.io.File = tempDir()) =
        ProgressEngine.open(EngineOptions(dataDir = dir.path, userId = user, deviceId = device))

    private fun review(item: String, at: Long, session: String? = null) =
        NewReview(itemId = item, rating = Rating.GOOD, reviewedAtMs = at, durationMs = 2_000, sessionId = session)

    @Test
    fun `reviews recorded offline reach the other device, seen through the change Flow`() = runBlocking {
        val phone = open("alice", "phone")
        val tablet = open("alice", "tablet")
        // Offline: nothing syncs yet.
        val session = phone.startSession("review", 1_700_000_000_000)
        for (i in 0 until 3) phone.recordReview(review("word-$i", 1_700_000_000_000 + i * 1000, session.id))
        phone.endSession(session.id, 1_700_000_100_000, SessionCounts(3u, 3u, 0u), "evening")
        assertEquals(3uL, phone.reviewCount())
        assertEquals(0uL, tablet.reviewCount())

        val arrived = async(start = CoroutineStart.UNDISPATCHED) {
            tablet.changes().filterIsInstance<EngineEvent.ItemsChanged>().first { "word-2" in it.itemIds }
        }
        // Lets the Flow's producer run, and so subscribe, before sync starts.
        yield()
        tablet.startSync(syncOptions(relay), tokenProvider { relay.token("alice", "tablet") })
        phone.startSync(syncOptions(relay), tokenProvider { relay.token("alice", "phone") })
        withTimeout(20_000) { arrived.await() }

        eventually("every review on the tablet") { tablet.reviewCount() == 3uL }
        assertEquals(phone.memoryState("word-2"), tablet.memoryState("word-2"))
        assertEquals(listOf(session.id), tablet.sessions(0, Long.MAX_VALUE).map { it.id })
        assertEquals("evening", tablet.sessions(0, Long.MAX_VALUE).single().notes)
        eventually("the phone reports it is connected and has nothing pending") {
            val s = phone.syncStatus()
            s.connected && s.pendingDocuments == 0u
        }
        phone.close()
        tablet.close()
    }

    @Test
    fun `bad input gets typed exceptions`() {
        val engine = open("bob", "phone")
        assertFailsWith<ProgressException.InvalidInput> { engine.recordReview(review("", 1)) }
        assertFailsWith<ProgressException.InvalidInput> {
            engine.recordReview(review("word", 1).copy(durationMs = -5))
        }
        assertFailsWith<ProgressException.UnknownSession> {
            engine.endSession("no-such-session", 1, SessionCounts(0u, 0u, 0u), "")
        }
        // An item never reviewed has no memory state: null, not an error.
        assertNull(engine.memoryState("never-seen"))
        // Plain ws:// only to loopback: the token would cross the network in clear.
        assertFailsWith<ProgressException.InvalidInput> {
            engine.startSync(syncOptions(relay).copy(url = "ws://example.com/sync"), tokenProvider { "t" })
        }
        assertFailsWith<ProgressException.InvalidInput> {
            open("", "phone")
        }
        engine.close()
    }

    @Test
    fun `a garbage token and a provider without one show in the sync status, and nothing is lost`() {
        val engine = open("carol", "phone")
        engine.recordReview(review("kept", 1_700_000_000_000))
        engine.startSync(syncOptions(relay), tokenProvider { "garbage" })
        eventually("the refusal shows, typed") { engine.syncStatus().problem == SyncProblem.UNAUTHORIZED }
        assertEquals(false, engine.syncStatus().connected)

        engine.startSync(syncOptions(relay), tokenProvider { throw ProgressException.NoToken("signed out") })
        eventually("the provider's reason shows") {
            val s = engine.syncStatus()
            s.problem == SyncProblem.NO_TOKEN && s.lastError?.contains("signed out") == true
        }
        assertEquals(1uL, engine.reviewCount())
        assertEquals(1u, engine.syncStatus().pendingDocuments)
        engine.close()
    }

    @Test
    fun `the engine's log lines reach the app's listener, filtered by level`() {
        val lines = java.util.concurrent.ConcurrentLinkedQueue<Triple<LogLevel, String, String>>()
        setLogListener(object : LogListener {
            override fun onLog(level: LogLevel, target: String, message: String) {
                lines.add(Triple(level, target, message))
            }
        }, LogLevel.INFO)
        val engine = open("gina", "phone")
        engine.startSync(syncOptions(relay), tokenProvider { "garbage" })
        eventually("a line from the sync driver") { lines.any { it.second.startsWith("engine::sync") } }
        assertTrue(lines.none { it.first == LogLevel.DEBUG || it.first == LogLevel.TRACE }, "filtered by level")
        clearLogListener()
        engine.close()
    }

    @Test
    fun `an expired token is replaced by asking the provider again`() {
        val engine = open("dave", "phone")
        engine.recordReview(review("word", 1_700_000_000_000))
        val asked = AtomicInteger()
        engine.startSync(syncOptions(relay), tokenProvider {
            // First an expired token (refused by the relay), then a fresh one.
            relay.token("dave", "phone", if (asked.getAndIncrement() == 0) -60 else 3600)
        })
        eventually("synced with the second token") { engine.syncStatus().pendingDocuments == 0u }
        assertTrue(asked.get() >= 2, "the provider was asked ${asked.get()} times")
        engine.close()
    }

    @Test
    fun `shutdown while syncing ends every call with Closed and keeps what was written`() {
        val dir = tempDir()
        val engine = open("erin", "phone", dir)
        engine.startSync(syncOptions(relay), tokenProvider { relay.token("erin", "phone") })
        val written = AtomicInteger()
        val writer = Thread {
            try {
                for (i in 0 until 10_000) {
                    engine.recordReview(review("w$i", 1_700_000_000_000 + i))
                    written.incrementAndGet()
                }
            } catch (e: ProgressException.Closed) {
                // expected once shutdown ran
            }
        }
        writer.start()
        eventually("some reviews written") { written.get() >= 20 }
        engine.shutdown()
        writer.join(30_000)
        assertFailsWith<ProgressException.Closed> { engine.reviewCount() }
        assertFailsWith<ProgressException.Closed> { engine.shutdown() }
        assertFailsWith<ProgressException.Closed> { engine.startSync(syncOptions(relay), tokenProvider { "t" }) }
        assertFailsWith<ProgressException.Closed> { engine.subscribe(object : ChangeListener {
            override fun onEvent(event: EngineEvent) {}
        }) }
        engine.close()
        // The database was released: it opens again, with every review that returned.
        val reopened = open("erin", "phone", dir)
        assertEquals(written.get().toULong(), reopened.reviewCount())
        reopened.close()
    }

    @Test
    fun `a second engine on the same directory is refused until the first shuts down`() {
        val dir = tempDir()
        val first = open("hana", "phone", dir)
        first.recordReview(review("w", 1_700_000_000_000))
        assertFailsWith<ProgressException.InUse> { open("hana", "phone", dir) }
        first.shutdown()
        val second = open("hana", "phone", dir)
        assertEquals(1uL, second.reviewCount())
        second.close()
        first.close()
    }

    @Test
    fun `calls from many threads at once`() {
        val engine = open("frank", "phone")
        val threads = 8
        val each = 50
        val pool = Executors.newFixedThreadPool(threads)
        val start = CountDownLatch(1)
        val failures = AtomicInteger()
        repeat(threads) { t ->
            pool.submit {
                start.await()
                repeat(each) { i ->
                    try {
                        engine.recordReview(review("t$t-$i", 1_700_000_000_000 + t * 1000L + i))
                        assertNotNull(engine.memoryState("t$t-$i"))
                        engine.dueItems(Long.MAX_VALUE, 10u)
                    } catch (e: Throwable) {
                        failures.incrementAndGet()
                    }
                }
            }
        }
        start.countDown()
        pool.shutdown()
        assertTrue(pool.awaitTermination(60, TimeUnit.SECONDS))
        assertEquals(0, failures.get())
        assertEquals((threads * each).toULong(), engine.reviewCount())
        engine.close()
    }
}
