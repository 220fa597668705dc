"""Evaluation: the metrics of the paper and of the book, below the models that use them.

=====================  =====================================================================
``metrics``            AU, KL, MI, importance-weighted log-likelihood, cluster accuracy, learning-curve budget
``latent_stats``       collapsed axes, whitened leave-one-out KDE entropy, MDS picture of codes
``latent_recovery``    against a known truth: R^2 of the true latents, the true model's log p(x)
``sample_quality``     MNIST classifier; Frechet distance and k-NN precision/recall in its features (not FID)
=====================  =====================================================================
"""
