"""lidvae_mini: posterior collapse and latent variable (non-)identifiability, in small tested pieces.

Companion package of the *lidvae-book* (Wang, Blei & Cunningham, "Posterior Collapse and Latent
Variable Non-identifiability", NeurIPS 2021). One concept per module, the modules in folders by concern. The
library comes first; each folder imports only from the folders above it in this list:

=======================  ===================================================================================
``data``                 data directory, shipped official inputs, loaders, ``python -m lidvae_mini.data.download``
``plotting``             figure sizes and style for the book's text column (imports nothing from the package)
``evaluation``           AU, KL, MI, importance-weighted log-likelihood, cluster accuracy; statistics of codes;
                         recovery of known latents; sample quality in an MNIST classifier's features
``exact``                Theorem 1 with exact inference: enumeration, PPCA, the two-component GMM, the GMVAE's
                         likelihood maximizers, NUTS runs with their diagnostics
``models``               ICNNs and Brenier maps, encoders and decoders, the VAE family and its training loop,
                         the mixtures (GMVAE, LIDGMVAE), the text models (LIDSVAE), SA-VAE and lagging training,
                         the aggregate VAE
``diagnose``             per-latent verdict on a trained model: model collapse (flat likelihood) or inference collapse
=======================  ===================================================================================

The book's machinery sits apart, on top of the library:

=======================  ===================================================================================
``book``                 running chapters (``python -m lidvae_mini.book.reproduce``) and sweeps, parameters,
                         provenance, committed results and the results page, generated prose, releases
``experiments``          the chapters' multi-model experiments: the image tables, ablation and remedies of 08 to
                         08c, the text rows of chapter 09, the side runs of 07
=======================  ===================================================================================
"""
import os as _os
import warnings as _warnings

# NumPyro imports tqdm.auto, which warns on every kernel without ipywidgets; the book shows no progress bars.
_warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

# JAX grabs 75% of a GPU at start-up; the book mixes JAX (NumPyro) and torch in one kernel.
_os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"
