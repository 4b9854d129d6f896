"""A PyTorch peer of the spatial image IIAE, for speed comparison.

docs/method.md §2, §3b and §4 with the same layers as iiae_jax's spatial model:
strided 4x4 convolutions halving the image down to the latent grid (channel
multipliers doubling, capped at 8, the last repeated), a joint shared
posterior (one convolution on the two shared encoders' last inputs), z_x
tiled over the grid, transposed convolutions back up with batch norm, dropout
(first two layers) and ReLU, tanh out; L1 reconstruction, Adam(2e-4, b1 0.5).
Random images stand in for the data. Prints steps/s after a warm-up.

  --resolution=32   (default) configs/digits_cdcb.py: widths 16/16/16, exclusive_dim 8,
                    latent grid 4x4x16, 3 stages, batch 32 (210,406 parameters)
  --resolution=256  the 256x256 recipe (configs/mnist_cdcb.py): widths 32/32/64,
                    exclusive_dim 8, latent grid 8x8x128, 5 stages, batch 8

  python benchmarks/peers/torch_image_step.py [steps] [batch] [eager|compile] [--resolution=32|256]
Needs torch (CPU build): pip install torch==2.13.0
"""
import math, os, sys
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import seconds_per_step  # noqa: E402

# resolution: (exclusive_width, shared_width, decoder_width, exclusive_dim, latent grid,
#              beta, reconstruction weight, KL annealing rate, default batch)
RECIPES = {32: (16, 16, 16, 8, 4, 0.2, 1000.0, 500.0, 32),
           256: (32, 32, 64, 8, 8, 0.2, 1000.0, 25000.0, 8)}
LAM, CLIP = 1.0, 9.21035


def multipliers(resolution, grid, cap=8):
    n = int(round(math.log2(resolution / grid)))
    mults = [min(2 ** i, cap) for i in range(n - 1)]
    return mults + [mults[-1]]


def conv(i, o):
    return nn.Conv2d(i, o, 4, 2, 1)


def bn(c):
    return nn.BatchNorm2d(c, momentum=0.1, eps=1e-5)


