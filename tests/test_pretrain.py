"""Pretraining end to end: the papermill notebook, parameter validation, kill-and-resume, and torchrun on two CPU ranks."""
import ast
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from avss.core import ParamError
from avss.testing import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
NB = ROOT/'nbs'/'pretrain.ipynb'


@pytest.fixture
def catalog(small_catalog):
    return small_catalog


def _small(catalog, runs, name, **over):
    p = dict(data=str(catalog), preset='tiny', k=4, batch_size=8, max_steps=6, lr=2e-3, warmup_steps=2, log_every=1,
             checkpoint_every=2, runs_dir=str(runs), run_name=name, num_workers=1, heldout=0.3, eval_snippets=4)
    p.update(over)
    return p


def _losses(run_dir):
    return {r['step']: r['loss'] for r in map(json.loads, (Path(run_dir)/'metrics.jsonl').read_text().splitlines()) if 'loss' in r}


def _papermill(args, cwd=ROOT):
    return subprocess.run([str(BIN/'papermill'), '-k', 'python3', *args], cwd=cwd, capture_output=True, text=True)


RUN_NOTEBOOKS = [('pretrain.ipynb', 'avss.pretrain_config', 'PretrainConfig'), ('finetune.ipynb', 'avss.downstream', 'DownstreamConfig'),
                 ('discrepancy.ipynb', 'avss.discrepancy_runs', 'DiscrepancyConfig'), ('report.ipynb', 'avss.report', 'ReportConfig')]


@pytest.mark.parametrize('notebook, module, config', RUN_NOTEBOOKS)
def test_parameters_cell_is_the_config(notebook, module, config):
    from avss.core import parameters_source
    spec = getattr(importlib.import_module(module), config).spec()
    nb = json.loads((ROOT/'nbs'/notebook).read_text())
    cell = ''.join(next(c for c in nb['cells'] if 'parameters' in c['metadata'].get('tags', []))['source'])
    assert cell == parameters_source(spec), f'regenerate the cell with avss.core.parameters_source({config}.spec())'
    values = {t.target.id: ast.literal_eval(t.value) for t in ast.parse(cell).body}
    assert values == {k: p.default for k, p in spec.items()}


