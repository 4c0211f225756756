// A packed, register-blocked fp32 GEMM, C(M, N) (+)= Σ_k A(i, k)·B(k, j), with A and B given by
// strides so that A·Bᵀ (linears), A·B (input gradients) and Aᵀ·B (weight gradients) all run
// without materialising a transpose.
//
// GotoBLAS structure: B is packed once per call into panels of NR columns stored k-major; each
// job packs its own MC x KC tile of A into micro-panels of MR rows (also k-major), so the
// micro-kernel reads both operands with unit stride: per k it loads NR/W vectors of B and
// broadcasts MR values of A into MR·NR/W accumulators that live in registers for the whole
// k block. The A tile (≤ 128 x 256 floats) stays in L2 while one B micro-panel (KC x NR) stays
// in L1 and is reused by every row micro-tile.
//
// Kernels are chosen at run time: AVX-512 (8 x 32, 16 zmm accumulators), AVX2+FMA (6 x 16,
// 12 ymm accumulators, the classic Haswell shape) and a portable Vector128 kernel (4 x 8) that
// is correct everywhere (scalar software fallback where Vector128 is not accelerated).
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using X86 = System.Runtime.Intrinsics.X86;

namespace Palm.Inference.Cpu;

/// <summary>Micro-kernel families of <see cref="Gemm"/>.</summary>
internal enum GemmIsa
{
    /// <summary>Vector128 (SSE/NEON, or software), MR x NR = 4 x 8.</summary>
    Portable128,
    /// <summary>Vector256 with FMA, 6 x 16.</summary>
    Avx2,
    /// <summary>Vector512, 8 x 32.</summary>
    Avx512,
}

internal static class Gemm
{
    private const int KC = 256;                // k block: one B micro-panel (KC x NR) stays in L1
    private const int MaxMC = 128;             // rows of the A tile kept in L2
    // Below this many multiply-adds a call stays on the calling thread: a Parallel.For hand-off
    // costs ~10-30 µs, and one core does 4 M multiply-adds in ~40-80 µs. Measured on the 2-vCPU
    // development VM, a 32-token `small` prefill (GEMMs of 0.5-3 M multiply-adds): 2.3-3.3 ms with
    // the old 0.5 M threshold, 1.6-1.7 ms serial (and steadier: the second vCPU comes and goes).
    internal const long SerialBelow = 1L << 22;

    /// <summary>Always true: the portable kernel covers machines without AVX.</summary>
    public static bool Supported => true;

    /// <summary>The fastest kernel family this machine runs.</summary>
    public static GemmIsa Best { get; } =
        Vector512.IsHardwareAccelerated ? GemmIsa.Avx512
        : Vector256.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Fma.IsSupported ? GemmIsa.Avx2
        : GemmIsa.Portable128;

    /// <summary>C(M, N) (+)= A(M, K) · B(N, K)ᵀ.</summary>
    public static unsafe void MatMulABt(float* a, float* b, float* c, int m, int n, int k, bool acc, bool parallel) =>
        Multiply(a, k, 1, b, k, 1, c, m, n, k, acc, parallel);

    /// <summary>C(M, N) (+)= A(M, K) · B(K, N).</summary>
    public static unsafe void MatMulAB(float* a, float* b, float* c, int m, int n, int k, bool acc, bool parallel) =>
        Multiply(a, k, 1, b, 1, n, c, m, n, k, acc, parallel);

    /// <summary>C(M, N) (+)= A(K, M)ᵀ · B(K, N).</summary>
    public static unsafe void MatMulAtB(float* a, float* b, float* c, int m, int n, int k, bool acc, bool parallel) =>
        Multiply(a, 1, m, b, 1, n, c, m, n, k, acc, parallel);

    /// <summary>
    /// C(M, N) (+)= Σ_k A(i, k)·B(k, j) where A(i, k) = a[i·aRow + k·aK] and B(k, j) = b[j·bCol + k·bK];
    /// C is row-major with leading dimension N.
    /// </summary>
    public static unsafe void Multiply(float* a, int aRow, int aK, float* b, int bCol, int bK, float* c, int m, int n, int k, bool acc, bool parallel) =>
        Multiply(Best, a, aRow, aK, b, bCol, bK, c, m, n, k, acc, parallel);

