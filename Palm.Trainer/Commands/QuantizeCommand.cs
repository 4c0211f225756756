// `quantize`: a shipping checkpoint whose linear weights are q8 (int8, one scale per row or group)
// or q4 (4-bit, f16 scale per group of 32), the embedding only with --embed; reports the sizes.
// With --calibrate, the linear weights are rounded by GPTQ against their inputs on windows of the
// training split (Palm.Inference/Quantization/GptqQuantizer.cs); without, round-to-nearest.
using System.CommandLine;
using Palm.Inference.Checkpoint;
using Palm.Inference.Quantization;
using Palm.Trainer.Data;

namespace Palm.Trainer.Commands;

internal static class QuantizeCommand
{
    /// <summary>Calibration tokens when --calib-tokens is not given (64 windows of the built-in model's 128).</summary>
    public const int DefaultCalibTokens = 8192;

    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "input checkpoint (.palm)", Required = true };
        var output = new Option<string>("--out") { Description = "quantized .palm file", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "q8 or q4", Required = true };
        var group = new Option<int?>("--group-size") { Description = "elements per scale (default: a whole row for q8, 32 for q4; rows shorter than a group use one scale)" };
        var embed = new Option<bool>("--embed") { Description = "quantize the embedding table too" };
        var calibrate = new Option<string?>("--calibrate") { Description = "round the linear weights with GPTQ, calibrated on this data: a prepared folder (its train split) or one .bin shard" };
        var calibTokens = new Option<int>("--calib-tokens") { Description = "calibration tokens, as block_size windows spread over the data", DefaultValueFactory = _ => DefaultCalibTokens };
        var cmd = new Command("quantize", "store every linear weight as q8 or q4, without training state") { checkpoint, output, dtype, group, embed, calibrate, calibTokens };
        cmd.SetAction(r => Cli.Guard("quantize", () =>
        {
            var line = Run(r.GetValue(checkpoint)!, r.GetValue(output)!, r.GetValue(dtype)!, r.GetValue(group), r.GetValue(embed),
                           r.GetValue(calibrate), r.GetValue(calibTokens), Console.WriteLine);
            Console.WriteLine(line);
            return 0;
        }));
        return cmd;
    }

    /// <summary>Quantizes <paramref name="src"/> into <paramref name="dst"/>; returns the report line.</summary>
    /// <param name="src">Float checkpoint.</param>
    /// <param name="dst">Output file (its folder is created).</param>
    /// <param name="dtypeName">q8 or q4.</param>
    /// <param name="groupSize">Elements per scale, or null for the default.</param>
    /// <param name="embed">Quantize the embedding table too.</param>
    /// <param name="calibrate">Null for round-to-nearest; else a prepared folder (train split) or a .bin shard for GPTQ.</param>
    /// <param name="calibTokens">Calibration tokens, rounded up to whole block_size windows.</param>
    /// <param name="progress">Receives the method and per-tensor lines while calibrating.</param>
    public static string Run(string src, string dst, string dtypeName, int? groupSize, bool embed,
                             string? calibrate = null, int calibTokens = DefaultCalibTokens, Action<string>? progress = null)
    {
        if (!TensorDTypes.TryParse(dtypeName, out var dtype) || !dtype.IsQuantized())
            throw new UserError($"--dtype must be q8 or q4, got '{dtypeName}'");
        if (groupSize is <= 0) throw new UserError($"--group-size must be > 0, got {groupSize}");
        if (calibTokens <= 0) throw new UserError($"--calib-tokens must be > 0, got {calibTokens}");
        if (!File.Exists(src)) throw new UserError($"checkpoint '{src}' not found");
        var ck = PalmCheckpoint.Load(src);
        GptqCalibration? calibration = null;
        if (calibrate is not null)
        {
            var windows = ReadCalibration(calibrate, ck.Config.VocabSize, ck.Config.BlockSize, calibTokens, out string what);
            progress?.Invoke($"quantize  GPTQ, calibrated on {windows.Count} windows of {ck.Config.BlockSize} tokens from {what}");
            calibration = new GptqCalibration(windows);
        }
        else progress?.Invoke("quantize  round-to-nearest (no --calibrate data)");
        PalmCheckpoint quantized;
        try { quantized = CheckpointQuantizer.Quantize(ck, dtype, groupSize, embed, calibration, progress); }
        catch (ArgumentException e) { throw new UserError(e.Message, e); }
        var dir = Path.GetDirectoryName(Path.GetFullPath(dst));
        if (dir is not null) Directory.CreateDirectory(dir);
        quantized.Save(dst);
        long before = new FileInfo(src).Length, after = new FileInfo(dst).Length;
        int count = quantized.Tensors.Count(t => t.IsQuantized);
        string groups = groupSize is { } g ? $"groups of {g}" : dtype == TensorDType.Q8 ? "one scale per row" : $"groups of {TensorDTypes.DefaultQ4GroupSize}";
        return $"quantize  {src} ({before / 1024.0:F0} KiB) -> {dst} ({after / 1024.0:F0} KiB, {dtype.SpecName()}, {groups}, " +
               $"{(calibration is null ? "round-to-nearest" : "GPTQ")}, " +
               $"{count} of {quantized.Tensors.Count} tensors quantized{(embed ? "" : ", embedding kept")}): {(double)before / after:F2}x smaller";
    }

    /// <summary>
    /// ceil(tokens / t) windows of <paramref name="t"/> tokens spread evenly over the data (not its first
    /// tokens, which cover only the start of the corpus). A prepared folder gives its train split: the
    /// val split is what quality is measured on.
    /// </summary>
    /// <exception cref="UserError">Missing or corrupt data, or no segment of t tokens.</exception>
    internal static List<int[]> ReadCalibration(string data, int vocab, int t, int tokens, out string what)
    {
        TokenSplit split;
        if (File.Exists(data)) { split = new TokenSplit([TokenShard.Open(data, vocab)]); what = data; }
        else if (Directory.Exists(data))
        {
            split = TokenSplit.OpenPrepared(data, "train", out var manifest);
            what = $"the train split of {data}";
            if (manifest.VocabSize > vocab)
            {
                split.Dispose();
                throw new UserError($"data '{data}': vocab_size {manifest.VocabSize} exceeds the model's {vocab}");
            }
        }
        else throw new UserError($"calibration data '{data}' not found (a prepared folder or a .bin shard)");
        using (split)
        {
            long starts = split.WindowStarts(t);
            if (starts == 0) throw new UserError($"calibration data '{data}' holds no segment of block_size + 1 = {t + 1} tokens");
            int count = (int)Math.Min((tokens + (long)t - 1) / t, starts);
            var windows = new List<int[]>(count);
            var y = new int[t];
            for (int i = 0; i < count; i++)
            {
                var x = new int[t];
                split.Window(starts * i / count, t, x, y);
                windows.Add(x);
            }
            return windows;
        }
    }
}
