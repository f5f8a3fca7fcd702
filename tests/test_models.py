"""What the models chapter (nbs/07_models.ipynb) cannot hold well: the paper encoders computed at the paper's input
sizes (about ten seconds of CPU arithmetic; the chapter checks those shapes on the meta device), and the bf16
comparison of the two conv forms, which needs a GPU. Presets, shapes, the conv forms on CPU and the checkpoint
format are test cells of the notebook."""
import pytest
import torch

from avss.models import PRESETS, AudioEncoder, VideoEncoder, conv_form_errors


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_paper_encoders_at_the_paper_input_sizes():
    p = PRESETS['paper']
    f, g = VideoEncoder('paper'), AudioEncoder('paper')
    with torch.no_grad():
        v = f(torch.randn(p.video_shape(1)))
        a = g(torch.randn(p.audio_shape(1)))
    assert tuple(v.shape) == (1, 512, 2, 10, 10) and tuple(a.shape) == (1, 512, 3, 10)
    assert (f.out_channels, g.out_channels) == (512, 512)
    assert torch.isfinite(v).all() and torch.isfinite(a).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
def test_conv_forms_agree_in_bf16_on_a_gpu():
    e = conv_form_errors('paper', (4, 3, 16, 112, 112), device='cuda', autocast=torch.bfloat16, channels_last=True)
    for k in ('output', 'input_grad', 'param_grad'):
        assert e['2d vs float32'][k] <= 2 * e['3d vs float32'][k] + 0.01, (k, e)
