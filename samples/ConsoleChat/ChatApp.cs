// ConsoleChat's core, separate from Program.cs so tests can run it on a temp model with captured
// streams: argument parsing, model load, one-shot (--prompt) and interactive streaming
// completion, and cancellation of the running generation only.
using System.Diagnostics;
using System.Globalization;
using Palm.Gpu;
using Palm.Inference;
using Palm.Inference.Checkpoint;

namespace ConsoleChat;

/// <summary>Cancels the generation that is running, if any (Ctrl-C), never the program.</summary>
internal sealed class GenerationCancel
{
    private readonly object _gate = new();
    private CancellationTokenSource? _current;

    public CancellationToken Begin()
    {
        lock (_gate) { _current = new CancellationTokenSource(); return _current.Token; }
    }

    public void End()
    {
        lock (_gate) { _current?.Dispose(); _current = null; }
    }

    /// <summary>Cancels the running generation; false when none runs (then Ctrl-C may end the program).</summary>
    public bool TryCancel()
    {
        lock (_gate)
        {
            if (_current is null) return false;
            _current.Cancel();
            return true;
        }
    }
}

internal static class ChatApp
{
    /// <summary>
    /// The built-in model (models/palm-kjv.palm, trained on the KJV: docs/builtin/), copied beside
    /// the program at build time so ConsoleChat runs on a fresh machine with no download.
    /// </summary>
    public static string DefaultModel => Path.Combine(AppContext.BaseDirectory, "models", "palm-kjv.palm");

    private const string Usage = """
        usage: ConsoleChat [--model FILE.palm (default: the built-in KJV model)] [--backend auto|cpu|vulkan] [--prompt TEXT]
                           [--max-tokens N] [--temperature T] [--top-k K] [--top-p P] [--min-p P]
                           [--repeat-penalty X] [--presence-penalty X] [--frequency-penalty X]
                           [--stop TEXT]... [--seed N]
          --prompt TEXT  one-shot: print the prompt and its completion, then exit
          without --prompt: interactive; each line you type is added to the conversation and
          continued. An empty line continues; /reset forgets; /quit (or end of input) exits.
          Ctrl-C stops the running generation.
        """;

    internal sealed record Settings(string Model, Backend Backend, string? Prompt, GenerationOptions Generation, ulong? Seed);

    /// <summary>Parses arguments; null (with a message on <paramref name="error"/>) when they are wrong.</summary>
    internal static Settings? Parse(string[] args, TextWriter error)
    {
        string model = DefaultModel;
        string? prompt = null;
        ulong? seed = null;
        var backend = Backend.Auto;
        var g = new GenerationOptions { MaxTokens = 200 };
        var stops = new List<string>();
        try
        {
            for (int i = 0; i < args.Length; i++)
            {
                string a = args[i];
                string Next() => i + 1 < args.Length ? args[++i] : throw new FormatException($"{a} needs a value");
                float F() => float.Parse(Next(), NumberStyles.Float, CultureInfo.InvariantCulture);
                int I() => int.Parse(Next(), CultureInfo.InvariantCulture);
                switch (a)
                {
                    case "--model": model = Next(); break;
                    case "--backend":
                        backend = Next().ToLowerInvariant() switch
                        {
                            "auto" => Backend.Auto, "cpu" => Backend.Cpu, "vulkan" => Backend.Vulkan,
                            var b => throw new FormatException($"unknown backend '{b}' (auto, cpu, vulkan)"),
                        };
                        break;
                    case "--prompt": prompt = Next(); break;
                    case "--max-tokens" or "--tokens": g = g with { MaxTokens = I() }; break;
                    case "--temperature": g = g with { Temperature = F() }; break;
                    case "--top-k": g = g with { TopK = I() }; break;
                    case "--top-p": g = g with { TopP = F() }; break;
                    case "--min-p": g = g with { MinP = F() }; break;
                    case "--repeat-penalty": g = g with { RepetitionPenalty = F() }; break;
                    case "--presence-penalty": g = g with { PresencePenalty = F() }; break;
                    case "--frequency-penalty": g = g with { FrequencyPenalty = F() }; break;
                    case "--stop": stops.Add(Next().Replace("\\n", "\n")); break;
                    case "--seed": seed = ulong.Parse(Next(), CultureInfo.InvariantCulture); break;
                    case "-h" or "--help": error.WriteLine(Usage); return null;
                    default: throw new FormatException($"unknown argument '{a}'");
                }
            }
        }
        catch (FormatException e)
        {
            error.WriteLine($"ConsoleChat: {e.Message}\n{Usage}");
            return null;
        }
        catch (OverflowException e)
        {
            error.WriteLine($"ConsoleChat: {e.Message}\n{Usage}");
            return null;
        }
        return new Settings(model, backend, prompt, g with { StopStrings = stops }, seed);
    }

