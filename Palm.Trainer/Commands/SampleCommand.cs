// `sample`: continue a prompt with a checkpoint's model and tokenizer on the CPU.
using System.CommandLine;
using Palm.Inference.Checkpoint;
using Palm.Inference.Sampling;

namespace Palm.Trainer.Commands;

internal static class SampleCommand
{
    public static Command Create()
    {
        var checkpoint = new Option<string>("--checkpoint") { Description = ".palm checkpoint with a tokenizer", Required = true };
        var prompt = new Option<string>("--prompt") { Description = "text to continue", DefaultValueFactory = _ => "" };
        var tokens = new Option<int>("--tokens") { Description = "tokens to generate", DefaultValueFactory = _ => 200 };
        var temperature = new Option<float>("--temperature") { Description = "0 = greedy", DefaultValueFactory = _ => 0.8f };
        var topK = new Option<int>("--top-k") { Description = "keep the k most likely tokens; 0 = all", DefaultValueFactory = _ => 40 };
        var topP = new Option<float>("--top-p") { Description = "nucleus: keep tokens up to this probability mass; 1 = all", DefaultValueFactory = _ => 0.95f };
        var seed = new Option<ulong>("--seed") { Description = "sampling seed (same seed, same text)", DefaultValueFactory = _ => 1UL };
        var cmd = new Command("sample", "generate text from a checkpoint") { checkpoint, prompt, tokens, temperature, topK, topP, seed };
        cmd.SetAction(r => Cli.Guard("sample", () =>
        {
            string path = r.GetValue(checkpoint)!;
            float t = r.GetValue(temperature), p = r.GetValue(topP);
            int k = r.GetValue(topK), n = r.GetValue(tokens);
            if (t < 0 || !float.IsFinite(t)) throw new UserError($"--temperature must be >= 0, got {t}");
            if (p is <= 0 or > 1) throw new UserError($"--top-p must be in (0, 1], got {p}");
            if (k < 0) throw new UserError($"--top-k must be >= 0, got {k}");
            if (n < 0) throw new UserError($"--tokens must be >= 0, got {n}");
            if (!File.Exists(path)) throw new UserError($"checkpoint '{path}' not found");
            var ck = PalmCheckpoint.Load(path);
            var tok = (ck.Tokenizer ?? throw new UserError($"checkpoint '{path}' carries no tokenizer")).ToTokenizer();
            var gen = new CpuTextGenerator(ck.ToParameters(), tok);
            string promptText = r.GetValue(prompt)!;
            Console.Write(promptText);
            foreach (var piece in gen.Generate(promptText, n, new SamplerOptions { Temperature = t, TopK = k, TopP = p }, r.GetValue(seed))) Console.Write(piece);
            Console.WriteLine();
            return 0;
        }));
        return cmd;
    }
}
