"""Data: where files live, the official PPCA/GMM inputs shipped with the package, and loaders.

Every loader takes a ``data_dir``; without one it uses ``$LIDVAE_DATA``, else the user cache
``~/.cache/lidvae_mini``. Nothing is downloaded in CI; a missing file raises
:class:`MissingDataError` naming the files and where to put them.
"""
from .paths import MissingDataError, data_dir, require_files
from .official import OFFICIAL_DATASETS, load_official
from .pinwheel import make_pinwheel
from .images import (DATASET_FILES, DATASETS, binarize, fixed_binarization, load_dataset, load_fashion_mnist,
                     load_mnist, load_omniglot, load_omniglot_chardata, require_dataset, subsample_split)
from .text import DATASETS, TEXT_DATASETS, require_dataset  # noqa: F811 (the image registry plus yahoo, synthetic_text)

__all__ = ["MissingDataError", "data_dir", "require_files", "OFFICIAL_DATASETS", "load_official", "make_pinwheel",
           "DATASETS", "DATASET_FILES", "require_dataset", "load_dataset", "load_mnist", "load_fashion_mnist",
           "load_omniglot", "load_omniglot_chardata", "binarize", "fixed_binarization", "subsample_split"]
