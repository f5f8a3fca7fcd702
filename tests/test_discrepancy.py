"""Discrepancy measures and held-out retrieval: the KL estimator against closed forms, the split of similarities
into S+, S- and S≠, Recall@K against a brute-force reference, the embedding plumbing with stand-in models and
datasets, and (slow) the whole path on decoded synthetic media and a run directory."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from avss.discrepancy import (chance_recall, discrepancy, embed, heldout_measures, kl_divergence, measure_embeddings,
                              recall_at_k, similarities, snippet_choice, split_similarities)
from avss.segment import SnippetGrid

HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def kl_gauss(m1, s1, m2, s2):
    return math.log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5


# ---------------------------------------------------------------- the KL estimator

@pytest.mark.parametrize('m1,s1,m2,s2', [(0, 1, 1, 1), (0, 1, 0.5, 1.5), (1, 0.5, 0, 1), (0, 1, 0, 2), (0, 1, 2, 1),
                                         (3, 2, 3.5, 2.5)])
@pytest.mark.parametrize('seed', [0, 1])
def test_kl_against_gaussian_closed_form(m1, s1, m2, s2, seed):
    # tolerance: 0.05 nats or 10% of the true value, for 20000 samples each where P is not wider than Q
    rng = np.random.default_rng(seed)
    est = kl_divergence(rng.normal(m1, s1, 20000), rng.normal(m2, s2, 20000))
    true = kl_gauss(m1, s1, m2, s2)
    assert abs(est - true) < max(0.05, 0.1 * true), (est, true)


@pytest.mark.parametrize('n', [500, 5000, 50000])
def test_kl_of_one_distribution_is_about_zero(n):
    rng = np.random.default_rng(n)
    vals = [kl_divergence(rng.normal(2, 3, n), rng.normal(2, 3, n)) for _ in range(3)]
    # the plug-in estimate's upward bias is about (B - 1) / 2n per sample
    assert all(0 <= v < 2 * default_bias(n) for v in vals), vals


def default_bias(n):
    from avss.discrepancy import default_bins
    return (default_bins(n) - 1) / n


def test_kl_grows_with_the_mean_shift_and_is_not_symmetric():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 20000)
    shifts = [kl_divergence(x, rng.normal(d, 1, 20000)) for d in (0.25, 0.5, 1, 2)]
    assert shifts == sorted(shifts)
    a, b = rng.normal(0, 1, 20000), rng.normal(0, 2, 20000)
    assert kl_divergence(b, a) > kl_divergence(a, b) + 0.2       # 0.81 against 0.32 in closed form


@HYP
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200),
       st.integers(1, 7))
def test_kl_is_nonnegative_finite_and_zero_on_repeats(p, q, reps):
    v = kl_divergence(p, q)
    assert math.isfinite(v) and v >= -1e-12
    assert abs(kl_divergence(np.repeat(p, reps), p)) < 1e-12      # the same empirical distribution, another size


def test_kl_is_invariant_to_a_common_affine_map():
    rng = np.random.default_rng(1)
    p, q = rng.gamma(2, 1, 3000), rng.normal(2, 1, 4000)
    assert kl_divergence(8 * p - 5, 8 * q - 5) == pytest.approx(kl_divergence(p, q), abs=1e-9)


def test_kl_rejects_bad_samples():
    with pytest.raises(ValueError, match='q_samples is empty'): kl_divergence([1.0], [])
    with pytest.raises(ValueError, match='p_samples holds 1 non-finite'): kl_divergence([1.0, np.inf], [1.0])
    with pytest.raises(ValueError, match='alpha > 0'): kl_divergence([1.0, 2.0], [1.0], alpha=0)


def test_discrepancy_measures_and_gap():
    rng = np.random.default_rng(2)
    S_pos, S_neg, S_other = rng.normal(3, 1, 20000), rng.normal(1, 1, 20000), rng.normal(0, 1, 20000)
    d = discrepancy(S_pos, S_neg, S_other)
    assert d['kl_neg_pos'] == pytest.approx(kl_gauss(1, 1, 3, 1), rel=0.1)      # 2.0
    assert d['kl_other_pos'] == pytest.approx(kl_gauss(0, 1, 3, 1), rel=0.15)   # 4.5
    assert d['kl_neg_other'] == pytest.approx(kl_gauss(1, 1, 0, 1), rel=0.1)    # 0.5
    assert d['gap'] == d['kl_other_pos'] - d['kl_neg_pos']


# ---------------------------------------------------------------- S+, S-, S≠

def test_split_exact_on_a_hand_built_case():
    # rows/columns: snippets a0 a1 b0 b1 b2 c0 (titles a, b, c); sim[i, j] = 10 i + j
    sim = 10.0 * np.arange(6)[:, None] + np.arange(6)[None, :]
    titles = ['a', 'a', 'b', 'b', 'b', 'c']
    S_pos, S_neg, S_other = split_similarities(sim, titles, other_size='all')
    assert S_pos.tolist() == [0, 11, 22, 33, 44, 55]
    assert S_neg.tolist() == [1, 10, 23, 24, 32, 34, 42, 43]
    assert S_other.tolist() == [2, 3, 4, 5, 12, 13, 14, 15, 20, 21, 25, 30, 31, 35, 40, 41, 45, 50, 51, 52, 53, 54]


@HYP
@given(st.lists(st.integers(0, 4), min_size=2, max_size=30), st.integers(0, 3))
def test_split_partitions_every_pair(titles, seed):
    N = len(titles)
    sim = np.random.default_rng(seed).permutation(N * N).reshape(N, N).astype(float)   # distinct values
    S_pos, S_neg, S_other = split_similarities(sim, titles, other_size='all')
    sizes = np.bincount(titles)
    assert len(S_pos) == N and len(S_neg) == int((sizes * (sizes - 1)).sum()) and len(S_other) == N * N - int((sizes ** 2).sum())
    assert sorted(np.concatenate([S_pos, S_neg, S_other]).tolist()) == list(range(N * N))
    sub = split_similarities(sim, titles, seed=seed)[2]
    assert len(sub) == min(len(S_neg), len(S_other)) and set(sub) <= set(S_other)
    assert np.array_equal(sub, split_similarities(sim, titles, seed=seed)[2])   # seeded


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match='one title per row'): split_similarities(np.zeros((3, 3)), [0, 1])
    with pytest.raises(ValueError, match='other_size'): split_similarities(np.zeros((2, 2)), [0, 1], other_size=-1)


# ---------------------------------------------------------------- Recall@K

def recall_reference(sim, k, mask=None):
    "Per query: the candidates allowed; the match's place under every tie-breaking order, averaged."
    sim = np.asarray(sim, float)
    hits = []
    for i, row in enumerate(sim):
        cands = [j for j in range(len(row)) if (mask is None or mask[i][j]) and j != i]
        above = sum(row[j] > row[i] for j in cands)
        tied = sum(row[j] == row[i] for j in cands)
        places = range(above, above + tied + 1)              # equally likely places of the match
        hits.append(sum(p < k for p in places) / len(places))
    return float(np.mean(hits))


def test_recall_exact_on_hand_built_matrices():
    sim = [[0.9, 0.1, 0.5],
           [0.2, 0.3, 0.4],
           [0.7, 0.8, 0.6]]
    assert recall_at_k(sim, 1) == 1 / 3                      # row 0 only
    assert recall_at_k(sim, 2) == 2 / 3                      # rows 0 and 1
    assert recall_at_k(sim, 3) == 1.0
    assert recall_at_k(np.array(sim).T, 1) == 2 / 3           # columns as queries: 0.9 and 0.6 top theirs, 0.3 < 0.8


def test_within_title_ignores_a_better_scoring_candidate_of_another_title():
    # query 0 (title A): the match scores 0.5, its title-mate 0.4, a candidate of title B 0.9
    sim = np.array([[0.5, 0.4, 0.9, 0.0],
                    [0.0, 0.5, 0.0, 0.0],
                    [0.0, 0.0, 0.5, 0.0],
                    [0.0, 0.0, 0.0, 0.5]])
    titles = np.array(['A', 'A', 'B', 'B'])
    within = titles[:, None] == titles[None, :]
    assert recall_at_k(sim, 1, within) == 1.0
    assert recall_at_k(sim, 1) == 0.75                       # across all, the other title's 0.9 wins for query 0
    m = measure_embeddings(torch.eye(4), torch.tensor(sim).T.contiguous(), titles)   # z_v^i . z_a^j = sim[i, j]
    assert (m['r1_within_v2a'], m['r1_all_v2a']) == (1.0, 0.75)


def test_recall_ties_count_at_chance():
    assert recall_at_k(np.zeros((8, 8)), 1) == pytest.approx(1 / 8)
    assert recall_at_k(np.zeros((8, 8)), 3) == pytest.approx(3 / 8)
    within = np.kron(np.eye(2), np.ones((4, 4))).astype(bool)
    assert recall_at_k(np.zeros((8, 8)), 1, within) == pytest.approx(chance_recall(1, within)) == 0.25
    assert chance_recall(5, within) == 1.0


@HYP
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.lists(st.lists(st.integers(0, 3), min_size=n, max_size=n), min_size=n, max_size=n),
    st.lists(st.integers(0, 2), min_size=n, max_size=n))), st.integers(1, 4))
def test_recall_matches_brute_force(case, k):
    sim, titles = np.array(case[0], float), np.array(case[1])
    within = titles[:, None] == titles[None, :]
    assert recall_at_k(sim, k) == pytest.approx(recall_reference(sim, k))
    assert recall_at_k(sim, k, within) == pytest.approx(recall_reference(sim, k, within))


def test_recall_rejects_bad_input():
    with pytest.raises(ValueError, match='square'): recall_at_k(np.zeros((2, 3)), 1)
    with pytest.raises(ValueError, match='k must be >= 1'): recall_at_k(np.zeros((2, 2)), 0)
    with pytest.raises(ValueError, match='True diagonal'): recall_at_k(np.zeros((2, 2)), 1, np.zeros((2, 2), bool))


# ---------------------------------------------------------------- the choice of snippets

def test_snippet_choice_is_spread_seeded_and_skips_short_titles():
    grid = SnippetGrid.from_counts([100, 5, 1, 0, 16])
    items = snippet_choice(grid, 16, seed=7)
    per = {n: [m for t, m in items if t == n] for n in range(5)}
    assert per[0] == sorted(per[0]) and len(set(per[0])) == 16
    edges = np.arange(17) * 100 // 16                            # 16 strata of 6 or 7 snippets
    assert (np.searchsorted(edges, per[0], 'right') - 1).tolist() == list(range(16))   # one per stratum
    assert per[1] == [0, 1, 2, 3, 4] and per[2] == per[3] == [] and per[4] == list(range(16))
    assert snippet_choice(grid, 16, seed=7) == items and snippet_choice(grid, 16, seed=8) != items
    some = snippet_choice(grid, 4, titles=2, seed=0)
    assert len({n for n, _ in some}) == 2 and {n for n, _ in some} <= {0, 1, 4}
    assert snippet_choice(grid, 4, titles=10) == snippet_choice(grid, 4)


# ---------------------------------------------------------------- embedding through stand-ins

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


def test_title_constant_model_gives_zero_kl_neg_pos_through_heldout_measures():
    ds = ToyDataset([9, 7, 1, 12, 6])
    model = TitleModel()
    m = heldout_measures(model, ds, preset=None, snippets_per_title=5, seed=3, device='cpu', batch_size=4, num_workers=0)
    assert m['kl_neg_pos'] == pytest.approx(0, abs=1e-9)
    assert m['heldout_titles'] == 4 and m['heldout_snippets'] == 20           # title 2 (one snippet) skipped
    assert m['r1_within_a2v'] == pytest.approx(m['chance_r1_within']) == pytest.approx(1 / 5)
    assert m['kl_other_pos'] > 0.1
    assert set(m) >= {'kl_neg_pos', 'kl_other_pos', 'kl_neg_other', 'gap', 'r1_within_a2v', 'r5_within_a2v',
                      'r1_within_v2a', 'r5_within_v2a', 'r1_all_a2v', 'r5_all_a2v', 'r1_all_v2a', 'r5_all_v2a',
                      'chance_r1_within', 'chance_r5_within', 'chance_r1_all', 'chance_r5_all'}
    json.dumps(m)                                                             # flat and JSON-serialisable
    assert all(isinstance(v, (int, float)) for v in m.values())


@pytest.mark.parametrize('training', [True, False])
def test_embed_runs_in_eval_mode_without_grad_and_restores_the_mode(training):
    ds, model = ToyDataset([6, 6, 3]), TitleModel()
    model.train(training)
    z_v, z_a, n, m = embed(model, ds, snippets_per_title=4, batch_size=5, num_workers=0)
    assert model.training is training
    assert [c[:3] for c in model.calls] == [(False, False, 'cpu')] * 3 and [c[3][0] for c in model.calls] == [5, 5, 1]
    assert z_v.shape == (11, 8) and z_a.shape == (11, 8) and not z_v.requires_grad
    assert list(zip(n, m)) == snippet_choice(ds.grid, 4)


def test_embed_restores_the_mode_when_the_model_fails():
    class Boom(TitleModel):
        def forward(self, video, audio): raise RuntimeError('boom')
    model = Boom().train()
    with pytest.raises(RuntimeError, match='boom'): embed(model, ToyDataset([3, 3]), num_workers=0)
    assert model.training


def test_embed_reports_the_snippet_a_dataset_substituted():
    ds = ToyDataset([4, 4], replace={(0, 1): (0, 3)})                          # (0, 1) "failed to decode"
    _, _, n, m = embed(TitleModel(), ds, items=[(0, 0), (0, 1), (1, 2)], num_workers=0)
    assert n.tolist() == [0, 0, 1] and m.tolist() == [0, 3, 2]


def test_embed_with_data_loader_workers_matches_in_process():
    ds, model = ToyDataset([5, 5, 5]), TitleModel()
    a = embed(model, ds, snippets_per_title=3, batch_size=2, num_workers=0)
    b = embed(model, ds, snippets_per_title=3, batch_size=2, num_workers=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2])


def test_similarities_returns_the_three_sets():
    S_pos, S_neg, S_other = similarities(TitleModel(), ToyDataset([4, 4, 4]), snippets_per_title=4, num_workers=0)
    assert (len(S_pos), len(S_neg), len(S_other)) == (12, 36, 36)
    assert kl_divergence(S_neg, S_pos) == pytest.approx(0, abs=1e-12)


def test_embed_errors_name_the_problem():
    with pytest.raises(ValueError, match='no snippets to embed'): embed(TitleModel(), ToyDataset([1, 1]), num_workers=0)
    with pytest.raises(ValueError, match='has no `grid`'): embed(TitleModel(), [1, 2, 3])
    from types import SimpleNamespace
    with pytest.raises(ValueError, match='needs the model preset'): embed(TitleModel(), SimpleNamespace(df=None))
    with pytest.raises(ValueError, match='lacking'): embed(TitleModel(), SimpleNamespace(df=None), preset={'crop': 64})


def test_real_tiny_model_on_stand_in_inputs():
    from avss.models import AVModel, PRESETS
    p = PRESETS['tiny']
    torch.manual_seed(0)
    model = AVModel('tiny').train()
    ds = ToyDataset([3, 3], size=p.crop, frames=p.frames, mel=(p.n_mels, p.audio_frames))
    m = heldout_measures(model, ds, p, snippets_per_title=3, num_workers=0)
    assert model.training and m['heldout_snippets'] == 6
    assert all(math.isfinite(v) for v in m.values())


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
