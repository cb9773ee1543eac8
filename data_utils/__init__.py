"""Data side of GLM pretraining: tokenizers, corpora, memory-mapped token storage and
blank-infilling (block-LM) batches."""
