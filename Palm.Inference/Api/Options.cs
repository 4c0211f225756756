// The options records of the engine API: data with defaults, validated where they are used.
using Palm.Inference.Model;

namespace Palm.Inference;

/// <summary>Which compute backend a <see cref="PalmModel"/> runs on.</summary>
public enum Backend
{
    /// <summary>Vulkan when a hardware device exists, otherwise the CPU; <see cref="PalmModel.BackendDescription"/> says
    /// which and why. A software Vulkan driver (lavapipe) is used only when <c>PALM_VK_DEVICE</c> names it.</summary>
    Auto,
    /// <summary>The CPU reference backend (float32, always available).</summary>
    Cpu,
    /// <summary>Vulkan compute; loading fails with <see cref="Palm.Gpu.GpuUnavailableException"/> when no device exists.</summary>
    Vulkan,
}

/// <summary>A step of <see cref="PalmModel.Load(string, ModelOptions?)"/>.</summary>
/// <param name="Stage">What is being done: <c>read</c>, <c>hash</c>, <c>backend</c> (creating it and uploading weights), <c>ready</c>.</param>
/// <param name="Fraction">Overall fraction done, 0..1.</param>
public readonly record struct ModelLoadProgress(string Stage, double Fraction);

/// <summary>Options for loading a model.</summary>
public sealed record ModelOptions
{
    /// <summary>The backend to run on; default <see cref="Backend.Auto"/>.</summary>
    public Backend Backend { get; init; } = Backend.Auto;

    /// <summary>Receives load progress (read, hash, upload, ready); may be null.</summary>
    public IProgress<ModelLoadProgress>? Progress { get; init; }
}

/// <summary>Options for a new <see cref="PalmSession"/>.</summary>
public sealed record SessionOptions
{
    /// <summary>Seed of the session's sampling RNG; null draws a random seed.
    /// <see cref="GenerationOptions.Seed"/> reseeds it per call.</summary>
    public ulong? Seed { get; init; }

    /// <summary>How many recent tokens (prompt and generated) the repetition, presence and frequency
    /// penalties look at. Part of the session state, so it bounds the state's size. Default 64.</summary>
    public int PenaltyWindow { get; init; } = 64;

    internal void Validate()
    {
        if (PenaltyWindow is < 0 or > MaxPenaltyWindow)
            throw new ArgumentOutOfRangeException(nameof(PenaltyWindow), PenaltyWindow, $"must be in [0, {MaxPenaltyWindow}]");
    }

    internal const int MaxPenaltyWindow = 1 << 16;
}

/// <summary>
/// Options for one <see cref="PalmSession.GenerateAsync"/> call. Sampling applies, in order: logit bias,
/// penalties over the session's recent-token window, then greedy choice (temperature 0) or
/// temperature, top-k, top-p, min-p and a draw from the session's seeded RNG.
/// </summary>
public sealed record GenerationOptions
{
    /// <summary>Most tokens to generate; 0 only feeds the prompt. Default 256.</summary>
    public int MaxTokens { get; init; } = 256;

    /// <summary>Softmax temperature; 0 = greedy (argmax, no randomness). Default 0.8.</summary>
    public float Temperature { get; init; } = 0.8f;

    /// <summary>Keep the k most likely tokens; 0 = all. Default 40.</summary>
    public int TopK { get; init; } = 40;

    /// <summary>Keep the smallest set of most likely tokens whose probability reaches p; 1 = all. Default 0.95.</summary>
    public float TopP { get; init; } = 0.95f;

    /// <summary>Drop tokens whose probability is below min_p times the most likely one's; 0 = off. Default 0.</summary>
    public float MinP { get; init; }

    /// <summary>Divides positive (multiplies negative) logits of tokens in the recent window; 1 = off. Default 1.</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Subtracted once from the logit of every token in the recent window; 0 = off.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>Subtracted per occurrence in the recent window; 0 = off.</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>Added to the logits of the given token ids before anything else
    /// (<see cref="float.NegativeInfinity"/> bans a token). Ids must be in [0, V).</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    /// <summary>Generation stops when the text contains one of these; the stop string and what follows are
    /// not returned (text that may begin one is held back until it is decided).</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>Reseeds the session's RNG for this call: the same seed, prompt, state and device give the same text.
    /// Null continues the session's RNG.</summary>
    public ulong? Seed { get; init; }

