// The Vulkan backend: VulkanForward with the weights uploaded once, and every session's AoD
// state resident on the device in one pool (GpuStatePool), one row (slot) per state. A state
// gets a slot the first time this backend sees it and is uploaded only then, or after the host
// overwrote it (restore, fork, rollback); steps never move states over the bus. One step is one
// submission for all its sessions, whatever their positions (the AoD kernel reads per-row RoPE
// tables and slot indices). Rows that sample greedily get only their argmax id back; rows that
// sample otherwise run the session's whole sampling chain on the GPU in the same submission
// (shaders/sample.comp, with the uniform the session drew) and get only their id back too;
// rows whose caller wants logits, and every sampled row when VulkanOptions.HostSampling says so
// (by default: when the device is the CPU), get their logits. Calls come from the scheduler's
// thread; Pull (a session reading its state) may come from any thread, so a lock orders device
// work. Slots freed by sessions (from any thread, finalizers included) go through a lock-free
// queue and are reused at the next step.
using System.Collections.Concurrent;
using Palm.Gpu;
using Palm.Gpu.Kernels;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;
using Palm.Inference.Cpu;
using Palm.Inference.Model;
using Palm.Inference.Sampling;

namespace Palm.Inference.Backends;

internal sealed class VulkanBackend : IInferenceBackend, IStateHome
{
    private readonly VulkanContext _ctx;
    private readonly VulkanForward _forward;
    private readonly object _gate = new();
    private readonly ConcurrentQueue<int> _released = new();
    private readonly Stack<int> _free = new();
    private GpuStatePool? _pool;
    private int _nextSlot;
    private bool _disposed;
    // Step scratch, reused: rows reordered so that the rows wanting logits come first and their
    // logits download as one contiguous block, then the rows sampled on the GPU, then the argmax ones.
    private int[] _order = [], _tokens = [], _slots = [], _ids = [];
    private long[] _positions = [];
    private float[] _logits = [];
    private Sample.SampleRow[] _sampleRows = [];
    private Sample.SamplePair[] _samplePairs = [];

    private const int FirstCapacity = 8;

    private VulkanBackend(VulkanContext ctx, VulkanForward forward, PalmConfig config, long weightBytes)
    {
        _ctx = ctx;
        _forward = forward;
        Config = config;
        WeightBytes = weightBytes;
        Description = $"vulkan on {ctx.Capabilities.DeviceName} ({ctx.Capabilities.DeviceType})";
        // On a CPU device the logits cost no bus transfer and the host's sampler is faster than the
        // kernel run by the same cores (docs/performance.md, `gpu-sample`).
        HostSampling = ctx.Options.HostSampling ?? ctx.Capabilities.DeviceType == "Cpu";
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

    /// <summary>The forward, whose recorder counts submissions (tests).</summary>
    internal VulkanForward Forward => _forward;

    /// <summary>Slots held by live states (tests).</summary>
    internal int ResidentStates
    {
        get
        {
            lock (_gate)
            {
                DrainReleased();
                return _nextSlot - _free.Count;
            }
        }
    }

    /// <summary>Rows in the device pool (0 before the first state).</summary>
    internal int PoolCapacity { get { lock (_gate) return _pool?.Capacity ?? 0; } }

    public BackendKind Kind => BackendKind.Vulkan;
    public string Description { get; }
    public PalmConfig Config { get; }
    public long WeightBytes { get; }

    public SequenceState CreateState() => new(Config);

    public void Prefill(ReadOnlySpan<int> tokens, SequenceState state, Span<float> lastLogits)
    {
        int V = Config.VocabSize, T = tokens.Length;
        if (T == 0) throw new ArgumentException("prefill needs at least one token", nameof(tokens));
        if (lastLogits.Length < V) throw new ArgumentException($"lastLogits must hold V = {V} floats", nameof(lastLogits));
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            DrainReleased();
            MakeResident(state);
            _forward.Prefill(tokens, state.Slot, state.Position, _pool!, lastLogits[..V]);
            state.DeviceAdvanced(T);
        }
    }

