// linear: y(M, N) = x(M, K) . W(N, K)^T, optionally relu2(y) (the QKV factorised linear puts
// relu2 between its factors). GPU wrapper for shaders/linear.comp (f32 or f16 weights, q8/q4
// weights dequantized in the kernel, or f16 arithmetic) and shaders/linear_coopmat.comp (f16
// operands on the device's matrix units), and their CPU references. y is always f32; x is f32,
// or f16 for the half-arithmetic kernels.
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
        public uint SharedBytes => SharedBytesOf(4);
        /// <summary>Shared memory for staged elements of the given size (2 for linear_half).</summary>
        public uint SharedBytesOf(uint elementBytes) => elementBytes * BK * (BM + 1 + BN + 1);
    }

    /// <summary>
    /// linear_coopmat's layout: SM x SN subgroups of SG lanes, each owning FM x FN fragments of
    /// TM x TN (one TM x TN x TK multiply-add of the device); K staged BK at a time through
    /// Stages (1 or 2) shared copies of the operand tiles, fetched Ahead (1 or 2) steps early.
    /// </summary>
    internal readonly record struct CoopMatTile(uint TM, uint TN, uint TK, uint SM, uint SN, uint FM, uint FN, uint BK, uint SG, uint Stages = 2, uint Ahead = 1)
    {
        public uint BM => SM * FM * TM;
        public uint BN => SN * FN * TN;
        public uint Threads => SM * SN * SG;
        // Staged halves with rows padded by 8 (see the shader), plus one f32 TM x TN scratch per subgroup.
        public uint SharedBytes => 2 * Stages * (BM + BN) * (BK + 8) + 4 * SM * SN * TM * TN;

        /// <summary>Throws unless the shader's assumptions hold (BK a multiple of TK and of 8; whole accumulator elements per lane; 1 or 2 stages and steps ahead).</summary>
        public void Validate()
        {
            if (TM == 0 || TN == 0 || TK == 0 || SM == 0 || SN == 0 || FM == 0 || FN == 0 || SG == 0 || BK == 0
                || BK % TK != 0 || BK % 8 != 0 || TK % 8 != 0 || TM * TN % SG != 0 || Stages is not (1 or 2) || Ahead is not (1 or 2))
                throw new ArgumentException($"invalid cooperative-matrix tile {this}");
        }

        /// <summary>Whether <paramref name="caps"/> can run it (invocations, shared memory).</summary>
        public bool Fits(GpuCapabilities caps) => Threads <= caps.MaxWorkgroupInvocations && SharedBytes <= caps.MaxSharedMemoryBytes;
    }

    // 256 invocations, 64x64 outputs: the usual shape for fp32 SGEMM without tensor cores.
    internal static readonly Tile Large = new(64, 64, 16, 4, 4);
    // 256 invocations, 128x128 outputs (8x8 each): twice the multiply-adds per shared-memory load
    // of Large, for products with enough blocks to fill a big GPU (M and N >= HugeFrom).
    internal static readonly Tile Huge = new(128, 128, 16, 8, 8);
    internal const int HugeFrom = 2048;
    // Few rows (decoding, M < 32): a flat block so that most of the workgroup is not idle.
    internal static readonly Tile FewRows = new(8, 128, 16, 1, 4);
    // Devices at the guaranteed minimum of 128 invocations.
    internal static readonly Tile Small = new(32, 32, 16, 4, 4);

    public static Tile ChooseTile(int m, GpuCapabilities caps, uint elementBytes = 4, int n = 0)
    {
        var t = m < 32 ? FewRows : m >= HugeFrom && n >= HugeFrom ? Huge : Large;
        if (t == Huge && !(t.Threads <= caps.MaxWorkgroupInvocations && t.SharedBytesOf(elementBytes) <= caps.MaxSharedMemoryBytes)) t = Large;
        return t.Threads <= caps.MaxWorkgroupInvocations && t.SharedBytesOf(elementBytes) <= caps.MaxSharedMemoryBytes ? t : Small;
    }

    /// <summary>
    /// Below this many rows of x, half arithmetic takes the SIMT kernel even where cooperative
    /// matrices exist: a 16-row fragment would be mostly padding (decoding is weight-bound anyway).
    /// A guess, not yet measured on a GPU.
    /// </summary>
    public const int CoopMatMinRows = 32;

    /// <summary>Below this many blocks of the large cooperative-matrix tile, the smaller one (more workgroups to fill the GPU).</summary>
    internal const int CoopMatLargeFromBlocks = 128;

    /// <summary>
    /// The cooperative-matrix layout for the device's shape, K staged 32 deep in two stages: four
    /// subgroups each owning 64 x 64 of y (a 128 x 128 block) where that still makes at least
    /// <see cref="CoopMatLargeFromBlocks"/> workgroups; else four subgroups of 32 x 32 (16 rows when
    /// x has fewer than 128). Sized for NVIDIA's 32-lane subgroups and 48 KiB of shared memory.
    /// </summary>
    public static CoopMatTile ChooseCoopMatTile(int m, CoopMatShape shape, GpuCapabilities caps, int n = 0)
    {
        var large = LargeCoopMatTile(shape, caps);
        if ((long)CeilDiv(m, large.BM) * CeilDiv(n, large.BN) >= CoopMatLargeFromBlocks && large.Fits(caps)) return large;
        uint rows = m >= 128 ? 32u : 16u;
        var t = new CoopMatTile(shape.M, shape.N, shape.K, 2, 2, Frags(rows, shape.M), Frags(32, shape.N), 32, caps.SubgroupSize);
        if (!t.Fits(caps)) t = t with { SM = 1, SN = 1, FM = 1, FN = 1, Stages = 1 };
        return t;
    }

    /// <summary>The large layout of <see cref="ChooseCoopMatTile"/>: 2 x 2 subgroups of 64 x 64, BK 32, two stages.</summary>
    internal static CoopMatTile LargeCoopMatTile(CoopMatShape shape, GpuCapabilities caps) =>
        new(shape.M, shape.N, shape.K, 2, 2, Frags(64, shape.M), Frags(64, shape.N), 32, caps.SubgroupSize);

    static uint Frags(uint span, uint fragment) => Math.Max(1, span / fragment);
    static long CeilDiv(int a, uint b) => (a + b - 1) / b;

    /// <summary>
    /// Records y = x W^T (relu2 fused when asked). x (M, K) f32, w (N, K) f32 or f16, y (M, N) f32;
    /// or x and w both f16 (half arithmetic only). With f16 weights and
    /// <see cref="VulkanOptions.HalfArithmetic"/> on, the half-arithmetic kernels run where the device has them.
    /// </summary>
    public static void Record(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor w, bool relu2, GpuTensor y, Tile? tile = null)
    {
        var (m, k) = Matrix(x, nameof(x), allowF16: true);
        var (n, kw) = Matrix(w, nameof(w), allowF16: true);
        var (my, ny) = Matrix(y, nameof(y));
        if (kw != k || my != m || ny != n)
            throw new ArgumentException($"linear shapes disagree: x {x}, w {w}, y {y}");
        var caps = ctx.Capabilities;
        if (x.DType == GpuDType.F16 || (w.DType == GpuDType.F16 && ctx.Options.HalfArithmetic && caps.HalfArithmetic))
        {
            if (caps.CooperativeMatrix is { } shape && m >= CoopMatMinRows)
                RecordCoopMat(rec, ctx, x, w, relu2, y, ChooseCoopMatTile(m, shape, caps, n));
            else
                RecordHalf(rec, ctx, x, w, relu2, y, tile);
            return;
        }
        var t = tile ?? ChooseTile(m, caps, n: n);
        var shader = (w.DType == GpuDType.F16 ? "linear_f16" : "linear") + (relu2 ? "_relu2" : "");
        var pipeline = ctx.Pipelines.Get(shader, 3, (uint)Marshal.SizeOf<LinearPush>(),
            t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
        var push = new LinearPush { M = (uint)m, N = (uint)n, K = (uint)k };
        rec.Dispatch(pipeline, [Binding.In(x), Binding.In(w), Binding.Out(y)], push,
            Grid.CeilDiv(n, t.BN), Grid.CeilDiv(m, t.BM));
    }

    /// <summary>
    /// Records y = x W^T through linear_half: f16 products, f32 sums (twin: <see cref="ReferenceHalf"/>).
    /// w (N, K) f16; x (M, K) f32 (rounded to half in the kernel) or f16 (then no relu2); y (M, N) f32.
    /// </summary>
    /// <exception cref="NotSupportedException">The device lacks shaderFloat16 or storageBuffer16BitAccess.</exception>
    public static void RecordHalf(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor w, bool relu2, GpuTensor y, Tile? tile = null)
    {
        var (m, k, n) = HalfShapes(x, w, y, relu2);
        var caps = ctx.Capabilities;
        if (!caps.HalfArithmetic)
            throw new NotSupportedException($"linear_half needs shaderFloat16 and storageBuffer16BitAccess ({caps.DeviceName} has {caps.ShaderFloat16} and {caps.StorageBuffer16BitAccess})");
        var t = tile ?? ChooseTile(m, caps, elementBytes: 2);
        var shader = x.DType == GpuDType.F16 ? "linear_half_xhalf" : relu2 ? "linear_half_relu2" : "linear_half";
        var pipeline = ctx.Pipelines.Get(shader, 3, (uint)Marshal.SizeOf<LinearPush>(),
            t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
        var push = new LinearPush { M = (uint)m, N = (uint)n, K = (uint)k };
        rec.Dispatch(pipeline, [Binding.In(x), Binding.In(w), Binding.Out(y)], push,
            Grid.CeilDiv(n, t.BN), Grid.CeilDiv(m, t.BM));
    }

    /// <summary>
    /// Records y = x W^T through linear_coopmat: f16 operands on the matrix units, f32 accumulation
    /// (twin: <see cref="ReferenceHalfInputs"/>). Shapes as <see cref="RecordHalf"/>. With
    /// <paramref name="emulated"/> the fragments are plain arithmetic (any device with half
    /// arithmetic; tests only): the tile's TM x TN x TK need not be one the device reports.
    /// </summary>
    /// <exception cref="NotSupportedException">The device has no usable cooperative-matrix shape equal to the tile's, or (emulated) lacks half arithmetic.</exception>
    public static void RecordCoopMat(CommandRecorder rec, VulkanContext ctx, GpuTensor x, GpuTensor w, bool relu2, GpuTensor y, CoopMatTile tile, bool emulated = false)
    {
        var (m, k, n) = HalfShapes(x, w, y, relu2);
        var caps = ctx.Capabilities;
        tile.Validate();
        if (!caps.HalfArithmetic)
            throw new NotSupportedException($"linear_coopmat needs shaderFloat16 and storageBuffer16BitAccess ({caps.DeviceName})");
        if (!emulated && caps.CooperativeMatrix != new CoopMatShape(tile.TM, tile.TN, tile.TK))
            throw new NotSupportedException($"linear_coopmat: {caps.DeviceName} offers no usable cooperative matrix of {tile.TM}x{tile.TN}x{tile.TK} " +
                                            $"(chosen: {caps.CooperativeMatrix?.ToString() ?? "none"})");
        if (!tile.Fits(caps))
            throw new NotSupportedException($"linear_coopmat tile {tile} needs {tile.Threads} invocations and {tile.SharedBytes} B of shared memory; " +
                                            $"{caps.DeviceName} allows {caps.MaxWorkgroupInvocations} and {caps.MaxSharedMemoryBytes} B");
        if (tile.SG != caps.SubgroupSize || caps.MinSubgroupSize != caps.MaxSubgroupSize)
            throw new NotSupportedException($"linear_coopmat assumes a fixed subgroup of {tile.SG} lanes; {caps.DeviceName} has {caps.SubgroupSize} [{caps.MinSubgroupSize}..{caps.MaxSubgroupSize}]");
        var shader = (emulated ? "linear_coopmat_emulated" : "linear_coopmat") + (x.DType == GpuDType.F16 ? "_xhalf" : relu2 ? "_relu2" : "");
        var pipeline = ctx.Pipelines.Get(shader, 3, (uint)Marshal.SizeOf<LinearPush>(),
            tile.TM, tile.TN, tile.TK, tile.SM, tile.SN, tile.FM, tile.FN, tile.BK, tile.SG, tile.Threads, tile.Stages, tile.Ahead);
        var push = new LinearPush { M = (uint)m, N = (uint)n, K = (uint)k };
        rec.Dispatch(pipeline, [Binding.In(x), Binding.In(w), Binding.Out(y)], push,
            Grid.CeilDiv(n, tile.BN), Grid.CeilDiv(m, tile.BM));
    }

    static (int M, int K, int N) HalfShapes(GpuTensor x, GpuTensor w, GpuTensor y, bool relu2)
    {
        var (m, k) = Matrix(x, nameof(x), allowF16: true);
        var (n, kw) = Matrix(w, nameof(w), allowF16: true);
        var (my, ny) = Matrix(y, nameof(y));
        if (w.DType != GpuDType.F16) throw new ArgumentException($"half arithmetic needs f16 weights, got {w}", nameof(w));
        if (x.DType == GpuDType.F16 && relu2) throw new ArgumentException("relu2 is fused only for f32 x (no f16-x relu2 variant is built)", nameof(relu2));
        if (kw != k || my != m || ny != n)
            throw new ArgumentException($"linear shapes disagree: x {x}, w {w}, y {y}");
        return (m, k, n);
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
    /// CPU reference of linear_half: x and W rounded to half (round to nearest even, as the upload
    /// does and as the devices seen convert f32 x in the kernel), each product rounded to half (the
    /// f16 multiply: the float product of two halves is exact, so one rounding gives the correctly
    /// rounded f16 product), sums in f32 in k order, relu2 if asked.
    /// </summary>
    public static void ReferenceHalf(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int M, int N, int K, bool relu2, Span<float> y)
    {
        var xh = ToHalfPrecision(x);
        var wh = ToHalfPrecision(w);
        for (var m = 0; m < M; m++)
        {
            for (var n = 0; n < N; n++)
            {
                var acc = 0f;
                for (var k = 0; k < K; k++) acc += (float)(Half)(xh[m * K + k] * wh[n * K + k]);
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
    /// CPU reference of linear_coopmat: x and W rounded to half, exact products (matrix units do
    /// not round them), sums in f32, relu2 if asked. Matrix units may sum in another order and
    /// with other internal rounding than f32 adds: compare with an accumulation tolerance.
    /// </summary>
    public static void ReferenceHalfInputs(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int M, int N, int K, bool relu2, Span<float> y) =>
        Reference(ToHalfPrecision(x), ToHalfPrecision(w), M, N, K, relu2, y);

    static float[] ToHalfPrecision(ReadOnlySpan<float> v)
    {
        var r = new float[v.Length];
        for (var i = 0; i < v.Length; i++) r[i] = (float)(Half)v[i];
        return r;
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
