// User errors (bad config, missing or corrupt data) and the guard that turns them into one clear
// line on stderr and a non-zero exit code, so only real bugs ever show a stack trace.
using Palm.Inference.Checkpoint;
using Palm.Inference.Model;

namespace Palm.Trainer.Commands;

/// <summary>An error the user can fix; its message names the file, key or field at fault.</summary>
public sealed class UserError(string message, Exception? inner = null) : Exception(message, inner);

internal static class Cli
{
    /// <summary>Exit code for user errors (bad config, missing or corrupt data).</summary>
    public const int UserErrorExit = 2;
    /// <summary>Exit code after Ctrl-C, once the checkpoint is saved (128 + SIGINT, as shells report it).</summary>
    public const int InterruptedExit = 130;

    /// <summary>Runs a command body; user errors become "error: ..." on <paramref name="err"/> and exit code 2.</summary>
    public static int Guard(string command, Func<int> body, TextWriter? err = null)
    {
        err ??= Console.Error;
        try { return body(); }
        catch (Exception e) when (e is UserError or PalmFormatException or PalmConfigException
                                  or FileNotFoundException or DirectoryNotFoundException or UnauthorizedAccessException)
        {
            err.WriteLine($"{command}: error: {e.Message}");
            return UserErrorExit;
        }
    }
}
