// `quantize`: a shipping checkpoint whose linear weights are q8 (int8, one scale per row or group)
// or q4 (4-bit, f16 scale per group of 32), the embedding only with --embed; reports the sizes.
using System.CommandLine;
using Palm.Inference.Checkpoint;
using Palm.Inference.Quantization;

namespace Palm.Trainer.Commands;

internal static class QuantizeCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "input checkpoint (.palm)", Required = true };
        var output = new Option<string>("--out") { Description = "quantized .palm file", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "q8 or q4", Required = true };
        var group = new Option<int?>("--group-size") { Description = "elements per scale (default: a whole row for q8, 32 for q4; rows shorter than a group use one scale)" };
        var embed = new Option<bool>("--embed") { Description = "quantize the embedding table too" };
        var cmd = new Command("quantize", "store every linear weight as q8 or q4, without training state") { checkpoint, output, dtype, group, embed };
        cmd.SetAction(r => Cli.Guard("quantize", () =>
        {
            var line = Run(r.GetValue(checkpoint)!, r.GetValue(output)!, r.GetValue(dtype)!, r.GetValue(group), r.GetValue(embed));
            Console.WriteLine(line);
            return 0;
        }));
        return cmd;
    }

    /// <summary>Quantizes <paramref name="src"/> into <paramref name="dst"/>; returns the report line.</summary>
    public static string Run(string src, string dst, string dtypeName, int? groupSize, bool embed)
    {
        if (!TensorDTypes.TryParse(dtypeName, out var dtype) || !dtype.IsQuantized())
            throw new UserError($"--dtype must be q8 or q4, got '{dtypeName}'");
        if (groupSize is <= 0) throw new UserError($"--group-size must be > 0, got {groupSize}");
        if (!File.Exists(src)) throw new UserError($"checkpoint '{src}' not found");
        var ck = PalmCheckpoint.Load(src);
        PalmCheckpoint quantized;
        try { quantized = CheckpointQuantizer.Quantize(ck, dtype, groupSize, embed); }
        catch (ArgumentException e) { throw new UserError(e.Message, e); }
        var dir = Path.GetDirectoryName(Path.GetFullPath(dst));
        if (dir is not null) Directory.CreateDirectory(dir);
        quantized.Save(dst);
        long before = new FileInfo(src).Length, after = new FileInfo(dst).Length;
        int count = quantized.Tensors.Count(t => t.IsQuantized);
        string groups = groupSize is { } g ? $"groups of {g}" : dtype == TensorDType.Q8 ? "one scale per row" : $"groups of {TensorDTypes.DefaultQ4GroupSize}";
        return $"quantize  {src} ({before / 1024.0:F0} KiB) -> {dst} ({after / 1024.0:F0} KiB, {dtype.SpecName()}, {groups}, " +
               $"{count} of {quantized.Tensors.Count} tensors quantized{(embed ? "" : ", embedding kept")}): {(double)before / after:F2}x smaller";
    }
}
