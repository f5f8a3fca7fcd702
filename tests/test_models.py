"""Encoders at the paper's input sizes, and the encoder checkpoint format."""
from dataclasses import asdict, replace

import pytest
import torch
from torch import nn

from avss.models import (PRESETS, AVModel, AudioEncoder, BatchNorm3dAs2d, Conv3dAs2d, Preset, VideoEncoder,
                         conv_form_errors, load_audio_encoder, load_encoders, load_video_encoder, save_encoders)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize('preset, video_out, audio_out', [
    ('paper', (1, 512, 2, 10, 10), (1, 512, 3, 10)),
    ('tiny', (2, 32, 2, 4, 4), (2, 32, 3, 10)),
])
def test_encoder_shapes(preset, video_out, audio_out):
    p, batch = PRESETS[preset], video_out[0]
    f, g = VideoEncoder(preset), AudioEncoder(preset)
    with torch.no_grad():
        v = f(torch.randn(p.video_shape(batch)))
        a = g(torch.randn(p.audio_shape(batch)))
    assert tuple(v.shape) == video_out and tuple(a.shape) == audio_out
    assert (f.out_channels, g.out_channels) == (video_out[1], audio_out[1])
    assert torch.isfinite(v).all() and torch.isfinite(a).all()


def test_paper_sizes():
    p = PRESETS['paper']
    assert (p.short_side, p.crop, p.frames, p.fps) == (190, 158, 16, 5.0)
    assert p.video_shape(1) == (1, 3, 16, 158, 158) and p.audio_shape(1) == (1, 1, 96, 300)


def test_bad_input_names_the_expected_shape():
    with pytest.raises(ValueError, match=r'AudioEncoder expects a log-mel spectrogram of shape \[B, 1, F, T\]'):
        AudioEncoder('tiny')(torch.randn(2, 96, 300))
    with pytest.raises(ValueError, match=r'VideoEncoder expects video of shape \[B, 3, T, H, W\].*\(2, 16, 3, 64, 64\)'):
        VideoEncoder('tiny')(torch.randn(2, 16, 3, 64, 64))


def _trained_tiny():
    "A tiny model whose BatchNorm running statistics have moved away from their initial values."
    model, p = AVModel('tiny'), PRESETS['tiny']
    with torch.no_grad():
        model(torch.randn(p.video_shape(4)), torch.randn(p.audio_shape(4)))
    return model.eval()


