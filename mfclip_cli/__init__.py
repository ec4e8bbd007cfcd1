"""mfclip: tell real face images and videos from diffusion/GAN-generated or edited ones (MFCLIP)."""

__version__ = "0.1.0"
