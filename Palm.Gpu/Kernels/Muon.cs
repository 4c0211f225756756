// Muon on the device: momentum with Nesterov look-ahead (clip factor read from the device),
// Frobenius normalisation (grad_norm.comp's two passes), five quintic Newton-Schulz iterations
// built from the strided GEMM (A = X X^T, B = b A + c A.A, X = a X + B X: three GEMMs each,
// the linear combinations folded into their epilogues), tall matrices handled by working on
// the transpose, then P = P (1 - lr wd) - lr sqrt(max(1, m/n)) X. fp32 throughout, or (optional,
// muon_fp16) with the Newton-Schulz GEMMs in f16 arithmetic (linear_backward.comp -D HALF: f16
// operands and products, f32 sums) while X, A and B stay f32 between GEMMs. Wrappers for
// shaders/muon_momentum.comp, muon_normalize.comp, muon_update.comp and CPU references.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;
using static Palm.Gpu.Kernels.LinearBackward;

namespace Palm.Gpu.Kernels;

internal static class Muon
{
    const uint WorkgroupSize = 256;
    public const float NsA = 3.4445f, NsB = -4.7750f, NsC = 2.0315f;
    public const int NsSteps = 5;

    // Power-of-two scales of the f16 Newton-Schulz operands (X, A = X X^T, B = b A + c A.A), the
    // largest that cannot overflow f16 (65504). Bounds: X is Frobenius-normalised, so its
    // singular values start <= 1, and the quintic f(s) = a s + b s^3 + c s^5 maps [0, 1.21] into
    // itself (max f = 1.2023 at s = 0.5545); hence |x| <= 1.21, |A| <= 1.21^2 = 1.46 and
    // |B| <= max over t in [0, 1.46] of |b t + c t^2| = 2.81 (t = 1.175). Largest products:
    // X X^T 128^2 * 1.46 = 23,900; A.A 128^2 * 1.46^2 = 34,900; B X 64 * 128 * 2.81 * 1.21 =
    // 27,900 (margins 1.9x and more). Typical X entries are ~1/sqrt(q) (1/sqrt(pq) before the
    // first iteration), so unscaled products of a 512 x 512 X would be ~4e-6, below f16's
    // smallest normal 6.1e-5; scaled by 128^2 they stay normal up to p q ~ 2.7e8.
    internal const float HalfScaleX = 128f, HalfScaleA = 128f, HalfScaleB = 64f;

    /// <summary>Twin of <c>MuonMomentumPush</c> in shaders/muon_momentum.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct MuonMomentumPush
    {
        public uint rows;
        public uint cols;
        public uint transpose;
        public float beta;
    }

    /// <summary>Twin of <c>MuonNormalizePush</c> in shaders/muon_normalize.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct MuonNormalizePush
    {
        public uint n;
    }

    /// <summary>Twin of <c>MuonUpdatePush</c> in shaders/muon_update.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct MuonUpdatePush
    {
        public uint rows;
        public uint cols;
        public uint transpose;
        public float decay;
        public float step;
    }

    /// <summary>Device scratch of one (rows, cols) matrix: X and its ping-pong twin (p, q), A and B (p, p), norm partials.</summary>
    internal sealed class Scratch : IDisposable
    {
        public Scratch(VulkanContext ctx, int rows, int cols)
        {
            Rows = rows;
            Cols = cols;
            X = ctx.CreateTensor(GpuDType.F32, P, Q);
            Xn = ctx.CreateTensor(GpuDType.F32, P, Q);
            A = ctx.CreateTensor(GpuDType.F32, P, P);
            Bm = ctx.CreateTensor(GpuDType.F32, P, P);
            Partials = ctx.CreateTensor(GpuDType.F32, GradNorm.Groups((long)rows * cols));
            Norm = ctx.CreateTensor(GpuDType.F32, 2);
        }

        public int Rows { get; }
        public int Cols { get; }
        /// <summary>Tall matrices (rows &gt; cols) are orthogonalised as their transpose.</summary>
        public bool Tall => Rows > Cols;
        public int P => Math.Min(Rows, Cols);
        public int Q => Math.Max(Rows, Cols);
        public GpuTensor X { get; }
        public GpuTensor Xn { get; }
        public GpuTensor A { get; }
        public GpuTensor Bm { get; }
        public GpuTensor Partials { get; }
        public GpuTensor Norm { get; }

        public void Dispose()
        {
            X.Dispose();
            Xn.Dispose();
            A.Dispose();
            Bm.Dispose();
            Partials.Dispose();
            Norm.Dispose();
        }
    }

    static (uint, uint) Elementwise(VulkanContext ctx, long n) => Grid.Rows(Grid.CeilDiv(n, WorkgroupSize), ctx.Capabilities.MaxWorkgroupCountX);

