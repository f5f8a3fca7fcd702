"""`avss embed` on real third-party clips (../shared/media): rows per title, the same numbers twice, one-sided files.

The model is a randomly initialised tiny one at a 32x32 crop, saved as a finished run saves it (checkpoints/last.pt,
encoders.pt of the same step, params.json): what is tested is the reading, cutting and bookkeeping, not the weights.
"""
import json
import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from avss.catalog import probe
from avss.cli import main
from avss.embed import embed_file, embed_media
from avss.models import AVModel, save_encoders
from avss.rundir import RunDir
from avss.train import checkpoint_state, make_optimizer
from avss.pretrain_config import PretrainConfig, run_preset

MEDIA = Path(__file__).resolve().parent.parent.parent/'shared'/'media'
pytestmark = [pytest.mark.media,
              pytest.mark.skipif(not (MEDIA/'av_with_audio').is_dir(), reason=f'real test clips not found at {MEDIA}')]

LONGEST = MEDIA/'av_with_audio'/'v_GGSY1Qvo990.mp4'           # 18 s, H.264 at 19.62 fps + AAC 44.1 kHz
SILENT = MEDIA/'torchvision'/'v_SoccerJuggling_g23_c01.avi'   # 8 s, Xvid, no audio stream
KEYS = ['start_s', 'video', 'audio', 'video_features', 'audio_features']


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A finished run of a randomly initialised tiny model at crop 32 (short side 40)."
    d = tmp_path_factory.mktemp('run')
    p = PretrainConfig.resolve(dict(preset='tiny', crop=32, short_side=40))
    torch.manual_seed(0)
    model = AVModel(run_preset(p))
    opt = make_optimizer(model, 1e-3, 0.0)
    RunDir(d).save_checkpoint(checkpoint_state(7, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0), {}, p))
    (d/'params.json').write_text(json.dumps(p.to_params()))
    save_encoders(model, d/'encoders.pt', params=p.to_params(), step=7)
    return d


def loop_clip(src: Path, dst: Path, seconds: float) -> Path:
    "`src` played end to end until `seconds`, stream-copied (the same real frames and sound, nothing re-encoded)."
    with av.open(str(src)) as c: length = c.duration / 1e6
    with av.open(str(dst), 'w') as out:
        streams, t = None, 0.0
        while t < seconds:
            with av.open(str(src)) as inp:
                if streams is None: streams = {s.index: out.add_stream_from_template(s) for s in inp.streams
                                               if s.type in ('video', 'audio')}
                for pkt in inp.demux():
                    s = pkt.stream
                    if pkt.dts is None or s.index not in streams: continue
                    if t + float((pkt.pts if pkt.pts is not None else pkt.dts) * s.time_base) >= seconds: continue
                    shift = int(t / s.time_base)
                    pkt.pts, pkt.dts = (pkt.pts + shift if pkt.pts is not None else None), pkt.dts + shift
                    pkt.stream = streams[s.index]
                    out.mux(pkt)
            t += length
    return dst


@pytest.fixture(scope='module')
def clip30(tmp_path_factory):
    "A 30-second real clip: the 18-second ActivityNet sample played one and a half times."
    return loop_clip(LONGEST, tmp_path_factory.mktemp('media')/'activitynet30.mp4', 30.0)


def rows(d: dict) -> dict:
    return {k: len(v) for k, v in d.items() if k in KEYS}


def test_thirty_seconds_give_nine_rows(run_dir, clip30, tmp_path, capsys):
    duration = probe(clip30)['duration_s']
    assert 29.5 < duration < 30.5
    assert main(['embed', str(clip30), '--checkpoint', str(run_dir), '--out', str(tmp_path), '--no-progress']) == 0
    out = capsys.readouterr().out
    assert 'tiny preset, encoders and heads' in out and 'activitynet30' in out
    with np.load(tmp_path/'activitynet30.npz') as f:
        assert rows(f) == {k: 9 for k in KEYS} == {k: math.floor(duration / 3.2) for k in KEYS}
        np.testing.assert_allclose(f['start_s'], np.arange(9) * 3.2)
        assert f['video'].shape == f['audio'].shape == (9, 512)
        assert f['video_features'].shape == f['audio_features'].shape == (9, 32)
        assert np.isfinite(f['video']).all() and np.isfinite(f['audio']).all()
        assert str(f['title_id']) == 'activitynet30'
        # snippets differ from each other: each row is its own part of the clip
        assert np.abs(np.diff(f['video_features'], axis=0)).max(1).min() > 0


def test_console_script(run_dir, tmp_path):
    "The installed `avss` command, in its own process, on the 18-second clip: floor(18.04 / 3.2) = 5 rows."
    exe = Path(sys.executable).parent/'avss'
    assert exe.is_file(), f'{exe} missing: install the package with pip install -e .'
    r = subprocess.run([str(exe), 'embed', str(LONGEST), '--checkpoint', str(run_dir), '--out', str(tmp_path),
                        '--device', 'cpu'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert '1 of 1 title(s), 5 snippets' in r.stdout
    assert 'embed' in r.stderr and '5/5' in r.stderr                  # the progress bar
    n = math.floor(probe(LONGEST)['duration_s'] / 3.2)
    with np.load(tmp_path/'v_GGSY1Qvo990.npz') as f:
        assert n == 5 and rows(f) == {k: n for k in KEYS}
        saved = {k: f[k] for k in KEYS}
    again = embed_file(LONGEST, run_dir, device='cpu')          # the same numbers from the function, in this process
    assert all(np.array_equal(saved[k], again[k]) for k in KEYS)


def test_twice_the_same_numbers(run_dir, clip30):
    a = embed_file(clip30, run_dir, batch_size=4)
    b = embed_file(clip30, run_dir, batch_size=4)
    assert list(a) == KEYS
    assert all(np.array_equal(a[k], b[k]) for k in KEYS)


def test_rows_of_every_clip_with_sound(run_dir, tmp_path):
    table = embed_media(MEDIA/'av_with_audio', run_dir, tmp_path, progress=False).set_index('title_id')
    for name in ('v_GGSY1Qvo990', 'v_ZNVhz7ctTq0', 'flipping_a_pancake'):
        path = next((MEDIA/'av_with_audio').glob(name + '.*'))
        n = math.floor(probe(path)['duration_s'] / 3.2 + 1e-6)
        assert table.loc[name, 'snippets'] == n and table.loc[name, 'sides'] == 'video + audio'
        with np.load(tmp_path/f'{name}.npz') as f:
            assert rows(f) == {k: n for k in KEYS}


def test_file_without_audio_gives_video_only(run_dir, tmp_path, capsys):
    with pytest.warns(UserWarning, match='no audio stream: video only'):
        r = embed_file(SILENT, run_dir)
    assert list(r) == ['start_s', 'video', 'video_features']
    assert len(r['video']) == math.floor(probe(SILENT)['duration_s'] / 3.2) == 2
    assert main(['embed', str(SILENT), '--checkpoint', str(run_dir), '--out', str(tmp_path), '--no-progress']) == 0
    captured = capsys.readouterr()
    assert 'warning: ' in captured.err and 'no audio stream: video only' in captured.err
    with np.load(tmp_path/'v_SoccerJuggling_g23_c01.npz') as f:
        assert sorted(f) == ['path', 'start_s', 'title_id', 'video', 'video_features']
        np.testing.assert_array_equal(f['video'], r['video'])
