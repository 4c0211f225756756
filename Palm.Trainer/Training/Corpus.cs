// Finding and reading the training text: a file or a folder of UTF-8 text, defaulting to the
// King James Bible that scripts/setup.sh extracts from Debian's bible-kjv package.
using System.Text;

namespace Palm.Trainer.Training;

public static class Corpus
{
    /// <summary>Relative to the repository root; written by scripts/setup.sh.</summary>
    public const string DefaultRelativePath = "data/corpus/kjv.txt";

    /// <summary>The default corpus path, found by walking up from the working directory and the binary.</summary>
    public static string? FindDefault()
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
            for (var d = new DirectoryInfo(start); d is not null; d = d.Parent)
            {
                var p = Path.Combine(d.FullName, DefaultRelativePath);
                if (File.Exists(p)) return p;
            }
        return null;
    }

    /// <summary>Reads a file, or every file of a folder (recursively, in ordinal order), as one text, up to <paramref name="maxChars"/>.</summary>
    /// <exception cref="FileNotFoundException">The path does not exist.</exception>
    public static string Read(string path, long maxChars = long.MaxValue)
    {
        IEnumerable<string> files = Directory.Exists(path)
            ? Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            : File.Exists(path) ? [path] : throw new FileNotFoundException($"corpus not found: {path}", path);
        var sb = new StringBuilder();
        foreach (var f in files)
        {
            if (sb.Length >= maxChars) break;
            var text = File.ReadAllText(f, Encoding.UTF8);
            sb.Append(text.AsSpan(0, (int)Math.Min(text.Length, maxChars - sb.Length)));
            if (sb.Length < maxChars) sb.Append('\n');
        }
        if (sb.Length == 0) throw new InvalidDataException($"corpus {path} holds no text");
        return sb.ToString();
    }
}
