// Many sequences in one step, each at its own position: the CPU backend's batched step (sessions
// that generate at the same time). Each sequence goes through exactly the kernel calls of a
// one-thread batch-1 step (Run with both parts, the same row ranges, the same order of partial
// sums), so its logits are the same bits whether it runs alone or batched, with any company. What
// changes is the loop order: every product runs block by block (16 weight rows, or 128 outputs of
// a transposed matrix, boundaries where the whole call would put them) and every sequence of a
// group uses a block while it is still in L1, so a group reads the weights once per step instead
// of once per sequence. One group per core, in parallel: on two cores the second group runs on
// the batch-1 team's worker thread, which spins between steps (measured in one process,
// alternating: 2 sessions 117 vs 157 us a step through the thread pool, 32 sessions 1,187 vs 1,270;
// built-in model 21 vs 36 and 315 vs 332), and on the pool only when the team is busy.
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;

namespace Palm.Inference.Cpu;

internal sealed partial class FastCpuDecoder
{
    private const int RowBlock = 16, OutChunk = 128;
    private readonly ThreadLocal<List<Scratch>> _groupScratch = new(() => []);
    private long _teamManySteps;

    /// <summary>Batched steps whose second group ran on the team's worker (tests check it ran).</summary>
    internal long TeamManySteps => Interlocked.Read(ref _teamManySteps);

