// The seam between the session API and the compute backends (CONVENTIONS: inference talks to a
// backend interface with a CPU and a Vulkan implementation; backend types stay internal).
// A backend computes; it owns no sessions, no sampling and no threads. The scheduler calls it
// from one thread at a time.
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

/// <summary>Which implementation a backend is.</summary>
internal enum BackendKind { Cpu, Vulkan }

internal interface IInferenceBackend : IDisposable
{
    BackendKind Kind { get; }

    /// <summary>Human-readable: which backend, on which device.</summary>
    string Description { get; }

    PalmConfig Config { get; }

    /// <summary>Bytes of weights this backend holds (host or device memory).</summary>
    long WeightBytes { get; }

    /// <summary>A fresh state (zeros, position 0) for one sequence.</summary>
    SequenceState CreateState();

    /// <summary>
    /// Feeds tokens (T) to one sequence, continuing from its position, and writes the logits of
    /// the last token (V) to <paramref name="lastLogits"/>. The state advances by T.
    /// </summary>
    void Prefill(ReadOnlySpan<int> tokens, SequenceState state, Span<float> lastLogits);

    /// <summary>
    /// One decoding step for B sequences: tokens (B), one per state; writes logits (B, V).
    /// The sequences may sit at different positions. Each state advances by one.
    /// </summary>
    void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, Span<float> logits);
}
