// The whole Palm forward pass on Vulkan: weights uploaded once (each matrix f32, or q8/q4 levels
// and scales that the kernels decode as they read them), every kernel of a call recorded
// into ONE command buffer and submitted once (embedding, embed.proj, rmsnorms, the L*R block
// applications in schedule order, final norm, unembed, and the loss or argmax when asked).
// Activations live in buffers allocated once per (B, T) shape and reused. AoD states stay on the
// GPU: in a GpuStatePool, where a decoding step names each row's slot and position, so sessions
// at different positions share one submission (RoPE tables are formed per row on the host, in
// double), or in a GpuAodState for sequences that advance together. Only what the caller asks
// for comes back: logits rows, the argmax ids, the ids sampled on the GPU by a session's whole
// sampling chain (Sample), or the last prefill row.
// The math is ../shared/spec/palm-model.md.
using Palm.Gpu.Kernels;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Model;

internal sealed class VulkanForward : IDisposable
{
    readonly VulkanContext ctx;
    readonly CommandRecorder rec;
    readonly GpuMatrix embed;           // (V, r) or (V, C)
    readonly GpuMatrix? embedProj;      // (C, r), r > 0 only
    readonly Block[] blocks;
    readonly GpuLinear unembed;         // C -> V
    readonly Dictionary<(int B, int T), Activations> shapes = new();
    readonly List<IDisposable> weightBuffers;
    float[] ropeCos = [], ropeSin = [];  // host staging for the tables, (B*T, hd/2) of the largest B*T seen
    bool[] slotSeen = [];                // host scratch: duplicate-slot check, one flag per pool row
    bool[] pairSeen = [];                // host scratch: duplicate-id check of the sampling pairs, (V)
    GpuTensor? sampleRows, samplePairs;  // the sampled rows' settings and pairs, i32; grown, never shrunk

    // One weight matrix on the device: f32, or quantized levels + scales (exactly one is set).
    sealed record GpuMatrix(GpuTensor? F32, GpuQuantizedMatrix? Quantized);

    sealed record GpuLinear(GpuMatrix? W, GpuMatrix? W1, GpuMatrix? W2);

    sealed record Block(GpuLinear Qkv, GpuLinear Proj, GpuLinear? Up, GpuLinear? Down);

