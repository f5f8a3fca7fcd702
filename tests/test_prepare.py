"""Preparation on real clips with real worker processes: what it writes, what it rejects, resuming, sharding, the
command-line tool, and the dataset reading the result."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from avss.catalog import Catalog
from avss.datasets import SnippetDataset
from avss.decode import MediaReader, _resize, open_mel, read_mel, read_snippet
from avss.prepare import merge_prepared, prepare, title_slug
from avss.segment import SnippetGrid
from avss.testing import write_clip
from avss.transforms import LogMel, to_model_inputs

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent/'shared'/'media'
needs_media = pytest.mark.skipif(not (MEDIA/'torchvision').is_dir(), reason=f'real test clips not found at {MEDIA}')


@pytest.fixture(scope='module')
def real(tmp_path_factory):
    "The real clips (copied: the media folder is read-only) plus a text file and a cut file, catalogued."
    if not (MEDIA/'torchvision').is_dir(): pytest.skip(f'real test clips not found at {MEDIA}')
    d = tmp_path_factory.mktemp('media')
    for sub in ('av_with_audio', 'torchvision'):
        for p in (MEDIA/sub).iterdir():
            if p.suffix in ('.mp4', '.mkv', '.avi'): shutil.copy(p, d/p.name)
    cat = Catalog.from_media(d, progress=False)
    mkv = d/'flipping_a_pancake.mkv'
    (d/'cut.mkv').write_bytes(mkv.read_bytes()[:mkv.stat().st_size // 2])
    (d/'text.mp4').write_text('not a video\n' * 100)
    rows = pd.concat([cat.df, cat.df[cat.df.title_id == 'flipping_a_pancake'].assign(title_id='cut', path=str(d/'cut.mkv')),
                      cat.df[cat.df.title_id == 'R6llTwEh07w'].assign(title_id='text', path=str(d/'text.mp4'))])
    return Catalog(rows)


@pytest.fixture(scope='module')
def prepared(real, tmp_path_factory):
    out = tmp_path_factory.mktemp('prepared')
    cat, report = prepare(real, out, short_side=190, workers=2, progress=False)
    return out, cat, report


@pytest.mark.media
def test_rejections(prepared):
    out, cat, report = prepared
    why = report.set_index('title_id')['reason']
    assert sorted(cat.df['title_id']) == sorted(['R6llTwEh07w', 'SOX5yA1l24A', 'WUzgd7C1pWA', 'flipping_a_pancake',
                                                 'v_GGSY1Qvo990', 'v_ZNVhz7ctTq0'])
    assert why['v_SoccerJuggling_g23_c01'] == 'no audio stream'
    assert why['TrumanShow_wave_f_nm_np1_fr_med_26'] == 'no audio stream; too short: 1.63 s < one snippet of 3.2 s'
    assert why['cut'].startswith('truncated: the video ends at'), why['cut']
    assert why['text'].startswith('corrupt: ') and 'not a readable media file' in why['text']
    assert len(cat) + len(report) == 14
    assert pd.read_csv(out/'rejected.csv')['title_id'].tolist() == report['title_id'].tolist()
    assert Catalog.read(out/'catalog.csv').df.equals(cat.df)


@pytest.mark.media
def test_prepared_video(prepared, real):
    "5 fps, shorter side 190, a keyframe at every snippet start, and the frames read_snippet picks from the source."
    _, cat, _ = prepared
    for row in cat.df.itertuples():
        src = real.df.set_index('title_id').loc[row.title_id, 'path']
        with MediaReader(row.path) as r:                    # read as a source file (decord or PyAV)
            v = r.video_reader
            assert v.avg_fps == 5.0 and min(r.video(0.0, 1, 5).shape[1:3]) == 190
            assert v.key_indices.tolist() == list(range(0, len(v.timestamps), 16))
            assert len(v.timestamps) == int(np.floor(row.duration_s * 5 + 1e-6))
            for m in range(SnippetGrid(cat).count(row.Index)):
                ours = r.video(m * 3.2, 16, 5).astype(np.float32)
                theirs, _ = read_snippet(src, m * 3.2)      # at the source's size, scaled as the prepared video is
                theirs = _resize(theirs, ours.shape[2:0:-1]).astype(np.float32)
                err = np.abs(ours - theirs).mean((1, 2, 3))
                shifted = np.abs(ours[1:] - theirs[:-1]).mean((1, 2, 3))   # the neighbouring frames, for scale
                assert err.max() < 8 and err.mean() < shifted.mean(), (row.title_id, m, err, shifted)


@pytest.mark.media
def test_prepared_mel(prepared, real):
    "float16 [frames, 96] with its parameters; snippet m's slice is the log-mel of the snippet's audio."
    _, cat, _ = prepared
    lm = LogMel()
    for row in cat.df.itertuples():
        mel = open_mel(row.mel_path, expect=lm.params)
        meta = json.loads(Path(row.mel_path).with_suffix('.json').read_text())
        assert mel.dtype == np.float16 and mel.shape == (meta['frames'], 96) and meta['frames'] == meta['samples'] // 512 + 1
        src = real.df.set_index('title_id').loc[row.title_id, 'path']
        for m in range(SnippetGrid(cat).count(row.Index)):
            _, audio = read_snippet(src, m * 3.2)
            want = lm(torch.from_numpy(audio)[None])[0].numpy()
            got = read_mel(mel, m * 300)
            tol = 0.05 if not row.title_id.startswith('flipping') else 1.0   # Matroska: aligned to 1 ms only
            inner = np.abs(got[..., 2:-2] - want[..., 2:-2])
            assert np.median(inner) < tol / 5 and np.percentile(inner, 99) < 10 * tol, (row.title_id, m)


@pytest.mark.media
def test_resume_skips_finished_titles(prepared, real):
    out, cat, report = prepared
    marks = {p: p.stat().st_mtime_ns for p in (out/'titles').glob('*/*.json')}
    again, report2 = prepare(real, out, short_side=190, workers=2, progress=False)
    assert again.df.equals(cat.df) and report2.equals(report)
    assert {p: p.stat().st_mtime_ns for p in (out/'titles').glob('*/*.json')} == marks


def test_interrupted_title_is_redone(tmp_path):
    "A title without its done marker (killed mid-way) is prepared again; leftovers are replaced."
    clip = write_clip(tmp_path/'a.mp4', seconds=4.0)
    cat = Catalog.from_media([clip], progress=False)
    prepare(cat, tmp_path/'out', short_side=64, workers=1, progress=False)
    d = tmp_path/'out'/'titles'/title_slug('a')
    (d/'done.json').unlink()
    (d/'video.mp4').write_bytes(b'half')
    again, _ = prepare(cat, tmp_path/'out', short_side=64, workers=1, progress=False)
    assert (d/'done.json').is_file() and len(again) == 1
    with MediaReader(again.paths[0]) as r: assert len(r.timestamps) == 20
    other, _ = prepare(cat, tmp_path/'out', short_side=32, workers=1, progress=False)   # new settings: redone
    with MediaReader(other.paths[0]) as r: assert r.video(0.0, 2, 5).shape == (2, 32, 48, 3)


def test_shards_and_merge(tmp_path):
    clips = [write_clip(tmp_path/'src'/f'{i}.mp4', seconds=3.5, size=(64, 48)) for i in range(6)]
    cat = Catalog.from_media(clips, progress=False)
    got = [prepare(cat, tmp_path/'out', short_side=48, workers=1, shard=i, num_shards=3, progress=False)[0] for i in range(3)]
    ids = sum((g.df['title_id'].tolist() for g in got), [])
    assert sorted(ids) == sorted(cat.df['title_id']) and len(set(ids)) == 6
    merged, report = merge_prepared(tmp_path/'out')
    assert merged.df['title_id'].tolist() == sorted(cat.df['title_id']) and report.empty
    assert Catalog.read(tmp_path/'out'/'catalog.csv').df.equals(merged.df)


def test_command_line(tmp_path):
    write_clip(tmp_path/'films'/'heat.mp4', seconds=3.5, size=(64, 48))
    write_clip(tmp_path/'films'/'friends'/'e1.mp4', seconds=3.5, size=(64, 48))
    write_clip(tmp_path/'films'/'silent.mp4', seconds=3.5, size=(64, 48), audio=False)
    (tmp_path/'meta.csv').write_text('path,group_id,kind,genre\ne1.mp4,friends,episode,comedy\n')
    run = lambda *a: subprocess.run([sys.executable, str(ROOT/'data_scripts'/'prepare.py'), *map(str, a)],
                                    capture_output=True, text=True, timeout=600)
    r = run('--media', tmp_path/'films', '--meta', tmp_path/'meta.csv', '--out', tmp_path/'out', '--short-side', 48,
            '--workers', 1, '--no-progress')
    assert r.returncode == 0, r.stderr
    assert 'prepared 2 titles' in r.stdout and 'rejected 1: no audio stream (1)' in r.stdout
    cat = Catalog.read(tmp_path/'out'/'catalog.csv')
    assert cat.df.set_index('title_id').loc['friends/e1', ['group_id', 'kind', 'genre']].tolist() == ['friends', 'episode', 'comedy']
    r = run('--out', tmp_path/'out', '--short-side', 47)
    assert r.returncode == 2 and 'give --catalog or --media' in r.stderr


@pytest.mark.media
def test_dataset_on_prepared_titles(prepared):
    "A DataLoader with worker processes over prepared titles gives batches the model takes."
    from torch.utils.data import DataLoader
    _, cat, _ = prepared
    grid = SnippetGrid(cat)
    ds = SnippetDataset(cat, grid, train=True, short_side=190, crop=158)
    keys = [(n, m, 1000 * n + m) for n in range(len(cat)) for m in range(grid.count(n))]
    batches = [keys[i:i + 4] for i in range(0, len(keys), 4)]
    seen = []
    for b in DataLoader(ds, batch_sampler=batches, num_workers=2):
        assert b['video'].shape[1:] == (3, 16, 158, 158) and b['mel'].shape[1:] == (1, 96, 300)
        v, a = to_model_inputs(b, 'cpu', train=True, sigma=0.5)
        assert v.shape == b['video'].shape and a.shape == b['mel'].shape and torch.isfinite(v).all()
        seen += list(zip(b['title'].tolist(), b['index'].tolist()))
    assert seen == [k[:2] for k in keys]
