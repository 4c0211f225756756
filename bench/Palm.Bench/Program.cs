// Benchmarks (never timed tests): `model` = CPU reference throughput beside the PyTorch peer,
// `tokenizer` = BPE training and encoding throughput.
using Palm.Bench;

string which = args.Length > 0 ? args[0] : "";
var rest = args.Skip(1).ToArray();
return which switch
{
    "model" => ModelBench.Run(rest),
    "tokenizer" => TokenizerBench.Run(rest),
    "gpu" => GpuBench.Run(rest),
    "gpu-check" => GpuCheck.Run(rest),
    "gpu-train" => GpuBench.Train(rest),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: Palm.Bench gpu [--sizes 256,512,1024] [--config small] | model [--config small] [--reps 7] [--no-peer] [--write PATH] | tokenizer [--corpus PATH]... [--mb 10] [--vocab 8192]");
    return 2;
}
