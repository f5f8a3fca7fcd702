"""The chunked step (avss.chunked) on real gloo ranks, in float64, and a 2-rank pretraining run in chunks.

Chunks and ranks are the same computation: a chunk is normalised with its own BatchNorm statistics, as a rank is
with per-rank BatchNorm, and Eq. 1 sees every embedding of the batch either way. So

- one process, chunks of c, equals one rank per chunk (c clips each, per-rank BatchNorm, DDP);
- two ranks in chunks of c equal one process with the same global batch in chunks of c (per-rank BatchNorm), with
  DDP's `find_unused_parameters` off and on, and all-reduce the gradients once per step, as the unchunked step does;
- two ranks in chunks of c with global BatchNorm (`sync_bn`) normalise chunk i of both ranks together: one process
  with the batch reordered so that those 2c clips form one chunk.

The BatchNorm layers are in training mode throughout; the chapter checks eval mode against the unchunked step.
"""
import datetime
import json
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from avss.chunked import chunked_backward, unchunked_backward
from avss.losses import nce_loss
from avss.models import AVModel
from avss.sync_bn import convert_sync_batchnorm

from test_pretrain import _losses, _one_process_then_torchrun

WORLD, SEED = 2, 0
eq1 = partial(nce_loss, check_finite=False)      # float64 embeddings stay float64


def _model():
    torch.manual_seed(SEED)
    return AVModel('tiny', dim=16).double().train()


def _batch(n):
    g = torch.Generator().manual_seed(SEED + 1)
    return (torch.randn(n, 3, 4, 16, 16, generator=g, dtype=torch.float64),
            torch.randn(n, 1, 32, 48, generator=g, dtype=torch.float64))


def _grads(model):
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _counting_hook(reduced, bucket):
    "DDP's default all-reduce (the mean over ranks), counting the gradient elements it reduces."
    reduced.append(bucket.buffer().numel())
    fut = dist.all_reduce(bucket.buffer().div_(dist.get_world_size()), async_op=True).get_future()
    return fut.then(lambda f: f.value()[0])


def _ddp_step(model, video, audio, chunk, find_unused=False):
    "(loss, embeddings, averaged gradients, gradient elements all-reduced) of one DDP step on this rank's clips."
    ddp, reduced = DDP(model, find_unused_parameters=find_unused), []
    ddp.register_comm_hook(reduced, _counting_hook)
    step = unchunked_backward if chunk is None else partial(chunked_backward, chunk=chunk)
    loss, z_v, z_a = step(ddp, video, audio, loss_fn=eq1)
    return dict(loss=loss, z_v=z_v, grads=_grads(model), reduced=sum(reduced))


