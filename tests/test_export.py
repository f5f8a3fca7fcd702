"""Exported encoders on real third-party clips (../shared/media): the folder of `avss export` loaded by
`AVModel.from_pretrained`, by `torch.hub.load(..., source='local')` and by `avss embed` gives the run's own numbers
bit for bit; f in torchvision's `r2plus1d_18` gives f's features; the AV-SUPERB upstream keeps AV-SUPERB's contract.

The runs are randomly initialised models (their BatchNorm statistics moved by a training-mode forward) saved as
a run saves them: what is tested is the writing and reading of the weights, not what they learned.
"""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import default_collate
from torchvision.models.video import r2plus1d_18

from avss.avsuperb import UpstreamExpert
from avss.catalog import Catalog
from avss.cli import main
from avss.decode import MediaReader
from avss.embed import Embedder, TitleSnippets, embed_file, load_embedder, model_inputs
from avss.models import AVModel, save_encoders
from avss.pretrain_config import PretrainConfig, run_preset
from conftest import write_finished_run

REPO = Path(__file__).resolve().parent.parent
MEDIA = REPO.parent/'shared'/'media'
pytestmark = [pytest.mark.media,
              pytest.mark.skipif(not (MEDIA/'av_with_audio').is_dir(), reason=f'real test clips not found at {MEDIA}')]

CLIPS = [MEDIA/'av_with_audio'/'v_GGSY1Qvo990.mp4',          # 18 s, H.264 + AAC 44.1 kHz
         MEDIA/'av_with_audio'/'flipping_a_pancake.mkv']
KEYS = ['start_s', 'video', 'audio', 'video_features', 'audio_features']


def moved(model: AVModel, video_shape=(2, 3, 4, 32, 32), audio_shape=(2, 1, 96, 64)) -> AVModel:
    "`model` after one training-mode forward on noise (running statistics no longer 0 and 1), in eval mode."
    with torch.no_grad(): model.train()(torch.randn(video_shape), torch.randn(audio_shape))
    return model.eval()


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    "A finished tiny run at crop 32 (short side 40): params.json, checkpoints/last.pt and encoders.pt of step 7."
    return write_finished_run(tmp_path_factory.mktemp('run'), moved)


@pytest.fixture(scope='module')
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp('exported')/'k16'
    assert main(['export', str(run_dir), '--out', str(out)]) == 0
    return out


