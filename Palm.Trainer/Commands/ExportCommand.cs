// `export`: a weights-and-tokenizer checkpoint for shipping (the optimizer moments and training
// history dropped), optionally stored as f16/bf16 to halve its size.
using System.CommandLine;
using Palm.Inference.Checkpoint;

namespace Palm.Trainer.Commands;

internal static class ExportCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = "training checkpoint (.palm)", Required = true };
        var output = new Option<string>("--out") { Description = "exported .palm file", Required = true };
        var dtype = new Option<string>("--dtype") { Description = "storage of the weights: f32, f16 or bf16", DefaultValueFactory = _ => "f32" };
        var cmd = new Command("export", "write a checkpoint without training state, for shipping") { checkpoint, output, dtype };
        cmd.SetAction(r => Cli.Guard("export", () =>
        {
            string src = r.GetValue(checkpoint)!, dst = r.GetValue(output)!;
            if (!TensorDTypes.TryParse(r.GetValue(dtype)!, out var storage) || storage.IsQuantized())
                throw new UserError($"--dtype must be f32, f16 or bf16, got '{r.GetValue(dtype)}'");
            if (!File.Exists(src)) throw new UserError($"checkpoint '{src}' not found");
            var ck = PalmCheckpoint.Load(src);
            var exported = Export(ck, storage);
            var dir = Path.GetDirectoryName(Path.GetFullPath(dst));
            if (dir is not null) Directory.CreateDirectory(dir);
            exported.Save(dst);
            Console.WriteLine($"export    {src} ({new FileInfo(src).Length / 1024.0:F0} KiB) -> {dst} ({new FileInfo(dst).Length / 1024.0:F0} KiB, {storage.SpecName()})");
            return 0;
        }));
        return cmd;
    }

    /// <summary>The same config, tokenizer and tensors, stored as <paramref name="storage"/>, without training state.</summary>
    internal static PalmCheckpoint Export(PalmCheckpoint ck, TensorDType storage) => new()
    {
        Config = ck.Config,
        Tokenizer = ck.Tokenizer,
        Tensors = ck.Tensors.Select(t => new CheckpointTensor(t.Name, t.Shape, t.ToFloats(), storage)).ToList(),
    };
}
