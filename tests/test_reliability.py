"""Faults a long pretraining run meets, each injected and its handling checked: a shared checkpoint that would run
code, a double launch, divergence, preemption by a signal, a failed start, titles broken after preparation, an
unreadable checkpoint and a kill during a checkpoint write."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from avss.catalog import Catalog
from avss.core import ParamError
from avss.discrepancy_runs import load_run_model
from avss.models import load_encoders
from avss.samplers import make_sampler
from avss.sweep import child_processes
from avss.segment import SnippetGrid
from avss.rundir import STALLED_EXIT, STOPPED_EXIT, CheckpointError, UnsafeCheckpointError, load_checkpoint, nonfinite_tensors
from avss.train import pretrain

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _params(catalog, runs, name, **over):
    p = dict(data=str(catalog), preset='tiny', k=4, batch_size=8, max_steps=6, lr=2e-3, warmup_steps=2, log_every=1,
             checkpoint_every=2, runs_dir=str(runs), run_name=name, num_workers=1, heldout=0.3, eval_snippets=4,
             crop=32, short_side=38)
    p.update(over)
    return p


def _cli(params, prelude: str = '') -> subprocess.Popen:
    "`python -m avss.train -p ...` in its own process group (as a scheduler sees it), after `prelude` (fault injection)."
    args = sum((['-p', k, str(v)] for k, v in params.items()), [])
    code = f'{prelude}\nimport sys, runpy; sys.argv = ["avss.train", *{args!r}]; runpy.run_module("avss.train", run_name="__main__")'
    return subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _finish(proc, timeout=600) -> tuple[int, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def _weights(run_dir):
    return load_checkpoint(Path(run_dir)/'checkpoints'/'last.pt')['model']


def _losses(run_dir):
    return {r['step']: r['loss'] for r in map(json.loads, (Path(run_dir)/'metrics.jsonl').read_text().splitlines()) if 'loss' in r}


def _assert_same_run(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa: assert torch.equal(wa[k], wb[k]), k
    assert _losses(a) == _losses(b)


def _wait_for(cond, proc, what, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if cond(): return
        time.sleep(0.05)
    raise AssertionError(f'{what} did not happen (process ended: {proc.poll()}): {_finish(proc)[1][-2000:] if proc.poll() is not None else ""}')


def _logged_step(run_dir) -> int:
    m = Path(run_dir)/'metrics.jsonl'
    return max((json.loads(l)['step'] for l in m.read_text().splitlines() if l.strip()), default=0) if m.exists() else 0


class _Plant:
    "Unpickling this creates a folder: the marker that code in a checkpoint ran."
    def __init__(self, marker): self.marker = str(marker)
    def __reduce__(self): return (os.mkdir, (self.marker,))


def test_a_planted_pickle_never_runs(small_catalog, tmp_path):
    run = pretrain(_params(small_catalog, tmp_path/'runs', 'shared', max_steps=2, num_workers=0), progress=False)
    marker = tmp_path/'code-ran'
    ckpt = torch.load(run/'checkpoints'/'last.pt', weights_only=True)
    torch.save({**ckpt, 'extra': _Plant(marker)}, run/'checkpoints'/'last.pt')
    (run/'summary.json').unlink()
    with pytest.raises(UnsafeCheckpointError, match='last.pt: refused'):            # on resume
        pretrain(_params(small_catalog, tmp_path/'runs', 'shared', max_steps=2, num_workers=0), progress=False)
    with pytest.raises(UnsafeCheckpointError, match='refused'):                     # on measuring
        load_run_model(run)
    with pytest.raises(ValueError, match='not a readable torch checkpoint'):        # as encoders for downstream use
        load_encoders(run/'checkpoints'/'last.pt')
    r = subprocess.run([str(BIN/'papermill'), '-k', 'python3', str(ROOT/'nbs'/'discrepancy.ipynb'), str(tmp_path/'d.ipynb'),
                        '-p', 'runs', str(run), '-p', 'out_dir', str(tmp_path/'disc'), '-p', 'snippets_per_title', '4',
                        '-p', 'num_workers', '0'], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'shared: not measured' in (tmp_path/'d.ipynb').read_text()
    assert not marker.exists()


def test_two_launches_of_one_run_one_trains(small_catalog, tmp_path):
    p = _params(small_catalog, tmp_path/'runs', 'twice', max_steps=40, checkpoint_every=20)
    a, b = _cli(p), _cli(p)
    (ra, oa), (rb, ob) = _finish(a), _finish(b)
    assert sorted([ra, rb]) != [0, 0], 'both launches ran'
    loser = oa if ra else ob
    assert 'RunLockedError' in loser and 'is in use by process' in loser, loser[-2000:]
    assert 0 in (ra, rb), (oa + ob)[-3000:]
    assert sorted(_losses(tmp_path/'runs'/'twice')) == list(range(1, 41))         # every step once
    assert len(list((tmp_path/'runs'/'twice').glob('events.out.tfevents.*'))) == 1


def test_divergence_leaves_the_last_finite_checkpoint(small_catalog, tmp_path):
    run = tmp_path/'runs'/'diverge'
    rc, out = _finish(_cli(_params(small_catalog, tmp_path/'runs', 'diverge', lr=1e6, warmup_steps=0, checkpoint_every=1,
                                   keep_every=1, max_steps=30)))
    assert rc != 0 and 'NonFiniteStepError' in out and 'not finite' in out, out[-3000:]
    stopped = int(out.split('NonFiniteStepError: ')[1].split('step ')[1].split(':')[0])
    kept = sorted(run.glob('checkpoints/*.pt'))
    assert kept, 'no checkpoint was written before the divergence'
    for f in kept: assert nonfinite_tensors(load_checkpoint(f)) == [], f
    assert load_checkpoint(run/'checkpoints'/'last.pt')['step'] == stopped - 1
    rc, out = _finish(_cli(_params(small_catalog, tmp_path/'runs', 'diverge', lr=1e6, warmup_steps=0, checkpoint_every=1,
                                   keep_every=1, max_steps=30)))
    assert f'continuing at step {stopped - 1}' in out and f'step {stopped}: not finite' in out, out[-3000:]


def test_sigterm_checkpoints_and_the_resumed_run_ends_as_an_uninterrupted_one(small_catalog, tmp_path):
    common = dict(max_steps=8, deterministic=True, checkpoint_every=100)
    assert _finish(_cli(_params(small_catalog, tmp_path/'runs', 'whole', **common)))[0] == 0
    proc = _cli(_params(small_catalog, tmp_path/'runs', 'stopped', **common))
    run = tmp_path/'runs'/'stopped'
    _wait_for(lambda: _logged_step(run) >= 3, proc, 'step 3')
    os.killpg(proc.pid, signal.SIGTERM)                      # the whole group, loader workers included
    rc, out = _finish(proc)
    assert rc == STOPPED_EXIT and 'stopped on SIGTERM at step' in out, out[-3000:]
    step = load_checkpoint(run/'checkpoints'/'last.pt')['step']
    assert 3 <= step < 8 and _logged_step(run) == step and not (run/'summary.json').exists()
    rc, out = _finish(_cli(_params(small_catalog, tmp_path/'runs', 'stopped', **common)))
    assert rc == 0 and f'continuing at step {step}' in out, out[-3000:]
    _assert_same_run(tmp_path/'runs'/'whole', run)


def test_a_failed_start_leaves_nothing_in_the_way_of_the_corrected_relaunch(small_catalog, tmp_path):
    runs = tmp_path/'runs'
    with pytest.raises(ParamError, match="parameter 'data': no catalog at"):
        pretrain(_params(small_catalog, runs, 'fix', data=str(tmp_path/'missing.csv'), num_workers=0), progress=False)
    with pytest.raises(ValueError, match='k'):
        pretrain(_params(small_catalog, runs, 'fix', k=64, batch_size=64, num_workers=0), progress=False)
    assert not (runs/'fix').exists()
    run = pretrain(_params(small_catalog, runs, 'fix', max_steps=2, num_workers=0), progress=False)
    assert json.loads((run/'summary.json').read_text())['steps'] == 2


def _broken_copy(small_catalog, dst) -> tuple[Path, list]:
    """A copy of the prepared corpus with two titles broken after preparation, a video deleted and a log-mel turned to
    NaN: titles of the first two batches the run draws (all titles train, seed 0)."""
    shutil.copytree(Path(small_catalog).parent, dst)
    cat = Catalog.read(dst/'catalog.csv')
    batches = iter(make_sampler(SnippetGrid(cat), 4, None, 8, seed=0))
    first = next(batches)[0][0]
    second = next(n for batch in batches for n, _ in batch if n != first)
    video, mel = Path(cat.df['path'][first]), Path(cat.df['mel_path'][second])
    video.unlink()
    m = np.load(mel, mmap_mode='r+'); m[:] = np.nan; m.flush(); del m
    return dst/'catalog.csv', [(cat.df['title_id'][first], str(video)), (cat.df['title_id'][second], str(mel))]


def test_titles_broken_after_preparation_are_quarantined_and_the_run_goes_on(small_catalog, tmp_path):
    catalog, broken = _broken_copy(small_catalog, tmp_path/'corpus')
    p = _params(catalog, tmp_path/'runs', 'q', heldout=0.0, max_steps=8, keep_every=4, deterministic=True)
    run = pretrain(p, progress=False)
    records = [json.loads(l) for l in (run/'quarantine.jsonl').read_text().splitlines()]
    assert sorted((r['title_id'], r['file']) for r in records) == sorted(broken)
    assert 'non-finite values in the log-mel' in next(r['reason'] for r in records if r['file'].endswith('mel.npy'))
    assert sorted(r['title_id'] for r in json.loads((run/'summary.json').read_text())['quarantined']) == sorted(t for t, _ in broken)
    first = _weights(run)
    # continue from step 4: the quarantine is read back, nothing is recorded twice, and the weights come out the same
    shutil.copy(run/'checkpoints'/'step_0000004.pt', run/'checkpoints'/'last.pt')
    (run/'summary.json').unlink()
    pretrain(p, progress=False)
    assert len((run/'quarantine.jsonl').read_text().splitlines()) == 2
    for k, v in _weights(run).items(): assert torch.equal(v, first[k]), k


def test_an_unreadable_last_checkpoint_falls_back_to_the_newest_kept_one(small_catalog, tmp_path):
    p = _params(small_catalog, tmp_path/'runs', 'fallback', max_steps=6, keep_every=4, deterministic=True, num_workers=0)
    run = pretrain(p, progress=False)
    first = _weights(run)
    (run/'checkpoints'/'last.pt').write_bytes((run/'checkpoints'/'last.pt').read_bytes()[:1000])
    (run/'summary.json').unlink()
    with pytest.raises(CheckpointError, match='unreadable'): load_checkpoint(run/'checkpoints'/'last.pt')
    pretrain(p, progress=False)
    for k, v in _weights(run).items(): assert torch.equal(v, first[k]), k


SLOW_LAST_PT = '''
import os, time
import avss.core
_replace = os.replace
def _slow_replace(src, dst):
    if str(dst).endswith('last.pt'): time.sleep(1.0)
    return _replace(src, dst)
avss.core.os.replace = _slow_replace
'''


def test_a_kill_during_a_checkpoint_write_still_ends_with_the_same_weights(small_catalog, tmp_path):
    common = dict(max_steps=8, deterministic=True)
    assert _finish(_cli(_params(small_catalog, tmp_path/'runs', 'whole', **common)))[0] == 0
    run = tmp_path/'runs'/'killed'
    proc = _cli(_params(small_catalog, tmp_path/'runs', 'killed', **common), prelude=SLOW_LAST_PT)
    _wait_for(lambda: (run/'checkpoints'/'last.pt').exists() and list((run/'checkpoints').glob('.last.pt.*.tmp')),
              proc, 'a second checkpoint write')
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert list((run/'checkpoints').glob('.last.pt.*.tmp')), 'killed outside the write'
    f, g, meta = load_encoders(run/'checkpoints'/'last.pt')           # an unfinished run serves downstream use
    assert meta['step'] == 2
    rc, out = _finish(_cli(_params(small_catalog, tmp_path/'runs', 'killed', **common)))
    assert rc == 0 and 'continuing at step 2' in out, out[-3000:]
    assert not list((run/'checkpoints').glob('.*.tmp'))
    _assert_same_run(tmp_path/'runs'/'whole', run)


def _heldout_title(catalog, p) -> tuple[str, Path]:
    "(title_id, video path) of a held-out title of the run `p` describes."
    cat = Catalog.read(catalog)
    usable, _ = cat.usable(frames=16, fps=5.0)
    held = usable.split(heldout=p['heldout'], seed=0)[1]
    return held.df['title_id'].iloc[0], Path(held.df['path'].iloc[0])


def test_a_held_out_title_broken_after_preparation_leaves_the_run_finished_and_measured(small_catalog, tmp_path):
    shutil.copytree(Path(small_catalog).parent, tmp_path/'corpus')
    catalog = tmp_path/'corpus'/'catalog.csv'
    p = _params(catalog, tmp_path/'runs', 'broken-heldout', max_steps=12, eval_every=4, heldout=0.5)
    title, video = _heldout_title(catalog, p)
    video.write_bytes(os.urandom(4096))                                     # overwritten after preparation
    rc, out = _finish(_cli(p))
    assert rc == 0, out[-3000:]
    assert out.count(f'held-out title {title} is unreadable') == 1, out[-3000:]     # named once, measured three times
    run = tmp_path/'runs'/'broken-heldout'
    summary = json.loads((run/'summary.json').read_text())
    assert [r['title_id'] for r in summary['heldout_unreadable']] == [title]
    assert summary['heldout_unreadable'][0]['file'] == str(video)
    held = [json.loads(l) for l in (run/'metrics.jsonl').read_text().splitlines() if '"heldout"' in l]
    assert [r['step'] for r in held] == [4, 8, 12] and summary['heldout'] == {k: v for k, v in held[-1].items() if k not in ('step', 'split')}
    n_held = len(_held_titles(catalog, p))
    assert summary['heldout']['heldout_titles'] == n_held - 1 >= 2
    r = subprocess.run([str(BIN/'avss'), 'measure', '-p', 'runs', str(run), '-p', 'snippets_per_title', '4',
                        '-p', 'num_workers', '0', '-p', 'out_dir', str(tmp_path/'measured')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f'title {title} is unreadable and left out' in r.stdout
    assert [u['title_id'] for u in json.loads((run/'discrepancy.json').read_text())['unreadable']] == [title]


def _held_titles(catalog, p):
    cat = Catalog.read(catalog)
    return cat.usable(frames=16, fps=5.0)[0].split(heldout=p['heldout'], seed=0)[1].df['title_id'].tolist()


def test_a_step_that_never_finishes_ends_the_run_with_every_threads_stack(small_catalog, tmp_path):
    "The data-loader worker is stopped (SIGSTOP) mid-run: the loop waits for a batch that never comes, as on a hung file system."
    proc = _cli(_params(small_catalog, tmp_path/'runs', 'stall', max_steps=10_000, step_timeout=20))
    run = tmp_path/'runs'/'stall'
    workers = []
    try:
        _wait_for(lambda: _logged_step(run) >= 2, proc, 'step 2')
        workers = child_processes(proc.pid)
        assert workers, 'no data-loader worker'
        for pid in workers: os.kill(pid, signal.SIGSTOP)
        t = time.monotonic()
        proc.wait(timeout=300)              # not communicate(): the stopped worker holds the output pipes open
    finally:
        for pid in workers + (child_processes(proc.pid) if proc.poll() is None else []):
            try: os.kill(pid, signal.SIGKILL)
            except ProcessLookupError: pass
    rc, out = _finish(proc)
    assert rc == STALLED_EXIT, out[-3000:]
    stalled = re.search(r'step (\d+) has not finished within step_timeout=20 s: the stack of every thread follows', out)
    assert stalled and int(stalled.group(1)) > 2, out[-3000:]
    assert 'most recent call first' in out and 'in _train' in out, out[-3000:]   # the loop's own frame, waiting for a batch
    assert time.monotonic() - t < 120
    assert load_checkpoint(run/'checkpoints'/'last.pt')['step'] >= 2            # what it had is kept
