// Vectorised per-(token, head) kernels of the AoD branch for the fast CPU path: QK-norm, RoPE and
// its transpose, the running-sum mix and its reverse, and the rmsnorm backward of one head. The
// readable forms are CpuOps.RmsNormRows / RopeInPlace / RopeBackwardInPlace and the loops in
// CpuReferenceModel.Aod and ReferenceBackward.AodBackward; the running sums stay in double as
// there. Vector paths need hd a multiple of 16 (RoPE halves of 8 lanes); other widths take
// scalar loops with the reference's arithmetic.
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Palm.Inference.Cpu.Fast;

internal static unsafe class FastAodKernels
{
    public static bool Vectorised(int hd) => Vector256.IsHardwareAccelerated && hd % 16 == 0;

    /// <summary>y (n) = x·s with s = 1/sqrt(mean(x²) + eps); returns s.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float RmsNorm(float* x, int n, float* y)
    {
        double ss = SumOfSquares(x, n);
        float s = (float)(1.0 / Math.Sqrt(ss / n + CpuOps.RmsEps));
        int j = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var sv = Vector256.Create(s);
            for (; j + 8 <= n; j += 8) Vector256.Store(Vector256.Load(x + j) * sv, y + j);
        }
        for (; j < n; j++) y[j] = x[j] * s;
        return s;
    }

    /// <summary>Σ x² (n): float partial sums per 64 elements added in double, as CpuOps.RmsNormRows.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double SumOfSquares(float* x, int n)
    {
        double ss = 0;
        if (n % 8 == 0 && Vector256.IsHardwareAccelerated)
        {
            for (int i0 = 0; i0 < n; i0 += 64)
            {
                var acc = Vector256<float>.Zero;
                int i1 = Math.Min(n, i0 + 64);
                for (int i = i0; i < i1; i += 8) { var v = Vector256.Load(x + i); acc = Vector256.FusedMultiplyAdd(v, v, acc); }
                ss += Vector256.Sum(acc);
            }
            return ss;
        }
        for (int i0 = 0; i0 < n; i0 += 64)
        {
            float part = 0;
            for (int i = i0; i < Math.Min(n, i0 + 64); i++) part += x[i] * x[i];
            ss += part;
        }
        return ss;
    }

    /// <summary>dst (hd) = rope(src) with cos/sin rows of hd/2; dst may be src.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Rope(float* src, float* cos, float* sin, int hd, float* dst)
    {
        int half = hd / 2, j = 0;
        if (half % 8 == 0 && Vector256.IsHardwareAccelerated)
        {
            for (; j < half; j += 8)
            {
                var a = Vector256.Load(src + j); var b = Vector256.Load(src + half + j);
                var c = Vector256.Load(cos + j); var s = Vector256.Load(sin + j);
                Vector256.Store(a * c + b * s, dst + j);
                Vector256.Store(-a * s + b * c, dst + half + j);
            }
            return;
        }
        for (; j < half; j++)
        {
            float a = src[j], b = src[half + j], c = cos[j], s = sin[j];
            dst[j] = a * c + b * s;
            dst[half + j] = -a * s + b * c;
        }
    }

    /// <summary>In place: the transpose rotation (backward of <see cref="Rope"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void RopeBackward(float* d, float* cos, float* sin, int hd)
    {
        int half = hd / 2, j = 0;
        if (half % 8 == 0 && Vector256.IsHardwareAccelerated)
        {
            for (; j < half; j += 8)
            {
                var da = Vector256.Load(d + j); var db = Vector256.Load(d + half + j);
                var c = Vector256.Load(cos + j); var s = Vector256.Load(sin + j);
                Vector256.Store(da * c - db * s, d + j);
                Vector256.Store(da * s + db * c, d + half + j);
            }
            return;
        }
        for (; j < half; j++)
        {
            float da = d[j], db = d[half + j], c = cos[j], s = sin[j];
            d[j] = da * c - db * s;
            d[half + j] = da * s + db * c;
        }
    }

    /// <summary>dx (n) = s·(dy − y·mean(dy·y)), or += with <paramref name="accumulate"/>: rmsnorm backward of one row or head.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void RmsNormBackward(float* y, float s, float* dy, int n, float* dx, bool accumulate = false)
    {
        int j = 0;
        if (n % 8 == 0 && Vector256.IsHardwareAccelerated)
        {
            var acc = Vector256<float>.Zero;
            for (; j < n; j += 8) acc = Vector256.FusedMultiplyAdd(Vector256.Load(dy + j), Vector256.Load(y + j), acc);
            float mean = Vector256.Sum(acc) / n;
            var mv = Vector256.Create(mean); var sv = Vector256.Create(s);
            if (accumulate)
                for (j = 0; j < n; j += 8) Vector256.Store(Vector256.Load(dx + j) + sv * (Vector256.Load(dy + j) - Vector256.Load(y + j) * mv), dx + j);
            else
                for (j = 0; j < n; j += 8) Vector256.Store(sv * (Vector256.Load(dy + j) - Vector256.Load(y + j) * mv), dx + j);
            return;
        }
        float dot = 0;
        for (j = 0; j < n; j++) dot += dy[j] * y[j];
        float m = dot / n;
        for (j = 0; j < n; j++) { float g = s * (dy[j] - y[j] * m); dx[j] = accumulate ? dx[j] + g : g; }
    }

    /// <summary>
    /// SwiGLU backward of one row: ab = [a (n) | b (n)], d (n) → dab = [d·silu(b) | d·a·silu'(b)] with
    /// silu'(b) = σ(b)·(1 + b·(1 − σ(b))). <paramref name="sig"/> is scratch of n floats.
    /// </summary>
    public static void SwiGluBackward(float* ab, float* d, int n, float* dab, float* sig)
    {
        System.Numerics.Tensors.TensorPrimitives.Sigmoid(new ReadOnlySpan<float>(ab + n, n), new Span<float>(sig, n));
        int j = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var one = Vector256.Create(1f);
            for (; j + 8 <= n; j += 8)
            {
                var a = Vector256.Load(ab + j); var b = Vector256.Load(ab + n + j);
                var s = Vector256.Load(sig + j); var dv = Vector256.Load(d + j);
                Vector256.Store(dv * (b * s), dab + j);
                Vector256.Store(dv * a * (s * (one + b * (one - s))), dab + n + j);
            }
        }
        for (; j < n; j++)
        {
            float a = ab[j], b = ab[n + j], s = sig[j];
            dab[j] = d[j] * (b * s);
            dab[n + j] = d[j] * a * (s * (1 + b * (1 - s)));
        }
    }

    /// <summary>
    /// One decoding step of one head, fused (hd a multiple of 16, <see cref="Vectorised"/>): q and k
    /// rms-normed and rotated, g = σ(k), the float state S += g·v (and Z += g for <c>mean</c>),
    /// y = relu(q)·S (/Z). The decoder's per-token AoD without a pass per operation. q and k are
    /// scratch: their contents afterwards are unspecified.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void DecodeStep(float* q, float* k, float* v, float* cos, float* sin, float* S, float* Z, float* y, int hd)
    {
        if (Vector512.IsHardwareAccelerated && hd % 32 == 0)
        {
            DecodeStep512(q, k, v, cos, sin, S, Z, y, hd);
            return;
        }
        RmsNorm(q, hd, q);
        RmsNorm(k, hd, k);
        Rope(q, cos, sin, hd, q);
        Rope(k, cos, sin, hd, k);
        for (int j = 0; j < hd; j += 8)
        {
            var g = FastMath.Sigmoid(Vector256.Load(k + j));
            var sv = Vector256.FusedMultiplyAdd(g, Vector256.Load(v + j), Vector256.Load(S + j));
            sv.Store(S + j);
            var yv = Vector256.Max(Vector256.Load(q + j), Vector256<float>.Zero) * sv;
            if (Z != null)
            {
                var zv = Vector256.Load(Z + j) + g;
                zv.Store(Z + j);
                yv /= zv;
            }
            yv.Store(y + j);
        }
    }

    // DecodeStep with 16 lanes (hd a multiple of 32, so RoPE's halves are whole vectors): the
    // normed and rotated q and k stay in registers, each pair of channels (j, j + hd/2) is
    // finished where it is rotated. The same arithmetic as the 8-lane path.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void DecodeStep512(float* q, float* k, float* v, float* cos, float* sin, float* S, float* Z, float* y, int hd)
    {
        var sq = Vector512.Create((float)(1.0 / Math.Sqrt(SumOfSquares(q, hd) / hd + CpuOps.RmsEps)));
        var sk = Vector512.Create((float)(1.0 / Math.Sqrt(SumOfSquares(k, hd) / hd + CpuOps.RmsEps)));
        int half = hd / 2;
        for (int j = 0; j < half; j += 16)
        {
            var c = Vector512.Load(cos + j); var s = Vector512.Load(sin + j);
            var qa = Vector512.Load(q + j) * sq; var qb = Vector512.Load(q + half + j) * sq;
            var ka = Vector512.Load(k + j) * sk; var kb = Vector512.Load(k + half + j) * sk;
            Mix(qa * c + qb * s, ka * c + kb * s, v + j, S + j, Z == null ? null : Z + j, y + j);
            Mix(-qa * s + qb * c, -ka * s + kb * c, v + half + j, S + half + j, Z == null ? null : Z + half + j, y + half + j);
        }

        static void Mix(Vector512<float> qr, Vector512<float> kr, float* v, float* S, float* Z, float* y)
        {
            var g = FastMath.Sigmoid(kr);
            var sv = Vector512.FusedMultiplyAdd(g, Vector512.Load(v), Vector512.Load(S));
            sv.Store(S);
            var yv = Vector512.Max(qr, Vector512<float>.Zero) * sv;
            if (Z != null)
            {
                var zv = Vector512.Load(Z) + g;
                zv.Store(Z);
                yv /= zv;
            }
            yv.Store(y);
        }
    }

    /// <summary>
    /// One token of the mix for hd channels: sRun += g·v, zRun += g (double), S, Z = their float
    /// values, y = relu(q)·S (/Z for the mean mix). <paramref name="Z"/> and <paramref name="zRun"/> are unused for the sum mix.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScanStep(float* g, float* v, float* q, double* sRun, double* zRun, float* S, float* Z, float* y, int hd, bool mean)
    {
        int j = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; j + 8 <= hd; j += 8)
            {
                var gv = Vector256.Load(g + j);
                var (g0, g1) = Vector256.Widen(gv);
                var (v0, v1) = Vector256.Widen(Vector256.Load(v + j));
                var s0 = Vector256.Load(sRun + j) + g0 * v0;
                var s1 = Vector256.Load(sRun + j + 4) + g1 * v1;
                s0.Store(sRun + j); s1.Store(sRun + j + 4);
                var sf = Vector256.Narrow(s0, s1);
                sf.Store(S + j);
                var rq = Vector256.Max(Vector256.Load(q + j), Vector256<float>.Zero);
                if (mean)
                {
                    var z0 = Vector256.Load(zRun + j) + g0;
                    var z1 = Vector256.Load(zRun + j + 4) + g1;
                    z0.Store(zRun + j); z1.Store(zRun + j + 4);
                    var zf = Vector256.Narrow(z0, z1);
                    zf.Store(Z + j);
                    Vector256.Store(rq * sf / zf, y + j);
                }
                else Vector256.Store(rq * sf, y + j);
            }
        }
        for (; j < hd; j++)
        {
            sRun[j] += (double)g[j] * v[j];
            float sj = (float)sRun[j];
            S[j] = sj;
            if (mean)
            {
                zRun[j] += g[j];
                float zj = (float)zRun[j];
                Z[j] = zj;
                y[j] = MathF.Max(q[j], 0) * sj / zj;
            }
            else y[j] = MathF.Max(q[j], 0) * sj;
        }
    }

    /// <summary>
    /// One token of the reverse scan for hd channels: given dy, accumulates the carried cS (and cZ)
    /// and writes dq (through relu, before RoPE), dv and dk (through the sigmoid gate, before RoPE).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ScanBackStep(float* q, float* s, float* z, float* dy, float* g, float* v, double* cS, double* cZ,
        float* dq, float* dv, float* dk, int hd, bool mean)
    {
        int j = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var zero = Vector256<float>.Zero; var one = Vector256.Create(1f);
            for (; j + 8 <= hd; j += 8)
            {
                var qv = Vector256.Load(q + j); var sv = Vector256.Load(s + j); var dyv = Vector256.Load(dy + j);
                var pos = Vector256.GreaterThan(qv, zero);
                var rq = Vector256.Max(qv, zero);
                var gv = Vector256.Load(g + j);
                var (g0, g1) = Vector256.Widen(gv);
                var (v0, v1) = Vector256.Widen(Vector256.Load(v + j));
                var (omg0, omg1) = Vector256.Widen(one - gv);
                Vector256<double> c0, c1, d0, d1;
                if (mean)
                {
                    var zv = Vector256.Load(z + j);
                    Vector256.Store(Vector256.ConditionalSelect(pos, dyv * sv / zv, zero), dq + j);
                    var (a0, a1) = Vector256.Widen(dyv * rq / zv);
                    c0 = Vector256.Load(cS + j) + a0; c1 = Vector256.Load(cS + j + 4) + a1;
                    var (dy0, dy1) = Vector256.Widen(dyv); var (rq0, rq1) = Vector256.Widen(rq);
                    var (s0, s1) = Vector256.Widen(sv); var (z0, z1) = Vector256.Widen(zv);
                    d0 = Vector256.Load(cZ + j) - dy0 * rq0 * s0 / (z0 * z0);
                    d1 = Vector256.Load(cZ + j + 4) - dy1 * rq1 * s1 / (z1 * z1);
                    d0.Store(cZ + j); d1.Store(cZ + j + 4);
                }
                else
                {
                    Vector256.Store(Vector256.ConditionalSelect(pos, dyv * sv, zero), dq + j);
                    var (a0, a1) = Vector256.Widen(dyv * rq);
                    c0 = Vector256.Load(cS + j) + a0; c1 = Vector256.Load(cS + j + 4) + a1;
                    d0 = d1 = Vector256<double>.Zero;
                }
                c0.Store(cS + j); c1.Store(cS + j + 4);
                Vector256.Store(Vector256.Narrow(c0 * g0, c1 * g1), dv + j);
                var dg0 = c0 * v0 + d0; var dg1 = c1 * v1 + d1;
                Vector256.Store(Vector256.Narrow(dg0 * g0 * omg0, dg1 * g1 * omg1), dk + j);
            }
        }
        for (; j < hd; j++)
        {
            float qq = q[j], ss = s[j], d = dy[j];
            float rq = MathF.Max(qq, 0);
            if (mean)
            {
                float zz = z[j];
                dq[j] = qq > 0 ? d * ss / zz : 0;
                cS[j] += d * rq / zz;
                cZ[j] -= (double)d * rq * ss / ((double)zz * zz);
            }
            else
            {
                dq[j] = qq > 0 ? d * ss : 0;
                cS[j] += d * rq;
            }
            float gg = g[j];
            dv[j] = (float)(cS[j] * gg);
            double dg = cS[j] * v[j] + (mean ? cZ[j] : 0);
            dk[j] = (float)(dg * gg * (1 - gg));
        }
    }
}
