"""kubetune: fine-tune language models on Kubernetes from one FineTuneJob manifest."""

__version__ = "0.1.0"
