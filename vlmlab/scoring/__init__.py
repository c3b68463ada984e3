"""How an answer is scored, shared by validation during training and by evaluation afterwards: the official
metrics of each benchmark, confidence intervals, generation-based accuracy, and the transfer protocol on the
synthetic tasks (which a training run may also apply to itself when it ends)."""
