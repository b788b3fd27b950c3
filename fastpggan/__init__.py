"""fastpggan: Progressive Growing of GANs (Karras et al., ICLR 2018), faithful and fast.

Submodules, bottom up (each imports only the ones before it; README "Code map"): errors, runtime, images;
ops (functional hot ops with backends); layers (equalized-LR modules); networks (Generator, Discriminator);
losses (WGAN-GP), optim (TF's Adam), checkpoint, data, schedule, distributed, metrics; step (one training step);
config; trainer; and the command lines train, generate, evaluate.
"""

__version__ = "0.2.0"
