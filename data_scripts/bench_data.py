"""Snippets per second per CPU core: random snippets (video + audio) read from a long H.264 source, and after `prepare`.

Makes its own source with PyAV: 720p H.264 + AAC, a textured picture that pans and changes scene every few
seconds (so it compresses like video, not like a flat colour), then times one process on one thread
(decord `num_threads=1`, `torch.set_num_threads(1)`) reading random snippets through `SnippetDataset`, exactly
as a data-loader worker does: directly from the source, then from the prepared title (with decord, and with the
one-seek PyAV path `SnippetDataset` uses for prepared titles). Prints, asserts nothing.

    python data_scripts/bench_data.py                # a 2-minute source (a few minutes in all)
    python data_scripts/bench_data.py --minutes 10   # the reference setting
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


def time_reads(dataset, n: int, seed: int = 0) -> float:
    "Snippets per second reading `n` random snippets (each a new random title position) through `dataset`."
    rng = np.random.default_rng(seed)
    keys = [(0, int(m), int(s)) for m, s in zip(rng.integers(0, dataset.grid.count(0), n), rng.integers(0, 2**62, n))]
    dataset[keys[0]]                                      # open the readers once, outside the timing
    t = time.perf_counter()
    for k in keys: dataset[k]
    return n / (time.perf_counter() - t)


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
    ap.add_argument('--prepare-threads', type=int, default=1, help='decoder and encoder threads of the preparation '
                    '(its speed is printed, not the benchmark; the reads are always timed on one thread)')
    ap.add_argument('--work-dir', type=Path, default=None, help='keep the files here (default: a temporary folder)')
    args = ap.parse_args(argv)

    from avss.catalog import Catalog, write_clip
    from avss.datasets import SnippetDataset
    from avss.segment import SnippetGrid, prepare
    torch.set_num_threads(1)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix='bench_data_'))
    work.mkdir(parents=True, exist_ok=True)
    src = work/f'source_{args.height}p_{args.minutes:g}min.mp4'
    try:
        if not src.exists():
            t = time.perf_counter()
            print(f'writing a {args.minutes:g}-minute {args.width}x{args.height} {args.fps:g} fps H.264 + AAC source ...', flush=True)
            write_clip(src.with_suffix('.tmp.mp4'), seconds=args.minutes * 60, fps=args.fps, size=(args.width, args.height),
                       picture=textured_picture(args.width, args.height, fps=args.fps),
                       options={'crf': '23', 'preset': 'veryfast'})
            src.with_suffix('.tmp.mp4').rename(src)
            print(f'  {src.stat().st_size / 2**20:.1f} MiB in {time.perf_counter() - t:.0f} s')
        cat = Catalog.from_media([src], progress=False)

        direct = SnippetDataset(cat, SnippetGrid(cat), train=True, short_side=args.short_side, crop=args.crop)
        direct_rate = time_reads(direct, args.direct)
        print(f'direct from the source:  {direct_rate:8.1f} snippets/s per core ({args.direct} random snippets)', flush=True)

        t = time.perf_counter()
        prepared, report = prepare(cat, work/'prepared', short_side=args.short_side, workers=1,
                                   threads=args.prepare_threads)
        prep_s = time.perf_counter() - t
        if len(report): sys.exit(f'preparation rejected the source: {report.iloc[0].reason}')
        size = sum(p.stat().st_size for p in (work/'prepared').rglob('*') if p.is_file())
        print(f'preparation: {prep_s:.0f} s for {args.minutes:g} min ({args.minutes * 60 / prep_s:.1f}x real time, '
              f'{args.prepare_threads} thread(s)), {size / 2**20:.1f} MiB', flush=True)

        grid = SnippetGrid(prepared)
        for fast, label in ((False, 'after preparation, decord:'), (True, 'after preparation:       ')):
            ready = SnippetDataset(prepared, grid, train=True, short_side=args.short_side, crop=args.crop, fast_prepared=fast)
            ready_rate = time_reads(ready, args.prepared)
            print(f'{label} {ready_rate:8.1f} snippets/s per core ({args.prepared} random snippets)', flush=True)
        print(f'speed-up: {ready_rate / direct_rate:.0f}x')
    finally:
        if args.work_dir is None: shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
