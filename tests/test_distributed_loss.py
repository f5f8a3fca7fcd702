"""Eq. 1 across two real processes (torch.distributed, gloo backend, CPU).

Two ranks with B/2 pairs each, DDP averaging the gradients, must give the same parameter gradients and loss as one
process with all B pairs; a gather whose backward does not sum the gradients over ranks (the bug of
lightly-ai/lightly#1528) must not.

The model is the tiny AVModel in float64 with its BatchNorm layers in eval mode: in train mode each rank would
normalise with the statistics of its own B/2 clips, a different function from one process normalising over B, and
SyncBatchNorm, which would fix that, runs only on GPUs. In eval mode every clip's embedding depends on that clip
alone, so the only coupling across the batch is the loss, which is what this test is about, and the network is
still a real one (3-D and 2-D convolutions, BatchNorm, residual blocks, projection heads).
"""
import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import avss.losses
from avss.losses import gather_with_grad, nce_loss
from avss.models import AVModel

WORLD, B, SEED = 2, 8, 0
VIDEO, AUDIO = (3, 8, 32, 32), (1, 96, 300)  # small clips keep the test fast; the encoders take any size


class _GatherNoReduce(torch.autograd.Function):
    "The broken gather: its backward hands each rank its slice of its OWN gradient, not the sum over ranks."
    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def _gather_no_reduce(x, group=None):
    return _GatherNoReduce.apply(x)


def _model():
    torch.manual_seed(SEED)
    return AVModel('tiny', dim=16).double().eval()


def _batch():
    g = torch.Generator().manual_seed(SEED + 1)
    return (torch.randn((B,) + VIDEO, generator=g, dtype=torch.float64),
            torch.randn((B,) + AUDIO, generator=g, dtype=torch.float64))


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _check_gather(rank):
    "gather_with_grad alone: forward concatenates in rank order, backward sums every rank's gradient for this slice."
    x = torch.full((2, 3), float(rank + 1), dtype=torch.float64, requires_grad=True)
    y = gather_with_grad(x)
    assert torch.equal(y, torch.cat([torch.full((2, 3), 1.0), torch.full((2, 3), 2.0)]).double())
    w = torch.arange(12, dtype=torch.float64).reshape(4, 3) * (rank + 1)  # rank r weighs the rows by (r + 1)
    (y * w).sum().backward()
    expected = (1 + 2) * torch.arange(12, dtype=torch.float64).reshape(4, 3)[2 * rank:2 * rank + 2]
    assert torch.equal(x.grad, expected), (rank, x.grad, expected)


def _worker(rank, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{out_dir}/rendezvous', rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        _check_gather(rank)
        video, audio = _batch()
        rows = slice(rank * B // WORLD, (rank + 1) * B // WORLD)
        for variant, gather in (('sum', gather_with_grad), ('no_reduce', _gather_no_reduce)):
            avss.losses.gather_with_grad = gather  # nce_loss looks the gather up at call time
            model = DistributedDataParallel(_model())
            loss = nce_loss(*model(video[rows], audio[rows]))  # distributed=None: gathers on its own
            loss.backward()
            torch.save({'loss': loss.detach(), 'grads': _grads(model.module)}, f'{out_dir}/{variant}_{rank}.pt')
            avss.losses.gather_with_grad = gather_with_grad
    finally:
        dist.destroy_process_group()


def _max_rel_diff(a, b):
    return max(((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-300)).item() for k in b)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp('ddp')
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    model = _model()
    loss = nce_loss(*model(*_batch()))
    loss.backward()
    single = {'loss': loss.detach(), 'grads': _grads(model)}
    ranks = {v: [torch.load(out/f'{v}_{r}.pt') for r in range(WORLD)] for v in ('sum', 'no_reduce')}
    return single, ranks


@pytest.mark.timeout(600)
def test_two_ranks_equal_one_process(runs):
    single, ranks = runs
    two = ranks['sum']
    # each rank's loss is the mean over its rows; their mean is the loss over the global batch
    torch.testing.assert_close(sum(r['loss'] for r in two) / WORLD, single['loss'], rtol=1e-12, atol=0)
    assert not torch.allclose(two[0]['loss'], two[1]['loss'])
    for r in two:  # DDP left the averaged gradient on every rank
        assert set(r['grads']) == set(single['grads'])
        assert _max_rel_diff(r['grads'], single['grads']) < 1e-9


@pytest.mark.timeout(600)
def test_gather_without_sum_gives_other_gradients(runs):
    single, ranks = runs
    broken = ranks['no_reduce']
    # the forward is the same, so the loss agrees ...
    torch.testing.assert_close(sum(r['loss'] for r in broken) / WORLD, single['loss'], rtol=1e-12, atol=0)
    # ... but the other ranks' contributions to the gradient are lost
    assert _max_rel_diff(broken[0]['grads'], single['grads']) > 1e-3
