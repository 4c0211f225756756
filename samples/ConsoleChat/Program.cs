// ConsoleChat (first form): loads a .palm checkpoint and prints a completion of a prompt with
// the CPU reference. The interactive chat on the built-in model comes with the Palm.Inference API.
using System.Diagnostics;
using Palm.Inference.Checkpoint;
using Palm.Inference.Sampling;

string model = "runs/demo/model.palm", prompt = "And God said";
int tokens = 120; ulong seed = 1; float temperature = 0.8f;
for (int i = 0; i < args.Length; i++)
{
    string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
    switch (args[i])
    {
        case "--model": model = Next(); break;
        case "--prompt": prompt = Next(); break;
        case "--tokens": tokens = int.Parse(Next()); break;
        case "--seed": seed = ulong.Parse(Next()); break;
        case "--temperature": temperature = float.Parse(Next(), System.Globalization.CultureInfo.InvariantCulture); break;
        default:
            Console.Error.WriteLine("usage: ConsoleChat [--model FILE.palm] [--prompt TEXT] [--tokens N] [--seed N] [--temperature T]");
            return 2;
    }
}
if (!File.Exists(model))
{
    Console.Error.WriteLine($"ConsoleChat: model {model} not found (make one with: dotnet run --project Palm.Trainer -c Release -- demo)");
    return 1;
}
PalmCheckpoint ckpt;
try { ckpt = PalmCheckpoint.Load(model); }
catch (PalmFormatException e) { Console.Error.WriteLine($"ConsoleChat: {model}: {e.Message}"); return 1; }
if (ckpt.Tokenizer is null) { Console.Error.WriteLine($"ConsoleChat: {model} holds no tokenizer"); return 1; }
var gen = new CpuTextGenerator(ckpt.ToParameters(), ckpt.Tokenizer.ToTokenizer());
var sw = Stopwatch.StartNew();
int n = 0;
Console.Write(prompt);
foreach (var piece in gen.Generate(prompt, tokens, new SamplerOptions { Temperature = temperature }, seed)) { Console.Write(piece); n++; }
Console.WriteLine();
Console.Error.WriteLine($"[{n} pieces in {sw.Elapsed.TotalSeconds:F2} s]");
return 0;
