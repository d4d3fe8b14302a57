"""embedsearch: timm embeddings -> FAISS / torch index -> kNN search -> kNN classification."""

__version__ = "0.1.0"
