// The model's shape: every field of the spec's config table, validated in one place so that
// every backend, checkpoint loader and CLI reports a bad combination the same way.
using System.Text.Json.Serialization;

namespace Palm.Inference.Model;

/// <summary>How the <c>L</c> distinct blocks are scheduled over <c>R</c> recursion steps.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<ShareMode>))]
public enum ShareMode
{
    /// <summary>Apply blocks 0..L-1, R times over.</summary>
    [JsonStringEnumMemberName("cycle")] Cycle,
    /// <summary>Apply block 0 R times, then block 1 R times, and so on.</summary>
    [JsonStringEnumMemberName("sequence")] Sequence,
}

/// <summary>How the AoD running state mixes values.</summary>
[JsonConverter(typeof(JsonStringEnumConverter<AodMix>))]
public enum AodMix
{
    /// <summary>Cumulative gated sum.</summary>
    [JsonStringEnumMemberName("sum")] Sum,
    /// <summary>Cumulative gated sum normalised by the cumulative gates.</summary>
    [JsonStringEnumMemberName("mean")] Mean,
}

/// <summary>Thrown for an invalid model configuration; <see cref="Field"/> names the offending field.</summary>
public sealed class PalmConfigException(string field, string message) : ArgumentException($"config.{field}: {message}", field)
{
    /// <summary>The config field (snake_case, as in checkpoints and JSON) that is invalid.</summary>
    public string Field { get; } = field;
}

