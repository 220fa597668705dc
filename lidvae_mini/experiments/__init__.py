"""The chapters' multi-model experiments, built on the library and the book's machinery.

=====================  =====================================================================
``text_methods``       the text rows of chapter 09 (one call each) and the decision rule on their decoders
``image_tables``       the paper's image tables and Figure 1(c, d): rows, splits, sentences (chapters 08, 08b)
``image_ablation``     which part of the LIDGMVAE keeps its cluster active: the ablation (chapter 08c)
``remedies``           why the Example-1 LIDGMVAE's cluster dies, and the remedies tried on it (chapter 08c)
``pinwheel``           chapter 07's side runs: prior collapse, fixed priors, a fixed noise scale
=====================  =====================================================================
"""
