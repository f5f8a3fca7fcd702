"""The quickstart shows the paper's effect: after `make quickstart`'s runs, k = 16 finds the right snippet within a held-out
title at least 3 times as often as chance, k = 1 less than twice (measured for seeds 0, 1, 2 in nbs/17_quickstart.ipynb).

Marked slow and effect (pytest.ini deselects effect; run it with `pytest -m effect`): the whole quickstart, about 7 minutes on two idle cores (the corpus is made once under data/quickstart/ and kept)."""
import pytest


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