def test_nothing_reads_a_pickle(exported, monkeypatch):
    assert sorted(p.name for p in exported.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    def refuse(*a, **k): raise AssertionError('a pickle was read')
    for mod, name in ((torch, 'load'), (pickle, 'load'), (pickle, 'loads')): monkeypatch.setattr(mod, name, refuse)
    AVModel.from_pretrained(exported)
    torch.hub.load(str(REPO), 'avss_av', source='local', weights=str(exported))


def snippet_inputs(preset) -> dict:
    "{side: batch}: every snippet of the real clips, read and transformed as evaluation reads them."
    ds = TitleSnippets(Catalog.from_media(CLIPS, progress=False), preset)
    try: batch = default_collate([ds[(n, m)] for n in range(len(CLIPS)) for m in range(ds.grid.count(n))])
    finally: ds.close()
    return model_inputs(batch, 'cpu')


def outputs(emb: Embedder, inputs: dict) -> dict:
    with torch.no_grad(): return {k: v for side, x in inputs.items() for k, v in emb.eval()(x, side).items()}


def test_every_way_of_loading_gives_the_runs_numbers(run_dir, exported):
    "from_pretrained, torch.hub (the model, and f and g alone) and avss embed on the folder: bit for bit on real clips."
    ours = load_embedder(run_dir)
    inputs = snippet_inputs(ours.preset)
    assert inputs['video'].shape[0] >= 8
    reference = outputs(ours, inputs)
    assert sorted(reference) == ['audio', 'audio_features', 'video', 'video_features']
    loaded = {'from_pretrained': AVModel.from_pretrained(exported),
              'torch.hub': torch.hub.load(str(REPO), 'avss_av', source='local', weights=str(exported))}
    for how, m in loaded.items():
        theirs = outputs(Embedder.from_model(m), inputs)
        assert all(torch.equal(reference[k], theirs[k]) for k in reference), how
    f = torch.hub.load(str(REPO), 'avss_video', source='local', weights=str(exported))
    g = torch.hub.load(str(REPO), 'avss_audio', source='local', weights=str(exported))
    assert not f.training and not g.training
    alone = outputs(Embedder(f, g), inputs)
    assert all(torch.equal(reference[k], alone[k]) for k in ('video_features', 'audio_features'))
    a, b = embed_file(CLIPS[0], run_dir, device='cpu'), embed_file(CLIPS[0], exported, device='cpu')
    assert list(a) == list(b) == KEYS and all(np.array_equal(a[k], b[k]) for k in KEYS)


def test_torchvision_r2plus1d_18_computes_f(tmp_path):
    "A paper-preset run (at crop 32) exported with --torchvision: torchvision's network gives f's features on a real snippet."
    p = PretrainConfig.resolve(dict(preset='paper', crop=32, short_side=38))
    torch.manual_seed(0)
    model = moved(AVModel(run_preset(p)))
    (tmp_path/'run').mkdir()
    (tmp_path/'run'/'params.json').write_text(json.dumps(p.to_params()))
    save_encoders(model, tmp_path/'run'/'encoders.pt', params=p.to_params(), step=1)
    out = tmp_path/'exported'
    assert main(['export', str(tmp_path/'run'), '--out', str(out), '--torchvision']) == 0
    net = r2plus1d_18()
    r = net.load_state_dict(load_file(out/'r2plus1d_18.safetensors'), strict=False)
    assert sorted(r.missing_keys) == ['fc.bias', 'fc.weight'] and r.unexpected_keys == []
    net.eval().fc = torch.nn.Identity()
    ds = TitleSnippets(Catalog.from_media([CLIPS[0]], progress=False), run_preset(p))
    x = model_inputs(default_collate([ds[(0, 2)]]), 'cpu')['video']          # the snippet at 6.4 s, as evaluation reads it
    ds.close()
    assert x.shape == (1, 3, 16, 32, 32)
    with torch.no_grad():
        fmap = model.video_encoder(x)
        assert torch.equal(net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x))))), fmap)
        torch.testing.assert_close(net(x), fmap.mean((2, 3, 4)), rtol=1e-6, atol=1e-7)
    assert 'r2plus1d_18.safetensors' in (out/'README.md').read_text()


def real_pair(path: Path, start: float, seconds: float, mono_as_channels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    "(audio at 16 kHz, (samples,) or (1, samples); uint8 frames (T, C, H, W) at 16 fps) of a real clip, as AV-SUPERB reads them."
    reader = MediaReader(path)
    try:
        frames = torch.from_numpy(reader.video(start, int(seconds * 16), 16.0)).permute(0, 3, 1, 2)
        audio = torch.from_numpy(reader.audio(start, seconds, 16000))
    finally: reader.close()
    return (audio[None] if mono_as_channels else audio), frames


def test_avsuperb_contract(exported):
    "uint8 TCHW video at 16 fps and 16 kHz audio of 2 and 4 s, batch 2: keys, layers, (B, T, D), one shape, finite."
    up = UpstreamExpert(str(exported))
    pairs = [real_pair(CLIPS[0], 1.0, 2.0, False), real_pair(MEDIA/'av_with_audio'/'v_ZNVhz7ctTq0.mp4', 3.0, 4.0, True)]
    assert pairs[0][1].dtype == torch.uint8 and pairs[0][1].shape[:2] == (32, 3) and pairs[1][0].shape == (1, 64000)
    for batch, steps in ((pairs, 20), ([pairs[0], pairs[0]], 10)):       # 4 s and 2 s at the encoder's 5 fps
        source = [(up.preprocess_audio(a, 16000), up.preprocess_video(v, 16)) for a, v in batch]
        with torch.no_grad(): out = up(source)
        assert sorted(out) == ['audio_feats', 'fusion_feats', 'video_feats']
        assert [len(out[k]) for k in ('video_feats', 'audio_feats', 'fusion_feats')] == [5, 5, 5]
        D = max(up.preset.video_widths + up.preset.audio_widths)
        for key, width in (('video_feats', D), ('audio_feats', D), ('fusion_feats', 2 * D)):
            assert {tuple(t.shape) for t in out[key]} == {(2, steps, width)}, key
            assert all(torch.isfinite(t).all() for t in out[key]), key
        assert all(torch.equal(fu, torch.cat([a, v], -1)) for fu, a, v in zip(*(out[k] for k in ('fusion_feats', 'audio_feats', 'video_feats'))))
    assert out['video_feats'][-1].abs().sum() > 0 and out['audio_feats'][-1].abs().sum() > 0
