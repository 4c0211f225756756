// Benchmarks (never timed tests): `model` = CPU reference throughput beside the PyTorch peer,
// `gemm` = fp32 GEMM GFLOP/s beside numpy's sgemm, `tokenizer` = BPE training and encoding throughput.
using Palm.Bench;

string which = args.Length > 0 ? args[0] : "";
var rest = args.Skip(1).ToArray();
return which switch
{
    "model" => ModelBench.Run(rest),
    "gemm" => GemmBench.Run(rest),
    "tokenizer" => TokenizerBench.Run(rest),
    "gpu" => GpuBench.Run(rest),
    "gpu-check" => GpuCheck.Run(rest),
    "gpu-train" => GpuBench.Train(rest),
    "api" => ApiBench.Run(rest),
    "first-reply" => ApiBench.FirstReply(rest),
    "quant" => QuantBench.Run(rest),
    "gpu-sample" => SampleBench.Run(rest),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: Palm.Bench gemm [--sizes 256,512,1024] [--isa avx512|avx2|portable] [--serial] [--no-peer] | gpu [--sizes 256,512,1024] [--config small] | model [--config small] [--reps 7] [--no-peer] [--write PATH] | tokenizer [--corpus PATH]... [--mb 10] [--vocab 8192] | quant [--backend cpu|vulkan] [--tokens 128]");
    return 2;
}
