// linear: y(M, N) = x(M, K) . W(N, K)^T, optionally relu2(y) (the QKV factorised linear puts
// relu2 between its factors). GPU wrapper for shaders/linear.comp (f32 or f16 weights, or q8/q4
// weights dequantized in the kernel) and its CPU references. x and y are always f32.
using System.Runtime.InteropServices;
using Palm.Gpu.Vulkan;

namespace Palm.Gpu.Kernels;

internal static class Linear
{
    /// <summary>Twin of <c>LinearPush</c> in shaders/linear.comp.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct LinearPush
    {
        public uint M;
        public uint N;
        public uint K;
    }

    /// <summary>Twin of <c>LinearQuantPush</c> in shaders/linear.comp (-D Q8 / -D Q4).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct LinearQuantPush
    {
        public uint M;
        public uint N;
        public uint K;
        public uint G;
    }

    /// <summary>Block BM x BN of y per workgroup, K in steps of BK, RM x RN outputs per invocation.</summary>
    internal readonly record struct Tile(uint BM, uint BN, uint BK, uint RM, uint RN)
    {
        public uint Threads => BM / RM * (BN / RN);
        public uint SharedBytes => 4 * BK * (BM + 1 + BN + 1);
    }

    // 256 invocations, 64x64 outputs: the usual shape for fp32 SGEMM without tensor cores.
    internal static readonly Tile Large = new(64, 64, 16, 4, 4);
    // Few rows (decoding, M < 32): a flat block so that most of the workgroup is not idle.
    internal static readonly Tile FewRows = new(8, 128, 16, 1, 4);
    // Devices at the guaranteed minimum of 128 invocations.
    internal static readonly Tile Small = new(32, 32, 16, 4, 4);

    public static Tile ChooseTile(int m, GpuCapabilities caps)
    {
        var t = m < 32 ? FewRows : Large;
        return t.Threads <= caps.MaxWorkgroupInvocations && t.SharedBytes <= caps.MaxSharedMemoryBytes ? t : Small;
    }

    /// <summary>Records y = x W^T (relu2 fused when asked). x (M, K) f32, w (N, K) f32 or f16, y (M, N) f32.</summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor w, bool relu2, GpuTensor y, Tile? tile = null)
    {
        var (m, k) = Matrix(x, nameof(x));
        var (n, kw) = Matrix(w, nameof(w), allowF16: true);
        var (my, ny) = Matrix(y, nameof(y));
        if (kw != k || my != m || ny != n)
            throw new ArgumentException($"linear shapes disagree: x {x}, w {w}, y {y}");
        var t = tile ?? ChooseTile(m, ctx.Capabilities);
        var shader = (w.DType == GpuDType.F16 ? "linear_f16" : "linear") + (relu2 ? "_relu2" : "");
        var pipeline = ctx.Pipelines.Get(shader, 3, (uint)Marshal.SizeOf<LinearPush>(),
            t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
        var push = new LinearPush { M = (uint)m, N = (uint)n, K = (uint)k };
        rec.Dispatch(pipeline, [Binding.In(x), Binding.In(w), Binding.Out(y)], push,
            Grid.CeilDiv(n, t.BN), Grid.CeilDiv(m, t.BM));
    }

    /// <summary>Records y = x W^T with W quantized (relu2 fused when asked). x (M, K) f32, w (N, K), y (M, N) f32.</summary>
    public static void RecordQuantized(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuQuantizedMatrix w, bool relu2, GpuTensor y, Tile? tile = null)
    {
        var (m, k) = Matrix(x, nameof(x));
        var (my, ny) = Matrix(y, nameof(y));
        if (w.Cols != k || my != m || ny != w.Rows)
            throw new ArgumentException($"linear shapes disagree: x {x}, w {w}, y {y}");
        var t = tile ?? ChooseTile(m, ctx.Capabilities);
        string shader = (w.Format == GpuQuantFormat.Q8 ? "linear_q8" : "linear_q4") + (relu2 ? "_relu2" : "");
        var pipeline = ctx.Pipelines.Get(shader, 4, (uint)Marshal.SizeOf<LinearQuantPush>(), t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
        var push = new LinearQuantPush { M = (uint)m, N = (uint)w.Rows, K = (uint)k, G = (uint)w.GroupSize };
        rec.Dispatch(pipeline, [Binding.In(x), Binding.In(w.Data), Binding.In(w.Scales), Binding.Out(y)], push,
            Grid.CeilDiv(w.Rows, t.BN), Grid.CeilDiv(m, t.BM));
    }

    static (int Rows, int Cols) Matrix(GpuTensor t, string name, bool allowF16 = false)
    {
        if (!(t.DType == GpuDType.F32 || (allowF16 && t.DType == GpuDType.F16)) || t.Shape.Length != 2)
            throw new ArgumentException($"{name} must be a 2D {(allowF16 ? "f32 or f16" : "f32")} tensor, got {t}", name);
        return (t.Shape[0], t.Shape[1]);
    }

    /// <summary>CPU reference: y[m, n] = sum_k x[m, k] * w[n, k], then relu2 if asked.</summary>
    public static void Reference(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int M, int N, int K, bool relu2, Span<float> y)
    {
        for (var m = 0; m < M; m++)
        {
            var xr = x.Slice(m * K, K);
            for (var n = 0; n < N; n++)
            {
                var wr = w.Slice(n * K, K);
                var acc = 0f;
                for (var k = 0; k < K; k++) acc += xr[k] * wr[k];
                if (relu2)
                {
                    acc = MathF.Max(acc, 0f);
                    acc *= acc;
                }
                y[m * N + n] = acc;
            }
        }
    }

    /// <summary>
    /// CPU reference of the f16-weight kernel: W rounded to half precision (as the upload does),
    /// products and sums in f32, relu2 if asked.
    /// </summary>
    public static void ReferenceF16(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int M, int N, int K, bool relu2, Span<float> y)
    {
        var wh = new float[w.Length];
        for (var i = 0; i < w.Length; i++) wh[i] = (float)(Half)w[i];
        Reference(x, wh, M, N, K, relu2, y);
    }

    /// <summary>
    /// CPU reference of the quantized kernel: element i of W is level(i) * scale[i / groupSize], decoded
    /// from the stored bytes (q8: int8, f32 scales; q4: nibble - 8, element 2k low, f16 scales), then
    /// y[m, n] = sum_k x[m, k] * W[n, k], relu2 if asked.
    /// </summary>
    public static void QuantizedReference(ReadOnlySpan<float> x, GpuQuantFormat format, ReadOnlySpan<byte> data, ReadOnlySpan<byte> scales,
        int groupSize, int M, int N, int K, bool relu2, Span<float> y)
    {
        for (var m = 0; m < M; m++)
        {
            for (var n = 0; n < N; n++)
            {
                var acc = 0f;
                for (var k = 0; k < K; k++) acc += x[m * K + k] * GpuQuantizedMatrix.Decode(format, data, scales, groupSize, n * K + k);
                if (relu2)
                {
                    acc = MathF.Max(acc, 0f);
                    acc *= acc;
                }
                y[m * N + n] = acc;
            }
        }
    }
}