class ConvStack(nn.Module):       # conv -> [BN -> LeakyReLU -> conv]...; returns the last conv's output and input
    def __init__(self, width, mults):
        super().__init__()
        chans = [3] + [m * width for m in mults]
        self.convs = nn.ModuleList(conv(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.bns = nn.ModuleList(bn(c) for c in chans[1:-1])

    def forward(self, x):
        out, h = self.convs[0](x), x
        for b, c in zip(self.bns, self.convs[1:]):
            h = nn.functional.leaky_relu(b(out), 0.2)
            out = c(h)
        return out, h


class Shared(nn.Module):          # r(z_s|.): down to the latent grid, channels split into mean | logvar
    def __init__(self, width, mults):
        super().__init__()
        self.stack = ConvStack(width, mults)

    def forward(self, x):
        out, h = self.stack(x)
        m, lv = out.chunk(2, 1)
        return m, lv.clamp(max=CLIP), h


class Exclusive(nn.Module):       # q(z_.|.): down to twice the grid, BN -> LeakyReLU, flatten, dense to 2*EX
    def __init__(self, width, mults, size, ex):
        super().__init__()
        self.stack = ConvStack(width, mults)
        self.bn = bn(mults[-1] * width)
        self.fc = nn.Linear(size * size * mults[-1] * width, 2 * ex)

    def forward(self, x):
        out, _ = self.stack(x)
        m, lv = self.fc(nn.functional.leaky_relu(self.bn(out), 0.2).flatten(1)).chunk(2, 1)
        return m, lv.clamp(max=CLIP)


class Decoder(nn.Module):         # tile z_x over the grid, concat z_s, up to the image, tanh
    def __init__(self, c_in, width, mults):
        super().__init__()
        up = lambda i, o: nn.ConvTranspose2d(i, o, 4, 2, 1)
        layers, c = [], c_in
        for k, m in enumerate(mults):
            layers += [up(c, m * width), bn(m * width)] + ([nn.Dropout(0.5)] if k < 2 else []) + [nn.ReLU()]
            c = m * width
        self.net = nn.Sequential(*layers, up(c, 3), nn.Tanh())

    def forward(self, zs, ze):
        return self.net(torch.cat([zs, ze[:, :, None, None].expand(-1, -1, *zs.shape[2:])], 1))


class IIAE(nn.Module):
    def __init__(self, resolution):
        super().__init__()
        ne, ns, ndf, ex, grid, self.beta, self.w, self.ar, _ = RECIPES[resolution]
        mults = multipliers(resolution, grid)
        stem = mults[:-1]
        self.qx, self.qy = (Exclusive(ne, stem, 2 * grid, ex) for _ in range(2))
        self.rx, self.ry = Shared(ns, mults), Shared(ns, mults)
        self.joint = conv(2 * stem[-1] * ns, mults[-1] * ns)
        self.px, self.py = (Decoder(mults[-1] * ns // 2 + ex, ndf, stem[::-1]) for _ in range(2))

    def forward(self, x, y, step):
        mx, lx = self.qx(x)
        my, ly = self.qy(y)
        rmx, rlx, hx = self.rx(x)
        rmy, rly, hy = self.ry(y)
        ms, ls = self.joint(torch.cat([hx, hy], 1)).chunk(2, 1)
        ls = ls.clamp(max=CLIP)
        smp = lambda m, l: m + torch.exp(0.5 * l) * torch.randn_like(m)
        zx, zy, zs = smp(mx, lx), smp(my, ly), smp(ms, ls)
        rx = self.w * (self.px(zs, zx) - x).abs().mean()
        ry = self.w * (self.py(zs, zy) - y).abs().mean()
        kl0 = lambda m, l: (0.5 * (-1 - l + m ** 2 + l.exp())).flatten(1).sum(-1).mean()
        kl = lambda mq, lq, mp, lp: (0.5 * (-1 - lq + lp + ((mq - mp) ** 2 + lq.exp()) / lp.exp())).flatten(1).sum(-1).mean()
        c = 1.0 - torch.exp(-step / self.ar)
        beta = self.beta
        return ((beta + LAM) * (rx + ry) + c * (beta + LAM) * (kl0(mx, lx) + kl0(my, ly))
                + c * beta * kl0(ms, ls) + LAM * (kl(ms, ls, rmx, rlx) + kl(ms, ls, rmy, rly)))


def main():
    options = [a for a in sys.argv[1:] if a.startswith("--")]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    resolution = 32
    for option in options:
        name, _, value = option[2:].partition("=")
        if name != "resolution" or int(value) not in RECIPES:
            sys.exit(f"unknown option {option}; the only option is --resolution={'|'.join(map(str, RECIPES))}")
        resolution = int(value)
    steps = int(args[0]) if len(args) > 0 else 200
    batch = int(args[1]) if len(args) > 1 else RECIPES[resolution][-1]
    mode = args[2] if len(args) > 2 else "eager"
    torch.manual_seed(0)
    model = IIAE(resolution).train()
    print("params", sum(p.numel() for p in model.parameters()))
    opt = torch.optim.Adam(model.parameters(), lr=2e-4, betas=(0.5, 0.999), fused=(mode == "compile"))
    x = torch.rand(batch, 3, resolution, resolution) * 2 - 1
    y = torch.rand(batch, 3, resolution, resolution) * 2 - 1

    def loss_and_grad(step):
        loss = model(x, y, step)
        loss.backward()
        return loss
    if mode == "compile":
        loss_and_grad = torch.compile(loss_and_grad)
    dt, loss = seconds_per_step(loss_and_grad, opt, steps, warmup=min(30, max(3, steps // 2)))
    print(f"torch {mode}: {1 / dt:.2f} steps/s at batch {batch}, {resolution}x{resolution} "
          f"({1000 * dt:.2f} ms/step), loss {loss:.3f}")


if __name__ == "__main__":
    main()
