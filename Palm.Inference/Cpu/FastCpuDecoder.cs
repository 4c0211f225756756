// The fast CPU decode path: one recurrent step per sequence with preallocated scratch, fused
// per-head AoD (QK-norm, RoPE, gate, state update, mix) and register-blocked matrix-vector
// products. The same function as CpuReferenceModel.Step, which checks it (FastCpuDecoderTests);
// a warm batch-1 step (and the team's batched one) allocates nothing (tested) and takes no lock;
// only a batch stepped on the thread pool pays the pool's hand-off.
//
// Two cores for one sequence. A batch-1 token is ~1.7 M multiply-adds spread over ~35 small
// matrix-vector products, so handing work to the thread pool per product would cost more than
// the product. Instead the step is cut into two fixed PARTS (heads, FFN channels, vocabulary rows
// and residual channels halved) and, where a second core exists, a dedicated worker thread runs
// part 1 while the caller runs part 0, meeting at two spin barriers per block application
// (DecodeTeam):
//  - Phase A, from the block's whole input: the QKV products, AoD and FFN of the part's heads
//    and channels, then the per-part partial sums of the products whose input is split (the
//    projection after the AoD mix, the FFN's down linear) over their input columns. Barrier.
//  - Phase B: the partial sums added part 0 + part 1, then the residual update of the part's
//    channels of the stream (the projection's second factor's rows for them and the glue), and
//    the part's share of the next block's input: the input factor's product over those channels,
//    their sum of squares (the norm's scale is applied to the summed product: W1 (x s) = s (W1 x))
//    and the channels themselves. Barrier.
// A thread so keeps only its half of the stream up to date. The earlier design had one barrier,
// both threads computing the whole residual update and the next input factor's product (~30 %
// of a `small` block's weights, read twice): measured on the development VM (two vCPUs, ~0.4 us
// per barrier with equal work, 1 us more of jitter), the second barrier costs less than those
// reads: `small` two-core steps 63.5-66.8 -> 60.2-62.6 us (alternated in one process); one core
// does the same arithmetic in part order, ~2 % slower than before.
// Because the partition is fixed and the partial sums are always added in the same order, one
// thread running both parts produces bit-identical logits: batched steps (StepMany, in
// FastCpuDecoder.Batch.cs), a busy team and single-core machines all give the same text for the
// same seed.
//
// Skipping zero inputs. Two products per block read inputs that are exactly zero much of the
// time: the QKV linear's second factor reads relu2(w1 h), the projection reads relu(q)·S. With
// random weights half of each is zero; in the built-in trained model 78 % and 60 %. Those two use
// transposed copies (SparseMatVec: float32, or int8 levels for q8/q4 where AVX-512 runs) and read
// only the weight rows of nonzero inputs: a `small` token moves ~2 MB less of its ~7 MB, the
// built-in model decodes ~30 % faster. The price is the copies (the QKV second factors and
// projection input factors once more: 2.1 MB for `small` in float32) and rounding in another
// order (each output sums its terms in input order).
//
// The start of a step. Before the first block, every thread made the same things of the token
// id: its embedding row, projection and norm, and each part's share of the first block's input
// (for `small` two 64 KB products a thread). With the weights fixed that depends on the id alone,
// so a direct-mapped table keeps it per id (TokenStartMemo, a quarter of the weights' bytes:
// ~800 of `small`'s ids), filled with exactly what the step computed: the same bits either way.
// `small` two-core steps 66.0 -> 63.8 (varied tokens) and 78.9 -> 70.2 us (greedy; medians,
// alternated in one process on a noisy stretch; p25 63.7 -> 60.5 and 68.0 -> 65.6).
//
// Weights are CpuWeights: each matrix float32 or q8/q4 as stored (CpuMatrix branches once per
// product). The split points are multiples of head_dim or 16, not of the quantization group, so a
// part's column slice may begin or end inside a group (q8 keeps one scale per row by default) or,
// for q4, on the high nibble of a byte; QuantizedMatVec.MatVecCols sums each clipped group and
// scales it once, in a fixed order, so the property above holds for quantized weights too
// (FastCpuDecoderTwoCoreTests). A quantized embedding row is decoded into per-thread scratch.
using System.Diagnostics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Palm.Inference.Model;

namespace Palm.Inference.Cpu;

internal sealed partial class FastCpuDecoder : IDisposable
{
    private const int Parts = 2;

    private readonly PalmConfig _c;
    private readonly CpuWeights _w;
    private readonly double[] _freq;
    private readonly ThreadLocal<Scratch> _scratch;
    // Part boundaries: heads, FFN channels, vocabulary rows and residual channels (Parts + 1 each).
    private readonly int[] _heads, _ffn, _vocab, _chan;
    private readonly bool _useTeam;
    private DecodeTeam? _team;
    private int _teamBusy;
    private bool _disposed;
    private long _teamSteps;
    private readonly TeamPolicy _policy = new();
    // Per block, transposed copies of the two products whose inputs are half zeros (SparseMatVec):
    // the QKV second factor and the projection's input factor. Null where unsupported (quantized
    // without AVX-512) or switched off.
    private readonly TransposedMatrix?[] _qkvT, _projT;
    // The start of a step per token id (StartToken): made at the first step (a model just loaded
    // holds no more than its weights), never when _memoSlots is 0 (switched off, or too small to help).
    private TokenStartMemo? _memo;
    private readonly int _memoSlots;

    /// <param name="parameters">The weights, copied to 64-byte boundaries (CpuWeights.Aligned): later
    /// changes to them are not seen.</param>
    /// <param name="threads">1 keeps every step on the caller's thread; 2 lets batch-1 steps use a
    /// second core when the machine has one. Null: 2 unless <c>PALM_CPU_DECODE_THREADS=1</c>.</param>
    public FastCpuDecoder(PalmParameters parameters, int? threads = null) : this(CpuWeights.From(parameters).Aligned(), threads) { }