    /// <summary>
    /// One token for each of <paramref name="states"/> (batch-1 sets, each at its own position);
    /// logits (B, V). Each sequence's logits are bit-identical to a batch-1 <see cref="Step(ReadOnlySpan{int}, AodStateSet, Span{float})"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Counts that disagree, a set that is not batch-1 or not of this model, or a short logits span.</exception>
    public unsafe void StepMany(ReadOnlySpan<int> tokens, IReadOnlyList<AodStateSet> states, Span<float> logits)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int B = states.Count, V = _c.VocabSize;
        if (tokens.Length != B) throw new ArgumentException($"expected {B} tokens, got {tokens.Length}", nameof(tokens));
        if (logits.Length < (long)B * V) throw new ArgumentException($"logits must hold B*V = {(long)B * V} floats", nameof(logits));
        for (int b = 0; b < B; b++)
        {
            if ((uint)tokens[b] >= (uint)V) throw new ArgumentOutOfRangeException(nameof(tokens), $"token id {tokens[b]} outside [0, {V})");
            if (states[b].Batch != 1 || states[b].Config != _c) throw new ArgumentException($"state {b} is not a batch-1 state of this model", nameof(states));
        }
        if (B == 0) return;
        if (B == 1) { Step(tokens, states[0], logits[..V]); return; }
        int groups = Math.Min(B, Environment.ProcessorCount);
        fixed (int* pt = tokens) fixed (float* pl = logits)
        {
            if (groups == 1) RunGroup(0, B, pt, states, pl);
            else if (groups == 2 && _useTeam && Interlocked.CompareExchange(ref _teamBusy, 1, 0) == 0)
            {
                // The batch-1 team's worker takes the second half (no thread-pool hand-off).
                try
                {
                    _team ??= new DecodeTeam(this);
                    try { _team.RunMany(B / 2, B, pt, states, pl); _teamManySteps++; }
                    catch
                    {
                        // As in RunTeam: stopping the team releases a worker left at the barrier.
                        _team.Dispose();
                        _team = null;
                        throw;
                    }
                }
                finally { Volatile.Write(ref _teamBusy, 0); }
            }
            else RunGroupsOnPool(groups, B, pt, states, pl);
        }
        for (int b = 0; b < B; b++) states[b].Position++;
    }

    // The groups on the thread pool. A method of its own: the lambda's captures would otherwise
    // make every StepMany call allocate their closure, the team's path included.
    private unsafe void RunGroupsOnPool(int groups, int B, int* pt, IReadOnlyList<AodStateSet> states, float* pl)
    {
        nint it = (nint)pt, il = (nint)pl;
        Parallel.For(0, groups, g => RunGroup((int)((long)g * B / groups), (int)((long)(g + 1) * B / groups), (int*)it, states, (float*)il));
    }

    // Sequences [b0, b1): Run's steps for (0, Parts) on one thread, interleaved product by product.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private unsafe void RunGroup(int b0, int b1, int* tokens, IReadOnlyList<AodStateSet> states, float* logits)
    {
        var c = _c;
        int G = b1 - b0, C = c.NEmbd, D = c.DQkv, hd = c.HeadDim, V = c.VocabSize;
        var list = _groupScratch.Value!;
        while (list.Count < G) list.Add(new Scratch(c));
        var nnzU = G <= 64 ? stackalloc int[G] : new int[G];

        for (int g = 0; g < G; g++) BeginToken(list[g], states[b0 + g].Position, tokens[b0 + g]);
        for (int part = 0; part < Parts; part++) InputPartials(0, part, list, G, static s => s.Local);

        for (int app = 0; app < c.Applications; app++)
        {
            int l = c.BlockOfApplication(app);
            var bp = _w.Blocks[l];
            var qkvT = _qkvT[l];
            var projT = _projT[l];
            int par = app & 1;
            bool factorized = bp.Qkv.Factorized;
            int r1 = factorized ? bp.Qkv.W1!.Rows : 0;
            for (int g = 0; g < G; g++)
            {
                var s = list[g];
                var qkvIn = BlockInput(bp, s, app == 0 ? s.Local : s.Ex[(app - 1) & 1]);
                nnzU[g] = qkvT is null ? 0 : SparseMatVec.Nonzero(qkvIn, s.NzU);
            }
            var wQkv = factorized ? bp.Qkv.W2! : bp.Qkv.W!;
            bool ffn = bp.Up is not null;
            for (int part = 0; part < Parts; part++)
            {
                int j0 = _heads[part] * hd, j1 = _heads[part + 1] * hd, w = j1 - j0;
                if (w > 0)
                {
                    for (int seg = 0; seg < 3; seg++)
                    {
                        int row0 = seg * D + j0;
                        if (qkvT is not null)
                        {
                            for (int o = 0; o < w; o += OutChunk)
                            {
                                int n = Math.Min(OutChunk, w - o);
                                for (int g = 0; g < G; g++)
                                {
                                    var s = list[g];
                                    qkvT.MatVec(row0 + o, n, 0, factorized ? s.U.AsSpan(0, r1) : s.H, s.NzU.AsSpan(0, nnzU[g]), s.Qkv.AsSpan(row0 + o, n));
                                }
                            }
                        }
                        else if (factorized) Rows(wQkv, row0, w, list, G, static s => s.U, static s => s.Qkv, yOffset: row0);
                        else Rows(wQkv, row0, w, list, G, static s => s.H, static s => s.Qkv, yOffset: row0);
                    }
                    for (int g = 0; g < G; g++) MixHeads(list[g], states[b0 + g], app, 0, j0, w);
                }
                var wp = bp.Proj.Factorized ? bp.Proj.W1! : bp.Proj.W!;
                for (int g = 0; g < G; g++)
                {
                    var s = list[g];
                    var yIn = s.Y.AsSpan(j0, w);
                    var P = s.P[par][part].AsSpan(0, wp.Rows);
                    if (projT is not null) projT.MatVec(0, wp.Rows, j0, yIn, s.NzY.AsSpan(0, SparseMatVec.Nonzero(yIn, s.NzY)), P);
                    else wp.MatVecCols(j0, w, yIn, P);
                }
                // The FFN (absent from the presets) runs sequence by sequence: Run's calls.
                if (ffn) for (int g = 0; g < G; g++) FfnPart(list[g], bp, part, list[g].P2[par][part]);
            }

            // Run's phase B: each part's channels, the second factors' products block by block.
            for (int g = 0; g < G; g++) SumPartials(list[g], bp, list[g].P[par], list[g].P2[par]);
            for (int part = 0; part < Parts; part++)
            {
                int c0 = _chan[part], cw = _chan[part + 1] - c0;
                if (cw > 0)
                {
                    if (bp.Proj.Factorized)
                    {
                        Rows(bp.Proj.W2!, c0, cw, list, G, static s => s.U2, static s => s.O, yOffset: c0, xLength: bp.Proj.W1!.Rows);
                        Rows(bp.Proj.W2!, C + c0, cw, list, G, static s => s.U2, static s => s.O, yOffset: C + c0, xLength: bp.Proj.W1!.Rows);
                    }
                    if (ffn && bp.Down!.Factorized) Rows(bp.Down.W2!, c0, cw, list, G, static s => s.Ud, static s => s.F, yOffset: c0, xLength: bp.Down.W1!.Rows);
                    for (int g = 0; g < G; g++) ResidualGlue(list[g], bp, c0, cw, list[g].P2[par]);
                }
                InputPartials(app + 1, part, list, G, par == 0 ? static s => s.Ex[0] : static s => s.Ex[1]);
            }
        }

        // The head's input and the unembedding, the vocabulary rows cut into Run's parts.
        var un = _w.Unembed;
        for (int g = 0; g < G; g++) HeadInput(list[g], list[g].Ex[(c.Applications - 1) & 1]);
        var wUn = un.Factorized ? un.W2! : un.W!;
        int inLength = un.Factorized ? un.W1!.Rows : C;
        for (int part = 0; part < Parts; part++)
        {
            int v0 = _vocab[part], v1 = _vocab[part + 1];
            for (int i = v0; i < v1; i += RowBlock)
            {
                int n = Math.Min(RowBlock, v1 - i);
                // The tail of a part runs as one call, as the whole-range call would take it.
                if (v1 - i < 2 * RowBlock) n = v1 - i;
                for (int g = 0; g < G; g++)
                {
                    ReadOnlySpan<float> x = un.Factorized ? list[g].U.AsSpan(0, inLength) : list[g].Xf;
                    wUn.MatVecRows(i, n, x, new Span<float>(logits + (long)(b0 + g) * V + i, n));
                }
                if (n > RowBlock) break;
            }
        }
    }

    // InputPartial for every sequence g, the input factor's product block by block (Rows' blocks of
    // the whole MatVecCols call).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void InputPartials(int app, int part, List<Scratch> list, int G, Func<Scratch, Exchange> ex)
    {
        int c0 = _chan[part], cw = _chan[part + 1] - c0;
        if (InputFactor(app) is { } w1)
        {
            int n = w1.Rows;
            for (int i = 0; i < n; i += RowBlock)
            {
                int nb = n - i < 2 * RowBlock ? n - i : RowBlock;
                for (int g = 0; g < G; g++)
                    w1.MatVecBlock(i, nb, c0, cw, list[g].X.AsSpan(c0, cw), ex(list[g]).PU[part].AsSpan(i, nb));
                if (nb > RowBlock) break;
            }
        }
        for (int g = 0; g < G; g++) InputChannels(app, list[g].X, part, ex(list[g]));
    }

    // y_g[yOffset + i] = (rows [row0, row0 + n) of m) · x_g for every sequence g, 16 rows at a
    // time: the blocks of one whole MatVecRows(row0, n) call, the last block taking the tail
    // (fewer than 32 rows) so that the 4-row and single-row passes cover the same rows as there.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Rows(CpuMatrix m, int row0, int n, List<Scratch> list, int G, Func<Scratch, float[]> x, Func<Scratch, float[]> y,
        int yOffset = 0, int xLength = -1)
    {
        int k = xLength < 0 ? m.Cols : xLength;
        for (int i = 0; i < n; i += RowBlock)
        {
            int nb = n - i < 2 * RowBlock ? n - i : RowBlock;
            for (int g = 0; g < G; g++)
                m.MatVecRows(row0 + i, nb, x(list[g]).AsSpan(0, k), y(list[g]).AsSpan(yOffset + i, nb));
            if (nb > RowBlock) break;
        }
    }
}
