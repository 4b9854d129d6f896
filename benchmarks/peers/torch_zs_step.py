"""A PyTorch (eager) implementation of the Sketchy feature-vector IIAE, for speed comparison.

Built from docs/method.md §2, §3a and §4: one optimiser step at batch 100 on
512-d features with Adam(2e-4, b1=0.5), joint shared posterior, 100 classes
(2,477,284 parameters). Prints steps/s after a warm-up. It is what a user
would pick instead of iiae_jax; compare in the same run on the same machine.
Needs torch (CPU build): pip install torch==2.13.0
Usage: python benchmarks/peers/torch_zs_step.py [steps] [batch]
"""
import math, os, sys
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import seconds_per_step  # noqa: E402

D, NEF, EX, SH, NDF, NCLS = 512, 128, 64, 64, 128, 100
BETA, LAM, W, AR, CLIP = 0.5, 1.0, 10.0, 2000.0, 9.21035


def block(n_in, n_out):
    return nn.Sequential(nn.BatchNorm1d(n_in, momentum=0.1, eps=1e-5), nn.LeakyReLU(0.2), nn.Linear(n_in, n_out))


class Enc(nn.Module):
    def __init__(self, w, z):
        super().__init__()
        self.first = nn.Linear(D, 4 * w)
        self.bn1 = nn.BatchNorm1d(4 * w, momentum=0.1, eps=1e-5)
        self.l2 = nn.Linear(4 * w, 2 * w)
        self.b3 = block(2 * w, 2 * z)

    def forward(self, x):
        h = nn.functional.leaky_relu(self.bn1(self.first(x)), 0.2)
        out = self.b3(self.l2(h))
        m, lv = out.chunk(2, -1)
        return m, lv.clamp(max=CLIP), h


class Dec(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(SH + EX, NDF), nn.BatchNorm1d(NDF, momentum=0.1, eps=1e-5), nn.ReLU(), nn.Linear(NDF, D))

    def forward(self, zs, ze):
        return self.net(torch.cat([zs, ze], -1))


class IIAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.qx, self.qy = Enc(NEF, EX), Enc(NEF, EX)
        self.rx, self.ry = Enc(NEF, SH), Enc(NEF, SH)
        self.joint1 = nn.Linear(8 * NEF, 4 * NEF)
        self.joint2 = block(4 * NEF, 2 * SH)
        self.px, self.py = Dec(), Dec()
        self.cls = nn.Linear(SH, NCLS)

    def forward(self, x, y, step):
        mx, lx, _ = self.qx(x)
        my, ly, _ = self.qy(y)
        rmx, rlx, hx = self.rx(x)
        rmy, rly, hy = self.ry(y)
        ms, ls = self.joint2(self.joint1(torch.cat([hx, hy], -1))).chunk(2, -1)
        ls = ls.clamp(max=CLIP)
        smp = lambda m, l: m + torch.exp(0.5 * l) * torch.randn_like(m)
        zx, zy, zs = smp(mx, lx), smp(my, ly), smp(ms, ls)
        rx = W * ((self.px(zs, zx) - x) ** 2).mean()
        ry = W * ((self.py(zs, zy) - y) ** 2).mean()
        kl0 = lambda m, l: (0.5 * (-1 - l + m ** 2 + l.exp())).sum(-1).mean()
        kl = lambda mq, lq, mp, lp: (0.5 * (-1 - lq + lp + ((mq - mp) ** 2 + lq.exp()) / lp.exp())).sum(-1).mean()
        c = 1.0 - math.exp(-step / AR)
        return ((BETA + LAM) * (rx + ry) + c * (BETA + LAM) * (kl0(mx, lx) + kl0(my, ly))
                + c * BETA * kl0(ms, ls) + LAM * (kl(ms, ls, rmx, rlx) + kl(ms, ls, rmy, rly)))


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    torch.manual_seed(0)
    model = IIAE()
    print("params", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999))
    x, y = torch.randn(batch, D), torch.randn(batch, D)
    def loss_and_grad(step):
        loss = model(x, y, step)
        loss.backward()
        return loss
    dt, loss = seconds_per_step(loss_and_grad, opt, steps, warmup=20)
    print(f"torch eager: {1 / dt:.1f} steps/s at batch {batch} ({1000 * dt:.2f} ms/step), loss {loss:.3f}")


if __name__ == "__main__":
    main()
