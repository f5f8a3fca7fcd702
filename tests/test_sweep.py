"""The sweep runner end to end (two tiny points, their measurements, the report) and its resume."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from avss.report import collect, read_runs, write_report
from avss.rundir import STOPPED_EXIT, load_checkpoint, read_metrics
from avss.sweep import expand, load_grid, point_status, run_sweep

REPORT_NB = Path(__file__).resolve().parents[1]/'nbs'/'report.ipynb'


@pytest.fixture
def grid(small_catalog, tmp_path):
    from avss.synth_sets import make_esc_like
    esc = make_esc_like(tmp_path/'esc', classes=('bounce', 'pulse'), clips_per_fold=2, progress=False)
    return load_grid(dict(
        name='two',
        base=dict(data=str(small_catalog), preset='tiny', batch_size=8, max_steps=3, lr=1e-3, warmup_steps=1,
                  num_workers=0, heldout=0.3, eval_snippets=4, log_every=1),
        points=[dict(k=1), dict(k=4, w='all')],
        discrepancy=True,
        downstream=[dict(dataset='esc50', mode='linear', root=str(esc), num_workers=0, probe_steps=20)]))


def _mtimes(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob('*') if p.is_file()}


def test_two_points_run_end_to_end_and_resume(grid, tmp_path):
    runs = tmp_path/'runs'
    assert run_sweep(grid, runs, progress=False) == {}
    sweep = runs/'two'
    names = [p['name'] for p in expand(grid)]
    assert names == ['k1', 'k4_wall']
    for p in expand(grid):
        assert all(point_status(p, grid, sweep).values()), p['name']

    report = write_report(sweep, tmp_path/'report')
    table = report['table']
    assert sorted(table['run']) == names and table['esc50-linear'].notna().all()
    assert (tmp_path/'report'/'table1.md').read_text().count('\n') == 2 + 2     # header, rule, two rows
    assert 'fig1a_k' in report['figures'] and (tmp_path/'report'/'fig1a_k.png').exists()

    # the run notebook writes the same tables where it is told, and rejects a misspelt parameter by name
    pm = [sys.executable, '-m', 'papermill', '-k', 'python3', str(REPORT_NB), str(tmp_path/'report.ipynb')]
    r = subprocess.run(pm + ['-p', 'sweep', str(sweep), '-p', 'out_dir', str(tmp_path/'nb')], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path/'nb'/'table1.md').read_text() == (tmp_path/'report'/'table1.md').read_text()
    r = subprocess.run(pm + ['-p', 'sweep', str(sweep), '-p', 'outdir', 'x'], capture_output=True, text=True)
    assert r.returncode != 0 and "unknown parameter 'outdir'" in r.stderr
    # `also` pools another sweep's runs (here the same folder again: every run twice, every row of Table 1 two runs)
    r = subprocess.run(pm + ['-p', 'sweep', str(sweep), '-p', 'also', str(sweep), '-p', 'out_dir', str(tmp_path/'pooled')],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    pooled = (tmp_path/'pooled'/'runs.csv').read_text().splitlines()
    assert len(pooled) == 1 + 2 * len(names)
    assert [l.split('|')[3].strip() for l in (tmp_path/'pooled'/'table1.md').read_text().splitlines()[2:]] == ['2', '2']
    assert (tmp_path/'pooled'/'seeds.md').exists() and (tmp_path/'pooled'/'seeds.png').exists()
    # `records`: a run lost from disk comes back from an earlier report's runs.csv, and the tables come out the same
    record = tmp_path/'report'/'runs.csv'
    lost = tmp_path/'lost'/'two'
    shutil.copytree(sweep, lost)
    shutil.rmtree(lost/'k4_wall')
    r = subprocess.run(pm + ['-p', 'sweep', str(lost), '-p', 'records', str(record), '-p', 'out_dir', str(tmp_path/'rec')],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_runs(tmp_path/'rec'/'runs.csv')
    assert list(rows['run']) == names and rows['record'].fillna('').tolist() == ['', str(record)]
    for f in ('table1.md', 'table1.csv', 'seeds.md'):
        assert (tmp_path/'rec'/f).read_text() == (tmp_path/'report'/f).read_text(), f
    r = subprocess.run(pm + ['-p', 'sweep', str(lost), '-p', 'records', str(tmp_path/'nope.csv')], capture_output=True, text=True)
    assert r.returncode != 0 and f"parameter 'records': no file {tmp_path/'nope.csv'}" in r.stderr
    both = write_report(sweep, tmp_path/'both', records=[record])              # a run on disk wins over its record
    assert list(both['table']['run']) == names and (both['table']['record'] == '').all()

    # interrupt: the second point lost its measurements and the end of its pretraining
    k4 = sweep/'k4_wall'
    (k4/'discrepancy.json').unlink()
    (k4/'downstream'/'esc50-linear'/'results.json').unlink()
    heldout = json.loads((k4/'summary.json').read_text())['heldout']
    (k4/'summary.json').unlink()
    trained = [l for l in (k4/'metrics.jsonl').read_text().splitlines() if '"loss"' in l]
    before = _mtimes(sweep/'k1')
    assert run_sweep(grid, runs, progress=False) == {}
    assert _mtimes(sweep/'k1') == before                           # the finished point was not touched
    assert all(point_status(expand(grid)[1], grid, sweep).values())
    assert [l for l in (k4/'metrics.jsonl').read_text().splitlines() if '"loss"' in l] == trained   # no retraining
    assert len(collect(sweep)) == 2
    # the finished run is measured once: its summary takes the logged final measures, and the log has them once
    assert json.loads((k4/'summary.json').read_text())['heldout'] == heldout
    final = [l for l in (k4/'metrics.jsonl').read_text().splitlines() if '"split": "heldout"' in l and '"step": 3,' in l]
    assert len(final) == 1


def _alive(pid: int) -> bool:
    "Whether process `pid` exists and is not a zombie."
    try: state = Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError): return False
    return state != 'Z'


def _process_tree(pid: int) -> set:
    "`pid`'s descendants, read from /proc here rather than with the module's own helper."
    parents = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try: parents[int(stat.parent.name)] = int(stat.read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
    tree, grew = set(), True
    while grew:
        new = {p for p, pp in parents.items() if (pp == pid or pp in tree) and p not in tree}
        tree |= new; grew = bool(new)
    return tree


def _losses(run_dir) -> dict:
    "{step: training loss} from a run's metrics.jsonl."
    return {r['step']: r['loss'] for r in read_metrics(run_dir) if 'loss' in r}


@pytest.mark.skipif(not Path('/proc/self/stat').exists(), reason='finds the stage processes in /proc')
def test_sigterm_stops_a_sweep_with_checkpoints_and_the_resumed_sweep_ends_as_an_uninterrupted_one(small_catalog, tmp_path):
    grid = dict(name='stop', discrepancy=False, points=[dict(k=4), dict(k=1)],     # k1 waits for k4 (one at a time)
                base=dict(data=str(small_catalog), preset='tiny', batch_size=8, max_steps=10, lr=2e-3, warmup_steps=2,
                          log_every=1, checkpoint_every=100, num_workers=1, heldout=0.3, eval_snippets=4,
                          deterministic=True))
    (tmp_path/'stop.yaml').write_text(yaml.safe_dump(grid))
    assert run_sweep(grid, tmp_path/'whole', only=['k4'], progress=False) == {}
    driver = subprocess.Popen([sys.executable, '-m', 'avss.sweep', str(tmp_path/'stop.yaml'), '--runs-dir', str(tmp_path/'runs')],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run = tmp_path/'runs'/'stop'/'k4'
    deadline = time.time() + 300
    while len(_losses(run)) < 3:
        assert driver.poll() is None and time.time() < deadline, 'no third step logged'
        time.sleep(0.2)
    stages = _process_tree(driver.pid)
    assert len(stages) >= 2                                  # papermill and its kernel at least
    driver.send_signal(signal.SIGTERM)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == STOPPED_EXIT, out[-3000:]
    assert '2 of 2 points unfinished (k4, k1)' in out and 'run the same command again' in out, out[-3000:]
    assert re.findall(r'failed=(\d+)', out) == [], out[-3000:]   # neither the stopped point nor the queued one failed
    assert not [p for p in stages if _alive(p)]              # no stage left training on its own
    log = (run/'logs'/'pretrain.log').read_text()
    assert 'stopped on SIGTERM at step' in log, log[-3000:]                # the run's own stop, a checkpoint written
    step = load_checkpoint(run/'checkpoints'/'last.pt')['step']
    assert 3 <= step < 10 and not (run/'summary.json').exists()

    assert run_sweep(tmp_path/'stop.yaml', tmp_path/'runs', progress=False) == {}
    whole = tmp_path/'whole'/'stop'/'k4'
    assert _losses(run) == _losses(whole) and len(_losses(run)) == 10
    a, b = load_checkpoint(run/'checkpoints'/'last.pt')['model'], load_checkpoint(whole/'checkpoints'/'last.pt')['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
