// One whole training step of a Palm model on Vulkan, recorded into ONE command buffer and
// submitted once: forward keeping every activation the backward needs, fused softmax
// cross-entropy and its gradient, the backward in reverse schedule order (gradients of shared
// blocks accumulate across applications), the global gradient norm and clip factor (computed
// and consumed on the device), then Muon on block matrices and AdamW on embeddings and
// unembedding. Only the per-row losses and the norm come back. The math is
// ../shared/spec/palm-model.md; the CPU oracle is Palm.Trainer's ReferenceBackward and
// ReferenceOptimizer.
using Palm.Gpu.Kernels;
using Palm.Gpu.Model;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Training;

/// <summary>
/// Hyper-parameters of one optimizer step (the spec's Muon and AdamW; clip 0 = no clipping).
/// <paramref name="MuonHalf"/>: Muon's Newton-Schulz GEMMs in f16 arithmetic (needs shaderFloat16).
/// </summary>
internal sealed record GpuStepHyper(
    double MuonLr, double AdamLr, double WeightDecay, double MuonBeta,
    double AdamBeta1, double AdamBeta2, double AdamEps, double Clip, long AdamStep, bool MuonHalf = false);

/// <summary>What a step reports: mean cross-entropy over counted targets and the gradient norm before clipping.</summary>
internal readonly record struct GpuStepResult(double Loss, double GradNorm);

/// <summary>Which device tensor of a parameter to read or write.</summary>
internal enum ParamSlot
{
    Value,
    Grad,
    /// <summary>First moment (Muon momentum, AdamW m).</summary>
    M,
    /// <summary>AdamW second moment.</summary>
    V,
}

internal sealed class VulkanTraining : IDisposable
{
    readonly VulkanContext ctx;
    readonly CommandRecorder rec;
    readonly List<Param> parameters = new();
    readonly Dictionary<string, Param> byName = new(StringComparer.Ordinal);
    readonly Param embed;
    readonly Param? embedProj;
    readonly Block[] blocks;
    readonly Lin unembed;
    readonly GpuTensor partials;   // grad-norm partial sums of every gradient
    readonly GpuTensor clip;       // [norm, clip factor]
    readonly int partialCount;
    Activations? acts;

    sealed class Param(string name, GpuTensor value, GpuTensor grad, GpuTensor m, GpuTensor? v, Muon.Scratch? muon) : IDisposable
    {
        public string Name { get; } = name;
        public GpuTensor Value { get; } = value;
        public GpuTensor Grad { get; } = grad;
        public GpuTensor M { get; } = m;
        public GpuTensor? V { get; } = v;
        public Muon.Scratch? Muon { get; } = muon;
        public int PartialOffset { get; set; }
        /// <summary>Running gradient sum over micro-batches (allocated at the first accumulation).</summary>
        public GpuTensor? Acc { get; set; }

        public void Dispose()
        {
            Acc?.Dispose();
            Value.Dispose();
            Grad.Dispose();
            M.Dispose();
            V?.Dispose();
            Muon?.Dispose();
        }
    }

    sealed record Lin(Param? W, Param? W1, Param? W2);

    sealed record Block(Lin Qkv, Lin Proj, Lin? Up, Lin? Down);

