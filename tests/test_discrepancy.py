"""What the discrepancy chapter (nbs/10_discrepancy.ipynb) cannot hold well: embedding with data-loader worker
processes against embedding in process, and (slow) the whole path on decoded synthetic media and a run directory.
The unit tests (the KL estimator, the split into S+, S- and S≠, Recall@K, the choice of snippets, `embed` and
`heldout_measures` on stand-ins) are test cells of the notebook; the stand-ins come from `avss.testing`, where the
data-loader workers can import them."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avss.discrepancy import embed, heldout_measures
from avss.testing import TitleModel, ToyDataset


# ---------------------------------------------------------------- embedding through stand-ins, with worker processes

def test_embed_with_data_loader_workers_matches_in_process():
    ds, model = ToyDataset([5, 5, 5]), TitleModel()
    a = embed(model, ds, snippets_per_title=3, batch_size=2, num_workers=0)
    b = embed(model, ds, snippets_per_title=3, batch_size=2, num_workers=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2])


# ---------------------------------------------------------------- decoded media and run directories (slow)

def _has(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    if not (_has('avss.synth') and _has('avss.datasets')): pytest.skip('avss.synth or avss.datasets is not there')
    from avss.synth import make_corpus
    return make_corpus(tmp_path_factory.mktemp('synth') / 'corpus', titles=4, minutes=0.3, shows=1, episodes=2,
                       width=128, height=72, workers=2, progress=False)


@pytest.mark.slow
def test_heldout_measures_on_decoded_synthetic_media(corpus):
    from avss.models import AVModel, PRESETS
    torch.manual_seed(0)
    model = AVModel('tiny')
    a = heldout_measures(model, corpus, PRESETS['tiny'], snippets_per_title=4, seed=1, num_workers=0)
    assert a['heldout_titles'] == 4 and a['heldout_snippets'] == 16
    assert all(math.isfinite(v) for v in a.values())
    b = heldout_measures(model, corpus, 'tiny', snippets_per_title=4, seed=1, num_workers=1)
    assert a == b                                                           # fixed snippets, eval mode: repeatable


@pytest.mark.slow
def test_measure_run_writes_its_files_and_the_figures_read_them(corpus, tmp_path):
    if not _has('avss.train'): pytest.skip('avss.train is not there')
    import matplotlib
    matplotlib.use('Agg')
    from avss.discrepancy_runs import draw_figures, measure_run, run_table
    from avss.models import AVModel
    csv = Path(corpus.paths[0]).parent / 'catalog.csv'
    runs = []
    for k in (1, 2):
        d = tmp_path / f'k{k}'
        (d / 'checkpoints').mkdir(parents=True)
        params = dict(data=str(csv), preset='tiny', k=k, w='all', sigma=0.0, seed=0, heldout=0.5, split_seed=0)
        (d / 'params.json').write_text(json.dumps(params))
        torch.manual_seed(k)
        torch.save({'step': 7, 'preset': 'tiny', 'model': AVModel('tiny').state_dict()}, d / 'checkpoints' / 'last.pt')
        (d / 'metrics.jsonl').write_text(json.dumps({'step': 5, 'split': 'heldout', 'kl_neg_pos': 0.1}) + '\n')
        out = measure_run(d, snippets_per_title=3, device='cpu', num_workers=0, progress=False)
        assert out['step'] == 7 and out['heldout']['heldout_snippets'] >= 6
        for f in ('discrepancy.json', 'similarities.npz', 'similarities.png', 'heldout_curves.png'):
            assert (d / f).is_file(), f
        S = np.load(d / 'similarities.npz')
        assert len(S['S_pos']) == out['heldout']['heldout_snippets']
        runs.append(d)
    table = run_table([str(r) for r in runs])
    assert table['source'].tolist() == ['discrepancy', 'discrepancy'] and table['k'].tolist() == [1, 2]
    figs = draw_figures(table, tmp_path / 'figs')
    assert 'fig1a_k' in figs and (tmp_path / 'figs' / 'fig1a_k.png').is_file()
