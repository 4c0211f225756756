// A training run's configuration as data (CONVENTIONS: sealed records with defaults, JSON
// overrides, unknown keys are errors, the resolved config is printed at start). Keys are the
// snake_case names below; `model` holds a preset name plus optional per-field overrides.
using System.Text.Json.Serialization;
using Palm.Inference.Model;
using Palm.Trainer.Commands;

namespace Palm.Trainer.Training;

/// <summary>The model section: a preset (<c>tiny</c>, <c>small</c>) and any fields that differ from it.</summary>
public sealed record ModelSection
{
    [JsonPropertyName("preset")] public string Preset { get; init; } = "tiny";
    /// <summary>Null: the data's vocabulary size (from the prepared manifest).</summary>
    [JsonPropertyName("vocab_size")] public int? VocabSize { get; init; }
    [JsonPropertyName("block_size")] public int? BlockSize { get; init; }
    [JsonPropertyName("n_embd")] public int? NEmbd { get; init; }
    [JsonPropertyName("n_head")] public int? NHead { get; init; }
    [JsonPropertyName("d_qkv")] public int? DQkv { get; init; }
    [JsonPropertyName("d_rank")] public int? DRank { get; init; }
    [JsonPropertyName("n_layer")] public int? NLayer { get; init; }
    [JsonPropertyName("n_recur")] public int? NRecur { get; init; }
    [JsonPropertyName("d_ffn")] public int? DFfn { get; init; }
    [JsonPropertyName("share")] public string? Share { get; init; }
    [JsonPropertyName("aod_mix")] public string? AodMix { get; init; }

    /// <summary>The preset with the overrides applied; vocab_size defaults to <paramref name="dataVocab"/>.</summary>
    /// <exception cref="UserError">Unknown preset, invalid field, or a vocabulary smaller than the data's.</exception>
    public PalmConfig Resolve(int? dataVocab)
    {
        PalmConfig b;
        try { b = PalmConfig.Preset(Preset); }
        catch (ArgumentException) { throw new UserError($"config.model.preset: unknown preset '{Preset}' (known: tiny, small)"); }
        try
        {
            var c = b with
            {
                VocabSize = VocabSize ?? dataVocab ?? b.VocabSize,
                BlockSize = BlockSize ?? b.BlockSize, NEmbd = NEmbd ?? b.NEmbd, NHead = NHead ?? b.NHead,
                DQkv = DQkv ?? b.DQkv, DRank = DRank ?? b.DRank, NLayer = NLayer ?? b.NLayer, NRecur = NRecur ?? b.NRecur,
                DFfn = DFfn ?? b.DFfn,
                Share = Share is null ? b.Share : PalmConfig.ParseShare(Share),
                Mix = AodMix is null ? b.Mix : PalmConfig.ParseMix(AodMix),
            };
            c.Validate();
            if (dataVocab is int dv && c.VocabSize < dv)
                throw new UserError($"config.model.vocab_size: {c.VocabSize} is smaller than the data's vocabulary of {dv}");
            return c;
        }
        catch (PalmConfigException e)
        {
            // ArgumentException.Message is "config.field: text (Parameter 'field')"; keep the text.
            string m = e.Message[(e.Message.IndexOf(": ", StringComparison.Ordinal) + 2)..];
            int p = m.LastIndexOf(" (Parameter '", StringComparison.Ordinal);
            throw new UserError($"config.model.{e.Field}: {(p > 0 ? m[..p] : m)}");
        }
    }

    /// <summary>This section with every field filled from <paramref name="c"/> (what a run saves).</summary>
    public static ModelSection From(string preset, PalmConfig c) => new()
    {
        Preset = preset, VocabSize = c.VocabSize, BlockSize = c.BlockSize, NEmbd = c.NEmbd, NHead = c.NHead, DQkv = c.DQkv,
        DRank = c.DRank, NLayer = c.NLayer, NRecur = c.NRecur, DFfn = c.DFfn, Share = PalmConfig.ShareName(c.Share), AodMix = PalmConfig.MixName(c.Mix),
    };
}

/// <summary>Everything a training run reads; every field has a default suited to the tiny preset.</summary>
public sealed record TrainConfig
{
    [JsonPropertyName("model")] public ModelSection Model { get; init; } = new();
    /// <summary>A folder made by <c>prepare</c> (manifest.json and shards).</summary>
    [JsonPropertyName("data")] public string Data { get; init; } = "data/kjv";

    /// <summary>Optimizer steps in the whole run (the LR schedule's length).</summary>
    [JsonPropertyName("steps")] public int Steps { get; init; } = 300;
    /// <summary>Sequences of block_size tokens per micro-batch.</summary>
    [JsonPropertyName("batch")] public int Batch { get; init; } = 8;
    /// <summary>Micro-batches whose gradients are averaged into one step (tokens per step = batch · grad_accum · block_size).</summary>
    [JsonPropertyName("grad_accum")] public int GradAccum { get; init; } = 1;

    // Schedule (spec "Learning rate"): linear warm-up, constant, cosine cool-down to min_lr.
    [JsonPropertyName("warmup")] public int Warmup { get; init; } = 20;
    [JsonPropertyName("cooldown_frac")] public double CooldownFrac { get; init; } = 0.4;
    [JsonPropertyName("min_lr_frac")] public double MinLrFrac { get; init; } = 0.1;