    /// <summary>Uploads the weights and zero optimizer state. <paramref name="weights"/> must hold exactly the spec's tensors.</summary>
    /// <exception cref="ArgumentException">A missing, unexpected or misshapen tensor, or an invalid config.</exception>
    public VulkanTraining(VulkanContext ctx, GpuModelConfig config, IReadOnlyDictionary<string, GpuWeight> weights)
    {
        config.Validate();
        this.ctx = ctx;
        Config = config;
        var c = config;
        try
        {
            Param Tensor(string name, int rows, int cols)
            {
                if (!weights.TryGetValue(name, out var w)) throw new ArgumentException($"missing weight {name} ({rows}, {cols})", nameof(weights));
                if (w.Rows != rows || w.Cols != cols || w.Data.Length != rows * cols)
                    throw new ArgumentException($"weight {name} is ({w.Rows}, {w.Cols}) with {w.Data.Length} floats, expected ({rows}, {cols})", nameof(weights));
                var zeros = new float[rows * cols];
                var muon = name.StartsWith("blocks.", StringComparison.Ordinal);
                var p = new Param(name, ctx.CreateTensor(w.Data, GpuDType.F32, rows, cols), ctx.CreateTensor(GpuDType.F32, rows, cols),
                    ctx.CreateTensor(zeros, GpuDType.F32, rows, cols), muon ? null : ctx.CreateTensor(zeros, GpuDType.F32, rows, cols),
                    muon ? new Muon.Scratch(ctx, rows, cols) : null);
                parameters.Add(p);
                byName.Add(name, p);
                return p;
            }

            Lin Linear(string name, int inF, int outF) => c.DRank == 0
                ? new Lin(Tensor(name + ".w", outF, inF), null, null)
                : new Lin(null, Tensor(name + ".w1", c.DRank, inF), Tensor(name + ".w2", outF, c.DRank));

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
            var extra = weights.Keys.Where(k => !byName.ContainsKey(k)).Order(StringComparer.Ordinal).ToList();
            if (extra.Count > 0) throw new ArgumentException($"unexpected weights: {string.Join(", ", extra)}", nameof(weights));

            foreach (var p in parameters)
            {
                p.PartialOffset = partialCount;
                partialCount += GradNorm.Groups(p.Grad.Count);
            }
            partials = ctx.CreateTensor(GpuDType.F32, partialCount);
            clip = ctx.CreateTensor(GpuDType.F32, 2);
            rec = new CommandRecorder(ctx);
        }
        catch
        {
            foreach (var p in parameters) p.Dispose();
            partials?.Dispose();
            clip?.Dispose();
            throw;
        }
    }

    public GpuModelConfig Config { get; }

    /// <summary>The recorder of every call: its counters describe the last submission.</summary>
    internal CommandRecorder Recorder => rec;

    /// <summary>Parameter names in the spec's order.</summary>
    public IEnumerable<string> Names => parameters.Select(p => p.Name);

    /// <summary>True for the block matrices Muon updates; false for AdamW's tensors.</summary>
    public bool IsMuon(string name) => Get(name).Muon is not null;

    Param Get(string name) => byName.TryGetValue(name, out var p) ? p : throw new ArgumentException($"no parameter {name}", nameof(name));

    GpuTensor Slot(string name, ParamSlot slot)
    {
        var p = Get(name);
        return slot switch
        {
            ParamSlot.Value => p.Value,
            ParamSlot.Grad => p.Grad,
            ParamSlot.M => p.M,
            _ => p.V ?? throw new ArgumentException($"{name} is updated by Muon and has no second moment", nameof(slot)),
        };
    }

    /// <summary>Copies a parameter's value, gradient or optimizer moment to the host.</summary>
    public float[] Read(string name, ParamSlot slot) => Slot(name, slot).ToArray();

    /// <summary>Overwrites a parameter's value, gradient or optimizer moment.</summary>
    public void Write(string name, ParamSlot slot, ReadOnlySpan<float> data) => Slot(name, slot).Upload(data);

    /// <summary>
    /// One training step on tokens and targets (B, T) that start their sequences: forward,
    /// loss, backward into the gradients (left unclipped on the device), clip, Muon and AdamW.
    /// One queue submission.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">A token outside [0, V) or a target outside [-1, V).</exception>
    public GpuStepResult Step(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int B, int T, GpuStepHyper hyper)
    {
        var a = Prepare(tokens, targets, B, T);
        RecordForward(a);
        RecordBackward(a);
        RecordOptimizer(hyper);
        rec.Submit();
        return new GpuStepResult(Loss(a, targets), clip.ToArray()[0]);
    }

    /// <summary>Forward, loss and backward only: the gradients are left on the device (unclipped). Returns the loss.</summary>
    public double LossAndGradients(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int B, int T)
    {
        var a = Prepare(tokens, targets, B, T);
        RecordForward(a);
        RecordBackward(a);
        rec.Submit();
        return Loss(a, targets);
    }

    /// <summary>
    /// Micro-batch <paramref name="index"/> of <paramref name="count"/> (gradient accumulation):
    /// forward, loss and backward, then its gradient scaled by 1/count is folded into a running sum
    /// on the device (sum = s g; sum = s g + sum; ...; the last writes g = sum + s g), all in one
    /// submission. After the last one the gradients hold the mean over the micro-batches, in the
    /// CPU trainer's order of additions, ready for <see cref="ApplyOptimizer"/>. Returns the loss.
    /// </summary>
    public double AccumulateMicroBatch(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int B, int T, int index, int count)
    {
        if (count < 1 || index < 0 || index >= count) throw new ArgumentOutOfRangeException(nameof(index), $"micro-batch {index} of {count}");
        var a = Prepare(tokens, targets, B, T);
        RecordForward(a);
        RecordBackward(a);
        if (count > 1)
        {
            float scale = 1f / count;
            foreach (var p in parameters)
            {
                p.Acc ??= ctx.CreateTensor(GpuDType.F32, p.Grad.Shape);
                if (index == 0) Axpby.Record(rec, ctx, scale, p.Grad, 0f, p.Acc);
                else if (index < count - 1) Axpby.Record(rec, ctx, scale, p.Grad, 1f, p.Acc);
                else Axpby.Record(rec, ctx, 1f, p.Acc, scale, p.Grad);
            }
        }
        rec.Submit();
        return Loss(a, targets);
    }

