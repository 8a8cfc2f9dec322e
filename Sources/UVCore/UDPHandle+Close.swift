internal import CLibUV
internal import Glibc

// Closing, in order: refuse new work, let direct sends in flight finish, close the watcher and
// the socket, cancel what was queued, then tell whoever waits.
extension UDPHandle {
    /// Closes the handle. Idempotent.
    ///
    /// Receiving stops at once; every queued send's callback is called exactly once with
    /// ``UVError/canceled``; then `onClose` runs. Every later operation throws
    /// ``ClosedHandleError``. Called from inside one of this handle's own callbacks, the libuv
    /// close is deferred to the next loop turn; the handle counts as closed immediately.
    ///
    /// - Parameter onClose: Called on the loop thread once the handle has closed; at once if it
    ///   already has.
    public func close(_ onClose: CloseHandler? = nil) {
        loop.preconditionInLoop("UDPHandle.close")
        switch state {
        case .closed:
            onClose?(self)
        case .closing:
            if let onClose { closeHandlers.append(onClose) }
        case .open:
            if let onClose { closeHandlers.append(onClose) }
            state = .closing
            let willClose = willCloseObservers
            willCloseObservers = []
            for observer in willClose { observer() }
            receiving = false
            held.removeAll()
            if let poll, pollEvents != 0 {
                uv_poll_stop(poll)
                pollEvents = 0
            }
            if callbackDepth > 0 {
                loop.executeOnLoop { [self] in closeWhenNoSendInFlight() }
            } else {
                closeWhenNoSendInFlight()
            }
        }
    }

    /// Closes the descriptor once no task off the loop is inside a send on it: at once if none
    /// is, else when the last one leaves (it hands the close back to the loop; nobody waits).
    private func closeWhenNoSendInFlight() {
        guard let sendPath else {
            closeLibuvHandles()
            return
        }
        let bound = LoopBound(self, on: loop)
        let loop = self.loop
        if sendPath.close(handoff: { loop.execute { bound.value.closeLibuvHandles() } }) {
            closeLibuvHandles()
        }
    }

    private func closeLibuvHandles() {
        if let poll {
            pendingCloseCallbacks += 1
            uv_close(handle(poll), udpPollCloseCallback)
        }
        if let consumerWatch {
            pendingCloseCallbacks += 1
            uv_close(handle(consumerWatch), udpPollCloseCallback)
        }
        // uv_close closes the socket at once: give up the claim first, so a socket that reuses
        // the number can be claimed.
        if let fd = claimedDescriptor {
            DescriptorRegistry.release(fd)
            claimedDescriptor = nil
        }
        pendingCloseCallbacks += 1
        uv_close(handle(udp), udpCloseCallback)
    }

    /// A close callback (the watcher's or the socket's); the handle is closed after both.
    func libuvHandleClosed() {
        pendingCloseCallbacks -= 1
        guard pendingCloseCallbacks == 0 else { return }
        state = .closed
        if let poll {
            poll.deallocate()
            self.poll = nil
        }
        if let consumerWatch {
            consumerWatch.deallocate()
            self.consumerWatch = nil
        }
        udp.deallocate()
        cancelQueuedSends()
        let handlers = closeHandlers
        let observers = closeObservers
        closeHandlers = []
        closeObservers = []
        onReceive = nil
        transientHandler = nil
        for observer in observers { observer() }
        // Send callbacks cancelled above run before the close callbacks, as in libuv.
        endOfTurn()
        for handler in handlers { handler(self) }
        loop.unregister(self)
    }

    /// For the async layer: runs `observer` when close begins, before the socket is closed
    /// (whoever closes it, including the loop's shutdown).
    package func addWillCloseObserver(_ observer: @escaping () -> Void) {
        if state == .open { willCloseObservers.append(observer) } else { observer() }
    }

    /// For the async layer: runs `observer` once the handle has closed (whoever closed it).
    package func addCloseObserver(_ observer: @escaping () -> Void) {
        if state == .closed { observer() } else { closeObservers.append(observer) }
    }
}

extension UDPHandle: LoopResource {
    func closeForShutdown() { close() }
}

let udpCloseCallback: uv_close_cb = { handle in
    guard let handle, let data = handle.pointee.data else { return }
    Unmanaged<UDPHandle>.fromOpaque(data).takeUnretainedValue().libuvHandleClosed()
}

let udpPollCloseCallback: uv_close_cb = { handle in
    guard let handle, let data = handle.pointee.data else { return }
    Unmanaged<UDPHandle>.fromOpaque(data).takeUnretainedValue().libuvHandleClosed()
}
