// The CPU backend: the fast CPU path (FastCpuModel for prefill, FastCpuDecoder for steps; both
// checked against the reference model). Batched steps run the sequences together, each through
// its own state and the kernel calls of its step alone, so a sequence's result never depends on
// what it is batched with.
// Weights are CpuWeights: a q8/q4 checkpoint's tensors stay quantized (read in place by
// Cpu/QuantizedMatVec; no float copy exists). WeightBytes is what the file's tensors hold plus the
// decoder's transposed copies of the two products that skip zero inputs (FastCpuDecoder: the QKV
// second factors and projection input factors; float32, or int8 levels of q8/q4 where AVX-512 runs).
using Palm.Inference.Cpu;
using Palm.Inference.Cpu.Fast;
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Inference.Backends;

internal sealed class CpuBackend : IInferenceBackend
{
    private readonly FastCpuModel _model;
    private readonly FastCpuDecoder _decoder;
    private List<AodStateSet>? _sets;   // reused by batched steps (the scheduler makes one call at a time)

    /// <param name="weights">Float32 matrices are copied to 64-byte boundaries (CpuWeights.Aligned:
    /// the decoder's kernels stream them ~30% faster, a whole `small` token ~10%); q8/q4 ones are
    /// shared. The caller may drop its copy.</param>
    /// <param name="reason">Why this backend was chosen, appended to the description.</param>
    public CpuBackend(CpuWeights weights, string? reason = null)
    {
        weights = weights.Aligned();
        _model = new FastCpuModel(weights);
        _decoder = new FastCpuDecoder(weights);
        Config = weights.Config;
        WeightBytes = weights.Bytes + _decoder.CopyBytes;
        Description = $"cpu (fast path, {weights.StorageText})" + (reason is null ? "" : $"; {reason}");
    }

    /// <summary>Float32 weights (copied aligned, as above).</summary>
    public CpuBackend(PalmParameters parameters, string? reason = null) : this(CpuWeights.From(parameters), reason) { }

    public BackendKind Kind => BackendKind.Cpu;
    public string Description { get; }
    public PalmConfig Config { get; }
    public long WeightBytes { get; }

    public SequenceState CreateState() => new(Config);

    public void Prefill(ReadOnlySpan<int> tokens, SequenceState state, Span<float> lastLogits)
    {
        int V = Config.VocabSize, T = tokens.Length;
        if (T == 0) throw new ArgumentException("prefill needs at least one token", nameof(tokens));
        // Only the last position's logits are needed to go on: the unembedding runs on one row.
        var logits = _model.Forward(tokens, 1, T, state.Set, lastOnly: true);
        logits.AsSpan(0, V).CopyTo(lastLogits);
    }

    // Logits for every row (sampled ones included: the session's host sampler is as cheap as any);
    // a lone sequence's plain-argmax request gets its id too.
    public void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<SampleRequest?> requests, Span<float> logits, Span<int> ids)
    {
        int B = states.Count, V = Config.VocabSize;
        IInferenceBackend.CheckStep(tokens, states, requests, logits, ids, V);
        if (!ids.IsEmpty) ids[..B].Fill(-1);
        if (B == 1)
        {
            // A plain-argmax request (greedy, no bias or penalty in play): the decoder takes the
            // argmax part by part where the logits are still in cache, and the id goes back.
            if (!ids.IsEmpty && requests.Length > 0 && requests[0] is { PlainArgmax: true })
                ids[0] = _decoder.StepArgMax(tokens[0], states[0].Set, logits[..V]);
            else _decoder.Step(tokens, states[0].Set, logits[..V]);
            return;
        }
        // Sessions sit at different positions, so each keeps its own batch-1 state; the decoder
        // steps them together (one group per core reading each weight block once for the group),
        // and every row is bit-identical to that session's step alone.
        var sets = _sets ??= [];
        sets.Clear();
        for (int b = 0; b < B; b++) sets.Add(states[b].Set);
        _decoder.StepMany(tokens, sets, logits[..(B * V)]);
    }

    public void Dispose() => _decoder.Dispose();
}
