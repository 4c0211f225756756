// Ctrl-C during `train`: a real SIGINT to a real Palm.Trainer process must finish the current
// step, save a loadable checkpoint and exit with 130, so the run can be resumed.
using System.Diagnostics;
using Palm.Inference.Checkpoint;
using Palm.Trainer.Commands;
using Palm.Trainer.Training;

namespace Palm.Tests.Trainer;

public class InterruptTests
{
    [Fact]
    public async Task Sigint_saves_a_checkpoint_and_exits_130()
    {
        if (!OperatingSystem.IsLinux()) return;   // SIGINT delivery below uses kill(1)
        using var dir = new TempDir();
        var (data, _) = TrainerTestData.Prepare(dir, new Random(5));
        string trainer = Path.Combine(AppContext.BaseDirectory, "Palm.Trainer.dll");
        // Through `env --default-signal=INT` (which then execs dotnet: same process id): a test run
        // started as a background job (`dotnet test ... &` in a script) inherits SIGINT ignored, and
        // .NET, like a shell, leaves an inherited SIG_IGN alone, so the trainer would never see the
        // signal and run to its last step. The trainer is right to honour that; the test resets it.
        var psi = new ProcessStartInfo("env")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false,
        };
        foreach (var a in new[] { "--default-signal=INT", "dotnet", trainer, "train", "--data", data, "--out", dir["run"], "--set", "steps=100000", "--set", "checkpoint_interval=0",
                                  "--set", "model.block_size=16", "--set", "model.n_embd=16", "--set", "model.n_head=2", "--set", "model.d_qkv=16",
                                  "--set", "model.d_rank=4", "--set", "model.n_layer=1", "--set", "batch=2" })
            psi.ArgumentList.Add(a);
        using var proc = Process.Start(psi)!;
        var stderr = proc.StandardError.ReadToEndAsync();
        var stdout = new System.Text.StringBuilder();
        proc.OutputDataReceived += (_, e) => { if (e.Data is null) return; lock (stdout) stdout.AppendLine(e.Data); };
        proc.BeginOutputReadLine();
        // Wait until steps are being logged, then interrupt.
        string log = Path.Combine(dir["run"], TrainingRun.LogFile);
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(60) && !proc.HasExited && !(File.Exists(log) && File.ReadLines(log).Count() >= 3)) Thread.Sleep(50);
        if (proc.HasExited) Assert.Fail($"trainer exited early ({proc.ExitCode}): {stdout} {await stderr}");
        Process.Start("kill", ["-INT", proc.Id.ToString()])!.WaitForExit();
        Assert.True(proc.WaitForExit(60_000), "trainer did not exit within 60 s of SIGINT");
        proc.WaitForExit();
        string err = await stderr;
        Assert.True(proc.ExitCode == Cli.InterruptedExit, $"exit code {proc.ExitCode}, expected {Cli.InterruptedExit}; stdout: {stdout}; stderr: {err}");
        var ck = PalmCheckpoint.Load(Path.Combine(dir["run"], TrainingRun.CheckpointFile));
        Assert.NotNull(ck.Training);
        Assert.True(ck.Training!.Step >= 1 && ck.Training.Step < 100000, $"checkpoint step {ck.Training.Step}");
        Assert.Equal(ck.Training.Step, ck.Training.LossHistory.Length);
        Assert.Contains("--resume", stdout.ToString());
    }
}
