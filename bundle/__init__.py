"""Custom components of the ONJ masked VQ-GAN bundle: only what MONAI does not provide.

Configs instantiate them by their module path (``bundle.transforms.LabelToIntensityd``); run the bundle from its
root folder so that this package is importable, as MONAI bundles with a ``scripts`` package are.
"""
