internal import CLibUV
internal import CUVShims
internal import DequeModule
internal import Glibc
import Synchronization

// Receiving: start/stop, the poll watcher, and the recvmmsg read loop.
extension UDPHandle {
    /// Datagrams read per readable event at most, so one busy socket cannot starve the others
    /// on its loop (libuv reads up to 32 per event).
    static let readsPerEvent = 256

    /// Starts receiving; `onReceive` (or the one given to ``init(loop:family:flags:onReceive:)``)
    /// is called on the loop thread with each datagram or receive error.
    ///
    /// Zero-length datagrams are delivered; libuv's "nothing more to read" notice is not.
    /// Receive errors such as ``UVError/connectionRefused`` (after a send to a closed port on a
    /// connected handle) are reported and receiving goes on. An unbound handle is first bound to
    /// the wildcard address of its family (`0.0.0.0` if it has none yet), port 0. Datagrams that
    /// were already read when ``stopReceiving()`` was called from the callback are delivered
    /// first.
    ///
    /// - Throws: ``UVError/alreadyInProgress`` if already receiving; ``UVError/invalidArgument`` if
    ///   there is no callback; ``ClosedHandleError``.
    public func startReceiving(_ onReceive: ReceiveHandler? = nil) throws {
        try checkOpen("startReceiving")
        if receiving { throw UVError.alreadyInProgress.with(context: "already receiving") }
        guard let handler = onReceive ?? self.onReceive else {
            throw UVError.invalidArgument.with(context: "startReceiving needs a callback")
        }
        try bindIfNeeded(nil)
        try makePollIfNeeded()
        self.onReceive = handler
        receiving = true
        readStarved = false
        if held.isEmpty {
            updatePollEvents()
        } else {
            deliveringHeld = true
            loop.executeOnLoop { [self] in deliverHeld() }
        }
    }

    /// For the async layer: starts receiving into `receiver` instead of a callback.
    package func startReceiving(into receiver: any DatagramReceiver) throws {
        self.receiver = receiver
        try startReceiving { _, _ in }
    }

    /// Stops receiving. Harmless when not receiving or closed. Called from the receive callback,
    /// the datagrams of the current batch that were already read are kept and delivered first
    /// when receiving starts again.
    public func stopReceiving() {
        loop.preconditionInLoop("UDPHandle.stopReceiving")
        guard receiving else { return }
        receiving = false
        updatePollEvents()
    }

    /// Sets the size of the buffer each datagram is read into.
    ///
    /// - Parameter size: 1...65536 bytes. Longer datagrams are delivered truncated.
    /// - Throws: ``UVError/invalidArgument`` outside that range.
    public func setMaximumDatagramSize(_ size: Int) throws {
        loop.preconditionInLoop("UDPHandle.setMaximumDatagramSize")
        guard (1...IOScratch.chunkSize).contains(size) else {
            throw UVError.invalidArgument.with(context: "maximum datagram size must be 1...\(IOScratch.chunkSize), not \(size)")
        }
        maximumDatagramSize = size
    }

    /// For the async layer: a consumer that read the socket from its own thread found it empty
    /// and waits; the loop watches for reads again. Loop thread.
    package func resumeLoopReading() {
        guard readLeftToConsumer else { return }
        readLeftToConsumer = false
        if let consumerWatch { uv_timer_stop(consumerWatch) }
        updatePollEvents()
    }

    /// Stops watching for reads while a consumer reads from its own thread, and checks every
    /// few milliseconds that it still does.
    private func leaveReadingToConsumer() {
        readLeftToConsumer = true
        updatePollEvents()
        if consumerWatch == nil {
            let timer = UnsafeMutablePointer<uv_timer_t>.allocate(capacity: 1)
            uv_timer_init(loop.uvLoop, timer)
            timer.pointee.data = Unmanaged.passUnretained(self).toOpaque()
            consumerWatch = timer
        }
        if let consumerWatch {
            uv_timer_start(consumerWatch, udpConsumerWatchCallback, 2, 2)
        }
    }

    /// The watch: resume reading on the loop if the consumer stopped reading.
    func checkConsumerReading() {
        guard readLeftToConsumer, state == .open else { return }
        if receiver?.loopShouldResumeReading() ?? true { resumeLoopReading() }
    }

