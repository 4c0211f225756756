// Guards Palm.Inference's public surface: the reflected list of public types and members must
// equal the checked-in PublicApi.txt (an API change is a reviewed diff of that file), and every
// public member of the engine API namespace must carry XML docs. Set PALM_UPDATE_API=1 to rewrite
// the snapshot after an intended change.
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Xml.Linq;
using Palm.Inference;

namespace Palm.Tests.Api;

public sealed class PublicApiTests
{
    private static readonly Assembly Inference = typeof(PalmModel).Assembly;

    [Fact]
    public void Public_surface_matches_the_snapshot()
    {
        var actual = string.Join("\n", Surface(Inference)) + "\n";
        var path = SnapshotPath();
        if (Environment.GetEnvironmentVariable("PALM_UPDATE_API") == "1") File.WriteAllText(path, actual);
        var expected = File.Exists(path) ? File.ReadAllText(path).ReplaceLineEndings("\n") : "";
        if (actual == expected) return;
        File.WriteAllText(Path.ChangeExtension(path, ".received.txt"), actual);
        var a = actual.Split('\n').ToHashSet();
        var e = expected.Split('\n').ToHashSet();
        Assert.Fail("the public API of Palm.Inference changed (review, then rerun with PALM_UPDATE_API=1):\n" +
                    string.Join("\n", e.Except(a).Select(l => "- " + l).Concat(a.Except(e).Select(l => "+ " + l))));
    }

    [Fact]
    public void Engine_api_members_have_xml_docs()
    {
        var xml = Path.ChangeExtension(Inference.Location, ".xml");
        var documented = XDocument.Load(xml).Descendants("member").Select(m => (string)m.Attribute("name")!).ToHashSet();
        var missing = new List<string>();
        foreach (var t in Inference.GetExportedTypes().Where(t => t.Namespace == "Palm.Inference"))
        {
            if (!documented.Contains("T:" + DocName(t))) missing.Add(t.FullName!);
            foreach (var m in t.GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly))
            {
                if (m is MethodInfo { IsSpecialName: true } || IsCompilerMade(m)) continue;
                string prefix = m switch { PropertyInfo => "P:", FieldInfo => "F:", EventInfo => "E:", _ => "M:" };
                var id = prefix + DocName(t) + "." + (m is ConstructorInfo ? "#ctor" : m.Name);
                if (!documented.Any(d => d == id || d.StartsWith(id + "(", StringComparison.Ordinal) || d.StartsWith(id + "``", StringComparison.Ordinal)))
                    missing.Add($"{t.Name}.{m.Name}");
            }
        }
        Assert.True(missing.Count == 0, "public members without XML docs:\n" + string.Join("\n", missing));
    }

    // Members the compiler writes for records and enums: their docs come from the declaration.
    private static bool IsCompilerMade(MemberInfo m) =>
        m.GetCustomAttribute<CompilerGeneratedAttribute>() is not null
        || m.Name is "Equals" or "GetHashCode" or "ToString" or "Deconstruct" or "<Clone>$" or "EqualityContract" or "value__"
        || (m is ConstructorInfo c && (c.DeclaringType!.IsEnum || c.GetParameters().Length == 1 && c.GetParameters()[0].ParameterType == c.DeclaringType))
        || (m is ConstructorInfo d && d.GetParameters().Length == 0); // an implicit default constructor has nothing to say

    private static string DocName(Type t) => t.FullName!.Replace('+', '.');

    private static string SnapshotPath([CallerFilePath] string here = "") => Path.Combine(Path.GetDirectoryName(here)!, "PublicApi.txt");

    internal static IEnumerable<string> Surface(Assembly asm)
    {
        foreach (var t in asm.GetExportedTypes().OrderBy(t => t.FullName, StringComparer.Ordinal))
        {
            yield return $"{Kind(t)} {Name(t)}{Bases(t)}";
            var members = t.GetMembers(BindingFlags.Public | BindingFlags.Instance | BindingFlags.Static | BindingFlags.DeclaredOnly)
                .Where(m => m is not MethodInfo { IsSpecialName: true } and not FieldInfo { IsSpecialName: true } and not Type)
                .Select(m => "  " + Member(m))
                .Order(StringComparer.Ordinal);
            foreach (var m in members) yield return m;
        }
    }

    private static string Kind(Type t) =>
        t.IsEnum ? "enum" : t.IsInterface ? "interface" : t.IsValueType ? "struct" : t.IsSubclassOf(typeof(Delegate)) ? "delegate"
        : (t.IsAbstract && t.IsSealed) ? "static class" : t.IsSealed ? "sealed class" : t.IsAbstract ? "abstract class" : "class";

    private static string Bases(Type t)
    {
        var list = new List<string>();
        if (t.BaseType is { } b && b != typeof(object) && b != typeof(ValueType) && b != typeof(Enum)) list.Add(Name(b));
        list.AddRange(t.GetInterfaces().Where(i => i.IsPublic).Select(Name).Order(StringComparer.Ordinal));
        return list.Count == 0 ? "" : " : " + string.Join(", ", list);
    }

    private static string Member(MemberInfo m) => m switch
    {
        ConstructorInfo c => $"ctor({Params(c)})",
        MethodInfo mi => $"{(mi.IsStatic ? "static " : "")}{Name(mi.ReturnType)} {mi.Name}{(mi.IsGenericMethod ? "<" + string.Join(", ", mi.GetGenericArguments().Select(Name)) + ">" : "")}({Params(mi)})",
        PropertyInfo p => $"{(p.GetMethod?.IsStatic == true ? "static " : "")}{Name(p.PropertyType)} {p.Name} {{ {(p.GetMethod?.IsPublic == true ? "get; " : "")}{Setter(p)}}}",
        FieldInfo f => f.DeclaringType!.IsEnum ? $"{f.Name} = {f.GetRawConstantValue()}" : $"{(f.IsLiteral ? "const " : f.IsStatic ? "static " : "")}{Name(f.FieldType)} {f.Name}{(f.IsLiteral ? " = " + f.GetRawConstantValue() : "")}",
        EventInfo e => $"event {Name(e.EventHandlerType!)} {e.Name}",
        _ => m.ToString()!,
    };

    private static string Setter(PropertyInfo p)
    {
        if (p.SetMethod is not { IsPublic: true } s) return "";
        bool init = s.ReturnParameter.GetRequiredCustomModifiers().Any(x => x.Name == "IsExternalInit");
        return init ? "init; " : "set; ";
    }

    private static string Params(MethodBase m) => string.Join(", ", m.GetParameters().Select(p =>
        (p.ParameterType.IsByRef ? (p.IsOut ? "out " : p.IsIn ? "in " : "ref ") : "") + Name(p.ParameterType.IsByRef ? p.ParameterType.GetElementType()! : p.ParameterType)
        + " " + p.Name + (p.HasDefaultValue ? " = " + (p.DefaultValue ?? "null") : "")));

    private static string Name(Type t)
    {
        if (t.IsGenericParameter) return t.Name;
        if (t.IsArray) return Name(t.GetElementType()!) + "[]";
        if (Nullable.GetUnderlyingType(t) is { } u) return Name(u) + "?";
        var n = t.IsNested ? Name(t.DeclaringType!) + "." + t.Name : (t.Namespace is null ? "" : t.Namespace + ".") + t.Name;
        if (!t.IsGenericType) return n;
        return n[..n.IndexOf('`')] + "<" + string.Join(", ", t.GetGenericArguments().Select(Name)) + ">";
    }
}
