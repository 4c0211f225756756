// The root command with every subcommand; Program.cs only calls Run.
using System.CommandLine;

namespace Palm.Trainer.Commands;

internal static class TrainerCli
{
    public static RootCommand Build()
    {
        var root = new RootCommand("Palm.Trainer: train Palm language models");
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(TokenizerCommand.Create());
        root.Subcommands.Add(PrepareCommand.Create());
        root.Subcommands.Add(TrainCommand.Create());
        root.Subcommands.Add(EvalCommand.Create());
        root.Subcommands.Add(SampleCommand.Create());
        root.Subcommands.Add(ExportCommand.Create());
        root.Subcommands.Add(QuantizeCommand.Create());
        return root;
    }

    public static int Run(string[] args) => Build().Parse(args).Invoke();
}