    /// For the async layer: the receiver has room again after it stopped reading for lack of it.
    package func receiverHasRoom() {
        guard readStarved else { return }
        readStarved = false
        updatePollEvents()
    }

    // MARK: The watcher

    func makePollIfNeeded() throws {
        guard poll == nil else { return }
        let fd = try requireDescriptor("receive")
        let watcher = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
        let status = uv_poll_init(loop.uvLoop, watcher, fd)
        if status < 0 {
            watcher.deallocate()
            throw UVError(code: status, context: "uv_poll_init(\(fd))")
        }
        watcher.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        poll = watcher
    }

    /// Watches for what is wanted now: readable while receiving (and the receiver has room),
    /// writable while datagrams are queued.
    func updatePollEvents() {
        guard state == .open else { return }
        var wanted: Int32 = 0
        if receiving && !readStarved && !readLeftToConsumer && !deliveringHeld { wanted |= Int32(UV_READABLE.rawValue) }
        if !sendQueue.isEmpty { wanted |= Int32(UV_WRITABLE.rawValue) }
        guard wanted != pollEvents else { return }
        if poll == nil {
            do {
                try makePollIfNeeded()
            } catch {
                failQueueAndReceiving(error as? UVError ?? .invalidArgument)
                return
            }
        }
        guard let poll else { return }
        if wanted == 0 {
            uv_poll_stop(poll)
        } else {
            let status = uv_poll_start(poll, wanted, udpPollCallback)
            if status < 0 {
                failQueueAndReceiving(UVError(code: status, context: "uv_poll_start"))
                return
            }
        }
        pollEvents = wanted
    }

    /// The watcher could not start: nothing can be read or written.
    private func failQueueAndReceiving(_ error: UVError) {
        while let queued = sendQueue.popFirst() { complete(queued, error) }
        sendPath?.setLoopOwns(false)
        if receiving {
            receiving = false
            deliver(.failure(error), fatal: true)
        }
    }

    /// The poll callback.
    func pollEvent(status: Int32, events: Int32) {
        callbackDepth += 1
        defer { callbackDepth -= 1 }
        if status < 0 {
            // libuv turns POLLERR into UV_EBADF and stops the watcher. On a UDP socket POLLERR
            // means a pending socket error: an ICMP error left by an earlier datagram on a
            // connected socket. Read it (reading SO_ERROR clears it), report it as transient,
            // and watch again.
            pollEvents = 0
            socketErrorPending()
            updatePollEvents()
            return
        }
        if events & Int32(UV_READABLE.rawValue) != 0 { readBatch() }
        if events & Int32(UV_WRITABLE.rawValue) != 0, state == .open, !sendQueue.isEmpty { flushQueue() }
    }

    // MARK: Reading

    /// For the async layer, on the loop thread: a consumer found the queue empty; read what the
    /// socket holds now instead of waiting for the next poll (no trip through epoll and no
    /// wakeup when datagrams are already there).
    ///
    /// - Returns: Whether anything was read.
    package func readNow() -> Bool {
        guard state == .open, receiving, !readStarved, !deliveringBatch, !deliveringHeld, sendPath != nil else { return false }
        let before = counters.datagramsRead.load(ordering: .relaxed)
        callbackDepth += 1
        readBatch()
        callbackDepth -= 1
        return counters.datagramsRead.load(ordering: .relaxed) != before
    }

