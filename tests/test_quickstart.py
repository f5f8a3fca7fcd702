"""The quickstart, end to end.

`test_short_quickstart_runs_end_to_end` (in make test): the newcomer's first command on a small corpus and a few dozen
steps, with the same code path (corpus, preparation, two runs in parallel processes, measurement, table, figure), under
oneDNN's AVX2 kernels whatever this CPU has, so that a quickstart that cannot start on an AVX2 laptop fails CI.

`test_quickstart_shows_the_effect` (marked slow and effect; pytest.ini deselects effect, run it with `pytest -m
effect`): the whole quickstart, about 7 minutes on two idle cores, shows the paper's effect: k = 16 finds the right
snippet within a held-out title at least 3 times as often as chance, k = 1 less than twice (measured for seeds 0, 1, 2
in nbs/17_quickstart.ipynb)."""
import json

import pytest


def test_short_quickstart_runs_end_to_end(tmp_path, capsys, monkeypatch):
    from avss.quickstart import quickstart
    monkeypatch.setenv('ONEDNN_MAX_CPU_ISA', 'AVX2')          # the runs are child processes: they read it at start
    table = quickstart(seed=0, runs_dir=tmp_path/'runs', data_root=tmp_path/'data', progress=False,
                       corpus=dict(titles=8, shows=1, episodes=4, minutes=1.0), max_steps=30, eval_every=15,
                       heldout=0.3, eval_snippets=8).set_index('k')
    out = capsys.readouterr().out
    assert '3/3 held-out titles' in out and 'done in' in out, out
    assert list(table.index) == [1, 16] and list(table['steps']) == [30, 30]
    for f in ['effect.png', 'effect.md', 'k1.log', 'k16.log', 'k1/encoders.pt', 'k16/loss.png']:
        assert (tmp_path/'runs'/f).exists(), f
    for k in (1, 16):
        summary = json.loads((tmp_path/'runs'/f'k{k}'/'summary.json').read_text())
        assert summary['steps'] == 30 and summary['heldout']['heldout_titles'] >= 2
        held = [json.loads(l) for l in (tmp_path/'runs'/f'k{k}'/'metrics.jsonl').read_text().splitlines()]
        assert [r['step'] for r in held if r.get('split') == 'heldout'] == [15, 30]
    assert '| k |' in (tmp_path/'runs'/'effect.md').read_text()


@pytest.mark.slow
@pytest.mark.effect   # deselected by pytest.ini's addopts (-m "not effect"): run with -m effect
@pytest.mark.timeout(3600)   # two cores shared with other jobs can take three times as long
def test_quickstart_shows_the_effect(tmp_path, capsys):
    from avss.quickstart import quickstart
    table = quickstart(seed=0, runs_dir=tmp_path/'quickstart', progress=False).set_index('k')
    out = capsys.readouterr().out
    print(out)
    assert 'KL(S- ‖ S≠)' in out and 'done in' in out
    for f in ['effect.png', 'effect.md', 'k1/summary.json', 'k16/summary.json', 'k1/loss.png', 'k16/loss.png']:
        assert (tmp_path/'quickstart'/f).exists(), f
    assert (table['steps'] == table['steps'].iloc[0]).all()
    assert table.loc[16, 'x_chance'] >= 3, table
    assert table.loc[1, 'x_chance'] < 2, table
    assert table.loc[1, 'kl_neg_other'] > table.loc[16, 'kl_neg_other'], table
