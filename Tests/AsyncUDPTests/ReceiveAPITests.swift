import AsyncUDP
import Dispatch
import Testing
import TestSupport

/// `receive()`, `receive(timeout:)`, `receive(upTo:)` and `datagrams`: cancellation and deadlines
/// that lose nothing, several consumers at once, close while consumers wait.
@Suite("Receive API", .timeLimit(.minutes(1)))
struct ReceiveAPITests {
    // MARK: Cancellation

    @Test("a receive cancelled 25 times in a row while it waits loses nothing: the next receive gets the next datagram",
          arguments: ["127.0.0.1", "::1"])
    func cancelledReceives(ip: String) async throws {
        let loop = UVLoop(name: "cancelled-receives")
        let socket = try await openSocket(ip, loop: loop)
        let sender = try await openSocket(ip)
        for round in 0..<25 {
            let waiter: Task<Datagram, any Error>
            if round.isMultiple(of: 2) {
                // On the socket's loop: the loop runs jobs in order, so once two jobs queued after
                // the task have run, the task has run up to its wait.
                waiter = Task(executorPreference: loop) { try await socket.receive() }
                try await loop.submit {}
                try await loop.submit {}
            } else {
                waiter = Task { try await socket.receive() }
                await Task.yield()
            }
            waiter.cancel()
            let outcome = try await result(of: waiter, within: 10, "cancelled receive \(round)")
            #expect(throws: CancellationError.self, "round \(round)") { try outcome.get() }
        }
        // Each cancelled wait left nothing behind: a stale waiter would swallow this wakeup.
        try await sender.send(Array("after"), to: socket.localAddress)
        let first = try await withDeadline("the receive after 25 cancelled ones", seconds: 10) { try await socket.receive() }
        #expect(first.payload == Array("after") && first.remote == sender.localAddress)
        try await sender.send(Array("and then"), to: socket.localAddress)
        let second = try await socket.receive(timeout: .seconds(10))
        #expect(second?.payload == Array("and then"))

        let stats = await socket.statistics
        #expect(stats.datagramsReceived == 2)
        #expect(stats.datagramsDelivered == 2)
        #expect(stats.datagramsDroppedByPolicy == 0)
        #expect(stats.datagramsQueued == 0)
        #expect((stats.datagramsDroppedByKernel ?? 0) == 0)
        await socket.close()
        await sender.close()
        await loop.shutdown()
    }

