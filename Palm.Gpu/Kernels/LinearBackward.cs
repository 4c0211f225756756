// linear backward: dX = dY . W and dW (+)= dY^T . X for y = x W^T, the relu2 derivative of the
// QKV factorisation fused on dX, all through one strided GEMM (shaders/linear_backward.comp)
// that Muon's Newton-Schulz iterations reuse, also in f16 arithmetic (-D HALF, Muon's optional
// fp16 path). GPU wrappers and CPU references.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class LinearBackward
{
    /// <summary>Twin of <c>GemmPush</c> in shaders/linear_backward.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct GemmPush
    {
        public uint M;
        public uint N;
        public uint K;
        public uint sAm;
        public uint sAk;
        public uint sBk;
        public uint sBn;
        public float alpha;
        public float beta;
    }

    /// <summary>Twin of <c>GemmPush</c> in shaders/linear_backward.comp with -D HALF.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct GemmHalfPush
    {
        public uint M;
        public uint N;
        public uint K;
        public uint sAm;
        public uint sAk;
        public uint sBk;
        public uint sBn;
        public float alpha;
        public float beta;
        public float scale_a;
        public float scale_b;
    }

    /// <summary>How an operand's (row, col) maps to memory: element (i, j) at i*RowStride + j*ColStride.</summary>
    internal readonly record struct Layout(int RowStride, int ColStride)
    {
        /// <summary>A row-major (rows, cols) matrix.</summary>
        public static Layout RowMajor(int cols) => new(cols, 1);
        /// <summary>The transpose of a row-major (rows, cols) matrix, read as (cols, rows).</summary>
        public static Layout Transposed(int cols) => new(1, cols);
    }

    /// <summary>
    /// Records c (M, N) = alpha a.b + beta e [* 2 max(u, 0)], a (M, K) and b (K, N) read through
    /// their layouts. e is read only when beta != 0 and may be c itself (accumulation).
    /// </summary>
    public static void RecordGemm(CommandRecorder rec, VulkanContext ctx, GpuTensor a, Layout la, GpuTensor b, Layout lb,
        int M, int N, int K, float alpha, float beta, GpuTensor? e, GpuTensor? u, GpuTensor c)
    {
        CheckGemm(a, la, b, lb, M, N, K, beta, e, u, c);
        var t = Linear.ChooseTile(M, ctx.Capabilities);
        var push = new GemmPush
        {
            M = (uint)M, N = (uint)N, K = (uint)K,
            sAm = (uint)la.RowStride, sAk = (uint)la.ColStride, sBk = (uint)lb.RowStride, sBn = (uint)lb.ColStride,
            alpha = alpha, beta = beta,
        };
        // e is bound even when unread (beta = 0): c stands in for it.
        var eb = e is null ? Binding.In(c) : Binding.In(e);
        var cb = e == c ? Binding.InOut(c) : Binding.Out(c);
        (uint gx, uint gy) = (Grid.CeilDiv(N, t.BN), Grid.CeilDiv(M, t.BM));
        if (u is null)
        {
            var pipeline = ctx.Pipelines.Get("linear_backward", 4, (uint)Marshal.SizeOf<GemmPush>(), t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
            rec.Dispatch(pipeline, [Binding.In(a), Binding.In(b), eb, cb], push, gx, gy);
        }
        else
        {
            var pipeline = ctx.Pipelines.Get("linear_backward_relu2", 5, (uint)Marshal.SizeOf<GemmPush>(), t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
            rec.Dispatch(pipeline, [Binding.In(a), Binding.In(b), eb, Binding.In(u), cb], push, gx, gy);
        }
    }

    /// <summary>
    /// Records c (M, N) = alpha a.b + beta e like <see cref="RecordGemm"/> (no relu2), in f16
    /// arithmetic: each element of a (b) is multiplied by <paramref name="scaleA"/>
    /// (<paramref name="scaleB"/>) and rounded to half as it is staged, each product is an f16
    /// multiply, sums and the epilogue are f32, and alpha / (scaleA scaleB) undoes the scales.
    /// The scales, powers of two, only move the operands into f16's range: the caller bounds
    /// |scaleA a| |scaleB b| below 65504 and keeps typical products away from f16's subnormals.
    /// a, b, e and c are f32 tensors. Twin: <see cref="GemmHalfReference"/>.
    /// </summary>
    /// <exception cref="NotSupportedException">The device lacks shaderFloat16.</exception>
    public static void RecordGemmHalf(CommandRecorder rec, VulkanContext ctx, GpuTensor a, Layout la, GpuTensor b, Layout lb,
        int M, int N, int K, float alpha, float beta, GpuTensor? e, float scaleA, float scaleB, GpuTensor c)
    {
        CheckGemm(a, la, b, lb, M, N, K, beta, e, null, c);
        var caps = ctx.Capabilities;
        if (!caps.ShaderFloat16)
            throw new NotSupportedException($"linear_backward_half needs shaderFloat16, which {caps.DeviceName} lacks");
        var unscale = HalfAlpha(alpha, scaleA, scaleB);
        var t = Linear.ChooseTile(M, caps, elementBytes: 2);
        var push = new GemmHalfPush
        {
            M = (uint)M, N = (uint)N, K = (uint)K,
            sAm = (uint)la.RowStride, sAk = (uint)la.ColStride, sBk = (uint)lb.RowStride, sBn = (uint)lb.ColStride,
            alpha = unscale, beta = beta, scale_a = scaleA, scale_b = scaleB,
        };
        var eb = e is null ? Binding.In(c) : Binding.In(e);
        var cb = e == c ? Binding.InOut(c) : Binding.Out(c);
        var pipeline = ctx.Pipelines.Get("linear_backward_half", 4, (uint)Marshal.SizeOf<GemmHalfPush>(), t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
        rec.Dispatch(pipeline, [Binding.In(a), Binding.In(b), eb, cb], push, Grid.CeilDiv(N, t.BN), Grid.CeilDiv(M, t.BM));
    }

    /// <summary>alpha / (scaleA scaleB), exact because both scales are powers of two (checked).</summary>
    static float HalfAlpha(float alpha, float scaleA, float scaleB)
    {
        static bool PowerOfTwo(float s) => float.IsNormal(s) && s > 0 && (BitConverter.SingleToInt32Bits(s) & 0x7FFFFF) == 0;
        if (!PowerOfTwo(scaleA) || !PowerOfTwo(scaleB))
            throw new ArgumentException($"gemm half: scales must be positive powers of two, got {scaleA} and {scaleB}");
        return alpha / scaleA / scaleB;
    }

    static void CheckGemm(GpuTensor a, Layout la, GpuTensor b, Layout lb, int M, int N, int K, float beta, GpuTensor? e, GpuTensor? u, GpuTensor c)
    {
        CheckOperand(a, la, M, K, nameof(a));
        CheckOperand(b, lb, K, N, nameof(b));
        CheckOperand(c, Layout.RowMajor(N), M, N, nameof(c));
        if (beta != 0 && e is null) throw new ArgumentException("gemm: beta != 0 needs e", nameof(e));
        if (e is not null) CheckOperand(e, Layout.RowMajor(N), M, N, nameof(e));
        if (u is not null) CheckOperand(u, Layout.RowMajor(N), M, N, nameof(u));
    }

    /// <summary>
    /// Records dx (M, K) (+)= dy (M, N) . w (N, K), times 2 max(u, 0) when <paramref name="relu2Input"/>
    /// (the pre-activation u (M, K) of a relu2 that fed this linear) is given.
    /// </summary>
    public static void RecordDx(CommandRecorder rec, VulkanContext ctx, GpuTensor dy, GpuTensor w, GpuTensor? relu2Input, bool accumulate, GpuTensor dx)
    {
        var (m, n) = Matrix(dy, nameof(dy));
        var (nw, k) = Matrix(w, nameof(w));
        if (nw != n) throw new ArgumentException($"linear backward: dy {dy} and w {w} disagree");
        if (accumulate && relu2Input is not null) throw new ArgumentException("linear backward: relu2 and accumulate are exclusive");
        RecordGemm(rec, ctx, dy, Layout.RowMajor(n), w, Layout.RowMajor(k), m, k, n, 1f, accumulate ? 1f : 0f,
            accumulate ? dx : null, relu2Input, dx);
    }

    /// <summary>Records dw (N, K) (+)= dy (M, N)^T . x (M, K).</summary>
    public static void RecordDw(CommandRecorder rec, VulkanContext ctx, GpuTensor dy, GpuTensor x, bool accumulate, GpuTensor dw)
    {
        var (m, n) = Matrix(dy, nameof(dy));
        var (mx, k) = Matrix(x, nameof(x));
        if (mx != m) throw new ArgumentException($"linear backward: dy {dy} and x {x} disagree");
        RecordGemm(rec, ctx, dy, Layout.Transposed(n), x, Layout.RowMajor(k), n, k, m, 1f, accumulate ? 1f : 0f,
            accumulate ? dw : null, null, dw);
    }

    static (int Rows, int Cols) Matrix(GpuTensor t, string name)
    {
        if (t.DType != GpuDType.F32 || t.Shape.Length != 2) throw new ArgumentException($"{name} must be a 2D f32 tensor, got {t}", name);
        return (t.Shape[0], t.Shape[1]);
    }

    static void CheckOperand(GpuTensor t, Layout l, int rows, int cols, string name)
    {
        var last = (long)(rows - 1) * l.RowStride + (long)(cols - 1) * l.ColStride;
        if (t.DType != GpuDType.F32 || rows <= 0 || cols <= 0 || l.RowStride <= 0 || l.ColStride <= 0 || last >= t.Count)
            throw new ArgumentException($"gemm: {name} {t} cannot be read as ({rows}, {cols}) with strides ({l.RowStride}, {l.ColStride})", name);
    }

    /// <summary>CPU reference of <see cref="RecordGemm"/>: c = alpha a.b + beta e, then * 2 max(u, 0) when u is given.</summary>
    public static void GemmReference(ReadOnlySpan<float> a, Layout la, ReadOnlySpan<float> b, Layout lb, int M, int N, int K,
        float alpha, float beta, ReadOnlySpan<float> e, ReadOnlySpan<float> u, Span<float> c)
    {
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
            {
                var acc = 0f;
                for (var k = 0; k < K; k++) acc += a[m * la.RowStride + k * la.ColStride] * b[k * lb.RowStride + n * lb.ColStride];
                var v = alpha * acc;
                if (beta != 0) v += beta * e[m * N + n];
                if (!u.IsEmpty) v *= 2 * MathF.Max(u[m * N + n], 0f);
                c[m * N + n] = v;
            }
    }

    /// <summary>
    /// CPU reference of <see cref="RecordGemmHalf"/>, rounding as the shader does: a and b times
    /// their scales rounded to half (round to nearest even), each product rounded to half (the
    /// float product of two halves is exact, so one rounding gives the correctly rounded f16
    /// product, subnormals included), sums in f32 in k order (the shader's order), then
    /// c = alpha / (scaleA scaleB) * sum + beta e. The shader's fma() there may round once or
    /// twice (Vulkan allows either; lavapipe rounds twice): <paramref name="fusedEpilogue"/>
    /// picks which, so that the twin can match a device bit for bit either way.
    /// </summary>
    public static void GemmHalfReference(ReadOnlySpan<float> a, Layout la, ReadOnlySpan<float> b, Layout lb, int M, int N, int K,
        float alpha, float beta, ReadOnlySpan<float> e, float scaleA, float scaleB, Span<float> c, bool fusedEpilogue = false)
    {
        var unscale = HalfAlpha(alpha, scaleA, scaleB);
        // Staged copies, row-major (M, K) and (K, N), so that each element is rounded once as in the shader.
        var ah = new float[M * K];
        var bh = new float[K * N];
        for (var m = 0; m < M; m++)
            for (var k = 0; k < K; k++) ah[m * K + k] = (float)(Half)(a[m * la.RowStride + k * la.ColStride] * scaleA);
        for (var k = 0; k < K; k++)
            for (var n = 0; n < N; n++) bh[k * N + n] = (float)(Half)(b[k * lb.RowStride + n * lb.ColStride] * scaleB);
        for (var m = 0; m < M; m++)
            for (var n = 0; n < N; n++)
            {
                var acc = 0f;
                for (var k = 0; k < K; k++) acc += (float)(Half)(ah[m * K + k] * bh[k * N + n]);
                var v = unscale * acc;
                // beta = 0 must not read e (the shader's rule: e may hold NaN).
                if (beta != 0) v = fusedEpilogue ? MathF.FusedMultiplyAdd(beta, e[m * N + n], v) : v + beta * e[m * N + n];
                c[m * N + n] = v;
            }
    }

    /// <summary>CPU reference: dx[m, k] (+)= sum_n dy[m, n] w[n, k], times 2 max(u[m, k], 0) when u is given.</summary>
    public static void DxReference(ReadOnlySpan<float> dy, ReadOnlySpan<float> w, int M, int N, int K, ReadOnlySpan<float> relu2Input, bool accumulate, Span<float> dx)
    {
        for (var m = 0; m < M; m++)
            for (var k = 0; k < K; k++)
            {
                var acc = 0f;
                for (var n = 0; n < N; n++) acc += dy[m * N + n] * w[n * K + k];
                if (!relu2Input.IsEmpty) acc *= 2 * MathF.Max(relu2Input[m * K + k], 0f);
                dx[m * K + k] = accumulate ? dx[m * K + k] + acc : acc;
            }
    }

    /// <summary>CPU reference: dw[n, k] (+)= sum_m dy[m, n] x[m, k].</summary>
    public static void DwReference(ReadOnlySpan<float> dy, ReadOnlySpan<float> x, int M, int N, int K, bool accumulate, Span<float> dw)
    {
        for (var n = 0; n < N; n++)
            for (var k = 0; k < K; k++)
            {
                var acc = 0f;
                for (var m = 0; m < M; m++) acc += dy[m * N + n] * x[m * K + k];
                dw[n * K + k] = accumulate ? dw[n * K + k] + acc : acc;
            }
    }
}
