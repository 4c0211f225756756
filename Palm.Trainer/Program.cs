// Palm.Trainer command line. `demo` is the README's main job: train a tokenizer and a tiny model
// on the CPU reference backend, save a .palm checkpoint, and sample from it.
using System.CommandLine;
using Palm.Trainer.Commands;

var root = new RootCommand("Palm.Trainer: train Palm language models");
root.Subcommands.Add(DemoCommand.Create());
return root.Parse(args).Invoke();
