// The Vulkan runtime around the kernels: chained recording and barriers, transfers (mapped
// and staged), sub-allocation, the pipeline cache on disk, profiling, the validation hook.
using System.Diagnostics;
using System.Runtime.InteropServices;
using Palm.Gpu;
using Palm.Gpu.Kernels;
using Palm.Gpu.Vulkan;
using Silk.NET.Vulkan;
using Xunit.Abstractions;

namespace Palm.Tests.Gpu;

[Collection("Vulkan")]
public sealed class VulkanRuntimeTests : IDisposable
{
    readonly VulkanFixture fixture;
    readonly ITestOutputHelper output;
    readonly int seed = Random.Shared.Next();

    public VulkanRuntimeTests(VulkanFixture fixture, ITestOutputHelper output)
    {
        this.fixture = fixture;
        this.output = output;
        fixture.Context?.Messenger?.Clear();
    }

    VulkanContext Ctx => fixture.Require();

    public void Dispose()
    {
        if (fixture.Context is { } ctx) Validation.AssertClean(ctx, nameof(VulkanRuntimeTests));
    }

    /// <summary>
    /// Runs <paramref name="body"/> on a context of its own and checks validation only after
    /// disposing it, so that objects leaked past vkDestroyDevice fail the test too.
    /// </summary>
    static void WithContext(VulkanOptions options, Action<VulkanContext> body)
    {
        var ctx = VulkanContext.Create(options);
        try
        {
            body(ctx);
        }
        finally
        {
            ctx.Dispose();
        }
        Validation.AssertClean(ctx, options.PipelineCacheDir);
    }

    float[] Uniform(Random rng, int n, double scale = 1)
    {
        var a = new float[n];
        for (var i = 0; i < n; i++) a[i] = (float)((rng.NextDouble() * 2 - 1) * scale);
        return a;
    }

    [VulkanFact]
    public void Capabilities_describe_the_device()
    {
        var caps = Ctx.Capabilities;
        output.WriteLine(caps.ToString());
        Assert.False(string.IsNullOrWhiteSpace(caps.DeviceName));
        Assert.True(caps.SubgroupSize >= 1);
        Assert.True(caps.MaxWorkgroupInvocations >= 128);
        Assert.True(caps.ApiVersion >= new Version(1, 2));
    }

    [VulkanFact]
    public void Hundred_dependent_dispatches_in_one_submit_match_the_cpu_chain()
    {
        const int rows = 4, cols = 32, steps = 100;
        var rng = new Random(seed);
        var x = Uniform(rng, rows * cols);
        var w = Uniform(rng, cols * cols, Math.Sqrt(3) * 0.5 / Math.Sqrt(cols));

        // GPU: ping-pong a -> b (rmsnorm), b -> a (linear): every step depends on the one before
        // through a read-after-write and a write-after-read.
        using var a = Ctx.CreateTensor(x, GpuDType.F32, rows, cols);
        using var b = Ctx.CreateTensor(GpuDType.F32, rows, cols);
        using var tw = Ctx.CreateTensor(w, GpuDType.F32, cols, cols);
        using var rec = new CommandRecorder(Ctx);
        for (var i = 0; i < steps; i++)
        {
            if (i % 2 == 0) RmsNorm.Record(rec, Ctx, a, b);
            else Linear.Record(rec, Ctx, b, tw, relu2: false, a);
        }
        Assert.Equal(steps, rec.DispatchCount);
        Assert.Equal(steps - 1, rec.BarrierCount);
        rec.Submit();
        Assert.Equal(1, rec.Submissions);

        var cpuA = (float[])x.Clone();
        var cpuB = new float[rows * cols];
        for (var i = 0; i < steps; i++)
        {
            if (i % 2 == 0) RmsNorm.Reference(cpuA, rows, cols, cpuB);
            else Linear.Reference(cpuB, w, rows, cols, cols, false, cpuA);
        }
        // 100 steps compound float32 rounding; rmsnorm keeps magnitudes near 1.
        Tolerance.AssertClose(a.ToArray(), Array.ConvertAll(cpuA, v => (double)v), 1e-4, 1e-3, "chained rmsnorm/linear", seed, cols);
    }

