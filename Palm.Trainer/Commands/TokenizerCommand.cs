// `tokenizer`: learn BPE merges from text files or folders (read chunk by chunk) and write the
// JSON tokenizer file that `prepare` and `train` read.
using System.CommandLine;
using System.Diagnostics;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Data;

namespace Palm.Trainer.Commands;

internal static class TokenizerCommand
{
    public static Command Create()
    {
        var inputs = new Argument<string[]>("inputs") { Description = "text files or folders (read recursively)", Arity = ArgumentArity.OneOrMore };
        var vocab = new Option<int>("--vocab") { Description = "vocabulary size: 256 bytes + merges + 4 special tokens", DefaultValueFactory = _ => 1024 };
        var output = new Option<string>("--out") { Description = "tokenizer file to write", DefaultValueFactory = _ => "tokenizer.json" };
        var cmd = new Command("tokenizer", "train a BPE tokenizer on text files") { inputs, vocab, output };
        cmd.SetAction(r => Cli.Guard("tokenizer", () => Run(r.GetValue(inputs)!, r.GetValue(vocab), r.GetValue(output)!)));
        return cmd;
    }

    public static int Run(string[] inputs, int vocab, string output)
    {
        if (vocab < 256 + BpeTokenizer.DefaultSpecialTokens.Count)
            throw new UserError($"--vocab: {vocab} cannot hold the 256 byte tokens and {BpeTokenizer.DefaultSpecialTokens.Count} special tokens");
        ShardWriter.CheckVocab(vocab);
        var sw = Stopwatch.StartNew();
        var files = TextChunks.ExpandPaths(inputs);
        var trainer = new BpeTrainer();
        foreach (var f in files)
            foreach (var chunk in TextChunks.Read(f))
                trainer.AddText(chunk);
        var tok = trainer.Train(vocab);
        TokenizerFile.Save(tok, output);
        Console.WriteLine($"tokenizer {tok.VocabSize} tokens from {files.Count} file(s), {trainer.BytesSeen / 1048576.0:F1} MiB, in {sw.Elapsed.TotalSeconds:F1} s -> {output}");
        return 0;
    }
}
