"""The book's machinery: everything that runs chapters and records what they found (not needed to use the models).

=====================  =====================================================================
``parameters``         every chapter's parameter types and ranges, checked by the CLI and the chapter
``provenance``         metrics.json and run environment
``reproduce``          ``python -m lidvae_mini.book.reproduce CHAPTER -p key=value``
``sweep``              ``python -m lidvae_mini.book.sweep CHAPTER --grid k=v1,v2 --seeds 0-9`` on Ray, resumable
``results``            ``python -m lidvae_mini.book.results``: committed results, provenance, the results page
``prose``              sentences generated from numbers (words, ranges, ordinals, result tags)
``release``            ``python -m lidvae_mini.book.release bump X.Y.Z``: one version for the package and Colab
=====================  =====================================================================
"""
