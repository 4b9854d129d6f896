"""The PyTorch peer of torch_zs_step.py, as a performance-minded PyTorch user writes it.

Same model, loss and data (docs/method.md §2, §3a, §4; batch 100, 2,477,284 parameters),
but the forward+backward step compiled with torch.compile (inductor, CPU C++
codegen) and Adam with fused=True. Prints steps/s after a warm-up that
includes compilation. Compare in the same run on the same machine.
Needs torch (CPU build) and a C++ compiler: pip install torch==2.13.0
Usage: python benchmarks/peers/torch_zs_step_compiled.py [steps] [batch]
"""
import os, sys
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import seconds_per_step  # noqa: E402
from torch_zs_step import IIAE, D  # noqa: E402


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    torch.manual_seed(0)
    model = IIAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=True)
    x, y = torch.randn(batch, D), torch.randn(batch, D)

    @torch.compile
    def loss_and_grad(step):
        loss = model(x, y, step)
        loss.backward()
        return loss

    dt, loss = seconds_per_step(loss_and_grad, opt, steps, warmup=30)
    print(f"torch.compile: {1 / dt:.1f} steps/s at batch {batch} ({1000 * dt:.2f} ms/step), loss {loss:.3f}")


if __name__ == "__main__":
    main()