/// <summary>
/// The Palm model configuration (spec v1, "Config"). Field names in JSON and checkpoints are the
/// spec's snake_case names. Call <see cref="Validate"/> (or use <see cref="Validated"/>) before use.
/// </summary>
public sealed record PalmConfig
{
    /// <summary>V: number of tokens.</summary>
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; } = 512;
    /// <summary>Training context length; inference may run longer.</summary>
    [JsonPropertyName("block_size")] public int BlockSize { get; init; } = 128;
    /// <summary>C: residual width.</summary>
    [JsonPropertyName("n_embd")] public int NEmbd { get; init; } = 64;
    /// <summary>H: AoD heads.</summary>
    [JsonPropertyName("n_head")] public int NHead { get; init; } = 4;
    /// <summary>D: AoD total width (D % H == 0, (D/H) % 4 == 0).</summary>
    [JsonPropertyName("d_qkv")] public int DQkv { get; init; } = 128;
    /// <summary>r: rank of factorized linears; 0 = full rank.</summary>
    [JsonPropertyName("d_rank")] public int DRank { get; init; } = 16;
    /// <summary>L: distinct blocks.</summary>
    [JsonPropertyName("n_layer")] public int NLayer { get; init; } = 2;
    /// <summary>R: recursion steps.</summary>
    [JsonPropertyName("n_recur")] public int NRecur { get; init; } = 2;
    /// <summary>Block schedule over recursion steps.</summary>
    [JsonPropertyName("share")] public ShareMode Share { get; init; } = ShareMode.Cycle;
    /// <summary>F: SwiGLU FFN width of the parallel branch; 0 = no FFN.</summary>
    [JsonPropertyName("d_ffn")] public int DFfn { get; init; } = 0;
    /// <summary>AoD mixing mode.</summary>
    [JsonPropertyName("aod_mix")] public AodMix Mix { get; init; } = AodMix.Mean;

    /// <summary>hd = D / H.</summary>
    [JsonIgnore] public int HeadDim => DQkv / NHead;
    /// <summary>Number of block applications, L * R.</summary>
    [JsonIgnore] public int Applications => NLayer * NRecur;
    /// <summary>Floats of AoD state per block application: D, or 2D with mean mixing.</summary>
    [JsonIgnore] public int StateWidth => Mix == AodMix.Mean ? 2 * DQkv : DQkv;

    /// <summary>Preset <c>tiny</c>: V=512, block 128, C=64, H=4, D=128, r=16, L=2, R=2, F=0, cycle, mean.</summary>
    public static PalmConfig Tiny { get; } = new();

    /// <summary>Preset <c>small</c>: V=4096, block 256, C=256, H=8, D=512, r=64, L=4, R=2, F=0, cycle, mean.</summary>
    public static PalmConfig Small { get; } = new()
    {
        VocabSize = 4096, BlockSize = 256, NEmbd = 256, NHead = 8, DQkv = 512, DRank = 64,
        NLayer = 4, NRecur = 2, DFfn = 0, Share = ShareMode.Cycle, Mix = AodMix.Mean,
    };

    /// <summary>Looks up a named preset (<c>tiny</c>, <c>small</c>).</summary>
    /// <exception cref="ArgumentException">Unknown preset name.</exception>
    public static PalmConfig Preset(string name) => name.ToLowerInvariant() switch
    {
        "tiny" => Tiny,
        "small" => Small,
        _ => throw new ArgumentException($"unknown preset '{name}' (known: tiny, small)", nameof(name)),
    };

    /// <summary>Checks every constraint of the spec.</summary>
    /// <exception cref="PalmConfigException">The first violated constraint, naming its field.</exception>
    public void Validate()
    {
        static void Positive(int v, string f) { if (v <= 0) throw new PalmConfigException(f, $"must be > 0, got {v}"); }
        Positive(VocabSize, "vocab_size");
        Positive(BlockSize, "block_size");
        Positive(NEmbd, "n_embd");
        Positive(NHead, "n_head");
        Positive(DQkv, "d_qkv");
        Positive(NLayer, "n_layer");
        Positive(NRecur, "n_recur");
        if (DRank < 0) throw new PalmConfigException("d_rank", $"must be >= 0, got {DRank}");
        if (DFfn < 0) throw new PalmConfigException("d_ffn", $"must be >= 0, got {DFfn}");
        if (DQkv % NHead != 0) throw new PalmConfigException("d_qkv", $"d_qkv ({DQkv}) must be divisible by n_head ({NHead})");
        if (HeadDim % 4 != 0) throw new PalmConfigException("d_qkv", $"head width d_qkv/n_head = {HeadDim} must be a multiple of 4 (RoPE)");
        if (!Enum.IsDefined(Share)) throw new PalmConfigException("share", $"unknown share mode {(int)Share} (known: cycle, sequence)");
        if (!Enum.IsDefined(Mix)) throw new PalmConfigException("aod_mix", $"unknown aod_mix {(int)Mix} (known: sum, mean)");
        // Guards against absurd sizes from untrusted files: keep every tensor addressable by int.
        const long MaxElems = int.MaxValue / 2;
        long w = Math.Max(Math.Max(NEmbd, DQkv), Math.Max(DFfn, DRank));
        long[] sizes = [(long)VocabSize * Math.Max(NEmbd, DRank), 3L * DQkv * w, 2L * NEmbd * w, 2L * DFfn * w, (long)VocabSize * w, (long)NEmbd * w];
        foreach (var s in sizes)
            if (s > MaxElems) throw new PalmConfigException("n_embd", $"a weight would hold {s} elements, more than {MaxElems}");
        if ((long)NLayer * NRecur > 65536) throw new PalmConfigException("n_recur", "n_layer * n_recur must be <= 65536");
    }

    /// <summary>Returns this config after <see cref="Validate"/>.</summary>
    public PalmConfig Validated() { Validate(); return this; }

    /// <summary>Parses <c>share</c> from its spec name.</summary>
    public static ShareMode ParseShare(string s) => s switch
    {
        "cycle" => ShareMode.Cycle,
        "sequence" => ShareMode.Sequence,
        _ => throw new PalmConfigException("share", $"unknown share '{s}' (known: cycle, sequence)"),
    };

    /// <summary>Parses <c>aod_mix</c> from its spec name.</summary>
    public static AodMix ParseMix(string s) => s switch
    {
        "sum" => AodMix.Sum,
        "mean" => AodMix.Mean,
        _ => throw new PalmConfigException("aod_mix", $"unknown aod_mix '{s}' (known: sum, mean)"),
    };

    /// <summary>Spec name of a share mode.</summary>
    public static string ShareName(ShareMode s) => s == ShareMode.Cycle ? "cycle" : "sequence";
    /// <summary>Spec name of a mix mode.</summary>
    public static string MixName(AodMix m) => m == AodMix.Mean ? "mean" : "sum";

    /// <summary>The block index applied at schedule position <paramref name="a"/> (0..L*R-1).</summary>
    public int BlockOfApplication(int a) => Share == ShareMode.Cycle ? a % NLayer : a / NRecur;
}
