// The seam between the session API and the compute backends (CONVENTIONS: inference talks to a
// backend interface with a CPU and a Vulkan implementation; backend types stay internal).
// A backend computes; it owns no sessions, no sampling and no threads. The scheduler calls it
// from one thread at a time.
using Palm.Inference.Model;
using Palm.Inference.Sampling;

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

    /// <summary>
    /// True when the backend may sample on the device, so a step's SampleRequest must carry its
    /// penalty-window and bias pairs; otherwise sessions skip building them (the CPU backend
    /// never reads them).
    /// </summary>
    bool SamplesOnDevice => false;

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
    /// One decoding step for B sequences, as above, where requests (B, or empty for none) holds,
    /// for each row whose caller can take a token instead of the logits, what it would sample
    /// with (null: the caller needs the logits). For every row the backend writes either
    /// ids[b] = the token TokenSampler picks for requests[b] (the argmax, lowest index on ties,
    /// when the request is the plain argmax; logits row b may be left unwritten) or ids[b] = -1
    /// and logits row b (V). A backend may always choose logits (the CPU does, but for a lone
    /// sequence's plain argmax, where it writes both); ids may be empty when requests is.
    /// </summary>
    void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<SampleRequest?> requests, Span<float> logits, Span<int> ids);

    /// <summary>The argument checks every <see cref="Step(ReadOnlySpan{int}, IReadOnlyList{SequenceState}, ReadOnlySpan{SampleRequest?}, Span{float}, Span{int})"/> makes.</summary>
    static void CheckStep(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<SampleRequest?> requests, Span<float> logits, Span<int> ids, int V)
    {
        int B = states.Count;
        if (tokens.Length != B) throw new ArgumentException($"expected {B} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < B * V) throw new ArgumentException($"logits must hold B*V = {B * V} floats", nameof(logits));
        if (!requests.IsEmpty && requests.Length != B) throw new ArgumentException($"requests must hold B = {B} entries or none", nameof(requests));
        if (ids.Length < (requests.IsEmpty ? 0 : B)) throw new ArgumentException($"ids must hold B = {B} ids when requests are given", nameof(ids));
    }
}
