"""The peers' one timing loop: Adam steps of `loss_and_grad(step)` (forward and backward)."""
import time

import torch


def seconds_per_step(loss_and_grad, opt, steps, warmup):
    """Mean seconds per step over `steps` steps after `warmup` untimed ones (compilation
    included there); returns it with the last loss."""
    for s in range(steps + warmup):
        if s == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_and_grad(torch.tensor(float(s)))
        opt.step()
    return (time.perf_counter() - t0) / steps, loss.item()
