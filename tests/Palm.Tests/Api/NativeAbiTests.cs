// The C ABI (include/palm.h, native/Palm.Native.Interop) is tested from C by samples/c-embed's
// palm-abi-test (scripts/build-native.sh). Its model id check compares libpalm, built with NativeAOT,
// against samples/c-embed/palm-kjv.id; this test pins that file to the id .NET computes, so the two
// agree (session states are bound to the id).
using Palm.Inference;

namespace Palm.Tests.Api;

public sealed class NativeAbiTests
{
    [Fact]
    public void The_pinned_id_of_the_builtin_model_is_the_one_dotnet_computes()
    {
        string root = AppContext.BaseDirectory;
        while (!File.Exists(Path.Combine(root, "Palm.Native.sln"))) root = Path.GetDirectoryName(root)!;
        using var model = PalmModel.Load(Path.Combine(root, "models", "palm-kjv.palm"), new ModelOptions { Backend = Backend.Cpu });
        string pinned = File.ReadAllText(Path.Combine(root, "samples", "c-embed", "palm-kjv.id")).Trim();
        Assert.True(pinned == model.Id, $"samples/c-embed/palm-kjv.id holds {pinned}; models/palm-kjv.palm has id {model.Id} (update the file when the model changes)");
    }
}
