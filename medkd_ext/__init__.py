"""medkd_ext: knowledge distillation for medical imaging, shared by the medkd MONAI Bundles."""

__version__ = "0.1.0"

from medkd_ext import errors as _errors

_errors.install()