    /// <summary>
    /// Records momentum, Nesterov, normalisation and Newton-Schulz for grad (rows, cols) * clip[1]
    /// with momentum mom (updated in place). Returns the scratch tensor holding the orthogonalised
    /// X: (rows, cols), or (cols, rows) when <see cref="Scratch.Tall"/>. With <paramref name="half"/>
    /// the Newton-Schulz GEMMs run in f16 arithmetic (<see cref="RecordNewtonSchulz"/>).
    /// </summary>
    /// <exception cref="NotSupportedException"><paramref name="half"/> on a device without shaderFloat16.</exception>
    public static GpuTensor RecordOrthogonalize(CommandRecorder rec, VulkanContext ctx, GpuTensor grad, GpuTensor mom, GpuTensor clip, float beta, Scratch s,
        bool half = false)
    {
        var n = (long)s.Rows * s.Cols;
        if (grad.Count != n || mom.Count != n || clip.Count != 2)
            throw new ArgumentException($"muon: grad {grad} and momentum {mom} must hold {s.Rows}x{s.Cols}; clip {clip} 2 floats");
        var momentum = ctx.Pipelines.Get("muon_momentum", 4, (uint)Marshal.SizeOf<MuonMomentumPush>(), WorkgroupSize);
        var (gx, gy) = Elementwise(ctx, n);
        rec.Dispatch(momentum, [Binding.In(grad), Binding.InOut(mom), Binding.In(clip), Binding.Out(s.X)],
            new MuonMomentumPush { rows = (uint)s.Rows, cols = (uint)s.Cols, transpose = s.Tall ? 1u : 0u, beta = beta }, gx, gy);

        GradNorm.RecordPartial(rec, ctx, s.X, s.Partials, 0);
        GradNorm.RecordFinish(rec, ctx, s.Partials, GradNorm.Groups(n), 0f, s.Norm);
        var normalize = ctx.Pipelines.Get("muon_normalize", 2, (uint)Marshal.SizeOf<MuonNormalizePush>(), WorkgroupSize);
        rec.Dispatch(normalize, [Binding.In(s.Norm), Binding.InOut(s.X)], new MuonNormalizePush { n = (uint)n }, gx, gy);
        return RecordNewtonSchulz(rec, ctx, s, half);
    }

    /// <summary>
    /// Records the 5 quintic iterations on s.X (p, q), already normalised; returns the tensor
    /// holding the result. With <paramref name="half"/> each GEMM is linear_backward_half (f16
    /// operands and products, f32 sums and epilogues; twin <see cref="NewtonSchulzReference"/>
    /// with half): X, A and B are still written and read as f32.
    /// </summary>
    /// <exception cref="NotSupportedException"><paramref name="half"/> on a device without shaderFloat16.</exception>
    public static GpuTensor RecordNewtonSchulz(CommandRecorder rec, VulkanContext ctx, Scratch s, bool half = false)
    {
        int p = s.P, q = s.Q;
        GpuTensor x = s.X, xn = s.Xn;
        for (var it = 0; it < NsSteps; it++)
        {
            // A = X X^T;  B = c A.A + b A;  X' = B X + a X.
            if (half)
            {
                RecordGemmHalf(rec, ctx, x, Layout.RowMajor(q), x, Layout.Transposed(q), p, p, q, 1f, 0f, null, HalfScaleX, HalfScaleX, s.A);
                RecordGemmHalf(rec, ctx, s.A, Layout.RowMajor(p), s.A, Layout.RowMajor(p), p, p, p, NsC, NsB, s.A, HalfScaleA, HalfScaleA, s.Bm);
                RecordGemmHalf(rec, ctx, s.Bm, Layout.RowMajor(p), x, Layout.RowMajor(q), p, q, p, 1f, NsA, x, HalfScaleB, HalfScaleX, xn);
            }
            else
            {
                RecordGemm(rec, ctx, x, Layout.RowMajor(q), x, Layout.Transposed(q), p, p, q, 1f, 0f, null, null, s.A);
                RecordGemm(rec, ctx, s.A, Layout.RowMajor(p), s.A, Layout.RowMajor(p), p, p, p, NsC, NsB, s.A, null, s.Bm);
                RecordGemm(rec, ctx, s.Bm, Layout.RowMajor(p), x, Layout.RowMajor(q), p, q, p, 1f, NsA, x, null, xn);
            }
            (x, xn) = (xn, x);
        }
        return x;
    }

