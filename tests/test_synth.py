"""The synthetic corpus and downstream sets: determinism and resume, decoding through avss.decode, title artifacts
that persist (colour, hum) and are shared by a show's episodes, sound that lines up with the picture, the
UCF101 and ESC-50 layouts, and the command-line front end."""
import dataclasses
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avss.catalog import Catalog, open_media, probe
from avss.core import ParamError
from avss.decode import read_snippet, read_track
from avss.synth import (EVENT_TYPES, Plan, Scene, corpus_table, draw_event, draw_style, make_corpus, title_plan,
                        title_style)
from avss.synth_render import backdrop, bounce_contacts, make_title
from avss.synth_sets import make_esc_like, make_ucf_like, ucf_test_groups

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(titles=6, minutes=0.75, shows=1, episodes=2, width=128, height=72, sample_rate=44100)


def decoded(path, idx) -> np.ndarray:
    "RGB frames `idx` of `path` at its own size, decoded in order with PyAV (independent of avss.decode)."
    got = {}
    with open_media(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            if i in idx: got[i] = f.to_ndarray(format='rgb24')
            if i >= max(idx): break
    return np.stack([got[i] for i in idx])


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp('synth') / 'corpus', workers=2, progress=False, **SMALL)


def snippets(cat, n):
    "Start times of every whole 3.2 s snippet of title n."
    return np.arange(int(cat.df['duration_s'][n] / 3.2)) * 3.2


def spectrum_peak(audio, sr, hz):
    "How far the magnitude spectrum at `hz` stands above its +-10 Hz neighbourhood (ratio to the median)."
    spec = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    f = np.fft.rfftfreq(len(audio), 1 / sr)
    near = np.abs(f - hz)
    return spec[near < 0.7].max() / np.median(spec[near < 10])


# ---------------------------------------------------------------- files, determinism, resume

def test_catalog_columns_and_layout(corpus):
    df = corpus.df
    assert list(df.columns[:12]) == ['title_id', 'path', 'group_id', 'kind', 'genre', 'duration_s', 'has_video',
                                     'has_audio', 'fps', 'width', 'height', 'sample_rate']
    assert df['title_id'].tolist() == ['show_0_e1', 'show_0_e2', 'movie_00', 'movie_01', 'movie_02', 'movie_03']
    assert df['group_id'].nunique() == 5 and df['kind'].value_counts().to_dict() == {'movie': 4, 'episode': 2}
    # the CSV stores paths relative to its folder
    csv = Path(corpus.paths[0]).parent / 'catalog.csv'
    assert pd.read_csv(csv)['path'].tolist() == [f'{t}.mp4' for t in df['title_id']]
    # what the catalog says is what a probe of the files finds
    probed = Catalog.from_media(corpus.paths)
    np.testing.assert_allclose(probed.df['duration_s'], df['duration_s'], atol=0.05)
    assert probed.df[['width', 'height', 'sample_rate']].values.tolist() == df[['width', 'height', 'sample_rate']].values.tolist()


@pytest.mark.slow
def test_same_seed_same_bytes_and_resume(corpus, tmp_path):
    again = make_corpus(tmp_path / 'again', workers=1, progress=False, **SMALL)
    assert [Path(p).read_bytes() for p in again.paths] == [Path(p).read_bytes() for p in corpus.paths]
    # an interrupted run: one title missing, a half-written temporary file left over
    victim = Path(again.paths[3])
    victim.unlink()
    (victim.parent / f'.{victim.name}.abc.part').write_bytes(b'half')
    kept = {p: Path(p).stat().st_mtime_ns for p in again.paths if p != str(victim)}
    make_corpus(tmp_path / 'again', workers=1, progress=False, **SMALL)
    assert victim.read_bytes() == Path(corpus.paths[3]).read_bytes()
    assert {p: Path(p).stat().st_mtime_ns for p in kept} == kept
    assert not list((tmp_path / 'again').glob('.*.part'))
    other = make_corpus(tmp_path / 'other', workers=1, progress=False, **{**SMALL, 'titles': 3, 'seed': 1})
    assert Path(other.paths[0]).read_bytes() != Path(corpus.paths[0]).read_bytes()