    internal void Validate(PalmConfig config)
    {
        static ArgumentOutOfRangeException Bad(string name, object value, string rule) => new(name, value, rule);
        if (MaxTokens < 0) throw Bad(nameof(MaxTokens), MaxTokens, "must be >= 0");
        if (!(Temperature >= 0) || float.IsInfinity(Temperature)) throw Bad(nameof(Temperature), Temperature, "must be finite and >= 0");
        if (TopK < 0) throw Bad(nameof(TopK), TopK, "must be >= 0");
        if (!(TopP > 0 && TopP <= 1)) throw Bad(nameof(TopP), TopP, "must be in (0, 1]");
        if (!(MinP >= 0 && MinP < 1)) throw Bad(nameof(MinP), MinP, "must be in [0, 1)");
        if (!(RepetitionPenalty > 0) || float.IsInfinity(RepetitionPenalty)) throw Bad(nameof(RepetitionPenalty), RepetitionPenalty, "must be finite and > 0");
        if (!float.IsFinite(PresencePenalty)) throw Bad(nameof(PresencePenalty), PresencePenalty, "must be finite");
        if (!float.IsFinite(FrequencyPenalty)) throw Bad(nameof(FrequencyPenalty), FrequencyPenalty, "must be finite");
        if (LogitBias is not null)
            foreach (var (id, b) in LogitBias)
            {
                if ((uint)id >= (uint)config.VocabSize) throw Bad(nameof(LogitBias), id, $"token id must be in [0, {config.VocabSize})");
                if (float.IsNaN(b) || float.IsPositiveInfinity(b)) throw Bad(nameof(LogitBias), b, "bias must be a number or -infinity");
            }
        ArgumentNullException.ThrowIfNull(StopStrings);
        foreach (var s in StopStrings)
            if (string.IsNullOrEmpty(s)) throw new ArgumentException("stop strings must not be null or empty", nameof(StopStrings));
    }
}

/// <summary>Why a generation ended.</summary>
public enum StopReason
{
    /// <summary><see cref="GenerationOptions.MaxTokens"/> tokens were generated.</summary>
    MaxTokens,
    /// <summary>The text reached one of <see cref="GenerationOptions.StopStrings"/>.</summary>
    StopString,
    /// <summary>The model produced its end-of-text token.</summary>
    EndOfText,
    /// <summary>The cancellation token fired (during prefill the session is left as it was before the call).</summary>
    Cancelled,
    /// <summary>The caller stopped enumerating before the generation ended.</summary>
    Abandoned,
}

/// <summary>The outcome of one <see cref="PalmSession.GenerateAsync"/> call.</summary>
/// <param name="StopReason">Why it ended.</param>
/// <param name="PromptTokens">Tokens fed before generating (the prompt, plus a token carried over from the previous call).</param>
/// <param name="GeneratedTokens">Tokens sampled.</param>
/// <param name="PrefillTime">Time spent feeding the prompt.</param>
/// <param name="DecodeTime">Time spent generating, from the end of prefill to the end.</param>
public sealed record GenerationResult(StopReason StopReason, int PromptTokens, int GeneratedTokens, TimeSpan PrefillTime, TimeSpan DecodeTime)
{
    /// <summary>Generated tokens per second of <see cref="DecodeTime"/> (0 when nothing was generated).</summary>
    public double TokensPerSecond => GeneratedTokens == 0 || DecodeTime <= TimeSpan.Zero ? 0 : GeneratedTokens / DecodeTime.TotalSeconds;
}

/// <summary>What is wrong with bytes given to <see cref="PalmSession.RestoreState(ReadOnlySpan{byte})"/>.</summary>
public enum SessionStateError
{
    /// <summary>Not a session state, truncated, or damaged (checksum or a field out of range).</summary>
    Corrupt,
    /// <summary>A state format version this library does not read.</summary>
    UnsupportedVersion,
    /// <summary>Saved from a different model (config or weights differ).</summary>
    WrongModel,
}

/// <summary>Thrown when saved session state cannot be restored; <see cref="Error"/> says why.</summary>
public sealed class SessionStateException(SessionStateError error, string message) : Exception(message)
{
    /// <summary>Why the state was rejected.</summary>
    public SessionStateError Error { get; } = error;
}