def _worker(rank, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'file://{out_dir}/rendezvous', rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        out = {}
        video, audio = _batch(4)                          # one rank per chunk: 2 clips a rank, one process in chunks of 2
        mine = slice(2 * rank, 2 * rank + 2)
        out['rank_per_chunk'] = _ddp_step(_model(), video[mine], audio[mine], None)
        video, audio = _batch(8)                          # 4 clips a rank in chunks of 2
        mine = slice(4 * rank, 4 * rank + 4)
        out['whole'] = _ddp_step(_model(), video[mine], audio[mine], None)
        out['chunks'] = _ddp_step(_model(), video[mine], audio[mine], 2)
        out['chunks_unused'] = _ddp_step(_model(), video[mine], audio[mine], 2, find_unused=True)
        out['sync_bn'] = _ddp_step(convert_sync_batchnorm(_model(), 'cpu'), video[mine], audio[mine], 2)
        out['sync_bn_whole'] = _ddp_step(convert_sync_batchnorm(_model(), 'cpu'), video[mine], audio[mine], None)
        torch.save(out, f'{out_dir}/rank{rank}.pt')
    finally:
        dist.destroy_process_group()


def _one_process(video, audio, chunk):
    model = _model()
    loss, z_v, z_a = chunked_backward(model, video, audio, chunk, eq1)
    return dict(loss=loss, z_v=z_v, grads=_grads(model))


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def _worst(ranks, single):
    "The ranks' mean loss equals the single process's to float64 rounding; the largest relative difference of a gradient."
    torch.testing.assert_close(sum(r['loss'] for r in ranks) / WORLD, single['loss'], rtol=1e-12, atol=0)
    for r in ranks: assert set(r['grads']) == set(single['grads'])
    return max(_rel(r['grads'][k], single['grads'][k]) for r in ranks for k in single['grads']
               if single['grads'][k].abs().max() > 0)


def _same(ranks, single):
    assert _worst(ranks, single) < 1e-10


@pytest.fixture(scope='module')
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp('chunked')
    mp.spawn(_worker, args=(str(out),), nprocs=WORLD, join=True)
    return [torch.load(out/f'rank{r}.pt') for r in range(WORLD)]


@pytest.mark.timeout(600)
def test_one_process_in_chunks_is_one_rank_per_chunk(ranks):
    torch.set_num_threads(1)
    _same([r['rank_per_chunk'] for r in ranks], _one_process(*_batch(4), 2))


@pytest.mark.timeout(600)
def test_two_ranks_in_chunks_equal_one_process_in_chunks(ranks):
    torch.set_num_threads(1)
    single = _one_process(*_batch(8), 2)
    for variant in ('chunks', 'chunks_unused'):
        _same([r[variant] for r in ranks], single)
    # and the comparison can fail: the whole 4 clips of a rank in one pass normalise with other statistics
    assert _rel(ranks[0]['whole']['grads']['audio_head.net.0.weight'], single['grads']['audio_head.net.0.weight']) > 1e-3


@pytest.mark.timeout(600)
def test_one_gradient_all_reduce_per_step(ranks):
    "Every gradient element is all-reduced once a step, in chunks as in one pass (an all-reduce per chunk would be twice)."
    elements = sum(p.numel() for p in _model().parameters())
    for r in ranks:
        assert r['whole']['reduced'] == r['chunks']['reduced'] == r['chunks_unused']['reduced'] == elements


@pytest.mark.timeout(600)
def test_global_batchnorm_normalises_chunk_i_of_every_rank_together(ranks):
    torch.set_num_threads(1)
    video, audio = _batch(8)
    # rank r holds clips 4r .. 4r+3; its chunk i is clips 4r+2i, 4r+2i+1; chunk i of both ranks is one chunk of 4
    order = [0, 1, 4, 5, 2, 3, 6, 7]
    chunked = _worst([r['sync_bn'] for r in ranks], _one_process(video[order], audio[order], 4))
    # GlobalBatchNorm takes the variance as E[x^2] - E[x]^2 (in float64), BatchNorm in two passes: without chunks the
    # two already differ, in the gradients of a few BatchNorm biases (those of channels whose mean is large against
    # their spread). Chunked, the two ranks agree with the one process as closely as they do without chunks.
    model = _model()
    unchunked_backward(model, video, audio, eq1)
    whole = _worst([r['sync_bn_whole'] for r in ranks], dict(loss=eq1(*model(video, audio)).detach(), grads=_grads(model)))
    print(f'largest relative gradient difference, GlobalBatchNorm on 2 ranks vs BatchNorm: {whole:.1e} in one pass, '
          f'{chunked:.1e} in chunks')
    assert whole < 1e-5 and chunked <= 10 * whole


@pytest.mark.timeout(900)
def test_torchrun_two_ranks_in_chunks_follow_one_process(small_catalog, tmp_path):
    "The training loop in chunks of 2 (4 clips a rank, per-rank BatchNorm): two ranks under torchrun follow one process."
    runs = tmp_path/'runs'
    params = dict(max_steps=2, chunk=2, sync_bn=False, deterministic=True, num_workers=0, lr=1e-4, checkpoint_every=1,
                  heldout=0.0)
    r = _one_process_then_torchrun(small_catalog, runs, params)
    assert '4 clips a rank in chunks of 2' in r.stdout, r.stdout[-2000:]
    l1, l2 = _losses(runs/'one'), _losses(runs/'two')
    assert sorted(l1) == sorted(l2) == [1, 2]
    for s in (1, 2): assert abs(l1[s] - l2[s]) <= 1e-5 * abs(l1[s]), (s, l1, l2)
    params_two = json.loads((runs/'two'/'params.json').read_text())
    assert params_two['chunk'] == 2 and (runs/'two'/'checkpoints'/'last.pt').exists()
