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
    /// <see cref="Backend.Vulkan"/> the device buffers (each rounded up to 4 bytes).
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

    /// <summary>Frees the backend. Generations still running end with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Scheduler.Dispose();
    }
}
