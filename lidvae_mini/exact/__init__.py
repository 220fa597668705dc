"""Theorem 1 with exact inference: where the posterior is known, collapse and non-identifiability coincide.

=====================  =====================================================================
``collapse``           Theorem 1 on exact posteriors (enumeration, conjugate Gaussian), the KL bound
``hmc``                NUTS runs with R-hat / ESS diagnostics (NumPyro + ArviZ)
``ppca``               probabilistic PCA: ML estimate, exact posterior, NumPyro models
``gmm``                two-component GMM: EM, likelihood in the weight, NumPyro models
``gmvae``              the GMVAE's two likelihood maximizers (paper Sec. 2.2)
=====================  =====================================================================
"""
