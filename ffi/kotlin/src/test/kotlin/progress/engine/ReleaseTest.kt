package progress.engine

import kotlinx.coroutines.CompletableDeferred
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.Test
import java.io.File
import kotlin.random.Random
import kotlin.test.assertContentEquals
import kotlin.test.assertEquals
import kotlin.test.assertFailsWith
import kotlin.test.assertFalse
import kotlin.test.assertIs
import kotlin.test.assertNull
import kotlin.test.assertTrue

/** Dataset releases through the Kotlin binding, from a real relay on loopback. */
class ReleaseTest : WithRelay() {

    private val mib = 1024 * 1024

    private fun options(dir: File, dataset: String, embedded: ByteArray) = ReleaseOptions(
        dataDir = File(dir, "data").path,
        dataset = dataset,
        channel = "stable",
        appVersion = "2.0.0",
        installId = "install-1",
        relayUrl = relay.httpUrl,
        trustedKeys = listOf(relay.manifestKey()),
        embedded = EmbeddedRelease(
            dir = File(dir, "embedded").apply { mkdirs(); File(this, "words.db").writeBytes(embedded) }.path,
            releaseId = "embedded-0",
            version = "0.1.0",
            files = listOf(ReleaseFileInfo("words.db", sha256(embedded), embedded.size.toULong())),
        ),
        maxFailedLaunches = 2u,
        extraCaPem = null,
    )

    private fun listener(block: (ULong, ULong) -> Unit) = object : UpdateListener {
        override fun onProgress(doneBytes: ULong, totalBytes: ULong) = block(doneBytes, totalBytes)
    }

    @Test
    fun `an update with progress, cancel and resume, a failed launch and a rollback`() = runBlocking {
        val dir = tempDir()
        val embedded = "the words shipped in the app".toByteArray()
        val updater = ReleaseUpdater.open(options(dir, "words-walk", embedded))
        // First launch, offline: the embedded release.
        assertTrue(updater.active()!!.embedded)
        assertFailsWith<ProgressException.NothingOffered> {
            updater.checkForUpdate(listener { _, _ -> }, CancelHandle())
        }

        val v1Bytes = Random(1).nextBytes(6 * mib)
        val v1 = relay.publish("words-walk", "1.0.0", "words.db", v1Bytes)

        // Cancelled by its handle past 1 MiB: nothing activated, the part kept.
        val handle = CancelHandle()
        var cancelledAt = 0uL
        assertFailsWith<ProgressException.Cancelled> {
            updater.checkForUpdate(listener { done, _ ->
                if (done >= mib.toULong() && cancelledAt == 0uL) {
                    cancelledAt = done
                    handle.cancel()
                }
            }, handle)
        }
        assertTrue(cancelledAt > 0uL)
        assertTrue(updater.active()!!.embedded, "a cancelled update leaves the active release alone")

        // Cancelled by cancelling the coroutine, further on.
        val past = CompletableDeferred<ULong>()
        val callerGone = CompletableDeferred<Unit>()
        val job = launch(Dispatchers.Default) {
            updater.checkForUpdate(listener { done, _ ->
                if (done >= (3 * mib).toULong() && !past.isCompleted) {
                    past.complete(done)
                    // Holds the download here until its caller is gone, so
                    // the cancel lands mid-download (loopback is fast).
                    runBlocking { withTimeout(10_000) { callerGone.await() } }
                }
            }, CancelHandle())
        }
        val secondStop = withTimeout(20_000) { past.await() }
        job.cancel()
        job.join()
        callerGone.complete(Unit)
        assertTrue(updater.active()!!.embedded)

        // Resumed, not restarted: the first bytes reported are past where it stopped.
        var firstDone: ULong? = null
        var lastDone = 0uL
        var total = 0uL
        val outcome = updater.checkForUpdate(listener { done, all ->
            if (firstDone == null) firstDone = done
            lastDone = done
            total = all
        }, CancelHandle())
        assertEquals(UpdateOutcome.Activated(v1, "1.0.0"), outcome)
        assertTrue(firstDone!! > cancelledAt, "resumed at $firstDone after stopping at $cancelledAt and $secondStop")
        assertEquals(v1Bytes.size.toULong(), total)
        assertEquals(total, lastDone)
        val active = updater.active()!!
        assertFalse(active.embedded)
        assertContentEquals(v1Bytes, File(active.files.single().path).readBytes())
        assertNull(updater.reportLaunch(true))
        assertEquals(UpdateOutcome.UpToDate, updater.checkForUpdate(listener { _, _ -> }, CancelHandle()))

        // Version 2 fails to launch twice: back to version 1, and never picked again.
        val v2 = relay.publish("words-walk", "2.0.0", "words.db", "broken".toByteArray())
        assertIs<UpdateOutcome.Activated>(updater.checkForUpdate(listener { _, _ -> }, CancelHandle()))
        assertEquals("2.0.0", updater.active()!!.version)
        assertNull(updater.reportLaunch(false))
        assertEquals(v1, updater.reportLaunch(false))
        assertEquals("1.0.0", updater.active()!!.version)
        assertEquals(UpdateOutcome.SkippedBad(v2), updater.checkForUpdate(listener { _, _ -> }, CancelHandle()))

        // The app gives up on version 1 itself: the embedded release again.
        assertEquals("embedded-0", updater.rollBack())
        assertTrue(updater.active()!!.embedded)
        assertNull(updater.rollBack())
        updater.close()
    }

    @Test
    fun `bad release options get typed exceptions`() {
        val dir = tempDir()
        val good = options(dir, "words-bad", "x".toByteArray())
        assertFailsWith<ProgressException.InvalidInput> { ReleaseUpdater.open(good.copy(appVersion = "two")) }
        assertFailsWith<ProgressException.InvalidInput> {
            ReleaseUpdater.open(good.copy(trustedKeys = listOf("no-equals-sign")))
        }
        assertFailsWith<ProgressException.InvalidInput> {
            ReleaseUpdater.open(good.copy(trustedKeys = listOf("k=AAAA")))
        }
        // A relay that is not there: a network error, the embedded release still active.
        val offline = ReleaseUpdater.open(good.copy(relayUrl = "http://127.0.0.1:9"))
        runBlocking {
            assertFailsWith<ProgressException.Network> {
                offline.checkForUpdate(listener { _, _ -> }, CancelHandle())
            }
        }
        assertTrue(offline.active()!!.embedded)
        offline.close()
    }
}
