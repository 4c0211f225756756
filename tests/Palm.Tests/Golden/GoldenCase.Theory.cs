// xunit theory data over the golden files: one test case per file.
namespace Palm.Tests.Golden;

public sealed partial class GoldenCase
{
    /// <summary>Every *.msgpack in the golden folders (<see cref="Directories"/>), as xunit theory data (file paths).</summary>
    public static TheoryData<string> Files()
    {
        var data = new TheoryData<string>();
        foreach (var dir in Directories())
            foreach (var f in Directory.EnumerateFiles(dir, "*.msgpack").Order(StringComparer.Ordinal))
                data.Add(f);
        return data;
    }

}
