// The engine-facing model: a loaded checkpoint bound to one backend, the tokenizer, and the
// scheduler that batches its sessions. Thread-safe; sessions are created from it.
using Palm.Gpu;
using Palm.Gpu.Vulkan;
using Palm.Inference.Backends;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Tokenizer;

namespace Palm.Inference;

/// <summary>
/// A Palm model ready to generate: weights on a backend, plus its tokenizer.
/// </summary>
/// <example>
/// <code>
/// using var model = PalmModel.Load("model.palm");
/// using var session = model.CreateSession();
/// await foreach (var piece in session.GenerateAsync("In the beginning", new GenerationOptions { MaxTokens = 50 }))
///     Console.Write(piece);
/// </code>
/// </example>
/// <remarks>
/// <para><b>Threads.</b> A model may be shared by any number of threads: creating sessions and
/// generating with different sessions at the same time is safe. Sessions that generate at the same
/// time are stepped together in one batched backend call. A single <see cref="PalmSession"/> runs one
/// call at a time.</para>
/// <para><b>Memory.</b> <see cref="WeightBytes"/> is held once per model (a q8/q4 file stays quantized on
/// both backends); each session adds
/// <see cref="SessionBytes"/>, independent of how long its conversation runs (Palm keeps no KV cache).</para>
/// </remarks>
public sealed class PalmModel : IDisposable
{
    private readonly IInferenceBackend _backend;
    private int _disposed;

    private PalmModel(IInferenceBackend backend, BpeTokenizer tokenizer, byte[] hash)
    {
        _backend = backend;
        Tokenizer = tokenizer;
        Hash = hash;
        Scheduler = new BatchScheduler(backend);
        Backend = backend.Kind == BackendKind.Vulkan ? Backend.Vulkan : Backend.Cpu;
    }

    /// <summary>Loads a <c>.palm</c> checkpoint file (it must hold a tokenizer).</summary>
    /// <exception cref="PalmFormatException">The file is not a valid checkpoint or holds no tokenizer.</exception>
    /// <exception cref="IOException">The file cannot be read.</exception>
    /// <exception cref="GpuUnavailableException"><see cref="Backend.Vulkan"/> was asked for and no Vulkan device exists.</exception>
    public static PalmModel Load(string path, ModelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        options?.Progress?.Report(new ModelLoadProgress("read", 0));
        return FromCheckpoint(PalmCheckpoint.Load(path), options);
    }

    /// <summary>Loads a <c>.palm</c> checkpoint from the rest of <paramref name="stream"/>.</summary>
    /// <exception cref="PalmFormatException">The content is not a valid checkpoint or holds no tokenizer.</exception>
    /// <exception cref="GpuUnavailableException"><see cref="Backend.Vulkan"/> was asked for and no Vulkan device exists.</exception>
    public static PalmModel Load(Stream stream, ModelOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(stream);
        options?.Progress?.Report(new ModelLoadProgress("read", 0));
        return FromCheckpoint(PalmCheckpoint.Load(stream), options);
    }

    private static PalmModel FromCheckpoint(PalmCheckpoint ckpt, ModelOptions? options)
    {
        if (ckpt.Tokenizer is null) throw new PalmFormatException("the checkpoint holds no tokenizer; a model for generation needs one");
        var tokenizer = ckpt.Tokenizer.ToTokenizer();
        // q8/q4 tensors stay quantized until a backend says how it computes with them.
        return Create(ModelWeights.From(ckpt), tokenizer, options);
    }

    /// <summary>Wraps weights already in memory (tests, tools). They must not change while the model lives (the CPU backend reads an aligned copy of float32 weights; Vulkan uploads them).</summary>
    internal static PalmModel Create(PalmParameters parameters, BpeTokenizer tokenizer, ModelOptions? options = null) =>
        Create(ModelWeights.From(parameters), tokenizer, options);

