"""Synthetic jaw label maps in the DentalSegmentator convention, with simulated lesions and a matching raw CBCT.

A data generator for the bundle (like a dataset module), not a component the bundle's configs instantiate:
``shape_bank`` (real mandible shapes), ``anatomy`` (a head built on one of them), ``lesions`` (ONJ and the paper's
teeth-and-jaw removal), ``phantom`` (rasteriser and raw CBCT), ``segmentation_errors`` (an automatic segmenter's
errors in the label map), ``writing`` (NIfTI files, datalist, preview) and ``parametric`` (the fully parametric
phantoms of bundle version 0.2, kept to check that a model holds in both worlds).
"""
