"""decord is optional: where `import decord` fails (Linux aarch64 and macOS arm64 have no decord wheels), source
files are read by `PyAVReader`. A subprocess with decord hidden reads every real test clip (../shared/media) and
detects the shots of three of them; where decord is installed, the same reads through decord must pick the same
frame times and give the same pixels and audio, and the same cuts.

Pixels are identical for H.264; the MPEG-4 part 2 AVI clips may differ by 2 levels in under 1 pixel in 1,000,
because the two decode them with different FFmpeg versions (decord's 4.1, PyAV's 8), whatever the scaling.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from avss.catalog import open_media, probe
from avss.decode import MediaReader, frame_indices

ROOT = Path(__file__).resolve().parent.parent
MEDIA = ROOT.parent/'shared'/'media'
CLIPS = sorted(str(p.relative_to(MEDIA)) for d in ('av_with_audio', 'torchvision') if (MEDIA/d).is_dir()
               for p in (MEDIA/d).iterdir() if p.suffix in ('.mp4', '.mkv', '.avi'))
SCENE_CLIPS = ['torchvision/SOX5yA1l24A.mp4', 'torchvision/TrumanShow_wave_f_nm_np1_fr_med_26.avi',
               'av_with_audio/v_ZNVhz7ctTq0.mp4']                 # 3 cuts; 1 cut in an AVI read in order; 1 jump cut
MPEG4_TOLERANCE = 2, 1e-3                                         # max level difference, fraction of pixels
pytestmark = [pytest.mark.media,
              pytest.mark.skipif(len(CLIPS) < 12, reason=f'real test clips not found at {MEDIA}')]

HIDE_DECORD = f"""
import sys
sys.modules['decord'] = None                 # `import decord` now fails, as where decord has no wheels
sys.path.insert(0, {str(Path(__file__).parent)!r})
import numpy as np, test_decord_optional as t
arrays, meta = t.read_clips()
np.savez(sys.argv[1], **arrays)
print(t.json.dumps(meta))
"""


def read_clips() -> tuple[dict, dict]:
    "({key: array} frames, frame times and audio; {key: value} readers and cuts) of the test clips, as avss reads them."
    import avss.decode
    from avss.scenes import detect_scenes
    arrays, meta = {}, {'SOURCE_READER': avss.decode.SOURCE_READER.__name__}
    for name in CLIPS:
        info = probe(MEDIA/name)
        end = info['duration_s']
        for side, starts in ((None, (0.0, end / 2)), (190, (end / 3 + 0.13, end - 0.7))):   # the last: past the end
            with MediaReader(MEDIA/name, short_side=side) as r:
                meta[f'{name} {side} reader'] = type(r.video_reader).__name__
                arrays[f'{name} {side} times'] = r.timestamps
                starts_16 = np.random.default_rng(0).uniform(0, end, 20)
                arrays[f'{name} {side} picked'] = np.stack([r.timestamps[frame_indices(r.timestamps, s, 16, 5)] for s in starts_16])
                for k, start in enumerate(starts):
                    arrays[f'{name} {side} video {k}'] = r.video(start, 8, 5)
                    if side is None and info['has_audio']:
                        arrays[f'{name} {side} audio {k}'] = r.audio(start, 3.2)
    for name in SCENE_CLIPS: meta[f'{name} cuts'] = detect_scenes(MEDIA/name)
    return arrays, meta


@pytest.fixture(scope='module')
def without_decord(tmp_path_factory):
    "What avss reads with decord hidden, in a subprocess: (arrays, meta)."
    out = tmp_path_factory.mktemp('no_decord')/'read.npz'
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    r = subprocess.run([sys.executable, '-c', HIDE_DECORD, str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    with np.load(out) as f: arrays = dict(f)
    out.unlink()
    return arrays, json.loads(r.stdout.strip().splitlines()[-1])


def test_without_decord_source_files_read_through_pyav(without_decord):
    arrays, meta = without_decord
    assert meta['SOURCE_READER'] == 'PyAVReader'
    readers = {k: v for k, v in meta.items() if k.endswith(' reader')}
    assert set(readers.values()) == {'PyAVReader', 'SequentialReader'}
    assert [k for k, v in readers.items() if v == 'SequentialReader' and ' None ' in k] == \
        [f'{n} None reader' for n in CLIPS if n.endswith('.avi') and 'SoccerJuggling' not in n]   # packed B-frames
    video = arrays['torchvision/SOX5yA1l24A.mp4 190 video 0']
    assert video.shape == (8, 190, 252, 3) and video.dtype == np.uint8


def test_pyav_reads_what_decord_reads(without_decord):
    "The same readers, frame times and audio; the same pixels (MPEG-4 part 2: within MPEG4_TOLERANCE)."
    pytest.importorskip('decord')
    pyav, pyav_meta = without_decord
    ours, meta = read_clips()
    assert meta['SOURCE_READER'] == 'DecordReader'
    assert {k: v.replace('DecordReader', 'PyAVReader') for k, v in meta.items() if k.endswith(' reader')} == \
        {k: v for k, v in pyav_meta.items() if k.endswith(' reader')}
    assert ours.keys() == pyav.keys()
    print(f'\n{"clip":72s} {"codec":6s} {"max |diff|":>10s} {"differ":>9s} {"audio max |diff|":>16s}')
    for name in CLIPS:
        for kind in ('times', 'picked'):
            for side in (None, 190): assert np.array_equal(ours[f'{name} {side} {kind}'], pyav[f'{name} {side} {kind}']), name
        videos = [k for k in ours if k.startswith(f'{name} ') and ' video ' in k]
        diff = np.concatenate([np.abs(ours[k].astype(np.int16) - pyav[k]).ravel() for k in videos])
        audio = [np.abs(ours[k] - pyav[k]).max() for k in ours if k.startswith(f'{name} ') and ' audio ' in k]
        with open_media(MEDIA/name) as c: codec = c.streams.video[0].codec_context.name
        print(f'{name:72s} {codec:6s} {diff.max():10d} {(diff > 0).mean():9.2e} {max(audio, default=float("nan")):16.3g}')
        assert all(a == 0 for a in audio), name                    # the same AudioReader on both paths
        if codec == 'h264' or any(meta[f'{name} {s} reader'] == 'SequentialReader' for s in (None, 190)):
            assert diff.max() == 0, name
        else:
            assert diff.max() <= MPEG4_TOLERANCE[0] and (diff > 0).mean() < MPEG4_TOLERANCE[1], (name, diff.max())


def test_scene_cuts_without_decord(without_decord):
    "Shot detection gives the same cuts with decord hidden."
    _, pyav_meta = without_decord
    assert len(pyav_meta['torchvision/SOX5yA1l24A.mp4 cuts']) == 3
    pytest.importorskip('decord')
    from avss.scenes import detect_scenes
    for name in SCENE_CLIPS: assert detect_scenes(MEDIA/name) == pyav_meta[f'{name} cuts'], name
