// What an impaired link does to the datagrams of one direction, decided per datagram from a seed.

/// A small, fast, seeded random number generator (SplitMix64): the same seed gives the same
/// numbers on every platform and every run.
///
/// ```swift
/// var generator = SplitMix64(seed: 42)
/// let roll = Double.random(in: 0..<1, using: &generator)
/// ```
public struct SplitMix64: RandomNumberGenerator, Sendable, Hashable {
    /// The generator's state; the next number is derived from it.
    public private(set) var state: UInt64

    /// Creates a generator whose numbers are fixed by `seed`.
    public init(seed: UInt64) { state = seed }

    /// The next 64 random bits.
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A number in 0..<1 from the top 53 bits of ``next()``.
    mutating func unit() -> Double { Double(next() >> 11) * 0x1p-53 }
}

/// One direction through an ``ImpairedLink``.
public enum LinkDirection: Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// From the client (whatever sends to ``ImpairedLink/address``) to the server.
    case clientToServer
    /// From the server back to the client.
    case serverToClient

    public var description: String { self == .clientToServer ? "client to server" : "server to client" }

    /// Mixed into the seed so that the two directions draw independent numbers.
    var salt: UInt64 { self == .clientToServer ? 0x6A09_E667_F3BC_C908 : 0xBB67_AE85_84CA_A73B }
}

/// What an ``ImpairedLink`` does to the datagrams of one direction.
///
/// Each rate is a probability from 0 to 1, drawn for each datagram independently:
///
/// ```swift
/// let lossy = Impairments(dropRate: 0.3)
/// let messy = Impairments(duplicateRate: 0.1, reorderRate: 0.1,
///                         delay: .milliseconds(5), jitter: .milliseconds(10))
/// ```
///
/// For each datagram, in this order: it is dropped (``dropRate``), and then nothing else
/// happens to it; or it is cut to ``truncateLength`` bytes (``truncateRate``; only if longer);
/// it is held for ``delay`` plus a uniform random part of ``jitter``; it is sent twice
/// (``duplicateRate``); and it is held back until the next datagram of its direction has gone
/// out (``reorderRate``), or for at most ``reorderHold`` if none comes.
public struct Impairments: Sendable, Hashable {
    /// The share of datagrams dropped, 0...1.
    public var dropRate: Double
    /// The share of datagrams sent twice, 0...1.
    public var duplicateRate: Double
    /// The share of datagrams held back until after the next datagram, 0...1.
    public var reorderRate: Double
    /// How long every datagram is held before it goes on. Zero for none.
    public var delay: Duration
    /// A further hold, uniform in 0...jitter for each datagram. Jitter larger than the gap
    /// between datagrams reorders them.
    public var jitter: Duration
    /// The share of datagrams cut to ``truncateLength`` bytes, 0...1.
    public var truncateRate: Double
    /// How many bytes a truncated datagram keeps.
    public var truncateLength: Int
    /// The longest a datagram chosen for reordering waits for a later one to overtake it.
    public var reorderHold: Duration

    /// No impairment: every datagram goes on at once, unchanged.
    public static let none = Impairments()

    /// Creates impairments; every parameter defaults to "none".
    public init(dropRate: Double = 0, duplicateRate: Double = 0, reorderRate: Double = 0,
                delay: Duration = .zero, jitter: Duration = .zero,
                truncateRate: Double = 0, truncateLength: Int = 0,
                reorderHold: Duration = .milliseconds(20)) {
        self.dropRate = dropRate
        self.duplicateRate = duplicateRate
        self.reorderRate = reorderRate
        self.delay = delay
        self.jitter = jitter
        self.truncateRate = truncateRate
        self.truncateLength = truncateLength
        self.reorderHold = reorderHold
    }

    /// Throws ``ImpairmentError`` for a rate outside 0...1, a negative duration or length.
    public func validate() throws(ImpairmentError) {
        for (name, rate) in [("dropRate", dropRate), ("duplicateRate", duplicateRate),
                             ("reorderRate", reorderRate), ("truncateRate", truncateRate)] {
            guard rate >= 0, rate <= 1 else { throw ImpairmentError("\(name) must be 0...1, not \(rate)") }
        }
        for (name, duration) in [("delay", delay), ("jitter", jitter), ("reorderHold", reorderHold)] {
            guard duration >= .zero else { throw ImpairmentError("\(name) must not be negative, not \(duration)") }
        }
        guard truncateLength >= 0 else { throw ImpairmentError("truncateLength must not be negative, not \(truncateLength)") }
    }

    /// What the link decides for datagram `index` (from 0) of `direction` under `seed`.
    ///
    /// A pure function: the same seed, direction and index always give the same decision,
    /// whatever the timing of the traffic. ``ImpairedLink`` uses it for every datagram.
    public func decision(forDatagram index: Int, of direction: LinkDirection, seed: UInt64) -> ImpairmentDecision {
        // A generator of its own for each datagram: its draws depend on nothing else.
        var mixer = SplitMix64(seed: seed ^ direction.salt)
        var generator = SplitMix64(seed: mixer.next() ^ UInt64(truncatingIfNeeded: index) &* 0xD1B5_4A32_D192_ED03)
        let drop = generator.unit() < dropRate
        let truncate = generator.unit() < truncateRate
        let duplicate = generator.unit() < duplicateRate
        let reorder = generator.unit() < reorderRate
        let jitterShare = generator.unit()
        if drop { return ImpairmentDecision(index: index, drop: true) }
        return ImpairmentDecision(index: index, drop: false, truncateTo: truncate ? truncateLength : nil,
                                  delay: delay + jitter * jitterShare, duplicate: duplicate, reorder: reorder)
    }
}

/// A bad set of ``Impairments``.
public struct ImpairmentError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong.
    public let message: String
    /// Creates the error with its message.
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// What an ``ImpairedLink`` decided for one datagram.
public struct ImpairmentDecision: Sendable, Hashable, CustomStringConvertible {
    /// The datagram's place in its direction, from 0.
    public let index: Int
    /// Dropped (then nothing else applies).
    public let drop: Bool
    /// Cut to this many bytes (if it was longer), or `nil`.
    public let truncateTo: Int?
    /// How long it is held before it goes on.
    public let delay: Duration
    /// Sent twice.
    public let duplicate: Bool
    /// Held back until the next datagram of its direction has gone out.
    public let reorder: Bool

    /// Creates a decision.
    public init(index: Int, drop: Bool, truncateTo: Int? = nil, delay: Duration = .zero,
                duplicate: Bool = false, reorder: Bool = false) {
        self.index = index
        self.drop = drop
        self.truncateTo = truncateTo
        self.delay = delay
        self.duplicate = duplicate
        self.reorder = reorder
    }

    public var description: String {
        if drop { return "#\(index): drop" }
        var parts: [String] = []
        if let truncateTo { parts.append("truncate to \(truncateTo)") }
        if delay > .zero { parts.append("delay \(delay)") }
        if duplicate { parts.append("duplicate") }
        if reorder { parts.append("reorder") }
        return "#\(index): " + (parts.isEmpty ? "forward" : parts.joined(separator: ", "))
    }
}
