"""Data: where files live, the official PPCA/GMM inputs shipped with the package, and loaders.

Every loader takes a ``data_dir``; without one it uses ``$LIDVAE_DATA``, else the user cache
``~/.cache/lidvae_mini``. Nothing is downloaded in CI; a missing file raises
:class:`MissingDataError` naming the files and where to put them.
"""
from .paths import MissingDataError, data_dir, require_files
from .official import OFFICIAL_DATASETS, load_official

__all__ = ["MissingDataError", "data_dir", "require_files", "OFFICIAL_DATASETS", "load_official"]