    /// <summary>
    /// Forward and loss only (evaluation): the weights, gradients and optimizer state are left
    /// as they are. Returns the mean cross-entropy over counted targets. One queue submission.
    /// </summary>
    public double ForwardLoss(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int B, int T)
    {
        var a = Prepare(tokens, targets, B, T);
        RecordForward(a);
        rec.Submit();
        return Loss(a, targets);
    }

    /// <summary>Clip and the optimizer step alone, on the gradients now on the device. Returns the norm before clipping.</summary>
    public double ApplyOptimizer(GpuStepHyper hyper)
    {
        RecordOptimizer(hyper);
        rec.Submit();
        return clip.ToArray()[0];
    }

    static double Loss(Activations a, ReadOnlySpan<int> targets)
    {
        var loss = a.Loss.ToArray();
        return CrossEntropy.Mean(loss, targets);
    }

    Activations Prepare(ReadOnlySpan<int> tokens, ReadOnlySpan<int> targets, int B, int T)
    {
        if (B <= 0 || T <= 0) throw new ArgumentOutOfRangeException(nameof(T), $"B ({B}) and T ({T}) must be > 0");
        if (tokens.Length != B * T || targets.Length != B * T)
            throw new ArgumentException($"tokens ({tokens.Length}) and targets ({targets.Length}) must hold B*T = {B * T} ids");
        var V = Config.VocabSize;
        foreach (var t in targets)
            if (t < -1 || t >= V) throw new ArgumentOutOfRangeException(nameof(targets), $"target {t} outside [-1, {V})");
        if (acts is null || acts.B != B || acts.T != T)
        {
            acts?.Dispose();
            acts = null;
            acts = new Activations(ctx, Config, B, T);
        }
        var a = acts;
        var offsets = new int[V + 1];
        var rows = new int[B * T];
        EmbeddingBackward.BuildCsr(tokens, V, offsets, rows);   // also rejects out-of-range tokens
        a.Tokens.Upload(tokens);
        a.Targets.Upload(targets);
        a.TokenOffsets.Upload(offsets);
        a.TokenRows.Upload(rows);
        a.Count = CrossEntropyBackward.Count(targets);
        var half = Config.HeadDim / 2;
        var cos = new float[T * half];
        var sin = new float[T * half];
        Aod.RopeTables(Config.HeadDim, 0, T, cos, sin);
        a.Cos.Upload(cos);
        a.Sin.Upload(sin);
        return a;
    }