    // Muon for block matrices, AdamW for embeddings and unembedding (spec "Optimizers").
    [JsonPropertyName("muon_lr")] public double MuonLr { get; init; } = 0.02;
    [JsonPropertyName("adam_lr")] public double AdamLr { get; init; } = 0.006;
    [JsonPropertyName("adam_beta1")] public double AdamBeta1 { get; init; } = 0.9;
    [JsonPropertyName("adam_beta2")] public double AdamBeta2 { get; init; } = 0.95;
    [JsonPropertyName("adam_eps")] public double AdamEps { get; init; } = 1e-8;
    /// <summary>Decoupled weight decay, shared by Muon and AdamW.</summary>
    [JsonPropertyName("weight_decay")] public double WeightDecay { get; init; } = 0.0;
    /// <summary>Global gradient-norm clip; 0 disables.</summary>
    [JsonPropertyName("clip")] public double Clip { get; init; } = 1.0;
    /// <summary>
    /// Muon's Newton-Schulz GEMMs in f16 arithmetic (f16 operands and products, f32 sums; X stays
    /// f32): backend vulkan on a device with shaderFloat16 only (an error elsewhere, never a silent
    /// fallback). Off: float32 throughout.
    /// </summary>
    [JsonPropertyName("muon_fp16")] public bool MuonFp16 { get; init; }

    [JsonPropertyName("eval_interval")] public int EvalInterval { get; init; } = 50;
    [JsonPropertyName("eval_iters")] public int EvalIters { get; init; } = 4;
    /// <summary>Steps between printed samples; 0 = none.</summary>
    [JsonPropertyName("sample_interval")] public int SampleInterval { get; init; } = 0;
    [JsonPropertyName("sample_tokens")] public int SampleTokens { get; init; } = 64;
    [JsonPropertyName("sample_prompt")] public string SamplePrompt { get; init; } = "And God said";
    /// <summary>Steps between checkpoints (one is also written at the end and on Ctrl-C); 0 = only then.</summary>
    [JsonPropertyName("checkpoint_interval")] public int CheckpointInterval { get; init; } = 100;
    [JsonPropertyName("seed")] public ulong Seed { get; init; } = 1337;
    /// <summary><c>cpu</c> (reference backend) or <c>vulkan</c> (Palm.Gpu's VulkanTraining; the device from <see cref="Device"/>).</summary>
    [JsonPropertyName("backend")] public string Backend { get; init; } = "cpu";
    /// <summary>Vulkan device index or name substring (as PALM_VK_DEVICE, which applies when this is empty); ignored by the cpu backend.</summary>
    [JsonPropertyName("device")] public string Device { get; init; } = "";

    /// <summary>Checks ranges and names; the message names the key.</summary>
    /// <exception cref="UserError">The first invalid field.</exception>
    public void Validate()
    {
        static void Check(bool ok, string key, string msg) { if (!ok) throw new UserError($"config.{key}: {msg}"); }
        Check(Steps > 0, "steps", $"must be > 0, got {Steps}");
        Check(Batch > 0, "batch", $"must be > 0, got {Batch}");
        Check(GradAccum > 0, "grad_accum", $"must be > 0, got {GradAccum}");
        Check(Warmup >= 0, "warmup", $"must be >= 0, got {Warmup}");
        Check(CooldownFrac is >= 0 and <= 1, "cooldown_frac", $"must be in [0, 1], got {CooldownFrac}");
        Check(MinLrFrac is >= 0 and <= 1, "min_lr_frac", $"must be in [0, 1], got {MinLrFrac}");
        Check(MuonLr >= 0 && double.IsFinite(MuonLr), "muon_lr", $"must be >= 0, got {MuonLr}");
        Check(AdamLr >= 0 && double.IsFinite(AdamLr), "adam_lr", $"must be >= 0, got {AdamLr}");
        Check(AdamBeta1 is >= 0 and < 1, "adam_beta1", $"must be in [0, 1), got {AdamBeta1}");
        Check(AdamBeta2 is >= 0 and < 1, "adam_beta2", $"must be in [0, 1), got {AdamBeta2}");
        Check(AdamEps > 0, "adam_eps", $"must be > 0, got {AdamEps}");
        Check(WeightDecay >= 0, "weight_decay", $"must be >= 0, got {WeightDecay}");
        Check(Clip >= 0, "clip", $"must be >= 0 (0 disables), got {Clip}");
        Check(EvalInterval > 0, "eval_interval", $"must be > 0, got {EvalInterval}");
        Check(EvalIters > 0, "eval_iters", $"must be > 0, got {EvalIters}");
        Check(SampleInterval >= 0, "sample_interval", $"must be >= 0 (0 disables), got {SampleInterval}");
        Check(SampleTokens >= 0, "sample_tokens", $"must be >= 0, got {SampleTokens}");
        Check(CheckpointInterval >= 0, "checkpoint_interval", $"must be >= 0 (0 = only at the end), got {CheckpointInterval}");
        Check(Backend is "cpu" or "vulkan", "backend", $"must be \"cpu\" or \"vulkan\", got \"{Backend}\"");
        Check(!MuonFp16 || Backend == "vulkan", "muon_fp16", "runs only on backend=vulkan (the cpu backend is the float32 reference); set backend=vulkan or muon_fp16=false");
        Check(!string.IsNullOrWhiteSpace(Data), "data", "must name a prepared data folder");
    }
}
