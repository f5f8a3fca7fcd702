"""The `avss` command: its help lists the eight subcommands, each answers --help, parameters reach the library."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from avss.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parent.parent
SUBCOMMANDS = ['catalog', 'prepare', 'pretrain', 'finetune', 'measure', 'sweep', 'embed', 'export']


def run(capsys, *argv) -> tuple[int, str, str]:
    "(exit status, stdout, stderr) of main(argv), --help's SystemExit included."
    try: rc = main(list(argv))
    except SystemExit as e: rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_lists_every_subcommand(capsys):
    assert list(COMMANDS) == SUBCOMMANDS
    rc, out, _ = run(capsys, '--help')
    assert rc == 0
    listed = [line.split()[0] for line in out.splitlines() if line.startswith('    ') and not line.startswith('     ')]
    assert listed == SUBCOMMANDS, out


def test_console_script_help():
    exe = Path(sys.executable).parent/'avss'
    assert exe.is_file(), f'{exe} missing: install the package with pip install -e .'
    r = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and all(f'    {c} ' in r.stdout for c in SUBCOMMANDS), r.stdout + r.stderr


@pytest.mark.parametrize('command', SUBCOMMANDS)
def test_subcommand_help(capsys, command):
    rc, out, _ = run(capsys, command, '--help')
    assert rc == 0 and out.startswith('usage:')


@pytest.mark.parametrize('command, spec', [('pretrain', 'avss.train:PRETRAIN_SPEC'),
                                           ('finetune', 'avss.downstream:DOWNSTREAM_SPEC'),
                                           ('measure', 'avss.discrepancy_runs:DISCREPANCY_SPEC')])
def test_parameter_help_names_every_parameter(capsys, command, spec):
    module, name = spec.split(':')
    spec = getattr(__import__(module, fromlist=[name]), name)
    rc, out, _ = run(capsys, command, '--help')
    assert rc == 0
    for k, p in spec.items():
        assert f'\n  {k} ' in out, k
        assert p.doc[:30] in out.replace('\n', ' '), k


def test_no_command_is_an_error(capsys):
    rc, _, err = run(capsys)
    assert rc == 2 and 'COMMAND' in err


def test_params_in_order():
    from avss.cli import parse_cli
    a = build_parser('pretrain').parse_args(['pretrain', '-p', 'k', '4', '--param', 'w', '8', '-p', 'k', '16'])
    assert a.params == ['-p', 'k', '4', '-p', 'w', '8', '-p', 'k', '16']
    assert parse_cli(a.params) == {'k': 16, 'w': 8}


def test_params_file_then_override(tmp_path):
    from avss.cli import parse_cli
    (tmp_path/'p.yaml').write_text('k: 8\nlr: 0.002\n')
    a = build_parser('finetune').parse_args(['finetune', '-p', 'k', '1', '-f', str(tmp_path/'p.yaml'), '-p', 'lr', '1e-4'])
    assert parse_cli(a.params) == {'k': 8, 'lr': 0.0001}


def test_bad_parameter_is_one_line(capsys):
    rc, out, err = run(capsys, 'pretrain', '-p', 'kk', '4')
    assert rc == 2 and "unknown parameter 'kk' (did you mean 'k'?)" in err and 'Traceback' not in err
    rc, _, err = run(capsys, 'finetune', '-p', 'dataset', 'imagenet')
    assert rc == 2 and "'dataset'" in err


def test_prepare_needs_a_source(capsys, tmp_path):
    rc, _, err = run(capsys, 'prepare', '--out', str(tmp_path/'p'))
    assert rc == 2 and 'give --catalog or --media' in err


def test_sweep_is_forwarded(capsys, tmp_path):
    grid = tmp_path/'g.yaml'
    grid.write_text('name: demo\nbase: {preset: tiny, max_steps: 5}\ngrids:\n  - {k: [1, 4]}\ndiscrepancy: false\n')
    rc, out, _ = run(capsys, 'sweep', str(grid), '--print', '--gpus', '2', '--runs-dir', str(tmp_path))
    assert rc == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith('torchrun --nnodes 1 --nproc_per_node 2 -m avss.train -p preset tiny')


def test_sweep_help_names_avss_sweep(capsys):
    rc, out, _ = run(capsys, 'sweep', '--help')
    assert rc == 0 and out.startswith('usage: avss sweep '), out[:200]


@pytest.mark.parametrize('command', ['catalog', 'prepare'])
def test_data_scripts_are_the_commands(capsys, command):
    "data_scripts/catalog.py and prepare.py are avss catalog and avss prepare: the same options, defined once in avss.cli."
    spec = importlib.util.spec_from_file_location(f'script_{command}', ROOT/'data_scripts'/f'{command}.py')
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    try: rc = script.main(['--help'])
    except SystemExit as e: rc = e.code
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith(f'usage: avss {command} ')
    assert (rc, out) == run(capsys, command, '--help')[:2]
    if command == 'prepare':
        assert '--verify' in out and '--merge' in out and '--num-shards' in out and '--media' in out
        assert script.main(['--out', 'unused']) == 2 and 'give --catalog or --media' in capsys.readouterr().err


def test_catalog(capsys, tmp_path):
    from avss.catalog import Catalog
    from avss.testing import write_clip
    write_clip(tmp_path/'media'/'a.mp4', seconds=4, size=(96, 64))
    write_clip(tmp_path/'media'/'b.mp4', seconds=4, size=(96, 64), audio=False)
    rc, out, _ = run(capsys, 'catalog', str(tmp_path/'media'), '--out', str(tmp_path/'catalog.csv'))
    assert rc == 0 and '1 titles usable for training; 1 left out' in out
    cat = Catalog.read(tmp_path/'catalog.csv')
    assert sorted(cat.df['title_id']) == ['a', 'b'] and cat.df.set_index('title_id')['has_audio'].to_dict() == {'a': True, 'b': False}


def test_prepare_then_verify(capsys, tmp_path):
    from avss.catalog import Catalog
    from avss.testing import write_clip
    write_clip(tmp_path/'media'/'a.mp4', seconds=7, size=(96, 64))
    write_clip(tmp_path/'media'/'b.mp4', seconds=4, size=(96, 64), audio=False)
    out = tmp_path/'prepared'
    rc, text, _ = run(capsys, 'prepare', '--media', str(tmp_path/'media'), '--out', str(out), '--short-side', '40',
                      '--workers', '1', '--no-progress')
    assert rc == 0 and 'prepared 1 titles' in text and 'rejected 1' in text, text
    assert Catalog.read(out/'catalog.csv').df['title_id'].tolist() == ['a']
    rc, text, _ = run(capsys, 'prepare', '--out', str(out), '--verify')
    assert rc == 0 and 'every prepared title' in text


def test_measure_runs_without_checkpoints(capsys, tmp_path):
    "Runs that only recorded their measures are tabled from them; nothing is re-measured."
    import json
    for k, r1 in ((1, 0.07), (16, 0.31)):
        d = tmp_path/'runs'/f'k{k}'
        d.mkdir(parents=True)
        (d/'params.json').write_text(json.dumps({'k': k, 'w': 'all', 'seed': 0}))
        (d/'summary.json').write_text(json.dumps({'heldout': {'r1_within_a2v': r1, 'chance_r1_within': 0.0625}}))
    rc, out, err = run(capsys, 'measure', '-p', 'runs', str(tmp_path/'runs'/'k*'), '-p', 'out_dir', str(tmp_path/'fig'))
    assert rc == 0, err
    assert 'k1: no checkpoint, shown from its recorded measures only' in out
    table = [line.split() for line in out.splitlines() if line.strip().startswith(('k1 ', 'k16 '))]
    assert [(r[0], r[-2]) for r in table] == [('k1', '0.07'), ('k16', '0.31')], out
    assert (tmp_path/'fig'/'fig1a_k.png').is_file()                     # two values of k: Figure 1a
