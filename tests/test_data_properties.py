"""Properties of the data pipeline's arithmetic, checked on many random cases against brute-force references."""
import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from hypothesis import given, settings, strategies as st

from avss.decode import StreamResampler, frame_indices
from avss.segment import SnippetGrid
from avss.transforms import LogMel, SpecDrop


@settings(max_examples=200, deadline=None)
@given(fps_src=st.floats(1.0, 60.0), n=st.integers(1, 400), start=st.floats(0.0, 30.0),
       frames=st.integers(1, 32), fps=st.sampled_from([2.0, 5.0, 10.0]), jitter=st.floats(0.0, 0.4))
def test_frame_indices_is_the_nearest_frame(fps_src, n, start, frames, fps, jitter):
    rng = np.random.default_rng(n)
    ts = np.sort(np.arange(n) / fps_src + rng.uniform(0, jitter / fps_src, n))   # irregular but increasing
    got = frame_indices(ts, start, frames, fps)
    for k, i in enumerate(got):
        d = np.abs(ts - (start + k / fps))
        assert d[i] <= d.min() + 1e-9                        # nearest
        assert i == np.flatnonzero(d <= d.min() + 1e-9)[0]   # the earlier one on a tie


@settings(max_examples=25, deadline=None)
@given(rates=st.sampled_from([(44100, 48000), (48000, 48000), (22050, 48000), (32000, 48000), (96000, 48000), (8000, 48000)]),
       seconds=st.floats(0.05, 2.0), chunk=st.integers(100, 20000), block=st.integers(500, 50000))
def test_stream_resampler_equals_one_shot(rates, seconds, chunk, block):
    orig, new = rates
    x = np.random.default_rng(chunk).standard_normal(int(seconds * orig)).astype(np.float32)
    rs = StreamResampler(orig, new, block=block)
    y = np.concatenate([b for i in range(0, len(x), chunk) for b in rs.push(x[i:i + chunk])] + [rs.flush()])
    ref = x if orig == new else AF.resample(torch.from_numpy(x), orig, new).numpy()
    assert len(y) == len(ref)
    np.testing.assert_allclose(y, ref, atol=2e-5)


@settings(max_examples=50, deadline=None)
@given(durations=st.lists(st.floats(0.0, 5000.0), min_size=1, max_size=20), frames=st.integers(1, 64),
       fps=st.sampled_from([1.0, 5.0, 10.0, 25.0]))
def test_grid_counts_whole_snippets(durations, frames, fps):
    import pandas as pd
    g = SnippetGrid(pd.DataFrame({'title_id': [f't{i}' for i in range(len(durations))], 'duration_s': durations}), frames, fps)
    L = frames / fps
    for n, d in enumerate(durations):
        M = g.count(n)
        assert M * L <= d + 1e-4 and (M + 1) * L > d - 1e-4
        if M: assert g.start(n, M - 1) + L <= d + 1e-4


def test_logmel_frames_are_centred_on_hops():
    "Frame i of a title's spectrogram is centred on sample i * hop: a click at sample c peaks in frame round(c / hop)."
    lm = LogMel()
    for c in (5 * 512, 300 * 512 + 100, 1000 * 512 - 200):
        x = torch.zeros(48000 * 12)
        x[c] = 1.0
        energy = lm.spectrogram(x).exp().sum(0)
        assert int(energy.argmax()) == round(c / 512)


@pytest.mark.parametrize('frac', [0.1, 0.25, 0.5])
def test_specdrop_band_sizes_cover_the_range(frac):
    axis, start, width = SpecDrop(frac).bands(4000, 96, 300, generator=torch.Generator().manual_seed(0)).unbind(1)
    for ax, size in ((0, 96), (1, 300)):
        w, s = width[axis == ax], start[axis == ax]
        assert w.min() == 0 and w.max() == int(frac * size)
        assert (s >= 0).all() and (s + w <= size).all()