    [VulkanFact]
    public void Independent_dispatches_get_no_barrier_dependent_ones_do()
    {
        var rng = new Random(seed);
        using var x = Ctx.CreateTensor(Uniform(rng, 8 * 16), GpuDType.F32, 8, 16);
        using var w = Ctx.CreateTensor(Uniform(rng, 16 * 16), GpuDType.F32, 16, 16);
        using var y1 = Ctx.CreateTensor(GpuDType.F32, 8, 16);
        using var y2 = Ctx.CreateTensor(GpuDType.F32, 8, 16);
        using var z = Ctx.CreateTensor(GpuDType.F32, 8, 16);
        using var rec = new CommandRecorder(Ctx);
        Linear.Record(rec, Ctx, x, w, false, y1);
        Linear.Record(rec, Ctx, x, w, true, y2);   // reads what the first reads: no hazard
        Assert.Equal(0, rec.BarrierCount);
        RmsNorm.Record(rec, Ctx, y1, z);            // reads y1: read after write
        Assert.Equal(1, rec.BarrierCount);
        rec.Submit();

        // The recorder is reusable: a second recording starts clean.
        RmsNorm.Record(rec, Ctx, y2, z);
        Assert.Equal(0, rec.BarrierCount);
        rec.Submit();
        Assert.Equal(2, rec.Submissions);
    }

    [VulkanFact]
    public void Tensors_round_trip_f32_f16_i32()
    {
        var rng = new Random(seed);
        var f = Uniform(rng, 1001);
        using var t32 = Ctx.CreateTensor(f, GpuDType.F32, 7, 11, 13);
        Assert.Equal(f, t32.ToArray());

        using var t16 = Ctx.CreateTensor(f, GpuDType.F16, 1001);
        Assert.Equal(Array.ConvertAll(f, v => (float)(Half)v), t16.ToArray());
        Assert.Equal(2002UL, t16.Bytes);

        var ids = Enumerable.Range(0, 77).Select(_ => rng.Next(-5, 50000)).ToArray();
        using var ti = Ctx.CreateTensor(GpuDType.I32, 77);
        ti.Upload(ids);
        var back = new int[77];
        ti.Download(back);
        Assert.Equal(ids, back);
    }

    [VulkanFact]
    public void Staging_path_works_when_device_memory_is_not_mapped()
    {
        // lavapipe's memory is host-visible; ForceStaging takes the discrete-GPU path anyway.
        WithContext(VulkanFixture.Options("staging") with { ForceStaging = true }, ctx =>
        {
            Assert.False(ctx.Capabilities.DeviceLocalIsHostVisible);
            var rng = new Random(seed);
            var big = Uniform(rng, 5 << 20); // 20 MiB: more than one 16 MiB staging chunk
            using var t = ctx.CreateTensor(big, GpuDType.F32, big.Length);
            Assert.Equal(big, t.ToArray());

            var x = Uniform(rng, 5 * 9);
            var w = Uniform(rng, 3 * 9);
            using var tx = ctx.CreateTensor(x, GpuDType.F32, 5, 9);
            using var tw = ctx.CreateTensor(w, GpuDType.F32, 3, 9);
            using var ty = ctx.CreateTensor(GpuDType.F32, 5, 3);
            using (var rec = new CommandRecorder(ctx))
            {
                Linear.Record(rec, ctx, tx, tw, false, ty);
                rec.Submit();
            }
            var expected = new float[15];
            Linear.Reference(x, w, 5, 3, 9, false, expected);
            Tolerance.AssertClose(ty.ToArray(), Array.ConvertAll(expected, v => (double)v), Tolerance.ForReduction(9), Tolerance.F32Rtol, "staged linear", seed, 3);
            Assert.True(ctx.Transfers.StagedCopies > 0);
        });
    }

    [VulkanFact]
    public void Large_reads_from_an_uncached_mapping_go_through_staging()
    {
        // A discrete GPU's resizable BAR is mapped but uncached; UncachedMapping makes lavapipe's
        // cached memory take that path: small reads stay direct, large ones use the copy engine.
        WithContext(VulkanFixture.Options("uncached") with { UncachedMapping = true }, ctx =>
        {
            Assert.True(ctx.Capabilities.DeviceLocalIsHostVisible);
            var rng = new Random(seed);
            var small = Uniform(rng, Transfers.UncachedReadBytes / 4);
            using var ts = ctx.CreateTensor(small, GpuDType.F32, small.Length);
            int before = ctx.Transfers.StagedCopies;
            Assert.Equal(small, ts.ToArray());
            Assert.Equal(before, ctx.Transfers.StagedCopies);   // written and read through the mapping

            var big = Uniform(rng, 5 << 20); // 20 MiB: more than one 16 MiB staging chunk
            using var tb = ctx.CreateTensor(big, GpuDType.F32, big.Length);
            Assert.Equal(before, ctx.Transfers.StagedCopies);   // writes stay direct (write-combined is fast)
            Assert.Equal(big, tb.ToArray());
            Assert.Equal(before + 2, ctx.Transfers.StagedCopies);
        });
    }

