"""Snippets per second per CPU core: random snippets (video + audio) read from a long H.264 source, and after `prepare`.

Makes its own source with PyAV: 720p H.264 + AAC, either a textured picture that pans and changes scene every few
seconds (`--source texture`, the default: fine noise at three scales, a worst case that costs several times the
bits per pixel of filmed content) or the real clips of a media folder played one after another and stretched to
720p (`--source real`, default folder ../shared/media). Then it times one process on one thread (decord
`num_threads=1`, `torch.set_num_threads(1)`) reading random snippets through `SnippetDataset`, exactly as a
data-loader worker does: directly from the source (with the installation's source-file reader, decord's where it
is installed, and with PyAV's `PyAVReader`), then from the prepared title (with that reader, and with the
one-seek PyAV path `SnippetDataset` uses for prepared titles). Each rate is given per second of wall-clock time
and per second of the process's CPU time; on a busy machine the second is the fairer "per core" figure.
Prints, asserts nothing.

    python data_scripts/bench_data.py                                 # a 2-minute source (a few minutes in all)
    python data_scripts/bench_data.py --minutes 10                    # the reference setting
    python data_scripts/bench_data.py --minutes 10 --source real      # filmed content
    python data_scripts/bench_data.py --minutes 10 --crf 26           # smaller, faster-to-decode prepared video
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def textured_picture(width: int, height: int, seed: int = 0, scene_s: float = 4.0, fps: float = 25.0):
    "picture(k, h, w): a panning multi-scale texture with a moving square; a new texture every `scene_s` seconds."
    rng = np.random.default_rng(seed)
    H, W = height + 256, width + 256

    def texture():
        img = np.zeros((H, W, 3), np.float32)
        for scale, amp in ((64, 90), (16, 50), (4, 25)):
            small = rng.uniform(-1, 1, (H // scale + 2, W // scale + 2, 3)).astype(np.float32)
            img += amp * np.repeat(np.repeat(small, scale, 0), scale, 1)[:H, :W]
        return np.clip(img + 128, 0, 255).astype(np.uint8)

    textures = [texture() for _ in range(4)]

    def picture(k, h, w):
        t = k / fps
        tex = textures[int(t // scene_s) % len(textures)]
        dy, dx = int(64 + 60 * np.sin(t / 3)), int((k * 3) % 256)
        frame = tex[dy:dy + h, dx:dx + w].copy()
        s = h // 6
        cy, cx = int((h - s) / 2 * (1 + np.sin(t))), int((w - s) / 2 * (1 + np.cos(0.7 * t)))
        frame[cy:cy + s, cx:cx + s] = (230, 40, 40)
        return frame

    return picture


def clip_picture(paths):
    "picture(k, h, w): the frames of the video files `paths`, one after another and looping, each stretched to h x w."
    from avss.catalog import open_media

    def frames():
        while True:
            for p in paths:
                with open_media(p) as c:
                    yield from c.decode(video=0)

    it = frames()
    return lambda k, h, w: next(it).reformat(width=w, height=h, format='rgb24').to_ndarray()


def real_clips(folder: Path) -> list:
    "The video files under `folder` (sorted), or an error naming the folder."
    paths = sorted(p for p in folder.rglob('*') if p.suffix.lower() in ('.mp4', '.mkv', '.avi'))
    if not paths: sys.exit(f'{folder}: no video files (.mp4, .mkv, .avi) for --source real')
    return paths


def time_reads(dataset, n: int, seed: int = 0) -> tuple[float, float]:
    "(per wall second, per CPU second) snippets read at random (each a new random title position) through `dataset`."
    rng = np.random.default_rng(seed)
    keys = [(0, int(m), int(s)) for m, s in zip(rng.integers(0, dataset.grid.count(0), n), rng.integers(0, 2**62, n))]
    dataset[keys[0]]                                      # open the readers once, outside the timing
    t, c = time.perf_counter(), time.process_time()
    for k in keys: dataset[k]
    return n / (time.perf_counter() - t), n / (time.process_time() - c)


def rates(wall_cpu) -> str:
    return f'{wall_cpu[0]:8.1f} snippets/s per core ({wall_cpu[1]:.1f} per CPU second)'


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--minutes', type=float, default=2.0, help='length of the source (default 2; the reference is 10)')
    ap.add_argument('--width', type=int, default=1280)
    ap.add_argument('--height', type=int, default=720)
    ap.add_argument('--fps', type=float, default=25.0, help='source frame rate')
    ap.add_argument('--short-side', type=int, default=190)
    ap.add_argument('--crop', type=int, default=158)
    ap.add_argument('--direct', type=int, default=30, help='random snippets to time from the source')
    ap.add_argument('--prepared', type=int, default=400, help='random snippets to time after preparation')
    ap.add_argument('--source', choices=('texture', 'real'), default='texture', help='what the source shows (see above)')
    ap.add_argument('--media', type=Path, default=Path(__file__).resolve().parents[1].parent/'shared'/'media',
                    help='folder of real clips for --source real')
    ap.add_argument('--crf', type=int, default=23, help='x264 quality of the prepared video (as data_scripts/prepare.py)')
    ap.add_argument('--prepare-threads', type=int, default=1, help='decoder and encoder threads of the preparation '
                    '(its speed is printed, not the benchmark; the reads are always timed on one thread)')
    ap.add_argument('--work-dir', type=Path, default=None, help='keep the files here (default: a temporary folder)')
    args = ap.parse_args(argv)

    from avss import decode
    from avss.catalog import Catalog
    from avss.datasets import SnippetDataset
    from avss.prepare import prepare
    from avss.segment import SnippetGrid
    from avss.testing import write_clip
    torch.set_num_threads(1)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix='bench_data_'))
    work.mkdir(parents=True, exist_ok=True)
    src = work/f'source_{args.source}_{args.height}p_{args.minutes:g}min.mp4'
    picture = (clip_picture(real_clips(args.media)) if args.source == 'real'
               else textured_picture(args.width, args.height, fps=args.fps))
    try:
        if not src.exists():
            t = time.perf_counter()
            print(f'writing a {args.minutes:g}-minute {args.width}x{args.height} {args.fps:g} fps H.264 + AAC source ...', flush=True)
            write_clip(src.with_suffix('.tmp.mp4'), seconds=args.minutes * 60, fps=args.fps, size=(args.width, args.height),
                       picture=picture,
                       options={'crf': '23', 'preset': 'veryfast'})
            src.with_suffix('.tmp.mp4').rename(src)
            print(f'  {src.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t:.0f} s')
        cat = Catalog.from_media([src], progress=False)

        installed = decode.SOURCE_READER                 # decord's reader where decord is installed, else PyAV's
        for reader in dict.fromkeys([installed, decode.PyAVReader]):
            decode.SOURCE_READER = reader                # the source-file reader open_video uses
            direct = SnippetDataset(cat, SnippetGrid(cat), train=True, short_side=args.short_side, crop=args.crop)
            rate = time_reads(direct, args.direct)
            direct.close()                               # an open decord reader keeps threads busy
            print(f'{"direct from the source, " + reader.__name__ + ":":38s} {rates(rate)} ({args.direct} random snippets)', flush=True)
            if reader is installed: direct_rate = rate
        decode.SOURCE_READER = installed

        t = time.perf_counter()
        out = work/f'prepared-{args.source}-crf{args.crf}'
        prepared, report = prepare(cat, out, short_side=args.short_side, workers=1,
                                   threads=args.prepare_threads, crf=args.crf)
        prep_s = time.perf_counter() - t
        if len(report): sys.exit(f'preparation rejected the source: {report.iloc[0].reason}')
        size = sum(p.stat().st_size for p in out.rglob('*') if p.is_file())
        print(f'preparation: {prep_s:.0f} s for {args.minutes:g} min ({args.minutes * 60 / prep_s:.1f}x real time, '
              f'{args.prepare_threads} thread(s)), {size / 2**20:.1f} MiB', flush=True)

        grid = SnippetGrid(prepared)
        for fast, label in ((False, f'after preparation, {installed.__name__}:'), (True, 'after preparation, one seek:')):
            ready = SnippetDataset(prepared, grid, train=True, short_side=args.short_side, crop=args.crop, fast_prepared=fast)
            ready_rate = time_reads(ready, args.prepared)
            ready.close()
            print(f'{label:38s} {rates(ready_rate)} ({args.prepared} random snippets)', flush=True)
        print(f'speed-up: {ready_rate[0] / direct_rate[0]:.0f}x')
    finally:
        if args.work_dir is None: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
