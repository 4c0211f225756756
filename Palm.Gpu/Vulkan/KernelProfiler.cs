// Aggregates per-kernel GPU time from timestamp queries (PALM_VK_PROFILE=1) into a table.
using System.Globalization;
using System.Text;

namespace Palm.Gpu.Vulkan;

internal sealed class KernelProfiler
{
    readonly Dictionary<string, (long Calls, double Ns)> totals = new();

    public int Count => totals.Count;

    public void Add(string kernel, double ns)
    {
        totals.TryGetValue(kernel, out var t);
        totals[kernel] = (t.Calls + 1, t.Ns + ns);
    }

    public IReadOnlyDictionary<string, (long Calls, double Ns)> Totals => totals;

    public void Clear() => totals.Clear();

    public string FormatTable()
    {
        var all = totals.Values.Sum(t => t.Ns);
        var width = Math.Max(6, totals.Keys.DefaultIfEmpty("").Max(k => k.Length));
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        sb.AppendLine(string.Format(inv, "{0} {1,8} {2,12} {3,12} {4,7}", "kernel".PadRight(width), "calls", "total ms", "mean us", "share"));
        foreach (var (k, t) in totals.OrderByDescending(kv => kv.Value.Ns))
            sb.AppendLine(string.Format(inv, "{0} {1,8} {2,12:F3} {3,12:F2} {4,6:F1}%",
                k.PadRight(width), t.Calls, t.Ns / 1e6, t.Ns / 1e3 / t.Calls, all > 0 ? 100 * t.Ns / all : 0));
        sb.Append(string.Format(inv, "{0} {1,8} {2,12:F3}", "total".PadRight(width), totals.Values.Sum(t => t.Calls), all / 1e6));
        return sb.ToString();
    }
}
