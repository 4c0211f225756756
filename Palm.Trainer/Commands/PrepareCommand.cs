// `prepare`: tokenize a corpus into uint16 shards with a train/val split and a manifest.
using System.CommandLine;
using System.Diagnostics;
using Palm.Trainer.Data;

namespace Palm.Trainer.Commands;

internal static class PrepareCommand
{
    public static Command Create()
    {
        var inputs = new Argument<string[]>("inputs") { Description = "text files or folders (read recursively, streamed)", Arity = ArgumentArity.OneOrMore };
        var tokenizer = new Option<string>("--tokenizer") { Description = "tokenizer file (from `tokenizer`) or a .palm checkpoint", Required = true };
        var output = new Option<string>("--out") { Description = "output folder for shards and manifest.json", Required = true };
        var shard = new Option<long>("--shard-tokens") { Description = "tokens per shard file", DefaultValueFactory = _ => 1L << 24 };
        var val = new Option<double>("--val-fraction") { Description = "tail fraction of the input bytes held out for validation", DefaultValueFactory = _ => 0.1 };
        var noEot = new Option<bool>("--no-eot") { Description = "do not append <|eot|> after each input file" };
        var cmd = new Command("prepare", "tokenize a corpus into uint16 shards with a train/val split") { inputs, tokenizer, output, shard, val, noEot };
        cmd.SetAction(r => Cli.Guard("prepare", () =>
        {
            var sw = Stopwatch.StartNew();
            string tokPath = r.GetValue(tokenizer)!;
            var tok = TokenizerFile.Load(tokPath);
            var opts = new PrepareOptions { ShardTokens = r.GetValue(shard), ValFraction = r.GetValue(val), EotBetweenFiles = !r.GetValue(noEot) };
            string outDir = r.GetValue(output)!;
            var m = ShardWriter.Prepare(tok, tokPath, r.GetValue(inputs)!, outDir, opts, Console.WriteLine);
            Console.WriteLine($"prepare   {m.Sources.Count} file(s), {m.SourceBytes / 1048576.0:F1} MiB -> {m.TrainTokens:N0} train + {m.ValTokens:N0} val tokens " +
                              $"({(double)m.SourceBytes / Math.Max(1, m.TrainTokens + m.ValTokens):F2} bytes/token) in {m.Shards.Count} shard(s), {sw.Elapsed.TotalSeconds:F1} s -> {Path.Combine(outDir, ShardManifest.FileName)}");
            return 0;
        }));
        return cmd;
    }
}
