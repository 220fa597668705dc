"""The exact PPCA and GMM inputs of the official LIDVAE code, shipped with this package.

Source: yixinwang/lidvae-public @ 8a0a6a5 (MIT licence, Copyright (c) 2022 Yixin Wang),
``nonid_ppca_gmm/res/out_files/*.data.R``, converted losslessly to ``.npz`` (see
``official/ATTRIBUTION.md``). R's random draws cannot be regenerated in NumPy, so these files are
the only way to run on the paper's own data.
"""
from __future__ import annotations

from importlib import resources

import numpy as np

from .._checks import check_choice

#: The official PPCA and GMM inputs shipped with the package (name -> description), for :func:`load_official`.
OFFICIAL_DATASETS = {
    "oned_ppca": "PPCA data generated with one latent dimension (x: (500, 5), noise sd 0.1)",
    "twod_ppca": "PPCA data generated with two latent dimensions (x: (500, 5), noise sd 0.1)",
    "single_gaussian": "GMM data from one Gaussian N(-1, 1) (y: (10000,))",
    "overlap_gaussian": "GMM data 0.85 N(-0.5, 1) + 0.15 N(0.5, 1) (y: (10000,))",
    "nonoverlap_gaussian": "GMM data 0.85 N(-10, 1) + 0.15 N(10, 1) (y: (10000,))",
}


def load_official(name: str) -> dict:
    """Load one official dataset as a dict of NumPy arrays (0-d arrays become Python floats).

    Args:
        name: one of :data:`OFFICIAL_DATASETS`.

    Returns:
        PPCA: ``x`` (N, D) data, ``w`` (D, M_true) true loadings, ``z`` (M_true, N) true latents,
        ``sigma`` (true noise sd), ``N``, ``D``, ``M`` (latent dimension of the fitted model).
        GMM: ``y`` (N,) data and the generating constants stored by the R script.

    Raises:
        ValueError: unknown ``name``.
    """
    check_choice(name, "official dataset", sorted(OFFICIAL_DATASETS))
    with resources.files(__package__).joinpath("official", f"{name}.npz").open("rb") as fh:
        with np.load(fh) as npz:
            return {k: (npz[k].item() if npz[k].ndim == 0 else npz[k].copy()) for k in npz.files}