    /// <summary>
    /// Uploads the weights. Together, <paramref name="weights"/> (f32) and <paramref name="quantized"/>
    /// (q8/q4, uploaded as levels + scales, never expanded) must hold exactly the spec's tensors for
    /// <paramref name="config"/>, each name in one of them.
    /// </summary>
    /// <exception cref="ArgumentException">A missing, unexpected, duplicated or misshapen tensor, quantized
    /// bytes that do not fit their shape, or an invalid config.</exception>
    public VulkanForward(VulkanContext ctx, GpuModelConfig config, IReadOnlyDictionary<string, GpuWeight> weights,
        IReadOnlyDictionary<string, GpuQuantizedWeight>? quantized = null)
    {
        config.Validate();
        this.ctx = ctx;
        Config = config;
        var c = config;
        quantized ??= new Dictionary<string, GpuQuantizedWeight>();
        var used = new HashSet<string>();
        var uploaded = new List<IDisposable>();
        long bytes = 0;

        GpuMatrix Tensor(string name, int rows, int cols)
        {
            if (quantized.TryGetValue(name, out var q))
            {
                if (weights.ContainsKey(name)) throw new ArgumentException($"weight {name} is given both as f32 and quantized", nameof(quantized));
                if (q.Rows != rows || q.Cols != cols)
                    throw new ArgumentException($"weight {name} is ({q.Rows}, {q.Cols}), expected ({rows}, {cols})", nameof(quantized));
                GpuQuantizedMatrix m;
                try { m = new GpuQuantizedMatrix(ctx, q.Format, rows, cols, q.GroupSize, q.Data.Span, q.Scales.Span); }
                catch (ArgumentException e) { throw new ArgumentException($"weight {name}: {e.Message}", nameof(quantized), e); }
                used.Add(name);
                uploaded.Add(m);
                bytes += m.Bytes;
                return new GpuMatrix(null, m);
            }
            if (!weights.TryGetValue(name, out var w)) throw new ArgumentException($"missing weight {name} ({rows}, {cols})", nameof(weights));
            if (w.Rows != rows || w.Cols != cols || w.Data.Length != rows * cols)
                throw new ArgumentException($"weight {name} is ({w.Rows}, {w.Cols}) with {w.Data.Length} floats, expected ({rows}, {cols})", nameof(weights));
            used.Add(name);
            // Half weights feed only linears (Linear.Record picks linear_f16 by dtype).
            var dtype = w.Half && name != "embed.weight" ? GpuDType.F16 : GpuDType.F32;
            var t = ctx.CreateTensor(w.Data, dtype, rows, cols);
            uploaded.Add(t);
            bytes += (long)t.BindSize;   // f16 payloads are rounded up to whole words
            return new GpuMatrix(t, null);
        }

        GpuLinear Linear(string name, int inF, int outF) => c.DRank == 0
            ? new GpuLinear(Tensor(name + ".w", outF, inF), null, null)
            : new GpuLinear(null, Tensor(name + ".w1", c.DRank, inF), Tensor(name + ".w2", outF, c.DRank));

        try
        {
            embed = Tensor("embed.weight", c.VocabSize, c.DRank > 0 ? c.DRank : c.NEmbd);
            embedProj = c.DRank > 0 ? Tensor("embed.proj.w", c.NEmbd, c.DRank) : null;
            blocks = new Block[c.NLayer];
            for (var l = 0; l < c.NLayer; l++)
            {
                var p = $"blocks.{l}.";
                blocks[l] = new Block(
                    Linear(p + "qkv", c.NEmbd, 3 * c.DQkv),
                    Linear(p + "proj", c.DQkv, 2 * c.NEmbd),
                    c.DFfn > 0 ? Linear(p + "ffn.up", c.NEmbd, 2 * c.DFfn) : null,
                    c.DFfn > 0 ? Linear(p + "ffn.down", c.DFfn, c.NEmbd) : null);
            }
            unembed = Linear("unembed", c.NEmbd, c.VocabSize);
            var extra = weights.Keys.Concat(quantized.Keys).Where(k => !used.Contains(k)).Distinct().Order(StringComparer.Ordinal).ToList();
            if (extra.Count > 0) throw new ArgumentException($"unexpected weights: {string.Join(", ", extra)}", nameof(weights));
        }
        catch
        {
            foreach (var t in uploaded) t.Dispose();
            throw;
        }
        weightBuffers = uploaded;
        WeightBytes = bytes;
        rec = new CommandRecorder(ctx);
    }

    public GpuModelConfig Config { get; }

    /// <summary>Device bytes the weights occupy: 4 per f32 element, 2 per f16 element; quantized matrices their level and scale words.</summary>
    public long WeightBytes { get; }

    /// <summary>The recorder of every call: its counters describe the last submission.</summary>
    internal CommandRecorder Recorder => rec;

    /// <summary>How many (B, T) activation sets are allocated.</summary>
    public int ShapeCount => shapes.Count;

    /// <summary>Fresh AoD states (zeros, position 0) for <paramref name="batch"/> sequences.</summary>
    public GpuAodState CreateState(int batch) => new(ctx, Config, batch);

    /// <summary>A state pool of <paramref name="capacity"/> rows (contents undefined until written).</summary>
    public GpuStatePool CreatePool(int capacity) => new(ctx, Config, capacity);

    /// <summary>Logits (B*T, V) for tokens (B, T) that start their sequences (positions 0..T-1).</summary>
    public float[] Forward(ReadOnlySpan<int> tokens, int B, int T)
    {
        var a = Run(tokens, B, T, ZeroStarts(B), [], null, null);
        var logits = new float[a.Logits.Count];
        a.Logits.Download(logits);
        return logits;
    }