def test_bad_arguments_name_the_parameter(tmp_path):
    with pytest.raises(ParamError, match="'height' must be even"):
        make_corpus(tmp_path / 'x', height=73)
    with pytest.raises(ParamError, match="'titles' must be >= 1"):
        make_corpus(tmp_path / 'x', titles=0)
    with pytest.raises(ParamError, match="unknown|'container' must be one of"):
        make_corpus(tmp_path / 'x', container='avi')
    with pytest.raises(ValueError, match='more than titles=4'):
        make_corpus(tmp_path / 'x', titles=4, shows=2, episodes=3)
    with pytest.raises(ValueError, match='event kind'):
        draw_event('roll', 0, 1, np.random.default_rng(0))


def test_snippets_decode_through_read_snippet(corpus):
    for n in range(len(corpus)):
        for start in snippets(corpus, n)[[0, -1]]:
            video, audio = read_snippet(corpus.paths[n], start, frames=16, fps=5, sample_rate=48000)
            assert video.shape == (16, 72, 128, 3) and video.dtype == np.uint8
            assert audio.shape == (153600,) and audio.dtype == np.float32      # 44.1 kHz resampled to 48 kHz
            assert 0.005 < audio.std() < 1
    # 16 frames at 5 fps from a 25 fps file are every fifth frame
    video, _ = read_snippet(corpus.paths[2], 6.4, frames=16, fps=5)
    ref = decoded(corpus.paths[2], list(range(160, 240, 5)))
    assert np.abs(video.astype(int) - ref).mean() < 1


# ---------------------------------------------------------------- artifacts

def test_colour_persists_within_a_title_not_across(corpus):
    first, last = [], []
    for n in range(len(corpus)):
        s = snippets(corpus, n)
        first.append(read_snippet(corpus.paths[n], s[0])[0].reshape(-1, 3).mean(0))
        last.append(read_snippet(corpus.paths[n], s[-1])[0].reshape(-1, 3).mean(0))
    d = np.linalg.norm(np.array(first)[:, None] - np.array(last)[None], axis=-1)   # first of i vs last of j
    groups = corpus.df['group_id'].to_numpy()
    other = groups[:, None] != groups[None]
    assert np.diag(d).mean() < 0.5 * d[other].mean(), d.round(1)
    assert (np.diag(d)[:, None] < np.where(other, d, np.inf)).mean() > 0.8, d.round(1)
    # the episodes of a show look alike
    assert d[0, 1] < d[0][other[0]].min() and d[1, 0] < d[1][other[1]].min()


def test_hum_in_every_snippet_and_shared_by_episodes(corpus):
    table = corpus_table('.', **SMALL, seed=0, fps=25)
    for n, row in table.iterrows():
        hum = title_style(0, row['group']).hum_hz
        for start in snippets(corpus, n):
            _, audio = read_snippet(corpus.paths[n], start, frames=16, fps=5, sample_rate=48000)
            assert spectrum_peak(audio, 48000, hum) > 4, (row['title_id'], start, hum)
    hums = [title_style(0, g).hum_hz for g in table['group']]
    assert hums[0] == hums[1] and len(set(hums[1:])) == 5


# ---------------------------------------------------------------- sound follows picture

def event_clip(tmp_path, kind, seed=5, W=160, H=96, fps=25, sr=44100):
    "A clip with one event and no character, logo or bars, decoded again; with its backdrop and the event."
    rng = np.random.default_rng(seed)
    style = dataclasses.replace(draw_style(rng), char_size=0.0, logo=-1, letterbox=0.0)
    scene = Scene(0.0, 8.0, 3, 0.85)
    e = draw_event(kind, 0.3, 7.7, rng, scene.floor)
    path = make_title(tmp_path / f'{kind}.mp4', style, Plan(8.0, [scene], [e], []), W, H, fps, sr)
    video, audio = read_snippet(path, 0.0, frames=200, fps=fps, sample_rate=sr)
    mask = np.abs(video.astype(int) - backdrop(style, scene, W, H)).max(-1) > 60   # where the object is
    return e, mask, audio


