"""GlobalBatchNorm on two real gloo ranks equals BatchNorm in one process on the whole batch (values and gradients)."""
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from avss.sync_bn import convert_sync_batchnorm
from avss.testing import free_port


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randn(8, 4, 4, 4, generator=g)


def _loss(model, x, target):
    return ((model(x) - target) ** 2).sum()          # a sum, so the rank losses add up to the global one


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=2)
    try:
        model = convert_sync_batchnorm(_model(), 'cpu')
        x, t = _data()
        share = slice(4 * rank, 4 * rank + 4)
        y = model(x[share])
        _loss(model, x[share], t[share]).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        for g in grads.values(): dist.all_reduce(g)          # the sum of the rank losses' gradients
        out[rank] = dict(y=y.detach(), grads=grads, running=model[1].running_var.clone())
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), out), nprocs=2, join=True)
    model = _model()
    x, t = _data()
    y = model(x)
    _loss(model, x, t).backward()
    torch.testing.assert_close(torch.cat([out[0]['y'], out[1]['y']]), y.detach(), rtol=1e-5, atol=1e-5)
    # conv biases before a BatchNorm have a gradient that is zero up to rounding: absolute tolerance on the model's scale
    scale = max(p.grad.abs().max().item() for p in model.parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(out[0]['grads'][n], p.grad, rtol=1e-4, atol=1e-6 * scale)
    torch.testing.assert_close(out[0]['running'], model[1].running_var, rtol=1e-5, atol=1e-6)
    # and per-rank BatchNorm really differs, so the comparison can fail
    plain = _model()
    assert not torch.allclose(torch.cat([plain(x[:4]), plain(x[4:])]), y.detach(), atol=1e-3)