    /// <param name="weights">The weights, each matrix float32 or q8/q4 (read, never written).</param>
    /// <param name="threads">As for the <see cref="PalmParameters"/> overload.</param>
    /// <param name="sparseInputs">Whether the products with half-zero inputs skip the zeros
    /// (SparseMatVec; float32 matrices, and q8/q4 where AVX-512 runs; at the cost of a transposed
    /// copy of them). Null: yes unless <c>PALM_CPU_DECODE_SPARSE=0</c> (a switch for measuring the
    /// difference).</param>
    /// <param name="tokenStartSlots">Slots of the token-start table (TokenStartMemo): 0 switches it
    /// off. Null: what a quarter of the weights' bytes holds, unless <c>PALM_CPU_DECODE_MEMO=0</c>.</param>
    public FastCpuDecoder(CpuWeights weights, int? threads = null, bool? sparseInputs = null, int? tokenStartSlots = null)
    {
        _w = weights;
        _c = weights.Config;
        _freq = CpuOps.RopeFrequencies(_c.HeadDim);
        _scratch = new ThreadLocal<Scratch>(() => new Scratch(_c));
        _heads = Split(_c.NHead, 1);
        _chan = Split(_c.NEmbd, 64);
        _ffn = Split(Math.Max(_c.DFfn, 0), 16);
        _vocab = Split(_c.VocabSize, 16);
        int want = threads ?? (Environment.GetEnvironmentVariable("PALM_CPU_DECODE_THREADS") == "1" ? 1 : 2);
        if (want is < 1 or > 2) throw new ArgumentOutOfRangeException(nameof(threads), "1 or 2");
        _useTeam = want == 2 && Environment.ProcessorCount >= 2;
        bool sparse = sparseInputs ?? Environment.GetEnvironmentVariable("PALM_CPU_DECODE_SPARSE") != "0";
        _qkvT = [.. _w.Blocks.Select(bp => sparse && bp.Qkv.Factorized && TransposedMatrix.Supports(bp.Qkv.W2!) ? new TransposedMatrix(bp.Qkv.W2!) : null)];
        _projT = [.. _w.Blocks.Select(bp => bp.Proj.Factorized ? bp.Proj.W1! : bp.Proj.W!).Select(m => sparse && TransposedMatrix.Supports(m) ? new TransposedMatrix(m) : null)];
        // A quarter of the weights' bytes for the token-start table: ~800 of `small`'s 4,096 ids
        // (1.2 MB); text keeps coming back to a few hundred.
        int r = InputFactor(0)?.Rows ?? 0;
        int slots = tokenStartSlots ?? (Environment.GetEnvironmentVariable("PALM_CPU_DECODE_MEMO") == "0" ? 0
            : TokenStartMemo.SlotsFor(_w.Bytes / 4, _c.VocabSize, _c.NEmbd, r, Parts));
        if (slots < 0) throw new ArgumentOutOfRangeException(nameof(tokenStartSlots), "must be >= 0");
        _memoSlots = Math.Min(slots, _c.VocabSize);
    }

    public PalmConfig Config => _c;

    /// <summary>Bytes of the transposed copies behind the zero-skipping products (held besides the weights).</summary>
    public long CopyBytes => _qkvT.Concat(_projT).Sum(t => t?.Bytes ?? 0);

    /// <summary>Bytes of the token-start table (0 when off or before the first step).</summary>
    public long MemoBytes => Volatile.Read(ref _memo)?.Bytes ?? 0;

    /// <summary>
    /// When set, counts the inputs of the zero-skipping products and how many were nonzero ([0]/[1]:
    /// QKV second factor, [2]/[3]: projection), for the benchmark's bytes-per-token figure.
    /// </summary>
    internal long[]? DensityCounts { get; set; }

    /// <summary>Whether any product skips zero inputs (tests check which path they ran).</summary>
    internal bool SkipsZeroInputs => _qkvT.Any(t => t is not null) || _projT.Any(t => t is not null);

    /// <summary>False: every batch-1 step that can uses both cores (tests of the two-core path).</summary>
    internal bool AdaptiveTeam { get; set; } = true;

    /// <summary>Batch-1 steps that ran on two cores (tests check the team really ran).</summary>
    internal long TeamSteps => Interlocked.Read(ref _teamSteps);

    // [0, n) cut into Parts ranges whose inner boundaries are multiples of align (when n allows).
    private static int[] Split(int n, int align)
    {
        var b = new int[Parts + 1];
        for (int i = 1; i < Parts; i++)
        {
            int cut = (int)((long)n * i / Parts);
            if (n >= Parts * align) cut = cut / align * align;
            b[i] = Math.Max(cut, b[i - 1]);
        }
        b[Parts] = n;
        return b;
    }

    private sealed class Scratch(PalmConfig c)
    {
        // Private to one thread: only the ranges of the parts that thread runs are written/read.
        public readonly float[] H = new float[c.NEmbd], Xf = new float[c.NEmbd], E = new float[c.NEmbd];
        // A quantized embedding row, decoded (r or C floats).
        public readonly float[] Er = new float[Math.Max(c.NEmbd, c.DRank)];
        public readonly float[] U = new float[Math.Max(1, c.DRank)], U2 = new float[Math.Max(1, Math.Max(c.DRank, 2 * c.NEmbd))];
        public readonly float[] Uf = new float[Math.Max(1, c.DRank)], Ud = new float[Math.Max(1, Math.Max(c.DRank, c.NEmbd))];
        public readonly float[] Qkv = new float[3 * c.DQkv], G = new float[c.DQkv], Y = new float[c.DQkv];
        public readonly float[] O = new float[2 * c.NEmbd];
        public readonly float[] M = new float[Math.Max(1, 2 * c.DFfn)], Z = new float[Math.Max(1, c.DFfn)], F = new float[c.NEmbd];
        public readonly float[] Cos = new float[c.HeadDim / 2], Sin = new float[c.HeadDim / 2];
        // Where the QKV factor's relu2 output and the projection input are nonzero (SparseMatVec).
        public readonly int[] NzU = new int[c.DRank + SparseMatVec.Slack], NzY = new int[c.DQkv + SparseMatVec.Slack];
        // Each part's argmax of its vocabulary rows and the logit there (a cache line a part: the
        // team's threads write their own).
        public readonly int[] BestIdx = new int[16 * Parts];
        public readonly float[] BestVal = new float[16 * Parts];
        // The residual stream. A thread updates only its parts' channels (_chan); the other
        // channels, whole after BeginToken, go stale in a team's threads after the first block.
        public readonly float[] X = new float[c.NEmbd];
        // Shared between the parts: the per-part partial sums, [application parity][part]. A thread
        // running both parts alone uses its own; a team uses the caller's (the worker's are idle).
        // Two sets by parity: with two barriers per application one would do (a set is written
        // again only after a barrier that its readers pass after reading it); the second keeps a
        // whole phase between them, should the phases ever change.
        public readonly float[][][] P = [Sums(Math.Max(c.DRank, 2 * c.NEmbd)), Sums(Math.Max(c.DRank, 2 * c.NEmbd))];
        public readonly float[][][] P2 = [Sums(Math.Max(c.DRank, c.NEmbd)), Sums(Math.Max(c.DRank, c.NEmbd))];
        // The next block's input, exchanged at each application's second barrier ([parity]), and
        // the first block's, which every thread computes for itself from the whole stream.
        public readonly Exchange[] Ex = [new(c), new(c)];
        public readonly Exchange Local = new(c);