    void RecordForward(Activations a)
    {
        var c = Config;
        if (embedProj is null)
        {
            Embedding.Record(rec, ctx, a.Tokens, embed.Value, a.Pre);
        }
        else
        {
            Embedding.Record(rec, ctx, a.Tokens, embed.Value, a.E!);
            Linear.Record(rec, ctx, a.E!, embedProj.Value, false, a.Pre);
        }
        RmsNorm.Record(rec, ctx, a.Pre, a.X[0]);

        for (var app = 0; app < c.Applications; app++)
        {
            var blk = blocks[c.BlockOfApplication(app)];
            var s = a.Apps[app];
            RmsNorm.Record(rec, ctx, a.X[app], s.H);
            if (blk.Qkv.W is not null)
            {
                Linear.Record(rec, ctx, s.H, blk.Qkv.W.Value, false, s.Qkv);
            }
            else
            {
                // The pre-activation is kept for relu2's derivative: one more (rows, r) GEMM.
                Linear.Record(rec, ctx, s.H, blk.Qkv.W1!.Value, false, s.QkvU!);
                Linear.Record(rec, ctx, s.H, blk.Qkv.W1!.Value, true, s.QkvA!);
                Linear.Record(rec, ctx, s.QkvA!, blk.Qkv.W2!.Value, false, s.Qkv);
            }
            Aod.Record(rec, ctx, s.Qkv, a.Cos, a.Sin, false, a.B, a.T, c.NHead, null, a.FreshS, a.FreshZ, s.Y, a.ChunkS, a.ChunkZ);
            ForwardLinear(blk.Proj, s.Y, s.ProjA, s.O);
            // x_{app+1} = x_app + AoD (+ FFN): a fresh buffer, since the backward needs x_app.
            SwiGlu.Record(rec, ctx, s.O, residual: false, a.X[app + 1]);
            Add.Record(rec, ctx, a.X[app], a.X[app + 1]);
            if (blk.Up is not null)
            {
                ForwardLinear(blk.Up, s.H, s.UpA, s.M!);
                SwiGlu.Record(rec, ctx, s.M!, residual: false, s.Gated!);
                ForwardLinear(blk.Down!, s.Gated!, s.DownA, a.Ffn!);
                Add.Record(rec, ctx, a.Ffn!, a.X[app + 1]);
            }
        }

        RmsNorm.Record(rec, ctx, a.X[c.Applications], a.Hf);
        ForwardLinear(unembed, a.Hf, a.UnembedA, a.Logits);
        CrossEntropyBackward.Record(rec, ctx, a.Logits, a.Targets, a.Count, a.Loss, a.DLogits);
    }

    // A linear without activation; a factorised one keeps its factor output in u for dW2.
    void ForwardLinear(Lin p, GpuTensor x, GpuTensor? u, GpuTensor y)
    {
        if (p.W is not null)
        {
            Linear.Record(rec, ctx, x, p.W.Value, false, y);
            return;
        }
        Linear.Record(rec, ctx, x, p.W1!.Value, false, u!);
        Linear.Record(rec, ctx, u!, p.W2!.Value, false, y);
    }

    // Gradients written so far in this recording: the first write of a shared block's gradient
    // overwrites (no zero-fill pass), later applications accumulate.
    readonly HashSet<Param> written = new();

    bool Accumulate(Param p) => !written.Add(p);

    void BackwardLinear(Lin p, GpuTensor x, GpuTensor? a, GpuTensor? relu2U, GpuTensor dy, GpuTensor dU, bool accumulateDx, GpuTensor dx)
    {
        if (p.W is not null)
        {
            LinearBackward.RecordDw(rec, ctx, dy, x, Accumulate(p.W), p.W.Grad);
            LinearBackward.RecordDx(rec, ctx, dy, p.W.Value, null, accumulateDx, dx);
            return;
        }
        LinearBackward.RecordDw(rec, ctx, dy, a!, Accumulate(p.W2!), p.W2!.Grad);
        LinearBackward.RecordDx(rec, ctx, dy, p.W2!.Value, relu2U, false, dU);
        LinearBackward.RecordDw(rec, ctx, dU, x, Accumulate(p.W1!), p.W1!.Grad);
        LinearBackward.RecordDx(rec, ctx, dU, p.W1!.Value, null, accumulateDx, dx);
    }

    void RecordBackward(Activations a)
    {
        var c = Config;
        written.Clear();
        BackwardLinear(unembed, a.Hf, a.UnembedA, null, a.DLogits, a.DU!, false, a.DH);
        RmsNormBackward.Record(rec, ctx, a.X[c.Applications], a.DH, false, a.DX);

        for (var app = c.Applications - 1; app >= 0; app--)
        {
            var blk = blocks[c.BlockOfApplication(app)];
            var s = a.Apps[app];
            // x_out = x_in + AoD(h) + FFN(h): dX reaches x_in unchanged and feeds both branches.
            SwiGluBackward.Record(rec, ctx, s.O, a.DX, a.DO);
            BackwardLinear(blk.Proj, s.Y, s.ProjA, null, a.DO, a.DU!, false, a.DY);
            AodBackward.Record(rec, ctx, s.Qkv, a.Cos, a.Sin, a.DY, a.B, a.T, c.NHead, a.ScanS, a.ScanZ, a.DQkv, a.ChunkS, a.ChunkZ);
            BackwardLinear(blk.Qkv, s.H, s.QkvA, s.QkvU, a.DQkv, a.DU!, false, a.DH);
            if (blk.Up is not null)
            {
                BackwardLinear(blk.Down!, s.Gated!, s.DownA, null, a.DX, a.DU!, false, a.DGated!);
                SwiGluBackward.Record(rec, ctx, s.M!, a.DGated!, a.DM!);
                BackwardLinear(blk.Up, s.H, s.UpA, null, a.DM!, a.DU!, true, a.DH);
            }
            RmsNormBackward.Record(rec, ctx, a.X[app], a.DH, true, a.DX);
        }

        RmsNormBackward.Record(rec, ctx, a.Pre, a.DX, false, a.DH);
        if (embedProj is null)
        {
            EmbeddingBackward.Record(rec, ctx, a.TokenOffsets, a.TokenRows, a.DH, false, embed.Grad);
        }
        else
        {
            LinearBackward.RecordDw(rec, ctx, a.DH, a.E!, false, embedProj.Grad);
            LinearBackward.RecordDx(rec, ctx, a.DH, embedProj.Value, null, false, a.DU!);
            EmbeddingBackward.Record(rec, ctx, a.TokenOffsets, a.TokenRows, a.DU!, false, embed.Grad);
        }
        written.Add(embed);
        if (embedProj is not null) written.Add(embedProj);
        // A block that no application uses cannot exist (every block is applied R >= 1 times).
        if (written.Count != parameters.Count) throw new InvalidOperationException("backward left a gradient unwritten");
    }