    /// <summary>Records P = P (1 - lr wd) - lr sqrt(max(1, rows/cols)) X, X from <see cref="RecordOrthogonalize"/>.</summary>
    public static void RecordUpdate(CommandRecorder rec, VulkanContext ctx, GpuTensor param, GpuTensor x, Scratch s, double lr, double wd)
    {
        var n = (long)s.Rows * s.Cols;
        if (param.Count != n || x.Count != n) throw new ArgumentException($"muon update: param {param} and X {x} must hold {s.Rows}x{s.Cols}");
        var pipeline = ctx.Pipelines.Get("muon_update", 2, (uint)Marshal.SizeOf<MuonUpdatePush>(), WorkgroupSize);
        var (gx, gy) = Elementwise(ctx, n);
        rec.Dispatch(pipeline, [Binding.InOut(param), Binding.In(x)], new MuonUpdatePush
        {
            rows = (uint)s.Rows, cols = (uint)s.Cols, transpose = s.Tall ? 1u : 0u,
            decay = (float)(1 - lr * wd), step = (float)(lr * Math.Sqrt(Math.Max(1.0, (double)s.Rows / s.Cols))),
        }, gx, gy);
    }

    /// <summary>
    /// CPU reference of one Muon step on param (rows, cols), same arithmetic order as the shaders:
    /// momentum (in place), Nesterov, transpose when tall, normalise, Newton-Schulz, update.
    /// </summary>
    public static void Reference(Span<float> param, ReadOnlySpan<float> grad, Span<float> mom, float clipFactor, float beta,
        int rows, int cols, double lr, double wd)
    {
        var u = new float[rows * cols];
        var f1 = 1f - beta;
        for (var i = 0; i < u.Length; i++)
        {
            var g = grad[i] * clipFactor;
            mom[i] = beta * mom[i] + f1 * g;
            u[i] = f1 * g + beta * mom[i];
        }
        var x = NewtonSchulzReference(u, rows, cols);
        var decay = (float)(1 - lr * wd);
        var step = (float)(lr * Math.Sqrt(Math.Max(1.0, (double)rows / cols)));
        for (var i = 0; i < param.Length; i++) param[i] = param[i] * decay - step * x[i];
    }

    /// <summary>
    /// CPU reference: Frobenius normalisation and 5 quintic iterations of U (rows, cols),
    /// transposing tall matrices; result (rows, cols). With <paramref name="half"/>, the twin of
    /// the f16 path: every GEMM is <see cref="GemmHalfReference"/> with the shader's scales.
    /// </summary>
    public static float[] NewtonSchulzReference(ReadOnlySpan<float> u, int rows, int cols, bool half = false)
    {
        var tall = rows > cols;
        int p = Math.Min(rows, cols), q = Math.Max(rows, cols);
        var x = new float[p * q];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++) x[tall ? c * rows + r : r * cols + c] = u[r * cols + c];
        var ss = 0f;
        foreach (var v in x) ss += v * v;
        var inv = 1f / (MathF.Sqrt(ss) + 1e-7f);
        for (var i = 0; i < x.Length; i++) x[i] *= inv;
        x = NewtonSchulzIterationsReference(x, p, q, half);
        if (!tall) return x;
        var back = new float[rows * cols];
        for (var r = 0; r < rows; r++)
            for (var c = 0; c < cols; c++) back[r * cols + c] = x[c * rows + r];
        return back;
    }

    /// <summary>
    /// CPU reference of <see cref="RecordNewtonSchulz"/>: the 5 quintic iterations on a normalised
    /// X (p, q), p &lt;= q, fp32 GEMMs or (<paramref name="half"/>) <see cref="GemmHalfReference"/>
    /// with the shader's scales (<paramref name="fusedEpilogue"/> as there). Returns the result; x is overwritten.
    /// </summary>
    public static float[] NewtonSchulzIterationsReference(float[] x, int p, int q, bool half, bool fusedEpilogue = false)
    {
        var a = new float[p * p];
        var b = new float[p * p];
        var xn = new float[p * q];
        for (var it = 0; it < NsSteps; it++)
        {
            if (half)
            {
                GemmHalfReference(x, Layout.RowMajor(q), x, Layout.Transposed(q), p, p, q, 1f, 0f, default, HalfScaleX, HalfScaleX, a);
                GemmHalfReference(a, Layout.RowMajor(p), a, Layout.RowMajor(p), p, p, p, NsC, NsB, a, HalfScaleA, HalfScaleA, b, fusedEpilogue);
                GemmHalfReference(b, Layout.RowMajor(p), x, Layout.RowMajor(q), p, q, p, 1f, NsA, x, HalfScaleB, HalfScaleX, xn, fusedEpilogue);
            }
            else
            {
                GemmReference(x, Layout.RowMajor(q), x, Layout.Transposed(q), p, p, q, 1f, 0f, default, default, a);
                GemmReference(a, Layout.RowMajor(p), a, Layout.RowMajor(p), p, p, p, NsC, NsB, a, default, b);
                GemmReference(b, Layout.RowMajor(p), x, Layout.RowMajor(q), p, q, p, 1f, NsA, x, default, xn);
            }
            (x, xn) = (xn, x);
        }
        return x;
    }
}