        // Padded by a cache line on each side so the two threads' sums never share one.
        internal static float[][] Sums(int n) => [new float[Math.Max(1, n) + 32], new float[Math.Max(1, n) + 32]];
    }

    /// <summary>
    /// What a block (or the head) needs of the residual stream x, each part's share from its
    /// channels: the partial product of the input factor W1[:, channels] · x[channels] (factorized
    /// input only), the sum of squares of x[channels] (part p at [8p], a cache line each) and the
    /// channels themselves (XS: for a whole normalised input, where W1 is not factorized or an FFN
    /// reads it). The norm's scale multiplies the summed partials afterwards:
    /// W1 (x s) = s (W1 x), up to rounding.
    /// </summary>
    private sealed class Exchange(PalmConfig c)
    {
        public readonly float[][] PU = Scratch.Sums(c.DRank);
        public readonly double[] SS = new double[8 * Parts];
        public readonly float[] XS = new float[c.NEmbd + 32];
    }

    /// <summary>
    /// One token per sequence of <paramref name="state"/>; logits (B, V). Same contract as
    /// <see cref="CpuReferenceModel.Step"/>. A batch-1 step may use the second core (the logits
    /// do not depend on it); sessions at different positions go through <see cref="StepMany"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Step(ReadOnlySpan<int> tokens, AodStateSet state, Span<float> logits)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int batch = state.Batch, V = _c.VocabSize;
        if (tokens.Length != batch) throw new ArgumentException($"expected {batch} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < batch * V) throw new ArgumentException($"logits must hold B*V = {batch * V} floats", nameof(logits));
        foreach (var t in tokens)
            if ((uint)t >= (uint)V) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {t} outside [0, {V})");
        if (batch == 1) StepOne(tokens[0], state, logits[..V], argMax: false);
        else StepBatch(tokens, state, logits);
        state.Position++;
    }

    // Sequences of one state set stepped together: independent, one per pool worker, each with
    // its own scratch. A method of its own: the lambda's captures would otherwise make every
    // call of Step, batch 1 included, allocate their closure.
    private unsafe void StepBatch(ReadOnlySpan<int> tokens, AodStateSet state, Span<float> logits)
    {
        int V = _c.VocabSize;
        var toks = tokens.ToArray();
        fixed (float* pl = logits)
        {
            nint il = (nint)pl;
            Parallel.For(0, state.Batch, b => StepAlone(toks[b], state, b, new Span<float>((float*)il + (long)b * V, V)));
        }
    }