def frame_pitch(audio, sr, fps, lo):
    "The strongest frequency above `lo` Hz in each frame's stretch of sound."
    spf = sr // fps
    f = np.fft.rfftfreq(8192, 1 / sr)
    out = []
    for i in range(len(audio) // spf):
        spec = np.abs(np.fft.rfft(audio[i * spf:(i + 1) * spf] * np.hanning(spf), 8192))
        out.append(f[np.argmax(np.where(f > lo, spec, 0))])
    return np.array(out)


def test_impacts_at_floor_contacts(tmp_path):
    e, mask, audio = event_clip(tmp_path, 'bounce')
    bottom = np.array([np.nonzero(m.any(1))[0].max(initial=-1) for m in mask])      # lowest row of the ball
    seen = [i for i in range(1, 199) if bottom[i] >= bottom[i - 1] and bottom[i] > bottom[i + 1] >= 0]
    spf = 44100 // 25
    energy = np.array([np.sum(np.diff(audio[i * spf:(i + 1) * spf + 1]) ** 2) for i in range(200)])
    rise = [i for i in range(1, 200) if energy[i] > 8 * energy[i - 1]]
    heard = [i for i in rise if i - 1 not in rise]          # an impact at a frame boundary rises over two frames
    assert len(seen) == len(bounce_contacts(e)) == len(heard) >= 4
    assert np.abs(np.array(seen) - np.array(heard)).max() <= 1, (seen, heard)   # within one frame
    assert np.abs(np.array(heard) - bounce_contacts(e) * 25).max() <= 1


def test_pulse_pitch_follows_size_and_slide_pitch_follows_position(tmp_path):
    _, mask, audio = event_clip(tmp_path, 'pulse')
    size, pitch = np.sqrt(mask.sum((1, 2))), np.log(frame_pitch(audio, 44100, 25, 200))
    on = slice(10, 188)
    assert np.corrcoef(size[on], pitch[on])[0, 1] > 0.95
    e, mask, audio = event_clip(tmp_path, 'slide')
    x = np.array([np.nonzero(m.any(0))[0].mean() for m in mask[on]])          # the slider is in view throughout
    pitch = np.log(frame_pitch(audio, 44100, 25, 120))[on]
    assert np.corrcoef(x, pitch)[0, 1] > 0.99


# ---------------------------------------------------------------- downstream sets
# The layout files and counts are checked directly, and again through the official-layout readers of
# avss.downstream_data where that module exists.

@pytest.fixture(scope='module')
def ucf(tmp_path_factory):
    return make_ucf_like(tmp_path_factory.mktemp('ucf'), classes=('bounce', 'pulse', 'slide'), groups=4, clips=2,
                         seconds=3.0, width=96, height=72, workers=2, progress=False)


def test_ucf_layout_and_group_splits(ucf):
    lists = ucf / 'ucfTrainTestlist'
    assert (lists / 'classInd.txt').read_text().splitlines() == ['1 BallBounce', '2 ShapePulse', '3 ObjectSlide']
    clips = sorted(p.relative_to(ucf / 'UCF-101').as_posix() for p in (ucf / 'UCF-101').rglob('*.avi'))
    assert len(clips) == 3 * 4 * 2 and clips[0] == 'BallBounce/v_BallBounce_g01_c01.avi'
    group = lambda rel: int(rel.split('_g')[1][:2])
    tested = []
    for split in (1, 2, 3):
        train = [l.split(' ') for l in (lists / f'trainlist0{split}.txt').read_text().splitlines()]
        test = (lists / f'testlist0{split}.txt').read_text().splitlines()
        assert sorted([p for p, _ in train] + test) == clips                      # every clip once per split
        assert not {group(p) for p, _ in train} & {group(p) for p in test}      # by group
        names = ['BallBounce', 'ShapePulse', 'ObjectSlide']
        assert all(names[int(lab) - 1] == p.split('/')[0] for p, lab in train)
        tested += sorted({group(p) for p in test})
    assert tested == [1, 2, 3] == [g for s in (1, 2, 3) for g in ucf_test_groups(4, s)]
    assert ucf_test_groups(25, 1) == list(range(1, 8))


def test_ucf_clips_are_avi_with_picture_and_sound(ucf):
    path = ucf / 'UCF-101' / 'ShapePulse' / 'v_ShapePulse_g02_c01.avi'
    assert path.read_bytes()[:12][8:] == b'AVI '
    with open_media(path) as c: frames = [f.to_ndarray(format='rgb24') for f in c.decode(video=0)]
    assert (len(frames), frames[0].shape, probe(path)['fps']) == (75, (72, 96, 3), 25.0)
    assert abs(len(read_track(path, 44100)) / 44100 - 3.0) < 0.1


def test_ucf_artifacts_follow_groups_not_labels(ucf):
    "Clips of one group (any class) share their look; clips of one class (other groups) do not."
    colour = {p.name: decoded(p, [0, 30, 60]).reshape(-1, 3).mean(0)
              for p in (ucf / 'UCF-101').rglob('*.avi')}
    names = sorted(colour)
    key = lambda n: (n.split('_')[1], n.split('_')[2])                     # (class, group)
    same_group, same_class = [], []
    for a in names:
        for b in names:
            if a < b and key(a)[1] == key(b)[1] and key(a)[0] != key(b)[0]:
                same_group.append(np.linalg.norm(colour[a] - colour[b]))
            if a < b and key(a)[0] == key(b)[0] and key(a)[1] != key(b)[1]:
                same_class.append(np.linalg.norm(colour[a] - colour[b]))
    assert np.mean(same_group) < 0.5 * np.mean(same_class)


def test_esc_layout(tmp_path):
    root = make_esc_like(tmp_path / 'esc', clips_per_fold=2, workers=2, progress=False)
    meta = pd.read_csv(root / 'meta' / 'esc50.csv')
    assert list(meta.columns) == ['filename', 'fold', 'target', 'category', 'esc10', 'src_file', 'take']
    assert len(meta) == len(EVENT_TYPES) * 5 * 2 == len(list((root / 'audio').glob('*.wav')))
    assert (meta.groupby(['fold', 'target']).size() == 2).all()
    assert (meta.groupby('src_file')['fold'].nunique() == 1).all()
    assert (meta.groupby('target')['category'].nunique() == 1).all() and meta['category'].nunique() == len(EVENT_TYPES)
    assert sorted(meta.loc[meta.esc10, 'target'].unique()) == [0, 2, 4]
    for r in meta.itertuples():
        assert r.filename == f'{r.fold}-{r.src_file}-{r.take}-{r.target}.wav'
        with wave.open(str(root / 'audio' / r.filename)) as w:
            assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 44100, 220500)


