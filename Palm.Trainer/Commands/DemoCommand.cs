// `demo`: the end-to-end main job on a built-in default — corpus → BPE tokenizer → tiny model
// trained on the CPU → checkpoint → sampled text — with progress on the console.
using System.CommandLine;
using System.Diagnostics;
using System.Text;
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;
using Palm.Inference.Sampling;
using Palm.Inference.Tokenizer;
using Palm.Trainer.Training;

namespace Palm.Trainer.Commands;

internal static class DemoCommand
{
    public static Command Create()
    {
        var corpus = new Option<string?>("--corpus") { Description = $"text file or folder (default: {Corpus.DefaultRelativePath}, made by scripts/setup.sh)" };
        var steps = new Option<int>("--steps") { Description = "training steps", DefaultValueFactory = _ => 250 };
        var vocab = new Option<int>("--vocab") { Description = "tokenizer vocabulary size", DefaultValueFactory = _ => 512 };
        var mb = new Option<double>("--mb") { Description = "megabytes of corpus text to use", DefaultValueFactory = _ => 2.0 };
        var output = new Option<string>("--out") { Description = "checkpoint path", DefaultValueFactory = _ => "runs/demo/model.palm" };
        var prompt = new Option<string>("--prompt") { Description = "text to continue after training", DefaultValueFactory = _ => "And God said" };
        var tokens = new Option<int>("--sample-tokens") { Description = "tokens to generate", DefaultValueFactory = _ => 120 };
        var seed = new Option<ulong>("--seed") { Description = "seed for init, batches and sampling", DefaultValueFactory = _ => 1337UL };
        var cmd = new Command("demo", "train a tiny Palm on the CPU and sample from it") { corpus, steps, vocab, mb, output, prompt, tokens, seed };
        cmd.SetAction(r => Run(r.GetValue(corpus), r.GetValue(steps), r.GetValue(vocab), r.GetValue(mb), r.GetValue(output)!, r.GetValue(prompt)!, r.GetValue(tokens), r.GetValue(seed)));
        return cmd;
    }

    private static int Run(string? corpusPath, int steps, int vocab, double mb, string outPath, string prompt, int sampleTokens, ulong seed)
    {
        corpusPath ??= Corpus.FindDefault();
        if (corpusPath is null)
        {
            Console.Error.WriteLine($"demo: no corpus: run scripts/setup.sh (it writes {Corpus.DefaultRelativePath}) or pass --corpus PATH");
            return 2;
        }
        var total = Stopwatch.StartNew();
        string text = Corpus.Read(corpusPath, (long)(mb * 1024 * 1024));
        Console.WriteLine($"corpus    {corpusPath}: {text.Length:N0} characters");

        var sw = Stopwatch.StartNew();
        var tokenizer = BpeTrainer.Train(text, vocab);
        var ids = tokenizer.Encode(text);
        Console.WriteLine($"tokenizer {tokenizer.VocabSize} tokens, trained and encoded in {sw.Elapsed.TotalSeconds:F1} s: {ids.Length:N0} tokens ({(double)Encoding.UTF8.GetByteCount(text) / ids.Length:F2} bytes/token)");

        var config = PalmConfig.Tiny with { VocabSize = tokenizer.VocabSize };
        var opts = new TrainConfig { Steps = steps, Seed = seed, EvalInterval = Math.Max(1, steps / 5) };
        var data = new TokenDataset(ids, config.BlockSize);
        var parameters = new PalmParameters(config);
        parameters.InitTraining(new Rng(seed));
        Console.WriteLine($"model     tiny preset, {parameters.Count:N0} parameters: V={config.VocabSize} C={config.NEmbd} H={config.NHead} D={config.DQkv} r={config.DRank} L={config.NLayer} R={config.NRecur} {PalmConfig.ShareName(config.Share)} {PalmConfig.MixName(config.Mix)}");
        using var trainer = new TrainingLoop(parameters, data, opts);
        Console.WriteLine($"training  {steps} steps of {opts.Batch}x{config.BlockSize} tokens on the CPU reference backend; initial val loss {trainer.Evaluate():F3} (uniform: {Math.Log(config.VocabSize):F3})");
        var progress = new ConsoleProgress(steps);
        for (int s = 0; s < steps; s++) progress.Report(trainer.TrainStep());
        progress.Done();

        var dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
        if (dir is not null) Directory.CreateDirectory(dir);
        PalmCheckpoint.FromParameters(parameters, tokenizer.ToBlob()).Save(outPath);
        Console.WriteLine($"saved     {outPath} ({new FileInfo(outPath).Length / 1024.0:F0} KiB)");

        Console.WriteLine($"sample    (temperature 0.8, top-k 40, seed {seed})");
        Console.WriteLine();
        Console.Write(prompt);
        foreach (var piece in new CpuTextGenerator(parameters, tokenizer).Generate(prompt, sampleTokens, new SamplerOptions(), seed)) Console.Write(piece);
        Console.WriteLine();
        Console.WriteLine();
        Console.WriteLine($"done in {total.Elapsed.TotalSeconds:F0} s");
        return 0;
    }
}
