"""Jobs through submitit without a cluster: the local executor's real processes, signals and requeue, and the debug executor."""
import json
import os
import re
import time
from pathlib import Path

import pytest
import torch
import yaml

from avss.catalog import Catalog
from avss.cli import main as cli_main
from avss.rundir import PREEMPT_SIGNAL, read_metrics
from avss.slurm import submit_pretrain
from avss.slurm_arrays import submit_prepare, submit_sweep, sweep_status
from avss.sweep import child_processes
from avss.synth import make_corpus


def _params(catalog, runs, name, **over):
    "A tiny run at a 32x32 crop: 6 steps of batch 8 (2 titles x 4 snippets), a loss line every step, no held-out titles."
    return {**dict(data=str(catalog), preset='tiny', crop=32, short_side=38, k=4, batch_size=8, max_steps=6, lr=1e-5,
                   warmup_steps=1, log_every=1, checkpoint_every=100, heldout=0.0, num_workers=1, deterministic=True,
                   runs_dir=str(runs), run_name=name), **over}


def _losses(run_dir) -> dict:
    return {r['step']: r['loss'] for r in read_metrics(run_dir) if 'loss' in r}


def _weights(run_dir) -> dict:
    return torch.load(Path(run_dir)/'checkpoints'/'last.pt', map_location='cpu', weights_only=True)['model']


def _descendants(pid: int) -> list[int]:
    children = child_processes(pid)
    return children + [d for c in children for d in _descendants(c)]


@pytest.fixture
def left():
    "The submissions of a test to the local executor: those still running when the test ends (it failed) are cancelled."
    subs = []
    yield subs
    for s in subs:
        if not s.job.done(): s.job.cancel()


@pytest.fixture(scope='module')
def whole(small_catalog, tmp_path_factory):
    "The uninterrupted one-process run, through the debug executor: the job's own code, in this process."
    sub = submit_pretrain(_params(small_catalog, tmp_path_factory.mktemp('runs'), 'whole'), executor='debug')
    assert sub.job.result() == str(sub.path)
    return sub.path


