// Palm.Trainer command line. `demo` is the README's main job (tokenizer + tiny model + sample in
// one go); `tokenizer` → `prepare` → `train` → `eval` / `sample` are the steps of a real run.
// docs/trainer.md documents every command and file format.
using Palm.Trainer.Commands;

return TrainerCli.Run(args);
