// Streams text files as chunks cut only where tokenization cannot change: after a line break
// that is followed by a non-whitespace character. No pre-token of the GPT-4 split pattern spans
// such a point (whitespace runs end at the last line break; words never start with one), so
// encoding chunk by chunk gives exactly the ids of encoding the whole file, in bounded memory.
using System.Text;

namespace Palm.Trainer.Data;

internal static class TextChunks
{
    /// <summary>Chunks are cut once this many characters are pending (about 256 KiB of text).</summary>
    public const int TargetChars = 1 << 18;
    /// <summary>A line longer than this is cut at a space before a letter (may differ from whole-file encoding there).</summary>
    public const int MaxChars = 1 << 22;

    /// <summary>Expands files and folders (recursively, ordinal order) into a file list.</summary>
    /// <exception cref="Commands.UserError">A path does not exist or no file is found.</exception>
    public static List<string> ExpandPaths(IEnumerable<string> paths)
    {
        var files = new List<string>();
        foreach (var p in paths)
        {
            if (Directory.Exists(p))
            {
                var found = Directory.GetFiles(p, "*", SearchOption.AllDirectories);
                Array.Sort(found, StringComparer.Ordinal);
                files.AddRange(found);
            }
            else if (File.Exists(p)) files.Add(p);
            else throw new Commands.UserError($"input '{p}' is neither a file nor a folder");
        }
        if (files.Count == 0) throw new Commands.UserError("no input files");
        return files;
    }

    /// <summary>The chunks of one UTF-8 file, in order; their concatenation is the file's text.</summary>
    public static IEnumerable<string> Read(string path, int targetChars = TargetChars)
    {
        using var reader = new StreamReader(path, Encoding.UTF8, detectEncodingFromByteOrderMarks: true, bufferSize: 1 << 16);
        var buf = new char[1 << 16];
        var pending = new StringBuilder();
        int n;
        while ((n = reader.Read(buf, 0, buf.Length)) > 0)
        {
            pending.Append(buf, 0, n);
            if (pending.Length < targetChars) continue;
            int cut = LastSafeCut(pending);
            if (cut > 0)
            {
                yield return pending.ToString(0, cut);
                pending.Remove(0, cut);
            }
            else if (pending.Length >= MaxChars)
            {
                yield return pending.ToString();
                pending.Clear();
            }
        }
        if (pending.Length > 0) yield return pending.ToString();
    }

    /// <summary>The first safe cut index &gt;= <paramref name="from"/> (a line start after a line break, not whitespace), or 0 if none.</summary>
    public static int SafeCutAtOrAfter(string text, int from)
    {
        for (int i = Math.Max(1, from); i < text.Length; i++)
            if ((text[i - 1] == '\n' || text[i - 1] == '\r') && !char.IsWhiteSpace(text[i])) return i;
        return 0;
    }

    // The last index i with text[i-1] a line break and text[i] not whitespace; else a space
    // before a letter in over-long lines; else 0 (no cut).
    private static int LastSafeCut(StringBuilder text)
    {
        for (int i = text.Length - 1; i > 0; i--)
            if ((text[i - 1] == '\n' || text[i - 1] == '\r') && !char.IsWhiteSpace(text[i])) return i;
        if (text.Length >= MaxChars)
            for (int i = text.Length - 1; i > 1; i--)
                if (text[i - 1] == ' ' && char.IsLetter(text[i]) && !char.IsWhiteSpace(text[i - 2])) return i - 1;
        return 0;
    }
}
