"""Invariants of the i.i.d. and hierarchical samplers on random grids (hypothesis), their distributed shares
and resume, the statistics of what they draw, and the shot-change detector on encoded and real video."""
import itertools
import math
import os
import re
import statistics
import tempfile
import warnings
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from avss.core import ParamError
from avss.samplers import (HierarchicalSampler, IIDSampler, make_sampler, same_title_negative_formula,
                           same_title_negative_fraction, scene_snippet_ranges)
from avss.scenes import detect_scenes
from avss.segment import SnippetGrid
from avss.testing import check_batch, free_port, stream

MEDIA = Path(__file__).resolve().parent.parent.parent / 'shared' / 'media'
HYP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = pytest.mark.filterwarnings('ignore:HierarchicalSampler')


# ---------------------------------------------------------------- helpers

def hier(counts, k, w, B, **kw):
    return HierarchicalSampler(SnippetGrid.from_counts(counts), k, w, B, **kw)


def chi2_critical(df, p=1e-4):
    "Upper p-quantile of chi-square(df), Wilson-Hilferty approximation (good to ~1% for df >= 5)."
    z = statistics.NormalDist().inv_cdf(1 - p)
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def chi2(observed, expected_p):
    observed = np.asarray(observed, float)
    e = observed.sum() * np.asarray(expected_p, float)
    return float(((observed - e) ** 2 / e).sum())


counts_st = st.lists(st.integers(0, 60), min_size=1, max_size=25)


@st.composite
def configs(draw):
    counts = draw(counts_st)
    k = draw(st.integers(1, 6))
    w = draw(st.one_of(st.none(), st.just('all'), st.integers(k, k + 12)))
    B = k * draw(st.integers(1, 8))
    ws = draw(st.sampled_from([d for d in (1, 2, 4) if B % d == 0]))
    return counts, k, w, B, ws


# ---------------------------------------------------------------- hierarchical invariants

