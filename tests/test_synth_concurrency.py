"""Two processes making the same synthetic set at once: the second waits for the first, then finds the set made.
A maker killed half-way leaves no lock behind and its temporary files are removed by the next one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from avss.synth_sets import make_ucf_like

UCF = dict(classes=('bounce', 'pulse', 'slide'), groups=3, clips=2, seconds=2.0, width=64, height=48, workers=1,
           progress=False)
# a maker in its own process: it imports avss, says it is ready, and starts when the file argv[2] appears
MAKER = f"""
import sys, time
from pathlib import Path
from avss.synth_sets import make_ucf_like
print('ready', flush=True)
while not Path(sys.argv[2]).exists(): time.sleep(0.005)
make_ucf_like(sys.argv[1], **{UCF!r})
"""


def start_maker(out_dir: Path, go: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, '-c', MAKER, str(out_dir), str(go)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == 'ready\n', p.communicate()
    return p


def wait_for_part_file(out_dir: Path, maker: subprocess.Popen, timeout: float = 60.0):
    "Wait until `maker` is writing a clip (a temporary .part file exists in out_dir)."
    end = time.monotonic() + timeout
    while not list(out_dir.rglob('.*.part')):
        assert maker.poll() is None, maker.communicate()
        assert time.monotonic() < end, 'the maker wrote no clip'
        time.sleep(0.002)


def process_state(pid: int) -> str:
    "R (running), S (sleeping), T (stopped), Z (ended) ...: the state letter of /proc/<pid>/stat."
    return Path(f'/proc/{pid}/stat').read_text().rsplit(') ', 1)[1][0]


def open_files(pid: int) -> list:
    fds = Path(f'/proc/{pid}/fd')
    return [os.readlink(fds / fd) for fd in os.listdir(fds)]


def stop_while_writing(out_dir: Path, maker: subprocess.Popen):
    "Stop `maker` (SIGSTOP) while it has a clip's temporary .part file open."
    while True:
        wait_for_part_file(out_dir, maker)
        os.kill(maker.pid, signal.SIGSTOP)
        while process_state(maker.pid) not in 'TZ': time.sleep(0.001)
        if any(f.endswith('.part') for f in open_files(maker.pid)): return
        os.kill(maker.pid, signal.SIGCONT)     # not writing at that moment: try again


def finish(maker: subprocess.Popen) -> str:
    out, err = maker.communicate(timeout=300)
    assert maker.returncode == 0, err
    return err


def clip_files(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in (root / 'UCF-101').rglob('*') if p.is_file()}


def assert_complete(root: Path):
    "Every list file is there and every clip they name exists; no temporary file is left."
    lists = root / 'ucfTrainTestlist'
    named = set()
    for split in (1, 2, 3):
        named |= {l.split()[0] for l in (lists / f'trainlist0{split}.txt').read_text().splitlines()}
        named |= set((lists / f'testlist0{split}.txt').read_text().splitlines())
    assert len(named) == 3 * 3 * 2
    assert {f'UCF-101/{rel}' for rel in named} == set(clip_files(root))
    assert all((root / 'UCF-101' / rel).stat().st_size > 0 for rel in named)
    assert not [p for p in root.rglob('.*') if p.name.endswith(('.part', '.tmp'))]


def first_line_starting(stream, prefix: str) -> str:
    "The first line of `stream` that starts with `prefix`, or '' if it ends without one."
    for line in stream:
        if line.startswith(prefix): return line
    return ''


def test_second_maker_waits_for_the_first(tmp_path):
    "The second maker starts while the first is writing a clip (held there): it waits, then has nothing to do."
    root = tmp_path / 'ucf'
    first, second = start_maker(root, tmp_path / 'go1'), start_maker(root, tmp_path / 'go2')
    (tmp_path / 'go1').touch()
    stop_while_writing(root, first)            # the first is in the middle of a clip ...
    try:
        (tmp_path / 'go2').touch()             # ... when the second starts
        waiting = first_line_starting(second.stderr, 'waiting')
    finally:
        os.kill(first.pid, signal.SIGCONT)
    finish(first)
    made = clip_files(root)
    finish(second)
    assert waiting == f'waiting for process {first.pid} making {root}\n'
    assert_complete(root)
    assert clip_files(root) == made            # the second found every clip made
    make_ucf_like(root, **UCF)                 # and so does a third call
    assert clip_files(root) == made
    assert_complete(root)


def test_two_makers_started_together(tmp_path):
    root = tmp_path / 'ucf'
    makers = [start_maker(root, tmp_path / 'go'), start_maker(root, tmp_path / 'go')]
    (tmp_path / 'go').touch()
    for m in makers: finish(m)
    assert_complete(root)


def test_a_killed_maker_blocks_nobody(tmp_path):
    root = tmp_path / 'ucf'
    maker = start_maker(root, tmp_path / 'go')
    (tmp_path / 'go').touch()
    wait_for_part_file(root, maker)
    os.kill(maker.pid, signal.SIGKILL)
    maker.communicate()
    (root / 'UCF-101' / 'BallBounce' / '.v_BallBounce_g01_c01.avi.x1y2z3.part').write_bytes(b'half')   # a stale clip
    make_ucf_like(root, **UCF)
    assert_complete(root)