    /// <summary>As <see cref="Multiply(float*, int, int, float*, int, int, float*, int, int, int, bool, bool)"/> with an explicit kernel family (tests run each one).</summary>
    public static unsafe void Multiply(GemmIsa isa, float* a, int aRow, int aK, float* b, int bCol, int bK, float* c, int m, int n, int k, bool acc, bool parallel)
    {
        if (m <= 0 || n <= 0) return;
        if (k <= 0)
        {
            if (!acc) for (long i = 0; i < (long)m * n; i++) c[i] = 0;
            return;
        }
        if (isa == GemmIsa.Avx512 && !Vector512.IsHardwareAccelerated) isa = GemmIsa.Avx2;
        if (isa == GemmIsa.Avx2 && !(Vector256.IsHardwareAccelerated && System.Runtime.Intrinsics.X86.Fma.IsSupported)) isa = GemmIsa.Portable128;
        var (mr, nr) = isa switch { GemmIsa.Avx512 => (8, 32), GemmIsa.Avx2 => (6, 16), _ => (4, 8) };
        int workers = Environment.ProcessorCount;
        if ((long)m * n * k < SerialBelow) parallel = false;
        if (workers < 2) parallel = false;

        int panels = (n + nr - 1) / nr;
        long packedLen = (long)panels * k * nr;
        float* bp = Buffers.B(packedLen);
        var call = new Call
        {
            Isa = isa, Mr = mr, Nr = nr, A = a, ARow = aRow, AK = aK, B = b, BCol = bCol, BK = bK,
            Packed = bp, C = c, M = m, N = n, K = k, Acc = acc, Panels = panels,
        };

        // Jobs: row chunks of at most MaxMC rows (whole micro-tiles), and when there are too few
        // of them to keep every core busy, groups of B panels. ~4 jobs per core absorbs the
        // preemption of a shared machine without repacking A too often.
        int targetJobs = parallel ? 4 * workers : 1;
        int mcMax = MaxMC / mr * mr;
        int rowChunk = Math.Min(mcMax, RoundUp((m + targetJobs - 1) / targetJobs, mr));
        int rowJobs = (m + rowChunk - 1) / rowChunk;
        int groups = Math.Clamp((targetJobs + rowJobs - 1) / rowJobs, 1, panels);
        call.RowChunk = rowChunk; call.Groups = groups;
        int jobs = rowJobs * groups;

        if (parallel && (long)n * k >= 1 << 15)
        {
            int packJobs = Math.Min(panels, 2 * workers);
            Parallel.For(0, packJobs, pj =>
            {
                int p0 = (int)((long)panels * pj / packJobs), p1 = (int)((long)panels * (pj + 1) / packJobs);
                for (int p = p0; p < p1; p++) call.PackB(p);
            });
        }
        else for (int p = 0; p < panels; p++) call.PackB(p);

        if (parallel && jobs > 1) Parallel.For(0, jobs, call.Job);
        else for (int j = 0; j < jobs; j++) call.Job(j);
    }

    private static int RoundUp(int x, int m) => Math.Max(m, (x + m - 1) / m * m);

    // Per-thread 64-byte-aligned packing buffers, grown on demand and kept: no allocation per
    // call once warm. B belongs to the calling thread for the duration of a call; A to the thread
    // running a job (a job never re-enters Gemm, so the two never alias).
    private static unsafe class Buffers
    {
        [ThreadStatic] private static Holder? s_a, s_b;

        public static float* A(long floats) => (s_a ??= new Holder()).Get(floats);
        public static float* B(long floats) => (s_b ??= new Holder()).Get(floats);

        private sealed class Holder
        {
            private float* _p;
            private long _len;
            public float* Get(long floats)
            {
                if (floats > _len)
                {
                    if (_p != null) NativeMemory.AlignedFree(_p);
                    _len = Math.Max(floats, _len * 2);
                    _p = (float*)NativeMemory.AlignedAlloc((nuint)(_len * sizeof(float)), 64);
                }
                return _p;
            }
            ~Holder() { if (_p != null) NativeMemory.AlignedFree(_p); }
        }
    }

