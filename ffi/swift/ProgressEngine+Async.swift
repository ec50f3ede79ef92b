// Written by hand: Swift idioms over the generated binding
// (generated/ProgressEngine.swift, from `bash ffi/generate.sh`; do not edit
// that one). Swift cannot be compiled on the project's CI machines; this
// file is kept small and reviewed against the generated protocol names.

import Foundation

/// Forwards engine events into an `AsyncStream` continuation.
private final class StreamListener: ChangeListener, @unchecked Sendable {
    private let continuation: AsyncStream<EngineEvent>.Continuation
    init(_ continuation: AsyncStream<EngineEvent>.Continuation) { self.continuation = continuation }
    func onEvent(event: EngineEvent) { continuation.yield(event) }
}

public extension ProgressEngine {
    /// The engine's change events as an `AsyncSequence`: iterating
    /// subscribes, ending the iteration (or cancelling its task)
    /// unsubscribes. Buffers the newest 256 events; past that the engine
    /// reports `.missed(count:)`: re-read what the screen shows.
    func changes() throws -> AsyncStream<EngineEvent> {
        let (stream, continuation) = AsyncStream<EngineEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let subscription = try subscribe(listener: StreamListener(continuation))
        continuation.onTermination = { _ in try? subscription.cancel() }
        return stream
    }
}

/// A `TokenProvider` from a closure.
public final class ClosureTokenProvider: TokenProvider, @unchecked Sendable {
    private let block: () throws -> String
    public init(_ block: @escaping () throws -> String) { self.block = block }
    public func token() throws -> String { try block() }
}
