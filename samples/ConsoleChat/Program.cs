// ConsoleChat: streaming completion in the terminal over the Palm.Inference engine API
// (ChatApp holds the logic). Ctrl-C stops the running generation; with none running it exits.
using ConsoleChat;

var cancel = new GenerationCancel();
Console.CancelKeyPress += (_, e) => e.Cancel = cancel.TryCancel();
return await ChatApp.RunAsync(args, Console.In, Console.Out, Console.Error, cancel);