    private static PalmModel Create(ModelWeights weights, BpeTokenizer tokenizer, ModelOptions? options)
    {
        options ??= new ModelOptions();
        var cfg = weights.Config;
        if (tokenizer.VocabSize > cfg.VocabSize)
            throw new PalmFormatException($"the tokenizer has {tokenizer.VocabSize} tokens but the model only {cfg.VocabSize}");
        options.Progress?.Report(new ModelLoadProgress("hash", 0.4));
        var hash = weights.Hash();
        options.Progress?.Report(new ModelLoadProgress("backend", 0.6));
        // Both backends keep q8/q4 tensors quantized: the CPU reads them in place, Vulkan uploads their bytes.
        IInferenceBackend backend = options.Backend switch
        {
            Backend.Cpu => new CpuBackend(weights.ToCpu()),
            Backend.Vulkan => VulkanBackend.Create(weights),
            Backend.Auto => AutoBackend(weights),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Backend, "unknown backend"),
        };
        options.Progress?.Report(new ModelLoadProgress("ready", 1));
        return new PalmModel(backend, tokenizer, hash);
    }

    /// <summary>Wraps a backend made by the caller (tests: a Vulkan backend with the validation layer on). The model owns it.</summary>
    internal static PalmModel Create(PalmParameters parameters, BpeTokenizer tokenizer, IInferenceBackend backend) =>
        new(backend, tokenizer, ModelWeights.From(parameters).Hash());

    private static IInferenceBackend AutoBackend(ModelWeights weights)
    {
        var options = VulkanOptions.FromEnvironment();
        VulkanContext ctx;
        try
        {
            ctx = VulkanContext.Create(options);
        }
        catch (GpuUnavailableException e)
        {
            return new CpuBackend(weights.ToCpu(), "Vulkan unavailable: " + e.Message);
        }
        // A software Vulkan driver (lavapipe/llvmpipe) runs on the same CPU cores as the CPU
        // backend but through an emulated GPU: measured about 6x slower on the demo model. Use it
        // only when PALM_VK_DEVICE names it.
        if (ctx.Capabilities.DeviceType == "Cpu" && options.Device is null)
        {
            var name = ctx.Capabilities.DeviceName;
            ctx.Dispose();
            return new CpuBackend(weights.ToCpu(), $"the only Vulkan device, {name}, is a software (CPU) implementation; set PALM_VK_DEVICE or Backend.Vulkan to use it");
        }
        return VulkanBackend.Create(ctx, weights);
    }

    internal BatchScheduler Scheduler { get; }
    internal IInferenceBackend BackendImpl => _backend;
    internal byte[] Hash { get; }

    /// <summary>The model configuration.</summary>
    public PalmConfig Config => _backend.Config;

    /// <summary>The tokenizer stored with the model.</summary>
    public BpeTokenizer Tokenizer { get; }

    /// <summary>The backend in use: <see cref="Backend.Cpu"/> or <see cref="Backend.Vulkan"/>, never <see cref="Backend.Auto"/>.</summary>
    public Backend Backend { get; }

    /// <summary>Which backend and device run the model, and why (e.g. why <see cref="Backend.Auto"/> fell back to the CPU).</summary>
    public string BackendDescription => _backend.Description;

    /// <summary>SHA-256 of the config and weights, in hex: saved session states are bound to it.</summary>
    public string Id => Convert.ToHexStringLower(Hash);

    /// <summary>
    /// Bytes of weights the backend holds resident: float32 tensors 4 per parameter, q8/q4 tensors 1 byte
    /// or half a byte per element plus their scales (they stay quantized on both backends); on
    /// <see cref="Backend.Vulkan"/> the device buffers (each rounded up to 4 bytes). On
    /// <see cref="Backend.Cpu"/> the decoder also holds transposed copies of each block's QKV second
    /// factor and projection input factor (float32, or q8 levels), which let a token skip the weights
    /// of inputs that are zero (about half of them); they are counted here. It also keeps, not
    /// counted here, a table of what the start of a step makes of a token id (at most a quarter of
    /// these bytes).
    /// </summary>
    public long WeightBytes => _backend.WeightBytes;

    /// <summary>Bytes one session holds: its AoD state, logits row, penalty window and sampler buffers
    /// (for the default <see cref="SessionOptions.PenaltyWindow"/>). Constant over the conversation.</summary>
    public long SessionBytes => SessionBytesFor(new SessionOptions());

    internal long SessionBytesFor(SessionOptions o)
    {
        var c = Config;
        long state = (long)SequenceState.FloatCount(c) * sizeof(float) * 2; // state + the rollback snapshot
        long sampler = (long)c.VocabSize * (4 + 4 + 4 + 8 + 4);             // work, keys, order, probs, counts
        long logits = (long)c.VocabSize * sizeof(float);
        return state + sampler + logits + (long)o.PenaltyWindow * sizeof(int) * 2 + 256;
    }

    /// <summary>Creates a conversation with a fresh state.</summary>
    /// <exception cref="ObjectDisposedException">The model was disposed.</exception>
    public PalmSession CreateSession(SessionOptions? options = null)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        options ??= new SessionOptions();
        options.Validate();
        return new PalmSession(this, options);
    }

    /// <summary>
    /// Runs throwaway generations on a private session until they run at full speed, or until
    /// <paramref name="budget"/> (default 3 s) is spent, so that the first real
    /// generation does not pay for compiling the code it runs. Under .NET's JIT the first
    /// generations after a load run several times slower than later ones (methods start
    /// unoptimized and are recompiled after use; on Vulkan, pipelines are also created on first
    /// use): call this during a loading screen. The runs take turns: a one-word prompt and 160
    /// tokens with the default <see cref="GenerationOptions"/> (past the penalty window, whose
    /// wrap-around is another path), then a prompt of about 50 tokens with 48 tokens sampled with
    /// penalties, and greedily; it stops once the runtime has recompiled them optimized (seen
    /// through <see cref="System.Runtime.JitInfo"/>) and their times have settled. The model, its
    /// other sessions and their RNGs are not affected, and sessions may generate meanwhile (they
    /// are batched with it).
    /// </summary>
    /// <param name="budget">Most time to spend; checked during each run as well, so it ends within about one token of it.</param>
    /// <param name="cancellationToken">Ends the warm-up early (throws <see cref="OperationCanceledException"/>).</param>
    /// <returns>How long the warm-up ran. Asynchronous (like <see cref="PalmSession.GenerateAsync"/>), so a
    /// loading screen's thread is not blocked; the two exceptions below are thrown by the call itself.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="budget"/> is negative.</exception>
    /// <exception cref="ObjectDisposedException">The model was disposed.</exception>
    public Task<TimeSpan> WarmUpAsync(TimeSpan? budget = null, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var limit = budget ?? TimeSpan.FromSeconds(3);
        ArgumentOutOfRangeException.ThrowIfLessThan(limit, TimeSpan.Zero, nameof(budget));
        return WarmUpCore(limit, cancellationToken);
    }

    private async Task<TimeSpan> WarmUpCore(TimeSpan limit, CancellationToken cancellationToken)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var timeUp = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeUp.CancelAfter(limit);
        string prompt = string.Concat(Enumerable.Repeat("The quick brown fox jumps over the lazy dog. ", 6));
        // The default options, penalties (another sampler path), greedy choice: each path left out
        // runs unoptimized code the first time a real generation takes it (measured on the built-in
        // model: 200 tokens in 70-95 ms instead of 13-20 after warming with 48-token runs only).
        GenerationOptions[] kinds =
        [
            new() { MaxTokens = 160, Seed = 1 },
            new() { MaxTokens = 48, Temperature = 0.8f, TopK = 40, TopP = 0.9f, RepetitionPenalty = 1.1f, PresencePenalty = 0.1f, Seed = 1 },
            new() { MaxTokens = 48, Temperature = 0f },
        ];
        // With tiered compilation (the default) methods start unoptimized, and those called often
        // are recompiled optimized in batches on a background thread, each after a stretch (the
        // call-counting delay, 100 ms by default; ~200-450 ms measured) in which nothing new was
        // compiled; later batches (profile-guided) keep coming for seconds but change little. So:
        // 10 or more methods compiled after >= 100 ms without a compilation mark a batch (stray
        // single methods also come after a pause, measured: 1-6); after one, warm once two runs
        // of every kind are each within 25 % of that kind's fastest since the latest batch. The
        // unoptimized plateau before the first batch is stable too, hence the batch requirement.
        // Without tiering (or under NativeAOT) the runs' stability alone decides.
        bool tiered = System.Runtime.CompilerServices.RuntimeFeature.IsDynamicCodeCompiled
                      && AppContext.GetData("System.Runtime.TieredCompilation") is not (false or "false")
                      && Environment.GetEnvironmentVariable("DOTNET_TieredCompilation") != "0";
        bool batchSeen = !tiered;
        long compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
        var compiledAt = clock.Elapsed;
        var best = new double[kinds.Length];
        var last = new double[kinds.Length];
        var before = new double[kinds.Length];
        void Forget() { Array.Fill(best, double.MaxValue); Array.Fill(last, double.MaxValue); Array.Fill(before, double.MaxValue); }
        Forget();
        for (int run = 0; ; run++)
        {
            int kind = run % kinds.Length;
            var t0 = clock.Elapsed;
            try
            {
                using var session = CreateSession(new SessionOptions { Seed = 1 });
                await foreach (var _ in session.GenerateAsync(kind == 0 ? "The" : prompt, kinds[kind], timeUp.Token).ConfigureAwait(false)) { }
            }
            catch (OperationCanceledException) when (timeUp.IsCancellationRequested) { }
            // A cancelled generation usually ends early without an exception.
            cancellationToken.ThrowIfCancellationRequested();
            if (timeUp.IsCancellationRequested) break;
            var t = clock.Elapsed;
            long now = System.Runtime.JitInfo.GetCompiledMethodCount();
            if (now != compiled)
            {
                if (run > 0 && now - compiled >= 10 && t0 - compiledAt >= TimeSpan.FromMilliseconds(100)) { batchSeen = true; Forget(); }
                (compiled, compiledAt) = (now, t);
            }
            (before[kind], last[kind]) = (last[kind], (t - t0).TotalSeconds);
            best[kind] = Math.Min(best[kind], last[kind]);
            if (batchSeen && Enumerable.Range(0, kinds.Length).All(k => Math.Max(last[k], before[k]) <= 1.25 * best[k])) break;
        }
        return clock.Elapsed;
    }

    /// <summary>Frees the backend. Generations still running end with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Scheduler.Dispose();
    }
}