    /// <summary>
    /// A batch-1 <see cref="Step"/> that also returns the greedy choice: exactly
    /// <see cref="Sampling.Sampler.ArgMax"/> of the logits it writes. Each part takes the argmax of
    /// its own vocabulary rows while they are in its thread's cache, so on two cores the caller
    /// never reads the other core's half of the row (a `small` greedy token 53.6 -> 53.0 and
    /// 54.4 -> 53.9 us, alternated in one process).
    /// </summary>
    public int StepArgMax(int token, AodStateSet state, Span<float> logits)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int V = _c.VocabSize;
        if (state.Batch != 1) throw new ArgumentException($"StepArgMax steps one sequence; the state holds {state.Batch}", nameof(state));
        if (logits.Length < V) throw new ArgumentException($"logits must hold V = {V} floats", nameof(logits));
        if ((uint)token >= (uint)V) throw new ArgumentOutOfRangeException(nameof(token), $"token id {token} outside [0, {V})");
        int best = StepOne(token, state, logits[..V], argMax: true);
        state.Position++;
        return best;
    }

    // A batch-1 step on the team or alone (adaptive); the argmax of the logits when asked, else -1.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private int StepOne(int token, AodStateSet state, Span<float> logits, bool argMax)
    {
        if (_useTeam && Interlocked.CompareExchange(ref _teamBusy, 1, 0) == 0)
        {
            // Holding _teamBusy: the policy fields below are ours alone.
            try
            {
                bool team = !AdaptiveTeam || _policy.UseTeam();
                long t0 = Stopwatch.GetTimestamp();
                int best = team ? RunTeam(token, state, logits, argMax) : StepAlone(token, state, 0, logits, argMax);
                _policy.Record(team, Stopwatch.GetTimestamp() - t0);
                return best;
            }
            finally { Volatile.Write(ref _teamBusy, 0); }
        }
        return StepAlone(token, state, 0, logits, argMax);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe int StepAlone(int token, AodStateSet state, int b, Span<float> logits, bool argMax = false)
    {
        var s = _scratch.Value!;
        fixed (float* pl = logits)
        {
            var job = new Job(token, state, b, pl, argMax);
            Run(in job, s, s, 0, Parts, null, 0);
        }
        return argMax ? CombineArgMax(s, logits) : -1;
    }

    // The row's argmax from the parts' (ArgMaxOfNumbers of their rows, in row order): a later
    // part's wins only where strictly larger; a NaN first logit wins, as in Sampler.ArgMax.
    private static int CombineArgMax(Scratch sh, ReadOnlySpan<float> logits)
    {
        if (float.IsNaN(logits[0])) return 0;
        int best = -1;
        float top = 0;
        for (int part = 0; part < Parts; part++)
        {
            int r = sh.BestIdx[16 * part];   // -1: the part's rows are all NaN, or it has none
            if (r >= 0 && (best < 0 || sh.BestVal[16 * part] > top)) { best = r; top = sh.BestVal[16 * part]; }
        }
        return best;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe int RunTeam(int token, AodStateSet state, Span<float> logits, bool argMax)
    {
        _team ??= new DecodeTeam(this);
        fixed (float* pl = logits)
        {
            var job = new Job(token, state, 0, pl, argMax);
            try { _team.Run(in job); _teamSteps++; }
            catch
            {
                // One side failed mid-token: the other may wait at a barrier. Stopping the team
                // releases it; the next step starts a fresh one.
                _team.Dispose();
                _team = null;
                throw;
            }
        }
        return argMax ? _team.ArgMax(logits) : -1;
    }

    /// <summary>What one token step needs; the logits pointer stays valid while the caller waits.</summary>
    private readonly unsafe struct Job(int token, AodStateSet state, int b, float* logits, bool argMax = false)
    {
        public readonly int Token = token;
        public readonly AodStateSet State = state;
        public readonly int B = b;
        public readonly float* Logits = logits;
        public readonly bool ArgMax = argMax;   // each part leaves its rows' argmax in BestIdx/BestVal
    }

    /// <summary>
    /// Runs parts [<paramref name="p0"/>, <paramref name="p1"/>) of one token for sequence
    /// job.B. <paramref name="sh"/> holds the shared partial sums and exchanges;
    /// <paramref name="team"/> (null when one thread runs all parts) supplies the barriers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void Run(in Job job, Scratch s, Scratch sh, int p0, int p1, DecodeTeam? team, int tid)
    {
        var c = _c;
        int hd = c.HeadDim;
        var state = job.State;
        int b = job.B;

        // RoPE angles and the embedding (+ projection), normalised, whole in every thread; the
        // first block's input from it, every part, locally (both from the token-start table
        // where it holds the token).
        StartToken(s, state.Position, job.Token);

        for (int app = 0; app < c.Applications; app++)
        {
            int l = c.BlockOfApplication(app);
            var bp = _w.Blocks[l];
            var qkvT = _qkvT[l];
            var projT = _projT[l];
            // Phase A: this thread's heads (and FFN channels), from the block's whole input.
            var P = sh.P[app & 1];
            var P2 = sh.P2[app & 1];
            var qkvIn = BlockInput(bp, s, app == 0 ? s.Local : sh.Ex[(app - 1) & 1]);
            var nzU = qkvT is null ? default : s.NzU.AsSpan(0, SparseMatVec.Nonzero(qkvIn, s.NzU));
            if (DensityCounts is { } dc && qkvT is not null && p0 == 0) { Interlocked.Add(ref dc[0], nzU.Length); Interlocked.Add(ref dc[1], qkvIn.Length); }
            var wQkv = bp.Qkv.Factorized ? bp.Qkv.W2! : bp.Qkv.W!;
            bool ffn = bp.Up is not null;
            for (int part = p0; part < p1; part++)
            {
                int j0 = _heads[part] * hd, j1 = _heads[part + 1] * hd, w = j1 - j0;
                // (A part may own no heads, e.g. n_head = 1; TensorPrimitives rejects empty spans.)
                if (w > 0) AodPart(s, state, app, b, j0, w, qkvIn, wQkv, qkvT, nzU);
                // Projection input is split by heads: this part's partial sum over its columns.
                var wp = bp.Proj.Factorized ? bp.Proj.W1! : bp.Proj.W!;
                if (projT is not null)
                {
                    var yIn = s.Y.AsSpan(j0, w);
                    int nzY = SparseMatVec.Nonzero(yIn, s.NzY);
                    if (DensityCounts is { } dcy) { Interlocked.Add(ref dcy[2], nzY); Interlocked.Add(ref dcy[3], w); }
                    projT.MatVec(0, wp.Rows, j0, yIn, s.NzY.AsSpan(0, nzY), P[part].AsSpan(0, wp.Rows));
                }
                else wp.MatVecCols(j0, w, s.Y.AsSpan(j0, w), P[part].AsSpan(0, wp.Rows));
                if (ffn) FfnPart(s, bp, part, P2[part]);
            }
            team?.Barrier(tid);

            // Phase B: the partial sums added in part order (so the thread count never changes a
            // bit), then this thread's channels of the residual update and of the next input.
            SumPartials(s, bp, P, P2);
            var ex = sh.Ex[app & 1];
            for (int part = p0; part < p1; part++)
            {
                ResidualPart(s, bp, part, P2);
                InputPartial(app + 1, s.X, part, ex);
            }
            team?.Barrier(tid);
        }

        // The head's input, then each part's vocabulary rows.
        var unIn = HeadInput(s, sh.Ex[(c.Applications - 1) & 1]);
        var un = _w.Unembed;
        var wUn = un.Factorized ? un.W2! : un.W!;
        for (int part = p0; part < p1; part++)
        {
            int v0 = _vocab[part], v1 = _vocab[part + 1];
            var rows = new Span<float>(job.Logits + v0, v1 - v0);
            wUn.MatVecRows(v0, v1 - v0, unIn, rows);
            if (job.ArgMax)
            {
                int r = Sampling.Sampler.ArgMaxOfNumbers(rows);
                sh.BestIdx[16 * part] = r < 0 ? -1 : v0 + r;
                sh.BestVal[16 * part] = r < 0 ? float.NaN : rows[r];
            }
        }
        // The caller returns (and may reuse the logits and state) only after both parts are done.
        team?.Barrier(tid);
    }

    // The input factor whose product application `app` reads (the head's after the last block):
    // null when that input is not factorized.
    private CpuMatrix? InputFactor(int app) =>
        app < _c.Applications
            ? _w.Blocks[_c.BlockOfApplication(app)].Qkv is { Factorized: true } q ? q.W1 : null
            : _w.Unembed.Factorized ? _w.Unembed.W1 : null;

    // Whether application `app` (the head after the last) reads its whole normalised input (s.H or
    // s.Xf, from the exchanged channels): an input linear that is not factorized, or an FFN.
    private bool ReadsWholeInput(int app) =>
        app < _c.Applications ? ReadsWholeInput(_w.Blocks[_c.BlockOfApplication(app)]) : !_w.Unembed.Factorized;

    private static bool ReadsWholeInput(CpuBlock bp) => !bp.Qkv.Factorized || bp.Up is not null;

    // Part `part`'s share of application `app`'s input (the head's after the last), from its
    // channels of x, into ex (see Exchange).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void InputPartial(int app, float[] x, int part, Exchange ex)
    {
        int c0 = _chan[part], cw = _chan[part + 1] - c0;
        if (InputFactor(app) is { } w1) w1.MatVecCols(c0, cw, x.AsSpan(c0, cw), ex.PU[part].AsSpan(0, w1.Rows));
        InputChannels(app, x, part, ex);
    }

    // InputPartial but the product: the sum of squares and, where they are read, the channels
    // (not written otherwise: the two parts' channels may share a cache line).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void InputChannels(int app, float[] x, int part, Exchange ex)
    {
        int c0 = _chan[part], cw = _chan[part + 1] - c0;
        fixed (float* px = x) ex.SS[8 * part] = Fast.FastAodKernels.SumOfSquares(px + c0, cw);
        if (ReadsWholeInput(app)) x.AsSpan(c0, cw).CopyTo(ex.XS.AsSpan(c0, cw));
    }

    // 1 / rms(x) from the parts' sums of squares, added in part order.
    private float InputScale(Exchange ex)
    {
        double ss = 0;
        for (int part = 0; part < Parts; part++) ss += ex.SS[8 * part];
        return (float)(1.0 / Math.Sqrt(ss / _c.NEmbd + CpuOps.RmsEps));
    }

    // u (n) = (Σ parts' partial products, in part order) · scale.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void CombinePartials(Exchange ex, float scale, Span<float> u)
    {
        int j = 0, n = u.Length;
        fixed (float* a = ex.PU[0], b = ex.PU[1], y = u)
        {
            if (Vector512.IsHardwareAccelerated)
            {
                var sv = Vector512.Create(scale);
                for (; j + 16 <= n; j += 16) ((Vector512.Load(a + j) + Vector512.Load(b + j)) * sv).Store(y + j);
            }
            for (; j < n; j++) y[j] = (a[j] + b[j]) * scale;
        }
    }

    // A block's input from an exchange: s.H, the whole normalised stream, where the QKV linear is
    // not factorized or an FFN reads it (then the FFN's input factor into s.Uf); the QKV input
    // (relu2 of the factor's output, or s.H) returned.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private Span<float> BlockInput(CpuBlock bp, Scratch s, Exchange ex)
    {
        float scale = InputScale(ex);
        if (ReadsWholeInput(bp))
        {
            TensorPrimitives.Multiply(ex.XS.AsSpan(0, _c.NEmbd), scale, s.H);
            if (bp.Up is { Factorized: true } up) up.W1!.MatVec(s.H, s.Uf.AsSpan(0, up.W1.Rows));
        }
        if (!bp.Qkv.Factorized) return s.H;
        var u = s.U.AsSpan(0, bp.Qkv.W1!.Rows);
        CombinePartials(ex, scale, u);
        Relu2(u);
        return u;
    }

    // The head's input from the last exchange: the factor's product (into s.U) or the whole
    // normalised stream (into s.Xf).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private ReadOnlySpan<float> HeadInput(Scratch s, Exchange ex)
    {
        float scale = InputScale(ex);
        if (_w.Unembed.Factorized)
        {
            var u = s.U.AsSpan(0, _w.Unembed.W1!.Rows);
            CombinePartials(ex, scale, u);
            return u;
        }
        TensorPrimitives.Multiply(ex.XS.AsSpan(0, _c.NEmbd), scale, s.Xf);
        return s.Xf;
    }

    // A token's start: its RoPE angles at pos into s.Cos/s.Sin, its embedding (+ projection),
    // normalised, into the residual stream s.X.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void BeginToken(Scratch s, long pos, int token)
    {
        Rope(s, pos);
        Embed(s, token);
    }

    // The RoPE angles' cosines and sines at pos. The zero frequencies (the second half) give
    // exactly cos 1, sin 0: only the first half calls SinCos.
    private void Rope(Scratch s, long pos)
    {
        for (int j = 0; j < _c.HeadDim / 2; j++)
        {
            if (_freq[j] == 0) { s.Cos[j] = 1; s.Sin[j] = 0; continue; }
            var (sin, cos) = Math.SinCos(pos * _freq[j]);
            s.Cos[j] = (float)cos;
            s.Sin[j] = (float)sin;
        }
    }

    // The token's embedding (+ projection), normalised, into s.X.
    private void Embed(Scratch s, int token)
    {
        ReadOnlySpan<float> e = _w.Embed.Row(token, s.Er);
        if (_w.EmbedProj is { } proj) { proj.MatVec(e, s.E); e = s.E; }
        Norm(e, s.X);
    }

    // BeginToken, then every part's share of the first block's input into s.Local: from the
    // memo where it holds the token (TokenStartMemo: the same bits), else computed and stored.
    private void StartToken(Scratch s, long pos, int token)
    {
        Rope(s, pos);
        var ex = s.Local;
        var memo = Volatile.Read(ref _memo);
        if (memo is null && _memoSlots > 0)
        {
            Interlocked.CompareExchange(ref _memo, new TokenStartMemo(_memoSlots, _c.NEmbd, InputFactor(0)?.Rows ?? 0, Parts), null);
            memo = Volatile.Read(ref _memo);
        }
        if (memo is not null && memo.TryRead(token, s.X, ex.PU, ex.SS))
        {
            // The channels themselves, where the first block reads them whole (InputChannels).
            if (ReadsWholeInput(0)) s.X.AsSpan(0, _c.NEmbd).CopyTo(ex.XS);
            return;
        }
        Embed(s, token);
        for (int part = 0; part < Parts; part++) InputPartial(0, s.X, part, ex);
        memo?.Write(token, s.X, ex.PU, ex.SS);
    }

    // The FFN's channels of one part: up products and SwiGLU gate into s.Z, then the down
    // projection's partial sum over those channels into p2.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void FfnPart(Scratch s, CpuBlock bp, int part, float[] p2)
    {
        int F = _c.DFfn, f0 = _ffn[part], fw = _ffn[part + 1] - f0;
        if (fw > 0)
        {
            var wUp = bp.Up!.Factorized ? bp.Up.W2! : bp.Up.W!;
            ReadOnlySpan<float> upIn = bp.Up.Factorized ? s.Uf.AsSpan(0, bp.Up.W1!.Rows) : s.H;
            wUp.MatVecRows(f0, fw, upIn, s.M.AsSpan(f0, fw));
            wUp.MatVecRows(F + f0, fw, upIn, s.M.AsSpan(F + f0, fw));
            unsafe
            {
                fixed (float* pm = s.M, pz = s.Z) Fast.FastMath.SwiGlu(pm + f0, pm + F + f0, null, pz + f0, fw);
            }
        }
        var wd = bp.Down!.Factorized ? bp.Down.W1! : bp.Down.W!;
        wd.MatVecCols(f0, fw, s.Z.AsSpan(f0, fw), p2.AsSpan(0, wd.Rows));
    }

    // The parts' partial sums, added in part order: the projection's into s.U2 (factorized; its
    // second factor is the caller's) or straight into s.O, the FFN down projection's into s.Ud
    // (factorized; else ResidualGlue adds them).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void SumPartials(Scratch s, CpuBlock bp, float[][] P, float[][] P2)
    {
        int C = _c.NEmbd;
        if (bp.Proj.Factorized)
        {
            int r = bp.Proj.W1!.Rows;
            TensorPrimitives.Add(P[0].AsSpan(0, r), P[1].AsSpan(0, r), s.U2.AsSpan(0, r));
        }
        else
        {
            TensorPrimitives.Add(P[0].AsSpan(0, C), P[1].AsSpan(0, C), s.O.AsSpan(0, C));
            TensorPrimitives.Add(P[0].AsSpan(C, C), P[1].AsSpan(C, C), s.O.AsSpan(C, C));
        }
        if (bp.Down is { Factorized: true } down)
        {
            int r = down.W1!.Rows;
            TensorPrimitives.Add(P2[0].AsSpan(0, r), P2[1].AsSpan(0, r), s.Ud.AsSpan(0, r));
        }
    }

    // Part `part`'s channels of the residual update: the projection's second factor's rows for
    // them (factorized; else SumPartials summed s.O), x += a·silu(g), then the FFN's output
    // (its down factor's rows, or the parts' sums).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void ResidualPart(Scratch s, CpuBlock bp, int part, float[][] P2)
    {
        int C = _c.NEmbd, c0 = _chan[part], cw = _chan[part + 1] - c0;
        if (cw == 0) return;
        if (bp.Proj.Factorized)
        {
            var u2 = s.U2.AsSpan(0, bp.Proj.W1!.Rows);
            bp.Proj.W2!.MatVecRows(c0, cw, u2, s.O.AsSpan(c0, cw));
            bp.Proj.W2!.MatVecRows(C + c0, cw, u2, s.O.AsSpan(C + c0, cw));
        }
        if (bp.Down is { Factorized: true } down) down.W2!.MatVecRows(c0, cw, s.Ud.AsSpan(0, down.W1!.Rows), s.F.AsSpan(c0, cw));
        ResidualGlue(s, bp, c0, cw, P2);
    }

    // x[c0, c0 + cw) += a·silu(g) from s.O, then the FFN's output there (s.F from its down
    // factor where factorized, else the parts' sums).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void ResidualGlue(Scratch s, CpuBlock bp, int c0, int cw, float[][] P2)
    {
        int C = _c.NEmbd;
        fixed (float* po = s.O, px = s.X) Fast.FastMath.SwiGlu(po + c0, po + C + c0, px + c0, px + c0, cw);   // x += a·silu(g)
        if (bp.Down is { } down)
        {
            var x = s.X.AsSpan(c0, cw);
            var f = s.F.AsSpan(c0, cw);
            if (!down.Factorized) TensorPrimitives.Add(P2[0].AsSpan(c0, cw), P2[1].AsSpan(c0, cw), f);
            TensorPrimitives.Add(x, f, x);
        }
    }

    // q, k, v rows of heads [j0, j0 + w) / hd, then QK-norm, RoPE, gate, state update and mix.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void AodPart(Scratch s, AodStateSet state, int app, int b, int j0, int w, ReadOnlySpan<float> qkvIn, CpuMatrix wQkv,
        TransposedMatrix? qkvT, ReadOnlySpan<int> nzU)
    {
        int D = _c.DQkv, hd = _c.HeadDim;
        bool mean = _c.Mix == AodMix.Mean;
        for (int seg = 0; seg < 3; seg++)
        {
            if (qkvT is not null) qkvT.MatVec(seg * D + j0, w, 0, qkvIn, nzU, s.Qkv.AsSpan(seg * D + j0, w));
            else wQkv.MatVecRows(seg * D + j0, w, qkvIn, s.Qkv.AsSpan(seg * D + j0, w));
        }
        MixHeads(s, state, app, b, j0, w);
    }

    // From s.Qkv's q, k, v rows of heads [j0, j0 + w) / hd: QK-norm, RoPE, gate, state update and mix into s.Y.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void MixHeads(Scratch s, AodStateSet state, int app, int b, int j0, int w)
    {
        int D = _c.DQkv, hd = _c.HeadDim;
        bool mean = _c.Mix == AodMix.Mean;
        if (Fast.FastAodKernels.Vectorised(hd))
        {
            // One fused pass per head (FastAodKernels.DecodeStep); other head widths below.
            fixed (float* pq = s.Qkv, pc = s.Cos, ps = s.Sin, pS = state.S[app], pZ = mean ? state.Z![app] : null, py = s.Y)
                for (int j = j0; j < j0 + w; j += hd)
                    Fast.FastAodKernels.DecodeStep(pq + j, pq + D + j, pq + 2 * D + j, pc, ps, pS + b * D + j, mean ? pZ + b * D + j : null, py + j, hd);
            return;
        }
        for (int hh = j0 / hd; hh < (j0 + w) / hd; hh++)
        {
            var qh = s.Qkv.AsSpan(hh * hd, hd);
            var kh = s.Qkv.AsSpan(D + hh * hd, hd);
            TensorPrimitives.Multiply(qh, RmsScale(qh), qh);
            TensorPrimitives.Multiply(kh, RmsScale(kh), kh);
            CpuOps.RopeInPlace(qh, s.Cos, s.Sin);
            CpuOps.RopeInPlace(kh, s.Cos, s.Sin);
        }
        var q = s.Qkv.AsSpan(j0, w);
        var k = s.Qkv.AsSpan(D + j0, w);
        var v = s.Qkv.AsSpan(2 * D + j0, w);
        var g = s.G.AsSpan(j0, w);
        var y = s.Y.AsSpan(j0, w);
        var S = state.S[app].AsSpan(b * D + j0, w);
        TensorPrimitives.Sigmoid(k, g);
        TensorPrimitives.FusedMultiplyAdd(g, v, S, S);    // S += g·v
        TensorPrimitives.Max(q, 0f, y);                   // relu(q)
        TensorPrimitives.Multiply(y, S, y);
        if (mean)
        {
            var Z = state.Z![app].AsSpan(b * D + j0, w);
            TensorPrimitives.Add(Z, g, Z);
            TensorPrimitives.Divide(y, Z, y);
        }
    }

    // y = x / rms(x): FastAodKernels.RmsNorm, which every norm of a step goes through (batched
    // steps too), so their bits agree.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Norm(ReadOnlySpan<float> x, Span<float> y)
    {
        fixed (float* px = x, py = y) Fast.FastAodKernels.RmsNorm(px, x.Length, py);
    }

    // u = relu(u)², in place.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Relu2(Span<float> u)
    {
        int j = 0;
        fixed (float* p = u)
        {
            if (Vector512.IsHardwareAccelerated)
                for (; j + 16 <= u.Length; j += 16) { var v = Vector512.Max(Vector512.Load(p + j), Vector512<float>.Zero); (v * v).Store(p + j); }
            for (; j < u.Length; j++) { float v = MathF.Max(p[j], 0f); p[j] = v * v; }
        }
    }

    // 1 / rms(x), summed in double over 64-float chunks (as the reference's tolerance assumes).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static float RmsScale(ReadOnlySpan<float> x)
    {
        double ss = 0;
        for (int i = 0; i < x.Length; i += 64) ss += TensorPrimitives.SumOfSquares(x.Slice(i, Math.Min(64, x.Length - i)));
        return (float)(1.0 / Math.Sqrt(ss / x.Length + CpuOps.RmsEps));
    }

    /// <summary>
    /// Two cores help only while the second one is really ours: on a loaded machine (a game's
    /// own threads, other processes) the worker gets descheduled and every barrier waits for a
    /// time slice (measured: 3-7x slower than one core under load). So the policy times the mode
    /// it prefers (moving average of step time) and now and then probes the other for four steps;
    /// the probe's mean must beat the average by 10% to switch (means, not minima: a descheduled
    /// worker's cost is in the tail). A losing probe doubles the gap to the next one (32 up to 8,192 steps), so
    /// a bad mode costs little once found. The logits are identical in both modes.
    /// A probe runs one step more than it times: while one core is preferred the worker sleeps,
    /// and waking it costs the probe's first step tens of microseconds. Timed, that step made
    /// every probe of the team lose, so one bad start (say, while the thread pool still spun
    /// after other work) kept a session on one core for good: seen in the model benchmark, whose
    /// decode after the training rows ran on one core at ~12k tokens/s where two give ~20k.
    /// </summary>
    internal sealed class TeamPolicy
    {
        private const int FirstGap = 32, MaxGap = 8192, ProbeSteps = 4;
        private bool _preferTeam = true, _teamStarted;
        private double _avg;                // ticks per step of the preferred mode; 0 = unmeasured
        private long _steps, _nextProbe = 2, _gap = FirstGap, _probeSum;
        private int _probeLeft;

        /// <summary>Whether the next step should run on the team.</summary>
        public bool UseTeam()
        {
            if (_probeLeft == 0 && _steps >= _nextProbe) { _probeLeft = ProbeSteps + 1; _probeSum = 0; }
            _steps++;
            return _probeLeft > 0 ? !_preferTeam : _preferTeam;
        }

        /// <summary>The time of the step <see cref="UseTeam"/> just chose (in any unit).</summary>
        public void Record(bool team, long ticks)
        {
            // A team's first step starts its thread: not a step time.
            if (team && !_teamStarted) { _teamStarted = true; return; }
            if (team == _preferTeam && _probeLeft == 0)
            {
                _avg = _avg == 0 ? ticks : _avg + (ticks - _avg) / 8;
                return;
            }
            if (_probeLeft == ProbeSteps + 1) { _probeLeft--; return; }   // the untimed first step
            _probeSum += ticks;
            if (--_probeLeft > 0) return;
            double mean = (double)_probeSum / ProbeSteps;
            if (_avg == 0 || mean < 0.9 * _avg) { _preferTeam = !_preferTeam; _avg = mean; _gap = FirstGap; }
            else _gap = Math.Min(2 * _gap, MaxGap);
            _nextProbe = _steps + _gap;
        }
    }

    /// <summary>Stops the second-core worker (if one started). Steps after this throw.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // A step in flight holds the team; wait for it rather than pull the worker from under it.
        var spin = new SpinWait();
        while (Interlocked.CompareExchange(ref _teamBusy, 1, 0) != 0) spin.SpinOnce();
        _team?.Dispose();
        _scratch.Dispose();
        _groupScratch.Dispose();
    }

    /// <summary>
    /// The caller plus one dedicated worker thread running part 1 of each batch-1 token. The
    /// worker spins briefly between tokens (a generation loop comes back within microseconds)
    /// and then sleeps on a semaphore, so an idle model costs no CPU. No locks on the hot path:
    /// hand-off and barriers are monotonic counters on separate cache lines.
    /// </summary>
    private sealed class DecodeTeam : IDisposable
    {
        // How long an idle worker spins before it sleeps: longer than the host work between two
        // tokens of a generation loop (sampling, streaming), short enough to be free when idle.
        private static readonly long IdleSpinTicks = Stopwatch.Frequency / 1000;

        private readonly FastCpuDecoder _owner;
        private readonly Scratch _main, _worker;
        private readonly Thread _thread;
        private readonly SemaphoreSlim _wake = new(0);
        private Job _job;
        // A batched step's second group (RunMany), read by the worker when _many is set.
        private bool _many;
        private int _manyB0, _manyB1;
        private unsafe int* _manyTokens;
        private unsafe float* _manyLogits;
        private IReadOnlyList<AodStateSet>? _manyStates;
        // Padded counters: [0] posted jobs, [8] worker barrier arrivals, [16] caller arrivals.
        private readonly long[] _counters = new long[24];
        private long _arrivals;          // the caller's own count (the worker keeps its own)
        private int _sleeping, _stop;
        private volatile Exception? _fault;

        public DecodeTeam(FastCpuDecoder owner)
        {
            _owner = owner;
            _main = new Scratch(owner._c);
            _worker = new Scratch(owner._c);
            _thread = new Thread(WorkerLoop) { IsBackground = true, Name = "palm-decode-part1" };
            _thread.Start();
        }

        /// <summary>
        /// A batched step: the worker runs sequences [mid, b1) while the caller runs [0, mid), then
        /// both meet at one barrier (the worker is already awake and spinning between steps, where
        /// a thread-pool hand-off per step cost a wake-up).
        /// </summary>
        public unsafe void RunMany(int mid, int b1, int* tokens, IReadOnlyList<AodStateSet> states, float* logits)
        {
            if (_fault is { } f) throw new InvalidOperationException("the decode worker failed", f);
            _many = true;
            _manyB0 = mid;
            _manyB1 = b1;
            _manyTokens = tokens;
            _manyStates = states;
            _manyLogits = logits;
            Interlocked.Increment(ref _counters[0]);       // full fence: the job is visible first
            if (Volatile.Read(ref _sleeping) != 0) _wake.Release();
            _owner.RunGroup(0, mid, tokens, states, logits);
            Barrier(0);
            _manyStates = null;
        }

        public void Run(in Job job)
        {
            if (_fault is { } f) throw new InvalidOperationException("the decode worker failed", f);
            _many = false;
            _job = job;
            Interlocked.Increment(ref _counters[0]);       // full fence: the job is visible first
            if (Volatile.Read(ref _sleeping) != 0) _wake.Release();
            _owner.Run(in _job, _main, _main, 0, 1, this, 0);
        }

        /// <summary>The argmax of the step just run (its Job asked for it), from the parts' shares.</summary>
        public int ArgMax(ReadOnlySpan<float> logits) => CombineArgMax(_main, logits);

        /// <summary>Both threads call this the same number of times per token.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Barrier(int tid)
        {
            long mine, other;
            if (tid == 0) { mine = ++_arrivals; Volatile.Write(ref _counters[16], mine); other = 8; }
            else { mine = Volatile.Read(ref _counters[8]) + 1; Volatile.Write(ref _counters[8], mine); other = 16; }
            int spins = 0;
            long start = 0;
            bool yielding = false;
            while (Volatile.Read(ref _counters[other]) < mine)
            {
                if (_fault is { } f) throw new InvalidOperationException("the decode worker failed", f);
                if (Volatile.Read(ref _stop) != 0 && tid == 1) throw new OperationCanceledException();
                // A wait is normally under 2 us; past ~50 us the other thread was descheduled:
                // give the core back at every poll from then on (the clock read once every 256).
                if (yielding) { Thread.Yield(); continue; }
                Pause();
                if ((++spins & 255) == 0)
                {
                    if (start == 0) start = Stopwatch.GetTimestamp();
                    else yielding = Stopwatch.GetTimestamp() - start > YieldAfterTicks;
                }
            }
        }

        private static readonly long YieldAfterTicks = Stopwatch.Frequency / 20_000;

        // One poll's pause: the x86 PAUSE instruction where there is one. Thread.SpinWait(1)
        // calls into the runtime; polling with PAUSE instead made `small` decoding 2-3 % faster
        // (55.3 against 56.6 and 57.5 against 59.2 us a token, alternated in one process).
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void Pause()
        {
            if (X86Base.IsSupported) X86Base.Pause();
            else Thread.SpinWait(1);
        }

        private void WorkerLoop()
        {
            long seen = 0;
            try
            {
                while (true)
                {
                    long start = Stopwatch.GetTimestamp();
                    int spins = 0;
                    while (Volatile.Read(ref _counters[0]) == seen)
                    {
                        if (Volatile.Read(ref _stop) != 0) return;
                        Pause();
                        if ((++spins & 63) != 0 || Stopwatch.GetTimestamp() - start < IdleSpinTicks) continue;
                        Interlocked.Exchange(ref _sleeping, 1);      // full fence before the re-check
                        if (Volatile.Read(ref _counters[0]) == seen && Volatile.Read(ref _stop) == 0) _wake.Wait();
                        Interlocked.Exchange(ref _sleeping, 0);
                        start = Stopwatch.GetTimestamp();
                        spins = 0;
                    }
                    seen++;
                    if (_many)
                    {
                        unsafe { _owner.RunGroup(_manyB0, _manyB1, _manyTokens, _manyStates!, _manyLogits); }
                        Barrier(1);
                    }
                    else _owner.Run(in _job, _worker, _main, 1, 2, this, 1);
                }
            }
            catch (OperationCanceledException) { }
            catch (Exception e) { _fault = e; }
        }

        public void Dispose()
        {
            Interlocked.Exchange(ref _stop, 1);
            _wake.Release();
            _thread.Join();
            _wake.Dispose();
        }
    }
}