    /// <summary>
    /// Mean cross-entropy of the forward over tokens (B, T) against targets (B, T), counting
    /// positions whose target is not -1. Per-row losses are computed on the GPU in the same
    /// submission; their mean is taken on the host in double.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A target outside [-1, V).</exception>
    public double Loss(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int B, int T)
    {
        if (targets.Length != B * T) throw new ArgumentException($"targets holds {targets.Length} ids, expected B*T = {B * T}", nameof(targets));
        foreach (var t in targets)
            if (t < -1 || t >= Config.VocabSize) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} outside [-1, {Config.VocabSize})");
        var a = Run(tokens, B, T, ZeroStarts(B), [], null, targets);
        var loss = new float[B * T];
        a.Loss.Download(loss);
        return CrossEntropy.Mean(loss, targets);
    }

    /// <summary>
    /// Logits (B*T, V) for the next T tokens (B, T) of the sequences in <paramref name="state"/>,
    /// continuing from its position; the state advances by T. Any chunking of a prompt gives the
    /// same logits.
    /// </summary>
    public float[] Prefill(ReadOnlySpan<int> tokens, int T, GpuAodState state)
    {
        Array.Fill(state.Starts, state.Position);
        var a = Run(tokens, state.Batch, T, state.Starts, state.Slots, state.Pool, null);
        state.Position += T;
        var logits = new float[a.Logits.Count];
        a.Logits.Download(logits);
        return logits;
    }

    /// <summary>One decoding step: feeds one token per sequence (B ids), writes logits (B, V). Allocates nothing after the first call.</summary>
    public void Step(ReadOnlySpan<int> tokens, GpuAodState state, Span<float> logits)
    {
        if (logits.Length != state.Batch * Config.VocabSize)
            throw new ArgumentException($"logits must hold B*V = {state.Batch * Config.VocabSize} floats", nameof(logits));
        Array.Fill(state.Starts, state.Position);
        Step(tokens, state.Slots, state.Starts, state.Pool, logits, []);
        state.Position++;
    }

    /// <summary>One greedy decoding step: feeds one token per sequence and writes the argmax of each one's logits (B ids).</summary>
    public void StepGreedy(ReadOnlySpan<int> tokens, GpuAodState state, Span<int> next)
    {
        if (next.Length != state.Batch) throw new ArgumentException($"next must hold B = {state.Batch} ids", nameof(next));
        Array.Fill(state.Starts, state.Position);
        Step(tokens, state.Slots, state.Starts, state.Pool, [], next);
        state.Position++;
    }

    /// <summary>
    /// One decoding step for B sequences that may sit at different positions, recorded into one
    /// command buffer and submitted once: sequence b feeds tokens[b] at absolute position
    /// positions[b], its state in row slots[b] of <paramref name="pool"/> (distinct rows) is
    /// read and updated in place. Writes the logits of the first logits.Length / V rows
    /// (rows, V) and, when <paramref name="ids"/> is not empty, each row's argmax (B ids); nothing
    /// else comes back. Allocates nothing after the first call for a given B.
    /// </summary>
    /// <exception cref="ArgumentException">Mismatched lengths, a repeated slot, or logits not a whole number of rows.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A token outside [0, V), a slot outside the pool, a negative position.</exception>
    public void Step(ReadOnlySpan<int> tokens, ReadOnlySpan<int> slots, ReadOnlySpan<long> positions, GpuStatePool pool,
        Span<float> logits, Span<int> ids) =>
        Step(tokens, slots, positions, pool, logits, ids, 0, [], []);

    /// <summary>
    /// <see cref="Step(ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlySpan{long}, GpuStatePool, Span{float}, Span{int})"/>
    /// where rows [firstSampled, firstSampled + sampleRows.Length) also run the whole sampling
    /// chain on the GPU in the same submission (<see cref="Sample"/>; their settings and pairs go
    /// up, a few bytes each): their ids are the sampled tokens instead of the argmax. Sampled rows
    /// come after the rows whose logits come back (the kernel adjusts the logits in place).
    /// </summary>
    /// <exception cref="ArgumentException">As the plain step; ids empty while rows are sampled; sampled rows past B or
    /// among the logits rows; a pair range past <paramref name="samplePairs"/>, an id outside [0, V) or twice in one list.</exception>
    public void Step(ReadOnlySpan<int> tokens, ReadOnlySpan<int> slots, ReadOnlySpan<long> positions, GpuStatePool pool,
        Span<float> logits, Span<int> ids, int firstSampled, ReadOnlySpan<Sample.SampleRow> sampleRows, ReadOnlySpan<Sample.SamplePair> samplePairs)
    {
        int B = tokens.Length, V = Config.VocabSize;
        if (logits.Length % V != 0 || logits.Length > B * V)
            throw new ArgumentException($"logits holds {logits.Length} floats: a whole number of rows of V = {V}, at most B = {B}", nameof(logits));
        if (!ids.IsEmpty && ids.Length != B) throw new ArgumentException($"ids must hold B = {B} ids or none", nameof(ids));
        int sampled = sampleRows.Length;
        if (sampled > 0)
        {
            if (ids.IsEmpty) throw new ArgumentException("ids must hold B ids when rows are sampled", nameof(ids));
            if (firstSampled < logits.Length / V || firstSampled + sampled > B)
                throw new ArgumentException($"sampled rows [{firstSampled}, {firstSampled + sampled}) must lie in [{logits.Length / V}, {B}): after the logits rows", nameof(firstSampled));
            UploadSampling(sampleRows, samplePairs);
        }
        // The argmax only where some row's id is not sampled.
        var a = Run(tokens, B, 1, positions, slots, pool, null, argmax: !ids.IsEmpty && sampled < B, firstSampled, sampled);
        if (!logits.IsEmpty) a.Logits.Download(logits, 0);
        if (!ids.IsEmpty) a.Argmax.Download(ids);
    }

    void UploadSampling(ReadOnlySpan<Sample.SampleRow> rows, ReadOnlySpan<Sample.SamplePair> pairs)
    {
        int V = Config.VocabSize;
        if (pairSeen.Length < V) pairSeen = new bool[V];
        Sample.CheckRows(rows, pairs, V, pairSeen);
        var rowInts = System.Runtime.InteropServices.MemoryMarshal.Cast<Sample.SampleRow, int>(rows);
        var pairInts = System.Runtime.InteropServices.MemoryMarshal.Cast<Sample.SamplePair, int>(pairs);
        // Buffers grow by doubling and only their used prefix is written: no allocation per token.
        sampleRows = Grown(sampleRows, rowInts.Length);
        samplePairs = Grown(samplePairs, pairInts.Length);
        sampleRows.Upload(rowInts, 0);
        if (!pairInts.IsEmpty) samplePairs.Upload(pairInts, 0);
    }

    GpuTensor Grown(GpuTensor? t, int ints)
    {
        if (t is not null && t.Count >= ints) return t;
        t?.Dispose();   // every submission has completed (Submit waits)
        return ctx.CreateTensor(GpuDType.I32, (int)Math.Max(64, Grid.NextPow2((uint)ints)));
    }

    /// <summary>
    /// Feeds T tokens to one sequence whose state is row <paramref name="slot"/> of
    /// <paramref name="pool"/>, starting at absolute position <paramref name="position"/>, in one
    /// submission (all T rows through every linear at once, the AoD scan over T inside the kernel);
    /// writes only the last token's logits (V).
    /// </summary>
    public void Prefill(ReadOnlySpan<int> tokens, int slot, long position, GpuStatePool pool, Span<float> lastLogits)
    {
        int T = tokens.Length, V = Config.VocabSize;
        if (lastLogits.Length != V) throw new ArgumentException($"lastLogits must hold V = {V} floats", nameof(lastLogits));
        var a = Run(tokens, 1, T, [position], [slot], pool, null);
        a.Logits.Download(lastLogits, (long)(T - 1) * V);
    }

    long[] zeroStarts = [];

    ReadOnlySpan<long> ZeroStarts(int B)
    {
        if (zeroStarts.Length < B) zeroStarts = new long[B];
        return zeroStarts.AsSpan(0, B);
    }

    // starts (B): absolute position of each sequence's first token; slots (B) into pool, or no
    // pool (and no slots) for a scan from zero that keeps no state.
    Activations Run(ReadOnlySpan<int> tokens, int B, int T, ReadOnlySpan<long> starts, ReadOnlySpan<int> slots, GpuStatePool? pool,
        ReadOnlySpan<int> targets, bool argmax = false, int firstSampled = 0, int sampled = 0)
    {
        if (B <= 0 || T <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"B ({B}) and T ({T}) must be > 0");
        if (tokens.Length != B * T) throw new ArgumentException($"tokens holds {tokens.Length} ids, expected B*T = {B * T}", nameof(tokens));
        for (var i = 0; i < tokens.Length; i++)
            if ((uint)tokens[i] >= (uint)Config.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(tokens), $"token {tokens[i]} at {i} outside [0, {Config.VocabSize})");
        if (starts.Length != B) throw new ArgumentException($"positions holds {starts.Length} values, expected B = {B}", nameof(starts));
        foreach (var p in starts)
            if (p < 0) throw new ArgumentOutOfRangeException(nameof(starts), $"negative position {p}");
        if (pool is not null) CheckSlots(slots, B, pool);
        var a = ActivationsFor(B, T);
        a.Tokens.Upload(tokens);
        if (pool is not null) a.Slots.Upload(slots);
        if (!targets.IsEmpty) a.Targets.Upload(targets);
        UploadRope(a, B, T, starts);

        RecordForward(a, B, T, pool);
        if (!targets.IsEmpty) CrossEntropy.Record(rec, ctx, a.Logits, a.Targets, a.Loss);
        if (argmax) CrossEntropy.RecordArgmax(rec, ctx, a.Logits, a.Argmax);
        // After the argmax, whose ids of the sampled rows it overwrites.
        if (sampled > 0) Sample.Record(rec, ctx, a.Logits, sampleRows!, samplePairs!, firstSampled, sampled, a.Argmax);
        rec.Submit();
        return a;
    }

    void CheckSlots(ReadOnlySpan<int> slots, int B, GpuStatePool pool)
    {
        if (slots.Length != B) throw new ArgumentException($"slots holds {slots.Length} rows, expected B = {B}", nameof(slots));
        if (slotSeen.Length < pool.Capacity) slotSeen = new bool[pool.Capacity];
        var ok = true;
        var i = 0;
        for (; i < B && ok; i++)
        {
            if ((uint)slots[i] >= (uint)pool.Capacity) break;
            ok = !slotSeen[slots[i]];
            slotSeen[slots[i]] = true;
        }
        for (var j = 0; j < Math.Min(i, B); j++) slotSeen[slots[j]] = false;
        if (i < B && ok)
            throw new ArgumentOutOfRangeException(nameof(slots), $"slot {slots[i]} outside the pool's [0, {pool.Capacity})");
        // Two rows updating one state in the same dispatch would race.
        if (!ok) throw new ArgumentException($"slot {slots[i - 1]} appears twice in one batch", nameof(slots));
    }

    void UploadRope(Activations a, int B, int T, ReadOnlySpan<long> starts)
    {
        if (a.RopeValid && starts.SequenceEqual(a.RopeStarts)) return;
        var half = Config.HeadDim / 2;
        var n = B * T * half;
        // Host staging reused across calls: no allocation per decoded token.
        if (ropeCos.Length < n)
        {
            ropeCos = new float[n];
            ropeSin = new float[n];
        }
        for (var b = 0; b < B; b++)
            Aod.RopeTables(Config.HeadDim, starts[b], T, ropeCos.AsSpan(b * T * half, T * half), ropeSin.AsSpan(b * T * half, T * half));
        a.Cos.Upload(ropeCos.AsSpan(0, n));
        a.Sin.Upload(ropeSin.AsSpan(0, n));
        starts.CopyTo(a.RopeStarts);
        a.RopeValid = true;
    }

    void RecordForward(Activations a, int B, int T, GpuStatePool? pool)
    {
        var c = Config;
        if (embedProj is null)
        {
            // h is free until the first block: it holds e (rmsnorm may not run in place).
            RecordGather(embed, a.Tokens, a.H);
            RmsNorm.Record(rec, ctx, a.H, a.X);
        }
        else
        {
            RecordGather(embed, a.Tokens, a.E!);
            RecordMatmul(embedProj, a.E!, false, a.H);
            RmsNorm.Record(rec, ctx, a.H, a.X);
        }

        for (var app = 0; app < c.Applications; app++)
        {
            var blk = blocks[c.BlockOfApplication(app)];
            RmsNorm.Record(rec, ctx, a.X, a.H);
            RecordLinear(blk.Qkv, a.H, a.Qkv, a.U, relu2Between: true);
            Aod.Record(rec, ctx, a.Qkv, a.Cos, a.Sin, true, B, T, c.NHead, pool is null ? null : a.Slots,
                pool?.S[app] ?? a.FreshS, pool is null ? a.FreshZ : pool.Z?[app], a.Y, a.ChunkS, a.ChunkZ);
            RecordLinear(blk.Proj, a.Y, a.O, a.U, relu2Between: false);
            SwiGlu.Record(rec, ctx, a.O, residual: true, a.X);
            if (blk.Up is not null)
            {
                RecordLinear(blk.Up, a.H, a.M!, a.U, relu2Between: false);
                SwiGlu.Record(rec, ctx, a.M!, residual: false, a.Gated!);
                RecordLinear(blk.Down!, a.Gated!, a.Ffn!, a.U, relu2Between: false);
                Add.Record(rec, ctx, a.Ffn!, a.X);
            }
        }

        RmsNorm.Record(rec, ctx, a.X, a.H);
        RecordLinear(unembed, a.H, a.Logits, a.U, relu2Between: false);
    }

    // A full-rank linear, or w2 (act(w1 x)) through the (rows, r) scratch u; the recorder's
    // barriers order the reuse of u between linears.
    void RecordLinear(GpuLinear p, GpuTensor x, GpuTensor y, GpuTensor? u, bool relu2Between)
    {
        if (p.W is not null)
        {
            RecordMatmul(p.W, x, false, y);
            return;
        }
        RecordMatmul(p.W1!, x, relu2Between, u!);
        RecordMatmul(p.W2!, u!, false, y);
    }

    // y = x W^T (relu2 fused when asked) through the f32 or the quantized kernel.
    void RecordMatmul(GpuMatrix w, GpuTensor x, bool relu2, GpuTensor y)
    {
        if (w.Quantized is { } q) Linear.RecordQuantized(rec, ctx, x, q, relu2, y);
        else Linear.Record(rec, ctx, x, w.F32!, relu2, y);
    }

    void RecordGather(GpuMatrix table, GpuTensor tokens, GpuTensor output)
    {
        if (table.Quantized is { } q) Embedding.RecordQuantized(rec, ctx, tokens, q, output);
        else Embedding.Record(rec, ctx, tokens, table.F32!, output);
    }

    /// <summary>At most this many (B, T) activation sets are kept; the least recently used goes first.</summary>
    public const int MaxShapes = 4;

    Activations ActivationsFor(int B, int T)
    {
        if (shapes.TryGetValue((B, T), out var a))
        {
            a.LastUse = ++uses;
            return a;
        }
        // Chunked prefill with many chunk sizes would otherwise keep a set per size. Every
        // submission has completed (Submit waits), so a set can be freed at once.
        if (shapes.Count >= MaxShapes)
        {
            var oldest = shapes.MinBy(kv => kv.Value.LastUse);
            oldest.Value.Dispose();
            shapes.Remove(oldest.Key);
        }
        a = new Activations(ctx, Config, B, T) { LastUse = ++uses };
        shapes.Add((B, T), a);
        return a;
    }

    long uses;

    /// <summary>Frees the activation buffers of every (B, T) shape seen so far (weights stay).</summary>
    public void ReleaseActivations()
    {
        foreach (var a in shapes.Values) a.Dispose();
        shapes.Clear();
        sampleRows?.Dispose();
        samplePairs?.Dispose();
        sampleRows = samplePairs = null;
    }

    public void Dispose()
    {
        ReleaseActivations();
        rec.Dispose();
        foreach (var t in weightBuffers) t.Dispose();
    }

    /// <summary>Every intermediate of one (B, T) shape; rows = B*T, ordered b*T + t.</summary>
    sealed class Activations : IDisposable
    {
        readonly List<GpuTensor> all = new();

        public Activations(VulkanContext ctx, GpuModelConfig c, int B, int T)
        {
            var rows = B * T;
            GpuTensor New(GpuDType dt, params int[] shape)
            {
                var t = ctx.CreateTensor(dt, shape);
                all.Add(t);
                return t;
            }
            Tokens = New(GpuDType.I32, rows);
            Slots = New(GpuDType.I32, B);
            RopeStarts = new long[B];
            Targets = New(GpuDType.I32, rows);
            Loss = New(GpuDType.F32, rows);
            Argmax = New(GpuDType.I32, rows);
            E = c.DRank > 0 ? New(GpuDType.F32, rows, c.DRank) : null;
            U = c.DRank > 0 ? New(GpuDType.F32, rows, c.DRank) : null;
            X = New(GpuDType.F32, rows, c.NEmbd);
            H = New(GpuDType.F32, rows, c.NEmbd);
            Qkv = New(GpuDType.F32, rows, 3 * c.DQkv);
            Y = New(GpuDType.F32, rows, c.DQkv);
            O = New(GpuDType.F32, rows, 2 * c.NEmbd);
            M = c.DFfn > 0 ? New(GpuDType.F32, rows, 2 * c.DFfn) : null;
            Gated = c.DFfn > 0 ? New(GpuDType.F32, rows, c.DFfn) : null;
            Ffn = c.DFfn > 0 ? New(GpuDType.F32, rows, c.NEmbd) : null;
            Logits = New(GpuDType.F32, rows, c.VocabSize);
            // Per row: the sequences of a step sit at different positions.
            Cos = New(GpuDType.F32, rows, c.HeadDim / 2);
            Sin = New(GpuDType.F32, rows, c.HeadDim / 2);
            // Bound but never read or written by a scan that starts from zero.
            FreshS = New(GpuDType.F32, B, c.DQkv);
            FreshZ = c.MeanMix ? New(GpuDType.F32, B, c.DQkv) : null;
            // The chunked AoD scan's per-chunk sums; a decoding step (T = 1) never takes it.
            ChunkS = T > 1 ? New(GpuDType.F32, Aod.ChunkRows(B, T), c.DQkv) : null;
            ChunkZ = T > 1 && c.MeanMix ? New(GpuDType.F32, Aod.ChunkRows(B, T), c.DQkv) : null;
        }

        public GpuTensor Tokens { get; }     // (rows) i32
        public GpuTensor Slots { get; }      // (B) i32: pool rows of the sequences
        public GpuTensor Targets { get; }    // (rows) i32
        public GpuTensor Loss { get; }       // (rows)
        public GpuTensor Argmax { get; }     // (rows) i32
        public GpuTensor? E { get; }         // (rows, r), r > 0 only
        public GpuTensor? U { get; }         // (rows, r): between the factors of a linear
        public GpuTensor X { get; }     // (rows, C): the residual stream
        public GpuTensor H { get; }     // (rows, C): rmsnorm(x)
        public GpuTensor Qkv { get; }        // (rows, 3D)
        public GpuTensor Y { get; }          // (rows, D)
        public GpuTensor O { get; }          // (rows, 2C)
        public GpuTensor? M { get; }         // (rows, 2F)
        public GpuTensor? Gated { get; }     // (rows, F)
        public GpuTensor? Ffn { get; }       // (rows, C)
        public GpuTensor Logits { get; }     // (rows, V)
        public GpuTensor Cos { get; }        // (rows, hd/2)
        public GpuTensor Sin { get; }        // (rows, hd/2)
        public GpuTensor FreshS { get; }     // (B, D)
        public GpuTensor? FreshZ { get; }    // (B, D)
        public GpuTensor? ChunkS { get; }    // (B*chunks, D), T > 1 only
        public GpuTensor? ChunkZ { get; }    // (B*chunks, D), T > 1 and mean mixing only
        public long[] RopeStarts { get; }    // (B): the starts the tables hold when RopeValid
        public bool RopeValid { get; set; }
        public long LastUse { get; set; }

        public void Dispose()
        {
            foreach (var t in all) t.Dispose();
        }
    }
}
