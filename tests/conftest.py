"""Shared fixtures: a small synthetic corpus, prepared at the tiny preset's size, made once per test session; and every
test leaves torch's thread count as it found it."""
import json

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads():
    """A test may set torch's intra-op threads (one thread makes two processes' float sums comparable); the next test
    must not inherit it, or its in-process numbers stop matching a subprocess's bit for bit."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def small_catalog(tmp_path_factory):
    "Catalog CSV of 6 synthetic titles of 30 s (one show of 3 episodes and 3 movies), prepared at short side 76."
    from avss.synth import make_corpus
    from avss.prepare import prepare
    root = tmp_path_factory.mktemp('corpus')
    cat = make_corpus(root/'corpus', titles=6, minutes=0.5, shows=1, episodes=3, progress=False)
    prepared, report = prepare(cat, root/'prepared', short_side=76, progress=False)
    assert len(report) == 0, report
    return prepared.write(root/'prepared'/'catalog.csv')


def write_finished_run(run_dir, adjust=lambda model: model, step: int = 7):
    """`run_dir` as a finished run of a randomly initialised tiny model at crop 32 (short side 40) leaves it:
    `checkpoints/last.pt` and `encoders.pt` at `step`, and `params.json`; `adjust(model)` may change the model first
    (seeded: torch.manual_seed(0)). For tests of what reads runs (embed, export), not of training."""
    from avss.models import AVModel, save_encoders
    from avss.optim import make_optimizer
    from avss.rundir import RunDir
    from avss.pretrain_config import PretrainConfig, run_preset
    from avss.train import checkpoint_state
    cfg = PretrainConfig.resolve(dict(preset='tiny', crop=32, short_side=40))
    torch.manual_seed(0)
    model = adjust(AVModel(run_preset(cfg)))
    opt = make_optimizer(model, 1e-3, 0.0)
    RunDir(run_dir).save_checkpoint(checkpoint_state(step, model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0),
                                                     {}, cfg))
    (run_dir/'params.json').write_text(json.dumps(cfg.to_params()))
    save_encoders(model, run_dir/'encoders.pt', params=cfg.to_params(), step=step)
    return run_dir
