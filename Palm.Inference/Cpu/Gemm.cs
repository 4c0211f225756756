// A packed, register-blocked fp32 GEMM, C(M, N) (+)= Σ_k A(i, k)·B(k, j), with A and B given by
// strides so that A·Bᵀ (linears), A·B (input gradients) and Aᵀ·B (weight gradients) all run
// without materialising a transpose. B is packed into panels of 16 columns stored k-major, so the micro-kernel streams one panel
// with two 8-wide loads per k while broadcasting four A values: 8 FMAs per 2 loads + 4
// broadcasts, instead of the 4 FMAs per 5 loads of a dot-product formulation.
using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Inference.Cpu;

internal static class Gemm
{
    private const int NR = 16;   // panel width: two Vector256<float>
    private const int MR = 4;    // rows per micro-kernel
    private const int MC = 64;   // rows per cache tile (A tile stays in L2 while panels stream)

    /// <summary>True when the packed kernel applies on this machine.</summary>
    public static bool Supported => Vector256.IsHardwareAccelerated;

    private const int KC = 256;  // k block: a 16 x 256 panel slice (16 KiB) stays in L1

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
    /// C(M, N) (+)= Σ_k A(i, k)·B(k, j) where A(i, k) = a[i·aRow + k·aK] and B(k, j) = b[j·bCol + k·bK].
    /// </summary>
    public static unsafe void Multiply(float* a, int aRow, int aK, float* b, int bCol, int bK, float* c, int m, int n, int k, bool acc, bool parallel)
    {
        if (k == 0)
        {
            if (!acc) for (long i = 0; i < (long)m * n; i++) c[i] = 0;
            return;
        }
        int panels = (n + NR - 1) / NR;
        int packedLen = panels * k * NR;
        var packed = ArrayPool<float>.Shared.Rent(packedLen);
        try
        {
            fixed (float* bp = packed)
            {
                nint ibp = (nint)bp, ia = (nint)a, ib = (nint)b, ic = (nint)c;
                if (parallel) Parallel.For(0, panels, p => Pack((float*)ib, bCol, bK, (float*)ibp, p, n, k));
                else for (int p = 0; p < panels; p++) Pack(b, bCol, bK, bp, p, n, k);

                int rowTiles = (m + MC - 1) / MC;
                // Jobs are (row tile, panel group); groups of panels keep jobs coarse enough.
                int groups = Math.Max(1, Math.Min(panels, parallel ? Math.Max(1, 8 * Environment.ProcessorCount / rowTiles) : 1));
                int jobs = rowTiles * groups;
                void Job(int j)
                {
                    int rt = j / groups, g = j % groups;
                    int r0 = rt * MC, r1 = Math.Min(m, r0 + MC);
                    int p0 = (int)((long)panels * g / groups), p1 = (int)((long)panels * (g + 1) / groups);
                    for (int k0 = 0; k0 < k; k0 += KC)
                    {
                        int kl = Math.Min(KC, k - k0);
                        bool accBlock = acc || k0 > 0;
                        for (int p = p0; p < p1; p++)
                        {
                            float* panel = (float*)ibp + (long)p * k * NR + (long)k0 * NR;
                            int c0 = p * NR, width = Math.Min(NR, n - c0);
                            int i = r0;
                            for (; i + MR <= r1; i += MR)
                                Kernel4((float*)ia + (long)i * aRow + (long)k0 * aK, aRow, aK, kl, panel, (float*)ic + (long)i * n + c0, n, width, accBlock);
                            for (; i < r1; i++)
                                Kernel1((float*)ia + (long)i * aRow + (long)k0 * aK, aK, kl, panel, (float*)ic + (long)i * n + c0, width, accBlock);
                        }
                    }
                }
                if (parallel && jobs > 1) Parallel.For(0, jobs, Job);
                else for (int j = 0; j < jobs; j++) Job(j);
            }
        }
        finally { ArrayPool<float>.Shared.Return(packed); }
    }

