"""Decoding real third-party clips (../shared/media): probing, frame timing, audio length and rate, clear errors.

The reference for every check is decoded here independently with PyAV: the whole video stream frame by frame,
the whole audio track in one go (resampled once with torchaudio).
"""
import shutil
from pathlib import Path

import numpy as np
import pytest

from avss.catalog import Catalog, ProbeError, open_media, probe
from avss.decode import (SOURCE_READER, AudioReader, DecodeError, MediaReader, PreparedReader, SequentialReader,
                         frame_indices, open_video, read_snippet, read_track)

MEDIA = Path(__file__).resolve().parent.parent.parent/'shared'/'media'
pytestmark = [pytest.mark.media,
              pytest.mark.skipif(not (MEDIA/'torchvision').is_dir(), reason=f'real test clips not found at {MEDIA}')]

WITH_AUDIO = ['torchvision/R6llTwEh07w.mp4', 'torchvision/SOX5yA1l24A.mp4', 'torchvision/WUzgd7C1pWA.mp4',
              'av_with_audio/flipping_a_pancake.mkv', 'av_with_audio/v_GGSY1Qvo990.mp4', 'av_with_audio/v_ZNVhz7ctTq0.mp4']
NO_AUDIO = ['torchvision/RATRACE_wave_f_nm_np1_fr_goo_37.avi', 'torchvision/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi',
            'torchvision/TrumanShow_wave_f_nm_np1_fr_med_26.avi',
            'torchvision/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi',
            'torchvision/v_SoccerJuggling_g23_c01.avi', 'torchvision/v_SoccerJuggling_g24_c01.avi']


def pyav_frames(path):
    "(RGB frames, timestamps in s since the first frame) of the whole video stream, in decoding order."
    with open_media(path) as c:
        s = c.streams.video[0]
        t0 = float((s.start_time or 0) * s.time_base)
        frames, ts = zip(*[(f.to_ndarray(format='rgb24'), f.time) for f in c.decode(s)])
    return np.stack(frames), np.array(ts) - t0


@pytest.mark.parametrize('name, fps, size, rate', [
    ('av_with_audio/v_GGSY1Qvo990.mp4', 19.62, (320, 240), 44100),
    ('av_with_audio/flipping_a_pancake.mkv', 30.0, (426, 240), 48000),
    ('torchvision/R6llTwEh07w.mp4', 30.0, (340, 256), 44100),
    ('torchvision/SOX5yA1l24A.mp4', 30000 / 1001, (340, 256), 48000),
    ('torchvision/v_SoccerJuggling_g23_c01.avi', 30000 / 1001, (320, 240), None)])
def test_probe(name, fps, size, rate):
    p = probe(MEDIA/name)
    assert p['fps'] == pytest.approx(fps, abs=1e-3)
    assert (p['width'], p['height']) == size
    assert p['has_audio'] == (rate is not None)
    assert (p['sample_rate'] if rate else None) == rate
    with open_media(MEDIA/name) as c:                # the shorter stream bounds the duration
        assert 0 < p['duration_s'] <= c.duration / 1e6 + 1e-6


def test_catalog_and_usable():
    cat = Catalog.from_media([MEDIA/'av_with_audio', MEDIA/'torchvision'], progress=False)
    assert len(cat) == 12 and cat.rejected.empty
    ok, report = cat.usable()
    assert sorted(ok.df['title_id']) == sorted(Path(n).stem for n in WITH_AUDIO)
    why = report.set_index('title_id')['reason']
    assert why['v_SoccerJuggling_g23_c01'] == 'no audio stream'
    assert why['TrumanShow_wave_f_nm_np1_fr_med_26'] == 'no audio stream; too short: 1.63 s < one snippet of 3.2 s'
    from avss.segment import SnippetGrid
    counts = dict(zip(ok.df['title_id'], SnippetGrid(ok).counts))
    assert counts['v_GGSY1Qvo990'] == 5 and counts['R6llTwEh07w'] == 3   # 18.04 s and 10.00 s


@pytest.mark.parametrize('name', WITH_AUDIO + NO_AUDIO)
def test_frame_timing(name):
    "Frame k of a snippet is the source frame nearest to start + k/fps, for random starts read in random order."
    frames, ts = pyav_frames(MEDIA/name)
    rng = np.random.default_rng(0)
    with MediaReader(MEDIA/name) as r:
        if isinstance(r.video_reader, SequentialReader):  # AVI with packed B-frames: no usable timestamps, frames in order
            ts = np.arange(len(frames)) / probe(MEDIA/name)['fps']
        for start in rng.uniform(0, ts[-1] + 0.5, 6):
            video = r.video(start, 16, 5)
            assert video.shape == (16, *frames.shape[1:]) and video.dtype == np.uint8
            want = frame_indices(ts, start, 16, 5)
            err = [np.abs(v.astype(np.int16) - frames[i]).mean() for v, i in zip(video, want)]
            assert max(err) < 0.5, (start, err)



SEQUENTIAL = ['torchvision/RATRACE_wave_f_nm_np1_fr_goo_37.avi', 'torchvision/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi',
              'torchvision/TrumanShow_wave_f_nm_np1_fr_med_26.avi',
              'torchvision/hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi']


@pytest.mark.parametrize('name', WITH_AUDIO + NO_AUDIO)
def test_one_path_per_file(name):
    "The video path is chosen when the file opens: the source reader (decord, or PyAV without it) where it can "
    "seek, in order where it cannot; read as a prepared title (none of these is one: not 5 fps), a file is "
    "handed over to that same path."
    with open_video(MEDIA/name) as r, open_video(MEDIA/name, prepared=True) as p:
        assert type(r) is (SequentialReader if name in SEQUENTIAL else SOURCE_READER)
        assert type(p.reader) is PreparedReader and not p.handed_over
        assert np.array_equal(p.video(1.0, 16, 5), r.video(1.0, 16, 5))
        assert p.handed_over and type(p.reader) is type(r)
    if name in NO_AUDIO:
        with pytest.raises(DecodeError, match=f'{Path(name).name}: no audio stream'):
            AudioReader(MEDIA/name)