    private sealed unsafe class Call
    {
        public GemmIsa Isa;
        public int Mr, Nr, ARow, AK, BCol, BK, M, N, K, Panels, RowChunk, Groups;
        public float* A, B, Packed, C;
        public bool Acc;

        // Panel p holds columns p*NR .. p*NR+NR-1 of C as [kk][NR], zero-padded past column N.
        // Compiled optimised from the first call, as PackA and Job: unoptimised code does not
        // inline the vector transposes (a first reply's prompt after start-up took 8-10 ms instead
        // of 2-3 until the tiering caught up).
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void PackB(int p)
        {
            int nr = Nr, k = K;
            float* dst = Packed + (long)p * k * nr;
            int c0 = p * nr, width = Math.Min(nr, N - c0);
            if (BCol == 1 && width == nr)
            {
                // B is (K, N) row-major: each k contributes NR contiguous floats.
                for (int kk = 0; kk < k; kk++)
                {
                    float* src = B + (long)kk * BK + c0;
                    float* d = dst + (long)kk * nr;
                    for (int j = 0; j < nr; j += 8) Vector256.Store(Vector256.Load(src + j), d + j);
                }
                return;
            }
            if (BK == 1 && width == nr && nr % 8 == 0 && System.Runtime.Intrinsics.X86.Avx.IsSupported)
            {
                // B rows are contiguous in k (A·Bᵀ, every linear's weight): 8x8 register
                // transposes, as PackA's. The strided scalar copy below was ~30 % of a 32-token
                // prefill, more than the products, since a short prompt repacks every weight.
                float* src0 = B + (long)c0 * BCol;
                int kk = 0;
                for (; kk + 8 <= k; kk += 8)
                    for (int j0 = 0; j0 < nr; j0 += 8) Transpose8x8(src0 + (long)j0 * BCol + kk, BCol, dst + (long)kk * nr + j0, nr);
                for (; kk < k; kk++)
                    for (int jj = 0; jj < nr; jj++) dst[(long)kk * nr + jj] = src0[(long)jj * BCol + kk];
                return;
            }
            if (BK == 1 && width == nr)
            {
                // B rows are contiguous in k (A·Bᵀ): read each column's k run, write it NR-strided.
                float* src0 = B + (long)c0 * BCol;
                for (int jj = 0; jj < nr; jj++)
                {
                    float* src = src0 + (long)jj * BCol;
                    for (int kk = 0; kk < k; kk++) dst[(long)kk * nr + jj] = src[kk];
                }
                return;
            }
            for (int jj = 0; jj < nr; jj++)
            {
                if (jj < width)
                {
                    float* src = B + (long)(c0 + jj) * BCol;
                    for (int kk = 0; kk < k; kk++) dst[(long)kk * nr + jj] = src[(long)kk * BK];
                }
                else for (int kk = 0; kk < k; kk++) dst[(long)kk * nr + jj] = 0;
            }
        }

        // Rows i0..i0+rows-1 (rows ≤ MR), k0..k0+kl-1 into [kk][MR], zero-padded past the last row.
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        private void PackA(float* dst, int i0, int rows, int k0, int kl)
        {
            int mr = Mr;
            if (AK != 1 && rows == mr && ARow == 1)
            {
                // Aᵀ layout: MR consecutive rows of A are contiguous at each k.
                if (mr == 8)
                    for (int kk = 0; kk < kl; kk++) Vector256.Store(Vector256.Load(A + (long)(k0 + kk) * AK + i0), dst + kk * 8);
                else
                    for (int kk = 0; kk < kl; kk++)
                    {
                        float* src = A + (long)(k0 + kk) * AK + i0;
                        float* d = dst + kk * mr;
                        for (int r = 0; r < mr; r++) d[r] = src[r];
                    }
                return;
            }
            if (AK == 1 && mr == 8 && rows == 8 && System.Runtime.Intrinsics.X86.Avx.IsSupported)
            {
                // Row-major A into [kk][8]: 8x8 register transposes instead of strided scalar
                // stores (for the K = 4096 input gradient this was a third of the product's time).
                float* src = A + (long)i0 * ARow + k0;
                int kk = 0;
                for (; kk + 8 <= kl; kk += 8) Transpose8x8(src + kk, ARow, dst + kk * 8, 8);
                for (; kk < kl; kk++)
                    for (int r = 0; r < 8; r++) dst[kk * 8 + r] = src[(long)r * ARow + kk];
                return;
            }
            for (int r = 0; r < mr; r++)
            {
                if (r < rows)
                {
                    float* src = A + (long)(i0 + r) * ARow + (long)k0 * AK;
                    if (AK == 1) for (int kk = 0; kk < kl; kk++) dst[kk * mr + r] = src[kk];
                    else for (int kk = 0; kk < kl; kk++) dst[kk * mr + r] = src[(long)kk * AK];
                }
                else for (int kk = 0; kk < kl; kk++) dst[kk * mr + r] = 0;
            }
        }

