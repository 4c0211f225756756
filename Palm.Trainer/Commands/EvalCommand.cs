// `eval`: validation loss and perplexity of a checkpoint on prepared shards or one shard file.
using System.CommandLine;
using Palm.Inference.Checkpoint;
using Palm.Trainer.Data;
using Palm.Trainer.Training;

namespace Palm.Trainer.Commands;

internal static class EvalCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = ".palm checkpoint", Required = true };
        var data = new Option<string>("--data") { Description = "prepared folder (uses its manifest) or one .bin shard file", Required = true };
        var split = new Option<string>("--split") { Description = "split of a prepared folder: val or train", DefaultValueFactory = _ => "val" };
        var batch = new Option<int>("--batch") { Description = "windows per forward pass", DefaultValueFactory = _ => 8 };
        var max = new Option<long>("--max-windows") { Description = "evaluate at most this many block_size windows", DefaultValueFactory = _ => long.MaxValue };
        var cmd = new Command("eval", "loss and perplexity of a checkpoint on token shards") { checkpoint, data, split, batch, max };
        cmd.SetAction(r => Cli.Guard("eval", () =>
        {
            var res = Run(r.GetValue(checkpoint)!, r.GetValue(data)!, r.GetValue(split)!, r.GetValue(batch), r.GetValue(max));
            Console.WriteLine($"loss {res.Loss:F4}  perplexity {res.Perplexity:F2}  over {res.Windows:N0} windows ({res.Tokens:N0} tokens)");
            return 0;
        }));
        return cmd;
    }

    public static EvalResult Run(string checkpointPath, string data, string split, int batch, long maxWindows)
    {
        if (batch <= 0) throw new UserError($"--batch must be > 0, got {batch}");
        if (split is not ("val" or "train")) throw new UserError($"--split must be val or train, got '{split}'");
        if (!File.Exists(checkpointPath)) throw new UserError($"checkpoint '{checkpointPath}' not found");
        var parameters = PalmCheckpoint.Load(checkpointPath).ToParameters();
        int vocab = parameters.Config.VocabSize;
        TokenSplit tokens;
        if (File.Exists(data)) tokens = new TokenSplit([TokenShard.Open(data, vocab)]);
        else
        {
            tokens = TokenSplit.OpenPrepared(data, split, out var manifest);
            if (manifest.VocabSize > vocab)
            {
                tokens.Dispose();
                throw new UserError($"data '{data}': vocab_size {manifest.VocabSize} exceeds the model's {vocab}");
            }
        }
        using (tokens) return Evaluator.Evaluate(parameters, tokens, parameters.Config.BlockSize, batch, maxWindows);
    }
}
