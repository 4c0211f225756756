// The CPU backend: the reference model itself. Batched steps run the sequences in parallel,
// each through its own state, so a sequence's result never depends on what it is batched with.
using Palm.Inference.Cpu;
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

internal sealed class CpuBackend(PalmParameters parameters, string? reason = null) : IInferenceBackend
{
    private readonly CpuReferenceModel _model = new(parameters);

    public BackendKind Kind => BackendKind.Cpu;
    public string Description { get; } = "cpu (reference, float32)" + (reason is null ? "" : $"; {reason}");
    public PalmConfig Config => parameters.Config;
    public long WeightBytes => parameters.Count * sizeof(float);

    public SequenceState CreateState() => new(Config);

    public void Prefill(ReadOnlySpan<int> tokens, SequenceState state, Span<float> lastLogits)
    {
        int V = Config.VocabSize, T = tokens.Length;
        if (T == 0) throw new ArgumentException("prefill needs at least one token", nameof(tokens));
        var logits = _model.Forward(tokens, 1, T, state.Set);
        logits.AsSpan((T - 1) * V, V).CopyTo(lastLogits);
    }

    public void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, Span<float> logits)
    {
        int B = states.Count, V = Config.VocabSize;
        if (tokens.Length != B) throw new ArgumentException($"expected {B} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < B * V) throw new ArgumentException($"logits must hold B*V = {B * V} floats", nameof(logits));
        if (B == 1)
        {
            _model.Step(tokens, states[0].Set, logits[..V]);
            return;
        }
        // The reference Step shares one position across its batch; sessions sit at different
        // positions, so each runs as its own batch of one (the reference loops per sequence anyway).
        var tok = tokens.ToArray();
        var outp = new float[B * V];
        Parallel.For(0, B, b => _model.Step(tok.AsSpan(b, 1), states[b].Set, outp.AsSpan(b * V, V)));
        outp.AsSpan().CopyTo(logits);
    }

    public void Dispose() { }
}