def _same_state(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa: assert torch.equal(sa[k], sb[k]), k


def test_encoder_checkpoint_round_trip(tmp_path):
    model, p = _trained_tiny(), PRESETS['tiny']
    save_encoders(model, tmp_path/'enc.pt', step=500, params={'k': 4, 'lr': 0.1})
    f, g, meta = load_encoders(tmp_path/'enc.pt')
    assert meta == {'step': 500, 'params': {'k': 4, 'lr': 0.1}}
    assert f.preset == g.preset == p
    _same_state(f, model.video_encoder)
    _same_state(g, model.audio_encoder)
    v, a = torch.randn(p.video_shape(2)), torch.randn(p.audio_shape(2))
    with torch.no_grad():
        assert torch.equal(f.eval()(v), model.video_encoder(v))
        assert torch.equal(g.eval()(a), model.audio_encoder(a))
    _same_state(load_video_encoder(tmp_path/'enc.pt'), model.video_encoder)
    _same_state(load_audio_encoder(tmp_path/'enc.pt'), model.audio_encoder)
    ckpt = torch.load(tmp_path/'enc.pt', weights_only=True)
    assert not any('head' in k for k in ckpt['video_encoder'])          # the heads are saved apart from the encoders
    assert all(torch.equal(ckpt['video_head'][k], v) for k, v in model.video_head.state_dict().items())
    assert sorted(p.name for p in tmp_path.iterdir()) == ['enc.pt']  # no temporary left behind


def test_checkpoint_of_a_custom_preset_and_a_sync_batchnorm_model(tmp_path):
    custom = Preset('custom', video_widths=(4, 4, 8, 8), video_stem=2, audio_widths=(2, 4, 4, 8), blocks=(1, 1, 1, 1),
                    crop=32, short_side=40)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(AVModel(custom, dim=8))
    save_encoders(model, tmp_path/'enc.pt')
    f, g, meta = load_encoders(tmp_path/'enc.pt')
    assert f.preset == custom and meta == {}
    assert isinstance(f.stem[1], nn.BatchNorm3d) and not isinstance(f.stem[1], nn.SyncBatchNorm)
    _same_state(f, model.video_encoder)
    _same_state(g, model.audio_encoder)


def test_training_checkpoint_from_a_wrapped_model(tmp_path):
    model = _trained_tiny()
    state = {'_orig_mod.module.' + k: v for k, v in model.state_dict().items()}
    torch.save({'model': state, 'preset': asdict(model.preset), 'optimizer': {'state': {}}, 'step': 42,
                'epoch': 3, 'meta': {'git': 'abc'}}, tmp_path/'last.pt')
    f, g, meta = load_encoders(tmp_path/'last.pt')
    assert meta == {'git': 'abc', 'step': 42, 'epoch': 3}
    _same_state(f, model.video_encoder)
    _same_state(g, model.audio_encoder)


def test_wrong_files_are_named(tmp_path):
    model = AVModel('tiny')
    save_encoders(model, tmp_path/'enc.pt')
    ckpt = torch.load(tmp_path/'enc.pt', weights_only=True)
    torch.save(dict(ckpt, version=99), tmp_path/'future.pt')
    with pytest.raises(ValueError, match=r'future\.pt: encoder checkpoint version 99'):
        load_encoders(tmp_path/'future.pt')
    torch.save(dict(ckpt, preset={'name': 'x'}), tmp_path/'badpreset.pt')
    with pytest.raises(ValueError, match=r'badpreset\.pt: preset: not a model preset'):
        load_encoders(tmp_path/'badpreset.pt')
    torch.save({'model': {'fc.weight': torch.zeros(1)}, 'preset': 'tiny'}, tmp_path/'notav.pt')
    with pytest.raises(ValueError, match=r'notav\.pt: its "model" is not the state dict of an AVModel'):
        load_encoders(tmp_path/'notav.pt')
    torch.save([1, 2], tmp_path/'list.pt')
    with pytest.raises(ValueError, match=r'list\.pt holds a list'):
        load_encoders(tmp_path/'list.pt')
    with pytest.raises(TypeError, match='expected an AVModel'):
        save_encoders(nn.Linear(2, 2), tmp_path/'x.pt')


# ---- the two conv forms of f (issue 19): same parameters, same function

@pytest.mark.parametrize('preset, shape, channels_last', [
    ('tiny', None, False), ('tiny', (2, 3, 7, 32, 32), True), ('paper', (1, 3, 8, 32, 32), False)])
def test_conv_forms_compute_the_same_function(preset, shape, channels_last):
    e = conv_form_errors(preset, shape, dtype=torch.float64, channels_last=channels_last)['2d vs 3d']
    assert max(e.values()) < 1e-10, e
    e = conv_form_errors(preset, shape, channels_last=channels_last)['2d vs 3d']  # float32 (see the models chapter)
    assert max(e['output'], e['running_stats']) < 1e-3 and max(e['input_grad'], e['param_grad']) < 0.1, e


@pytest.mark.parametrize('conv', ['2d', '3d'])
def test_conv_forms_have_torchvision_parameters(conv):
    from torchvision.models.video import r2plus1d_18
    tv = {k: v for k, v in r2plus1d_18(weights=None).state_dict().items() if not k.startswith('fc.')}
    f = VideoEncoder(replace(PRESETS['paper'], conv=conv))
    assert [(k, v.shape) for k, v in f.state_dict().items()] == [(k, v.shape) for k, v in tv.items()]
    assert [(k, p.shape) for k, p in f.named_parameters()] == [(k, tv[k].shape) for k, _ in f.named_parameters()]
    kinds = {type(m) for m in f.modules() if isinstance(m, (nn.Conv3d, nn.BatchNorm3d))}
    assert kinds == ({Conv3dAs2d, BatchNorm3dAs2d} if conv == '2d' else {nn.Conv3d, nn.BatchNorm3d})


def test_checkpoints_load_into_either_form(tmp_path):
    model = AVModel(replace(PRESETS['tiny'], conv='3d'))
    save_encoders(model, tmp_path/'enc.pt')
    ckpt = torch.load(tmp_path/'enc.pt', weights_only=True)
    assert ckpt['preset']['conv'] == '3d'
    del ckpt['preset']['conv']                       # a checkpoint written before `conv` existed
    torch.save(ckpt, tmp_path/'old.pt')
    f, _, _ = load_encoders(tmp_path/'old.pt')
    assert f.preset == PRESETS['tiny'] and f.preset.conv == '2d'
    assert isinstance(f.stem[0], Conv3dAs2d)
    _same_state(f, model.video_encoder)
    v = torch.randn(PRESETS['tiny'].video_shape(2))
    with torch.no_grad():
        torch.testing.assert_close(f.eval()(v), model.video_encoder.eval()(v), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_conv_forms_agree_in_bf16_on_a_gpu():
    e = conv_form_errors('paper', (4, 3, 16, 112, 112), device='cuda', autocast=torch.bfloat16, channels_last=True)
    for k in ('output', 'input_grad', 'param_grad'):
        assert e['2d vs float32'][k] <= 2 * e['3d vs float32'][k] + 0.01, (k, e)