def test_a_preempted_job_checkpoints_is_requeued_and_ends_as_an_uninterrupted_run(small_catalog, whole, tmp_path, capsys, left):
    sub = submit_pretrain(_params(small_catalog, tmp_path/'runs', 'cut'), 'time=20', executor='submitit-local')
    left.append(sub)
    assert f'submitted job {sub.job.job_id} (submitit-local: 1 node(s) x 1 task(s))' in capsys.readouterr().out
    deadline = time.time() + 600
    while len(_losses(sub.path)) < 2:
        assert not sub.job.done() and time.time() < deadline, sub.job.stderr()
        time.sleep(0.1)
    task, = child_processes(int(sub.job.job_id))              # the local controller's one task
    workers = _descendants(task)
    assert workers                                            # its data-loader worker
    for pid in [task, *workers]: os.kill(pid, PREEMPT_SIGNAL)  # as Slurm signals every process of the job
    assert sub.job.result() == str(sub.path)
    out, err = sub.job.stdout(), sub.job.stderr()
    assert f'{PREEMPT_SIGNAL.name} received: stopping after this step with a checkpoint' in err
    stop = int(re.search(rf'stopped on {PREEMPT_SIGNAL.name} at step (\d+) with its checkpoint written; requeueing job '
                         rf'{sub.job.job_id}', err)[1])
    assert 2 <= stop < 6
    assert 'Calling checkpoint method.' in out and f'Requeued job {sub.job.job_id}' in out
    assert f'continuing at step {stop}' in out
    assert out.count('Starting with JobEnvironment') == 2 and 'Job completed successfully' in out
    a, b = _weights(whole), _weights(sub.path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(sub.path) == _losses(whole) and sorted(_losses(sub.path)) == list(range(1, 7))
    print(''.join(l + '\n' for l in (out + err).splitlines() if re.search(
        r'received|stopped on|Caught signal|Calling checkpoint|requeue|Requeued|continuing at|Starting with', l)))


def test_two_tasks_form_a_gloo_group_from_submitits_environment_and_log_the_one_process_losses(small_catalog, whole, tmp_path,
                                                                                                monkeypatch, left):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')                # the job's two tasks share the cores
    sub = submit_pretrain(_params(small_catalog, tmp_path/'runs', 'two', num_workers=0), 'tasks_per_node=2,time=20',
                          executor='submitit-local')
    left.append(sub)
    assert sub.job.results() == [str(sub.path)] * 2
    for i in range(2): assert re.search(rf'task {i} of 2 on .+ process group at ', sub.job.task(i).stdout())
    assert 'Dist(rank=0, world_size=2, device=cpu)' in sub.job.stdout()
    one, two = _losses(whole), _losses(sub.path)
    assert sorted(one) == sorted(two) == list(range(1, 7))
    # Step 1 is the same forward pass on the same weights, the loss over the gathered global batch: equal to rounding.
    # Later steps follow updates in which Adam turns gradients that are rounding noise (summed over ranks in another
    # order) into steps of the full learning rate, so they agree to a bound set by lr (1e-5 here; measured: at most
    # 1.2e-5 relative). Each step's loss differs from the last by far more (each step has its own batch).
    assert abs(one[1] - two[1]) <= 1e-6 * abs(one[1]), (one[1], two[1])
    for s in one: assert abs(one[s] - two[s]) <= 1e-4 * abs(one[s]), (s, one[s], two[s])
    assert min(abs(one[s + 1] - one[s]) for s in range(1, 6)) > 10 * 1e-4 * abs(one[1])


def test_a_three_point_sweep_runs_as_an_array_and_its_status_names_each_point(small_catalog, tmp_path, capsys, monkeypatch, left):
    monkeypatch.setenv('OMP_NUM_THREADS', '1')                # three jobs share the cores
    base = {k: v for k, v in _params(small_catalog, None, None, max_steps=3, num_workers=0).items() if k not in ('runs_dir', 'run_name')}
    grid = dict(name='arr', discrepancy=False, base=base, points=[dict(k=4), dict(k=2), dict(k=4, lr=1e30)])  # lr 1e30 diverges
    (tmp_path/'arr.yaml').write_text(yaml.safe_dump(grid))
    runs = tmp_path/'runs'
    subs = submit_sweep(tmp_path/'arr.yaml', runs, 'submitit-local', 'time=20')
    left.extend(subs)
    assert [s.what for s in subs] == ['point k4', 'point k2', 'point k4_lr1e+30']
    records = json.loads((runs/'arr'/'jobs.json').read_text())
    assert [records[p]['job_id'] for p in ('k4', 'k2', 'k4_lr1e+30')] == [s.job.job_id for s in subs]
    assert {r['state'] for r in sweep_status(tmp_path/'arr.yaml', runs)} == {'running'}     # just submitted, each job runs
    for s in subs: s.job.exception()                                                          # waits for each job
    capsys.readouterr()
    assert cli_main(['sweep', str(tmp_path/'arr.yaml'), '--runs-dir', str(runs), '--status']) == 0
    lines = capsys.readouterr().out.splitlines()
    print('\n'.join(lines))
    assert re.fullmatch(r'k4 +done', lines[0]) and re.fullmatch(r'k2 +done', lines[1])
    assert re.match(rf'k4_lr1e\+30 +failed +job {subs[2].job.job_id} \(submitit-local\): pretrain: avss.health.NonFiniteStepError: '
                    f'run {re.escape(str(runs/"arr"/"k4_lr1e+30"))}: step \\d: not finite: loss', lines[2])
    assert lines[2].endswith(f'(log: {subs[2].job.paths.stderr})') and lines[3] == '3 point(s): 2 done, 1 failed'
    assert (runs/'arr'/'k4'/'summary.json').exists() and _losses(runs/'arr'/'k2')
    submit_sweep(tmp_path/'arr.yaml', runs, 'submitit-local', 'time=20', only=['k4', 'k2'])   # nothing left to submit there
    assert 'sweep arr: 2 point(s), 0 to submit (k4 done, k2 done not)' in capsys.readouterr().out


def test_preparation_as_an_array_of_shards_then_a_merge(tmp_path, capsys):
    corpus = make_corpus(tmp_path/'corpus', titles=3, minutes=0.1, shows=0, progress=False)
    out = tmp_path/'prepared'
    subs = submit_prepare(tmp_path/'corpus'/'catalog.csv', out, 2, 'debug', short_side=38, progress=False)
    assert [s.what for s in subs] == ['shard 0 of 2', 'shard 1 of 2', 'merge']
    assert subs[-1].job.result() == {'prepared': 3, 'rejected': 0}
    assert sorted(p.name for p in out.glob('catalog-shard*.csv')) == ['catalog-shard000-of-002.csv', 'catalog-shard001-of-002.csv']
    merged = Catalog.read(out/'catalog.csv')
    assert sorted(merged.df['title_id']) == sorted(corpus.df['title_id'])
    done = {p: p.stat().st_mtime_ns for p in out.glob('titles/*/done.json')}
    assert len(done) == 3
    again = subs[0].job.submission().function.checkpoint()          # the job a requeued shard runs
    assert again.result()['prepared'] == len(Catalog.read(out/'catalog-shard000-of-002.csv'))
    assert {p: p.stat().st_mtime_ns for p in out.glob('titles/*/done.json')} == done       # nothing prepared twice
