"""Shared fixtures: a small synthetic corpus, prepared at the tiny preset's size, made once per test session; and every
test leaves torch's thread count as it found it."""
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