    void RecordOptimizer(GpuStepHyper h)
    {
        foreach (var p in parameters) GradNorm.RecordPartial(rec, ctx, p.Grad, partials, p.PartialOffset);
        GradNorm.RecordFinish(rec, ctx, partials, partialCount, (float)h.Clip, clip);
        var adam = new AdamWHyper(h.AdamLr, h.WeightDecay, h.AdamBeta1, h.AdamBeta2, h.AdamEps, h.AdamStep);
        foreach (var p in parameters)
        {
            if (p.Muon is { } s)
            {
                var x = Muon.RecordOrthogonalize(rec, ctx, p.Grad, p.M, clip, (float)h.MuonBeta, s, h.MuonHalf);
                Muon.RecordUpdate(rec, ctx, p.Value, x, s, h.MuonLr, h.WeightDecay);
            }
            else
            {
                AdamW.Record(rec, ctx, p.Value, p.Grad, p.M, p.V!, clip, adam);
            }
        }
    }

    public void Dispose()
    {
        acts?.Dispose();
        rec.Dispose();
        foreach (var p in parameters) p.Dispose();
        partials.Dispose();
        clip.Dispose();
    }

    /// <summary>What one application keeps for the backward; rows = B*T ordered b*T + t.</summary>
    sealed class AppActivations(Func<int[], GpuTensor> f32, GpuModelConfig c, int rows, bool ffn)
    {
        public GpuTensor H { get; } = f32([rows, c.NEmbd]);
        public GpuTensor? QkvU { get; } = c.DRank > 0 ? f32([rows, c.DRank]) : null;   // x W1^T before relu2
        public GpuTensor? QkvA { get; } = c.DRank > 0 ? f32([rows, c.DRank]) : null;   // relu2 of it
        public GpuTensor Qkv { get; } = f32([rows, 3 * c.DQkv]);
        public GpuTensor Y { get; } = f32([rows, c.DQkv]);
        public GpuTensor? ProjA { get; } = c.DRank > 0 ? f32([rows, c.DRank]) : null;
        public GpuTensor O { get; } = f32([rows, 2 * c.NEmbd]);
        public GpuTensor? UpA { get; } = ffn && c.DRank > 0 ? f32([rows, c.DRank]) : null;
        public GpuTensor? M { get; } = ffn ? f32([rows, 2 * c.DFfn]) : null;
        public GpuTensor? Gated { get; } = ffn ? f32([rows, c.DFfn]) : null;
        public GpuTensor? DownA { get; } = ffn && c.DRank > 0 ? f32([rows, c.DRank]) : null;
    }

    /// <summary>Every activation and gradient buffer of one (B, T) shape.</summary>
    sealed class Activations : IDisposable
    {
        readonly List<GpuTensor> all = new();