    /// <summary>Runs ConsoleChat; returns the exit code (0 ok, 1 model problem, 2 bad arguments).</summary>
    public static async Task<int> RunAsync(string[] args, TextReader input, TextWriter output, TextWriter error, GenerationCancel cancel)
    {
        var s = Parse(args, error);
        if (s is null) return 2;
        if (!File.Exists(s.Model))
        {
            error.WriteLine($"ConsoleChat: model {s.Model} not found (make one with: dotnet run --project Palm.Trainer -c Release -- demo)");
            return 1;
        }
        PalmModel model;
        try
        {
            model = PalmModel.Load(s.Model, new ModelOptions { Backend = s.Backend });
        }
        catch (Exception e) when (e is PalmFormatException or GpuUnavailableException or IOException)
        {
            error.WriteLine($"ConsoleChat: {s.Model}: {e.Message}");
            return 1;
        }
        using (model)
        {
            error.WriteLine($"[{Path.GetFileName(s.Model)}: {model.Config.NLayer}x{model.Config.NRecur} blocks, C={model.Config.NEmbd}, V={model.Config.VocabSize}; " +
                            $"{model.BackendDescription}; weights {model.WeightBytes / 1024.0:F0} KiB, {model.SessionBytes / 1024.0:F0} KiB per session]");
            using var session = model.CreateSession(new SessionOptions { Seed = s.Seed });
            try
            {
                // Checks the options against the model without generating (enumeration is lazy).
                _ = session.GenerateAsync("", s.Generation);
            }
            catch (ArgumentException e)
            {
                error.WriteLine($"ConsoleChat: {e.Message}");
                return 2;
            }

            if (s.Prompt is not null)
            {
                output.Write(s.Prompt);
                await Generate(session, s.Prompt, s, output, error, cancel);
                output.WriteLine();
                return 0;
            }

            error.WriteLine("[type text and press Enter; empty line continues, /reset forgets, /quit exits, Ctrl-C stops a generation]");
            // While the first line is being typed, the model warms up (PalmModel.WarmUpAsync): without
            // it the first answers run several times slower while the JIT compiles their code.
            using var stopWarming = new CancellationTokenSource();
            var warming = Task.Run(async () =>
            {
                try { await model.WarmUpAsync(cancellationToken: stopWarming.Token); }
                catch (OperationCanceledException) { }
            });
            async Task WarmedUp()
            {
                stopWarming.Cancel();
                await warming;
            }
            try
            {
                while (true)
                {
                    output.Write("> ");
                    output.Flush();
                    var line = await input.ReadLineAsync();
                    await WarmedUp();
                    if (line is null || line.Trim() == "/quit") break;
                    if (line.Trim() == "/reset")
                    {
                        session.Reset();
                        error.WriteLine("[conversation reset]");
                        continue;
                    }
                    output.Write(line);
                    await Generate(session, line.Length == 0 ? "" : line, s, output, error, cancel);
                    output.WriteLine();
                }
            }
            finally
            {
                await WarmedUp();
            }
        }
        return 0;
    }

    private static async Task Generate(PalmSession session, string prompt, Settings s, TextWriter output, TextWriter error, GenerationCancel cancel)
    {
        var token = cancel.Begin();
        var clock = Stopwatch.StartNew();
        try
        {
            var options = s.Generation;
            await foreach (var piece in session.GenerateAsync(prompt, options, token))
            {
                output.Write(piece);
                output.Flush();
            }
        }
        finally
        {
            cancel.End();
        }
        var r = session.LastResult!;
        output.Flush();
        error.WriteLine();
        error.WriteLine($"[{r.GeneratedTokens} tokens, {r.TokensPerSecond:F1} tokens/s; prompt {r.PromptTokens} tokens in {r.PrefillTime.TotalMilliseconds:F0} ms; " +
                        $"stopped: {r.StopReason}; {clock.Elapsed.TotalSeconds:F2} s]");
    }
}