        // dst[c·ldd + r] = src[r·ld + c] for an 8x8 block.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private static void Transpose8x8(float* src, int ld, float* dst, int ldd)
        {
            var r0 = Vector256.Load(src); var r1 = Vector256.Load(src + ld);
            var r2 = Vector256.Load(src + 2L * ld); var r3 = Vector256.Load(src + 3L * ld);
            var r4 = Vector256.Load(src + 4L * ld); var r5 = Vector256.Load(src + 5L * ld);
            var r6 = Vector256.Load(src + 6L * ld); var r7 = Vector256.Load(src + 7L * ld);
            var t0 = X86.Avx.UnpackLow(r0, r1); var t1 = X86.Avx.UnpackHigh(r0, r1);
            var t2 = X86.Avx.UnpackLow(r2, r3); var t3 = X86.Avx.UnpackHigh(r2, r3);
            var t4 = X86.Avx.UnpackLow(r4, r5); var t5 = X86.Avx.UnpackHigh(r4, r5);
            var t6 = X86.Avx.UnpackLow(r6, r7); var t7 = X86.Avx.UnpackHigh(r6, r7);
            var u0 = X86.Avx.Shuffle(t0, t2, 0x44); var u1 = X86.Avx.Shuffle(t0, t2, 0xEE);
            var u2 = X86.Avx.Shuffle(t1, t3, 0x44); var u3 = X86.Avx.Shuffle(t1, t3, 0xEE);
            var u4 = X86.Avx.Shuffle(t4, t6, 0x44); var u5 = X86.Avx.Shuffle(t4, t6, 0xEE);
            var u6 = X86.Avx.Shuffle(t5, t7, 0x44); var u7 = X86.Avx.Shuffle(t5, t7, 0xEE);
            X86.Avx.Permute2x128(u0, u4, 0x20).Store(dst);
            X86.Avx.Permute2x128(u1, u5, 0x20).Store(dst + ldd);
            X86.Avx.Permute2x128(u2, u6, 0x20).Store(dst + 2 * ldd);
            X86.Avx.Permute2x128(u3, u7, 0x20).Store(dst + 3 * ldd);
            X86.Avx.Permute2x128(u0, u4, 0x31).Store(dst + 4 * ldd);
            X86.Avx.Permute2x128(u1, u5, 0x31).Store(dst + 5 * ldd);
            X86.Avx.Permute2x128(u2, u6, 0x31).Store(dst + 6 * ldd);
            X86.Avx.Permute2x128(u3, u7, 0x31).Store(dst + 7 * ldd);
        }

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Job(int j)
        {
            int rj = j / Groups, g = j % Groups;
            int r0 = rj * RowChunk, r1 = Math.Min(M, r0 + RowChunk);
            int p0 = (int)((long)Panels * g / Groups), p1 = (int)((long)Panels * (g + 1) / Groups);
            int mr = Mr, nr = Nr;
            int tiles = (r1 - r0 + mr - 1) / mr;
            float* ap = Buffers.A((long)tiles * mr * KC);
            for (int k0 = 0; k0 < K; k0 += KC)
            {
                int kl = Math.Min(KC, K - k0);
                bool acc = Acc || k0 > 0;
                for (int t = 0; t < tiles; t++)
                {
                    int i = r0 + t * mr;
                    PackA(ap + (long)t * mr * kl, i, Math.Min(mr, r1 - i), k0, kl);
                }
                for (int p = p0; p < p1; p++)
                {
                    float* panel = Packed + (long)p * K * nr + (long)k0 * nr;
                    int c0 = p * nr, width = Math.Min(nr, N - c0);
                    for (int t = 0; t < tiles; t++)
                    {
                        int i = r0 + t * mr;
                        int rows = Math.Min(mr, r1 - i);
                        float* at = ap + (long)t * mr * kl;
                        float* ct = C + (long)i * N + c0;
                        switch (Isa)
                        {
                            case GemmIsa.Avx512: Kernel8x32(at, panel, kl, ct, N, rows, width, acc); break;
                            case GemmIsa.Avx2: Kernel6x16(at, panel, kl, ct, N, rows, width, acc); break;
                            default: Kernel4x8(at, panel, kl, ct, N, rows, width, acc); break;
                        }
                    }
                }
            }
        }
    }

