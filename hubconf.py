"""torch.hub entry points of avss: f, g and the projection heads, from a folder written by `avss export`.

    model = torch.hub.load('path/to/avss', 'avss_av', source='local', weights='exported/k16')

`weights` is a local folder holding model.safetensors and config.json (`avss export RUN --out DIR`); it is read
as it is, nothing is fetched, and the network comes back in eval mode. `weights=None` gives a randomly initialised
network at `preset` ('paper' or 'tiny'), in train mode, as torchvision's constructors do.
"""
dependencies = ['torch', 'torchvision', 'torchaudio', 'safetensors', 'numpy']

from avss.models import AudioEncoder as _AudioEncoder, AVModel as _AVModel, VideoEncoder as _VideoEncoder  # _: not entry points


def avss_av(weights=None, preset='paper', dim=512):
    """f, g and the heads h_f, h_g (avss.models.AVModel): model(video [B, 3, T, H, W], audio [B, 1, F, T]) -> (z_v, z_a)."""
    return _AVModel.from_pretrained(weights) if weights else _AVModel(preset, dim)


def avss_video(weights=None, preset='paper'):
    """The video encoder f, R(2+1)D-18 (avss.models.VideoEncoder): [B, 3, T, H, W] -> its last feature map."""
    return _VideoEncoder.from_pretrained(weights) if weights else _VideoEncoder(preset)


def avss_audio(weights=None, preset='paper'):
    """The audio encoder g, ResNet-18 on a log-mel spectrogram (avss.models.AudioEncoder): [B, 1, F, T] -> its last map."""
    return _AudioEncoder.from_pretrained(weights) if weights else _AudioEncoder(preset)