    // Panel p holds columns p*16 .. p*16+15 of C as [kk][16], zero-padded past column n.
    private static unsafe void Pack(float* b, int bCol, int bK, float* bp, int p, int n, int k)
    {
        float* dst = bp + (long)p * k * NR;
        int c0 = p * NR, width = Math.Min(NR, n - c0);
        if (bCol == 1 && width == NR)
        {
            // B is (K, N) row-major: each k contributes 16 contiguous floats.
            for (int kk = 0; kk < k; kk++) Vector256.Load(b + (long)kk * bK + c0).Store(dst + kk * NR);
            for (int kk = 0; kk < k; kk++) Vector256.Load(b + (long)kk * bK + c0 + 8).Store(dst + kk * NR + 8);
            return;
        }
        for (int jj = 0; jj < NR; jj++)
        {
            if (jj < width)
            {
                float* src = b + (long)(c0 + jj) * bCol;
                for (int kk = 0; kk < k; kk++) dst[kk * NR + jj] = src[(long)kk * bK];
            }
            else for (int kk = 0; kk < k; kk++) dst[kk * NR + jj] = 0;
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Kernel4(float* a, int aRow, int aK, int k, float* panel, float* c, int ldc, int width, bool acc)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default,
                         c20 = default, c21 = default, c30 = default, c31 = default;
        float* a0 = a, a1 = a + aRow, a2 = a + 2 * aRow, a3 = a + 3 * aRow;
        for (int kk = 0; kk < k; kk++)
        {
            long o = (long)kk * aK;
            var b0 = Vector256.Load(panel + kk * NR);
            var b1 = Vector256.Load(panel + kk * NR + 8);
            var v = Vector256.Create(a0[o]); c00 = Vector256.FusedMultiplyAdd(v, b0, c00); c01 = Vector256.FusedMultiplyAdd(v, b1, c01);
            v = Vector256.Create(a1[o]); c10 = Vector256.FusedMultiplyAdd(v, b0, c10); c11 = Vector256.FusedMultiplyAdd(v, b1, c11);
            v = Vector256.Create(a2[o]); c20 = Vector256.FusedMultiplyAdd(v, b0, c20); c21 = Vector256.FusedMultiplyAdd(v, b1, c21);
            v = Vector256.Create(a3[o]); c30 = Vector256.FusedMultiplyAdd(v, b0, c30); c31 = Vector256.FusedMultiplyAdd(v, b1, c31);
        }
        Store(c, width, acc, c00, c01);
        Store(c + ldc, width, acc, c10, c11);
        Store(c + 2 * ldc, width, acc, c20, c21);
        Store(c + 3 * ldc, width, acc, c30, c31);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Kernel1(float* a, int aK, int k, float* panel, float* c, int width, bool acc)
    {
        Vector256<float> c0 = default, c1 = default;
        for (int kk = 0; kk < k; kk++)
        {
            var v = Vector256.Create(a[(long)kk * aK]);
            c0 = Vector256.FusedMultiplyAdd(v, Vector256.Load(panel + kk * NR), c0);
            c1 = Vector256.FusedMultiplyAdd(v, Vector256.Load(panel + kk * NR + 8), c1);
        }
        Store(c, width, acc, c0, c1);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static unsafe void Store(float* c, int width, bool acc, Vector256<float> lo, Vector256<float> hi)
    {
        if (width == NR)
        {
            if (acc) { lo += Vector256.Load(c); hi += Vector256.Load(c + 8); }
            lo.Store(c); hi.Store(c + 8);
            return;
        }
        // Ragged last panel: scalar stores so nothing past column n is touched.
        float* tmp = stackalloc float[NR];
        lo.Store(tmp); hi.Store(tmp + 8);
        for (int j = 0; j < width; j++) c[j] = acc ? c[j] + tmp[j] : tmp[j];
    }
}