@HYP
@given(configs(), st.integers(0, 2**31))
def test_hierarchical_invariants(cfg, seed):
    counts, k, w, B, _ = cfg
    if max(counts) < k:
        with pytest.raises(ParamError, match='no usable title'):
            hier(counts, k, w, B)
        return
    s = hier(counts, k, w, B, seed=seed)
    assert s.skipped == sum(c < k for c in counts)
    assert len(s) == max(1, sum(c for c in counts if c >= k) // B)
    for e in (0, 3):
        s.set_epoch(e)
        for b in itertools.islice(s, 20):
            check_batch(b, counts, k, None if w == 'all' else w, B)


@HYP
@given(configs(), st.integers(0, 1000))
def test_rank_shares_concatenate_to_single_process_batch(cfg, seed):
    counts, k, w, B, _ = cfg
    assume(max(counts) >= k)
    make = lambda **kw: hier(counts, k, w, B, seed=seed, batches_per_epoch=5, **kw)
    full = stream(make, [0, 1])
    for ws in (2, 4):
        if B % ws == 0:
            shares = [make(rank=r, world_size=ws) for r in range(ws)]
            assert all(len(b) == B // ws for b in shares[0])
            assert stream(make, [0, 1], ws) == full


@HYP
@given(configs(), st.integers(0, 1000), st.data())
def test_resume_continues_identically(cfg, seed, data):
    "Stop after any number of batches (across the epoch boundary too), resume on any number of ranks."
    counts, k, w, B, ws = cfg
    assume(max(counts) >= k)
    make = lambda **kw: hier(counts, k, w, B, seed=seed, batches_per_epoch=4, **kw)
    full = stream(make, [0, 1, 2])
    cut = data.draw(st.integers(0, len(full)))
    a, done = make(), []
    for e in (0, 1, 2):
        a.set_epoch(e)
        done += list(itertools.islice(a, cut - len(done)))
        if len(done) == cut:
            break
    state = a.state_dict()
    resumed = [make(rank=r, world_size=ws) for r in range(ws)]
    for r in resumed:
        r.load_state_dict(state)
    rest = []
    for e in range(state['epoch'], 3):
        for r in resumed:
            r.set_epoch(e)
        rest += [sum(shares, []) for shares in zip(*resumed)]
    assert done + rest == full


def test_draws_depend_on_seed_and_epoch_only():
    grid = SnippetGrid.from_counts([30, 12, 50, 7, 22, 41])
    a, b = HierarchicalSampler(grid, 2, 5, 8, seed=3), HierarchicalSampler(grid, 2, 5, 8, seed=3)
    a.set_epoch(2); b.set_epoch(2)
    assert list(a) == list(b)                                   # fresh samplers, same (seed, epoch)
    a.set_epoch(3)
    assert list(a) != list(b)                                   # another epoch draws other batches
    assert list(HierarchicalSampler(grid, 2, 5, 8, seed=4)) != list(HierarchicalSampler(grid, 2, 5, 8, seed=3))
    i, j = IIDSampler(grid, 8, seed=3), IIDSampler(grid, 8, seed=3)
    j.set_epoch(1)
    assert list(i) != list(j) and sorted(sum(list(i), [])) != sorted(sum(list(j), []))


def test_first_batch_of_the_toy_grid_is_pinned():
    "A literal reference, so that a change of the drawing algorithm cannot pass unnoticed."
    s = hier([3, 12, 7, 40, 1, 25, 9, 16, 5, 30], 4, 6, 16, seed=0)
    assert next(iter(s)) == [(3, 1), (3, 2), (3, 3), (3, 4), (8, 0), (8, 1), (8, 2), (8, 3),
                             (6, 1), (6, 2), (6, 4), (6, 5), (5, 17), (5, 18), (5, 20), (5, 21)]


def test_resume_with_batches_done_and_dataloader():
    "A training loop that consumed 3 batches through a DataLoader resumes at batch 3, whatever was prefetched."
    grid = SnippetGrid.from_counts([30, 12, 50, 7, 22, 41])
    class Pairs(torch.utils.data.Dataset):
        def __getitem__(self, nm): return torch.tensor(nm)
        def __len__(self): return grid.total

    s = HierarchicalSampler(grid, 2, 5, 8, seed=4)
    loader = torch.utils.data.DataLoader(Pairs(), batch_sampler=s)
    seen = [b.tolist() for b in loader]
    assert seen == [s.global_batch(i).tolist() for i in range(len(s))]
    it = iter(loader)
    for _ in range(5):
        next(it)
    state = s.state_dict(batches_done=3)
    assert state['batches_done'] == 3 and s.state_dict()['batches_done'] == 5
    t = HierarchicalSampler(grid, 2, 5, 8, seed=4)
    t.load_state_dict(state)
    assert [b.tolist() for b in torch.utils.data.DataLoader(Pairs(), batch_sampler=t)] == seen[3:]


def test_state_from_another_sampler_is_refused():
    grid = SnippetGrid.from_counts([30, 12, 50, 7])
    state = HierarchicalSampler(grid, 2, 5, 8, seed=1).state_dict()
    for other, what in [(HierarchicalSampler(grid, 2, 5, 8, seed=2), 'seed saved 1, now 2'),
                        (HierarchicalSampler(grid, 4, 5, 8, seed=1), 'k saved 2, now 4'),
                        (HierarchicalSampler(grid, 2, None, 8, seed=1), 'w saved 5, now None'),
                        (HierarchicalSampler(SnippetGrid.from_counts([30, 12, 49, 8]), 2, 5, 8, seed=1), 'snippet counts or scenes differ'),
                        (HierarchicalSampler(grid, 2, 5, 8, seed=1, scenes={0: [10.0]}), 'scenes saved 0'),
                        (IIDSampler(grid, 8, seed=1), "sampler saved 'HierarchicalSampler', now 'IIDSampler'")]:
        with pytest.raises(ValueError, match=re.escape(what)):
            other.load_state_dict(state)
    with pytest.raises(ValueError, match='batches_done'):
        HierarchicalSampler(grid, 2, 5, 8, seed=1).load_state_dict(dict(state, batches_done=999))


def test_skipped_titles_are_counted_and_warned():
    with pytest.warns(UserWarning, match='2 of 5 titles have fewer than k=4'):
        s = hier([3, 10, 0, 4, 9], 4, 6, 8)
    assert s.skipped == 2 and s.skipped_titles.tolist() == [0, 2] and s.usable.tolist() == [1, 3, 4]
    with pytest.warns(UserWarning, match='titles repeat within a batch'):
        hier([10, 10], 1, None, 4)


# ---------------------------------------------------------------- statistics

def test_titles_are_drawn_uniformly_not_in_proportion_to_length():
    counts = [5, 8, 12, 20, 30, 45, 60, 90, 120, 200, 300, 400, 6, 7, 9, 15, 25, 50, 150, 250]
    s = hier(counts, 2, 4, 8, seed=11, batches_per_epoch=3000)
    titles = np.concatenate([s.global_batch(i)[::2, 0] for i in range(len(s))])
    crit = chi2_critical(len(counts) - 1)
    uniform = np.full(len(counts), 1 / len(counts))
    assert chi2(np.bincount(titles, minlength=len(counts)), uniform) < crit
    # the test has the power to catch a sampler that draws titles in proportion to M_n
    prop = np.random.default_rng(0).choice(len(counts), len(titles), p=np.divide(counts, sum(counts)))
    assert chi2(np.bincount(prop, minlength=len(counts)), uniform) > 100 * crit


def test_window_policy_distribution_is_exact():
    "M=5, k=2, w=3: a window of 3 placed uniformly (3 places), a pair uniform inside it (3 pairs): P = 1/9 or 2/9."
    s = hier([5], 2, 3, 2, seed=5, batches_per_epoch=9000)
    pairs = [tuple(s.global_batch(i)[:, 1]) for i in range(len(s))]
    expected = {(0, 1): 1, (0, 2): 1, (1, 2): 2, (1, 3): 1, (2, 3): 2, (2, 4): 1, (3, 4): 1}
    assert set(pairs) == set(expected)
    obs = [pairs.count(p) for p in expected]
    assert chi2(obs, np.array(list(expected.values())) / 9) < chi2_critical(len(expected) - 1)


def test_whole_title_window_draws_every_pair_alike():
    s = hier([6], 2, 'all', 2, seed=2, batches_per_epoch=6000)
    pairs = [tuple(s.global_batch(i)[:, 1]) for i in range(len(s))]
    assert len(set(pairs)) == 15
    assert chi2([pairs.count(p) for p in sorted(set(pairs))], np.full(15, 1 / 15)) < chi2_critical(14)


def test_k1_hierarchical_versus_iid():
    """Hierarchical k=1, w=all: P(n, m) = 1 / (N M_n), titles uniform; IID: P(n, m) = 1 / sum M_n, titles in
    proportion to M_n. On a grid of equal M_n both are uniform over snippets."""
    counts = [4, 10, 25, 60, 1]
    h = hier(counts, 1, None, 4, seed=3, batches_per_epoch=5000)
    hb = np.concatenate([h.global_batch(i) for i in range(len(h))])
    assert chi2(np.bincount(hb[:, 0], minlength=5), np.full(5, 0.2)) < chi2_critical(4)
    iid = IIDSampler(SnippetGrid.from_counts(counts), 4, seed=3)
    ib = np.concatenate([iid.global_batch(i, epoch=e) for e in range(2000) for i in range(5)])
    assert chi2(np.bincount(ib[:, 0], minlength=5), np.divide(counts, sum(counts))) < chi2_critical(4)
    assert chi2(np.bincount(ib[:, 0], minlength=5), np.full(5, 0.2)) > 100 * chi2_critical(4)
    # equal M_n: the hierarchical k=1 draw is uniform over all 40 snippets, as the i.i.d. one is
    e = hier([8] * 5, 1, None, 4, seed=9, batches_per_epoch=5000)
    eb = np.concatenate([e.global_batch(i) for i in range(len(e))])
    assert chi2(np.bincount(eb[:, 0] * 8 + eb[:, 1], minlength=40), np.full(40, 1 / 40)) < chi2_critical(39)
    ie = IIDSampler(SnippetGrid.from_counts([8] * 5), 40, seed=9)
    assert sorted(map(tuple, ie.global_batch(0).tolist())) == [(n, m) for n in range(5) for m in range(8)]
    # within a batch the hierarchical k=1 sampler never repeats a title while there are enough
    assert all(len(set(h.global_batch(i)[:, 0])) == 4 for i in range(50))
    assert type(make_sampler(SnippetGrid.from_counts(counts), 1, None, 4)) is IIDSampler


# ---------------------------------------------------------------- iid

@HYP
@given(counts_st, st.integers(1, 24), st.sampled_from([1, 2, 4]), st.booleans(), st.integers(0, 10**6))
def test_iid_without_replacement_within_an_epoch(counts, B, ws, drop_last, seed):
    B *= ws
    total = sum(counts)
    grid = SnippetGrid.from_counts(counts)
    if total == 0 or (drop_last and total < B):
        with pytest.raises(ParamError):
            IIDSampler(grid, B, drop_last=drop_last)
        return
    make = lambda **kw: IIDSampler(grid, B, seed=seed, drop_last=drop_last, **kw)
    full = stream(make, [0, 1])
    assert stream(make, [0, 1], ws) == full
    n = len(make())
    for e in (0, 1):
        seen = [tuple(p) for b in full[e * n:(e + 1) * n] for p in b]
        assert all(len(b) == B for b in full) and all(0 <= m < counts[t] for t, m in seen)
        if drop_last:
            assert n == total // B and len(set(seen)) == len(seen)
        else:
            assert n == -(-total // B) and len(set(seen)) == total
            assert seen[:total] == list(dict.fromkeys(seen)) and seen[total:] == (seen[:total] * B)[:len(seen) - total]


# ---------------------------------------------------------------- same-title negatives

def test_same_title_negative_fraction_literal():
    # title 0 twice: samples 0 and 1 each have 2 same-title negatives out of 2B-2 = 6
    assert same_title_negative_fraction([(0, 0), (0, 1), (1, 0), (2, 5)]) == pytest.approx((2 + 2 + 0 + 0) / 4 / 6)
    assert same_title_negative_formula(1, 512) == 0 and same_title_negative_formula(512, 512) == 1
    with pytest.raises(ValueError, match='at least 2'):
        same_title_negative_fraction([(0, 0)])


@HYP
@given(st.integers(1, 8), st.integers(1, 8), st.integers(0, 1000))
def test_same_title_negative_fraction_matches_formula(k, T, seed):
    s = hier([40] * 30, k, None, k * T, seed=seed)
    assume(k * T >= 2)
    assert same_title_negative_fraction(next(iter(s))) == pytest.approx(same_title_negative_formula(k, k * T))


# ---------------------------------------------------------------- scene-aware windows

@HYP
@given(st.lists(st.integers(1, 40), min_size=1, max_size=8), st.integers(1, 4),
       st.one_of(st.none(), st.integers(4, 10)), st.data())
def test_scene_windows_stay_inside_one_scene(counts, k, w, data):
    L = 3.2
    scenes = {n: data.draw(st.lists(st.floats(0, c * L), max_size=5)) for n, c in enumerate(counts) if data.draw(st.booleans())}
    assume(max(counts) >= k)
    s = hier(counts, k, w, k * 4, seed=1, scenes=scenes, batches_per_epoch=15)
    ranges = {n: [r for r in scene_snippet_ranges(scenes.get(n, []), c, L) if r[1] - r[0] >= k] for n, c in enumerate(counts)}
    assert s.scene_fallback == sum(1 for n, c in enumerate(counts) if c >= k and not ranges[n])
    for b in s:
        check_batch(b, counts, k, w, k * 4)
        for j in range(0, len(b), k):
            n, ms = b[j][0], [m for _, m in b[j:j + k]]
            if ranges[n]:
                lo, hi = next((lo, hi) for lo, hi in ranges[n] if lo <= ms[0] < hi)
                assert ms[-1] < hi and ms[-1] - ms[0] + 1 <= min(w or hi - lo, hi - lo), (ms, ranges[n])


def test_scene_snippet_ranges_literal():
    assert scene_snippet_ranges([10.0, 20.0], 10, 3.2) == [(0, 3), (4, 6), (7, 10)]
    assert scene_snippet_ranges([3.2 * 4], 6, 3.2) == [(0, 4), (4, 6)]
    assert scene_snippet_ranges([0.1, 0.2], 1, 3.2) == []


# ---------------------------------------------------------------- distributed, for real (gloo, 2 processes)

def _ddp_worker(rank, world_size, port, out):
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world_size)
    try:
        grid = SnippetGrid.from_counts([30, 12, 50, 7, 22, 41, 3, 18])
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            samplers = [HierarchicalSampler(grid, 4, 6, 16, seed=5, rank=rank, world_size=world_size),
                        IIDSampler(grid, 16, seed=5, rank=rank, world_size=world_size)]
        gathered = []
        for s in samplers:
            s.set_epoch(1)
            mine = list(s)
            objs = [None] * world_size
            dist.all_gather_object(objs, mine)
            gathered.append([sum(shares, []) for shares in zip(*objs)])
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_draw_the_single_process_batches(tmp_path):
    port = free_port()
    out = tmp_path / 'gathered.pt'
    mp.spawn(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True)
    gathered = torch.load(out)
    grid = SnippetGrid.from_counts([30, 12, 50, 7, 22, 41, 3, 18])
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        single = [HierarchicalSampler(grid, 4, 6, 16, seed=5), IIDSampler(grid, 16, seed=5)]
    for s, g in zip(single, gathered):
        s.set_epoch(1)
        assert g == list(s) and len(g) == len(s)


# ---------------------------------------------------------------- shot-change detector

def write_shots(path, shots, fps=5, size=(96, 64), seed=0):
    "Encode shots [(kind, frames, rgb)] joined by hard cuts; kind 'solid' or 'texture' (moving noise)."
    rng = np.random.default_rng(seed)
    with av.open(str(path), 'w') as out:
        s = out.add_stream('libx264', rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], 'yuv420p'
        for kind, n, rgb in shots:
            tex = rng.integers(-60, 61, (size[1] * 2, size[0] * 2, 1)) if kind == 'texture' else np.zeros((1, 1, 1))
            for t in range(n):
                moved = np.roll(tex, 3 * t, axis=(0, 1))[:size[1], :size[0]] if kind == 'texture' else 0
                img = np.broadcast_to(np.clip(np.array(rgb) + moved, 0, 255), (size[1], size[0], 3)).astype(np.uint8)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
                    out.mux(p)
        for p in s.encode():
            out.mux(p)


@pytest.mark.parametrize('fps,read_fps', [(5, None), (10, None), (25, 5)])
def test_detect_scenes_finds_hard_cuts_within_one_frame(tmp_path, fps, read_fps):
    shots = [('texture', 9, (90, 90, 160)), ('solid', 6, (230, 200, 40)), ('texture', 14, (40, 150, 60)),
             ('solid', 4, (10, 10, 10)), ('texture', 8, (200, 60, 60))]
    per = fps // 5
    write_shots(tmp_path / 'v.mp4', [(kind, n * per, c) for kind, n, c in shots], fps=fps, seed=fps)
    cuts = detect_scenes(tmp_path / 'v.mp4', fps=read_fps)
    true = np.cumsum([n for _, n, _ in shots])[:-1] / 5
    frame = 1 / (read_fps or fps)
    assert len(cuts) == len(true), cuts
    assert np.abs(np.asarray(cuts) - true).max() <= frame + 1e-6, (cuts, true)


def test_detect_scenes_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='no video file'):
        detect_scenes(tmp_path / 'none.mp4')
    (tmp_path / 'bad.mp4').write_bytes(b'not a video')
    with pytest.raises(ValueError, match='cannot decode'):
        detect_scenes(tmp_path / 'bad.mp4')


@pytest.mark.media
@pytest.mark.skipif(not MEDIA.is_dir(), reason=f'real clips not found at {MEDIA} (shared test media absent)')
@pytest.mark.parametrize('clip,cut_frames', [
    ('torchvision/SOX5yA1l24A.mp4', [138, 219, 292]),           # three hard cuts, checked by eye
    ('torchvision/TrumanShow_wave_f_nm_np1_fr_med_26.avi', [19]),  # AVI: timestamps come from the frame rate
    ('av_with_audio/v_ZNVhz7ctTq0.mp4', [308]),                 # a jump cut (the walk restarts)
    ('av_with_audio/flipping_a_pancake.mkv', []),               # one shot each
    ('torchvision/v_SoccerJuggling_g23_c01.avi', []),
    ('torchvision/WUzgd7C1pWA.mp4', [])])
def test_detect_scenes_on_real_clips(tmp_path, clip, cut_frames):
    from avss.catalog import probe
    src = tmp_path / Path(clip).name
    src.write_bytes((MEDIA / clip).read_bytes())
    fps = probe(src)['fps']
    cuts = detect_scenes(src)
    assert len(cuts) == len(cut_frames), cuts
    assert np.abs(np.asarray(cuts) - np.asarray(cut_frames) / fps).max(initial=0) <= 1 / fps + 1e-6, cuts
