"""What the discrepancy chapter (nbs/10_discrepancy.ipynb) cannot hold well: embedding with data-loader worker
processes against embedding in process, and (slow) the whole path on decoded synthetic media and a run directory.
The unit tests (the KL estimator, the split into S+, S- and S≠, Recall@K, the choice of snippets, `embed` and
`heldout_measures` on stand-ins) are test cells of the notebook."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from avss.discrepancy import embed, heldout_measures
from avss.segment import SnippetGrid


# ---------------------------------------------------------------- embedding through stand-ins, with worker processes

class ToyDataset(torch.utils.data.Dataset):
    """Snippet (n, m) → what SnippetDataset returns, small: a uint8 video of the title's colour with m written in its
    top-left pixel, and a mel holding n in its first bin and m in its last."""
    def __init__(self, counts, size=4, frames=2, mel=(4, 6), replace=None):
        self.grid, self.size, self.frames, self.mel, self.replace = SnippetGrid.from_counts(counts), size, frames, mel, replace or {}

    def __len__(self): return self.grid.total

    def __getitem__(self, key):
        n, m = self.replace.get(tuple(key), tuple(key))
        colour = torch.tensor([(37 * n) % 256, (91 * n) % 256, (53 * n) % 256], dtype=torch.uint8)
        video = colour.view(3, 1, 1, 1).expand(3, self.frames, self.size, self.size).contiguous()
        video[:, :, 0, 0] = 10 * m
        mel = torch.zeros((1, *self.mel))
        mel[0, 0, 0], mel[0, -1, -1] = float(n), float(m)
        return dict(video=video, mel=mel, title=n, index=m)


class TitleModel(nn.Module):
    "A stand-in AVModel that sees only what identifies the title (bottom-right pixel, first mel bin): z per title."
    def __init__(self, dim=8):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.proj_v, self.proj_a = nn.Parameter(torch.randn(3, dim, generator=g)), nn.Parameter(torch.randn(1, dim, generator=g))
        self.calls = []

    def forward(self, video, audio):
        self.calls.append((self.training, torch.is_grad_enabled(), video.device.type, tuple(video.shape)))
        rgb = video[:, :, 0, -1, -1]                                       # [B, 3] the title's colour
        n = audio[:, :, 0, 0]                                              # [B, 1] the title
        return rgb @ self.proj_v, torch.sin(n) @ self.proj_a


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
