"""PyTorch timings of the shapes Ddpm.Cuda.Check benchmarks, for the C#/PyTorch ratio (tests/gpu/run.sh).

Same work: a 4096^3 sgemm and a 3x3 convolution (batch 64, 128 -> 128 channels, 32x32, padding 1) forward,
backward-data and backward-weight; the mean of ten runs after a warm-up, timed with CUDA events, with TF32
off and then on (torch.backends.cuda.matmul.allow_tf32 / torch.backends.cudnn.allow_tf32).
"""
import torch


def timed(fn, reps=10):
    fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, cudnn {torch.backends.cudnn.version()}")
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        label = "TF32 on" if tf32 else "TF32 off"
        s = 4096
        a = torch.randn(s, s, device=dev)
        b = torch.randn(s, s, device=dev)
        ms = timed(lambda: a @ b)
        print(f"torch {label}: sgemm {s}^3: {ms:.3f} ms, {2 * s ** 3 / (ms * 1e9):.1f} TFLOP/s")

        x = torch.randn(64, 128, 32, 32, device=dev, requires_grad=True)
        w = torch.randn(128, 128, 3, 3, device=dev, requires_grad=True)
        y = torch.nn.functional.conv2d(x, w, padding=1)
        dy = torch.randn_like(y)
        fwd = timed(lambda: torch.nn.functional.conv2d(x, w, padding=1))
        bwd_data = timed(lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, padding=1))
        bwd_weight = timed(lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, padding=1))
        flops = 2.0 * 64 * 128 * 32 * 32 * 128 * 9
        print(f"torch {label}: conv3x3: forward {fwd:.3f} ms ({flops / (fwd * 1e9):.1f} TFLOP/s), "
              f"backward-data {bwd_data:.3f} ms, backward-weight {bwd_weight:.3f} ms")


if __name__ == "__main__":
    main()
