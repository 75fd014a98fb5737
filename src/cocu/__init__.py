"""cocu: Concept Curation for language-supervised semantic segmentation."""

__version__ = "0.1.0"
