"""fastpggan: Progressive Growing of GANs (Karras et al., ICLR 2018), faithful and fast.

Submodules: ops (functional hot ops with backends), layers (equalized-LR modules), networks (Generator,
Discriminator), losses (WGAN-GP), schedule (progressive schedule and presets), data, checkpoint, train, generate.
"""
__version__ = "0.1.0"