def test_frame_timing_odd_rate_is_not_floor():
    "At 19.62 fps the nearest frame often differs from the one at or before the target: the check above can fail."
    ts = np.arange(356) / 19.62
    nearest = frame_indices(ts, 1.0, 16, 5)
    floor = np.searchsorted(ts, 1.0 + np.arange(16) / 5, side='right') - 1
    assert (nearest != floor).sum() >= 4


@pytest.mark.parametrize('name', WITH_AUDIO)
def test_audio(name):
    "Mono, 48 kHz, exactly 3.2 s, equal to the same slice of the whole track (to the container's timestamp precision)."
    track = read_track(MEDIA/name)
    exact = not name.endswith('.mkv')               # Matroska stores times in milliseconds
    rng = np.random.default_rng(1)
    with MediaReader(MEDIA/name) as r:
        for start in [0.0, *rng.uniform(0, len(track) / 48000 - 3.2, 4)]:
            a = r.audio(start, 3.2, 48000)
            assert a.shape == (153600,) and a.dtype == np.float32
            j = int(round(start * 48000))
            if exact:
                np.testing.assert_allclose(a, track[j:j + 153600], atol=1e-4)
            else:
                ref = track[max(j - 96, 0):j + 153600 + 96]
                lag = np.argmax([np.dot(a[1000:-1000], ref[l + 1000:l + 152600]) for l in range(len(ref) - 153600)])
                assert abs(lag - (j - max(j - 96, 0))) <= 48, lag    # within 1 ms


def test_audio_rate_and_tail():
    "44.1 kHz input comes out at 48 kHz with the source's pitch; past the end of the track it is zero-padded."
    name = MEDIA/'torchvision/R6llTwEh07w.mp4'
    with open_media(name) as c:                     # the source's spectral peak at its own rate
        x = np.concatenate([f.to_ndarray()[0] for f in c.decode(c.streams.audio[0])])[:44100 * 3]
    peak_src = np.argmax(np.abs(np.fft.rfft(x))) * 44100 / len(x)
    _, a = read_snippet(name, 0.0)
    peak = np.argmax(np.abs(np.fft.rfft(a[:48000 * 3]))) * 48000 / (48000 * 3)
    assert abs(peak - peak_src) < 2.0
    _, tail = read_snippet(name, 8.0)                # the track ends near 10.0 s
    assert np.abs(tail[int(2.2 * 48000):]).max() == 0 and np.abs(tail[:48000]).max() > 0


def test_short_clip_and_no_audio():
    short = MEDIA/'torchvision/TrumanShow_wave_f_nm_np1_fr_med_26.avi'   # 1.63 s, no audio
    with pytest.raises(DecodeError, match='TrumanShow.*no audio stream'):
        read_snippet(short, 0.0)
    with MediaReader(short) as r:
        video = r.video(0.0, 16, 5)
    assert video.shape[0] == 16 and (video[-1] == video[-8]).all()       # clipped at the last frame


def test_short_side():
    video, _ = read_snippet(MEDIA/'torchvision/SOX5yA1l24A.mp4', 1.0, short_side=190)
    assert video.shape == (16, 190, 252, 3)                               # 340x256 → 252x190
    video, _ = read_snippet(MEDIA/'av_with_audio/flipping_a_pancake.mkv', 1.0, short_side=76)
    assert video.shape == (16, 76, 135, 3)


@pytest.fixture
def corrupt(tmp_path):
    good = MEDIA/'torchvision/SOX5yA1l24A.mp4'
    (tmp_path/'truncated.mp4').write_bytes(good.read_bytes()[:good.stat().st_size // 2])
    (tmp_path/'zero.mp4').touch()
    (tmp_path/'text.mp4').write_text('this is not a video\n' * 200)
    mkv = MEDIA/'av_with_audio/flipping_a_pancake.mkv'
    (tmp_path/'truncated.mkv').write_bytes(mkv.read_bytes()[:mkv.stat().st_size // 2])
    return tmp_path


@pytest.mark.parametrize('name, probe_msg', [('truncated.mp4', 'not a readable media file'), ('zero.mp4', 'empty file'),
                                             ('text.mp4', 'not a readable media file'), ('truncated.mkv', 'truncated')])
def test_corrupt_inputs(corrupt, name, probe_msg):
    with pytest.raises(ProbeError, match=f'{name}: .*{probe_msg}'):
        probe(corrupt/name)
    if name != 'truncated.mkv':                      # a cut Matroska file still gives its first half
        with pytest.raises(DecodeError, match=name):
            read_snippet(corrupt/name, 0.0)
    cat = Catalog.from_media([corrupt/name], progress=False)
    assert len(cat) == 0 and cat.rejected['path'].tolist() == [str(corrupt/name)]


def test_media_folder_is_left_alone(tmp_path):
    "Readers never write next to the media (the folder is read-only in CI): a copy decodes the same."
    src = MEDIA/'av_with_audio/v_GGSY1Qvo990.mp4'
    before = sorted(p.name for p in src.parent.iterdir())
    shutil.copy(src, tmp_path/src.name)
    v1, a1 = read_snippet(src, 2.0)
    v2, a2 = read_snippet(tmp_path/src.name, 2.0)
    assert np.array_equal(v1, v2) and np.array_equal(a1, a2)
    assert sorted(p.name for p in src.parent.iterdir()) == before
