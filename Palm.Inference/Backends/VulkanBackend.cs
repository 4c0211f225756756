// The Vulkan backend: VulkanForward with the weights uploaded once. Session states live on the
// host (SequenceState) and are gathered into a device batch for each call, because the forward's
// RoPE tables and AoD states are per batch with ONE shared position, while sessions sit at
// different positions: a step therefore runs one submission per distinct position. The copies
// are L*R*(1 or 2)*D floats per sequence, small beside the logits (V) downloaded each step.
using Palm.Gpu;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;
using Palm.Inference.Model;

namespace Palm.Inference.Backends;

internal sealed class VulkanBackend : IInferenceBackend
{
    private readonly VulkanContext _ctx;
    private readonly VulkanForward _forward;
    // Device states by batch size, reused; a few sizes at most (least recently used freed).
    private readonly Dictionary<int, (GpuAodState State, long LastUse)> _states = new();
    private long _uses;
    private float[] _stage = [];
    private float[] _logits = [];

    private const int MaxStateSizes = 4;

    private VulkanBackend(VulkanContext ctx, VulkanForward forward, PalmConfig config, long weightBytes)
    {
        _ctx = ctx;
        _forward = forward;
        Config = config;
        WeightBytes = weightBytes;
        Description = $"vulkan on {ctx.Capabilities.DeviceName} ({ctx.Capabilities.DeviceType})";
    }

    /// <summary>Creates a Vulkan context and uploads the weights.</summary>
    /// <exception cref="GpuUnavailableException">No Vulkan loader or no usable device.</exception>
    public static VulkanBackend Create(PalmParameters parameters, VulkanOptions? options = null) =>
        Create(ModelWeights.From(parameters), options);

    /// <summary>Uploads float32 weights to <paramref name="ctx"/>, which the backend then owns (disposed on failure too).</summary>
    public static VulkanBackend Create(VulkanContext ctx, PalmParameters parameters) => Create(ctx, ModelWeights.From(parameters));

    /// <summary>Creates a Vulkan context and uploads the weights (q8/q4 ones as they are stored).</summary>
    /// <exception cref="GpuUnavailableException">No Vulkan loader or no usable device.</exception>
    public static VulkanBackend Create(ModelWeights weights, VulkanOptions? options = null) =>
        Create(VulkanContext.Create(options ?? VulkanOptions.FromEnvironment()), weights);

    /// <summary>
    /// Uploads the weights to <paramref name="ctx"/>, which the backend then owns (disposed on failure
    /// too). q8/q4 tensors go up as their level and scale bytes; no float copy is made of them.
    /// </summary>
    public static VulkanBackend Create(VulkanContext ctx, ModelWeights weights)
    {
        try
        {
            var (f32, quantized) = weights.ToGpu();
            var forward = new VulkanForward(ctx, GpuMapping.ToGpu(weights.Config), f32, quantized);
            return new VulkanBackend(ctx, forward, weights.Config, forward.WeightBytes);
        }
        catch
        {
            ctx.Dispose();
            throw;
        }
    }


    internal VulkanContext Context => _ctx;

    public BackendKind Kind => BackendKind.Vulkan;
    public string Description { get; }
    public PalmConfig Config { get; }
    public long WeightBytes { get; }

    public SequenceState CreateState() => new(Config);

    public void Prefill(ReadOnlySpan<int> tokens, SequenceState state, Span<float> lastLogits)
    {
        int V = Config.VocabSize, T = tokens.Length;
        if (T == 0) throw new ArgumentException("prefill needs at least one token", nameof(tokens));
        var gpu = StateFor(1);
        Upload([state], gpu);
        var logits = _forward.Prefill(tokens, T, gpu);
        logits.AsSpan((T - 1) * V, V).CopyTo(lastLogits);
        Download(gpu, [state]);
    }

    public void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, Span<float> logits)
    {
        int B = states.Count, V = Config.VocabSize;
        if (tokens.Length != B) throw new ArgumentException($"expected {B} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < B * V) throw new ArgumentException($"logits must hold B*V = {B * V} floats", nameof(logits));
        // Group by position: one submission per distinct position, in order of first appearance.
        var groups = new Dictionary<long, List<int>>();
        for (int i = 0; i < B; i++)
        {
            if (!groups.TryGetValue(states[i].Position, out var g)) groups[states[i].Position] = g = [];
            g.Add(i);
        }
        foreach (var idx in groups.Values)
        {
            int n = idx.Count;
            var members = idx.Select(i => states[i]).ToArray();
            var tok = new int[n];
            for (int j = 0; j < n; j++) tok[j] = tokens[idx[j]];
            var gpu = StateFor(n);
            Upload(members, gpu);
            if (_logits.Length < n * V) _logits = new float[n * V];
            _forward.Step(tok, gpu, _logits.AsSpan(0, n * V));
            Download(gpu, members);
            for (int j = 0; j < n; j++) _logits.AsSpan(j * V, V).CopyTo(logits.Slice(idx[j] * V, V));
        }
    }

    private GpuAodState StateFor(int batch)
    {
        if (_states.TryGetValue(batch, out var e))
        {
            _states[batch] = (e.State, ++_uses);
            return e.State;
        }
        if (_states.Count >= MaxStateSizes)
        {
            var oldest = _states.MinBy(kv => kv.Value.LastUse);
            oldest.Value.State.Dispose();
            _states.Remove(oldest.Key);
        }
        var s = _forward.CreateState(batch);
        _states[batch] = (s, ++_uses);
        return s;
    }

    // Host (per sequence, per application D floats) <-> device ((B, D) per application).
    private void Upload(IReadOnlyList<SequenceState> members, GpuAodState gpu)
    {
        int B = members.Count, D = Config.DQkv;
        if (_stage.Length < B * D) _stage = new float[B * D];
        var stage = _stage.AsSpan(0, B * D);
        for (int a = 0; a < Config.Applications; a++)
        {
            for (int b = 0; b < B; b++) members[b].Set.S[a].CopyTo(stage.Slice(b * D, D));
            gpu.S[a].Upload(stage);
            if (gpu.Z is null) continue;
            for (int b = 0; b < B; b++) members[b].Set.Z![a].CopyTo(stage.Slice(b * D, D));
            gpu.Z[a].Upload(stage);
        }
        gpu.Position = members[0].Position;
    }

    private void Download(GpuAodState gpu, IReadOnlyList<SequenceState> members)
    {
        int B = members.Count, D = Config.DQkv;
        var stage = _stage.AsSpan(0, B * D);
        for (int a = 0; a < Config.Applications; a++)
        {
            gpu.S[a].Download(stage);
            for (int b = 0; b < B; b++) stage.Slice(b * D, D).CopyTo(members[b].Set.S[a]);
            if (gpu.Z is null) continue;
            gpu.Z[a].Download(stage);
            for (int b = 0; b < B; b++) stage.Slice(b * D, D).CopyTo(members[b].Set.Z![a]);
        }
        foreach (var m in members) m.Position = gpu.Position;
    }

    public void Dispose()
    {
        foreach (var (s, _) in _states.Values) s.Dispose();
        _states.Clear();
        _forward.Dispose();
        _ctx.Dispose();
    }
}
