// `train`: a configured run (JSON file + --set overrides) on prepared shards, with a progress
// line, log.jsonl, loss.svg and atomic checkpoints in the run folder; Ctrl-C saves and exits,
// and --resume continues the run exactly.
using System.CommandLine;
using System.Diagnostics;
using Palm.Trainer.Training;

namespace Palm.Trainer.Commands;

internal static class TrainCommand
{
    public static Command Create()
    {
        var config = new Option<string?>("--config") { Description = "JSON config file (keys as printed at start; unknown keys are errors)" };
        var set = new Option<string[]>("--set") { Description = "override one key, e.g. --set steps=600 --set model.n_embd=128 (repeatable; wins over --config)", DefaultValueFactory = _ => [] };
        var data = new Option<string?>("--data") { Description = "prepared data folder (same as --set data=...)" };
        var output = new Option<string>("--out") { Description = "run folder: config.json, checkpoint.palm, log.jsonl, loss.svg", DefaultValueFactory = _ => "runs/train" };
        var resume = new Option<bool>("--resume") { Description = "continue the run in --out from its checkpoint (its config.json is the base; --set may change e.g. steps)" };
        var stopAt = new Option<int?>("--stop-at") { Description = "save and stop after this step (the schedule still spans `steps`); resume later" };
        var cmd = new Command("train", "train a Palm model on prepared shards") { config, set, data, output, resume, stopAt };
        cmd.SetAction(r => Cli.Guard("train", () =>
            Run(r.GetValue(config), r.GetValue(set)!, r.GetValue(data), r.GetValue(output)!, r.GetValue(resume), r.GetValue(stopAt))));
        return cmd;
    }

    public static int Run(string? configFile, string[] sets, string? data, string outDir, bool resume, int? stopAt)
    {
        if (resume && configFile is not null)
            throw new UserError("--resume reads the run's own config.json; change settings with --set instead of --config");
        string? baseFile = resume ? Path.Combine(outDir, TrainingRun.ConfigFile) : configFile;
        if (resume && !File.Exists(baseFile)) throw new UserError($"--resume: run folder '{outDir}' has no {TrainingRun.ConfigFile}");
        var layers = (data is null ? Array.Empty<string>() : [$"data=\"{data.Replace("\\", "\\\\").Replace("\"", "\\\"")}\""]).Concat(sets);
        var cfg = ConfigLoader.Load(baseFile, layers);

        var total = Stopwatch.StartNew();
        ConsoleProgress? progress = null;
        using var run = TrainingRun.Open(cfg, outDir, resume, s => (progress is null ? Console.WriteLine : (Action<string>)progress.Message)(s));
        Console.WriteLine("config (resolved):");
        Console.WriteLine(ConfigLoader.ToJson(run.Config));
        var m = run.Model;
        Console.WriteLine($"model     {run.Trainer.Parameters.Count:N0} parameters; backend {run.Trainer.BackendDescription}; {run.Config.Batch}x{run.Config.GradAccum}x{m.BlockSize} tokens per step");
        Console.WriteLine(resume ? $"resume    from step {run.Trainer.Step} of {run.Config.Steps} ({run.CheckpointPath})" : $"run       {Path.GetFullPath(outDir)}");

        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            // The first Ctrl-C finishes the current step and saves; a second one kills the process.
            if (cts.IsCancellationRequested) return;
            e.Cancel = true;
            cts.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            progress = new ConsoleProgress(run.Config.Steps, (int)run.Trainer.Step);
            bool finished = run.Run(cts.Token, stopAt, progress.Report);
            progress.Done();
            Console.WriteLine($"saved     {run.CheckpointPath} at step {run.Trainer.Step} ({total.Elapsed.TotalSeconds:F0} s)");
            if (cts.IsCancellationRequested)
            {
                Console.WriteLine($"interrupted; continue with: Palm.Trainer train --out {outDir} --resume");
                return Cli.InterruptedExit;
            }
            if (!finished) Console.WriteLine($"stopped at step {run.Trainer.Step} of {run.Config.Steps}; continue with: Palm.Trainer train --out {outDir} --resume");
            return 0;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }
}
