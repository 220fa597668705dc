"""lidvae_mini: posterior collapse and latent variable (non-)identifiability, in small tested pieces.

Companion package of the *lidvae-book* (Wang, Blei & Cunningham, "Posterior Collapse and Latent
Variable Non-identifiability", NeurIPS 2021). One concept per module:

=====================  =====================================================================
``collapse``           Theorem 1 on exact posteriors (enumeration, conjugate Gaussian)
``ppca``               probabilistic PCA: ML estimate, exact posterior, NumPyro models
``gmm``                two-component GMM: EM, likelihood in the weight, NumPyro models
``gmvae``              the GMVAE's two likelihood maximizers (paper Sec. 2.2)
``hmc``                NUTS runs with R-hat / ESS diagnostics (NumPyro + ArviZ)
``icnn``               input-convex neural networks (paper Eq. 6), strongly convex option
``brenier``            Brenier maps: gradients of ICNNs, their inverse and Jacobian
``decoders``           the injective decoder g2(beta^T g1(z)) (Definition 3) and the MLP decoder
``encoders``           Gaussian MLP and conditional RealNVP posteriors q(z|x)
``vae``                VAE, beta-VAE and LIDVAE sharing one ELBO
``train``              one ELBO training loop: checkpoint/resume, NaN guard, evaluation
``mixture``            GMVAE and LIDGMVAE (paper Example 1), ELBO with the cluster summed exactly
``text``               sequential VAE and LIDSVAE (paper Example 2) for text, its training loop and metrics
``text_methods``       the text rows of chapter 09 (one call each) and the decision rule on their decoders
``remedies``           why the Example-1 LIDGMVAE's cluster dies, and the remedies tried on it
``baselines``          SA-VAE (Kim et al. 2018) and aggressive/lagging training (He et al. 2019)
``avae``               the aggregate VAE (Saha et al.): deterministic encoder, KDE aggregate posterior, bandwidth
``metrics``            AU, KL, MI, importance-weighted log-likelihood, cluster accuracy
``sample_quality``     MNIST classifier; Frechet distance and k-NN precision/recall in its features (not FID)
``latent_stats``       collapsed axes, whitened leave-one-out KDE entropy, MDS picture of codes
``latent_recovery``    against a known truth: R^2 of the true latents, the true model's log p(x)
``diagnose``           per-latent verdict: model collapse (flat likelihood) or inference collapse
``prose``              sentences generated from numbers (words, ranges, ordinals, result tags)
``data``               data directory, shipped official inputs, loaders, ``python -m lidvae_mini.data.download``
``plotting``           figure sizes and style for the book's text column
``parameters``         every chapter's parameter types and ranges, checked by the CLI and the chapter
``provenance``         metrics.json and run environment
``reproduce``          ``python -m lidvae_mini.reproduce CHAPTER -p key=value``
``sweep``              ``python -m lidvae_mini.sweep CHAPTER --grid k=v1,v2 --seeds 0-9`` on Ray, resumable
``results``            ``python -m lidvae_mini.results``: committed results, their provenance and the results page
``release``            ``python -m lidvae_mini.release bump X.Y.Z``: one version for the package and the Colab pins
=====================  =====================================================================
"""
import os as _os
import warnings as _warnings

# NumPyro imports tqdm.auto, which warns on every kernel without ipywidgets; the book shows no progress bars.
_warnings.filterwarnings("ignore", message="IProgress not found", module="tqdm")

# JAX grabs 75% of a GPU at start-up; the book mixes JAX (NumPyro) and torch in one kernel.
_os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"
