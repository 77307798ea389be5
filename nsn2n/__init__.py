"""NS-N2N: Neighboring-Slice Noise2Noise, self-supervised denoising of one CT/MR volume.

Imports torch, numpy and scipy only (never Holoscan or MONAI Deploy), so it can be tested, benchmarked
and reused alone. Typical use::

    from nsn2n import DenoiseConfig, denoise_volume
    result = denoise_volume(volume_hu, spacing=(dz, dy, dx), modality="CT", config=DenoiseConfig())
    result.denoised, result.report.noise.after, result.report.as_dict()
"""

__version__ = "0.1.0"

from .api import MIN_SLICES, DenoiseResult, TrainedModel, denoise_volume
from .config import ConfigError, DenoiseConfig
from .errors import ShouldStop, StopRequested, VolumeError
from .report import DenoiseReport

__all__ = [
    "MIN_SLICES",
    "ConfigError",
    "DenoiseConfig",
    "DenoiseReport",
    "DenoiseResult",
    "ShouldStop",
    "StopRequested",
    "TrainedModel",
    "VolumeError",
    "__version__",
    "denoise_volume",
]
