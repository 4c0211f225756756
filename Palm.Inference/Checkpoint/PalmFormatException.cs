// The single exception type that checkpoint loading reports, so that callers handling untrusted
// files need one catch clause and never see a parser's internal exception types.
namespace Palm.Inference.Checkpoint;

/// <summary>
/// Thrown when a checkpoint's content violates the <c>.palm</c> format: truncated or corrupt data,
/// wrong magic or version, wrong types, inconsistent shapes, missing or unknown tensors.
/// The message says what is wrong and where (for example <c>tensors[3] 'unembed.w2': ...</c>).
/// I/O failures (missing file, permission denied) are not format errors and surface as
/// <see cref="IOException"/> or <see cref="UnauthorizedAccessException"/>.
/// </summary>
public sealed class PalmFormatException : Exception
{
    /// <summary>Creates the exception with a message.</summary>
    public PalmFormatException(string message) : base(message) { }

    /// <summary>Creates the exception wrapping the lower-level error that revealed the problem.</summary>
    public PalmFormatException(string message, Exception inner) : base(message, inner) { }
}
