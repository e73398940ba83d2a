"""The paper's analyses (sparsity sweep, block selection, gradient conflict) and the
cloud-device protocol simulation; each writes a table and a PNG."""
