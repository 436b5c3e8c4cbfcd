"""PyTorch peer figures for BENCHMARKS.md: torch.mm at 256/1024/2048 squared and conv2d 3x3 forward+backward on
[16,64,32,32] and [16,256,4,4], medians of several timed repetitions after warm-up, same method as the C# QuickReport.

Run with Debian's PyTorch (apt-get install python3-torch libopenblas0-pthread):
    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 /usr/bin/python3 bench_torch.py --threads 2
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def median_time(fn, reps, inner=1):
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--sizes", default="256,1024,2048")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, median of {args.reps}")
    for s in (int(v) for v in args.sizes.split(",")):
        a = torch.rand(s, s)
        b = torch.rand(s, s)
        c = torch.empty(s, s)
        flops = 2.0 * s ** 3
        inner = max(1, int(2e9 / flops / 4))
        t = median_time(lambda: torch.mm(a, b, out=c), args.reps, inner)
        print(f"torch.mm {s}^3 threads {args.threads}: {flops / t / 1e9:.1f} GFLOP/s")

    for c, hw in ((64, 32), (256, 4)):
        conv(args, c, hw)


def conv(args, c, hw):
    x = torch.rand(16, c, hw, hw, requires_grad=True)
    w = torch.rand(c, c, 3, 3, requires_grad=True)
    bias = torch.rand(c, requires_grad=True)
    gy = torch.rand(16, c, hw, hw)
    flops = 2.0 * 16 * c * hw * hw * c * 9 / 1e9
    with torch.no_grad():
        tf = median_time(lambda: F.conv2d(x, w, bias, 1, 1), args.reps)

    def fwd_bwd():
        y = F.conv2d(x, w, bias, 1, 1)
        torch.autograd.grad(y, (x, w, bias), gy)

    tt = median_time(fwd_bwd, args.reps)
    print(f"torch conv2d 3x3 [16,{c},{hw},{hw}]->{c} threads {args.threads}: forward {tf * 1e3:.2f} ms ({flops / tf:.1f} GFLOP/s), "
          f"forward+backward {tt * 1e3:.2f} ms ({3 * flops / tt:.1f} GFLOP/s)")


if __name__ == "__main__":
    main()