@pytest.mark.parametrize('notebook, module, config', RUN_NOTEBOOKS)
def test_papermill_help_lists_every_parameter_with_its_type_and_help(notebook, module, config):
    spec = getattr(importlib.import_module(module), config).spec()
    r = subprocess.run([str(BIN/'papermill'), '--help-notebook', str(ROOT/'nbs'/notebook)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert 'Unknown type' not in r.stdout and 'Unable to parse' not in r.stdout + r.stderr
    for name, p in spec.items():
        assert f'  {name}: {p.check.annotation} (default {p.default!r})' in r.stdout, name
        assert ' '.join(p.doc.split()[:4]) in ' '.join(r.stdout.split()), name


def test_papermill_run_learns_and_leaves_a_complete_run(catalog, tmp_path):
    args = sum((['-p', k, str(v)] for k, v in _small(catalog, tmp_path/'runs', 'pm', max_steps=40, batch_size=16,
                                                          log_every=2, checkpoint_every=20).items()), [])
    r = _papermill([str(NB), str(tmp_path/'pm.ipynb'), *args])
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/'runs'/'pm'
    for name in ['params.json', 'metrics.jsonl', 'checkpoints/last.pt', 'encoders.pt', 'summary.json', 'loss.png',
                 'pretrain.ipynb']:
        assert (run/name).exists(), name
    assert list(run.glob('events.out.tfevents.*'))
    losses = list(_losses(run).values())
    assert len(losses) == 20
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.1, f'loss did not fall: first steps {first:.3f}, last steps {last:.3f}'
    summary = json.loads((run/'summary.json').read_text())
    assert summary['steps'] == 40 and 'kl_neg_other' in summary['heldout']
    assert json.loads((run/'params.json').read_text())['k'] == 4


def test_a_smaller_crop_trains_and_is_stored_with_the_weights(catalog, tmp_path):
    from avss.core import ParamError
    from avss.discrepancy_runs import load_run_model
    from avss.models import load_encoders
    from avss.train import pretrain
    run = pretrain(_small(catalog, tmp_path, 'c32', max_steps=2, crop=32, short_side=38, num_workers=0), progress=False)
    f, g, _ = load_encoders(run/'encoders.pt')
    assert (f.preset.crop, f.preset.short_side, g.preset.crop) == (32, 38, 32)
    model, params, step = load_run_model(run)
    assert (model.preset.crop, model.preset.short_side, params['crop'], step) == (32, 38, 32, 2)
    with pytest.raises(ParamError, match=r"'crop' \(80\) must be <= short_side \(76\)"):
        pretrain(_small(catalog, tmp_path, 'c80', crop=80), progress=False)
    assert not (tmp_path/'c80').exists()


def test_papermill_without_output_notebook_from_nbs(catalog, tmp_path):
    args = sum((['-p', k, str(v)] for k, v in _small(catalog, tmp_path/'runs', 'noout', max_steps=2).items()), [])
    r = _papermill(['pretrain.ipynb', *args], cwd=ROOT/'nbs')
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path/'runs'/'noout'
    assert (run/'summary.json').exists() and (run/'checkpoints'/'last.pt').exists() and (run/'loss.png').exists()
    assert json.loads(r.stdout)['cells']          # papermill wrote the executed notebook to stdout


@pytest.mark.parametrize('args, message', [
    (['-p', 'kk', '4'], "unknown parameter 'kk' (did you mean 'k'?)"),
    (['-p', 'k', '0'], "parameter 'k' must be >= 1"),
    (['-p', 'k', '3', '-p', 'preset', 'tiny'], "'batch_size' (32) must be divisible by k (3)"),
    (['-p', 'precision', 'fp16'], "'precision' must be one of"),
])
def test_invalid_parameters_stop_the_notebook_before_any_work(tmp_path, args, message):
    r = _papermill([str(NB), str(tmp_path/'bad.ipynb'), '-p', 'runs_dir', str(tmp_path/'runs'), *args])
    assert r.returncode != 0
    assert message in r.stderr
    assert not (tmp_path/'runs').exists()


def _pretrain_process(params):
    code = f'import avss.train as t; t.pretrain({params!r}, progress=False)'
    return subprocess.Popen([sys.executable, '-c', code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_weights(run_dir):
    return torch.load(Path(run_dir)/'checkpoints'/'last.pt', map_location='cpu', weights_only=True)['model']


def test_killed_and_resumed_run_ends_with_the_same_weights(catalog, tmp_path):
    runs = tmp_path/'runs'
    common = dict(max_steps=8, deterministic=True, num_workers=1)
    whole = _pretrain_process(_small(catalog, runs, 'whole', **common))
    assert whole.wait(timeout=600) == 0, whole.stderr.read()[-3000:]
    killed = _pretrain_process(_small(catalog, runs, 'killed', **common))
    last = runs/'killed'/'checkpoints'/'last.pt'
    deadline = time.time() + 600
    while time.time() < deadline and killed.poll() is None:
        if last.exists() and torch.load(last, map_location='cpu', weights_only=True)['step'] >= 4: break
        time.sleep(0.2)
    assert killed.poll() is None, 'the run ended before it could be killed'
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (runs/'killed'/'summary.json').exists()
    resumed = _pretrain_process(_small(catalog, runs, 'killed', **common))       # the same run name: continues
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    a, b = _final_weights(runs/'whole'), _final_weights(runs/'killed')
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k
    assert _losses(runs/'killed') == _losses(runs/'whole')
    assert sorted(_losses(runs/'killed')) == list(range(1, 9))       # one line per step, none doubled by the resume


def _one_process_then_torchrun(catalog, runs, params: dict) -> subprocess.CompletedProcess:
    "The run `params` in one process (runs/one), then under torchrun on two ranks of one thread each (runs/two)."
    one = _pretrain_process(_small(catalog, runs, 'one', **params))
    assert one.wait(timeout=600) == 0, one.stderr.read()[-3000:]
    args = sum((['-p', k, json.dumps(v)] for k, v in _small(catalog, runs, 'two', **params).items()), [])
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([str(BIN/'torchrun'), '--nproc_per_node', '2', '--master_port', str(free_port()),
                        '-m', 'avss.train', *args], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_torchrun_two_ranks_follow_one_process(catalog, tmp_path):
    runs = tmp_path/'runs'
    lr = 1e-4
    params = dict(max_steps=3, sync_bn=True, deterministic=True, num_workers=0, lr=lr)
    _one_process_then_torchrun(catalog, runs, params)
    l1, l2 = _losses(runs/'one'), _losses(runs/'two')
    assert sorted(l1) == sorted(l2) == [1, 2, 3]
    # Step 1 checks the forward pass and the loss over the gathered batch, step 2 the first update (the gradient
    # summed over ranks): both agree to float rounding.
    for s in (1, 2): assert abs(l1[s] - l2[s]) <= 1e-4 * abs(l1[s]), (s, l1, l2)
    # After that the runs drift apart: Adam divides each gradient by its own running size, so a parameter whose
    # gradient is rounding noise (a different noise when two ranks sum in another order) takes a step of the full
    # learning rate in either direction, and the two runs can step opposite ways. The drift is bounded by the steps
    # taken, and touches few weights: each run moves a weight by at most lr a step (Adam's normalised step exceeds
    # 1 by under 1% in its first steps; 1.25 leaves room for weight decay), so 3 steps differ by <= 2 x 3 x 1.25 lr.
    assert abs(l1[3] - l2[3]) <= 2e-3 * abs(l1[3]), (l1, l2)
    assert abs(l1[3] - l1[1]) > 1e-3          # the weights really changed along the way
    a, b = _final_weights(runs/'one'), _final_weights(runs/'two')
    assert a.keys() == b.keys()
    floats = [k for k in a if a[k].is_floating_point()]
    weights = [k for k in floats if 'running_' not in k]          # BatchNorm's running statistics follow the activations
    for k in weights: assert (a[k] - b[k]).abs().max() <= 2 * 3 * 1.25 * lr, k
    for k in set(floats) - set(weights): torch.testing.assert_close(a[k], b[k], rtol=1e-2, atol=1e-3)
    close = sum(torch.isclose(a[k], b[k], rtol=1e-3, atol=1e-6).sum().item() for k in floats)
    total = sum(a[k].numel() for k in floats)
    assert close / total > 0.9, f'only {close}/{total} weights agree'         # 95% here, 3 steps at lr 1e-4



def test_scene_windows_are_a_run_parameter(catalog, tmp_path):
    from avss.catalog import Catalog
    from avss.samplers import scene_snippet_ranges
    from avss.scenes import SCENES_FILE, title_scenes
    from avss.segment import SnippetGrid
    from avss.distributed import Dist
    from avss.loader import build_loader, load_catalogs
    from avss.pretrain_config import PretrainConfig, run_preset
    from avss.train import pretrain
    shutil.copytree(Path(catalog).parent, tmp_path/'corpus')               # the shots are stored beside each title
    data = tmp_path/'corpus'/'catalog.csv'
    p = PretrainConfig.resolve(_small(data, tmp_path/'runs', 'scenes', window='scene', k=2, w=2, batch_size=8, heldout=0.0))
    train_cat = load_catalogs(p, run_preset(p), progress=False)[0]
    loader, sampler = build_loader(train_cat, p, run_preset(p), Dist())
    grid = SnippetGrid(train_cat, frames=16, fps=5.0)
    shots = {n: scene_snippet_ranges(title_scenes(path), grid.counts[n], grid.snippet_s)
             for n, path in enumerate(train_cat.df['path'])}
    for i in range(len(sampler)):                   # a title with a shot of k snippets: its k snippets lie in one shot
        batch = sampler.global_batch(i)
        for n, m in zip(batch[::2, 0], batch.reshape(-1, 2, 2)[:, :, 1]):
            long_enough = [(lo, hi) for lo, hi in shots[n] if hi - lo >= 2]
            if long_enough: assert any(lo <= m.min() and m.max() < hi for lo, hi in long_enough), (n, m, long_enough)
    assert all((Path(path).parent/SCENES_FILE).is_file() for path in train_cat.df['path'])
    run = pretrain(p.replace(max_steps=2, num_workers=0), progress=False)      # a config, not a dict
    summary = json.loads((run/'summary.json').read_text())
    assert summary['scene_titles'] + summary['scene_fallback'] == len(train_cat)
    assert summary['scene_titles'] == sum(any(hi - lo >= 2 for lo, hi in s) for s in shots.values())
    source = Catalog.read(data).df.assign(mel_path='')
    Catalog(source).write(tmp_path/'source.csv')
    with pytest.raises(ParamError, match="'scene' needs prepared titles"):
        pretrain(_small(tmp_path/'source.csv', tmp_path/'runs', 'src', window='scene', k=2, w=2), progress=False)
