// PalmModel: loading (file and stream, progress, a checkpoint without tokenizer), the backend
// choice and its explanation, the memory budget, disposal; and sessions on Vulkan when present.
using Palm.Inference;
using Palm.Inference.Checkpoint;
using Palm.Tests.Gpu;

namespace Palm.Tests.Api;

public sealed class ModelTests
{
    private static readonly TinyModel M = TinyModel.Shared;

    [Fact]
    public void Loads_from_a_stream_with_progress_and_reports_its_budget()
    {
        var stages = new List<string>();
        using var fs = File.OpenRead(M.Path);
        using var model = PalmModel.Load(fs, new ModelOptions { Backend = Backend.Cpu, Progress = new SyncProgress(p => stages.Add(p.Stage)) });
        Assert.Equal(["read", "hash", "backend", "ready"], stages);
        Assert.Equal(Backend.Cpu, model.Backend);
        Assert.StartsWith("cpu", model.BackendDescription);
        Assert.Equal(M.Parameters.Count * 4L + Palm.Tests.Quantization.QuantizedCpuModelTests.CpuDecoderCopyBytes(PalmCheckpoint.FromParameters(M.Parameters)), model.WeightBytes);
        int stateFloats = M.Parameters.Config.Applications * M.Parameters.Config.StateWidth;
        Assert.InRange(model.SessionBytes, stateFloats * 4L, stateFloats * 4L + 64L * M.Parameters.Config.VocabSize + 4096);
        Assert.Equal(64, model.Id.Length);
    }

    [Fact]
    public void Auto_picks_a_hardware_vulkan_device_and_says_why_otherwise()
    {
        using var model = M.Load(Backend.Auto);
        if (VulkanProbe.UnavailableReason is not null)
        {
            Assert.Equal(Backend.Cpu, model.Backend);
            Assert.Contains("Vulkan unavailable", model.BackendDescription);
            return;
        }
        using var ctx = Palm.Gpu.Vulkan.VulkanContext.Create(new Palm.Gpu.Vulkan.VulkanOptions { PipelineCacheDir = VulkanProbe.TempDir("auto") });
        bool software = ctx.Capabilities.DeviceType == "Cpu" && Environment.GetEnvironmentVariable("PALM_VK_DEVICE") is null or "";
        Assert.Equal(software ? Backend.Cpu : Backend.Vulkan, model.Backend);
        Assert.Contains(software ? "software (CPU) implementation" : "vulkan on ", model.BackendDescription);
    }

    [Fact]
    public void A_checkpoint_without_tokenizer_is_rejected()
    {
        var path = Path.Combine(Path.GetTempPath(), $"palm-api-notok-{Environment.ProcessId}.palm");
        try
        {
            PalmCheckpoint.FromParameters(M.Parameters).Save(path);
            var e = Assert.Throws<PalmFormatException>(() => PalmModel.Load(path, new ModelOptions { Backend = Backend.Cpu }));
            Assert.Contains("tokenizer", e.Message);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public async Task Warm_up_changes_nothing_a_session_sees()
    {
        var o = new GenerationOptions { MaxTokens = 16, Seed = 7, LogitBias = M.AsciiOnly };
        var cont = new GenerationOptions { MaxTokens = 8, LogitBias = M.AsciiOnly };
        // Reference: the same calls on a model that is never warmed up.
        string expectFresh, expectContinued;
        using (var cold = M.Load())
        {
            using (var s = cold.CreateSession()) expectFresh = await SessionTests.Collect(s, "The tokens", o);
            using var c = cold.CreateSession(new SessionOptions { Seed = 3 });
            await SessionTests.Collect(c, "In the beginning", cont);
            expectContinued = await SessionTests.Collect(c, " and", cont);
        }
        using var model = M.Load();
        using var open = model.CreateSession(new SessionOptions { Seed = 3 });
        await SessionTests.Collect(open, "In the beginning", cont);
        // (No upper bound on its time here: on a loaded test machine one token may take long; the
        // zero budget below checks that the budget ends it.)
        var took = await model.WarmUpAsync(TimeSpan.FromSeconds(2));
        Assert.True(took > TimeSpan.Zero, $"warm-up took {took}");
        // A session open across the warm-up continues as if there had been none (its state and RNG),
        // and a new seeded one gives what a cold model gives.
        Assert.Equal(expectContinued, await SessionTests.Collect(open, " and", cont));
        using (var s = model.CreateSession()) Assert.Equal(expectFresh, await SessionTests.Collect(s, "The tokens", o));
    }

    [Fact]
    public async Task Warm_up_honours_its_budget_cancellation_and_disposal()
    {
        using var model = M.Load();
        Assert.Throws<ArgumentOutOfRangeException>(() => { _ = model.WarmUpAsync(TimeSpan.FromMilliseconds(-1)); });
        using (var cancelled = new CancellationTokenSource())
        {
            cancelled.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => model.WarmUpAsync(cancellationToken: cancelled.Token));
        }
        // A zero budget ends it at once (within a token), without an exception; unbounded, the
        // warm-up would run many generations (about a second here).
        var took = await model.WarmUpAsync(TimeSpan.Zero);
        Assert.True(took < TimeSpan.FromSeconds(2), $"a zero budget took {took}");
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => { _ = model.WarmUpAsync(); });
    }

    [Fact]
    public async Task A_disposed_model_refuses_new_work()
    {
        var model = M.Load();
        var s = model.CreateSession();
        model.Dispose();
        Assert.Throws<ObjectDisposedException>(() => model.CreateSession());
        await Assert.ThrowsAsync<ObjectDisposedException>(() => SessionTests.Collect(s, "The", new GenerationOptions { MaxTokens = 2 }));
    }

    [VulkanFact]
    public async Task Vulkan_sessions_batched_match_solo_and_the_cpu()
    {
        const int N = 6;
        using var gpu = M.Load(Backend.Vulkan);
        using var cpu = M.Load(Backend.Cpu);
        var prompts = Enumerable.Range(0, N).Select(i => string.Join(' ', TinyModel.Corpus.Split(' ').Take(1 + 2 * i))).ToArray();
        var o = new GenerationOptions { Temperature = 0, MaxTokens = 12, LogitBias = M.AsciiOnly };
        var solo = new string[N];
        var onCpu = new string[N];
        for (int i = 0; i < N; i++)
        {
            using (var s = gpu.CreateSession()) solo[i] = await SessionTests.Collect(s, prompts[i], o);
            using (var s = cpu.CreateSession()) onCpu[i] = await SessionTests.Collect(s, prompts[i], o);
        }
        var sessions = Enumerable.Range(0, N).Select(_ => gpu.CreateSession()).ToArray();
        var together = await Task.WhenAll(Enumerable.Range(0, N).Select(i => Task.Run(() => SessionTests.Collect(sessions[i], prompts[i], o))));
        // Greedy tokens: a float32 difference flips one only at a near-tie of the two best logits.
        for (int i = 0; i < N; i++)
        {
            Assert.True(solo[i] == together[i], $"Vulkan session {i} batched differs from solo {M.Describe}:\n  solo:    {solo[i]}\n  batched: {together[i]}");
            Assert.True(solo[i] == onCpu[i], $"Vulkan session {i} differs from the CPU {M.Describe}:\n  cpu:    {onCpu[i]}\n  vulkan: {solo[i]}");
        }
        Assert.True(gpu.Scheduler.MaxBatch > 1, "no batched step happened");
    }

    private sealed class SyncProgress(Action<ModelLoadProgress> report) : IProgress<ModelLoadProgress>
    {
        public void Report(ModelLoadProgress value) => report(value);
    }
}
