"""CraftsMan platform: data, models, training, evaluation and inference for 3D latent-set generative models."""
