#!/usr/bin/env python
"""Write the synthetic long-form corpus (with its catalog), or the small UCF101- and ESC-50-layout sets drawn
from the same generator. Every run is deterministic from --seed and resumable: files already written are kept.

  python data_scripts/make_synthetic.py corpus data/synthetic/corpus        # the quickstart corpus (defaults)
  python data_scripts/make_synthetic.py corpus out/big --titles 60 --shows 6 --episodes 6 --minutes 10
  python data_scripts/make_synthetic.py ucf101 data/synthetic/ucf101 --groups 7 --clips 3
  python data_scripts/make_synthetic.py esc50 data/synthetic/esc50 --clips-per-fold 4
"""
import argparse
import sys
import time
from pathlib import Path

try:
    import avss  # noqa: F401
except ImportError:  # run from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avss import synth, synth_sets


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], epilog=__doc__.split('\n\n', 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='what', required=True)
    c = sub.add_parser('corpus', help='movies and TV episodes with a catalog.csv')
    c.add_argument('out_dir', type=Path)
    c.add_argument('--titles', type=int, default=synth.DEFAULT_TITLES, help='movies + episodes (default %(default)s)')
    c.add_argument('--shows', type=int, default=synth.DEFAULT_SHOWS, help='TV shows (default %(default)s)')
    c.add_argument('--episodes', type=int, default=synth.DEFAULT_EPISODES, help='episodes per show (default %(default)s)')
    c.add_argument('--minutes', type=float, default=synth.DEFAULT_MINUTES, help='mean title length (default %(default)s)')
    c.add_argument('--width', type=int, default=synth.DEFAULT_WIDTH)
    c.add_argument('--height', type=int, default=synth.DEFAULT_HEIGHT)
    c.add_argument('--fps', type=int, default=synth.DEFAULT_FPS)
    c.add_argument('--sample-rate', type=int, default=synth.DEFAULT_SAMPLE_RATE)
    c.add_argument('--container', choices=('mp4', 'mkv'), default='mp4')
    u = sub.add_parser('ucf101', help='short AVI clips labelled by event type, UCF101 layout and 3 splits')
    u.add_argument('out_dir', type=Path)
    u.add_argument('--groups', type=int, default=7)
    u.add_argument('--clips', type=int, default=3, help='clips per group and class (default %(default)s)')
    u.add_argument('--seconds', type=float, default=4.0)
    u.add_argument('--width', type=int, default=160)
    u.add_argument('--height', type=int, default=120)
    e = sub.add_parser('esc50', help='5 s WAV clips labelled by sound type, ESC-50 layout and 5 folds')
    e.add_argument('out_dir', type=Path)
    e.add_argument('--clips-per-fold', type=int, default=4, help='clips per fold and class (default %(default)s)')
    for p in (u, e):
        p.add_argument('--classes', nargs='+', default=list(synth.EVENT_TYPES), choices=synth.EVENT_TYPES)
    for p in (c, u, e):
        p.add_argument('--seed', type=int, default=0)
        p.add_argument('--workers', type=int, default=None, help='processes (default: one per core)')
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    t0 = time.time()
    try:
        if args.what == 'corpus':
            cat = synth.make_corpus(args.out_dir, titles=args.titles, minutes=args.minutes, seed=args.seed, shows=args.shows,
                                    episodes=args.episodes, width=args.width, height=args.height, fps=args.fps,
                                    sample_rate=args.sample_rate, workers=args.workers, container=args.container)
            print(f'{cat} -> {args.out_dir / "catalog.csv"}')
        elif args.what == 'ucf101':
            root = synth_sets.make_ucf_like(args.out_dir, classes=args.classes, groups=args.groups, clips=args.clips,
                                            seconds=args.seconds, seed=args.seed, width=args.width, height=args.height,
                                            workers=args.workers)
            print(f'UCF101 layout in {root}')
        else:
            root = synth_sets.make_esc_like(args.out_dir, classes=args.classes, clips_per_fold=args.clips_per_fold,
                                            seed=args.seed, workers=args.workers)
            print(f'ESC-50 layout in {root}')
    except ValueError as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'done in {time.time() - t0:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