    [VulkanFact]
    public void Tensors_are_sub_allocated_from_shared_blocks()
    {
        WithContext(VulkanFixture.Options("blocks") with { BlockBytes = 1 << 20 }, ctx =>
        {
            var tensors = Enumerable.Range(0, 100).Select(i => ctx.CreateTensor(GpuDType.F32, 1 + i % 7, 37)).ToList();
            Assert.Equal(1, ctx.Memory.BlockCount);
            Assert.All(tensors, t => Assert.Equal(0UL, t.Offset % ctx.Memory.Alignment));
            Assert.Equal(100, tensors.Select(t => t.Offset).Distinct().Count());

            using (var big = ctx.CreateTensor(GpuDType.F32, 1 << 19)) // 2 MiB > block size: its own block
                Assert.Equal(2, ctx.Memory.BlockCount);

            var block = tensors[0].Allocation.Block;
            foreach (var t in tensors) t.Dispose();
            Assert.True(block.Free.IsEmpty);
            using var again = ctx.CreateTensor(GpuDType.F32, 10);
            Assert.Equal(2, ctx.Memory.BlockCount); // freed space is reused, no new block
        });
    }

    /// <summary>Every pipeline the kernels above create, as (shader, bindings, push bytes, spec).</summary>
    static void CreateKernelPipelines(VulkanContext ctx)
    {
        foreach (var shader in new[] { "linear", "linear_relu2" })
            foreach (var t in new[] { Linear.Large, Linear.Huge, Linear.FewRows, Linear.Small })
                ctx.Pipelines.Get(shader, 3, (uint)Marshal.SizeOf<Linear.LinearPush>(), t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
        foreach (var wg in new uint[] { 32, 64, 128, 256 })
            ctx.Pipelines.Get("rmsnorm", 2, (uint)Marshal.SizeOf<RmsNorm.RmsNormPush>(), wg);
        ctx.Pipelines.Get("embedding", 3, (uint)Marshal.SizeOf<Embedding.EmbeddingPush>(), 128);
    }

    [VulkanFact]
    public void Pipeline_cache_is_written_and_loaded_by_the_next_start()
    {
        var dir = VulkanProbe.TempDir("pipeline-cache-" + seed);
        var options = VulkanFixture.Options() with { PipelineCacheDir = dir };

        var sw = Stopwatch.StartNew();
        string path;
        double firstMs;
        int count;
        var first = VulkanContext.Create(options);
        try
        {
            CreateKernelPipelines(first);
            firstMs = first.Pipelines.CreateMs;
            count = first.Pipelines.Count;
            path = first.Pipelines.CachePath;
            Assert.Equal(0, first.Pipelines.LoadedBytes);

            // Same key: the in-process cache returns the same pipeline, nothing is created.
            var t = Linear.Large;
            var again = first.Pipelines.Get("linear", 3, 12, t.BM, t.BN, t.BK, t.RM, t.RN, t.Threads);
            Assert.Same(first.Pipelines.All.First(p => p.Key == again.Key), again);
            Assert.Equal(count, first.Pipelines.Count);
        }
        finally
        {
            first.Dispose();
        }
        Validation.AssertClean(first, "first start");
        var firstTotal = sw.Elapsed.TotalMilliseconds;
        Assert.True(File.Exists(path), $"pipeline cache not written to {path}");
        Assert.True(new FileInfo(path).Length > 0);

        sw.Restart();
        double secondMs;
        int? hits;
        var second = VulkanContext.Create(options);
        try
        {
            Assert.Equal((int)new FileInfo(path).Length, second.Pipelines.LoadedBytes);
            CreateKernelPipelines(second);
            secondMs = second.Pipelines.CreateMs;
            var feedback = second.Pipelines.All.Where(p => p.CacheHit.HasValue).ToList();
            hits = feedback.Count > 0 ? feedback.Count(p => p.CacheHit == true) : null;
        }
        finally
        {
            second.Dispose();
        }
        Validation.AssertClean(second, "second start");
        var secondTotal = sw.Elapsed.TotalMilliseconds;
        output.WriteLine($"{Ctx.Capabilities.DeviceName}: {count} pipelines, cache file {new FileInfo(path).Length} bytes");
        output.WriteLine($"first start:  pipelines {firstMs:F1} ms (context + pipelines + save {firstTotal:F1} ms)");
        output.WriteLine($"second start: pipelines {secondMs:F1} ms (context + pipelines + save {secondTotal:F1} ms), " +
                         $"driver-reported cache hits: {(hits is null ? "not reported" : $"{hits}/{count}")}");
    }

    [VulkanFact]
    public void Profiling_reports_per_kernel_gpu_time()
    {
        WithContext(VulkanFixture.Options("profile") with { Profile = true }, ctx =>
        {
            if (!ctx.Capabilities.Timestamps)
            {
                output.WriteLine("device has no timestamps: profiling is off");
                Assert.Null(ctx.Profiler);
                return;
            }
            var rng = new Random(seed);
            using var x = ctx.CreateTensor(Uniform(rng, 16 * 32), GpuDType.F32, 16, 32);
            using var w = ctx.CreateTensor(Uniform(rng, 32 * 32), GpuDType.F32, 32, 32);
            using var y = ctx.CreateTensor(GpuDType.F32, 16, 32);
            using (var rec = new CommandRecorder(ctx))
            {
                for (var i = 0; i < 3; i++)
                {
                    Linear.Record(rec, ctx, x, w, false, y);
                    RmsNorm.Record(rec, ctx, y, x);
                }
                rec.Submit();
            }
            var totals = ctx.Profiler!.Totals;
            Assert.Equal(3, totals.Where(kv => kv.Key.StartsWith("linear<")).Sum(kv => kv.Value.Calls));
            Assert.Equal(3, totals.Where(kv => kv.Key.StartsWith("rmsnorm")).Sum(kv => kv.Value.Calls));
            Assert.All(totals.Values, t => Assert.True(t.Ns > 0));
            output.WriteLine(ctx.Profiler.FormatTable());
        });
    }

    [VulkanFact]
    public unsafe void Messenger_records_validation_errors()
    {
        var ctx = Ctx;
        Assert.NotNull(ctx.Messenger);
        var submit = (delegate* unmanaged[Cdecl]<Instance, DebugUtilsMessageSeverityFlagsEXT, DebugUtilsMessageTypeFlagsEXT, DebugUtilsMessengerCallbackDataEXT*, void>)
            ctx.Vk.GetInstanceProcAddr(ctx.Instance, "vkSubmitDebugUtilsMessageEXT").Handle;
        var text = "palm test: injected error"u8.ToArray().Append((byte)0).ToArray();
        fixed (byte* p = text)
        {
            var data = new DebugUtilsMessengerCallbackDataEXT { SType = StructureType.DebugUtilsMessengerCallbackDataExt, PMessage = p };
            submit(ctx.Instance, DebugUtilsMessageSeverityFlagsEXT.ErrorBitExt, DebugUtilsMessageTypeFlagsEXT.ValidationBitExt, &data);
        }
        var messages = ctx.Messenger!.Messages;
        ctx.Messenger.Clear();
        Assert.Contains(messages, m => m.Text.Contains("injected error"));
    }

    [VulkanFact]
    public void Embedding_writes_nan_rows_for_out_of_range_ids()
    {
        using var idx = Ctx.CreateTensor(GpuDType.I32, 3);
        idx.Upload([1, 7, -1]);
        using var table = Ctx.CreateTensor([1f, 2f, 3f, 4f], GpuDType.F32, 2, 2);
        using var y = Ctx.CreateTensor(GpuDType.F32, 3, 2);
        using var rec = new CommandRecorder(Ctx);
        Embedding.Record(rec, Ctx, idx, table, y);
        rec.Submit();
        var got = y.ToArray();
        Assert.Equal([3f, 4f], got[..2]);
        Assert.All(got[2..], v => Assert.True(float.IsNaN(v)));
    }

    [VulkanFact]
    public void Unknown_device_selector_is_a_gpu_unavailable_error()
    {
        var e = Assert.Throws<GpuUnavailableException>(() =>
            VulkanContext.Create(VulkanFixture.Options("selector") with { Device = "no-such-gpu-palm" }));
        Assert.Contains("no-such-gpu-palm", e.Message);
    }
}
