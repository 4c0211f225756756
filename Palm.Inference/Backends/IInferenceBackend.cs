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
    void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, Span<float> logits) =>
        Step(tokens, states, [], logits, []);

    /// <summary>
    /// One decoding step for B sequences, as above, where greedy (B, or empty for none) marks the
    /// rows whose caller needs only the argmax of the logits. For every row the backend writes
    /// either ids[b] = that argmax (lowest index on ties; logits row b may be left unwritten) or
    /// ids[b] = -1 and logits row b (V). A backend may always choose logits (the CPU does); ids
    /// may be empty when greedy is.
    /// </summary>
    void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<bool> greedy, Span<float> logits, Span<int> ids);

    /// <summary>The argument checks every <see cref="Step(ReadOnlySpan{int}, IReadOnlyList{SequenceState}, ReadOnlySpan{bool}, Span{float}, Span{int})"/> makes.</summary>
    static void CheckStep(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<bool> greedy, Span<float> logits, Span<int> ids, int V)
    {
        int B = states.Count;
        if (tokens.Length != B) throw new ArgumentException($"expected {B} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < B * V) throw new ArgumentException($"logits must hold B*V = {B * V} floats", nameof(logits));
        if (!greedy.IsEmpty && greedy.Length != B) throw new ArgumentException($"greedy must hold B = {B} flags or none", nameof(greedy));
        if (ids.Length < (greedy.IsEmpty ? 0 : B)) throw new ArgumentException($"ids must hold B = {B} ids when greedy rows are marked", nameof(ids));
    }
}
