"""Facts copied by hand from the design-space paper, shared by tests as their independent truth."""

# Table 2: (image tokenizer stage 1, image tokenizer stage 2, language model stage 2); True = trains.
# Written out here, not read from vlmlab/presets/freeze/, so tests do not rest on the code under test.
TABLE_2 = {
    "all-frozen": (False, False, False),
    "unfreeze-lm": (False, False, True),
    "unfreeze-tok-s2": (False, True, False),
    "unfreeze-tok-s2-lm": (False, True, True),
    "unfreeze-tok-s1s2": (True, True, False),
    "unfreeze-all": (True, True, True),
}

# Appendix D.1 (stage 1, caption pretraining) per language backbone: the data set, global batch size, steps
# and linear warmup. The Qwen3-0.6B row is Table 12's; for the larger ones "All other hyperparameters are
# the same as the Qwen3-0.6B runs".
STAGE_1_BY_BACKBONE = {
    "Qwen3-0.6B": {"dataset": "COYO-700M", "global_batch_size": 1536, "steps": 100_000, "warmup": 5000},
    "Qwen3-1.7B": {"dataset": "COYO-700M", "global_batch_size": 768, "steps": 50_000, "warmup": 2500},
    "Qwen3-4B": {"dataset": "DataComp-1B", "global_batch_size": 2048, "steps": 100_000, "warmup": 5000},
}
# Table 12: what every size shares in stage 1 (and section 2.3 / D.1: captions truncated to 256 tokens).
TABLE_12 = {
    "adapter_lr": 2e-4,
    "cross_attention_lr": 2e-4,
    "image_tokenizer_lr": 6e-6,
    "betas": (0.9, 0.999),
    "weight_decay": 0.01,
    "min_lr_ratio": 0.1,
    "max_caption_tokens": 256,
}
# Table 13: stage 2 (VQA fine-tuning); the scaling study changes only stage 1.
TABLE_13 = {"steps": 10860, "global_batch_size": 1536, "warmup": 750, "adapter_lr": 1e-5, "language_lr": 5e-5}
# Figure 2: three backbones, two image tokenizers, and two setups: "the completely unfrozen Joint-Decoder"
# and "the MoT architecture with frozen language layers, denoted MoT (F)" -> (fusion, language trains in S2).
FIGURE_2_BACKBONES = ("Qwen3-0.6B", "Qwen3-1.7B", "Qwen3-4B")
FIGURE_2_TOKENIZERS = ("SigLIP 2", "DINOv3")
FIGURE_2_SETUPS = {"Joint-Decoder": ("joint_decoder", True), "MoT (F)": ("mot", False)}

# Appendix B: the open-weight VLMs (SFT on VQA or TQA of each dataset; Tables 8-9) and the two fine-tuned
# with RL as well, on the image version only (Tables 10-11).
APPENDIX_B_MODELS = ("Qwen2.5-VL-7B", "Qwen2.5-VL-3B", "InternVL3-8B", "Gemma-3-4B", "Kimi-VL-A3B")
APPENDIX_B_RL_MODELS = ("Qwen2.5-VL-7B", "Qwen2.5-VL-3B")
APPENDIX_B_DATASETS = ("spatialmap", "grid", "ring")
# Table 15 (Appendix D.4): SFT and RL hyper-parameters; section 4: 4,500 training samples per dataset.
TABLE_15 = {
    "sft": {"lr": 1e-6, "betas": (0.9, 0.999), "warmup": 0, "schedule": "cosine", "epochs": 1, "batch": 64},
    "rl": {
        "lr": 1e-6,
        "betas": (0.9, 0.999),
        "warmup": 0,
        "schedule": "constant",
        "epochs": 15,
        "batch": 128,
        "rollout_batch": 128,
        "samples_per_prompt": 5,
        "kl": 1e-3,
    },
}
TRAIN_SAMPLES_PER_DATASET = 4500