    public void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, Span<float> logits) =>
        Step(tokens, states, [], logits, []);

    /// <summary>Sampled rows get their logits and the session samples on the host (VulkanOptions.HostSampling, PALM_VK_HOST_SAMPLING).</summary>
    internal bool HostSampling { get; }

    public bool SamplesOnDevice => !HostSampling;

    private enum RowOut { Logits, Sampled, Argmax }

    private RowOut Want(SampleRequest? r) =>
        r is null ? RowOut.Logits : r.PlainArgmax ? RowOut.Argmax : HostSampling ? RowOut.Logits : RowOut.Sampled;

    public void Step(ReadOnlySpan<int> tokens, IReadOnlyList<SequenceState> states, ReadOnlySpan<SampleRequest?> requests, Span<float> logits, Span<int> ids)
    {
        int B = states.Count, V = Config.VocabSize;
        IInferenceBackend.CheckStep(tokens, states, requests, logits, ids, V);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            DrainReleased();
            // Every state needs a slot before any is named in the step: a growing pool is
            // reallocated, which must not happen between filling the slot list and submitting.
            foreach (var s in states) MakeResident(s);
            if (_order.Length < B)
            {
                _order = new int[B];
                _tokens = new int[B];
                _slots = new int[B];
                _ids = new int[B];
                _positions = new long[B];
            }
            // Logit rows first (in batch order), then the sampled ones, then the argmax ones.
            int n = 0;
            foreach (var want in (ReadOnlySpan<RowOut>)[RowOut.Logits, RowOut.Sampled, RowOut.Argmax])
                for (int b = 0; b < B; b++)
                    if (Want(requests.IsEmpty ? null : requests[b]) == want) _order[n++] = b;
            int withLogits = 0, sampled = 0;
            for (int r = 0; r < B; r++)
            {
                var s = states[_order[r]];
                _tokens[r] = tokens[_order[r]];
                _slots[r] = s.Slot;
                _positions[r] = s.Position;
                var want = Want(requests.IsEmpty ? null : requests[_order[r]]);
                if (want == RowOut.Logits) withLogits++;
                else if (want == RowOut.Sampled) sampled++;
            }
            int pairs = sampled == 0 ? 0 : FillSampling(requests, withLogits, sampled);
            if (_logits.Length < withLogits * V) _logits = new float[withLogits * V];
            bool anyIds = withLogits < B;
            _forward.Step(_tokens.AsSpan(0, B), _slots.AsSpan(0, B), _positions.AsSpan(0, B), _pool!,
                _logits.AsSpan(0, withLogits * V), anyIds ? _ids.AsSpan(0, B) : [],
                withLogits, _sampleRows.AsSpan(0, sampled), _samplePairs.AsSpan(0, pairs));
            for (int r = 0; r < B; r++)
            {
                int b = _order[r];
                states[b].DeviceAdvanced(1);
                if (r < withLogits)
                {
                    _logits.AsSpan(r * V, V).CopyTo(logits.Slice(b * V, V));
                    if (!ids.IsEmpty) ids[b] = -1;
                }
                else ids[b] = _ids[r];
            }
        }
    }

    // The kernel's rows and (id, value) pairs of the sampled rows [first, first + count) of the
    // order: each row's window counts, then its bias. Returns the number of pairs.
    private int FillSampling(ReadOnlySpan<SampleRequest?> requests, int first, int count)
    {
        if (_sampleRows.Length < count) _sampleRows = new Sample.SampleRow[Math.Max(count, 2 * _sampleRows.Length)];
        int pairs = 0;
        for (int i = 0; i < count; i++)
        {
            var q = requests[_order[first + i]]!;
            int need = pairs + q.PenaltyPairs + q.BiasPairs;
            if (_samplePairs.Length < need) Array.Resize(ref _samplePairs, Math.Max(need, 2 * _samplePairs.Length));
            int penaltyStart = pairs;
            for (int j = 0; j < q.PenaltyPairs; j++) _samplePairs[pairs++] = new(q.PenaltyIds[j], q.PenaltyCounts[j]);
            int biasStart = pairs;
            for (int j = 0; j < q.BiasPairs; j++) _samplePairs[pairs++] = new(q.BiasIds[j], q.BiasValues[j]);
            var s = q.Settings;
            _sampleRows[i] = Sample.Row(s.Temperature, s.TopK, s.TopP, s.MinP, s.RepetitionPenalty, s.PresencePenalty, s.FrequencyPenalty,
                q.Uniform, penaltyStart, q.PenaltyPairs, biasStart, q.BiasPairs);
        }
        return pairs;
    }

    // Gives the state a slot on first sight and uploads it when the host copy is newer.
    private void MakeResident(SequenceState s)
    {
        if (s.Home is null)
        {
            s.Adopt(this, TakeSlot());
        }
        else if (!ReferenceEquals(s.Home, this))
        {
            throw new ArgumentException("the state belongs to another model's backend");
        }
        if (!s.NeedsUpload) return;
        var set = s.HostForUpload;
        for (int a = 0; a < Config.Applications; a++)
            _pool!.WriteRow(s.Slot, a, set.S[a], set.Z is null ? [] : set.Z[a]);
        s.Uploaded();
    }

    private int TakeSlot()
    {
        if (_free.Count > 0) return _free.Pop();
        if (_pool is null) _pool = _forward.CreatePool(FirstCapacity);
        else if (_nextSlot == _pool.Capacity) _pool.Grow(_pool.Capacity * 2);
        return _nextSlot++;
    }

    private void DrainReleased()
    {
        while (_released.TryDequeue(out var slot)) _free.Push(slot);
    }

    public void Pull(int slot, AodStateSet set)
    {
        lock (_gate)
        {
            if (_disposed)
                throw new ObjectDisposedException(nameof(PalmModel), "the model was disposed: this session's state lived in its GPU memory and is gone");
            for (int a = 0; a < Config.Applications; a++)
                _pool!.ReadRow(slot, a, set.S[a], set.Z is null ? [] : set.Z[a]);
        }
    }

    public void Release(int slot) => _released.Enqueue(slot);

    public void Dispose()
    {
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            _pool?.Dispose();
            _forward.Dispose();
            _ctx.Dispose();
        }
    }
}
