// The training progress line: step, smoothed loss, tokens/s, learning rates and ETA, rewritten
// in place on a terminal and printed every 10 s when output is redirected (logs stay readable).
// Plain Console rather than Spectre.Console: it behaves the same in CI logs, pipes and terminals.
using System.Diagnostics;
using Palm.Trainer.Training;

namespace Palm.Trainer.Commands;

/// <summary>A one-line progress display (rewritten in place on a terminal, one line per 10 s otherwise).</summary>
internal sealed class ConsoleProgress(int steps, int startStep = 0)
{
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly bool _tty = !Console.IsOutputRedirected;
    private double _emaLoss = double.NaN;
    private long _lastLine;

    public void Report(StepReport r)
    {
        _emaLoss = double.IsNaN(_emaLoss) ? r.Loss : 0.9 * _emaLoss + 0.1 * r.Loss;
        double eta = _sw.Elapsed.TotalSeconds / Math.Max(1, r.Step - startStep) * (steps - r.Step);
        int width = 24, filled = (int)((long)width * r.Step / steps);
        string bar = new string('#', filled) + new string('.', width - filled);
        string line = $"[{bar}] step {r.Step,5}/{steps}  loss {_emaLoss:F3}  {r.TokensPerSecond,7:F0} tok/s  lr {r.MuonLr:G3}/{r.AdamLr:G3}  ETA {Eta(eta)}";
        if (r.ValLoss is double v) Message($"step {r.Step,5}: train loss {_emaLoss:F3}, val loss {v:F3} (perplexity {Math.Exp(v):F1})");
        if (_tty) Console.Write("\r" + line);
        else if (_sw.ElapsedMilliseconds - _lastLine > 10_000 || r.Step == steps) { Console.WriteLine(line); _lastLine = _sw.ElapsedMilliseconds; }
    }

    /// <summary>Prints a line above the progress bar.</summary>
    public void Message(string text)
    {
        if (_tty) Console.Write("\r" + new string(' ', 120) + "\r");
        Console.WriteLine(text);
    }

    private static string Eta(double s) => s >= 3600 ? $"{s / 3600:F1} h" : s >= 60 ? $"{s / 60:F0} min" : $"{s:F0} s";

    public void Done() { if (_tty) Console.WriteLine(); }
}
