// One training run and its folder: config.json (the resolved config), checkpoint.palm (weights,
// tokenizer and full training state, saved atomically), log.jsonl (one line per step, eval and
// sample) and loss.svg. A run starts fresh or resumes from its folder and continues bit for bit.
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Sampling;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Commands;
using Palm.Trainer.Data;

namespace Palm.Trainer.Training;

/// <summary>A training run bound to its run folder.</summary>
public sealed class TrainingRun : IDisposable
{
    public const string ConfigFile = "config.json", CheckpointFile = "checkpoint.palm", LogFile = "log.jsonl", PlotFile = "loss.svg";

    private static readonly JsonSerializerOptions LogJson = new() { NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    private readonly TokenDataset _data;
    private readonly BpeTokenizer _tokenizer;
    private readonly List<(int Step, double Loss)> _evals = [];
    private readonly Action<string> _say;

    public TrainConfig Config { get; }
    public PalmConfig Model { get; }
    public string Dir { get; }
    public TrainingLoop Trainer { get; }
    public string CheckpointPath => Path.Combine(Dir, CheckpointFile);

    private TrainingRun(TrainConfig config, PalmConfig model, string dir, TokenDataset data, BpeTokenizer tokenizer, TrainingLoop trainer, Action<string> say)
    {
        Config = config; Model = model; Dir = dir; _data = data; _tokenizer = tokenizer; Trainer = trainer; _say = say;
    }

    /// <summary>Starts a fresh run in <paramref name="dir"/>, or resumes the one there.</summary>
    /// <param name="config">For a fresh run: the config. For a resume: overrides are already applied to the saved config by the caller.</param>
    /// <param name="dir">The run folder (created if missing).</param>
    /// <param name="resume">Continue from <c>dir/checkpoint.palm</c>.</param>
    /// <param name="say">Where progress messages (samples) go.</param>
    /// <exception cref="UserError">No usable Vulkan device for backend=vulkan, missing or corrupt data, an existing run without --resume, or a resume that does not fit.</exception>
    public static TrainingRun Open(TrainConfig config, string dir, bool resume, Action<string>? say = null)
    {
        say ??= _ => { };
        string ckPath = Path.Combine(dir, CheckpointFile);
        if (!resume && File.Exists(ckPath))
            throw new UserError($"run folder '{dir}' already holds {CheckpointFile}; pass --resume to continue it, or choose another --out");
        if (resume && !File.Exists(ckPath))
            throw new UserError($"--resume: run folder '{dir}' has no {CheckpointFile}");

        var train = TokenSplit.OpenPrepared(config.Data, "train", out var manifest);
        var val = TokenSplit.OpenPrepared(config.Data, "val", out _);
        var tokenizer = TokenizerFile.Load(Path.Combine(config.Data, manifest.Tokenizer));
        if (tokenizer.VocabSize != manifest.VocabSize)
            throw new UserError($"data '{config.Data}': tokenizer has {tokenizer.VocabSize} tokens but the manifest says vocab_size {manifest.VocabSize}");
        var model = config.Model.Resolve(manifest.VocabSize);
        config = config with { Model = ModelSection.From(config.Model.Preset, model) };
        var data = new TokenDataset(train, val, model.BlockSize, config.Data);

        PalmParameters parameters;
        TrainingState? state = null;
        if (resume)
        {
            var ck = PalmCheckpoint.Load(ckPath);
            if (ck.Config != model)
                throw new UserError($"--resume: the checkpoint's model ({Describe(ck.Config)}) differs from the config's ({Describe(model)}); model keys cannot change on resume");
            state = ck.Training ?? throw new UserError($"--resume: {ckPath} holds no training state");
            parameters = ck.ToParameters();
            if (state.Step >= config.Steps)
                throw new UserError($"--resume: the run is already at step {state.Step} of {config.Steps}; raise steps (--set steps=N) to train further");
        }
        else
        {
            parameters = new PalmParameters(model);
            parameters.InitTraining(new Rng(config.Seed));
        }
        TrainingLoop trainer;
        try { trainer = new TrainingLoop(parameters, data, config, state); }
        catch { data.Dispose(); throw; }
        var run = new TrainingRun(config, model, dir, data, tokenizer, trainer, say);
        Directory.CreateDirectory(dir);
        AtomicFile.WriteAllText(Path.Combine(dir, ConfigFile), ConfigLoader.ToJson(config) + "\n");
        run.PrepareLog(resume ? trainer.Step : 0);
        return run;
    }

    private static string Describe(PalmConfig c) =>
        $"V={c.VocabSize} T={c.BlockSize} C={c.NEmbd} H={c.NHead} D={c.DQkv} r={c.DRank} L={c.NLayer} R={c.NRecur} F={c.DFfn}";

    /// <summary>Trains until <see cref="TrainConfig.Steps"/>, <paramref name="stopAt"/> or cancellation, then saves a checkpoint.</summary>
    /// <returns>True when the run reached its last step.</returns>
    public bool Run(CancellationToken cancel = default, int? stopAt = null, Action<StepReport>? onStep = null)
    {
        int end = Math.Min(Config.Steps, stopAt ?? int.MaxValue);
        while (Trainer.Step < end && !cancel.IsCancellationRequested)
        {
            var r = Trainer.TrainStep();
            Log(new { type = "step", step = r.Step, loss = r.Loss, muon_lr = r.MuonLr, adam_lr = r.AdamLr, grad_norm = r.GradNorm, tokens_per_s = Math.Round(r.TokensPerSecond, 1) });
            if (r.ValLoss is double v)
            {
                _evals.Add((r.Step, v));
                Log(new { type = "eval", step = r.Step, val_loss = v, val_ppl = Math.Exp(v) });
            }
            onStep?.Invoke(r);
            if (Config.SampleInterval > 0 && r.Step % Config.SampleInterval == 0 && Config.SampleTokens > 0)
            {
                string text = Sample(Config.SamplePrompt, Config.SampleTokens, new SamplerOptions(), Config.Seed);
                Log(new { type = "sample", step = r.Step, text });
                _say($"sample at step {r.Step}: {Config.SamplePrompt}{text}");
            }
            if (Config.CheckpointInterval > 0 && r.Step % Config.CheckpointInterval == 0 && r.Step < end) SaveCheckpoint();
        }
        SaveCheckpoint();
        return Trainer.Step >= Config.Steps;
    }

    /// <summary>Text generated by the current weights (its own RNG; the training RNG is untouched).</summary>
    public string Sample(string prompt, int tokens, SamplerOptions options, ulong seed) =>
        string.Concat(new CpuTextGenerator(Trainer.Parameters, _tokenizer).Generate(prompt, tokens, options, seed));

    /// <summary>Writes checkpoint.palm (atomically) and loss.svg.</summary>
    public void SaveCheckpoint()
    {
        PalmCheckpoint.FromParameters(Trainer.Parameters, _tokenizer.ToBlob(), Trainer.ExportState()).Save(CheckpointPath);
        AtomicFile.WriteAllText(Path.Combine(Dir, PlotFile), LossPlot.Svg(Trainer.LossHistory, _evals, Path.GetFileName(Path.GetFullPath(Dir))));
    }

    private void Log(object entry) =>
        File.AppendAllText(Path.Combine(Dir, LogFile), JsonSerializer.Serialize(entry, LogJson) + "\n");

    // On resume the log keeps only lines up to the checkpoint's step (later ones were lost with
    // the steps they describe) and its eval points feed the plot again.
    private void PrepareLog(long upToStep)
    {
        string path = Path.Combine(Dir, LogFile);
        if (upToStep == 0 || !File.Exists(path)) { File.WriteAllText(path, ""); return; }
        var kept = new List<string>();
        foreach (var line in File.ReadLines(path))
        {
            JsonNode? n;
            try { n = JsonNode.Parse(line); } catch (JsonException) { continue; }   // a line cut short by a crash
            if (n?["step"] is not JsonValue sv || sv.GetValue<long>() > upToStep) continue;
            kept.Add(line);
            if ((string?)n["type"] == "eval" && n["val_loss"] is JsonValue vl) _evals.Add(((int)sv.GetValue<long>(), vl.GetValue<double>()));
        }
        AtomicFile.WriteAllText(path, kept.Count == 0 ? "" : string.Join("\n", kept) + "\n");
    }

    public void Dispose()
    {
        Trainer.Dispose();
        _data.Dispose();
    }
}
