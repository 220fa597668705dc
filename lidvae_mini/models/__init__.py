"""Models: the latent-identifiable VAEs and the baselines they are compared with, and their training loop.

=====================  =====================================================================
``icnn``               input-convex neural networks (paper Eq. 6), strongly convex option
``brenier``            Brenier maps: gradients of ICNNs, their inverse and Jacobian
``encoders``           Gaussian MLP and conditional RealNVP posteriors q(z|x)
``decoders``           the injective decoder g2(beta^T g1(z)) (Definition 3) and the MLP decoder
``vae``                VAE, beta-VAE and LIDVAE sharing one ELBO
``loop``               the one training loop: seed, checkpoint/resume, NaN guard, clipping, hooks
``train``              ELBO training (fit) through the loop, and evaluation
``mixture``            GMVAE and LIDGMVAE (paper Example 1), ELBO with the cluster summed exactly
``baselines``          SA-VAE (Kim et al. 2018) and aggressive/lagging training (He et al. 2019)
``avae``               the aggregate VAE (Saha et al.): deterministic encoder, KDE aggregate posterior
``text``               sequential VAE and LIDSVAE (paper Example 2) for text, their training and metrics
=====================  =====================================================================
"""