        public Activations(VulkanContext ctx, GpuModelConfig c, int B, int T)
        {
            this.B = B;
            this.T = T;
            var rows = B * T;
            GpuTensor New(GpuDType dt, params int[] shape)
            {
                var t = ctx.CreateTensor(dt, shape);
                all.Add(t);
                return t;
            }
            GpuTensor F(int[] shape) => New(GpuDType.F32, shape);
            var ffn = c.DFfn > 0;
            var r = c.DRank;
            Tokens = New(GpuDType.I32, rows);
            Targets = New(GpuDType.I32, rows);
            TokenOffsets = New(GpuDType.I32, c.VocabSize + 1);
            TokenRows = New(GpuDType.I32, rows);
            Cos = F([T, c.HeadDim / 2]);
            Sin = F([T, c.HeadDim / 2]);
            E = r > 0 ? F([rows, r]) : null;
            Pre = F([rows, c.NEmbd]);
            X = Enumerable.Range(0, c.Applications + 1).Select(_ => F([rows, c.NEmbd])).ToArray();
            Apps = Enumerable.Range(0, c.Applications).Select(_ => new AppActivations(F, c, rows, ffn)).ToArray();
            Ffn = ffn ? F([rows, c.NEmbd]) : null;
            FreshS = F([B, c.DQkv]);
            FreshZ = c.MeanMix ? F([B, c.DQkv]) : null;
            // The chunked AoD scans' per-chunk values, forward and backward in turn (the backward
            // overwrites them after every forward use).
            ChunkS = T > 1 ? F([Aod.ChunkRows(B, T), c.DQkv]) : null;
            ChunkZ = T > 1 && c.MeanMix ? F([Aod.ChunkRows(B, T), c.DQkv]) : null;
            Hf = F([rows, c.NEmbd]);
            UnembedA = r > 0 ? F([rows, r]) : null;
            Logits = F([rows, c.VocabSize]);
            Loss = F([rows]);
            DLogits = F([rows, c.VocabSize]);
            DX = F([rows, c.NEmbd]);
            DH = F([rows, c.NEmbd]);
            DO = F([rows, 2 * c.NEmbd]);
            DY = F([rows, c.DQkv]);
            DQkv = F([rows, 3 * c.DQkv]);
            DU = r > 0 ? F([rows, r]) : null;
            DM = ffn ? F([rows, 2 * c.DFfn]) : null;
            DGated = ffn ? F([rows, c.DFfn]) : null;
            ScanS = F([rows, c.DQkv]);
            ScanZ = c.MeanMix ? F([rows, c.DQkv]) : null;
        }

        public int B { get; }
        public int T { get; }
        public int Count { get; set; }           // rows with a target
        public GpuTensor Tokens { get; }         // (rows) i32
        public GpuTensor Targets { get; }        // (rows) i32
        public GpuTensor TokenOffsets { get; }   // (V+1) i32, CSR of token positions by id
        public GpuTensor TokenRows { get; }      // (rows) i32
        public GpuTensor Cos { get; }            // (T, hd/2)
        public GpuTensor Sin { get; }
        public GpuTensor? E { get; }             // (rows, r) gathered embeddings, r > 0
        public GpuTensor Pre { get; }            // (rows, C) before the embedding rmsnorm
        public GpuTensor[] X { get; }            // (rows, C) residual entering each application, and the final one
        public AppActivations[] Apps { get; }
        public GpuTensor? Ffn { get; }           // (rows, C) DOWN output, consumed at once
        public GpuTensor FreshS { get; }         // (B, D) bound, unused: the scan starts at zero
        public GpuTensor? FreshZ { get; }
        public GpuTensor? ChunkS { get; }        // (B*chunks, D), T > 1 only; forward and backward scratch
        public GpuTensor? ChunkZ { get; }        // (B*chunks, D), T > 1 and mean mixing only
        public GpuTensor Hf { get; }             // (rows, C) final rmsnorm
        public GpuTensor? UnembedA { get; }      // (rows, r)
        public GpuTensor Logits { get; }         // (rows, V)
        public GpuTensor Loss { get; }           // (rows)
        public GpuTensor DLogits { get; }        // (rows, V)
        public GpuTensor DX { get; }             // (rows, C) gradient of the residual stream
        public GpuTensor DH { get; }             // (rows, C) of a normalised input
        public GpuTensor DO { get; }             // (rows, 2C)
        public GpuTensor DY { get; }             // (rows, D)
        public GpuTensor DQkv { get; }           // (rows, 3D)
        public GpuTensor? DU { get; }            // (rows, r) between factors
        public GpuTensor? DM { get; }            // (rows, 2F)
        public GpuTensor? DGated { get; }        // (rows, F)
        public GpuTensor ScanS { get; }          // (rows, D) AoD backward scratch
        public GpuTensor? ScanZ { get; }

        public void Dispose()
        {
            foreach (var t in all) t.Dispose();
        }
    }
}