    @Test("a receive whose task is already cancelled throws CancellationError and takes nothing")
    func receiveInCancelledTask() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        try await sender.send(Array("queued"), to: socket.localAddress)
        try await waitUntil("queued") { await socket.statistics.datagramsQueued == 1 }
        let attempt = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await socket.receive()
        }
        let attemptResult = try await result(of: attempt, within: 10, "receive() in a cancelled task")
        #expect(throws: CancellationError.self) { try attemptResult.get() }
        let batchAttempt = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await socket.receive(upTo: 10)
        }
        let batchResult = try await result(of: batchAttempt, within: 10, "receive(upTo:) in a cancelled task")
        #expect(throws: CancellationError.self) { try batchResult.get() }
        #expect(await socket.statistics.datagramsQueued == 1)
        #expect(try await socket.receive(timeout: .seconds(10))?.payload == Array("queued"))
        await socket.close()
        await sender.close()
    }

    // MARK: Deadlines

    @Test("receive(timeout:) returns nil after its deadline: not before it, and not much later",
          arguments: [Duration.milliseconds(20), .milliseconds(150)])
    func timeoutBounds(timeout: Duration) async throws {
        let socket = try await openSocket()
        let clock = ContinuousClock()
        let start = clock.now
        let result = try await withDeadline("receive(timeout:) on a silent socket", seconds: 30) {
            try await socket.receive(timeout: timeout)
        }
        let elapsed = start.duration(to: clock.now)
        #expect(result == nil)
        #expect(elapsed >= timeout, "returned after \(elapsed), before its deadline")
        // The bound above is loose on purpose: under a sanitizer, with the whole suite running on
        // two cores, the timer task can wait a second or two for a thread. A timer that never
        // fires (or a receive that waits for a datagram) fails it.
        #expect(elapsed < timeout + .seconds(5), "returned \(elapsed) after it began")
        await socket.close()
    }

    @Test("a datagram that arrives just after a timeout is received by the next call")
    func datagramAfterTimeout() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        // At once after the timeout: a timer or a waiter left behind would take it.
        #expect(try await socket.receive(timeout: .milliseconds(30)) == nil)
        try await sender.send(Array("late"), to: socket.localAddress)
        #expect(try await socket.receive(timeout: .seconds(10))?.payload == Array("late"))

        // Right at the deadline: the sender waits as long as the receive, so the datagram lands on
        // either side of the deadline. Either the timed receive has it, or the next call does.
        let rounds = 30
        for round in 0..<rounds {
            let timeout = Duration.milliseconds(5)
            let late = Task {
                try await Task.sleep(for: timeout)
                try await sender.send(payload(round), to: socket.localAddress)
            }
            let timed = try await socket.receive(timeout: timeout)
            try await late.value
            if let timed {
                #expect(sequence(of: timed) == round)
            } else {
                let next = try #require(try await socket.receive(timeout: .seconds(10)), "round \(round): lost")
                #expect(sequence(of: next) == round)
            }
        }
        #expect(try await socket.receive(timeout: .zero) == nil)
        let stats = await socket.statistics
        #expect(stats.datagramsReceived == rounds + 1 && stats.datagramsDelivered == rounds + 1)
        #expect(stats.datagramsQueued == 0 && stats.datagramsDroppedByPolicy == 0)
        await socket.close()
        await sender.close()
    }

    @Test("a datagram already queued is returned at once, whatever the timeout")
    func queuedReturnsAtOnce() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        try await sender.send(Array("ready"), to: socket.localAddress)
        try await waitUntil("queued") { await socket.statistics.datagramsQueued == 1 }
        let clock = ContinuousClock()
        let start = clock.now
        let got = try await withDeadline("a queued datagram", seconds: 30) { try await socket.receive(timeout: .seconds(20)) }
        #expect(got?.payload == Array("ready"))
        // Loose (see timeoutBounds): a receive that waited for its 20 s timeout fails it.
        #expect(start.duration(to: clock.now) < .seconds(10))
        await socket.close()
        await sender.close()
    }

    @Test("a timeout of zero (or less) returns a queued datagram, or nil at once")
    func zeroTimeout() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        let clock = ContinuousClock()
        let start = clock.now
        #expect(try await socket.receive(timeout: .zero) == nil)
        #expect(try await socket.receive(timeout: .milliseconds(-5)) == nil)
        #expect(start.duration(to: clock.now) < .seconds(2))
        for index in 0..<2 { try await sender.send(payload(index), to: socket.localAddress) }
        try await waitUntil("queued") { await socket.statistics.datagramsQueued == 2 }
        #expect(try await socket.receive(timeout: .zero).map(sequence(of:)) == 0)
        #expect(try await socket.receive(timeout: .milliseconds(-5)).map(sequence(of:)) == 1)
        #expect(try await socket.receive(timeout: .zero) == nil)
        let stats = await socket.statistics
        #expect(stats.datagramsDelivered == 2 && stats.datagramsQueued == 0)
        await socket.close()
        await #expect(throws: ClosedHandleError.self, "a closed socket throws, as receive() does") {
            try await socket.receive(timeout: .zero)
        }
        await sender.close()
    }

    @Test("many short timeouts racing a stream of datagrams lose nothing: each received exactly once, in order")
    func timeoutsRacingAStream() async throws {
        let total = 3000
        let socket = try await openSocket(configuration: .init(receiveQueueLimit: 4096, receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        let sending = Task { try await sendPaced(from: sender, to: socket, 0..<total, window: 50) }
        let timeouts: [Duration] = [.zero, .nanoseconds(1), .microseconds(20), .microseconds(100), .microseconds(300), .milliseconds(1)]
        var got: [Int] = []
        var misses = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while got.count < total, ContinuousClock.now < deadline {
            if let datagram = try await socket.receive(timeout: timeouts.randomElement()!) {
                got.append(sequence(of: datagram))
            } else {
                misses += 1
                // Everything was read and nothing waits, yet some are missing: lost.
                let stats = await socket.statistics
                if stats.datagramsReceived == total && stats.datagramsQueued == 0 { break }
            }
        }
        try await sending.value
        #expect(sequenceProblem(got, expected: 0..<total) == nil)
        #expect(misses > 0, "no timeout ever expired: the race was not exercised")
        let stats = await socket.statistics
        #expect(stats.datagramsReceived == total && stats.datagramsDelivered == total)
        #expect(stats.datagramsQueued == 0 && stats.datagramsDroppedByPolicy == 0)
        await socket.close()
        await sender.close()
    }

    // MARK: The stream

    @Test("iterations of datagrams cancelled at random points mid-burst, then a new iteration: every datagram exactly once, in order")
    func cancelledIterations() async throws {
        let total = 500
        let socket = try await openSocket(configuration: .init(receiveQueueLimit: 1024, receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        // All queued first, so each iteration takes a batch and is cancelled holding part of it.
        try await sendPaced(from: sender, to: socket, 0..<total)
        var cuts = Set<Int>()
        while cuts.count < 4 { cuts.insert(Int.random(in: 1..<total)) }
        var seen: [Int] = []
        for cut in cuts.sorted() {
            let want = cut - seen.count
            let (reached, reachedSignal) = AsyncStream<Void>.makeStream()
            let consumer = Task {
                var mine: [Int] = []
                for try await datagram in socket.datagrams {
                    mine.append(sequence(of: datagram))
                    if mine.count == want {
                        reachedSignal.yield()
                        await waitForCancellation()
                    }
                }
                return mine
            }
            try await withDeadline("the iteration reached \(want)", seconds: 10) {
                var signals = reached.makeAsyncIterator()
                await signals.next()
            }
            consumer.cancel()
            let mine = try await result(of: consumer, within: 10, "the cancelled iteration ends").get()
            #expect(mine.count == want, "the cancelled iteration went on after its cancellation")
            seen += mine
            let stats = await socket.statistics
            #expect(stats.datagramsDelivered == seen.count)
            #expect(stats.datagramsQueued == total - seen.count, "what the iteration took but did not hand out is queued again")
        }
        // A new iteration continues where the cancelled ones stopped.
        let rest = total - seen.count
        seen += try await withDeadline("the rest, in a new iteration", seconds: 10) {
            var mine: [Int] = []
            for try await datagram in socket.datagrams {
                mine.append(sequence(of: datagram))
                if mine.count == rest { break }
            }
            return mine
        }
        #expect(sequenceProblem(seen, expected: 0..<total) == nil, "cut at \(cuts.sorted())")
        let stats = await socket.statistics
        #expect(stats.datagramsDelivered == total && stats.datagramsQueued == 0 && stats.datagramsDroppedByPolicy == 0)
        await socket.close()
        await sender.close()
    }

    @Test("iterations cancelled while datagrams still arrive, each followed by a new one: exactly once, in order")
    func cancelledIterationsWhileArriving() async throws {
        let total = 500
        let socket = try await openSocket(configuration: .init(receiveQueueLimit: 1024, receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        let sending = Task { try await sendPaced(from: sender, to: socket, 0..<total, window: 20) }
        var seen: [Int] = []
        var iterations = 0
        while seen.count < total {
            iterations += 1
            let want = min(Int.random(in: 1...60), total - seen.count)
            let consumer = Task {
                var mine: [Int] = []
                for try await datagram in socket.datagrams {
                    mine.append(sequence(of: datagram))
                    // Cancelled from inside, at a random point: the next step of the loop ends it.
                    if mine.count == want { withUnsafeCurrentTask { $0?.cancel() } }
                }
                return mine
            }
            let mine = try await result(of: consumer, within: 10, "iteration \(iterations)").get()
            #expect(mine.count == want)
            seen += mine
        }
        try await sending.value
        #expect(sequenceProblem(seen, expected: 0..<total) == nil)
        let stats = await socket.statistics
        #expect(stats.datagramsDelivered == total && stats.datagramsQueued == 0 && stats.datagramsDroppedByPolicy == 0)
        await socket.close()
        await sender.close()
    }

    @Test("break out of a loop over datagrams, or drop its iterator, and continue with receive(): nothing skipped")
    func breakThenReceive() async throws {
        let total = 300
        let socket = try await openSocket(configuration: .init(receiveQueueLimit: 1024, receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        try await sendPaced(from: sender, to: socket, 0..<total)
        let cut = Int.random(in: 1..<100)
        let seen = try await withDeadline("every datagram", seconds: 10) {
            var seen: [Int] = []
            for try await datagram in socket.datagrams {
                seen.append(sequence(of: datagram))
                if seen.count == cut { break }
            }
            // The loop took a batch: what it did not hand out is back at the head of the queue.
            while seen.count < cut + 50 { seen.append(sequence(of: try await socket.receive())) }
            do {
                var iterator = socket.datagrams.makeAsyncIterator()
                if let next = try await iterator.next() { seen.append(sequence(of: next)) }
            }
            while seen.count < cut + 100 {
                guard let next = try await socket.receive(timeout: .seconds(10)) else { break }
                seen.append(sequence(of: next))
            }
            while seen.count < total { seen += try await socket.receive(upTo: 7).map(sequence(of:)) }
            return seen
        }
        #expect(sequenceProblem(seen, expected: 0..<total) == nil, "cut at \(cut)")
        #expect(await socket.statistics.datagramsDelivered == total)
        await socket.close()
        await sender.close()
    }

    // MARK: Several consumers

    @Test("four consumers (two loops over datagrams, receive(), receive(upTo:)) share 100,000 datagrams exactly once")
    func fourConsumers() async throws {
        let total = 100_000
        let limit = 1024
        let socket = try await openSocket(configuration: .init(receiveQueueLimit: limit, receiveBufferSize: 1 << 20))
        let sender = try await openSocket()
        let loops = (0..<2).map { _ in
            Task {
                var mine: [Int] = []
                for try await datagram in socket.datagrams { mine.append(sequence(of: datagram)) }
                return mine
            }
        }
        let single = Task {
            var mine: [Int] = []
            while true {
                do { mine.append(sequence(of: try await socket.receive())) } catch is ClosedHandleError { return mine }
            }
        }
        let batched = Task {
            var mine: [Int] = []
            while true {
                do {
                    let batch = try await socket.receive(upTo: 32)
                    if batch.isEmpty || batch.count > 32 { throw UVError.invalidArgument.with(context: "batch of \(batch.count)") }
                    mine += batch.map(sequence(of:))
                } catch is ClosedHandleError {
                    return mine
                }
            }
        }
        // Paced: at most `window` datagrams in the kernel and `backlog + window` in the queue, so
        // neither can drop (both are asserted below).
        var identityHeld = true
        let paced = await outcome {
            try await sendPaced(from: sender, to: socket, 0..<total, window: 250, backlog: limit - 2 * 250) { stats in
                if stats.datagramsQueued < 0 || stats.datagramsDelivered > stats.datagramsReceived { identityHeld = false }
            }
            try await waitUntil("all delivered", seconds: 20) { await socket.statistics.datagramsDelivered >= total }
        }
        let stats = await socket.statistics
        await socket.close()
        var mines: [[Int]] = []
        for consumer in loops + [single, batched] {
            mines.append(try await result(of: consumer, within: 10, "a consumer ends after close").get())
        }

        #expect(identityHeld)
        #expect(stats.datagramsReceived == total)
        #expect(stats.datagramsDelivered == total)
        #expect(stats.datagramsDroppedByPolicy == 0)
        #expect(stats.datagramsQueued == 0)
        #expect((stats.datagramsDroppedByKernel ?? 0) == 0)
        #expect(stats.datagramsDelivered + stats.datagramsDroppedByPolicy + stats.datagramsQueued == stats.datagramsReceived)
        for (index, mine) in mines.enumerated() {
            #expect(zip(mine, mine.dropFirst()).allSatisfy { $0 < $1 }, "consumer \(index) saw datagrams out of order")
        }
        let all = mines.flatMap { $0 }
        #expect(sequenceProblem(all.sorted(), expected: 0..<total) == nil, "per consumer: \(mines.map(\.count))")
        try paced.get()
        await sender.close()
    }

    @Test("a burst of three datagrams wakes three waiting receive() calls: each returns one")
    func burstWakesEveryWaiter() async throws {
        let loop = UVLoop(name: "burst-wakes")
        let socket = try await openSocket(loop: loop)
        let sender = try await openSocket()
        // On the socket's loop, fenced: each task has run up to its wait before the next starts.
        var waiters: [Task<Datagram, any Error>] = []
        for _ in 0..<3 {
            waiters.append(Task(executorPreference: loop) { try await socket.receive() })
            try await loop.submit {}
            try await loop.submit {}
        }
        // The burst lands while the loop is held, so one read takes it all.
        let gate = DispatchSemaphore(value: 0)
        let (held, heldSignal) = AsyncStream<Void>.makeStream()
        loop.execute {
            heldSignal.yield()
            gate.wait()
        }
        var holding = held.makeAsyncIterator()
        await holding.next()
        try await sender.send(contentsOf: (0..<3).map { Datagram(payload: payload($0), remote: socket.localAddress) })
        gate.signal()
        var got: [Int] = []
        for (index, waiter) in waiters.enumerated() {
            got.append(sequence(of: try await result(of: waiter, within: 10, "waiting receive() \(index) returns").get()))
        }
        #expect(sequenceProblem(got.sorted(), expected: 0..<3) == nil)
        await socket.close()
        await sender.close()
        await loop.shutdown()
    }

    @Test("a burst that arrives while two consumers wait is shared: the loop that waited first does not keep it all")
    func burstIsShared() async throws {
        let loop = UVLoop(name: "burst-shared")
        let socket = try await openSocket(loop: loop)
        let sender = try await openSocket()
        // Everything runs on the socket's loop, so the order is fixed: each fence (a job queued
        // behind a task) returns once the task has run up to its wait.
        // A worker that takes a datagram, then stays busy with it (until cancelled)...
        let busy = Task(executorPreference: loop) {
            var taken: [Int] = []
            for try await datagram in socket.datagrams {
                taken.append(sequence(of: datagram))
                await waitForCancellation()
            }
            return taken
        }
        try await loop.submit {}
        try await loop.submit {}
        // ...and a second worker that waits beside it.
        let idle = Task(executorPreference: loop) { try await socket.receive() }
        try await loop.submit {}
        try await loop.submit {}
        // Ten datagrams land while the loop is held, so one read takes them all and wakes both.
        let gate = DispatchSemaphore(value: 0)
        let (held, heldSignal) = AsyncStream<Void>.makeStream()
        loop.execute {
            heldSignal.yield()
            gate.wait()
        }
        var holding = held.makeAsyncIterator()
        await holding.next()
        try await sender.send(contentsOf: (0..<10).map { Datagram(payload: payload($0), remote: socket.localAddress) })
        gate.signal()

        let second = await outcome { try await result(of: idle, within: 5, "the waiting receive() gets one of the burst").get() }
        let stats = await socket.statistics
        busy.cancel()
        let first = try await result(of: busy, within: 10, "the busy loop ends").get()
        var rest: [Int] = []
        while let next = try await socket.receive(timeout: .zero) { rest.append(sequence(of: next)) }
        await socket.close()
        await sender.close()
        await loop.shutdown()

        #expect(first.count == 1)
        let other = try #require(try? second.get(),
                                 "the waiting receive() got nothing while \(stats.datagramsQueued) datagrams sat in the busy loop's batch")
        #expect(stats.datagramsDelivered == 2 && stats.datagramsQueued == 8)
        #expect(sequenceProblem((first + [sequence(of: other)] + rest).sorted(), expected: 0..<10) == nil)
    }

    @Test("receive(upTo:) returns between 1 and maxCount datagrams in arrival order; maxCount below 1 is refused")
    func receiveUpTo() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        try await sendPaced(from: sender, to: socket, 0..<10)
        await #expect(throws: UVError.invalidArgument) { try await socket.receive(upTo: 0) }
        await #expect(throws: UVError.invalidArgument) { try await socket.receive(upTo: -3) }
        // Ten queued: it takes what is queued, up to maxCount.
        var batches: [[Int]] = []
        while batches.joined().count < 10 {
            let batch = try await socket.receive(upTo: 4).map(sequence(of:))
            #expect((1...4).contains(batch.count))
            batches.append(batch)
        }
        #expect(batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]])
        // Nothing queued: it waits, and one datagram is enough to return.
        let waiting = Task { try await socket.receive(upTo: 100) }
        try await sender.send(payload(10), to: socket.localAddress)
        let batch = try await result(of: waiting, within: 10, "receive(upTo:) woken by one datagram").get()
        #expect(batch.map(sequence(of:)) == [10])
        let stats = await socket.statistics
        #expect(stats.datagramsDelivered == 11 && stats.datagramsQueued == 0)
        await socket.close()
        await sender.close()
    }

    // MARK: Close

    @Test("close while consumers wait: loops end normally, receive(), receive(timeout:) and receive(upTo:) throw ClosedHandleError")
    func closeWhileWaiting() async throws {
        let socket = try await openSocket()
        let sender = try await openSocket()
        let loops = (0..<2).map { _ in
            Task {
                var count = 0
                for try await _ in socket.datagrams { count += 1 }
                return count
            }
        }
        let waiters: [Task<Void, any Error>] = [
            Task { while true { _ = try await socket.receive() } },
            Task { while true { _ = try await socket.receive(timeout: .seconds(30)) } },
            Task { while true { _ = try await socket.receive(upTo: 5) } },
        ]
        // Datagrams reach the waiting consumers before the close.
        try await sendPaced(from: sender, to: socket, 0..<20)
        try await waitUntil("all delivered") { await socket.statistics.datagramsDelivered == 20 }
        await socket.close()
        var delivered = 0
        for task in loops {
            delivered += try await result(of: task, within: 10, "a loop over datagrams ends after close").get()
        }
        for task in waiters {
            let ended = try await result(of: task, within: 10, "a waiting receive ends after close")
            #expect(throws: ClosedHandleError.self) { try ended.get() }
        }
        let stats = await socket.statistics
        #expect(stats.datagramsDelivered == 20 && stats.datagramsQueued == 0)
        #expect(delivered <= 20)
        await sender.close()
    }

    @Test("datagrams queued when the socket closes are still delivered, then the end")
    func queuedDeliveredAfterClose() async throws {
        let socket = try await openSocket()
        let other = try await openSocket()
        let sender = try await openSocket()
        try await sendPaced(from: sender, to: socket, 0..<5)
        try await sendPaced(from: sender, to: other, 0..<5)
        await socket.close()
        await other.close()

        // receive() and friends drain the queue, then throw.
        #expect(sequence(of: try await socket.receive()) == 0)
        #expect(try await socket.receive(timeout: .seconds(5)).map(sequence(of:)) == 1)
        #expect(try await socket.receive(upTo: 10).map(sequence(of:)) == [2, 3, 4])
        await #expect(throws: ClosedHandleError.self) { try await socket.receive() }
        await #expect(throws: ClosedHandleError.self) { try await socket.receive(timeout: .seconds(5)) }
        await #expect(throws: ClosedHandleError.self) { try await socket.receive(timeout: .zero) }
        await #expect(throws: ClosedHandleError.self) { try await socket.receive(upTo: 3) }
        var after: [Int] = []
        for try await datagram in socket.datagrams { after.append(sequence(of: datagram)) }
        #expect(after.isEmpty)

        // A loop drains the queue, then ends normally.
        var drained: [Int] = []
        for try await datagram in other.datagrams { drained.append(sequence(of: datagram)) }
        #expect(drained == Array(0..<5))
        #expect(await other.statistics.datagramsDelivered == 5)
        await sender.close()
    }
}

/// The outcome of an async throwing body, so a test can clean up before it fails.
private func outcome<T>(of body: () async throws -> T) async -> Result<T, any Error> {
    do { return .success(try await body()) } catch { return .failure(error) }
}