    /// Reads what the socket holds, up to ``readsPerEvent`` datagrams, `recvmmsg` by
    /// `recvmmsg`, and delivers each; then ends the batch (the receiver hands it on; sends made
    /// during it are flushed).
    func readBatch() {
        guard let sendPath else { return }
        if let receiver {
            switch receiver.beginLoopRead() {
            case .read: break
            case .skip: return
            case .leaveToConsumer:
                leaveReadingToConsumer()
                return
            }
        }
        defer { receiver?.endLoopRead() }
        let fd = sendPath.fd
        let withMetadata = !sendPath.receiveMetadataOptions.isEmpty
        let localPort = withMetadata ? sendPath.localPortForMetadata() : 0
        // With GRO the kernel may hand over up to 64 KiB of coalesced segments: read into the
        // whole chunk (the size limit is per datagram).
        let readLength = sendPath.receiveMetadataOptions.contains(.gro) ? IOScratch.chunkSize : maximumDatagramSize
        deliveringBatch = true
        scratch.readInProgress = true
        var read = 0
        reading: while receiving && state == .open && read < Self.readsPerEvent {
            var wanted = min(IOScratch.messages, Self.readsPerEvent - read)
            if let receiver {
                let budget = receiver.receiveBudget()
                if budget <= 0 {
                    readStarved = true
                    break
                }
                wanted = min(wanted, budget)
            }
            scratch.prepareReceive(wanted, length: readLength, withControl: withMetadata)
            let count = cuv_recvmmsg(fd, scratch.headers, UInt32(wanted))
            if count < 0 {
                let code = -count
                if code == EAGAIN || code == EWOULDBLOCK { break }
                let error = Syscall.error(code, "recvmmsg")
                if error.isTransient {
                    counters.transientErrors.add(1, ordering: .relaxed)
                    deliver(.failure(error), fatal: false)
                    read += 1  // errors count against the budget too
                    continue
                }
                receiving = false
                deliver(.failure(error), fatal: true)
                break
            }
            for index in 0..<Int(count) {
                guard var datagram = scratch.receivedDatagram(index) else { continue }
                if withMetadata { datagram.metadata = sendPath.metadata(of: scratch.headers + index, localPort: localPort) }
                if receiving && state == .open {
                    deliver(.success(datagram), fatal: false)
                } else if state == .open {
                    held.append(.success(datagram))  // stopped mid-batch: keep it for the restart
                }
            }
            read += Int(count)
            counters.datagramsRead.add(Int(count), ordering: .relaxed)
            if Int(count) < wanted { break reading }  // the socket is drained
        }
        deliveringBatch = false
        scratch.readInProgress = false
        receiver?.receiveBatchEnded()
        if flushScheduled { flushQueue() }
        updatePollEvents()
    }

    /// Hands one datagram or error to the receiver or the callback.
    func deliver(_ result: Result<Datagram, UVError>, fatal: Bool) {
        if let receiver {
            switch result {
            case .success(let datagram): receiver.receive(datagram)
            case .failure(let error): receiver.receiveFailed(error, fatal: fatal)
            }
            return
        }
        guard let onReceive else { return }
        callbackDepth += 1
        defer { callbackDepth -= 1 }
        onReceive(self, result)
    }

    /// Delivers datagrams kept from a batch that was interrupted by ``stopReceiving()``.
    private func deliverHeld() {
        deliveringHeld = false
        callbackDepth += 1
        while receiving, state == .open, let next = held.popFirst() {
            deliver(next, fatal: false)
        }
        callbackDepth -= 1
        receiver?.receiveBatchEnded()
        updatePollEvents()
    }

    /// Reads and clears the socket's pending error and reports it: never fatal for UDP, where
    /// such errors belong to earlier datagrams.
    private func socketErrorPending() {
        guard let fd = descriptor(),
              let code = try? Syscall.socketOption(fd, SOL_SOCKET, SO_ERROR, "SO_ERROR"), code != 0 else { return }
        let error = UVError(code: -code, context: "a datagram sent earlier")
        counters.transientErrors.add(1, ordering: .relaxed)
        if receiving {
            deliver(.failure(error), fatal: false)
        } else if let transientHandler {
            transientHandler(error)
        }
    }

    /// A transient error found by a send (an earlier datagram's ICMP error): to the async
    /// layer's handler, or to the receive callback.
    func reportTransient(_ error: UVError) {
        if let transientHandler {
            transientHandler(error)
        } else if receiving {
            deliver(.failure(error), fatal: false)
        }
    }
}

let udpConsumerWatchCallback: uv_timer_cb = { timer in
    guard let timer, let data = timer.pointee.data else { return }
    Unmanaged<UDPHandle>.fromOpaque(data).takeUnretainedValue().checkConsumerReading()
}

let udpPollCallback: uv_poll_cb = { poll, status, events in
    guard let poll, let data = poll.pointee.data else { return }
    Unmanaged<UDPHandle>.fromOpaque(data).takeUnretainedValue().pollEvent(status: status, events: events)
}
