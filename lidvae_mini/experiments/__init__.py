"""The chapters' multi-model experiments, built on the library and the book's machinery.

=====================  =====================================================================
``text_methods``       the text rows of chapter 09 (one call each) and the decision rule on their decoders
``remedies``           why the Example-1 LIDGMVAE's cluster dies, and the remedies tried on it (chapter 08)
``pinwheel``           chapter 07's side runs: prior collapse, fixed priors, a fixed noise scale
=====================  =====================================================================
"""