def test_downstream_readers(ucf, tmp_path):
    dd = pytest.importorskip('avss.downstream_data', reason='avss.downstream_data (official-layout readers) not built yet')
    for split in (1, 2, 3):
        train, classes = dd.ucf101_split(ucf, split, train=True)
        test, _ = dd.ucf101_split(ucf, split, train=False)
        assert classes == ['BallBounce', 'ShapePulse', 'ObjectSlide'] and len(train) + len(test) == 24
        assert {p.name.split('_')[1] for p, _ in train + test} == set(classes)
        assert all(classes[label] == p.parent.name for p, label in train + test)
    clip, label, _ = dd.UCF101(ucf, split=1, train=True)[0]                 # decodes through the reader
    assert label == 0 and clip.ndim == 4
    root = make_esc_like(tmp_path / 'esc', classes=('bounce', 'flash', 'blink'), clips_per_fold=2, workers=1, progress=False)
    for fold in range(1, 6):
        test, classes = dd.esc50_split(root, fold, train=False)
        assert classes == ['impact', 'burst', 'beeps'] and len(test) == 6
        assert len(dd.esc50_split(root, fold, train=True)[0]) == 24
    assert dd.esc50_split(root, 1, train=False, esc10=True)[1] == ['impact', 'beeps']
    x, label, _ = dd.ESC50(root, fold=2, train=False)[0]
    assert np.isfinite(np.asarray(x)).all()


# ---------------------------------------------------------------- command line

@pytest.mark.slow
def test_command_line(tmp_path):
    script = ROOT / 'data_scripts' / 'make_synthetic.py'
    run = lambda *a: subprocess.run([sys.executable, str(script), *map(str, a)], capture_output=True, text=True)
    r = run('corpus', tmp_path / 'c', '--titles', 2, '--shows', 1, '--episodes', 2, '--minutes', 0.1,
            '--width', 64, '--height', 36, '--workers', 1)
    assert r.returncode == 0, r.stderr
    cat = Catalog.read(tmp_path / 'c' / 'catalog.csv')
    assert cat.df['group_id'].tolist() == ['show_0', 'show_0'] and (cat.df['width'] == 64).all()
    r = run('corpus', tmp_path / 'd', '--height', 35)
    assert r.returncode == 2 and "'height' must be even" in r.stderr
    r = run('esc50', tmp_path / 'e', '--classes', 'bounce', 'roll')
    assert r.returncode == 2 and "invalid choice: 'roll'" in r.stderr