    // ---- micro-kernels ------------------------------------------------------------------------
    // ap: [k][MR] packed A, bp: [k][NR] packed B. A full tile is written straight to C; a ragged
    // one (rows < MR or cols < NR) goes through a stack tile so nothing outside C is touched.

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel8x32(float* ap, float* bp, int k, float* c, int ldc, int rows, int cols, bool acc)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default,
                         c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default;
        for (int kk = 0; kk < k; kk++)
        {
            var b0 = Vector512.Load(bp);
            var b1 = Vector512.Load(bp + 16);
            var v = Vector512.Create(ap[0]); c00 = Vector512.FusedMultiplyAdd(v, b0, c00); c01 = Vector512.FusedMultiplyAdd(v, b1, c01);
            v = Vector512.Create(ap[1]); c10 = Vector512.FusedMultiplyAdd(v, b0, c10); c11 = Vector512.FusedMultiplyAdd(v, b1, c11);
            v = Vector512.Create(ap[2]); c20 = Vector512.FusedMultiplyAdd(v, b0, c20); c21 = Vector512.FusedMultiplyAdd(v, b1, c21);
            v = Vector512.Create(ap[3]); c30 = Vector512.FusedMultiplyAdd(v, b0, c30); c31 = Vector512.FusedMultiplyAdd(v, b1, c31);
            v = Vector512.Create(ap[4]); c40 = Vector512.FusedMultiplyAdd(v, b0, c40); c41 = Vector512.FusedMultiplyAdd(v, b1, c41);
            v = Vector512.Create(ap[5]); c50 = Vector512.FusedMultiplyAdd(v, b0, c50); c51 = Vector512.FusedMultiplyAdd(v, b1, c51);
            v = Vector512.Create(ap[6]); c60 = Vector512.FusedMultiplyAdd(v, b0, c60); c61 = Vector512.FusedMultiplyAdd(v, b1, c61);
            v = Vector512.Create(ap[7]); c70 = Vector512.FusedMultiplyAdd(v, b0, c70); c71 = Vector512.FusedMultiplyAdd(v, b1, c71);
            ap += 8; bp += 32;
        }
        if (rows == 8 && cols == 32)
        {
            Store(c, acc, c00, c01); Store(c + ldc, acc, c10, c11); Store(c + 2 * ldc, acc, c20, c21); Store(c + 3 * ldc, acc, c30, c31);
            Store(c + 4 * ldc, acc, c40, c41); Store(c + 5 * ldc, acc, c50, c51); Store(c + 6 * ldc, acc, c60, c61); Store(c + 7 * ldc, acc, c70, c71);
            return;
        }
        float* t = stackalloc float[8 * 32];
        c00.Store(t); c01.Store(t + 16); c10.Store(t + 32); c11.Store(t + 48); c20.Store(t + 64); c21.Store(t + 80); c30.Store(t + 96); c31.Store(t + 112);
        c40.Store(t + 128); c41.Store(t + 144); c50.Store(t + 160); c51.Store(t + 176); c60.Store(t + 192); c61.Store(t + 208); c70.Store(t + 224); c71.Store(t + 240);
        StorePartial(t, 32, c, ldc, rows, cols, acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(float* c, bool acc, Vector512<float> lo, Vector512<float> hi)
    {
        if (acc) { lo += Vector512.Load(c); hi += Vector512.Load(c + 16); }
        lo.Store(c); hi.Store(c + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel6x16(float* ap, float* bp, int k, float* c, int ldc, int rows, int cols, bool acc)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default,
                         c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        for (int kk = 0; kk < k; kk++)
        {
            var b0 = Vector256.Load(bp);
            var b1 = Vector256.Load(bp + 8);
            var v = Vector256.Create(ap[0]); c00 = Vector256.FusedMultiplyAdd(v, b0, c00); c01 = Vector256.FusedMultiplyAdd(v, b1, c01);
            v = Vector256.Create(ap[1]); c10 = Vector256.FusedMultiplyAdd(v, b0, c10); c11 = Vector256.FusedMultiplyAdd(v, b1, c11);
            v = Vector256.Create(ap[2]); c20 = Vector256.FusedMultiplyAdd(v, b0, c20); c21 = Vector256.FusedMultiplyAdd(v, b1, c21);
            v = Vector256.Create(ap[3]); c30 = Vector256.FusedMultiplyAdd(v, b0, c30); c31 = Vector256.FusedMultiplyAdd(v, b1, c31);
            v = Vector256.Create(ap[4]); c40 = Vector256.FusedMultiplyAdd(v, b0, c40); c41 = Vector256.FusedMultiplyAdd(v, b1, c41);
            v = Vector256.Create(ap[5]); c50 = Vector256.FusedMultiplyAdd(v, b0, c50); c51 = Vector256.FusedMultiplyAdd(v, b1, c51);
            ap += 6; bp += 16;
        }
        if (rows == 6 && cols == 16)
        {
            Store(c, acc, c00, c01); Store(c + ldc, acc, c10, c11); Store(c + 2 * ldc, acc, c20, c21);
            Store(c + 3 * ldc, acc, c30, c31); Store(c + 4 * ldc, acc, c40, c41); Store(c + 5 * ldc, acc, c50, c51);
            return;
        }
        float* t = stackalloc float[6 * 16];
        c00.Store(t); c01.Store(t + 8); c10.Store(t + 16); c11.Store(t + 24); c20.Store(t + 32); c21.Store(t + 40);
        c30.Store(t + 48); c31.Store(t + 56); c40.Store(t + 64); c41.Store(t + 72); c50.Store(t + 80); c51.Store(t + 88);
        StorePartial(t, 16, c, ldc, rows, cols, acc);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(float* c, bool acc, Vector256<float> lo, Vector256<float> hi)
    {
        if (acc) { lo += Vector256.Load(c); hi += Vector256.Load(c + 8); }
        lo.Store(c); hi.Store(c + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static unsafe void Kernel4x8(float* ap, float* bp, int k, float* c, int ldc, int rows, int cols, bool acc)
    {
        Vector128<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        for (int kk = 0; kk < k; kk++)
        {
            var b0 = Vector128.Load(bp);
            var b1 = Vector128.Load(bp + 4);
            var v = Vector128.Create(ap[0]); c00 = Vector128.MultiplyAddEstimate(v, b0, c00); c01 = Vector128.MultiplyAddEstimate(v, b1, c01);
            v = Vector128.Create(ap[1]); c10 = Vector128.MultiplyAddEstimate(v, b0, c10); c11 = Vector128.MultiplyAddEstimate(v, b1, c11);
            v = Vector128.Create(ap[2]); c20 = Vector128.MultiplyAddEstimate(v, b0, c20); c21 = Vector128.MultiplyAddEstimate(v, b1, c21);
            v = Vector128.Create(ap[3]); c30 = Vector128.MultiplyAddEstimate(v, b0, c30); c31 = Vector128.MultiplyAddEstimate(v, b1, c31);
            ap += 4; bp += 8;
        }
        float* t = stackalloc float[4 * 8];
        c00.Store(t); c01.Store(t + 4); c10.Store(t + 8); c11.Store(t + 12); c20.Store(t + 16); c21.Store(t + 20); c30.Store(t + 24); c31.Store(t + 28);
        StorePartial(t, 8, c, ldc, rows, cols, acc);
    }

    private static unsafe void StorePartial(float* t, int ldt, float* c, int ldc, int rows, int cols, bool acc)
    {
        for (int r = 0; r < rows; r++)
        {
            float* cr = c + (long)r * ldc, tr = t + r * ldt;
            if (acc) for (int j = 0; j < cols; j++) cr[j] += tr[j];
            else for (int j = 0; j < cols; j++) cr[j] = tr[j];
        }
    }
}
