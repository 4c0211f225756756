// The loss curve as a small hand-written SVG (train loss per step, smoothed, and val loss
// points): no plotting or native graphics dependency, readable in any browser or editor.
using System.Globalization;
using System.Text;

namespace Palm.Trainer.Training;

internal static class LossPlot
{
    public static string Svg(IReadOnlyList<float> train, IReadOnlyList<(int Step, double Loss)> val, string title)
    {
        const int W = 720, H = 400, L = 60, R = 20, T = 30, B = 40;
        var inv = CultureInfo.InvariantCulture;
        var finite = train.Where(float.IsFinite).Select(x => (double)x).Concat(val.Select(v => v.Loss).Where(double.IsFinite)).ToList();
        double lo = finite.Count > 0 ? finite.Min() : 0, hi = finite.Count > 0 ? finite.Max() : 1;
        if (hi - lo < 1e-6) { hi += 0.5; lo -= 0.5; }
        int steps = Math.Max(1, Math.Max(train.Count, val.Count > 0 ? val.Max(v => v.Step) : 1));
        string X(double step) => (L + (W - L - R) * step / steps).ToString("F1", inv);
        string Y(double loss) => (T + (H - T - B) * (hi - loss) / (hi - lo)).ToString("F1", inv);

        var sb = new StringBuilder();
        sb.Append($"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n");
        sb.Append($"<rect width=\"{W}\" height=\"{H}\" fill=\"white\"/>\n");
        sb.Append($"<text x=\"{W / 2}\" y=\"18\" text-anchor=\"middle\">{Escape(title)}: loss per step</text>\n");
        sb.Append($"<line x1=\"{L}\" y1=\"{H - B}\" x2=\"{W - R}\" y2=\"{H - B}\" stroke=\"black\"/><line x1=\"{L}\" y1=\"{T}\" x2=\"{L}\" y2=\"{H - B}\" stroke=\"black\"/>\n");
        for (int i = 0; i <= 4; i++)
        {
            double v = lo + (hi - lo) * i / 4;
            sb.Append($"<text x=\"{L - 6}\" y=\"{Y(v)}\" text-anchor=\"end\" dominant-baseline=\"middle\">{v.ToString("F2", inv)}</text>\n");
            double s = steps * i / 4.0;
            sb.Append($"<text x=\"{X(s)}\" y=\"{H - B + 16}\" text-anchor=\"middle\">{s.ToString("F0", inv)}</text>\n");
        }
        sb.Append($"<text x=\"{W / 2}\" y=\"{H - 6}\" text-anchor=\"middle\">step</text>\n");
        if (train.Count > 0)
        {
            // Raw losses faint, an exponential moving average on top.
            sb.Append("<polyline fill=\"none\" stroke=\"#9ecae1\" stroke-width=\"1\" points=\"");
            for (int i = 0; i < train.Count; i++) if (float.IsFinite(train[i])) sb.Append($"{X(i + 1)},{Y(train[i])} ");
            sb.Append("\"/>\n<polyline fill=\"none\" stroke=\"#08519c\" stroke-width=\"2\" points=\"");
            double ema = double.NaN;
            for (int i = 0; i < train.Count; i++)
            {
                if (!float.IsFinite(train[i])) continue;
                ema = double.IsNaN(ema) ? train[i] : 0.9 * ema + 0.1 * train[i];
                sb.Append($"{X(i + 1)},{Y(ema)} ");
            }
            sb.Append("\"/>\n");
        }
        foreach (var (step, loss) in val)
            if (double.IsFinite(loss)) sb.Append($"<circle cx=\"{X(step)}\" cy=\"{Y(loss)}\" r=\"4\" fill=\"#e6550d\"/>\n");
        sb.Append($"<text x=\"{W - R - 150}\" y=\"{T + 12}\" fill=\"#08519c\">train (EMA 0.9)</text><text x=\"{W - R - 150}\" y=\"{T + 28}\" fill=\"#e6550d\">val</text>\n");
        sb.Append("</svg>\n");
        return sb.ToString();
    }

    private static string Escape(string s) => s.Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;");
}
