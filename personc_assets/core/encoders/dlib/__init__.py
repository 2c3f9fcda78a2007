"""dlib's face-recognition ResNet: the embedded default encoder, registered as ``dlib``.

- ``format``: clean-room reader of dlib's serialized network (numpy, no dlib);
- ``network``: the network rebuilt in PyTorch from that file (layer → block → network);
- ``encoder``: the ``dlib`` encoder on either engine (PyTorch by default, dlib's C++ as reference).
"""

from .encoder import (DLIB_DEFAULT_TAU, ENGINES, DlibEncoder, Engine, TorchDlibEncoder,
                      make_dlib_encoder)
from .network import DESCRIPTOR_FILE, DlibResNet, load_dlib_resnet

__all__ = ["DESCRIPTOR_FILE", "DLIB_DEFAULT_TAU", "ENGINES", "DlibEncoder", "DlibResNet", "Engine",
           "TorchDlibEncoder", "load_dlib_resnet", "make_dlib_encoder"]
